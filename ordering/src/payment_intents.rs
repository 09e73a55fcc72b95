//! The adapter for a hosted card processor's payment-intents HTTP API (the style of the common
//! processors): `POST /v1/payment_intents` creates and confirms a charge in one call,
//! `POST /v1/refunds` gives it back, and signed webhooks report outcomes that arrive later.
//!
//! Every request carries the API key as a bearer token and an `Idempotency-Key`, and is retried
//! once on a timeout or 5xx with the same key, so a retry can never charge twice. A charge's key is
//! made once per confirm attempt (each attempt is its own payment, refunded if the attempt does
//! not confirm the order); a refund's key is derived from the payment, so refunding twice refunds
//! once.

use std::time::Duration;

use futures::future::BoxFuture;
use ring::hmac;
use serde::Deserialize;
use uuid::Uuid;

use crate::payments::{Charge, PaymentError, PaymentId, PaymentProvider};

/// `PAYMENT_PROVIDER=payment-intents`: where the processor is and the secrets to talk to it.
#[derive(Clone)]
pub struct PaymentIntentsConfig {
    /// `PAYMENT_API_BASE_URL`, e.g. `https://api.processor.example`.
    pub base_url: String,
    /// `PAYMENT_API_KEY`: the secret API key. Never logged.
    pub api_key: String,
    /// `PAYMENT_WEBHOOK_SECRET`: the signing secret of webhook deliveries. Never logged.
    pub webhook_secret: String,
    /// `PAYMENT_WEBHOOK_TOLERANCE_SECS`, default 300: how old (or how far in the future) a signed
    /// webhook timestamp may be, against replays.
    pub webhook_tolerance: Duration,
    /// `PAYMENT_TIMEOUT_MS`, default 10000: the deadline of one request to the processor.
    pub timeout: Duration,
}

impl std::fmt::Debug for PaymentIntentsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentIntentsConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("webhook_tolerance", &self.webhook_tolerance)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Attempts of one request: the first, and one retry with the same idempotency key.
const ATTEMPTS: u32 = 2;

pub struct PaymentIntents {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
}

#[derive(Deserialize)]
struct Intent {
    id: String,
    status: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ApiError,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: String,
}

impl PaymentIntents {
    pub fn new(config: &PaymentIntentsConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .build()?;
        Ok(Self {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key: config.api_key.clone(),
        })
    }

    /// POSTs `form` to `path`, retrying once (same key) when the processor did not answer or
    /// answered 5xx. The answer is the processor's: a success body, or its error.
    async fn post(&self, path: &str, key: &str, form: &[(&str, String)]) -> Result<Intent, PaymentError> {
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .post(format!("{}{path}", self.base_url))
                .bearer_auth(&self.api_key)
                .header("Idempotency-Key", key)
                .form(form)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    last = error.without_url().to_string();
                    tracing::debug!(attempt, error = %last, "payment request failed");
                    continue;
                }
            };
            let status = response.status();
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                last = format!("the processor answered {status}");
                continue;
            }
            if status.is_success() {
                return response
                    .json::<Intent>()
                    .await
                    .map_err(|error| PaymentError::Unavailable(format!("unreadable answer: {error}")));
            }
            let error = response
                .json::<ErrorBody>()
                .await
                .map(|b| b.error)
                .unwrap_or(ApiError { kind: String::new(), code: String::new() });
            return Err(match (status.as_u16(), error.kind.as_str()) {
                (402, _) | (_, "card_error") => PaymentError::Declined,
                (400 | 404, _) => PaymentError::InvalidToken,
                _ => {
                    // 401/403: our API key is wrong or revoked. Not the buyer's fault, and not
                    // fixed by retrying: loud in the log, "unavailable" to the buyer.
                    tracing::error!(http.status = status.as_u16(), error.kind = %error.kind, error.code = %error.code, "the payment processor refused the request; check PAYMENT_API_KEY");
                    PaymentError::Unavailable(format!("the processor answered {status}"))
                }
            });
        }
        Err(PaymentError::Unavailable(last))
    }
}

