//! Admins manage concerts with a real identity token; everyone else is turned away.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use integration::{RunningService, TestDatabase, TestNames};
use platform::config::Env;
use prost_types::Timestamp;
use proto::catalog::v1 as pb;
use serde_json::{Value, json};
use support::{Settings, TestCatalog, row, spawn_with};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use uuid::Uuid;

/// identity running in-process with its own database: the issuer of the tokens catalog checks.
struct Identity {
    service: RunningService,
    db: TestDatabase,
}

async fn spawn_identity() -> Identity {
    integration::init();
    let db = TestDatabase::create(&TestNames::new().database("identity")).await.unwrap();
    let vars: HashMap<&'static str, String> = HashMap::from([
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
        ("KEY_ENCRYPTION_KEYS", identity::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS.to_owned()),
    ]);
    let app = identity::App::build(identity::Config::from_env(&Env::new(&vars)).unwrap()).await.unwrap();
    let shutdown = CancellationToken::new();
    let service = RunningService::spawn("identity", app.http_addr(), shutdown.clone(), app.run(shutdown));
    service.wait_healthy(Duration::from_secs(20)).await.unwrap();
    Identity { service, db }
}

impl Identity {
    /// Registers a new account, grants it `role` unless that is "customer", and logs it in.
    async fn token(&self, role: &str) -> String {
        let http = reqwest::Client::new();
        let base = self.service.http_url();
        let email = format!("{role}-{}@example.com", Uuid::new_v4().simple());
        let password = "correct horse battery staple";
        let registered = http
            .post(format!("{base}/auth/register"))
            .json(&json!({"email": email, "password": password, "displayName": "Test User"}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201, "{:?}", registered.text().await);
        if role != "customer" {
            identity::admin::grant_role(&self.db.url, &email, role).await.unwrap();
        }
        let login: Value = http
            .post(format!("{base}/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["accessToken"].as_str().expect("an access token").to_owned()
    }
}

/// A catalog that trusts `identity`'s keys.
async fn catalog_for(identity: &Identity) -> TestCatalog {
    spawn_with(Settings { identity_url: identity.service.http_url(), ..Settings::default() }).await
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn in_days(days: i64) -> Option<Timestamp> {
    let at = Utc::now() + chrono::Duration::days(days);
    Some(Timestamp { seconds: at.timestamp(), nanos: 0 })
}

fn new_concert() -> pb::CreateConcertRequest {
    pb::CreateConcertRequest {
        title: "  Northern Lights Tour ".into(),
        artist: "Aurora Vale".into(),
        venue: "Ziggo Dome".into(),
        city: "Amsterdam".into(),
        starts_at: in_days(30),
        price_cents: 6_950,
        currency: "eur".into(),
        capacity: 17_000,
    }
}

#[tokio::test]
async fn an_admin_creates_a_concert_that_readers_see_at_once() {
    let identity = spawn_identity().await;
    let catalog = catalog_for(&identity).await;
    let admin = identity.token("admin").await;
    let mut client = catalog.client.clone();
    let before = client.list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert!(before.concerts.is_empty(), "an empty page is cached now");

    let created =
        client.create_concert(with_token(new_concert(), &admin)).await.expect("create").into_inner();
    assert_eq!(created.title, "Northern Lights Tour");
    assert_eq!(created.currency, "EUR");
    assert_eq!((created.capacity, created.available), (17_000, 17_000));

    let after = client.list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(after.concerts, std::slice::from_ref(&created));
    assert_eq!(catalog.get(created.id.parse().unwrap()).await.unwrap(), created);
}

#[tokio::test]
async fn an_admin_update_is_visible_on_the_next_read() {
    let identity = spawn_identity().await;
    let catalog = catalog_for(&identity).await;
    let admin = identity.token("admin").await;
    let id = catalog.insert(row(5)).await;
    assert_eq!(catalog.get(id).await.unwrap().title, "Evening Show", "now cached");

    let mut client = catalog.client.clone();
    let update = pb::UpdateConcertRequest {
        id: id.to_string(),
        title: Some("Evening Show (Moved)".into()),
        venue: Some("Grand Hall".into()),
        price_cents: Some(5_000),
        ..Default::default()
    };
    let updated = client.update_concert(with_token(update, &admin)).await.expect("update").into_inner();
    assert_eq!((updated.title.as_str(), updated.venue.as_str()), ("Evening Show (Moved)", "Grand Hall"));
    assert_eq!(updated.artist, "The Testers", "fields not sent stay as they were");

    let read = catalog.get(id).await.unwrap();
    assert_eq!((read.title.as_str(), read.price_cents), ("Evening Show (Moved)", 5_000));
    let page = client.list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(page.concerts[0].title, "Evening Show (Moved)");
}

#[tokio::test]
async fn capacity_cannot_drop_below_the_seats_sold_or_held() {
    let identity = spawn_identity().await;
    let catalog = catalog_for(&identity).await;
    let admin = identity.token("admin").await;
    let mut r = row(5);
    r.capacity = 100;
    let id = catalog.insert(r).await;
    catalog.reserve(Uuid::new_v4(), id, 30).await.unwrap();

    let mut client = catalog.client.clone();
    let resize = |capacity| pb::UpdateConcertRequest {
        id: id.to_string(),
        capacity: Some(capacity),
        ..Default::default()
    };
    let status = client.update_concert(with_token(resize(29), &admin)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "capacity: must be at least 30, the seats already sold or held");

    let resized = client.update_concert(with_token(resize(40), &admin)).await.unwrap().into_inner();
    assert_eq!((resized.capacity, resized.available), (40, 10));
    let grown = client.update_concert(with_token(resize(200), &admin)).await.unwrap().into_inner();
    assert_eq!((grown.capacity, grown.available), (200, 170));

    let unknown =
        pb::UpdateConcertRequest { id: Uuid::new_v4().to_string(), capacity: Some(10), ..Default::default() };
    assert_eq!(client.update_concert(with_token(unknown, &admin)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_concerts_are_refused_naming_the_field() {
    let identity = spawn_identity().await;
    let catalog = catalog_for(&identity).await;
    let admin = identity.token("admin").await;
    let mut client = catalog.client.clone();

    let cases = [
        (pb::CreateConcertRequest { title: "   ".into(), ..new_concert() }, "title: must not be empty"),
        (
            pb::CreateConcertRequest { artist: "x".repeat(201), ..new_concert() },
            "artist: must be at most 200 characters",
        ),
        (
            pb::CreateConcertRequest { starts_at: in_days(-1), ..new_concert() },
            "starts_at: must be in the future",
        ),
        (pb::CreateConcertRequest { starts_at: None, ..new_concert() }, "starts_at: is required"),
        (pb::CreateConcertRequest { price_cents: -1, ..new_concert() }, "price_cents: must not be negative"),
        (
            pb::CreateConcertRequest { currency: "EURO".into(), ..new_concert() },
            "currency: must be an ISO 4217 currency code such as EUR",
        ),
        (pb::CreateConcertRequest { capacity: 0, ..new_concert() }, "capacity: must be between 1 and 100000"),
        (
            pb::CreateConcertRequest { capacity: 100_001, ..new_concert() },
            "capacity: must be between 1 and 100000",
        ),
    ];
    for (request, message) in cases {
        let status = client.create_concert(with_token(request, &admin)).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, message));
    }
    let update = pb::UpdateConcertRequest { id: "not-a-uuid".into(), ..Default::default() };
    let status = client.update_concert(with_token(update, &admin)).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "id: must be a UUID"));
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM concerts").fetch_one(&catalog.pool).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn customers_are_forbidden_and_callers_without_a_valid_token_unauthenticated() {
    let identity = spawn_identity().await;
    let catalog = catalog_for(&identity).await;
    let customer = identity.token("customer").await;
    let id = catalog.insert(row(5)).await;
    let mut client = catalog.client.clone();
    let update = || pb::UpdateConcertRequest {
        id: id.to_string(),
        title: Some("Hijacked".into()),
        ..Default::default()
    };

    assert_eq!(
        client.create_concert(with_token(new_concert(), &customer)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        client.update_concert(with_token(update(), &customer)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(client.create_concert(new_concert()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(client.update_concert(update()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        client.update_concert(with_token(update(), "not.a.token")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A tampered signature is rejected too.
    let (signed, signature) = customer.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{flipped}{}", &signature[1..]);
    assert_eq!(
        client.update_concert(with_token(update(), &forged)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    assert_eq!(catalog.get(id).await.unwrap().title, "Evening Show");
}
