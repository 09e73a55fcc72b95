//! Property: whatever a client puts in any argument of any operation (control characters, extreme
//! numbers, extreme dates, malformed cursors and ids), the answer is never `INTERNAL` and never an
//! HTTP 500, and never `UNAVAILABLE`: bad input is the client's problem, not an outage.
//!
//! Inputs come from proptest strategies through a seeded [`TestRunner`], so a run is repeatable; they
//! are generated first and then sent through a real in-process stack (identity, catalog, ordering
//! and the gateway). A failure prints the operation and the variables that caused it.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use support::{Gateway, Stack, unique_email};

/// Cases per operation: enough to hit every kind of bad input several times, few enough for the
/// whole file to run in well under half a minute.
const CASES: usize = 64;

/// Text with what breaks naive handling: NUL and other control characters, bidi overrides,
/// non-characters, any Unicode at all, whitespace, and lengths around the 100/200/255 limits.
fn hostile_text() -> BoxedStrategy<String> {
    let nasty_char = prop_oneof![
        Just('\0'),
        (1u8..0x20).prop_map(char::from),
        Just('\u{7f}'),
        Just('\u{85}'),
        Just('\u{202e}'),
        Just('\u{feff}'),
        Just('\u{fffe}'),
        Just('\u{10ffff}'),
        any::<char>(),
        proptest::char::range('a', 'z'),
    ];
    prop_oneof![
        3 => proptest::collection::vec(nasty_char, 0..24).prop_map(String::from_iter),
        1 => any::<String>(),
        1 => (90usize..300).prop_map(|n| "é".repeat(n)),
        1 => Just(String::new()),
        1 => Just(" \t\n ".to_owned()),
    ]
    .boxed()
}

/// Numbers at and past every bound.
fn hostile_int() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(i64::from(i32::MIN)),
        Just(i64::from(i32::MAX)),
        Just(-1),
        Just(0),
        Just(1),
        Just(101),
        Just(100_000_001),
        -5i64..120,
        any::<i32>().prop_map(i64::from),
    ]
    .boxed()
}

/// Numbers as JSON, including ones no GraphQL `Int` can hold.
fn hostile_number() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => hostile_int().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(json!(1e300)),
        1 => Just(json!(-0.5)),
    ]
    .boxed()
}

/// Dates as a client may write them: RFC 3339 at any instant chrono can hold (years -262144 to
/// 262143), the edges of the years 1 and 9999, and things that are not dates.
fn hostile_date() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => any::<i64>().prop_map(|seconds| {
            let seconds = seconds % 8_000_000_000_000;
            match chrono::DateTime::from_timestamp(seconds, 0) {
                Some(at) => json!(at.to_rfc3339()),
                None => json!(seconds.to_string()),
            }
        }),
        1 => Just(json!("+262143-12-31T23:59:59Z")),
        1 => Just(json!("-262143-01-01T00:00:00Z")),
        1 => Just(json!("0000-01-01T00:00:00Z")),
        1 => Just(json!("9999-12-31T23:59:59.999999999Z")),
        1 => Just(json!("-4714-11-24T00:00:00Z")),
        1 => hostile_text().prop_map(Value::from),
    ]
    .boxed()
}

/// Cursors: garbage, and well-formed wrappers around forged downstream tokens (catalog's
/// `micros:id`, ordering's `micros.id`) with any timestamp.
fn hostile_cursor() -> BoxedStrategy<String> {
    let id = any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string());
    let downstream = prop_oneof![
        (any::<i64>(), id.clone()).prop_map(|(micros, id)| URL_SAFE_NO_PAD.encode(format!("{micros}:{id}"))),
        (any::<i64>(), id).prop_map(|(micros, id)| {
            let id = uuid::Uuid::parse_str(&id).unwrap_or_default();
            URL_SAFE_NO_PAD.encode(format!("{micros}.{id}"))
        }),
        hostile_text().prop_map(|text| URL_SAFE_NO_PAD.encode(text)),
        hostile_text(),
    ];
    prop_oneof![
        3 => (hostile_int(), downstream).prop_map(|(skip, token)| URL_SAFE_NO_PAD.encode(format!("{skip}:{token}"))),
        1 => hostile_text(),
        1 => hostile_text().prop_map(|text| URL_SAFE_NO_PAD.encode(text)),
    ]
    .boxed()
}

/// Ids: random UUIDs (unknown), UUIDs with something attached, and anything else.
fn hostile_id() -> BoxedStrategy<String> {
    prop_oneof![
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        (any::<u128>(), hostile_text()).prop_map(|(n, tail)| format!("{}{tail}", uuid::Uuid::from_u128(n))),
        hostile_text(),
        hostile_int().prop_map(|n| n.to_string()),
    ]
    .boxed()
}

