//! The mobile app's journey, entirely through GraphQL, against the whole stack running in-process.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Stack, error_code, unique_email};

const CONCERT_FIELDS: &str = "id title artist city startsAt price { cents currency } capacity available";

async fn concert_available(stack: &Stack, id: &str) -> i64 {
    let data = stack
        .gateway
        .data(None, "query($id: ID!) { concert(id: $id) { available } }", json!({ "id": id }))
        .await;
    data["concert"]["available"].as_i64().unwrap()
}

/// Polls until the concert shows `expected` seats (browsing may lag by catalog's cache TTL).
async fn wait_for_available(stack: &Stack, id: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let available = concert_available(stack, id).await;
        if available == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "available stayed {available}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fan_browses_buys_pays_watches_and_cancels_through_graphql() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;

    // The catalogue: two concerts in Amsterdam, one in Rotterdam, added by an admin.
    let admin = stack.admin_token().await;
    let concert = |title: &str, city: &str, days: i64| {
        json!({
            "title": title, "artist": "The Gatekeepers", "venue": "Ziggo Dome", "city": city,
            "startsAt": (chrono::Utc::now() + chrono::Duration::days(days)).to_rfc3339(),
            "priceCents": 4500, "currency": "EUR", "capacity": 100,
        })
    };
    let first_show = stack.create_concert(&admin, concert("Opening Night", "Amsterdam", 10)).await;
    let second_show = stack.create_concert(&admin, concert("Second Night", "Amsterdam", 11)).await;
    stack.create_concert(&admin, concert("Harbour Night", "Rotterdam", 12)).await;

    // Sign up and in.
    let email = unique_email("fan");
    let token = gateway.sign_up(&email).await;
    let me = gateway.data(Some(&token), "{ me { id email displayName roles } }", json!({})).await;
    assert_eq!(me["me"]["email"], email.as_str());
    assert_eq!(me["me"]["roles"], json!(["customer"]));

    // Browse Amsterdam one concert per page.
    let browse = format!(
        "query($after: String) {{ concerts(first: 1, after: $after, filter: {{ city: \"Amsterdam\" }}) {{
            edges {{ cursor node {{ {CONCERT_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
    );
    let page = gateway.data(None, &browse, json!({ "after": null })).await;
    let edges = page["concerts"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["id"], first_show.as_str(), "start-time order");
    assert_eq!(edges[0]["node"]["price"], json!({ "cents": 4500, "currency": "EUR" }));
    assert_eq!(page["concerts"]["pageInfo"]["hasNextPage"], true);
    let end_cursor = page["concerts"]["pageInfo"]["endCursor"].clone();
    let page = gateway.data(None, &browse, json!({ "after": end_cursor })).await;
    let edges = page["concerts"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["id"], second_show.as_str());
    assert_eq!(page["concerts"]["pageInfo"]["hasNextPage"], false);
    let search = gateway
        .data(None, "{ concerts(filter: { search: \"harbour\" }) { edges { node { city } } } }", json!({}))
        .await;
    assert_eq!(search["concerts"]["edges"], json!([{ "node": { "city": "Rotterdam" } }]));

    // Watch my orders live before buying.
    let mut socket = gateway.websocket(&token).await;
    gateway
        .subscribe_and_wait(
            &mut socket,
            "subscription { myOrderUpdates { kind orderId status total { cents } concert { title } } }",
            json!({}),
        )
        .await;

    // Buy two seats; the app retries with the same key and gets the same order.
    let place = "mutation($input: PlaceOrderInput!, $key: String!) {
        placeOrder(input: $input, idempotencyKey: $key) { id status quantity total { cents currency } concert { title } } }";
    let variables = json!({ "input": { "concertId": first_show, "quantity": 2 }, "key": "journey-order-1" });
    let placed = gateway.data(Some(&token), place, variables.clone()).await["placeOrder"].clone();
    assert_eq!(placed["status"], "PENDING");
    assert_eq!(placed["total"], json!({ "cents": 9000, "currency": "EUR" }));
    assert_eq!(placed["concert"]["title"], "Opening Night");
    let replayed = gateway.data(Some(&token), place, variables).await["placeOrder"].clone();
    assert_eq!(replayed["id"], placed["id"], "same key, same order");
    let order_id = placed["id"].as_str().unwrap().to_owned();

    let update = socket.next_payload(Duration::from_secs(15)).await;
    assert_eq!(update["data"]["myOrderUpdates"]["orderId"], order_id.as_str());
    assert_eq!(update["data"]["myOrderUpdates"]["status"], "PENDING");
    assert_eq!(update["data"]["myOrderUpdates"]["concert"]["title"], "Opening Night");

    // Pay.
    let confirmed = gateway
        .data(
            Some(&token),
            "mutation($id: ID!) { confirmOrder(id: $id, paymentToken: \"tok_visa\") { status } }",
            json!({ "id": order_id }),
        )
        .await;
    assert_eq!(confirmed["confirmOrder"]["status"], "CONFIRMED");
    let update = socket.next_payload(Duration::from_secs(15)).await;
    assert_eq!(update["data"]["myOrderUpdates"]["status"], "CONFIRMED");
    assert_eq!(update["data"]["myOrderUpdates"]["kind"], "CONFIRMED");
    wait_for_available(&stack, &first_show, 98).await;

    // My orders show it with its concert.
    let mine = gateway
        .data(
            Some(&token),
            "{ myOrders(first: 10) { edges { node { id status quantity concert { id title } } } pageInfo { hasNextPage } } }",
            json!({}),
        )
        .await;
    let orders = mine["myOrders"]["edges"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["node"]["id"], order_id.as_str());
    assert_eq!(orders[0]["node"]["status"], "CONFIRMED");
    assert_eq!(orders[0]["node"]["concert"], json!({ "id": first_show, "title": "Opening Night" }));

    // Cancel: the seats go back on sale.
    let cancelled = gateway
        .data(
            Some(&token),
            "mutation($id: ID!) { cancelOrder(id: $id) { status } }",
            json!({ "id": order_id }),
        )
        .await;
    assert_eq!(cancelled["cancelOrder"]["status"], "CANCELLED");
    let update = socket.next_payload(Duration::from_secs(15)).await;
    assert_eq!(update["data"]["myOrderUpdates"]["status"], "CANCELLED");
    wait_for_available(&stack, &first_show, 100).await;
}

#[tokio::test]
async fn nobody_sees_or_touches_anyone_elses_orders() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Private Show", "artist": "Solo", "venue": "Paradiso", "city": "Amsterdam",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
                "priceCents": 2500, "currency": "EUR", "capacity": 10,
            }),
        )
        .await;
    let owner = gateway.sign_up(&unique_email("owner")).await;
    let stranger = gateway.sign_up(&unique_email("stranger")).await;

    let placed = gateway
        .data(
            Some(&owner),
            "mutation($c: ID!) { placeOrder(input: { concertId: $c, quantity: 1 }, idempotencyKey: \"k-1\") { id } }",
            json!({ "c": concert }),
        )
        .await;
    let order_id = placed["placeOrder"]["id"].as_str().unwrap().to_owned();

    // Without a token: UNAUTHENTICATED, before anything is ordered.
    let anonymous = gateway
        .graphql(
            None,
            "mutation($c: ID!) { placeOrder(input: { concertId: $c, quantity: 1 }, idempotencyKey: \"k-2\") { id } }",
            json!({ "c": concert }),
        )
        .await;
    assert_eq!(error_code(&anonymous).as_deref(), Some("UNAUTHENTICATED"), "{anonymous}");
    assert_eq!(anonymous["data"], Value::Null);

    // Another user: NOT_FOUND for reading, cancelling and watching it.
    let read = gateway
        .graphql(Some(&stranger), "query($id: ID!) { order(id: $id) { id } }", json!({ "id": order_id }))
        .await;
    assert_eq!(error_code(&read).as_deref(), Some("NOT_FOUND"), "{read}");
    let cancel = gateway
        .graphql(
            Some(&stranger),
            "mutation($id: ID!) { cancelOrder(id: $id) { id } }",
            json!({ "id": order_id }),
        )
        .await;
    assert_eq!(error_code(&cancel).as_deref(), Some("NOT_FOUND"), "{cancel}");
    let mut socket = gateway.websocket(&stranger).await;
    socket
        .subscribe(
            "subscription($id: ID!) { orderUpdated(orderId: $id) { status } }",
            json!({ "id": order_id }),
        )
        .await;
    let refused = socket.next_payload(Duration::from_secs(10)).await;
    assert_eq!(error_code(&refused).as_deref(), Some("NOT_FOUND"), "{refused}");
    let done = socket.receive(Duration::from_secs(10)).await.unwrap();
    assert_eq!(done["type"], "complete", "the refused subscription ends: {done}");

    // The owner still has it, untouched.
    let own = gateway
        .data(Some(&owner), "query($id: ID!) { order(id: $id) { status } }", json!({ "id": order_id }))
        .await;
    assert_eq!(own["order"]["status"], "PENDING");
    let theirs = gateway.data(Some(&stranger), "{ myOrders { edges { node { id } } } }", json!({})).await;
    assert_eq!(theirs["myOrders"]["edges"], json!([]));
}

