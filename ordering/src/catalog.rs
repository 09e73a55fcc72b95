//! The catalog gRPC client: seat holds, which carry the price the seats were held at.
//!
//! Every call has a deadline and goes through a circuit breaker, so a dead catalog costs a request a
//! fast 503 rather than a hung thread. Every call ordering makes is idempotent (seat calls are keyed
//! by order id), so transient failures are retried a few times with a short back-off. The channel
//! connects lazily: ordering starts, and reports catalog in `/health`, while catalog is down.
//!
//! Seat calls carry ordering's service token (never a buyer's token): catalog answers them only for
//! a caller holding the `seats:write` scope. A token catalog refuses (`UNAUTHENTICATED`: identity
//! rotated its key, the token expired on the way) is replaced once and the call sent again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use platform::breaker::{BreakerError, CircuitBreaker};
use proto::catalog::v1 as pb;
use proto::catalog::v1::catalog_client::CatalogClient;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::config::CatalogConfig;
use crate::domain::{Price, Quantity};
use crate::service_token::{ServiceTokens, TokenError};

/// What catalog answered, in ordering's terms.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such concert (or no hold for that order).
    #[error("not found in catalog")]
    NotFound,
    #[error("not enough seats left")]
    SoldOut,
    /// The hold was released or expired, so it cannot be confirmed.
    #[error("the seat hold is no longer active: {0}")]
    HoldInactive(String),
    /// Catalog is down, slow, or the circuit is open.
    #[error("catalog is unavailable: {0}")]
    Unavailable(String),
    /// Ordering could not get a service token to call catalog with.
    #[error("no service token for catalog: {0}")]
    Credentials(#[from] TokenError),
    /// An answer that means a bug on one side (invalid argument, permission denied, ...).
    #[error("catalog refused the call: {0:?} {1}")]
    Refused(Code, String),
}

/// Where catalog says an order's seats stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatHold {
    pub state: HoldState,
    pub expires_at: DateTime<Utc>,
    /// One seat's price when catalog took the seats (read in the same statement).
    pub price: Price,
}

/// A cloneable handle on catalog, shared by requests, the sweeper and `/health`.
#[derive(Debug)]
pub struct Catalog {
    client: CatalogClient<Channel>,
    channel: Channel,
    breaker: CircuitBreaker,
    timeout: Duration,
    attempts: u32,
    tokens: Arc<ServiceTokens>,
}