/// `CASES` values of `strategy`, the same on every run (a fixed seed per operation name).
fn cases<T: std::fmt::Debug>(operation: &str, strategy: impl Strategy<Value = T>) -> Vec<T> {
    let mut seed = [0u8; 32];
    for (i, byte) in operation.bytes().enumerate() {
        seed[i % 32] ^= byte;
    }
    let config = Config { cases: CASES as u32, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    (0..CASES).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
}

/// Sends one operation and fails the test if the answer is a 500, `INTERNAL` or `UNAVAILABLE`.
async fn assert_handled(gateway: &Gateway, token: Option<&str>, query: &str, variables: Value) {
    let mut request =
        gateway.http.post(gateway.graphql_url()).json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_ne!(status.as_u16(), 500, "HTTP 500 for {query} with {variables}: {body}");
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    for error in parsed["errors"].as_array().into_iter().flatten() {
        let code = error["extensions"]["code"].as_str().unwrap_or_default();
        assert!(
            code != "INTERNAL" && code != "UNAVAILABLE",
            "{code} for {query}\nvariables: {variables}\nanswer: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_to_any_operation_causes_an_internal_error_or_an_outage() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Fuzz Fest", "artist": "The Inputs", "venue": "Melkweg", "city": "Amsterdam",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
                "priceCents": 1000, "currency": "EUR", "capacity": 100_000,
            }),
        )
        .await;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let fan = fan.as_str();

    // Browsing.
    let query = "query($first: Int!, $after: String, $filter: ConcertFilter) {
        concerts(first: $first, after: $after, filter: $filter) { edges { cursor node { id } } }
    }";
    let strategy = (
        hostile_number(),
        proptest::option::of(hostile_cursor()),
        proptest::option::of(hostile_text()),
        proptest::option::of(hostile_text()),
        proptest::option::of(hostile_text()),
        proptest::option::of(hostile_date()),
        proptest::option::of(hostile_date()),
    );
    for (first, after, city, artist, search, from, to) in cases("concerts", strategy) {
        let filter = json!({ "city": city, "artist": artist, "search": search, "startsAfter": from, "startsBefore": to });
        assert_handled(gateway, None, query, json!({ "first": first, "after": after, "filter": filter }))
            .await;
    }
    for id in cases("concert", hostile_id()) {
        assert_handled(gateway, None, "query($id: ID!) { concert(id: $id) { id } }", json!({ "id": id }))
            .await;
    }

    // Reading one's orders.
    let query = "query($first: Int!, $after: String) { myOrders(first: $first, after: $after) { edges { node { id } } } }";
    for (first, after) in cases("myOrders", (hostile_number(), proptest::option::of(hostile_cursor()))) {
        assert_handled(gateway, Some(fan), query, json!({ "first": first, "after": after })).await;
    }
    for id in cases("order", hostile_id()) {
        assert_handled(gateway, Some(fan), "query($id: ID!) { order(id: $id) { id } }", json!({ "id": id }))
            .await;
    }

    // Buying: a hostile concert id or the real one, any quantity, any key.
    let query = "mutation($input: PlaceOrderInput!, $key: String!) { placeOrder(input: $input, idempotencyKey: $key) { id } }";
    let concert_id = prop_oneof![Just(concert.clone()), hostile_id()];
    for (concert_id, quantity, key) in cases("placeOrder", (concert_id, hostile_number(), hostile_text())) {
        let variables = json!({ "input": { "concertId": concert_id, "quantity": quantity }, "key": key });
        assert_handled(gateway, Some(fan), query, variables).await;
    }
    let query = "mutation($id: ID!, $token: String!) { confirmOrder(id: $id, paymentToken: $token) { id } }";
    for (id, token) in cases("confirmOrder", (hostile_id(), hostile_text())) {
        assert_handled(gateway, Some(fan), query, json!({ "id": id, "token": token })).await;
    }
    for id in cases("cancelOrder", hostile_id()) {
        let query = "mutation($id: ID!) { cancelOrder(id: $id) { id } }";
        assert_handled(gateway, Some(fan), query, json!({ "id": id })).await;
    }

    // Accounts (these may be RATE_LIMITED along the way, which is an answer too).
    let query = "mutation($input: RegisterInput!) { register(input: $input) { userId } }";
    for (email, password, name) in cases("register", (hostile_text(), hostile_text(), hostile_text())) {
        let variables = json!({ "input": { "email": email, "password": password, "displayName": name } });
        assert_handled(gateway, None, query, variables).await;
    }
    let query = "mutation($input: LoginInput!) { login(input: $input) { accessToken } }";
    for (email, password) in cases("login", (hostile_text(), hostile_text())) {
        assert_handled(gateway, None, query, json!({ "input": { "email": email, "password": password } }))
            .await;
    }
    for token in cases("refreshToken", hostile_text()) {
        let query = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }";
        assert_handled(gateway, None, query, json!({ "t": token })).await;
        assert_handled(
            gateway,
            None,
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": token }),
        )
        .await;
    }

    // Managing concerts (admin): every text field, price, capacity and date.
    let query = "mutation($input: CreateConcertInput!) { createConcert(input: $input) { id } }";
    let strategy = (
        (hostile_text(), hostile_text(), hostile_text(), hostile_text()),
        (hostile_date(), hostile_number(), hostile_text(), hostile_number()),
    );
    for ((title, artist, venue, city), (starts_at, price, currency, capacity)) in
        cases("createConcert", strategy)
    {
        let input = json!({
            "title": title, "artist": artist, "venue": venue, "city": city, "startsAt": starts_at,
            "priceCents": price, "currency": currency, "capacity": capacity,
        });
        assert_handled(gateway, Some(&admin), query, json!({ "input": input })).await;
    }
    let query =
        "mutation($id: ID!, $input: UpdateConcertInput!) { updateConcert(id: $id, input: $input) { id } }";
    let id = prop_oneof![Just(concert.clone()), hostile_id()];
    let strategy = (
        id,
        proptest::option::of(hostile_text()),
        proptest::option::of(hostile_date()),
        proptest::option::of(hostile_number()),
    );
    for (id, city, starts_at, capacity) in cases("updateConcert", strategy) {
        let input = json!({ "city": city, "startsAt": starts_at, "capacity": capacity });
        assert_handled(gateway, Some(&admin), query, json!({ "id": id, "input": input })).await;
    }

    // After all that, honest use works.
    let browsing = gateway.data(None, "{ concerts(first: 1) { edges { node { id } } } }", json!({})).await;
    assert_eq!(browsing["concerts"]["edges"][0]["node"]["id"], concert.as_str());
}
