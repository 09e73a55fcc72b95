//! The workloads of an on-sale minute and what each is measured against.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::Cli;
use crate::baselines::Baselines;
use crate::load::{self, Expect, Load};
use crate::report::Row;
use crate::stack::{Stack, database_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Browse,
    Typename,
    OrdersSpread,
    OrdersHot,
    SoldOut,
    Login,
}

const ALL: [Workload; 6] = [
    Workload::Browse,
    Workload::Typename,
    Workload::OrdersSpread,
    Workload::OrdersHot,
    Workload::SoldOut,
    Workload::Login,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::Browse => "browse",
            Self::Typename => "typename",
            Self::OrdersSpread => "orders-spread",
            Self::OrdersHot => "orders-hot",
            Self::SoldOut => "sold-out",
            Self::Login => "login",
        }
    }

    pub fn select(names: &[String]) -> anyhow::Result<Vec<Workload>> {
        if names.iter().any(|name| name == "all") {
            return Ok(ALL.to_vec());
        }
        names
            .iter()
            .map(|name| {
                ALL.into_iter().find(|w| w.name() == name).with_context(|| {
                    let known: Vec<_> = ALL.iter().map(|w| w.name()).collect();
                    format!("unknown workload {name:?}: expected all or one of {}", known.join(", "))
                })
            })
            .collect()
    }

    /// Whether it takes seats, after which seats sold + held + available must equal capacity.
    pub fn takes_seats(self) -> bool {
        matches!(self, Self::OrdersSpread | Self::OrdersHot | Self::SoldOut)
    }
}

pub const BROWSE: &str = "{ concerts(first: 20) { edges { cursor node { id title artist venue city startsAt price { cents currency } available } } pageInfo { hasNextPage endCursor } } }";
/// `{CONCERT}` and `{KEY}` are filled in per request by the load script.
const PLACE: &str = "mutation { placeOrder(input: { concertId: \"{CONCERT}\", quantity: 1 }, idempotencyKey: \"{KEY}\") { id status } }";
const BUYERS: usize = 20;
const SPREAD_CONCERTS: usize = 1000;
const PASSWORD: &str = "bench password, long enough";

/// What the workloads run against: buyers, concerts to sell, and the bytes the baselines answer.
pub struct Fixtures {
    pub tokens: Vec<String>,
    pub spread: Vec<String>,
    pub hot: String,
    pub sold_out: String,
    pub login_body: String,
    pub page_bytes: Vec<u8>,
    pub sold_out_bytes: Vec<u8>,
}

impl Fixtures {
    pub async fn prepare(stack: &Stack) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let graphql = format!("{}/graphql", stack.gateway);
        let mut tokens = Vec::new();
        let mut login_body = String::new();
        for buyer in 0..BUYERS {
            let email = format!("bench-{buyer}-{}@example.com", uuid::Uuid::new_v4().simple());
            let register = json!({
                "query": "mutation($i: RegisterInput!) { register(input: $i) { userId } }",
                "variables": { "i": { "email": email, "password": PASSWORD, "displayName": "Bench Buyer" } },
            });
            data(&http, &graphql, &register).await?;
            let login = json!({
                "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                "variables": { "i": { "email": email, "password": PASSWORD } },
            });
            let answer = data(&http, &graphql, &login).await?;
            tokens.push(answer["login"]["accessToken"].as_str().context("a token")?.to_owned());
            login_body = login.to_string();
        }

        let mut catalog = sqlx::PgConnection::connect(&database_url("catalog")).await?;
        let insert = |capacity: i32, available: i32| {
            let id = uuid::Uuid::new_v4();
            let starts_at = chrono::Utc::now() + chrono::Duration::days(400);
            (id, capacity, available, starts_at)
        };
        let spread: Vec<_> = (0..SPREAD_CONCERTS).map(|_| insert(1000, 1000)).collect();
        let hot = insert(100_000, 100_000);
        let sold_out = insert(1, 0);
        for (id, capacity, available, starts_at) in spread.iter().chain([&hot, &sold_out]) {
            sqlx::query(
                "INSERT INTO concerts (id, title, artist, venue, city, starts_at, price_cents, currency, capacity, available)
                 VALUES ($1, 'Bench Night', 'The Loads', 'Bench Hall', 'Benchton', $2, 4500, 'EUR', $3, $4)",
            )
            .bind(id)
            .bind(starts_at)
            .bind(capacity)
            .bind(available)
            .execute(&mut catalog)
            .await?;
        }

        let page =
            http.post(&graphql).json(&json!({ "query": BROWSE })).send().await?.bytes().await?.to_vec();
        let place = PLACE.replace("{CONCERT}", &sold_out.0.to_string()).replace("{KEY}", "probe");
        let probe = http
            .post(&graphql)
            .bearer_auth(&tokens[0])
            .json(&json!({ "query": place }))
            .send()
            .await?
            .bytes()
            .await?;
        if !String::from_utf8_lossy(&probe).contains("SOLD_OUT") {
            bail!("the sold-out concert did not answer SOLD_OUT: {}", String::from_utf8_lossy(&probe));
        }
        Ok(Self {
            tokens,
            spread: spread.iter().map(|c| c.0.to_string()).collect(),
            hot: hot.0.to_string(),
            sold_out: sold_out.0.to_string(),
            login_body,
            page_bytes: page,
            sold_out_bytes: probe.to_vec(),
        })
    }

    /// No oversell: for every concert, seats held or sold plus seats available is its capacity.
    pub async fn check_seats_add_up(&self, _stack: &Stack) -> anyhow::Result<()> {
        let mut catalog = sqlx::PgConnection::connect(&database_url("catalog")).await?;
        let wrong: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM concerts c WHERE c.capacity <> c.available + COALESCE((
                 SELECT sum(h.quantity) FROM holds h
                 WHERE h.concert_id = c.id AND h.status IN ('held', 'confirmed')), 0)",
        )
        .fetch_one(&mut catalog)
        .await?;
        if wrong > 0 {
            bail!("{wrong} concerts do not add up: sold + held + available != capacity");
        }
        eprintln!("   seats add up for every concert");
        Ok(())
    }
}

