//! A JSON-over-HTTP client for one REST service (identity, ordering): pooled connections, bearer
//! token and trace context forwarded, problem+json answers mapped to [`GatewayError`].

use axum::body::Bytes;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CallError, Failure, Policy, Retry};
use crate::config::DownstreamConfig;
use crate::error::{GatewayError, Service};

/// One REST service behind the gateway. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RestClient {
    base_url: String,
    http: reqwest::Client,
    policy: Policy,
}

/// One request to send.
pub struct Call<'a> {
    pub operation: &'static str,
    pub method: Method,
    pub path: String,
    /// The caller's access token, forwarded so the service checks it too.
    pub token: Option<&'a str>,
    pub body: Option<serde_json::Value>,
    pub headers: Vec<(&'static str, String)>,
    pub retry: Retry,
    /// What a 404 is about, for the error message.
    pub resource: &'static str,
}

impl<'a> Call<'a> {
    pub fn new(operation: &'static str, method: Method, path: impl Into<String>) -> Self {
        let retry = if method == Method::GET { Retry::Idempotent } else { Retry::Never };
        Self {
            operation,
            method,
            path: path.into(),
            token: None,
            body: None,
            headers: Vec::new(),
            retry,
            resource: "resource",
        }
    }

    pub fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }

    pub fn json(mut self, body: &impl Serialize) -> Result<Self, GatewayError> {
        self.body = Some(serde_json::to_value(body).map_err(GatewayError::internal)?);
        Ok(self)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    pub fn resource(mut self, resource: &'static str) -> Self {
        self.resource = resource;
        self
    }
}

/// What one attempt produced: an HTTP answer, or none.
#[derive(Debug)]
enum Attempt {
    /// A 4xx answer (5xx are [`Attempt::ServerError`]).
    Rejected(StatusCode, Bytes),
    ServerError(StatusCode, Bytes),
    Transport(reqwest::Error),
}

/// What an attempt says about the service's health (its circuit breaker) and whether to retry.
fn classify(attempt: &Attempt) -> Failure {
    match attempt {
        Attempt::Rejected(..) => Failure::Answer,
        // The service is up and answering: what is down is behind it (ordering's "catalog is
        // unavailable"). Counting that against the service would open its circuit and fail every
        // call to it, reads that never touch the dependency included.
        Attempt::ServerError(status, body) if GatewayError::is_dependency_outage(status.as_u16(), body) => {
            Failure::Answer
        }
        Attempt::ServerError(..) => Failure::Unhealthy,
        Attempt::Transport(error) if error.is_connect() => Failure::NotSent,
        Attempt::Transport(_) => Failure::Unhealthy,
    }
}

impl RestClient {
    pub fn new(service: Service, base_url: &str, config: &DownstreamConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.call_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent("ticketflow-gateway")
            .build()?;
        Ok(Self { base_url: base_url.to_owned(), http, policy: Policy::new(service, config) })
    }

    pub fn service(&self) -> Service {
        self.policy.service
    }

