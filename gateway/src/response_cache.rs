//! A short-lived cache of whole answers to public queries, so an on-sale crowd loading the same page
//! costs the services one call a second instead of one per visitor.
//!
//! Only what every visitor sees alike is cached: an anonymous request whose operation is a query
//! selecting nothing but public root fields ([`PUBLIC_ROOT_FIELDS`]). The key is the document with
//! insignificant whitespace, commas and comments removed, the operation name, the variables and the
//! response media type. An entry lives at most `RESPONSE_CACHE_TTL_MS` (1 s), an answer with errors
//! is never kept, and the entries together hold at most `RESPONSE_CACHE_MAX_BYTES`. Concurrent misses
//! for one key wait for a single execution (moka's `try_get_with`), so a stampede on a cold page is
//! one downstream call. The gateway's own concert mutations empty the cache at once; a change made
//! through another gateway replica shows within the TTL, on top of catalog's own cache.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::Request;
use async_graphql::parser::types::{OperationType, Selection};
use moka::future::Cache;

use crate::graphql_http::{Answer, MediaType};

/// Root fields whose answer is the same for every anonymous visitor.
pub const PUBLIC_ROOT_FIELDS: [&str; 3] = ["concerts", "concert", "__typename"];

/// `RESPONSE_CACHE_TTL_MS` and `RESPONSE_CACHE_MAX_BYTES`.
#[derive(Debug, Clone, Copy)]
pub struct ResponseCacheConfig {
    /// How long an answer may be reused; zero turns the cache off.
    pub ttl: Duration,
    pub max_bytes: u64,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_millis(1000), max_bytes: 16 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    document: String,
    operation: Option<String>,
    variables: String,
    media: MediaType,
}

/// The cache; cheap to clone (clones share entries).
#[derive(Clone)]
pub struct ResponseCache {
    entries: Option<Cache<Key, Answer>>,
}

impl ResponseCache {
    pub fn new(config: ResponseCacheConfig) -> Self {
        let entries = (!config.ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(config.ttl)
                .max_capacity(config.max_bytes)
                .weigher(|key: &Key, answer: &Answer| {
                    let size = key.document.len() + key.variables.len() + answer.body.len();
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .build()
        });
        Self { entries }
    }

    /// The key `request` would have, if the cache is on and the request anonymous. Cheap: no
    /// parsing. Whether the request may be shared at all is [`is_public_query`].
    pub fn key(&self, request: &Request, anonymous: bool, media: MediaType) -> Option<Key> {
        self.entries.as_ref()?;
        if !anonymous {
            return None;
        }
        let variables = serde_json::to_string(&request.variables).ok()?;
        let (document, operation) = (normalize(&request.query), request.operation_name.clone());
        Some(Key { document, operation, variables, media })
    }

    /// The answer kept under `key`. Only public queries are ever kept, and a key is the document
    /// itself, so a hit needs no parsing to know it may be shared.
    pub async fn cached(&self, key: &Key) -> Option<Answer> {
        let answer = self.entries.as_ref()?.get(key).await;
        if answer.is_some() {
            metrics::counter!("gateway_response_cache_total", "outcome" => "hit").increment(1);
        }
        answer
    }

    /// The cached answer for `key`, or `execute`'s, which is kept when it has no errors. Concurrent
    /// callers with one key share one execution.
    pub async fn get_or_execute(&self, key: Key, execute: impl Future<Output = Answer>) -> Answer {
        let Some(entries) = &self.entries else { return execute.await };
        metrics::counter!("gateway_response_cache_total", "outcome" => "miss").increment(1);
        let fresh = async {
            let answer = execute.await;
            if answer.ok { Ok(answer) } else { Err(answer) }
        };
        match entries.try_get_with(key, fresh).await {
            Ok(answer) => answer,
            // Not kept: every caller that waited on this execution gets its answer.
            Err(uncached) => Arc::unwrap_or_clone(uncached),
        }
    }

    /// Forgets every answer (a concert changed).
    pub fn invalidate_all(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }
}

/// Whether the operation `request` runs is a query selecting public root fields only. A root
/// fragment could select anything, so it makes the request not public.
pub fn is_public_query(request: &mut Request) -> bool {
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else { return false };
    let operation = match operation_name {
        Some(name) => document.operations.iter().find(|(n, _)| n.map(|n| n.as_str()) == Some(name.as_str())),
        None => document.operations.iter().next().filter(|_| document.operations.iter().count() == 1),
    };
    let Some((_, operation)) = operation else { return false };
    operation.node.ty == OperationType::Query
        && operation.node.selection_set.node.items.iter().all(|selection| match &selection.node {
            Selection::Field(field) => PUBLIC_ROOT_FIELDS.contains(&field.node.name.node.as_str()),
            Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
        })
}

/// The document with insignificant characters (runs of white space and commas, comments) folded to
/// one space, so the same query typed differently shares an entry. String contents are kept as is.
fn normalize(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut chars = query.chars().peekable();
    let mut pending_space = false;
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() || c == ',' || c == '\u{feff}' => pending_space = true,
            '#' => {
                for next in chars.by_ref() {
                    if next == '\n' || next == '\r' {
                        break;
                    }
                }
                pending_space = true;
            }
            '"' => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push('"');
                let mut escaped = false;
                for next in chars.by_ref() {
                    out.push(next);
                    if escaped {
                        escaped = false;
                    } else if next == '\\' {
                        escaped = true;
                    } else if next == '"' {
                        break;
                    }
                }
            }
            c => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The key of a request that may be shared.
    fn key(cache: &ResponseCache, query: &str, anonymous: bool) -> Option<Key> {
        let mut request = Request::new(query);
        is_public_query(&mut request).then(|| cache.key(&request, anonymous, MediaType::Json)).flatten()
    }

