//! The harness itself: fresh databases per test that are gone afterwards.

use integration::{TestDatabase, TestNames};
use sqlx::{Connection, PgConnection};

async fn database_exists(name: &str) -> bool {
    let mut conn = PgConnection::connect(&integration::postgres_url()).await.expect("postgres is reachable");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("query pg_database")
}

#[tokio::test]
async fn each_test_gets_a_fresh_database_that_is_dropped_afterwards() {
    integration::init();
    let names = TestNames::new();
    let db = TestDatabase::create(&names.database("harness")).await.expect("create test database");
    assert!(database_exists(&db.name).await);

    let mut conn = PgConnection::connect(&db.url).await.expect("connect to the test database");
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&mut conn)
            .await
            .expect("count tables");
    assert_eq!(tables, 0, "a new test database starts empty");

    // Dropping the handle drops the database, even with a connection still open.
    let name = db.name.clone();
    drop(db);
    assert!(!database_exists(&name).await);
}

#[tokio::test]
async fn two_tests_creating_databases_at_once_do_not_collide() {
    integration::init();
    let (a, b) = (TestNames::new(), TestNames::new());
    let (name_a, name_b) = (a.database("harness"), b.database("harness"));
    let (da, db) = tokio::join!(TestDatabase::create(&name_a), TestDatabase::create(&name_b));
    let (da, db) = (da.expect("first database"), db.expect("second database"));
    assert_ne!(da.url, db.url);
}

#[tokio::test]
async fn the_proxy_cuts_and_restores_a_dependency_for_one_test() {
    use std::str::FromStr;
    integration::init();
    let upstream = std::net::SocketAddr::from_str("127.0.0.1:5432").expect("address");
    let proxy = integration::TcpProxy::start(upstream).await.expect("start proxy");
    let url = format!("postgres://postgres@{}/postgres", proxy.addr);

    let mut conn = PgConnection::connect(&url).await.expect("connect through the proxy");
    sqlx::query("SELECT 1").execute(&mut conn).await.expect("query through the proxy");

    proxy.cut();
    assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err(), "the open connection is reset");
    assert!(PgConnection::connect(&url).await.is_err(), "new connections are refused");

    proxy.restore();
    let mut conn = PgConnection::connect(&url).await.expect("reconnect after restore");
    sqlx::query("SELECT 1").execute(&mut conn).await.expect("query after restore");
}
