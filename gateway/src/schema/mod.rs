//! The GraphQL schema: roots merged from one module per area, the limits every operation is held
//! to, and the extension that gives every error its `extensions.code`.

pub mod account;
pub mod concerts;
pub mod orders;
pub mod paging;
pub mod shape;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_graphql::connection::Connection;
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest, NextRequest,
    NextSubscribe,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::{
    Context, ErrorExtensionValues, ID, MergedObject, MergedSubscription, Request, Response, Schema,
    SchemaBuilder, ServerError, ServerResult,
};
use axum::http::HeaderValue;
use futures::StreamExt;
use uuid::Uuid;

use crate::config::GraphqlLimits;
use crate::downstream::catalog::CatalogClient;
use crate::downstream::identity::IdentityClient;
use crate::downstream::ordering::OrderingClient;
use crate::error::{ErrorCode, GatewayError};
use crate::events::OrderEvents;
use crate::graphql_http::REQUEST_ERROR_MARKER;
use crate::rate_limit::RateLimiter;
use crate::response_cache::ResponseCache;

/// Everything resolvers call, shared by all requests (schema data).
pub struct Services {
    pub identity: IdentityClient,
    pub ordering: OrderingClient,
    pub catalog: Arc<CatalogClient>,
    pub events: OrderEvents,
    pub limiter: RateLimiter,
    /// Whole answers to public queries; emptied when a concert changes.
    pub response_cache: ResponseCache,
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

/// Type references in the standard introspection query (GraphiQL's, graphql-js's) nest 15 deep, past
/// any depth limit a real operation needs; introspection only reads the schema in memory.
const INTROSPECTION_MAX_DEPTH: usize = 20;
const INTROSPECTION_MAX_COMPLEXITY: usize = 2000;
/// The standard introspection query expands to about 220 fields (see the tests).
const INTROSPECTION_MAX_SELECTIONS: usize = 500;
/// Directives one field may carry, on every schema.
const MAX_DIRECTIVES_PER_FIELD: usize = 20;
/// Representations one federation `_entities` call may ask for: each `Order` among them costs
/// ordering a call, so this is the same bound as a page.
const MAX_ENTITY_REPRESENTATIONS: usize = paging::MAX_DOWNSTREAM_PAGE;

/// The schemas requests run on.
pub struct Schemas {
    /// Every operation, under the configured limits.
    pub main: GatewaySchema,
    /// Introspection only, with room for the standard introspection query; `None` when
    /// introspection is off.
    pub introspection: Option<GatewaySchema>,
}

impl Schemas {
    /// Where `request` runs: introspection-only documents on the introspection schema.
    pub fn for_request(&self, request: &mut Request) -> &GatewaySchema {
        match &self.introspection {
            Some(introspection) if is_introspection(request) => introspection,
            _ => &self.main,
        }
    }
}

/// The schemas with their limits: depth and complexity are checked while validating, before any
/// resolver (and so any downstream call) runs.
pub fn build(services: Arc<Services>, limits: &GraphqlLimits) -> Schemas {
    let hardening = Hardening {
        max_query_bytes: limits.max_query_bytes,
        max_selections: limits.max_selections,
        max_root_fields: limits.max_root_fields,
    };
    let introspection = limits.introspection.then(|| {
        builder()
            .introspection_only()
            .limit_depth(INTROSPECTION_MAX_DEPTH)
            .limit_complexity(INTROSPECTION_MAX_COMPLEXITY)
            .limit_recursive_depth(32)
            .limit_directives(MAX_DIRECTIVES_PER_FIELD)
            .extension(Hardening { max_selections: INTROSPECTION_MAX_SELECTIONS, ..hardening })
            .finish()
    });
    Schemas { main: main_schema(services, limits, hardening), introspection }
}

/// Whether `request`'s document parses and is within the query-size and expanded-size limits the
/// schema's extension holds every operation to (for documents kept for later, see `documents.rs`).
pub fn within_limits(limits: &GraphqlLimits, request: &mut Request) -> bool {
    let hardening = Hardening {
        max_query_bytes: limits.max_query_bytes,
        max_selections: limits.max_selections,
        max_root_fields: limits.max_root_fields,
    };
    request.parsed_query().is_ok() && hardening.check(request).is_ok()
}

/// Whether every operation of the document selects only introspection fields at its top level.
/// Fragments at the top level could select anything, so they count as not introspection.
pub fn is_introspection(request: &mut Request) -> bool {
    use async_graphql::parser::types::Selection;
    let Ok(document) = request.parsed_query() else { return false };
    document.operations.iter().all(|(_, operation)| {
        operation.node.selection_set.node.items.iter().all(|selection| match &selection.node {
            Selection::Field(field) => field.node.name.node.starts_with("__"),
            Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
        })
    })
}

fn main_schema(services: Arc<Services>, limits: &GraphqlLimits, hardening: Hardening) -> GatewaySchema {
    let builder = builder()
        .data(services)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        // Fragment cycles are invalid anyway; this bounds how deep the validator itself recurses.
        .limit_recursive_depth(32)
        .limit_directives(MAX_DIRECTIVES_PER_FIELD)
        .extension(hardening);
    // "Did you mean ...?" hints would describe the schema that introspection is hiding.
    let builder =
        if limits.introspection { builder } else { builder.disable_introspection().disable_suggestions() };
    builder.finish()
}

/// The schema's SDL, for clients and reviews.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// The schema as an Apollo Federation v2 subgraph: `_service { sdl }` prints the SDL with
/// `@link(url: "https://specs.apollo.dev/federation/v2.5")` and `@key`s, and `_entities` resolves
/// `Concert` and `Order` by id (see `gateway/tests/federation.rs`).
pub fn federation_sdl() -> String {
    builder().finish().sdl_with_options(async_graphql::SDLExportOptions::new().federation())
}

/// The types, with descriptions for the generic connection types (which have none of their own).
/// Federation is on so that a router can compose the gateway as a subgraph; clients that do not use
/// one just see `_entities` and `_service`.
fn builder() -> SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .enable_federation()
        .enable_subscription_in_federation()
        .override_output_type_description::<Connection<String, concerts::Concert>>(
            "A page of concerts: `edges` with a cursor each, and `pageInfo` to fetch the next page.",
        )
        .override_output_type_description::<Connection<String, orders::Order>>(
            "A page of orders: `edges` with a cursor each, and `pageInfo` to fetch the next page.",
        )
}