#[tokio::test]
async fn what_goes_wrong_reaches_the_app_as_contract_codes() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let tiny = stack
        .create_concert(
            &admin,
            json!({
                "title": "Tiny Room", "artist": "Duo", "venue": "Attic", "city": "Haarlem",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(20)).to_rfc3339(),
                "priceCents": 1500, "currency": "EUR", "capacity": 2,
            }),
        )
        .await;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let place = "mutation($c: ID!, $q: Int!, $k: String!) {
        placeOrder(input: { concertId: $c, quantity: $q }, idempotencyKey: $k) { id } }";
    let code_and_field = |response: &Value| {
        (error_code(response), response["errors"][0]["extensions"]["field"].as_str().map(str::to_owned))
    };

    let sold_out = gateway.graphql(Some(&fan), place, json!({ "c": tiny, "q": 3, "k": "a" })).await;
    assert_eq!(error_code(&sold_out).as_deref(), Some("SOLD_OUT"), "{sold_out}");
    let zero = gateway.graphql(Some(&fan), place, json!({ "c": tiny, "q": 0, "k": "b" })).await;
    assert_eq!(code_and_field(&zero), (Some("BAD_USER_INPUT".into()), Some("quantity".into())), "{zero}");
    let nowhere = json!({ "c": "0190a0a0-0000-7000-8000-000000000000", "q": 1, "k": "c" });
    let unknown = gateway.graphql(Some(&fan), place, nowhere).await;
    assert_eq!(error_code(&unknown).as_deref(), Some("NOT_FOUND"), "{unknown}");
    let not_an_id = gateway.graphql(Some(&fan), place, json!({ "c": "seven", "q": 1, "k": "d" })).await;
    assert_eq!(code_and_field(&not_an_id), (Some("BAD_USER_INPUT".into()), Some("concertId".into())));

    let placed = gateway.data(Some(&fan), place, json!({ "c": tiny, "q": 1, "k": "e" })).await;
    let order_id = placed["placeOrder"]["id"].as_str().unwrap().to_owned();
    let reused = gateway.graphql(Some(&fan), place, json!({ "c": tiny, "q": 2, "k": "e" })).await;
    assert_eq!(
        code_and_field(&reused),
        (Some("BAD_USER_INPUT".into()), Some("idempotencyKey".into())),
        "{reused}"
    );

    let confirm = "mutation($id: ID!, $t: String!) { confirmOrder(id: $id, paymentToken: $t) { status } }";
    let declined = gateway.graphql(Some(&fan), confirm, json!({ "id": order_id, "t": "tok_declined" })).await;
    assert_eq!(error_code(&declined).as_deref(), Some("PAYMENT_DECLINED"), "{declined}");
    let cancel = "mutation($id: ID!) { cancelOrder(id: $id) { status } }";
    gateway.data(Some(&fan), cancel, json!({ "id": order_id })).await;
    let twice = gateway.graphql(Some(&fan), cancel, json!({ "id": order_id })).await;
    assert_eq!(error_code(&twice).as_deref(), Some("CONFLICT"), "not a valid transition: {twice}");
    let pay_cancelled =
        gateway.graphql(Some(&fan), confirm, json!({ "id": order_id, "t": "tok_visa" })).await;
    assert_eq!(error_code(&pay_cancelled).as_deref(), Some("CONFLICT"), "{pay_cancelled}");
    // Two devices cancel the same order at once: one cancels it, the other hears CONFLICT.
    let racing = gateway.data(Some(&fan), place, json!({ "c": tiny, "q": 1, "k": "f" })).await;
    let racing = json!({ "id": racing["placeOrder"]["id"] });
    let (first, second) = tokio::join!(
        gateway.graphql(Some(&fan), cancel, racing.clone()),
        gateway.graphql(Some(&fan), cancel, racing.clone())
    );
    let mut codes = [error_code(&first), error_code(&second)];
    codes.sort();
    assert_eq!(codes, [None, Some("CONFLICT".to_owned())], "{first} {second}");

    let not_admin = gateway
        .graphql(
            Some(&fan),
            "mutation($id: ID!) { updateConcert(id: $id, input: { title: \"Mine now\" }) { id } }",
            json!({ "id": tiny }),
        )
        .await;
    assert_eq!(error_code(&not_admin).as_deref(), Some("FORBIDDEN"), "{not_admin}");
    let renamed = gateway
        .data(
            Some(&admin),
            "mutation($id: ID!) { updateConcert(id: $id, input: { title: \"Tiny Room (moved)\" }) { title } }",
            json!({ "id": tiny }),
        )
        .await;
    assert_eq!(renamed["updateConcert"]["title"], "Tiny Room (moved)");
    let invalid = gateway
        .graphql(
            Some(&admin),
            "mutation($id: ID!) { updateConcert(id: $id, input: { title: \"\" }) { title } }",
            json!({ "id": tiny }),
        )
        .await;
    assert_eq!(code_and_field(&invalid), (Some("BAD_USER_INPUT".into()), Some("title".into())), "{invalid}");
}