    #[test]
    fn only_anonymous_queries_of_public_fields_are_shared() {
        let cache = ResponseCache::new(ResponseCacheConfig::default());
        assert!(key(&cache, "{ concerts { edges { cursor } } }", true).is_some());
        assert!(key(&cache, "{ concert(id: \"x\") { title } __typename }", true).is_some());
        assert!(key(&cache, "{ concerts { edges { cursor } } }", false).is_none(), "signed in");
        assert!(key(&cache, "{ me { id } }", true).is_none());
        assert!(
            key(&cache, "{ concerts { edges { cursor } } myOrders { edges { cursor } } }", true).is_none()
        );
        assert!(key(&cache, "mutation { logout(refreshToken: \"x\") }", true).is_none());
        assert!(key(&cache, "{ ...F } fragment F on QueryRoot { me { id } }", true).is_none());
        assert!(
            key(&cache, "query A { concerts { edges { cursor } } } query B { me { id } }", true).is_none()
        );
        let named = Request::new("query A { concerts { edges { cursor } } } query B { me { id } }");
        let mut named = named.operation_name("A");
        assert!(is_public_query(&mut named) && cache.key(&named, true, MediaType::Json).is_some());
        let off = ResponseCache::new(ResponseCacheConfig { ttl: Duration::ZERO, ..Default::default() });
        assert!(key(&off, "{ concerts { edges { cursor } } }", true).is_none(), "turned off");
    }

    #[test]
    fn the_same_query_typed_differently_shares_a_key() {
        let cache = ResponseCache::new(ResponseCacheConfig::default());
        let a = key(&cache, "{ concerts(first: 5) { edges { cursor } } }", true).unwrap();
        let b =
            key(&cache, "{\n  concerts(first: 5) {\n    edges { cursor } # the page\n  }\n}", true).unwrap();
        assert_eq!(a, b);
        let other = key(&cache, "{ concerts(first: 6) { edges { cursor } } }", true).unwrap();
        assert_ne!(a, other);
        assert_eq!(
            normalize(r#"{ concerts(filter: { search: "a,  b # c" }) { edges { cursor } } }"#),
            r#"{ concerts(filter: { search: "a,  b # c" }) { edges { cursor } } }"#
        );
    }

    #[tokio::test]
    async fn concurrent_misses_execute_once_and_errors_are_not_kept() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cache = ResponseCache::new(ResponseCacheConfig::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let answer = |ok: bool| Answer {
            status: axum::http::StatusCode::OK,
            headers: axum::http::HeaderMap::new(),
            body: axum::body::Bytes::from_static(b"{}"),
            ok,
        };
        let page = key(&cache, "{ concerts { edges { cursor } } }", true).unwrap();
        let calls = (0..10).map(|_| {
            let (cache, runs, page) = (cache.clone(), runs.clone(), page.clone());
            async move {
                cache
                    .get_or_execute(page, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        answer(true)
                    })
                    .await
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution for ten concurrent misses");

        let failing = key(&cache, "{ concert(id: \"x\") { title } }", true).unwrap();
        for _ in 0..2 {
            cache
                .get_or_execute(failing.clone(), async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    answer(false)
                })
                .await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "an answer with errors is executed again");
        cache.invalidate_all();
        cache
            .get_or_execute(page, async {
                runs.fetch_add(1, Ordering::SeqCst);
                answer(true)
            })
            .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "emptied at once");
    }
}
