//! GraphQL over HTTP conformance: the `graphql-http` package's server audits (the GraphQL
//! Foundation's reference suite) run against a real gateway, and every one must pass: no error, no
//! warning, no notice.
//!
//! The audits are an npm package (test-only, in `tests/audit/`); `npm ci` installs it there on
//! first use, so Node.js and npm must be on the machine (`.ci/run` makes sure they are).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use support::Gateway;

fn audit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audit")
}

/// Installs the audit package from its lock file unless it is there already.
fn install_audits() {
    let dir = audit_dir();
    if dir.join("node_modules/graphql-http/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (install Node.js and npm to run the GraphQL over HTTP audits)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

#[tokio::test]
async fn the_gateway_passes_every_graphql_over_http_audit() {
    install_audits();
    let gateway = Gateway::alone(&[]).await;
    let url = gateway.graphql_url();
    // The audits are a Node program; run it off the runtime that serves the gateway.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node").arg("audit.mjs").arg(url).current_dir(audit_dir()).output().expect("node runs")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(results.len() >= 50, "the audits ran: {}", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|result| result["status"] != "ok")
        .map(|result| format!("{} {}: {}", result["status"], result["name"], result["reason"]))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} audits did not pass:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}

#[tokio::test]
async fn the_response_media_type_follows_accept() {
    let gateway = Gateway::alone(&[]).await;
    let post = |accept: &'static str, query: &'static str| {
        gateway
            .http
            .post(gateway.graphql_url())
            .header(ACCEPT, accept)
            .json(&json!({ "query": query }))
            .send()
    };

    let legacy = post("application/json", "{ __typename }").await.unwrap();
    assert_eq!(legacy.status(), StatusCode::OK);
    assert!(legacy.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));

    let modern = post("application/graphql-response+json", "{ __typename }").await.unwrap();
    assert_eq!(modern.status(), StatusCode::OK);
    assert!(
        modern.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/graphql-response+json")
    );

    // A document that does not validate never executes: 400 and no `data` for clients that speak
    // the new media type, 200 with the errors for older ones.
    let invalid = post("application/graphql-response+json", "{ noSuchField }").await.unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    let body: Value = invalid.json().await.unwrap();
    assert!(body.get("data").is_none(), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let invalid = post("application/json", "{ noSuchField }").await.unwrap();
    assert_eq!(invalid.status(), StatusCode::OK);

    // A field error during execution is a GraphQL result, not an HTTP error.
    let executed =
        post("application/graphql-response+json", "{ concerts { edges { cursor } } }").await.unwrap();
    assert_eq!(executed.status(), StatusCode::OK);
    let body: Value = executed.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAVAILABLE", "{body}");

    assert_eq!(post("text/plain", "{ __typename }").await.unwrap().status(), StatusCode::NOT_ACCEPTABLE);
}
