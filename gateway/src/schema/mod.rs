//! The GraphQL schema: roots merged from one module per area, the limits every operation is held
//! to, and the extension that gives every error its `extensions.code`.

pub mod account;
pub mod concerts;
pub mod orders;
pub mod paging;

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextRequest, NextSubscribe,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::{
    Context, ErrorExtensionValues, ID, MergedObject, MergedSubscription, Request, Response, Schema,
    ServerError, ServerResult,
};
use futures::StreamExt;
use uuid::Uuid;

use crate::config::GraphqlLimits;
use crate::downstream::catalog::CatalogClient;
use crate::downstream::identity::IdentityClient;
use crate::downstream::ordering::OrderingClient;
use crate::error::{ErrorCode, GatewayError};
use crate::events::OrderEvents;
use crate::rate_limit::RateLimiter;

/// Everything resolvers call, shared by all requests (schema data).
pub struct Services {
    pub identity: IdentityClient,
    pub ordering: OrderingClient,
    pub catalog: Arc<CatalogClient>,
    pub events: OrderEvents,
    pub limiter: RateLimiter,
}

impl Services {
    /// The services of the schema `ctx` belongs to.
    pub fn of<'a>(ctx: &Context<'a>) -> &'a Services {
        // Inserted by `build` into every schema; a schema without it cannot be constructed here.
        ctx.data_unchecked::<Arc<Services>>()
    }
}

/// Every query.
#[derive(MergedObject, Default)]
pub struct QueryRoot(concerts::ConcertQueries, orders::OrderQueries, account::AccountQueries);

/// Every mutation.
#[derive(MergedObject, Default)]
pub struct MutationRoot(account::AccountMutations, orders::OrderMutations, concerts::ConcertMutations);

/// Every subscription.
#[derive(MergedSubscription, Default)]
pub struct SubscriptionRoot(orders::OrderSubscriptions);

pub type GatewaySchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema with its limits: depth and complexity are checked while validating, before any
/// resolver (and so any downstream call) runs.
pub fn build(services: Arc<Services>, limits: &GraphqlLimits) -> GatewaySchema {
    let builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(services)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        // Fragment cycles are invalid anyway; this bounds how deep the validator itself recurses.
        .limit_recursive_depth(32)
        .limit_directives(20)
        .extension(Hardening { max_query_bytes: limits.max_query_bytes });
    let builder = if limits.introspection { builder } else { builder.disable_introspection() };
    builder.finish()
}

/// The schema's SDL, for clients and reviews.
pub fn sdl() -> String {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default()).finish().sdl()
}

/// Parses an `ID` argument as a UUID; `BAD_USER_INPUT` naming `field` otherwise.
pub fn parse_id(id: &ID, field: &str) -> Result<Uuid, GatewayError> {
    id.parse::<Uuid>().map_err(|_| GatewayError::invalid(field, "not a valid id"))
}

/// Bounds the query text and labels every error, over HTTP and WebSocket alike.
struct Hardening {
    max_query_bytes: usize,
}

impl ExtensionFactory for Hardening {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(HardeningExtension { max_query_bytes: self.max_query_bytes })
    }
}

struct HardeningExtension {
    max_query_bytes: usize,
}

#[async_graphql::async_trait::async_trait]
impl Extension for HardeningExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if request.query.len() > self.max_query_bytes {
            let message = format!("query text is longer than {} bytes", self.max_query_bytes);
            let mut error = ServerError::new(message, None);
            error.extensions = Some(code_only(ErrorCode::BadUserInput));
            return Err(error);
        }
        next.run(ctx, request).await
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        label_errors(&mut response.errors);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                label_errors(&mut response.errors);
                response
            })
            .boxed()
    }
}

/// Gives every error a contract code: resolver errors are described by [`GatewayError`]; what
/// remains (syntax, unknown fields, wrong argument types, depth and complexity limits) is the
/// client's request being invalid.
pub fn label_errors(errors: &mut [ServerError]) {
    for error in errors {
        if let Some(gateway_error) = error.source::<GatewayError>() {
            let (message, extensions) = gateway_error.describe();
            error.message = message;
            error.extensions = Some(extensions);
        } else if error.extensions.as_ref().is_none_or(|e| e.get("code").is_none()) {
            let extensions = error.extensions.get_or_insert_with(ErrorExtensionValues::default);
            extensions.set("code", ErrorCode::BadUserInput.as_str());
        }
    }
}

fn code_only(code: ErrorCode) -> ErrorExtensionValues {
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code.as_str());
    extensions
}
