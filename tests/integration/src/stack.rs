//! The whole TicketFlow stack as five real processes, wired like the launcher wires them (its
//! defaults, plain shared variables), but with this test's ports, databases, Redis prefix, exchange
//! and queue, so several stacks run side by side.

use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::BrokerLeftovers;
use crate::graphql::GraphqlClient;
use crate::process::{ServiceProcess, free_local_addrs};
use crate::{TestDatabase, TestNames, binaries};

/// The launcher's log filter, except `tower_http=debug`: its "started processing request" line
/// tells a test that a request has reached the service's handler.
pub const LOG_FILTER: &str = "info,sqlx=warn,lapin=warn,tower_http=debug";

/// Where each service listens.
#[derive(Debug, Clone, Copy)]
pub struct StackAddrs {
    pub identity: SocketAddr,
    pub identity_admin: SocketAddr,
    pub catalog_grpc: SocketAddr,
    pub catalog_http: SocketAddr,
    pub ordering: SocketAddr,
    pub ordering_admin: SocketAddr,
    pub notifications: SocketAddr,
    pub gateway: SocketAddr,
    pub gateway_admin: SocketAddr,
}

/// One database per service that owns one.
#[derive(Debug)]
pub struct StackDatabases {
    pub identity: TestDatabase,
    pub catalog: TestDatabase,
    pub ordering: TestDatabase,
    pub notifications: TestDatabase,
}

/// Five running service binaries. Dropping the stack kills what still runs, then drops the
/// databases and the broker objects.
#[derive(Debug)]
pub struct BinaryStack {
    // Field order is drop order: processes before the databases and queues they use.
    pub identity: ServiceProcess,
    pub catalog: ServiceProcess,
    pub ordering: ServiceProcess,
    pub notifications: ServiceProcess,
    pub gateway: ServiceProcess,
    pub addrs: StackAddrs,
    pub databases: StackDatabases,
    pub names: TestNames,
    _broker: BrokerLeftovers,
}