impl Catalog {
    /// A client whose connection is made on first use (and re-made after catalog restarts).
    pub fn connect_lazy(config: &CatalogConfig, tokens: Arc<ServiceTokens>) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(config.url.clone())?
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: CatalogClient::new(channel.clone()),
            channel,
            breaker: CircuitBreaker::new("catalog", config.breaker),
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            tokens,
        })
    }

    /// Holds `quantity` seats of `concert_id` for `order_id` (idempotent by order id), priced at
    /// the concert's price when they were taken.
    pub async fn reserve_seats(
        &self,
        order_id: Uuid,
        concert_id: Uuid,
        quantity: Quantity,
        hold: Duration,
    ) -> Result<SeatHold, CatalogError> {
        let message = pb::ReserveSeatsRequest {
            order_id: order_id.to_string(),
            concert_id: concert_id.to_string(),
            quantity: i32::try_from(quantity.get()).unwrap_or(i32::MAX),
            hold_seconds: i32::try_from(hold.as_secs()).unwrap_or(i32::MAX),
        };
        let hold =
            self.call("ReserveSeats", message, |mut c, r| async move { c.reserve_seats(r).await }).await?;
        seat_hold(&hold)
    }

    /// Turns an order's hold into sold seats (idempotent).
    pub async fn confirm_reservation(&self, order_id: Uuid) -> Result<SeatHold, CatalogError> {
        let message = pb::ConfirmReservationRequest { order_id: order_id.to_string() };
        let hold = self
            .call("ConfirmReservation", message, |mut c, r| async move { c.confirm_reservation(r).await })
            .await?;
        seat_hold(&hold)
    }

    /// Gives an order's seats back to sale (idempotent).
    pub async fn release_reservation(&self, order_id: Uuid) -> Result<SeatHold, CatalogError> {
        let message = pb::ReleaseReservationRequest { order_id: order_id.to_string() };
        let hold = self
            .call("ReleaseReservation", message, |mut c, r| async move { c.release_reservation(r).await })
            .await?;
        seat_hold(&hold)
    }

    /// Catalog's `grpc.health.v1` answer, for ordering's own `/health`.
    pub async fn check_health(&self) -> Result<(), String> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(self.channel.clone());
        let mut request = Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(self.timeout);
        let response = tokio::time::timeout(self.timeout, client.check(request))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("catalog reports {}", other.as_str_name())),
        }
    }

    /// One idempotent call: each attempt under the deadline and the breaker, retried on failures that
    /// say catalog is unwell (never on an answer such as "sold out"), and once with a fresh service
    /// token when catalog refuses the one it was sent with.
    async fn call<M, T, F, Fut>(&self, method: &'static str, message: M, send: F) -> Result<T, CatalogError>
    where
        M: Clone,
        F: Fn(CatalogClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        let mut token_refreshed = false;
        let outcome = loop {
            let token = match self.tokens.token().await {
                Ok(token) => token,
                Err(error) => break Err(CatalogError::Credentials(error)),
            };
            let request = self.request(&token, message.clone());
            let sent = async {
                match tokio::time::timeout(self.timeout, send(self.client.clone(), request)).await {
                    Ok(result) => result,
                    Err(_) => Err(Status::deadline_exceeded(format!("no answer within {:?}", self.timeout))),
                }
            };
            match self.breaker.call(sent, |status| is_failure(status.code())).await {
                Ok(response) => break Ok(response.into_inner()),
                Err(BreakerError::Open(_)) => break Err(CatalogError::Unavailable("circuit open".into())),
                Err(BreakerError::Inner(status))
                    if status.code() == Code::Unauthenticated && !token_refreshed =>
                {
                    tracing::info!(catalog.method = method, error = %status.message(), "catalog refused the service token; fetching a new one");
                    self.tokens.invalidate(&token).await;
                    token_refreshed = true;
                }
                Err(BreakerError::Inner(status)) if is_failure(status.code()) && attempt < self.attempts => {
                    tracing::debug!(catalog.method = method, attempt, error = %status.message(), "retrying catalog call");
                    // 50 ms, 150 ms, 450 ms, ...: short enough that a request still fails fast.
                    tokio::time::sleep(Duration::from_millis(50 * 3u64.pow(attempt - 1))).await;
                    attempt += 1;
                }
                Err(BreakerError::Inner(status)) => break Err(classify(status)),
            }
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(CatalogError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!("catalog_call_duration_seconds", "method" => method, "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        if let Err(CatalogError::Unavailable(reason)) = &outcome {
            tracing::warn!(catalog.method = method, attempts = attempt, error = %reason, "catalog unavailable");
        }
        outcome
    }

    /// A request carrying the deadline, ordering's service token and the current trace context.
    fn request<M>(&self, token: &str, message: M) -> Request<M> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        let metadata = request.metadata_mut();
        if let Ok(value) = AsciiMetadataValue::try_from(format!("Bearer {token}")) {
            metadata.insert("authorization", value);
        }
        for (key, value) in platform::trace_context::current_headers() {
            if let (Ok(key), Ok(value)) =
                (AsciiMetadataKey::from_bytes(key.as_bytes()), AsciiMetadataValue::try_from(value))
            {
                metadata.insert(key, value);
            }
        }
        request
    }
}

/// Codes that mean catalog (or the way to it) is unwell, rather than an answer about the request.
fn is_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

fn classify(status: Status) -> CatalogError {
    match status.code() {
        Code::NotFound => CatalogError::NotFound,
        Code::ResourceExhausted => CatalogError::SoldOut,
        Code::FailedPrecondition => CatalogError::HoldInactive(status.message().to_owned()),
        code if is_failure(code) => CatalogError::Unavailable(format!("{code:?}: {}", status.message())),
        code => CatalogError::Refused(code, status.message().to_owned()),
    }
}

fn seat_hold(hold: &pb::SeatHold) -> Result<SeatHold, CatalogError> {
    let state = match hold.status() {
        pb::HoldStatus::Held => HoldState::Held,
        pb::HoldStatus::Confirmed => HoldState::Confirmed,
        pb::HoldStatus::Released => HoldState::Released,
        pb::HoldStatus::Expired => HoldState::Expired,
        pb::HoldStatus::Unspecified => {
            return Err(CatalogError::Refused(Code::Internal, "seat hold without a status".into()));
        }
    };
    let expires_at = hold
        .expires_at
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .ok_or_else(|| CatalogError::Refused(Code::Internal, "seat hold without a valid expiry".into()))?;
    // A catalog older than the hold price would send 0 and "": never price an order from that.
    if hold.currency.len() != 3 || hold.price_cents < 0 {
        return Err(CatalogError::Refused(Code::Internal, "seat hold without a valid price".into()));
    }
    let price = Price { unit_cents: hold.price_cents, currency: hold.currency.clone() };
    Ok(SeatHold { state, expires_at, price })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use platform::breaker::BreakerConfig;

    use super::*;

    #[test]
    fn answers_about_the_request_are_not_failures() {
        assert!(matches!(classify(Status::resource_exhausted("sold out")), CatalogError::SoldOut));
        assert!(matches!(classify(Status::not_found("concert")), CatalogError::NotFound));
        assert!(matches!(classify(Status::failed_precondition("expired")), CatalogError::HoldInactive(_)));
        assert!(!is_failure(Code::ResourceExhausted));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::OutOfRange,
        ] {
            assert!(!is_failure(code), "{code:?} is an answer about the request");
        }
        assert!(!is_failure(Code::InvalidArgument));
    }

    #[test]
    fn transport_trouble_is_unavailable() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unknown] {
            assert!(is_failure(code));
            assert!(matches!(classify(Status::new(code, "x")), CatalogError::Unavailable(_)));
        }
    }

    #[test]
    fn holds_without_expiry_are_refused() {
        let hold = pb::SeatHold { status: pb::HoldStatus::Held as i32, ..Default::default() };
        assert!(seat_hold(&hold).is_err());
        let hold = pb::SeatHold {
            status: pb::HoldStatus::Held as i32,
            expires_at: Some(prost_types::Timestamp { seconds: 1_900_000_000, nanos: 0 }),
            price_cents: 4_500,
            currency: "EUR".into(),
            ..Default::default()
        };
        let parsed = seat_hold(&hold).unwrap();
        assert_eq!(parsed.state, HoldState::Held);
        assert_eq!(parsed.price, Price { unit_cents: 4_500, currency: "EUR".into() });
    }

    #[test]
    fn holds_without_a_price_are_refused() {
        let hold = pb::SeatHold {
            status: pb::HoldStatus::Held as i32,
            expires_at: Some(prost_types::Timestamp { seconds: 1_900_000_000, nanos: 0 }),
            ..Default::default()
        };
        assert!(seat_hold(&hold).is_err(), "an older catalog's hold has no price");
    }

    #[tokio::test]
    async fn an_unreachable_catalog_fails_fast_and_opens_the_circuit() {
        // A port bound but not listening refuses connections, and nothing else can take it meanwhile
        // (unlike "nothing listens on port 9", which an inetd discard service breaks).
        let refusing = tokio::net::TcpSocket::new_v4().unwrap();
        refusing.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let config = CatalogConfig {
            url: format!("http://{}", refusing.local_addr().unwrap()),
            timeout: Duration::from_millis(500),
            attempts: 2,
            breaker: BreakerConfig {
                minimum_calls: 2,
                cool_down: Duration::from_secs(60),
                ..BreakerConfig::default()
            },
        };
        platform::install_crypto_provider();
        let catalog = Catalog::connect_lazy(&config, Arc::new(ServiceTokens::fixed("t"))).unwrap();
        let started = Instant::now();
        let result = catalog.release_reservation(Uuid::now_v7()).await;
        assert!(matches!(result, Err(CatalogError::Unavailable(_))), "{result:?}");
        let result = catalog.release_reservation(Uuid::now_v7()).await;
        assert!(matches!(result, Err(CatalogError::Unavailable(reason)) if reason == "circuit open"));
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
}
