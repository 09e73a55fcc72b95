//! The alerting rules and the dashboard in deploy/observability/ only name metrics the services
//! really export: a stack of the five real binaries serves a purchase (placed, paid, a second one
//! cancelled, the worker notifying each), then every admin port's `/metrics` is read and every
//! metric a rule or a panel queries must be among them. A renamed metric fails here, not on the
//! night the alert should have fired.

#![allow(clippy::unwrap_used)] // a panic is how a test fails (and makes the stack print its logs)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use integration::BinaryStack;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

fn observability_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every PromQL expression of the alerting rules and of the dashboard's panels.
fn queries() -> Vec<String> {
    let rules: Value = serde_norway::from_str(&observability_file("alerts.yaml")).unwrap();
    let dashboard: Value = serde_json::from_str(&observability_file("dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

/// The metric names a PromQL expression reads: identifiers that are not functions or aggregations
/// (followed by `(`), keywords and aggregations, label names (inside `{}` or a `by (...)` clause), durations or
/// Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may put their `by (...)` before the parenthesis: `sum by (job) (...)`.
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => skip_to(&mut i, '}'),
            '[' => skip_to(&mut i, ']'),
            '"' => {
                i += 1;
                skip_to(&mut i, '"');
            }
            '$' | '0'..='9' | '.' => {
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || "_.".contains(chars[i + 1]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i + 1 < chars.len()
                    && (chars[i + 1].is_ascii_alphanumeric() || "_:".contains(chars[i + 1]))
                {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if LABEL_LISTS.contains(&word.as_str()) {
                    skip_to(&mut i, ')');
                } else if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The metric names on a `/metrics` page (a summary's `_sum` and `_count` lines under its own name).
fn exported_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"sum by (job) (rate(http_requests_total{status=~"5.."}[5m])) / sum by (job) (rate(http_requests_total[$__rate_interval])) > 0.01 and max(outbox_pending) > 1e3"#,
    );
    assert_eq!(names, BTreeSet::from(["http_requests_total".to_owned(), "outbox_pending".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported_by_a_running_stack() {
    let mut stack = BinaryStack::start().await.unwrap();
    let api = stack.graphql().unwrap();
    api.buy_pay_and_cancel().await.unwrap();

    // Wait until the worker has told the buyer about all four events.
    let mut db = PgConnection::connect(&stack.databases.notifications.url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE sent_at IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if sent >= 4 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sent} of 4 notifications sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let http = reqwest::Client::new();
    let mut exported = BTreeSet::new();
    for (_, admin) in stack.health_endpoints() {
        let page = http.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        exported.extend(exported_names(&page));
    }
    let queried: BTreeSet<String> = queries().iter().flat_map(|q| metric_names(q)).collect();
    assert!(queried.len() >= 10, "the queries were read: {queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\nexported: {exported:?}");
}
