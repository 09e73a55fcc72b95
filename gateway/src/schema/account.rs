//! Accounts and sessions, through identity: sign up, sign in, renew and end sessions, who am I.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::Services;
use crate::auth;
use crate::downstream::identity::{Registration, TokenPair};
use crate::error::GatewayError;

/// A signed-in user's own account.
#[derive(Debug, Clone, SimpleObject)]
pub struct User {
    /// The user's id.
    pub id: ID,
    /// The address the user signs in with (lower case).
    pub email: String,
    /// The name shown to others.
    pub display_name: String,
    /// What the user may do: `customer`, and `admin` for concert managers.
    pub roles: Vec<String>,
}

/// A new session: send `accessToken` as `Authorization: Bearer <accessToken>`, and renew it with
/// `refreshToken` before it expires.
#[derive(Debug, Clone, SimpleObject)]
pub struct AuthPayload {
    /// Short-lived signed access token (JWT).
    pub access_token: String,
    /// Single-use token that renews the session; each renewal returns a new one.
    pub refresh_token: String,
    /// Always "Bearer".
    pub token_type: String,
    /// Seconds until `accessToken` expires.
    pub expires_in: i64,
}

impl From<TokenPair> for AuthPayload {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
        }
    }
}

/// The account that was created.
#[derive(Debug, Clone, SimpleObject)]
pub struct RegisterPayload {
    /// The new user's id; sign in with `login` to get tokens.
    pub user_id: ID,
}

/// Sign-up details.
#[derive(Debug, Clone, InputObject)]
pub struct RegisterInput {
    /// A valid email address; must not be taken.
    pub email: String,
    /// 8 to 128 characters.
    #[graphql(secret)]
    pub password: String,
    /// The name shown to others.
    pub display_name: String,
}

/// Sign-in details.
#[derive(Debug, Clone, InputObject)]
pub struct LoginInput {
    /// The address the account was registered with.
    pub email: String,
    /// The account's password.
    #[graphql(secret)]
    pub password: String,
}

/// Reading one's own account.
#[derive(Default)]
pub struct AccountQueries;

#[Object]
impl AccountQueries {
    /// The signed-in user; `UNAUTHENTICATED` without a valid access token.
    async fn me(&self, ctx: &Context<'_>) -> Result<User, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let profile = Services::of(ctx).identity.me(&viewer.token).await?;
        Ok(User {
            id: ID(profile.user_id.to_string()),
            email: profile.email,
            display_name: profile.display_name,
            roles: profile.roles,
        })
    }
}

/// Signing up, in and out.
#[derive(Default)]
pub struct AccountMutations;

#[Object]
impl AccountMutations {
    /// Creates a customer account. Rate limited per client.
    async fn register(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new account's details.")] input: RegisterInput,
    ) -> Result<RegisterPayload, GatewayError> {
        let services = Services::of(ctx);
        let client = auth::client_ip(ctx);
        services.limiter.check_auth(client)?;
        let registration = Registration {
            email: &input.email,
            password: &input.password,
            display_name: &input.display_name,
        };
        let registered = services.identity.register(&registration, client).await?;
        Ok(RegisterPayload { user_id: ID(registered.user_id.to_string()) })
    }

    /// Signs in and starts a session. Rate limited per client.
    async fn login(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The account's credentials.")] input: LoginInput,
    ) -> Result<AuthPayload, GatewayError> {
        let services = Services::of(ctx);
        let client = auth::client_ip(ctx);
        services.limiter.check_auth(client)?;
        Ok(services.identity.login(&input.email, &input.password, client).await?.into())
    }

    /// Exchanges a refresh token for a new token pair. The old refresh token is spent; presenting a
    /// spent one ends the whole session (`UNAUTHENTICATED`).
    async fn refresh_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret, desc = "The refresh token of the current pair.")] refresh_token: String,
    ) -> Result<AuthPayload, GatewayError> {
        Ok(Services::of(ctx).identity.refresh(&refresh_token).await?.into())
    }

    /// Ends the session the refresh token belongs to. Access tokens already issued stay valid until
    /// they expire (minutes).
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret, desc = "The refresh token of the session to end.")] refresh_token: String,
    ) -> Result<bool, GatewayError> {
        Services::of(ctx).identity.logout(&refresh_token).await?;
        Ok(true)
    }
}