/// Parses an `ID` argument as a UUID; `BAD_USER_INPUT` naming `field` otherwise.
pub fn parse_id(id: &ID, field: &str) -> Result<Uuid, GatewayError> {
    id.parse::<Uuid>().map_err(|_| GatewayError::invalid(field, "not a valid id"))
}

/// Bounds the query text and the document's expanded size, and labels every error, over HTTP and
/// WebSocket alike.
#[derive(Clone, Copy)]
struct Hardening {
    max_query_bytes: usize,
    max_selections: usize,
    max_root_fields: usize,
}

impl ExtensionFactory for Hardening {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(HardeningExtension { limits: *self, executed: AtomicBool::new(false) })
    }
}

/// One request's instance.
struct HardeningExtension {
    limits: Hardening,
    /// Whether the request reached execution; a response without it is a request error (the
    /// document did not parse or validate, or its variables did not coerce), which GraphQL over
    /// HTTP answers differently.
    executed: AtomicBool,
}

impl Hardening {
    /// Refuses a document that is too long, or too large once its fragments are expanded, before
    /// async-graphql's own checks walk it (they follow every spread, see [`shape`]). The parsed
    /// document stays in the request, so it is parsed once.
    fn check(&self, request: &mut Request) -> Result<(), ServerError> {
        if request.query.len() > self.max_query_bytes {
            let message = format!("query text is longer than {} bytes", self.max_query_bytes);
            return Err(bad_input(message));
        }
        // A document that does not parse is reported by the normal pipeline.
        let Ok(document) = request.parsed_query() else { return Ok(()) };
        let measured = shape::DocumentShape::measure(document);
        if measured.selections > self.max_selections {
            return Err(bad_input(format!(
                "the query selects more than {} fields once its fragments are expanded",
                self.max_selections
            )));
        }
        if measured.root_fields > self.max_root_fields {
            return Err(bad_input(format!(
                "an operation may select at most {} top-level fields (aliases included)",
                self.max_root_fields
            )));
        }
        if entity_representations(request) > MAX_ENTITY_REPRESENTATIONS {
            return Err(bad_input(format!(
                "_entities may resolve at most {MAX_ENTITY_REPRESENTATIONS} representations at once"
            )));
        }
        Ok(())
    }
}

