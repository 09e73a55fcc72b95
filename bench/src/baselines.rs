//! Same-run baselines: what the machine does with no TicketFlow code in the way.
//!
//! - a static axum handler answering the exact bytes the gateway answers for a page of concerts;
//! - a bare async-graphql schema (one field, static data) behind async-graphql-axum;
//! - pgbench running the order transaction (decrement a seat counter, insert an order), and
//!   redis-benchmark's GET, run from [`crate::workloads`].

use std::net::SocketAddr;

use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
use async_graphql_axum::GraphQL;
use axum::Router;
use axum::http::header;
use axum::routing::{any, post_service};

use crate::workloads::Fixtures;

pub struct Baselines {
    /// POST answers the gateway's page of concerts, byte for byte.
    pub static_page: String,
    /// POST answers the gateway's sold-out answer, byte for byte.
    pub static_sold_out: String,
    /// A bare async-graphql schema.
    pub bare_graphql: String,
}

struct BareQuery;

#[Object]
impl BareQuery {
    /// Static data, so the baseline is async-graphql and axum alone.
    async fn hello(&self) -> &'static str {
        "world"
    }
}

impl Baselines {
    pub async fn start(fixtures: &Fixtures) -> anyhow::Result<Self> {
        let page = fixtures.page_bytes.clone();
        let sold_out = fixtures.sold_out_bytes.clone();
        let schema = Schema::new(BareQuery, EmptyMutation, EmptySubscription);
        let router = Router::new()
            .route("/page", any(move || respond(page.clone())))
            .route("/sold-out", any(move || respond(sold_out.clone())))
            .route("/graphql", post_service(GraphQL::new(schema)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self {
            static_page: format!("http://{addr}/page"),
            static_sold_out: format!("http://{addr}/sold-out"),
            bare_graphql: format!("http://{addr}/graphql"),
        })
    }
}

async fn respond(bytes: Vec<u8>) -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], bytes)
}
