//! Persisted documents: Apollo's automatic persisted queries (APQ) and, for production, a manifest
//! of trusted documents.
//!
//! - APQ: a client sends `extensions.persistedQuery = {"version": 1, "sha256Hash": "<hex>"}` with no
//!   query; a hash the gateway knows runs its document, an unknown one is answered
//!   `PersistedQueryNotFound` (`PERSISTED_QUERY_NOT_FOUND`), and the client sends the query with the
//!   hash once, which registers it. A query whose SHA-256 is not the hash is refused. Registered
//!   documents live in a cache capped in bytes (`APQ_CACHE_BYTES`), least recently used out first.
//! - Trusted documents (`TRUSTED_DOCUMENTS`, `TRUSTED_DOCUMENTS_PATH`): a manifest read at start-up
//!   (`{"<hash>": "<document>"}`, or Apollo's `apollo-persisted-query-manifest`). Its documents are
//!   found by id (and by their SHA-256) without any registration. `enforce` refuses every other
//!   document with `PERSISTED_QUERY_NOT_ALLOWED`, over HTTP and WebSocket alike; introspection-only
//!   documents still run while `INTROSPECTION_ENABLED` (they read only the schema), so the
//!   playground can load its docs; `allow-unlisted` runs them and counts them, to roll out safely.
//!
//! The resolved document is put in the request's `query`, so everything after this (GET's
//! queries-only rule, the introspection schema, the query-size and expanded-size limits in the
//! schema's extension) sees it exactly as if the client had sent the text.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use async_graphql::Request;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{DocumentsConfig, GraphqlLimits, TrustedMode};
use crate::error::GatewayError;
use crate::schema;

/// The persisted-document stores, shared by every request.
pub struct Documents {
    mode: TrustedMode,
    trusted: TrustedDocuments,
    /// Registered by clients; `None` when `APQ_CACHE_BYTES` is 0.
    registered: Option<moka::sync::Cache<String, Arc<str>>>,
    limits: GraphqlLimits,
    introspection: bool,
}

/// What [`Documents::resolve`] found out about a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The request named its document by hash (`extensions.persistedQuery`).
    pub persisted: bool,
}

/// The `persistedQuery` extension as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PersistedQuery {
    version: u64,
    sha256_hash: String,
}

impl Documents {
    /// The stores for `config`, with the trusted manifest read from disk (start-up only).
    pub fn load(config: &DocumentsConfig, limits: &GraphqlLimits) -> anyhow::Result<Self> {
        let trusted = match (&config.mode, &config.manifest_path) {
            (TrustedMode::Off, _) => TrustedDocuments::default(),
            (_, Some(path)) => TrustedDocuments::load(path)?,
            (_, None) => anyhow::bail!("TRUSTED_DOCUMENTS needs TRUSTED_DOCUMENTS_PATH"),
        };
        Ok(Self::new(config.mode, trusted, config.apq_cache_bytes, limits))
    }