/// How many representations the document's top-level `_entities` fields ask for, literal or from
/// variables.
fn entity_representations(request: &mut Request) -> usize {
    use async_graphql::Value;
    use async_graphql::parser::types::Selection;
    // Taken out while the parsed document borrows the request, and put back below.
    let variables = std::mem::take(&mut request.variables);
    let count = match request.parsed_query() {
        Err(_) => 0,
        Ok(document) => document
            .operations
            .iter()
            .flat_map(|(_, operation)| operation.node.selection_set.node.items.iter())
            .filter_map(|selection| match &selection.node {
                Selection::Field(field) if field.node.name.node == "_entities" => {
                    field.node.get_argument("representations")
                }
                _ => None,
            })
            .map(|value| {
                let resolved =
                    value.node.clone().into_const_with(|name| variables.get(&name).cloned().ok_or(()));
                match resolved {
                    Ok(Value::List(items)) => items.len(),
                    _ => 0,
                }
            })
            .sum(),
    };
    request.variables = variables;
    count
}

fn bad_input(message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    error.extensions = Some(code_only(ErrorCode::BadUserInput));
    error
}

#[async_graphql::async_trait::async_trait]
impl Extension for HardeningExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        self.limits.check(&mut request)?;
        next.run(ctx, request).await
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        label_errors(&mut response.errors);
        if !self.executed.load(Ordering::Relaxed) {
            response.http_headers.insert(REQUEST_ERROR_MARKER, HeaderValue::from_static("1"));
        }
        response
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        self.executed.store(true, Ordering::Relaxed);
        next.run(ctx, operation_name).await
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Doc comments become the published schema's descriptions; none may be missing.
    #[tokio::test]
    async fn every_type_field_argument_and_value_is_documented() {
        let schema = builder().finish();
        let introspection = "{ __schema { types { name description
            fields { name description args { name description } }
            inputFields { name description } enumValues { name description } } } }";
        let response = schema.execute(introspection).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response.data.into_json().unwrap();
        let builtin = ["String", "Int", "Float", "Boolean", "ID"];
        let mut missing = Vec::new();
        let undocumented =
            |value: &serde_json::Value| value["description"].as_str().is_none_or(str::is_empty);
        for ty in data["__schema"]["types"].as_array().unwrap() {
            let name = ty["name"].as_str().unwrap();
            // `_Service`, `_Entity`, `_Any`: Apollo Federation's own types, described by its spec.
            if name.starts_with('_') || builtin.contains(&name) {
                continue;
            }
            if undocumented(ty) {
                missing.push(name.to_owned());
            }
            for field in ty["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(ty["inputFields"].as_array().into_iter().flatten())
            {
                // `_service`, `_entities`: Apollo Federation's own fields.
                if field["name"].as_str().is_some_and(|name| name.starts_with('_')) {
                    continue;
                }
                if undocumented(field) {
                    missing.push(format!("{name}.{}", field["name"]));
                }
                for arg in field["args"].as_array().into_iter().flatten() {
                    if undocumented(arg) {
                        missing.push(format!("{name}.{}({})", field["name"], arg["name"]));
                    }
                }
            }
            for value in ty["enumValues"].as_array().into_iter().flatten() {
                if undocumented(value) {
                    missing.push(format!("{name}.{}", value["name"]));
                }
            }
        }
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }

    /// graphql-js's `getIntrospectionQuery()`, which GraphiQL sends to load the docs.
    const STANDARD_INTROSPECTION: &str = "query IntrospectionQuery { __schema { queryType { name } mutationType { name }
        subscriptionType { name } types { ...FullType } directives { name description locations args { ...InputValue } } } }
      fragment FullType on __Type { kind name description fields(includeDeprecated: true) { name description
        args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason } inputFields { ...InputValue }
        interfaces { ...TypeRef } enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
        possibleTypes { ...TypeRef } }
      fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
      fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name
        ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } } }";

    #[tokio::test]
    async fn the_standard_introspection_query_runs_within_the_introspection_limits() {
        let limits = GraphqlLimits::default();
        let main = builder().limit_depth(limits.max_depth).limit_complexity(limits.max_complexity).finish();
        assert!(!main.execute(STANDARD_INTROSPECTION).await.errors.is_empty(), "too deep for operations");
        let introspection = builder()
            .introspection_only()
            .limit_depth(INTROSPECTION_MAX_DEPTH)
            .limit_complexity(INTROSPECTION_MAX_COMPLEXITY)
            .finish();
        let response = introspection.execute(STANDARD_INTROSPECTION).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let bomb = format!(
            "{{ __schema {{ types {{ fields {{ type {{ name {} {} }} }} }} }} }}",
            "ofType { name ".repeat(20),
            "}".repeat(20)
        );
        let errors = introspection.execute(bomb.as_str()).await.errors;
        assert!(
            errors.first().is_some_and(|e| e.message.contains("nested too deep")),
            "still bounded: {errors:?}"
        );
    }

    #[test]
    fn the_standard_introspection_query_fits_the_introspection_selection_limit() {
        let mut request = Request::new(STANDARD_INTROSPECTION);
        let measured = shape::DocumentShape::measure(request.parsed_query().unwrap());
        assert!(measured.selections <= INTROSPECTION_MAX_SELECTIONS, "{measured:?}");
        assert!(measured.selections > 200, "its fragments are expanded: {measured:?}");
    }

    #[test]
    fn only_documents_of_introspection_fields_count_as_introspection() {
        assert!(is_introspection(&mut Request::new(STANDARD_INTROSPECTION)));
        assert!(is_introspection(&mut Request::new("{ __typename __type(name: \"Order\") { name } }")));
        assert!(!is_introspection(&mut Request::new("{ __typename concerts { edges { cursor } } }")));
        assert!(!is_introspection(&mut Request::new(
            "query { ...F } fragment F on QueryRoot { __typename }"
        )));
        assert!(!is_introspection(&mut Request::new(
            "query A { __typename } mutation B { logout(refreshToken: \"x\") }"
        )));
        assert!(!is_introspection(&mut Request::new("{ not valid")));
    }

    #[test]
    fn the_federation_sdl_is_a_v2_subgraph_with_concerts_and_orders_keyed_by_id() {
        let sdl = federation_sdl();
        assert!(sdl.contains("@link(") && sdl.contains("https://specs.apollo.dev/federation/v2."), "{sdl}");
        for entity in ["type Concert @key(fields: \"id\")", "type Order @key(fields: \"id\")"] {
            assert!(sdl.contains(entity), "{entity} missing from:\n{sdl}");
        }
    }

    #[test]
    fn entity_calls_are_bounded_literal_or_from_variables() {
        let hardening = Hardening { max_query_bytes: 16384, max_selections: 1000, max_root_fields: 20 };
        let query = "query($r: [_Any!]!) { _entities(representations: $r) { __typename } }";
        let representations = |n: usize| {
            let list: Vec<_> =
                (0..n).map(|_| serde_json::json!({ "__typename": "Concert", "id": "x" })).collect();
            async_graphql::Variables::from_json(serde_json::json!({ "r": list }))
        };
        let mut within = Request::new(query).variables(representations(MAX_ENTITY_REPRESENTATIONS));
        assert!(hardening.check(&mut within).is_ok());
        let mut over = Request::new(query).variables(representations(MAX_ENTITY_REPRESENTATIONS + 1));
        assert!(hardening.check(&mut over).is_err());
        let literal = format!(
            "{{ _entities(representations: [{}]) {{ __typename }} }}",
            "{__typename: \"Concert\", id: \"x\"} ".repeat(MAX_ENTITY_REPRESENTATIONS + 1)
        );
        assert!(hardening.check(&mut Request::new(literal)).is_err());
    }

    #[test]
    fn the_schema_has_the_contract_operations() {
        let sdl = sdl();
        for operation in [
            "concerts(",
            "concert(",
            "me:",
            "myOrders(",
            "order(",
            "register(",
            "login(",
            "refreshToken(",
            "logout(",
            "placeOrder(",
            "confirmOrder(",
            "cancelOrder(",
            "createConcert(",
            "updateConcert(",
            "orderUpdated(",
            "myOrderUpdates:",
        ] {
            assert!(sdl.contains(operation), "{operation} missing from:\n{sdl}");
        }
    }
}

/// `gateway/schema.graphql` is the published schema; this keeps it current (run with
/// `UPDATE_SCHEMA=1` to rewrite it after changing the schema, and review the diff).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod snapshot {
    #[test]
    fn the_committed_schema_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
        let current = super::sdl();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &current).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "schema.graphql is out of date: run UPDATE_SCHEMA=1 cargo test -p gateway --lib"
        );
    }
}
