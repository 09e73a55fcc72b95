//! Starts identity in-process on a free port with its own database, and speaks its API.

use std::collections::HashMap;
use std::time::Duration;

use identity::{App, Config};
use integration::{RunningService, TestDatabase, TestNames};
use platform::config::Env;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    // Field order matters: the service stops before its database is dropped.
    pub service: RunningService,
    /// The admin port's base URL (`/metrics`, the per-check `/health`).
    pub admin_url: String,
    pub config: Config,
    pub client: reqwest::Client,
    pub db: TestDatabase,
}

/// identity with its default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// identity with `adjust` applied to its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    integration::init();
    let db = TestDatabase::create(&TestNames::new().database("identity")).await.expect("test database");
    let source: HashMap<&'static str, String> = [
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("DATABASE_URL", db.url.clone()),
        // Tests run in parallel against one Postgres: a small pool per service keeps them all under
        // the server's connection limit.
        ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
        ("KEY_ENCRYPTION_KEYS", identity::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS.to_owned()),
    ]
    .into();
    let mut config = Config::from_env(&Env::new(&source)).expect("test configuration");
    adjust(&mut config);
    let (service, admin_url) = start(config.clone()).await;
    TestApp { service, admin_url, config, client: reqwest::Client::new(), db }
}

async fn start(config: Config) -> (RunningService, String) {
    let app = App::build(config).await.expect("identity builds");
    let admin_url = format!("http://{}", app.admin_addr());
    let shutdown = CancellationToken::new();
    let service = RunningService::spawn("identity", app.http_addr(), shutdown.clone(), app.run(shutdown));
    service.wait_healthy(Duration::from_secs(10)).await.expect("identity healthy");
    (service, admin_url)
}

impl TestApp {
    /// Stops the service and starts a new one on the same database, as a redeploy would.
    pub async fn restart(self) -> TestApp {
        let TestApp { service, config, client, db, .. } = self;
        service.stop().await.expect("identity stops cleanly");
        let (service, admin_url) = start(config.clone()).await;
        TestApp { service, admin_url, config, client, db }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.http_url())
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client.post(self.url(path)).json(&body).send().await.expect("request sent")
    }

    pub async fn register(&self, email: &str, password: &str, display_name: &str) -> Response {
        self.post(
            "/auth/register",
            json!({"email": email, "password": password, "displayName": display_name}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post("/auth/login", json!({"email": email, "password": password})).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post("/auth/refresh", json!({"refreshToken": refresh_token})).await
    }

    pub async fn logout(&self, refresh_token: &str) -> Response {
        self.post("/auth/logout", json!({"refreshToken": refresh_token})).await
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.client.get(self.url("/auth/me")).bearer_auth(access_token).send().await.expect("request sent")
    }

    /// Registers `email` with [`PASSWORD`] and logs in: the returned tokens.
    pub async fn registered_session(&self, email: &str) -> Tokens {
        assert_eq!(self.register(email, PASSWORD, "Test User").await.status(), StatusCode::CREATED);
        self.session(email).await
    }

    /// Logs `email` in with [`PASSWORD`].
    pub async fn session(&self, email: &str) -> Tokens {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        Tokens::from(response).await
    }

    pub async fn jwks(&self) -> Value {
        self.client
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json")
    }

    pub async fn db_pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db.url)
            .await
            .expect("test db connects")
    }
}

/// A token pair from a login or refresh response.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl Tokens {
    pub async fn from(response: Response) -> Self {
        let body: Value = response.json().await.expect("token json");
        assert_eq!(body["tokenType"], "Bearer");
        Self {
            access: body["accessToken"].as_str().expect("accessToken").to_owned(),
            refresh: body["refreshToken"].as_str().expect("refreshToken").to_owned(),
        }
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", TestNames::new().id)
}

/// Polls `check` every 50 ms until it holds, failing the test after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("token header").kid.expect("kid")
}
