//! The ordering service's REST API: placing, reading, confirming and cancelling orders.
//!
//! Every call carries the caller's access token; ordering checks it again and only ever shows a
//! caller their own orders.

use chrono::{DateTime, Utc};
use platform::events::OrderStatus;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Retry;
use super::rest::{Call, RestClient};
use crate::config::DownstreamConfig;
use crate::error::{GatewayError, Service};

#[derive(Debug)]
pub struct OrderingClient {
    rest: RestClient,
}

/// An order as ordering returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDto {
    pub id: Uuid,
    #[serde(default)]
    pub buyer_id: Option<Uuid>,
    pub concert_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub hold_expires_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "reason")]
    pub cancel_reason: Option<String>,
}

/// One page of the caller's orders, newest first.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    #[serde(alias = "items")]
    pub orders: Vec<OrderDto>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    concert_id: Uuid,
    quantity: i32,
}

impl OrderingClient {
    pub fn new(config: &DownstreamConfig) -> anyhow::Result<Self> {
        Ok(Self { rest: RestClient::new(Service::Ordering, &config.ordering_url, config)? })
    }

    /// Safe to repeat thanks to the idempotency key, yet repeated only when the first attempt never
    /// reached ordering (see the module doc of `downstream`).
    pub async fn place(
        &self,
        token: &str,
        concert_id: Uuid,
        quantity: i32,
        idempotency_key: &str,
    ) -> Result<OrderDto, GatewayError> {
        let call = Call::new("place_order", Method::POST, "/orders")
            .token(token)
            .json(&NewOrder { concert_id, quantity })?
            .header("idempotency-key", idempotency_key)
            .retry(Retry::IfNotSent)
            .resource("concert");
        self.rest.json(call).await
    }

    pub async fn get(&self, token: &str, id: Uuid) -> Result<OrderDto, GatewayError> {
        self.rest
            .json(Call::new("get_order", Method::GET, format!("/orders/{id}")).token(token).resource("order"))
            .await
    }

    pub async fn list(
        &self,
        token: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<OrderPage, GatewayError> {
        let mut path = format!("/orders?limit={limit}");
        if let Some(cursor) = cursor.filter(|c| !c.is_empty()) {
            path.push_str("&cursor=");
            path.push_str(&form_encode(cursor));
        }
        self.rest.json(Call::new("list_orders", Method::GET, path).token(token).resource("order")).await
    }

    /// Never retried: it charges the payment token.
    pub async fn confirm(
        &self,
        token: &str,
        id: Uuid,
        payment_token: &str,
    ) -> Result<OrderDto, GatewayError> {
        let call = Call::new("confirm_order", Method::POST, format!("/orders/{id}/confirm"))
            .token(token)
            .json(&serde_json::json!({ "paymentToken": payment_token }))?
            .resource("order");
        self.rest.json(call).await
    }

    pub async fn cancel(&self, token: &str, id: Uuid) -> Result<OrderDto, GatewayError> {
        let call = Call::new("cancel_order", Method::POST, format!("/orders/{id}/cancel"))
            .token(token)
            .resource("order");
        self.rest.json(call).await
    }

    pub async fn alive(&self) -> Result<(), String> {
        self.rest.alive().await
    }
}

/// Percent-encodes everything but unreserved characters, for an opaque cursor in a query string.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_escaped_in_the_query_string() {
        assert_eq!(form_encode("abc+/=&x"), "abc%2B%2F%3D%26x");
    }
}