    fn new(mode: TrustedMode, trusted: TrustedDocuments, cache_bytes: u64, limits: &GraphqlLimits) -> Self {
        // Under `enforce` a registration could only ever add a document that is refused anyway.
        let registered = (cache_bytes > 0 && mode != TrustedMode::Enforce).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cache_bytes)
                .weigher(|hash: &String, document: &Arc<str>| {
                    u32::try_from(hash.len() + document.len()).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { mode, trusted, registered, limits: *limits, introspection: limits.introspection }
    }

    /// How many trusted documents the manifest holds.
    pub fn trusted_count(&self) -> usize {
        self.trusted.count
    }

    /// Puts the request's document in its `query`: looked up by hash, checked against the hash, or
    /// refused when trusted documents are enforced and it is not one of them.
    pub fn resolve(&self, request: &mut Request) -> Result<Resolution, GatewayError> {
        let Some(persisted) = persisted_query(request)? else {
            self.admit_text(request)?;
            return Ok(Resolution::default());
        };
        let hash = persisted.sha256_hash.to_ascii_lowercase();
        if request.query.is_empty() {
            let found =
                self.trusted.by_id.get(&persisted.sha256_hash).or_else(|| self.trusted.by_id.get(&hash));
            let found =
                found.cloned().or_else(|| self.registered.as_ref().and_then(|cache| cache.get(&hash)));
            match found {
                Some(document) => request.query = document.to_string(),
                None if self.mode == TrustedMode::Enforce => {
                    return Err(GatewayError::PersistedQueryNotAllowed);
                }
                None => return Err(GatewayError::PersistedQueryNotFound),
            }
            return Ok(Resolution { persisted: true });
        }
        if sha256_hex(&request.query) != hash {
            return Err(GatewayError::invalid(
                "extensions.persistedQuery.sha256Hash",
                "provided sha does not match query",
            ));
        }
        self.admit_text(request)?;
        // Only a document within the limits is kept: the cache is bounded in bytes anyway, but a
        // document every later use would refuse is not worth a place in it.
        if let Some(cache) = &self.registered
            && !self.trusted.by_id.contains_key(&hash)
            && schema::within_limits(&self.limits, request)
        {
            cache.insert(hash, Arc::from(request.query.as_str()));
        }
        Ok(Resolution { persisted: true })
    }

    /// Whether a document sent as text may run.
    fn admit_text(&self, request: &mut Request) -> Result<(), GatewayError> {
        if self.mode == TrustedMode::Off || self.trusted.by_id.contains_key(&sha256_hex(&request.query)) {
            return Ok(());
        }
        if self.introspection && schema::is_introspection(request) {
            return Ok(());
        }
        match self.mode {
            TrustedMode::Enforce => Err(GatewayError::PersistedQueryNotAllowed),
            _ => {
                metrics::counter!("graphql_unlisted_documents_total").increment(1);
                Ok(())
            }
        }
    }
}

/// The request's `extensions.persistedQuery`, if it has one; a malformed one is refused.
fn persisted_query(request: &Request) -> Result<Option<PersistedQuery>, GatewayError> {
    let Some(value) = request.extensions.get("persistedQuery") else { return Ok(None) };
    let json = value.clone().into_json().unwrap_or_default();
    let persisted: PersistedQuery = serde_json::from_value(json).map_err(|_| {
        GatewayError::invalid(
            "extensions.persistedQuery",
            "expected {\"version\": 1, \"sha256Hash\": \"<hex SHA-256 of the query>\"}",
        )
    })?;
    if persisted.version != 1 {
        return Err(GatewayError::invalid(
            "extensions.persistedQuery.version",
            "only version 1 is supported",
        ));
    }
    Ok(Some(persisted))
}

/// The lowercase hex SHA-256 of `text`, as APQ and the manifests spell it.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The manifest's documents.
#[derive(Default)]
struct TrustedDocuments {
    /// Each document under its manifest id and under its SHA-256 (usually the same).
    by_id: HashMap<String, Arc<str>>,
    count: usize,
}

/// Apollo's `generate-persisted-query-manifest` output.
#[derive(Deserialize)]
struct ApolloManifest {
    format: String,
    version: u64,
    operations: Vec<ApolloOperation>,
}

#[derive(Deserialize)]
struct ApolloOperation {
    id: String,
    body: String,
}

impl TrustedDocuments {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read TRUSTED_DOCUMENTS_PATH {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("TRUSTED_DOCUMENTS_PATH {}", path.display()))
    }

