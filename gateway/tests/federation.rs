//! The gateway is also an Apollo Federation v2 subgraph: its `_service { sdl }` composes with
//! another subgraph in a published composition library (The Guild's
//! `@theguild/federation-composition`, test-only, in `tests/federation/`; `npm ci` installs it on
//! first use), and a router's `_entities` calls resolve `Concert` (for anyone) and `Order` (for
//! its owner only) against a real stack.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::{Stack, error_code, unique_email};

fn composition_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/federation")
}

/// Installs the composition library from its lock file unless it is there already.
fn install_composition() {
    let dir = composition_dir();
    if dir.join("node_modules/@theguild/federation-composition/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (install Node.js and npm to run the federation composition test)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

const ENTITIES: &str = "query($r: [_Any!]!) { _entities(representations: $r) {
    __typename ... on Concert { id title available } ... on Order { id status quantity } } }";

#[tokio::test]
async fn a_router_composes_the_gateway_as_a_subgraph_and_resolves_its_entities() {
    install_composition();
    let stack = Stack::start().await;
    let gateway = &stack.gateway;

    let url = gateway.graphql_url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("compose.mjs")
            .arg(url)
            .current_dir(composition_dir())
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let composed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(composed.get("errors").is_none(), "composition failed: {composed:#}");
    let sdl = composed["sdl"].as_str().unwrap();
    assert!(sdl.contains("@link(") && sdl.contains("https://specs.apollo.dev/federation/v2."), "{sdl}");
    let supergraph = composed["supergraph"].as_str().unwrap();
    for entity in ["Concert", "Order"] {
        let keyed = supergraph.lines().any(|line| {
            line.starts_with(&format!("type {entity}")) && line.contains("graph: TICKETFLOW, key: \"id\"")
        });
        assert!(keyed, "{entity} is an entity keyed by id in the supergraph:\n{supergraph}");
    }

    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Federated Fields", "artist": "Subgraphs", "venue": "Router Hall", "city": "Ghent",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(40)).to_rfc3339(),
                "priceCents": 3000, "currency": "EUR", "capacity": 10,
            }),
        )
        .await;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let place = "mutation($c: ID!) { placeOrder(input: { concertId: $c, quantity: 2 }, idempotencyKey: \"fed-1\") { id } }";
    let placed = gateway.data(Some(&fan), place, json!({ "c": concert })).await;
    let order = placed["placeOrder"]["id"].as_str().unwrap().to_owned();

    let representations = json!({ "r": [
        { "__typename": "Concert", "id": concert },
        { "__typename": "Order", "id": order },
    ] });
    let resolved = gateway.data(Some(&fan), ENTITIES, representations.clone()).await;
    assert_eq!(
        resolved["_entities"],
        json!([
            { "__typename": "Concert", "id": concert, "title": "Federated Fields", "available": 8 },
            { "__typename": "Order", "id": order, "status": "PENDING", "quantity": 2 },
        ])
    );

    // Through a router the order is still only its owner's.
    let stranger = gateway.sign_up(&unique_email("stranger")).await;
    let hidden = gateway.data(Some(&stranger), ENTITIES, representations.clone()).await;
    assert_eq!(hidden["_entities"][0]["title"], "Federated Fields", "the concert is public: {hidden}");
    assert!(hidden["_entities"][1].is_null(), "another's order is not there: {hidden}");
    let anonymous = gateway.graphql(None, ENTITIES, representations).await;
    assert_eq!(error_code(&anonymous).as_deref(), Some("UNAUTHENTICATED"), "{anonymous}");

    // One call cannot make the gateway fetch an unbounded number of orders.
    let many: Vec<Value> = (0..101).map(|_| json!({ "__typename": "Order", "id": order })).collect();
    let refused = gateway.graphql(Some(&fan), ENTITIES, json!({ "r": many })).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
}