impl PaymentProvider for PaymentIntents {
    fn charge(&self, charge: Charge) -> BoxFuture<'_, Result<PaymentId, PaymentError>> {
        Box::pin(async move {
            let key = format!("charge-{}-{}", charge.order_id, Uuid::new_v4().simple());
            let form = [
                ("amount", charge.amount_cents.to_string()),
                ("currency", charge.currency.to_ascii_lowercase()),
                ("payment_method", charge.token.clone()),
                ("confirm", "true".to_owned()),
                ("metadata[order_id]", charge.order_id.to_string()),
            ];
            let intent = self.post("/v1/payment_intents", &key, &form).await?;
            match intent.status.as_str() {
                "succeeded" => Ok(PaymentId(intent.id)),
                // A card that needs a step this API-only flow cannot show (3-D Secure), or a
                // payment method that failed: not paid.
                other => {
                    tracing::info!(payment.id = %intent.id, payment.status = other, "payment intent not paid");
                    Err(PaymentError::Declined)
                }
            }
        })
    }

    fn refund<'a>(&'a self, payment: &'a PaymentId) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let key = format!("refund-{}", payment.0);
            self.post("/v1/refunds", &key, &[("payment_intent", payment.0.clone())]).await.map(|_| ())
        })
    }
}

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or malformed signature header")]
    MalformedSignature,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signed timestamp is outside the tolerance")]
    StaleTimestamp,
}

/// The header a delivery is signed in: `t=<unix seconds>,v1=<hex HMAC-SHA256>` (several `v1` while
/// the processor rotates its signing secret).
pub const SIGNATURE_HEADER: &str = "Payment-Signature";

/// Checks a delivery's signature: HMAC-SHA256 over `<t>.<body>` with the signing secret, compared in
/// constant time, and `t` within `tolerance` of `now` (unix seconds).
pub fn verify_webhook(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", hex)) => signatures.extend(decode_hex(hex)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::MalformedSignature)?;
    if signatures.is_empty() {
        return Err(WebhookError::MalformedSignature);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    if !signatures.iter().any(|tag| hmac::verify(&key, &signed, tag).is_ok()) {
        return Err(WebhookError::BadSignature);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if (now - timestamp).abs() > tolerance {
        return Err(WebhookError::StaleTimestamp);
    }
    Ok(())
}

/// The signature header value for `body` at `timestamp`, as the processor makes it.
pub fn sign_webhook(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    let tag = hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| char::from(b).to_digit(16);
            u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";
    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn a_signed_delivery_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign_webhook(SECRET, 1_000, body);
        assert_eq!(verify_webhook(SECRET, &header, body, 1_100, TOLERANCE), Ok(()));
    }

    #[test]
    fn a_changed_body_or_another_secret_does_not() {
        let header = sign_webhook(SECRET, 1_000, b"{}");
        assert_eq!(
            verify_webhook(SECRET, &header, b"{ }", 1_000, TOLERANCE),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_webhook("other", &header, b"{}", 1_000, TOLERANCE),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn an_old_delivery_is_refused_even_when_signed() {
        let header = sign_webhook(SECRET, 1_000, b"{}");
        assert_eq!(
            verify_webhook(SECRET, &header, b"{}", 1_301, TOLERANCE),
            Err(WebhookError::StaleTimestamp)
        );
    }

    #[test]
    fn malformed_headers_are_refused_and_rotated_secrets_accepted() {
        for header in ["", "t=1000", "v1=abcd", "t=x,v1=ab"] {
            assert_eq!(
                verify_webhook(SECRET, header, b"{}", 1_000, TOLERANCE),
                Err(WebhookError::MalformedSignature),
                "{header}"
            );
        }
        let old = sign_webhook("old", 1_000, b"{}");
        let new = sign_webhook(SECRET, 1_000, b"{}");
        let both = format!("{},{}", old, new.split_once(',').unwrap().1);
        assert_eq!(verify_webhook(SECRET, &both, b"{}", 1_000, TOLERANCE), Ok(()));
    }

    #[test]
    fn the_config_debug_form_has_no_secret() {
        let config = PaymentIntentsConfig {
            base_url: "https://p.example".into(),
            api_key: "sk_live_secret".into(),
            webhook_secret: "whsec_secret".into(),
            webhook_tolerance: TOLERANCE,
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk_live") && !shown.contains("whsec"), "{shown}");
    }
}
