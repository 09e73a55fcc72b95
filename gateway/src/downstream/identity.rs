//! The identity service's REST API: accounts and tokens.

use std::net::IpAddr;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Retry;
use super::rest::{Call, RestClient};
use crate::config::DownstreamConfig;
use crate::error::{GatewayError, Service};

#[derive(Debug)]
pub struct IdentityClient {
    rest: RestClient,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration<'a> {
    pub email: &'a str,
    pub password: &'a str,
    pub display_name: &'a str,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub user_id: Uuid,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub roles: Vec<String>,
}

impl IdentityClient {
    pub fn new(config: &DownstreamConfig) -> anyhow::Result<Self> {
        Ok(Self { rest: RestClient::new(Service::Identity, &config.identity_url, config)? })
    }

    pub async fn register(
        &self,
        registration: &Registration<'_>,
        client: IpAddr,
    ) -> Result<Registered, GatewayError> {
        let call = Call::new("register", Method::POST, "/auth/register")
            .json(registration)?
            .header("x-forwarded-for", client.to_string())
            .resource("user");
        self.rest.json(call).await
    }

    /// Never retried: identity counts failed logins towards its throttle.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<TokenPair, GatewayError> {
        let call = Call::new("login", Method::POST, "/auth/login")
            .json(&serde_json::json!({ "email": email, "password": password }))?
            .header("x-forwarded-for", client.to_string())
            .resource("user");
        self.rest.json(call).await
    }

    /// Never retried: a refresh token is single use, and presenting it twice revokes its family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, GatewayError> {
        let call = Call::new("refresh", Method::POST, "/auth/refresh")
            .json(&serde_json::json!({ "refreshToken": refresh_token }))?
            .retry(Retry::Never)
            .resource("refresh token");
        self.rest.json(call).await
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<(), GatewayError> {
        let call = Call::new("logout", Method::POST, "/auth/logout")
            .json(&serde_json::json!({ "refreshToken": refresh_token }))?
            .resource("refresh token");
        self.rest.send(call).await.map(drop)
    }

    pub async fn me(&self, token: &str) -> Result<Profile, GatewayError> {
        self.rest.json(Call::new("me", Method::GET, "/auth/me").token(token).resource("user")).await
    }

    pub async fn alive(&self) -> Result<(), String> {
        self.rest.alive().await
    }
}
