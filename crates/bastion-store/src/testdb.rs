//! Databases for the store's tests: every test body runs on a fresh
//! SQLite file, then on a fresh PostgreSQL database.
//!
//! The PostgreSQL server is the one `BASTION_TEST_POSTGRES` names (a URL
//! such as `postgres://postgres@127.0.0.1:PORT/postgres`, as
//! `scripts/pg-throwaway start` prints); each test creates a database of a
//! random name on it and drops it afterwards. Without the variable, the
//! PostgreSQL half is skipped with a message on stderr, unless
//! `BASTION_REQUIRE_POSTGRES=1` (as `scripts/test` sets): then it fails.

use std::str::FromStr;

use bastion_core::config::PoolConfig;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::{Store, StoreSettings};

/// The PostgreSQL server the tests create their databases on.
pub(crate) const SERVER_VAR: &str = "BASTION_TEST_POSTGRES";
/// Set to `1`, a missing server fails the tests instead of skipping.
pub(crate) const REQUIRE_VAR: &str = "BASTION_REQUIRE_POSTGRES";

/// Runs `body` on a fresh SQLite store, then on a fresh PostgreSQL one
/// (see the module documentation for when that half is skipped).
pub(crate) async fn on_both(body: impl AsyncFn(Store)) {
    eprintln!("store test on SQLite");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open_sqlite(&dir.path().join("b.db")).await.expect("open SQLite");
    body(sqlite.clone()).await;
    sqlite.close().await;

    if let Some(db) = PgTestDb::create().await {
        eprintln!("store test on PostgreSQL");
        body(db.store.clone()).await;
        db.drop().await;
    }
}

/// The server's connection options, or `None` (after saying so) when the
/// tests run without one. Panics when one is required and missing.
pub(crate) fn server() -> Option<PgConnectOptions> {
    match std::env::var(SERVER_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(
            PgConnectOptions::from_str(url.trim()).unwrap_or_else(|e| panic!("{SERVER_VAR}: not a usable URL: {e}")),
        ),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => panic!(
            "{REQUIRE_VAR}=1 but {SERVER_VAR} is not set: the PostgreSQL half of the store tests cannot run \
             (scripts/pg-throwaway start runs a throwaway server and prints its URL)"
        ),
        _ => {
            eprintln!("skipped: {SERVER_VAR} is not set (this store test ran on SQLite only)");
            None
        }
    }
}

/// A database of its own on the test server.
pub(crate) struct PgTestDb {
    pub store: Store,
    /// Options for the database itself.
    pub options: PgConnectOptions,
    server: PgConnectOptions,
    name: String,
}

impl PgTestDb {
    /// Creates a database of a random name and opens a store on it
    /// (migrations applied).
    pub async fn create() -> Option<PgTestDb> {
        let db = PgTestDb::create_empty().await?;
        let settings = StoreSettings::postgres_with(db.options.clone()).with_pool(test_pool());
        let store = Store::open(&settings).await.expect("open the PostgreSQL store");
        Some(PgTestDb { store, ..db })
    }

    /// Creates a database of a random name; the store on it is connected
    /// but not migrated.
    pub async fn create_empty() -> Option<PgTestDb> {
        let server = server()?;
        let name = format!("bastion_test_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect_with(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the server {SERVER_VAR} names: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let options = server.clone().database(&name);
        let settings = StoreSettings::postgres_with(options.clone()).with_pool(test_pool());
        let store = Store::connect(&settings).await.expect("connect to the test database");
        Some(PgTestDb { store, options, server, name })
    }

    /// Closes the store and drops the database.
    pub async fn drop(self) {
        self.store.close().await;
        if let Ok(mut conn) = PgConnection::connect_with(&self.server).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

/// A small pool: many tests run at once against one server.
pub(crate) fn test_pool() -> PoolConfig {
    PoolConfig { max_connections: Some(3), ..PoolConfig::default() }
}