impl BinaryStack {
    /// Builds the binaries if needed, creates the databases, starts all five services at once (each
    /// tolerates its dependencies coming up after it) and waits until every `/health` answers 200.
    pub async fn start() -> anyhow::Result<Self> {
        crate::init();
        // Cargo may compile here; that is blocking work, off the runtime's threads.
        tokio::task::spawn_blocking(|| binaries::path("identity")).await??;
        let names = TestNames::new();
        let database = |service: &str| {
            let name = names.database(service);
            async move { TestDatabase::create(&name).await }
        };
        let (identity_db, catalog_db, ordering_db, notifications_db) = tokio::try_join!(
            database("identity"),
            database("catalog"),
            database("ordering"),
            database("notifications"),
        )?;
        let broker = BrokerLeftovers::notification_worker(names.exchange(), &names.queue("notifications"));

        let [
            identity,
            identity_admin,
            catalog_grpc,
            catalog_http,
            ordering,
            ordering_admin,
            notifications,
            gateway,
            gateway_admin,
        ] = <[SocketAddr; 9]>::try_from(free_local_addrs(9)?).map_err(|_| anyhow::anyhow!("nine ports"))?;
        let addrs = StackAddrs {
            identity,
            identity_admin,
            catalog_grpc,
            catalog_http,
            ordering,
            ordering_admin,
            notifications,
            gateway,
            gateway_admin,
        };

        // Like the launcher, every service sees the shared names; each reads the ones it needs.
        let shared = vec![
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", LOG_FILTER.to_owned()),
            ("IDENTITY_URL", format!("http://{identity}")),
            ("ORDERING_URL", format!("http://{ordering}")),
            ("CATALOG_GRPC_URL", format!("http://{catalog_grpc}")),
            ("REDIS_URL", crate::redis_url()),
            ("REDIS_KEY_PREFIX", names.redis_prefix()),
            ("AMQP_URL", crate::amqp_url()),
            ("EVENTS_EXCHANGE", names.exchange()),
            ("NOTIFICATIONS_QUEUE", names.queue("notifications")),
        ];
        let start = |name: &str, own: Vec<(&'static str, String)>| -> anyhow::Result<ServiceProcess> {
            let env = shared.iter().cloned().chain(own);
            ServiceProcess::spawn(name, &binaries::path(name)?, &[], env)
        };
        let identity = start(
            "identity",
            vec![
                ("LISTEN_ADDR", identity.to_string()),
                ("ADMIN_LISTEN_ADDR", identity_admin.to_string()),
                ("DATABASE_URL", identity_db.url.clone()),
                // The launcher's default: logins reach identity through the gateway on loopback.
                ("TRUSTED_PROXY_ADDRS", "127.0.0.1".to_owned()),
                // identity's development key-encryption key (identity::key_encryption), as the launcher sets.
                ("KEY_ENCRYPTION_KEYS", "dev-only:ZGV2ZWxvcG1lbnQgb25seSwgbm90IGEgc2VjcmV0ISE=".to_owned()),
            ],
        )?;
        let catalog = start(
            "catalog",
            vec![
                ("ADMIN_LISTEN_ADDR", catalog_http.to_string()),
                ("GRPC_LISTEN_ADDR", catalog_grpc.to_string()),
                ("DATABASE_URL", catalog_db.url.clone()),
                ("SEED_CATALOG", "true".to_owned()),
            ],
        )?;
        let ordering = start(
            "ordering",
            vec![
                ("LISTEN_ADDR", ordering.to_string()),
                ("ADMIN_LISTEN_ADDR", ordering_admin.to_string()),
                ("DATABASE_URL", ordering_db.url.clone()),
            ],
        )?;
        let notifications = start(
            "notifications",
            vec![
                ("ADMIN_LISTEN_ADDR", notifications.to_string()),
                ("DATABASE_URL", notifications_db.url.clone()),
            ],
        )?;
        let gateway = start(
            "gateway",
            vec![("LISTEN_ADDR", gateway.to_string()), ("ADMIN_LISTEN_ADDR", gateway_admin.to_string())],
        )?;

        let mut stack = Self {
            identity,
            catalog,
            ordering,
            notifications,
            gateway,
            addrs,
            databases: StackDatabases {
                identity: identity_db,
                catalog: catalog_db,
                ordering: ordering_db,
                notifications: notifications_db,
            },
            names,
            _broker: broker,
        };
        // Migrations, the catalogue seed and first connections take a while on a busy machine.
        for (process, addr) in stack.health_endpoints() {
            process.wait_until_ok(&format!("http://{addr}/health"), Duration::from_secs(90)).await?;
        }
        Ok(stack)
    }

    /// Each process with its admin address (the per-check `/health`), in start-up order.
    pub fn health_endpoints(&mut self) -> [(&mut ServiceProcess, SocketAddr); 5] {
        let addrs = self.addrs;
        [
            (&mut self.identity, addrs.identity_admin),
            (&mut self.catalog, addrs.catalog_http),
            (&mut self.ordering, addrs.ordering_admin),
            (&mut self.notifications, addrs.notifications),
            (&mut self.gateway, addrs.gateway_admin),
        ]
    }

    pub fn graphql(&self) -> anyhow::Result<GraphqlClient> {
        GraphqlClient::new(format!("http://{}/graphql", self.addrs.gateway))
    }

    pub fn processes(&self) -> [&ServiceProcess; 5] {
        [&self.identity, &self.catalog, &self.ordering, &self.notifications, &self.gateway]
    }
}

impl Drop for BinaryStack {
    fn drop(&mut self) {
        // A failing test shows what each service said, which is usually why it failed.
        if std::thread::panicking() {
            for process in self.processes() {
                eprintln!("--- last output of {} ---\n{}", process.name, process.tail(30));
            }
        }
    }
}