async fn data(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let answer: Value = http.post(url).json(body).send().await?.json().await?;
    if answer.get("errors").is_some() {
        bail!("{answer}");
    }
    Ok(answer["data"].clone())
}

/// The order transaction as the database alone would run it: take a seat, record an order.
const PGBENCH_SETUP: &str = "
DROP TABLE IF EXISTS bench_orders, bench_concerts;
CREATE TABLE bench_concerts (id integer PRIMARY KEY, available integer NOT NULL CHECK (available >= 0));
CREATE TABLE bench_orders (id bigserial PRIMARY KEY, concert_id integer NOT NULL, quantity integer NOT NULL,
                           created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO bench_concerts SELECT g, 1000000 FROM generate_series(1, 1000) g;";
const PGBENCH_ORDER: &str = "\\set concert random(1, 1000)
BEGIN;
UPDATE bench_concerts SET available = available - 1 WHERE id = :concert AND available > 0;
INSERT INTO bench_orders (concert_id, quantity) VALUES (:concert, 1);
END;
";

async fn pgbench_database() -> anyhow::Result<String> {
    let name = "ticketflow_bench_pgbench";
    let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
    let mut db = sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await?;
    sqlx::raw_sql(PGBENCH_SETUP).execute(&mut db).await?;
    Ok(name.to_owned())
}

/// The workload's load and its baseline.
enum Baseline {
    Http(Load),
    Pgbench(String),
    RedisGet,
}

pub async fn measure(
    workload: Workload,
    stack: &Stack,
    fixtures: &Fixtures,
    baselines: &Baselines,
    cli: &Cli,
) -> anyhow::Result<Row> {
    let graphql = format!("{}/graphql", stack.gateway);
    let gateway_load = |body: String, concerts: Vec<String>, tokens: Vec<String>, expect: Expect| Load {
        url: graphql.clone(),
        method: "POST",
        body: Some(body),
        concerts,
        tokens,
        expect,
    };
    let static_load = |url: &str| Load {
        url: url.to_owned(),
        method: "POST",
        body: None,
        concerts: Vec::new(),
        tokens: Vec::new(),
        expect: Expect::Success,
    };
    let place = json!({ "query": PLACE }).to_string();
    let (load, baseline, baseline_name) = match workload {
        Workload::Browse => (
            gateway_load(json!({ "query": BROWSE }).to_string(), vec![], vec![], Expect::Success),
            Baseline::Http(static_load(&baselines.static_page)),
            "static axum handler, same bytes",
        ),
        Workload::Typename => (
            gateway_load(json!({ "query": "{ __typename }" }).to_string(), vec![], vec![], Expect::Success),
            Baseline::Http(Load {
                body: Some(json!({ "query": "{ hello }" }).to_string()),
                ..static_load(&baselines.bare_graphql)
            }),
            "bare async-graphql schema",
        ),
        Workload::OrdersSpread => (
            gateway_load(place, fixtures.spread.clone(), fixtures.tokens.clone(), Expect::Success),
            Baseline::Pgbench(pgbench_database().await?),
            "pgbench order transaction, 16 clients",
        ),
        Workload::OrdersHot => (
            gateway_load(place, vec![fixtures.hot.clone()], fixtures.tokens.clone(), Expect::Success),
            Baseline::Pgbench(pgbench_database().await?),
            "pgbench order transaction, 16 clients",
        ),
        Workload::SoldOut => (
            gateway_load(
                place,
                vec![fixtures.sold_out.clone()],
                fixtures.tokens.clone(),
                Expect::Contains("SOLD_OUT"),
            ),
            Baseline::Http(static_load(&baselines.static_sold_out)),
            "static axum handler, same bytes",
        ),
        Workload::Login => (
            gateway_load(fixtures.login_body.clone(), vec![], vec![], Expect::Success),
            Baseline::RedisGet,
            "redis-benchmark GET (reference only)",
        ),
    };

    let connections = if workload == Workload::Login { 8 } else { cli.connections };
    let mut rounds = Vec::new();
    for round in 1..=cli.rounds {
        let measured = load::run(&load, connections, cli.seconds, None).await?;
        let base = match &baseline {
            Baseline::Http(base) => load::run(base, cli.connections, cli.seconds, None).await?.rate,
            Baseline::Pgbench(database) => load::pgbench(database, PGBENCH_ORDER, cli.seconds).await?,
            Baseline::RedisGet => load::redis_get(200_000).await?,
        };
        eprintln!("   round {round}: {:.0}/s against {:.0}/s", measured.rate, base);
        rounds.push((measured.rate, base));
    }
    let capacity = median(rounds.iter().map(|(rate, _)| *rate).collect());
    // Latency at about half of capacity, paced over 16 connections.
    let half = load::run(&load, 16, cli.seconds, Some(capacity / 2.0)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Row { name: workload.name(), baseline: baseline_name, rounds, at_half: half })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