    /// Sends `call` and decodes a JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, GatewayError> {
        let body = self.send(call).await?;
        serde_json::from_slice(&body).map_err(|error| {
            GatewayError::internal(anyhow::anyhow!("{} sent an unexpected body: {error}", self.service()))
        })
    }

    /// Sends `call` and returns the body of a 2xx answer.
    pub async fn send(&self, call: Call<'_>) -> Result<Bytes, GatewayError> {
        let service = self.service();
        let resource = call.resource;
        let call = &call;
        let result = self.policy.call(call.operation, call.retry, move || self.attempt(call), classify).await;
        match result {
            Ok(body) => Ok(body),
            Err(CallError::Open | CallError::Timeout) => Err(GatewayError::Unavailable(service)),
            Err(CallError::Failed(Attempt::Rejected(status, body) | Attempt::ServerError(status, body))) => {
                Err(GatewayError::from_http(service, resource, status.as_u16(), &body))
            }
            Err(CallError::Failed(Attempt::Transport(error))) => {
                Err(GatewayError::from_transport(service, &error))
            }
        }
    }

    async fn attempt(&self, call: &Call<'_>) -> Result<Bytes, Attempt> {
        let mut request = self.http.request(call.method.clone(), format!("{}{}", self.base_url, call.path));
        if let Some(token) = call.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in platform::trace_context::current_headers() {
            request = request.header(name, value);
        }
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Attempt::Transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(Attempt::Transport)?;
        if status.is_success() {
            Ok(body)
        } else if status.is_server_error() {
            Err(Attempt::ServerError(status, body))
        } else {
            Err(Attempt::Rejected(status, body))
        }
    }

    /// Whether the service answers at all, for `/health`.
    pub async fn alive(&self) -> Result<(), String> {
        let response = self
            .http
            .get(format!("{}/alive", self.base_url))
            .send()
            .await
            .map_err(|error| format!("{} unreachable: {error}", self.service()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", self.service(), response.status()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use platform::breaker::{BreakerConfig, CircuitBreaker};
    use platform::problem::Problem;

    use super::*;
    use crate::downstream::{CallError, Retry};

    fn problem(problem: Problem) -> Bytes {
        Bytes::from(serde_json::to_vec(&problem).unwrap())
    }

    #[test]
    fn only_answers_that_mean_the_service_itself_is_unwell_count_against_it() {
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let catalog_down = problem(Problem::unavailable("catalog").with_type("catalog-unavailable"));
        assert_eq!(classify(&Attempt::ServerError(unavailable, catalog_down)), Failure::Answer);
        assert_eq!(
            classify(&Attempt::ServerError(unavailable, problem(Problem::unavailable("database")))),
            Failure::Unhealthy
        );
        assert_eq!(classify(&Attempt::ServerError(unavailable, Bytes::from("<html>"))), Failure::Unhealthy);
        let internal = problem(Problem::internal());
        assert_eq!(
            classify(&Attempt::ServerError(StatusCode::INTERNAL_SERVER_ERROR, internal)),
            Failure::Unhealthy
        );
        let sold_out = problem(Problem::conflict("sold out").with_type("sold-out"));
        assert_eq!(classify(&Attempt::Rejected(StatusCode::CONFLICT, sold_out)), Failure::Answer);
    }

    #[tokio::test]
    async fn ordering_saying_catalog_is_down_never_opens_orderings_circuit() {
        let policy = Policy {
            service: Service::Ordering,
            deadline: Duration::from_secs(5),
            breaker: CircuitBreaker::new(
                "ordering",
                BreakerConfig {
                    minimum_calls: 3,
                    cool_down: Duration::from_secs(60),
                    ..BreakerConfig::default()
                },
            ),
        };
        let calls = AtomicU32::new(0);
        let catalog_down = problem(Problem::unavailable("catalog").with_type("catalog-unavailable"));
        for _ in 0..10 {
            let result: Result<(), _> = policy
                .call(
                    "placeOrder",
                    Retry::Idempotent,
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let body = catalog_down.clone();
                        async move { Err(Attempt::ServerError(StatusCode::SERVICE_UNAVAILABLE, body)) }
                    },
                    classify,
                )
                .await;
            assert!(matches!(result, Err(CallError::Failed(_))), "answered, not cut off by the circuit");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10, "every call reached ordering, none was retried");

        // Ordering itself unwell: once half the calls in the window failed, its circuit opens.
        let unwell = problem(Problem::unavailable("the database is unavailable"));
        for _ in 0..10 {
            let _ =
                policy
                    .call(
                        "order",
                        Retry::Never,
                        || {
                            let body = unwell.clone();
                            async move {
                                Err::<(), _>(Attempt::ServerError(StatusCode::SERVICE_UNAVAILABLE, body))
                            }
                        },
                        classify,
                    )
                    .await;
        }
        let open = policy.call("order", Retry::Never, || async { Ok::<_, Attempt>(()) }, classify).await;
        assert!(matches!(open, Err(CallError::Open)));
    }
}
