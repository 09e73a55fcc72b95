//! A fresh Postgres database per test, dropped when the test ends (pass or fail).

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

/// A database that exists for one test. Dropping it drops the database.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database; the service under test migrates it itself.
    pub async fn create(name: &str) -> anyhow::Result<Self> {
        let base = PgConnectOptions::from_str(&crate::postgres_url())?;
        let url = base.database(name).to_url_lossy().to_string();
        platform::db::ensure_database(&url).await?;
        Ok(Self { name: name.to_owned(), url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived runtime on
        // its own thread does the async work and we wait for it, so the database is gone when the
        // test returns.
        let url = self.url.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(platform::db::drop_database(&url))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: could not drop test database {}: {error:#}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}
