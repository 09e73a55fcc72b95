//! The launcher binary (`cargo run`) as a newcomer meets it: it refuses to start without its
//! infrastructure, saying which piece is missing, and otherwise runs every service until SIGTERM.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;
use std::time::Duration;

use integration::process::{Stream, free_local_addrs};
use integration::{BrokerLeftovers, ServiceProcess, TestDatabase, TestNames};

fn launcher(env: Vec<(&'static str, String)>) -> ServiceProcess {
    integration::init();
    ServiceProcess::spawn("ticketflow", Path::new(env!("CARGO_BIN_EXE_ticketflow")), &[], env).unwrap()
}

#[tokio::test]
async fn the_launcher_stops_at_once_naming_redis_when_redis_is_down() {
    let dead = free_local_addrs(1).unwrap()[0]; // released: nothing listens there
    let mut launcher = launcher(vec![
        ("POSTGRES_URL", integration::postgres_url()),
        ("REDIS_URL", format!("redis://{dead}")),
        ("AMQP_URL", integration::amqp_url()),
    ]);

    let exit = launcher.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(!exit.success(), "exit status {exit}");
    let stderr = launcher.lines(Stream::Stderr).join("\n");
    assert!(stderr.contains("Redis is not answering") && stderr.contains(&dead.to_string()), "{stderr}");
    assert!(!stderr.contains("PostgreSQL") && !stderr.contains("RabbitMQ"), "only Redis is down: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_runs_every_service_on_the_given_ports_until_sigterm() {
    integration::init();
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
    )
    .unwrap();
    let _broker = BrokerLeftovers::notification_worker(names.exchange(), &names.queue("notifications"));
    let [identity, catalog_grpc, catalog_http, ordering, notifications, gateway, admin_a, admin_b, admin_c] =
        <[_; 9]>::try_from(free_local_addrs(9).unwrap()).unwrap();

    // `<SERVICE>_<NAME>` for what each service must have of its own, plain names for shared ones.
    let mut launcher = launcher(vec![
        ("POSTGRES_URL", integration::postgres_url()),
        ("REDIS_URL", integration::redis_url()),
        ("AMQP_URL", integration::amqp_url()),
        ("IDENTITY_LISTEN_ADDR", identity.to_string()),
        ("IDENTITY_ADMIN_LISTEN_ADDR", admin_a.to_string()),
        ("IDENTITY_DATABASE_URL", identity_db.url.clone()),
        ("CATALOG_ADMIN_LISTEN_ADDR", catalog_http.to_string()),
        ("CATALOG_GRPC_LISTEN_ADDR", catalog_grpc.to_string()),
        ("CATALOG_DATABASE_URL", catalog_db.url.clone()),
        ("ORDERING_LISTEN_ADDR", ordering.to_string()),
        ("ORDERING_ADMIN_LISTEN_ADDR", admin_b.to_string()),
        ("ORDERING_DATABASE_URL", ordering_db.url.clone()),
        ("NOTIFICATIONS_ADMIN_LISTEN_ADDR", notifications.to_string()),
        ("NOTIFICATIONS_DATABASE_URL", notifications_db.url.clone()),
        ("GATEWAY_LISTEN_ADDR", gateway.to_string()),
        ("GATEWAY_ADMIN_LISTEN_ADDR", admin_c.to_string()),
        ("IDENTITY_URL", format!("http://{identity}")),
        ("ORDERING_URL", format!("http://{ordering}")),
        ("CATALOG_GRPC_URL", format!("http://{catalog_grpc}")),
        ("REDIS_KEY_PREFIX", names.redis_prefix()),
        ("EVENTS_EXCHANGE", names.exchange()),
        ("NOTIFICATIONS_QUEUE", names.queue("notifications")),
    ]);

    launcher
        .wait_for_line(Duration::from_secs(120), |line| line.contains("all services healthy"))
        .await
        .unwrap();
    let playground = format!("http://{gateway}/graphql");
    launcher
        .wait_for_line(Duration::from_secs(5), |line| {
            line.contains("GraphQL playground") && line.contains(&playground)
        })
        .await
        .unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let page = http.get(&playground).header("Accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200, "the printed playground URL works");
    for addr in [identity, catalog_http, ordering, notifications, gateway, admin_a, admin_b, admin_c] {
        let health = http.get(format!("http://{addr}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{addr} serves /health on the port it was given");
    }

    launcher.terminate().unwrap();
    let exit = launcher.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(exit.success(), "exit status {exit}:\n{}", launcher.tail(30));
    assert!(launcher.lines(Stream::Stdout).iter().any(|line| line.contains("TicketFlow stopped.")));
}
