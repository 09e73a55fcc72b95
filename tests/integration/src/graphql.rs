//! A GraphQL client for tests that talk to a gateway over HTTP, as the apps do.

use anyhow::Context;
use serde_json::{Value, json};

/// POSTs operations to one gateway's `/graphql`.
#[derive(Debug, Clone)]
pub struct GraphqlClient {
    pub url: String,
    http: reqwest::Client,
}

impl GraphqlClient {
    /// `url` is the endpoint itself, e.g. `http://127.0.0.1:8080/graphql`.
    pub fn new(url: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        Ok(Self { url, http })
    }

    /// The whole response body of one operation (`data` and/or `errors`).
    pub async fn request(&self, token: Option<&str>, query: &str, variables: Value) -> anyhow::Result<Value> {
        let mut request = self.http.post(&self.url).json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("POST {}", self.url))?;
        let status = response.status();
        let body = response.text().await?;
        serde_json::from_str(&body).with_context(|| format!("{status}: not JSON: {body}"))
    }

    /// The `data` of an operation that must succeed.
    pub async fn data(&self, token: Option<&str>, query: &str, variables: Value) -> anyhow::Result<Value> {
        let response = self.request(token, query, variables).await?;
        anyhow::ensure!(response.get("errors").is_none(), "unexpected errors: {response}");
        Ok(response["data"].clone())
    }
}
