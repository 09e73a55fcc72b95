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

/// The orders of [`GraphqlClient::buy_pay_and_cancel`].
#[derive(Debug, Clone)]
pub struct Purchase {
    pub token: String,
    /// Placed and paid: `order.created`, `order.confirmed`.
    pub paid: String,
    /// Placed and cancelled by the buyer: `order.created`, `order.cancelled`.
    pub cancelled: String,
}

impl GraphqlClient {
    /// What a new buyer does on a first visit: registers, signs in, places two one-seat orders for
    /// the first concert, pays the first and cancels the second.
    pub async fn buy_pay_and_cancel(&self) -> anyhow::Result<Purchase> {
        let email = format!("fan-{}@example.com", uuid::Uuid::new_v4().simple());
        let password = "correct horse battery staple";
        let input = json!({ "email": email, "password": password, "displayName": "Fan" });
        self.data(
            None,
            "mutation($input: RegisterInput!) { register(input: $input) { userId } }",
            json!({ "input": input }),
        )
        .await?;
        let login = self
            .data(
                None,
                "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
                json!({ "input": { "email": email, "password": password } }),
            )
            .await?;
        let token = login["login"]["accessToken"].as_str().context("an access token")?.to_owned();
        let page = self.data(None, "{ concerts(first: 1) { edges { node { id } } } }", json!({})).await?;
        let concert = page["concerts"]["edges"][0]["node"]["id"].as_str().context("a concert")?.to_owned();
        let place = "mutation($input: PlaceOrderInput!, $key: String!) { placeOrder(input: $input, idempotencyKey: $key) { id } }";
        let mut orders = Vec::new();
        for _ in 0..2 {
            let key = uuid::Uuid::new_v4().to_string();
            let input = json!({ "concertId": concert, "quantity": 1 });
            let placed = self.data(Some(&token), place, json!({ "input": input, "key": key })).await?;
            orders.push(placed["placeOrder"]["id"].as_str().context("an order id")?.to_owned());
        }
        let confirm = "mutation($id: ID!) { confirmOrder(id: $id, paymentToken: \"tok_visa\") { status } }";
        let confirmed = self.data(Some(&token), confirm, json!({ "id": orders[0] })).await?;
        anyhow::ensure!(confirmed["confirmOrder"]["status"] == "CONFIRMED", "{confirmed}");
        let cancel = "mutation($id: ID!) { cancelOrder(id: $id) { status } }";
        let cancelled = self.data(Some(&token), cancel, json!({ "id": orders[1] })).await?;
        anyhow::ensure!(cancelled["cancelOrder"]["status"] == "CANCELLED", "{cancelled}");
        let cancelled = orders.pop().context("two orders")?;
        let paid = orders.pop().context("two orders")?;
        Ok(Purchase { token, paid, cancelled })
    }
}