    /// `{"<id>": "<document>", ...}` (GraphQL Codegen's client preset, Relay, graphql-hive), or
    /// `{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id", "body", ...}]}`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let entries: Vec<(String, String)> = if value.get("format").is_some() {
            let manifest: ApolloManifest =
                serde_json::from_value(value).context("not an Apollo persisted query manifest")?;
            anyhow::ensure!(
                manifest.format == "apollo-persisted-query-manifest" && manifest.version == 1,
                "unknown manifest format {:?} version {}",
                manifest.format,
                manifest.version
            );
            manifest.operations.into_iter().map(|operation| (operation.id, operation.body)).collect()
        } else {
            let map: HashMap<String, String> =
                serde_json::from_value(value).context("expected an object of id -> document strings")?;
            map.into_iter().collect()
        };
        let mut by_id = HashMap::with_capacity(entries.len() * 2);
        for (id, body) in &entries {
            anyhow::ensure!(!body.trim().is_empty(), "document {id} is empty");
            let body: Arc<str> = Arc::from(body.as_str());
            by_id.insert(sha256_hex(&body), body.clone());
            by_id.insert(id.clone(), body);
        }
        Ok(Self { by_id, count: entries.len() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use async_graphql::Value;

    use super::*;

    const BROWSE: &str = "{ concerts(first: 1) { edges { cursor } } }";

    fn with_hash(query: &str, hash: &str) -> Request {
        let mut request = Request::new(query);
        let extension = serde_json::json!({ "version": 1, "sha256Hash": hash });
        request.extensions.insert("persistedQuery".to_owned(), Value::from_json(extension).unwrap());
        request
    }

    fn documents(mode: TrustedMode, manifest: &str) -> Documents {
        let trusted = if manifest.is_empty() {
            TrustedDocuments::default()
        } else {
            TrustedDocuments::parse(manifest).unwrap()
        };
        Documents::new(mode, trusted, 1024 * 1024, &GraphqlLimits::default())
    }

    #[test]
    fn an_unknown_hash_is_not_found_until_the_query_is_sent_with_it() {
        let documents = documents(TrustedMode::Off, "");
        let hash = sha256_hex(BROWSE);
        let error = documents.resolve(&mut with_hash("", &hash)).unwrap_err();
        assert!(matches!(error, GatewayError::PersistedQueryNotFound), "{error:?}");
        assert_eq!(documents.resolve(&mut with_hash(BROWSE, &hash)).unwrap(), Resolution { persisted: true });
        let mut by_hash = with_hash("", &hash.to_ascii_uppercase());
        documents.resolve(&mut by_hash).unwrap();
        assert_eq!(by_hash.query, BROWSE);
    }

    #[test]
    fn a_query_that_does_not_match_its_hash_is_refused_and_not_stored() {
        let documents = documents(TrustedMode::Off, "");
        let wrong = sha256_hex("{ __typename }");
        let error = documents.resolve(&mut with_hash(BROWSE, &wrong)).unwrap_err();
        assert!(
            matches!(&error, GatewayError::BadUserInput { field: Some(f), .. } if f.contains("sha256Hash"))
        );
        assert!(documents.resolve(&mut with_hash("", &wrong)).is_err());
    }

    #[test]
    fn documents_over_the_limits_are_not_stored() {
        let documents = documents(TrustedMode::Off, "");
        let huge = format!("{{ {} }}", "__typename ".repeat(5000));
        let hash = sha256_hex(&huge);
        documents.resolve(&mut with_hash(&huge, &hash)).unwrap();
        assert!(matches!(
            documents.resolve(&mut with_hash("", &hash)),
            Err(GatewayError::PersistedQueryNotFound)
        ));
    }

    #[test]
    fn malformed_extensions_are_bad_input() {
        let documents = documents(TrustedMode::Off, "");
        let mut request = Request::new(BROWSE);
        request.extensions.insert("persistedQuery".to_owned(), Value::from("x"));
        assert!(matches!(documents.resolve(&mut request), Err(GatewayError::BadUserInput { .. })));
        let mut v2 = with_hash(BROWSE, &sha256_hex(BROWSE));
        v2.extensions.insert(
            "persistedQuery".to_owned(),
            Value::from_json(serde_json::json!({ "version": 2, "sha256Hash": "ab" })).unwrap(),
        );
        assert!(matches!(documents.resolve(&mut v2), Err(GatewayError::BadUserInput { .. })));
    }

    #[test]
    fn enforced_manifests_admit_only_their_documents_and_introspection() {
        let manifest = serde_json::json!({ "browse-1": BROWSE }).to_string();
        let documents = documents(TrustedMode::Enforce, &manifest);
        let mut by_id = with_hash("", "browse-1");
        documents.resolve(&mut by_id).unwrap();
        assert_eq!(by_id.query, BROWSE);
        assert!(documents.resolve(&mut Request::new(BROWSE)).is_ok(), "listed text runs");
        assert!(documents.resolve(&mut Request::new("{ __schema { types { name } } }")).is_ok());
        for mut refused in [
            Request::new("{ me { id } }"),
            with_hash("", &sha256_hex("{ me { id } }")),
            with_hash("{ me { id } }", &sha256_hex("{ me { id } }")),
        ] {
            let error = documents.resolve(&mut refused).unwrap_err();
            assert!(matches!(error, GatewayError::PersistedQueryNotAllowed), "{error:?}");
        }
        let unlisted = self::documents(TrustedMode::AllowUnlisted, &manifest);
        assert!(unlisted.resolve(&mut Request::new("{ me { id } }")).is_ok());
    }

    #[test]
    fn both_manifest_formats_load() {
        let apollo = serde_json::json!({
            "format": "apollo-persisted-query-manifest", "version": 1,
            "operations": [{ "id": "abc", "body": BROWSE, "name": "Browse", "type": "query" }],
        });
        let trusted = TrustedDocuments::parse(&apollo.to_string()).unwrap();
        assert_eq!(trusted.count, 1);
        assert!(trusted.by_id.contains_key("abc") && trusted.by_id.contains_key(&sha256_hex(BROWSE)));
        let plain =
            TrustedDocuments::parse(&serde_json::json!({ sha256_hex(BROWSE): BROWSE }).to_string()).unwrap();
        assert_eq!(plain.count, 1);
        assert!(TrustedDocuments::parse(r#"{"format":"other","version":1,"operations":[]}"#).is_err());
        assert!(TrustedDocuments::parse(r#"{"a": 1}"#).is_err());
        assert!(TrustedDocuments::parse("[]").is_err());
    }
}
