//! Redis cache-aside for concert reads, built so that Redis can never fail a request.
//!
//! - The connection is lazy (`ConnectionManager::new_lazy_with_config`): catalog boots without
//!   Redis and connects on first use, reconnecting by itself after a drop.
//! - Every call is bounded by a short timeout and goes through a circuit breaker: after a few
//!   failures Redis is skipped for a cool-down and reads go straight to Postgres.
//! - Keys: `<prefix>concert:<id>` (one concert), `<prefix>list:<version>:<query>` (one page) and
//!   `<prefix>version`, a counter every write INCRs. Pages are keyed by the version, so a write makes
//!   every cached page unreachable at once; concert keys are deleted by id.
//! - A reader notes the version before loading from Postgres and stores its result only if the version
//!   is unchanged (one Lua script, atomic in Redis). Without this, a read that loaded a row just before a
//!   write committed could put the old row back after the write's invalidation, for a whole TTL.

use std::sync::Arc;
use std::time::Duration;

use platform::breaker::{BreakerConfig, BreakerError, CircuitBreaker};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::{Concert, ListQuery, Page};

/// Redis is skipped (for 5 s, then one trial call) once half of at least 5 calls in 10 s failed:
/// every call to Redis is the same few commands, so a failure is Redis's, never the request's.
const BREAKER: BreakerConfig = BreakerConfig {
    failure_ratio: 0.5,
    minimum_calls: 5,
    window: Duration::from_secs(10),
    cool_down: Duration::from_secs(5),
};
/// The `/health` probe may wait longer than a read would.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Stores the entries (KEYS[2..], values ARGV[3..]) with TTL ARGV[2] only while the version key
/// (KEYS[1], missing = "0") still equals ARGV[1], the version the reader saw before loading.
const STORE_IF_VERSION_UNCHANGED: &str = r"
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return 0 end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[2])
end
return #KEYS - 1
";

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub url: String,
    /// Every key starts with it, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    pub ttl: Duration,
    /// Longest a request waits on one Redis call before going to Postgres instead.
    pub timeout: Duration,
}

/// The cache version a reader saw before loading from Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(String);

/// The Redis cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    breaker: CircuitBreaker,
    store: Script,
}

impl Cache {
    /// Does not connect: the first call does, so a missing Redis cannot stop catalog from starting.
    pub fn new(config: &CacheConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                prefix: config.key_prefix.clone(),
                ttl_secs: config.ttl.as_secs().max(1),
                timeout: config.timeout,
                breaker: CircuitBreaker::new("redis", BREAKER),
                store: Script::new(STORE_IF_VERSION_UNCHANGED),
            }),
        })
    }

    fn version_key(&self) -> String {
        format!("{}version", self.inner.prefix)
    }

    fn concert_key(&self, id: &Uuid) -> String {
        format!("{}concert:{}", self.inner.prefix, id.simple())
    }

    fn page_key(&self, version: &Version, query: &ListQuery) -> String {
        format!("{}list:{}:{}", self.inner.prefix, version.0, query.cache_key())
    }

    /// Runs one Redis call under the timeout and the breaker; `None` means "no cache this time".
    async fn call<T>(&self, what: &'static str, call: impl Future<Output = RedisResult<T>>) -> Option<T> {
        let timeout = self.inner.timeout;
        let bounded = async {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        };
        match self.inner.breaker.call(bounded, |_| true).await {
            Ok(value) => Some(value),
            Err(BreakerError::Open(_)) => None,
            Err(BreakerError::Inner(error)) => {
                tracing::debug!(cache.op = what, %error, "redis call failed, using postgres");
                None
            }
        }
    }

    /// The cached concerts for `ids` (`None` where not cached) and the version to store misses under.
    pub async fn concerts(&self, ids: &[Uuid]) -> Option<(Version, Vec<Option<Concert>>)> {
        let mut keys = vec![self.version_key()];
        keys.extend(ids.iter().map(|id| self.concert_key(id)));
        let mut connection = self.inner.connection.clone();
        let mut values: Vec<Option<String>> =
            self.call("mget", redis::cmd("MGET").arg(&keys).query_async(&mut connection)).await?;
        if values.len() != keys.len() {
            return None;
        }
        let version = Version(values.remove(0).unwrap_or_else(|| "0".to_owned()));
        Some((version, values.into_iter().map(|v| v.and_then(|v| decode(&v))).collect()))
    }

    /// The cached page for `query`, and the version to store it under on a miss.
    pub async fn page(&self, query: &ListQuery) -> Option<(Version, Option<Page>)> {
        let mut connection = self.inner.connection.clone();
        let version: Option<String> =
            self.call("get", redis::cmd("GET").arg(self.version_key()).query_async(&mut connection)).await?;
        let version = Version(version.unwrap_or_else(|| "0".to_owned()));
        let page: Option<String> = self
            .call("get", redis::cmd("GET").arg(self.page_key(&version, query)).query_async(&mut connection))
            .await?;
        Some((version, page.and_then(|p| decode(&p))))
    }

    pub async fn store_concerts(&self, version: &Version, concerts: &[Concert]) {
        let entries: Vec<(String, &Concert)> =
            concerts.iter().map(|c| (self.concert_key(&c.id), c)).collect();
        self.store(version, &entries).await;
    }

    pub async fn store_page(&self, version: &Version, query: &ListQuery, page: &Page) {
        self.store(version, &[(self.page_key(version, query), page)]).await;
    }

    async fn store<T: Serialize>(&self, version: &Version, entries: &[(String, T)]) {
        if entries.is_empty() {
            return;
        }
        let mut invocation = self.inner.store.key(self.version_key());
        invocation.arg(&version.0).arg(self.inner.ttl_secs);
        for (key, value) in entries {
            let Ok(json) = serde_json::to_string(value) else { return };
            invocation.key(key).arg(json);
        }
        let mut connection = self.inner.connection.clone();
        let _: Option<i64> = self.call("store", invocation.invoke_async(&mut connection)).await;
    }

    /// Forgets what readers must not see any more: the given concerts, and every cached page.
    pub async fn invalidate(&self, concert_ids: &[Uuid]) {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("INCR").arg(self.version_key()).ignore();
        if !concert_ids.is_empty() {
            let keys: Vec<String> = concert_ids.iter().map(|id| self.concert_key(id)).collect();
            pipe.cmd("DEL").arg(keys).ignore();
        }
        let mut connection = self.inner.connection.clone();
        if self.call("invalidate", pipe.query_async::<()>(&mut connection)).await.is_none() {
            // The entries live at most one TTL; nothing better can be done without Redis. While the
            // breaker is open this happens on every write, and the breaker has already said so.
            if self.inner.breaker.is_open() {
                tracing::debug!(concerts = ?concert_ids, "cache not invalidated: redis is unavailable");
            } else {
                tracing::warn!(concerts = ?concert_ids, "could not invalidate the cache; entries expire within the TTL");
            }
        }
    }

    /// The `/health` probe: one PING, bypassing the breaker (a success closes it again).
    pub async fn ping(&self) -> Result<(), String> {
        let mut connection = self.inner.connection.clone();
        let pong =
            tokio::time::timeout(PING_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut connection))
                .await;
        match pong {
            Ok(Ok(_)) => {
                self.inner.breaker.record_success();
                Ok(())
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", PING_TIMEOUT.as_millis())),
        }
    }
}

fn decode<T: DeserializeOwned>(json: &str) -> Option<T> {
    // An entry written by an older version of the service is a miss, not an error.
    serde_json::from_str(json)
        .map_err(|error| tracing::debug!(%error, "ignoring unreadable cache entry"))
        .ok()
}
