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
        let result = self
            .policy
            .call(
                call.operation,
                call.retry,
                move || self.attempt(call),
                |attempt| match attempt {
                    Attempt::Rejected(..) => Failure::Answer,
                    Attempt::ServerError(..) => Failure::Unhealthy,
                    Attempt::Transport(error) if error.is_connect() => Failure::NotSent,
                    Attempt::Transport(_) => Failure::Unhealthy,
                },
            )
            .await;
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