#[tokio::test]
async fn sessions_renew_and_end_through_graphql() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let email = unique_email("renewer");
    gateway.sign_up(&email).await;
    let login = gateway
        .data(
            None,
            "mutation($e: String!, $p: String!) { login(input: { email: $e, password: $p }) { refreshToken expiresIn } }",
            json!({ "e": email, "p": support::PASSWORD }),
        )
        .await;
    assert!(login["login"]["expiresIn"].as_i64().unwrap() > 0);
    let first = login["login"]["refreshToken"].as_str().unwrap().to_owned();

    let refresh = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }";
    let renewed = gateway.data(None, refresh, json!({ "t": first })).await;
    let access = renewed["refreshToken"]["accessToken"].as_str().unwrap().to_owned();
    let second = renewed["refreshToken"]["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(first, second, "rotated");
    let me = gateway.data(Some(&access), "{ me { email } }", json!({})).await;
    assert_eq!(me["me"]["email"], email.as_str());

    let wrong = gateway
        .graphql(
            None,
            "mutation($e: String!) { login(input: { email: $e, password: \"not the password\" }) { accessToken } }",
            json!({ "e": email }),
        )
        .await;
    assert_eq!(error_code(&wrong).as_deref(), Some("UNAUTHENTICATED"), "{wrong}");

    let out = gateway
        .data(None, "mutation($t: String!) { logout(refreshToken: $t) }", json!({ "t": second }))
        .await;
    assert_eq!(out["logout"], true);
    let after_logout = gateway.graphql(None, refresh, json!({ "t": second })).await;
    assert_eq!(error_code(&after_logout).as_deref(), Some("UNAUTHENTICATED"), "{after_logout}");
}
