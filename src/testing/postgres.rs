//! A PostgreSQL schema of its own for one test, so tests of the shared store run side by
//! side in one database and leave nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::StoreConfig;

/// A schema of its own for one test in the database `DATABASE_URL` names. Nothing creates
/// it up front: the store does, with its migrations, on first open. It is dropped, with
/// everything in it, when this value is (also when the test panics).
///
/// ```no_run
/// # async fn example() {
/// use kinde_webhooks::testing::TestSchema;
///
/// let Some(schema) = TestSchema::from_env() else { return }; // prints why it skipped
/// let store = kinde_webhooks::inbox::PgStore::open(&schema.store_config())
///     .await
///     .unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A fresh schema in the database `DATABASE_URL` names, or `None` after printing
    /// `skipped: DATABASE_URL not set` (so a test without a database passes, saying why).
    pub fn from_env() -> Option<TestSchema> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Some(TestSchema::new(&url)),
            _ => {
                eprintln!("skipped: DATABASE_URL not set");
                None
            }
        }
    }

    /// A fresh schema in the database at `url` (`postgres://...`); its name is unique to
    /// this process and call, so concurrent tests and test binaries never share one.
    pub fn new(url: &str) -> TestSchema {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        TestSchema {
            url: url.to_owned(),
            name: format!(
                "kw_test_{}_{}_{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ),
        }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name (a plain lower-case identifier: `[store] schema`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[store]` for this schema: PostgreSQL, a pool of 4, the other keys at their defaults.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            backend: "postgres".into(),
            url: Some(self.url.clone()),
            schema: self.name.clone(),
            max_connections: 4,
            ..StoreConfig::default()
        }
    }

    /// The same `[store]` section as TOML, for a configuration file or
    /// [`TestServerBuilder::toml`](super::TestServerBuilder::toml).
    pub fn store_toml(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        format!(
            "[store]\nbackend = \"postgres\"\nurl = {}\nschema = {}\nmax_connections = 4\n",
            quote(&self.url),
            quote(&self.name)
        )
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}
