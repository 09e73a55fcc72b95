//! The playground in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), driven over WebDriver, opens `/graphql` on a gateway in front of the
//! whole stack, finds the README's operations as ready tabs, runs Browse and sees the concerts.
//! Everything it loads comes from the gateway, under the page's strict CSP.
//!
//! A browser that cannot be started fails the test: it never skips.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use support::Stack;
use tokio::process::{Child, Command};

/// `chromedriver` on a free local port, stopped when dropped.
struct Driver {
    _process: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver; .ci/run does)");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{url}/status")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Driver { _process: process, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {url}");
    }

    /// A headless Chromium session with a fresh profile.
    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--no-first-run",
                    "--disable-sync", format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("headless Chromium could not be started: {error}"))
    }
}

/// The text of the first element matching `css`, waiting up to `within` for it to contain `wanted`.
async fn wait_for_text(browser: &Client, css: &str, wanted: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(wanted) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css} never showed {wanted:?}; last: {last:?}");
}

#[tokio::test]
async fn a_visitor_opens_the_playground_and_browses_concerts_from_its_first_tab() {
    let stack = Stack::start().await;
    let admin = stack.admin_token().await;
    stack
        .create_concert(
            &admin,
            json!({
                "title": "Playground Nights", "artist": "GraphiQL", "venue": "Tab Hall", "city": "Leiden",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339(),
                "priceCents": 1800, "currency": "EUR", "capacity": 30,
            }),
        )
        .await;

    let driver = Driver::start().await;
    let profile = std::env::temp_dir().join(format!("tf-chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&profile).unwrap();
    let browser = driver.browser(&profile).await;
    let outcome = async {
        browser.goto(&stack.gateway.graphql_url()).await.unwrap();
        let tabs = wait_for_text(&browser, ".graphiql-tabs", "Live", Duration::from_secs(30)).await;
        for name in ["Browse", "Register", "Login", "Place", "Pay", "Mine", "Live"] {
            assert!(tabs.contains(name), "tab {name} missing: {tabs}");
        }
        let editor =
            wait_for_text(&browser, ".graphiql-query-editor", "Authorization", Duration::from_secs(10)).await;
        assert!(editor.contains("query Browse"), "the first tab is Browse: {editor}");

        browser.find(Locator::Css(".graphiql-execute-button")).await.unwrap().click().await.unwrap();
        let result =
            wait_for_text(&browser, ".result-window", "Playground Nights", Duration::from_secs(30)).await;
        assert!(!result.contains("\"errors\""), "{result}");
    }
    .await;
    browser.close().await.unwrap();
    std::fs::remove_dir_all(&profile).ok();
    outcome
}
