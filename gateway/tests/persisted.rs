//! Persisted documents through the real server: an app registers its queries by hash (Apollo's
//! automatic persisted queries) and then fetches public ones with GETs that HTTP caches may keep;
//! in production a manifest of trusted documents is all that runs, over HTTP and WebSocket.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::Duration;

use gateway::documents::sha256_hex;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, VARY};
use serde_json::{Value, json};
use support::{Gateway, Socket, Stack, error_code, unique_email};

const BROWSE: &str = "query Browse { concerts(first: 5) { edges { node { id title } } } }";

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

/// POSTs `body` and returns the status and the JSON body.
async fn post(gateway: &Gateway, body: Value) -> (StatusCode, Value) {
    let response = gateway.http.post(gateway.graphql_url()).json(&body).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// GETs a persisted document by hash, as Apollo Client's `useGETForHashedQueries` does.
fn get_by_hash(gateway: &Gateway, hash: &str) -> reqwest::RequestBuilder {
    let url = reqwest::Url::parse_with_params(
        &gateway.graphql_url(),
        [("extensions", persisted(hash).to_string())],
    )
    .unwrap();
    gateway.http.get(url).header(ACCEPT, "application/graphql-response+json")
}

#[tokio::test]
async fn an_app_registers_its_query_by_hash_and_anonymous_gets_of_it_are_cacheable() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = json!({
        "title": "Cached Nights", "artist": "Etag", "venue": "Proxy Hall", "city": "Utrecht",
        "startsAt": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
        "priceCents": 2500, "currency": "EUR", "capacity": 50,
    });
    stack.create_concert(&admin, concert).await;
    let hash = sha256_hex(BROWSE);

    let (status, unknown) = post(gateway, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(status, StatusCode::OK, "Apollo clients give up on persisted queries after a 400");
    assert_eq!(unknown["errors"][0]["message"], "PersistedQueryNotFound", "{unknown}");
    assert_eq!(error_code(&unknown).as_deref(), Some("PERSISTED_QUERY_NOT_FOUND"));
    let miss = get_by_hash(gateway, &hash).send().await.unwrap();
    assert_eq!(miss.status(), StatusCode::OK);
    assert_eq!(miss.headers()[CACHE_CONTROL], "no-store", "a miss must not be cached");

    let (status, registered) =
        post(gateway, json!({ "query": BROWSE, "extensions": persisted(&hash) })).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        registered["data"]["concerts"]["edges"].as_array().is_some_and(|e| !e.is_empty()),
        "{registered}"
    );

    let hit = get_by_hash(gateway, &hash).send().await.unwrap();
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(hit.headers()[CACHE_CONTROL], "public, max-age=5");
    assert_eq!(hit.headers()[VARY], "Accept, Authorization");
    let body: Value = hit.json().await.unwrap();
    assert_eq!(body["data"], registered["data"], "the stored document ran");

    // The same document for a signed-in user is nobody else's business.
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let signed_in =
        get_by_hash(gateway, &hash).header(AUTHORIZATION, format!("Bearer {fan}")).send().await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    assert_eq!(signed_in.headers()[CACHE_CONTROL], "no-store");

    // A personal field is never public, even anonymously (it fails, and says so).
    let mine = "query Me { me { id } }";
    post(gateway, json!({ "query": mine, "extensions": persisted(&sha256_hex(mine)) })).await;
    let personal = get_by_hash(gateway, &sha256_hex(mine)).send().await.unwrap();
    assert_eq!(personal.headers()[CACHE_CONTROL], "no-store");

    // A query sent with someone else's hash is refused, and does not replace the stored one.
    let (status, forged) =
        post(gateway, json!({ "query": "{ me { email } }", "extensions": persisted(&hash) })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&forged).as_deref(), Some("BAD_USER_INPUT"), "{forged}");
    let still: Value = get_by_hash(gateway, &hash).send().await.unwrap().json().await.unwrap();
    assert_eq!(still["data"], registered["data"]);

    // A mutation registered by POST cannot be run by a GET of its hash.
    let logout = "mutation Out { logout(refreshToken: \"nope\") }";
    post(gateway, json!({ "query": logout, "extensions": persisted(&sha256_hex(logout)) })).await;
    let refused = get_by_hash(gateway, &sha256_hex(logout)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn stored_documents_are_held_to_the_query_limits() {
    let gateway = Gateway::alone(&[("GRAPHQL_MAX_QUERY_BYTES", "256")]).await;
    let long = format!("query Long {{ {} }}", "__typename ".repeat(40));
    let hash = sha256_hex(&long);
    let (_, refused) = post(&gateway, json!({ "query": long, "extensions": persisted(&hash) })).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
    let (_, unknown) = post(&gateway, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(error_code(&unknown).as_deref(), Some("PERSISTED_QUERY_NOT_FOUND"), "never stored: {unknown}");
}

#[tokio::test]
async fn only_trusted_documents_run_when_they_are_enforced() {
    let listed = "query Hello { __typename }";
    let dir = std::env::temp_dir().join(format!("tf-trusted-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("manifest.json");
    let apollo = json!({
        "format": "apollo-persisted-query-manifest", "version": 1,
        "operations": [{ "id": "hello-v1", "body": listed, "name": "Hello", "type": "query" }],
    });
    std::fs::write(&manifest, apollo.to_string()).unwrap();
    let path = manifest.to_str().unwrap();
    let gateway = Gateway::alone(&[("TRUSTED_DOCUMENTS", "enforce"), ("TRUSTED_DOCUMENTS_PATH", path)]).await;

    let (status, by_id) = post(&gateway, json!({ "extensions": persisted("hello-v1") })).await;
    assert_eq!((status, &by_id["data"]), (StatusCode::OK, &json!({ "__typename": "QueryRoot" })), "{by_id}");
    let (_, as_text) = post(&gateway, json!({ "query": listed })).await;
    assert_eq!(as_text["data"]["__typename"], "QueryRoot", "listed text runs: {as_text}");
    let get = get_by_hash(&gateway, &sha256_hex(listed)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);

    for body in [
        json!({ "query": "query Other { concerts { edges { cursor } } }" }),
        json!({ "extensions": persisted(&sha256_hex("query Other { concerts { edges { cursor } } }")) }),
        json!({ "query": "query Other { concerts { edges { cursor } } }", "extensions": persisted(&sha256_hex("query Other { concerts { edges { cursor } } }")) }),
    ] {
        let (status, refused) = post(&gateway, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(&refused).as_deref(), Some("PERSISTED_QUERY_NOT_ALLOWED"), "{body}: {refused}");
    }
    let (_, schema) = post(&gateway, json!({ "query": "{ __schema { queryType { name } } }" })).await;
    assert_eq!(schema["data"]["__schema"]["queryType"]["name"], "QueryRoot", "introspection stays: {schema}");

    let mut socket = Socket::connect(&gateway.graphql_url().replacen("http://", "ws://", 1), json!({})).await;
    socket.subscribe("subscription { myOrderUpdates { orderId } }", json!({})).await;
    let refused = socket.receive(Duration::from_secs(10)).await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_ALLOWED", "{refused}");
    socket.subscribe(listed, json!({})).await;
    assert_eq!(socket.next_payload(Duration::from_secs(10)).await["data"]["__typename"], "QueryRoot");
    std::fs::remove_dir_all(dir).unwrap();
}
