//! The two backends: SQLite (embedded, the default) and PostgreSQL.
//!
//! # Design
//!
//! `Pool` is an enum of the two native sqlx pools, and every query runs
//! through `on_pool!`, which expands its body once per variant. Each
//! body is therefore type-checked against the real driver of its backend:
//! rows are `SqliteRow` or `PgRow`, transactions are native, and each
//! backend keeps its own connection options (WAL, busy timeout and a
//! private file for SQLite; TLS, `PGPASSWORD` and `.pgpass` for
//! PostgreSQL).
//!
//! The query text is written once: sqlx's SQLite driver binds `$1, $2…`
//! as PostgreSQL does, and the statements keep to SQL both understand
//! (`ON CONFLICT … DO UPDATE`, `RETURNING`, `CASE` rather than the
//! two-argument `MAX` or `GREATEST`). Where they must differ, [`Backend`]
//! picks the text (only the catalogue query of [`Store::migration_status`]
//! today). The schema differs in its types only (`BLOB`/`BYTEA`,
//! `INTEGER`/`BIGINT`): `migrations/sqlite` and `migrations/postgres` hold
//! one migration per version each, with the same tables, columns,
//! constraints and indexes. Times are whole seconds since the epoch on
//! both.
//!
//! sqlx's `Any` driver was the other way: one pool type, but it has no
//! per-backend connection options beyond the URL, decodes through a
//! narrower set of types and checks nothing per backend at compile time.
//! The enum costs one macro and keeps each driver whole.
//!
//! # Outages
//!
//! A store call waits at most `acquire_timeout` for a connection; with the
//! server down it fails with that bound (connection refused is retried
//! within it), and the gateway refuses the request. Idle connections are
//! checked before use, so connections broken by a restart are replaced:
//! the pool recovers by itself when the server is back.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bastion_core::config::{Config, PoolConfig, StoreLocation};
use sqlx::Row;
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use crate::store::{Store, StoreError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The table sqlx records applied migrations in.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// A pool of one of the backends.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the native pool of whichever backend
/// `$pool` is; the body is compiled once per backend.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($p) => $body,
            $crate::db::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Column reads shared by both backends' rows, so that row conversions are
/// written once.
pub(crate) trait Fields {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, sqlx::Error>;
}

macro_rules! impl_fields {
    ($($row:ty),*) => {$(
        impl Fields for $row {
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>, sqlx::Error> {
                self.try_get(col)
            }
        }
    )*};
}
impl_fields!(SqliteRow, PgRow);

/// Which database a store is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

#[derive(Clone)]
enum Target {
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>),
}

/// Where the store is and how its pool behaves: what [`Store::open`]
/// needs. `Display` and `Debug` name the location without credentials.
#[derive(Clone)]
pub struct StoreSettings {
    target: Target,
    pool: PoolConfig,
}

impl StoreSettings {
    /// An SQLite file, with the default pool.
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings { target: Target::Sqlite(path.into()), pool: PoolConfig::default() }
    }

    /// A PostgreSQL server by URL, with the default pool. A password not in
    /// the URL is taken from `PGPASSWORD`, else from the `.pgpass` file
    /// (`PGPASSFILE`, default `~/.pgpass`), as libpq does.
    pub fn postgres(url: &str) -> Result<StoreSettings, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Invalid(format!("the PostgreSQL URL cannot be used: {}", describe_url_error(&e)))
        })?;
        Ok(StoreSettings::postgres_with(options))
    }

    /// A PostgreSQL server by connection options, with the default pool.
    pub fn postgres_with(options: PgConnectOptions) -> StoreSettings {
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name("bastion"),
        };
        StoreSettings { target: Target::Postgres(Box::new(options)), pool: PoolConfig::default() }
    }

    /// The config's `store`: its location (relative SQLite paths against
    /// the config file's directory; absent, `bastion.db` in the data
    /// directory) and pool settings.
    pub fn from_config(config: &Config, config_path: &Path) -> Result<StoreSettings, StoreError> {
        let settings = match &config.store.location {
            StoreLocation::Postgres(url) => StoreSettings::postgres(url.expose())?,
            StoreLocation::DataDir | StoreLocation::Sqlite(_) => {
                StoreSettings::sqlite(config.sqlite_path(config_path).expect("an SQLite location"))
            }
        };
        Ok(settings.with_pool(config.store.pool.clone()))
    }

    /// These settings with another pool configuration.
    pub fn with_pool(mut self, pool: PoolConfig) -> StoreSettings {
        self.pool = pool;
        self
    }

    pub fn backend(&self) -> Backend {
        match self.target {
            Target::Sqlite(_) => Backend::Sqlite,
            Target::Postgres(_) => Backend::Postgres,
        }
    }

    fn max_connections(&self) -> u32 {
        self.pool.max_connections.unwrap_or(match self.target {
            Target::Sqlite(_) => 4,
            Target::Postgres(_) => 10,
        })
    }
}

/// `sqlite:PATH`, or `postgres://HOST:PORT/DATABASE` (no user, no
/// password).
impl fmt::Display for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Target::Postgres(o) => {
                match o.get_socket() {
                    Some(dir) => write!(f, "postgres://{}:{}", dir.display(), o.get_port())?,
                    None => write!(f, "postgres://{}:{}", o.get_host(), o.get_port())?,
                }
                if let Some(db) = o.get_database() {
                    write!(f, "/{db}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings").field("location", &self.to_string()).field("pool", &self.pool).finish()
    }
}

/// sqlx's configuration errors, without anything of the URL.
fn describe_url_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// A migration, by version and description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationInfo {
    pub version: i64,
    pub description: String,
}

/// Where a migration stands in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but from a text other than this build's.
    Modified,
    /// Started and not completed.
    Failed,
    /// Applied by a build that knows migrations this one does not.
    Unknown,
}

/// One migration and its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: MigrationState,
}

fn info(m: &sqlx::migrate::Migration) -> MigrationInfo {
    MigrationInfo { version: m.version, description: m.description.to_string() }
}

/// The page size of a new SQLite database.
const PAGE_SIZE: u32 = 16384;

/// The audit writer's SQLite connection: one, kept open, so that its page
/// cache (larger than the others') stays warm from batch to batch instead
/// of being read again by whichever pooled connection comes next.
fn appender_options(opts: SqliteConnectOptions) -> SqliteConnectOptions {
    // 16 MiB.
    opts.pragma("cache_size", "-16384")
}

impl Store {
    /// Opens the store and applies pending migrations: what `serve` and the
    /// administration commands do.
    pub async fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
        let store = Store::connect(settings).await?;
        let applied = store.migrate().await?;
        if !applied.is_empty() {
            let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
            tracing::info!(store = %settings, ?versions, "store migrations applied");
        }
        Ok(store)
    }

    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// migrations. The file is created with mode 0600.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Store::open(&StoreSettings::sqlite(path)).await
    }

    /// Opens the store without applying migrations. With PostgreSQL, waits
    /// up to `connect_timeout` for the server to accept a connection.
    pub async fn connect(settings: &StoreSettings) -> Result<Store, StoreError> {
        let p = &settings.pool;
        match &settings.target {
            Target::Sqlite(path) => {
                create_private_file(path)?;
                let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Only a new file takes it. Pages of 16 KiB rather
                    // than 4: the audit trail, most of what is written,
                    // appends rows of half a kilobyte, and each commit
                    // writes whole pages (larger ones cost more for the
                    // small commits of a quiet gateway).
                    .page_size(PAGE_SIZE);
                let pool = SqlitePoolOptions::new()
                    .max_connections(settings.max_connections())
                    .min_connections(p.min_connections)
                    .acquire_timeout(p.acquire_timeout)
                    .idle_timeout(p.idle_timeout)
                    .connect_with(opts.clone())
                    .await?;
                let appender = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(p.acquire_timeout)
                    .idle_timeout(None)
                    .connect_lazy_with(appender_options(opts));
                Ok(Store { pool: Pool::Sqlite(pool), appender: Some(Pool::Sqlite(appender)) })
            }
            Target::Postgres(opts) => {
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections())
                    .min_connections(p.min_connections)
                    .acquire_timeout(p.acquire_timeout)
                    .idle_timeout(p.idle_timeout)
                    .test_before_acquire(true)
                    .connect_lazy_with((**opts).clone());
                wait_for_server(opts, p.connect_timeout).await?;
                Ok(Store { pool: Pool::Postgres(pool), appender: None })
            }
        }
    }

    /// Which database this store is kept in.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Sqlite(_) => &SQLITE_MIGRATIONS,
            Pool::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the migrations the database lacks, in order, holding the
    /// backend's migration lock (concurrent starts apply each once).
    /// Returns those applied, oldest first. A database changed by a newer
    /// build, or whose applied migrations differ from this build's, is
    /// refused.
    pub async fn migrate(&self) -> Result<Vec<MigrationInfo>, StoreError> {
        let migrator = self.migrator();
        on_pool!(&self.pool, p => {
            let mut conn = p.acquire().await?;
            apply_pending(&mut *conn, migrator).await
        })
    }

    /// Every migration this build has or the database records, with its
    /// state, by version. Changes nothing.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        let exists_sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_name = '_sqlx_migrations' AND table_schema = current_schema()"
            }
        };
        let recorded: Vec<(i64, Vec<u8>, bool)> = on_pool!(&self.pool, p => {
            let exists = sqlx::query(exists_sql).fetch_one(p).await?.int("n")? > 0;
            if exists {
                let rows = sqlx::query(
                    "SELECT version, checksum, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT) AS ok \
                     FROM _sqlx_migrations ORDER BY version",
                )
                .fetch_all(p)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.int("version")?, r.bytes("checksum")?, r.int("ok")? != 0)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            } else {
                Vec::new()
            }
        });
        let mut out = Vec::new();
        for m in self.migrator().iter().filter(|m| m.migration_type.is_up_migration()) {
            let state = match recorded.iter().find(|r| r.0 == m.version) {
                None => MigrationState::Pending,
                Some((_, _, false)) => MigrationState::Failed,
                Some((_, checksum, true)) if checksum.as_slice() != &*m.checksum => MigrationState::Modified,
                Some(_) => MigrationState::Applied,
            };
            out.push(MigrationStatus { version: m.version, description: m.description.to_string(), state });
        }
        for (version, _, ok) in &recorded {
            if !self.migrator().iter().any(|m| m.version == *version) {
                let state = if *ok { MigrationState::Unknown } else { MigrationState::Failed };
                out.push(MigrationStatus { version: *version, description: String::new(), state });
            }
        }
        out.sort_by_key(|s| s.version);
        Ok(out)
    }
}

/// Creates the SQLite file readable by its owner only, if it is missing.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Io(path.into(), e))?;
    Ok(())
}

/// Waits until the server accepts a connection, for at most `limit`.
/// Refused connections and a server still starting are retried; anything
/// else (a wrong password, a missing database) is returned at once. The
/// connection is a direct one, so the error is the server's own.
async fn wait_for_server(options: &PgConnectOptions, limit: Duration) -> Result<(), StoreError> {
    use sqlx::Connection;
    let deadline = Instant::now() + limit;
    let mut last = sqlx::Error::PoolTimedOut;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::Unreachable { within: limit, cause: Box::new(last) });
        }
        last = match tokio::time::timeout(left, sqlx::postgres::PgConnection::connect_with(options)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e @ sqlx::Error::Io(_))) => e,
            Ok(Err(sqlx::Error::Database(e))) if e.is_transient_in_connect_phase() => sqlx::Error::Database(e),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200))).await;
    }
}

/// Applies pending migrations under the migration lock; see
/// [`Store::migrate`].
async fn apply_pending<C: Migrate>(conn: &mut C, migrator: &Migrator) -> Result<Vec<MigrationInfo>, StoreError> {
    conn.lock().await?;
    let outcome = apply_locked(conn, migrator).await;
    let unlocked = conn.unlock().await;
    let applied = outcome?;
    unlocked?;
    Ok(applied)
}

async fn apply_locked<C: Migrate>(conn: &mut C, migrator: &Migrator) -> Result<Vec<MigrationInfo>, StoreError> {
    conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
    if let Some(version) = conn.dirty_version(MIGRATIONS_TABLE).await? {
        return Err(MigrateError::Dirty(version).into());
    }
    let recorded = conn.list_applied_migrations(MIGRATIONS_TABLE).await?;
    if let Some(unknown) = recorded.iter().find(|r| !migrator.iter().any(|m| m.version == r.version)) {
        return Err(StoreError::NewerSchema(unknown.version));
    }
    let mut applied = Vec::new();
    for m in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
        match recorded.iter().find(|r| r.version == m.version) {
            Some(r) if r.checksum != m.checksum => return Err(MigrateError::VersionMismatch(m.version).into()),
            Some(_) => {}
            None => {
                conn.apply(MIGRATIONS_TABLE, m).await?;
                applied.push(info(m));
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;
    use sqlx::postgres::PgConnection;

    use super::*;
    use crate::testdb::{PgTestDb, on_both, test_pool};

    /// Every migration of this build, by version.
    fn versions(migrator: &Migrator) -> Vec<i64> {
        migrator.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect()
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        assert_eq!(versions(&SQLITE_MIGRATIONS), versions(&POSTGRES_MIGRATIONS));
        let described = |m: &Migrator| m.iter().map(|m| m.description.to_string()).collect::<Vec<_>>();
        assert_eq!(described(&SQLITE_MIGRATIONS), described(&POSTGRES_MIGRATIONS));
        assert!(versions(&SQLITE_MIGRATIONS).len() >= 3);
    }

    #[tokio::test]
    async fn an_opened_store_is_fully_migrated() {
        on_both(async |s: Store| {
            let status = s.migration_status().await.unwrap();
            assert_eq!(status.len(), versions(s.migrator()).len());
            assert!(status.iter().all(|m| m.state == MigrationState::Applied), "{status:?}");
            assert!(s.migrate().await.unwrap().is_empty(), "nothing left to apply");
            s.ping().await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn migrations_are_reported_then_applied_once() {
        // SQLite: a new file, connected without migrating.
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings::sqlite(dir.path().join("b.db"));
        let s = Store::connect(&settings).await.unwrap();
        check_fresh_database(&s).await;
        s.close().await;

        // PostgreSQL: a new database.
        if let Some(db) = PgTestDb::create_empty().await {
            check_fresh_database(&db.store).await;
            // Two stores migrating at once: each migration applied once.
            let fresh = PgTestDb::create_empty().await.unwrap();
            let a = Store::connect(&StoreSettings::postgres_with(fresh.options.clone()).with_pool(test_pool()))
                .await
                .unwrap();
            let (x, y) = tokio::join!(a.migrate(), fresh.store.migrate());
            let (x, y) = (x.unwrap(), y.unwrap());
            assert_eq!(x.len() + y.len(), versions(&POSTGRES_MIGRATIONS).len(), "{x:?} {y:?}");
            a.close().await;
            fresh.drop().await;
            db.drop().await;
        }
    }

    async fn check_fresh_database(s: &Store) {
        let all = versions(s.migrator());
        let status = s.migration_status().await.unwrap();
        assert!(status.iter().all(|m| m.state == MigrationState::Pending), "{status:?}");
        assert_eq!(status.iter().map(|m| m.version).collect::<Vec<_>>(), all);
        assert!(s.ping().await.is_err(), "no tables yet");
        let applied = s.migrate().await.unwrap();
        assert_eq!(applied.iter().map(|m| m.version).collect::<Vec<_>>(), all);
        assert_eq!(applied[0].description, "api keys");
        assert!(s.migrate().await.unwrap().is_empty());
        assert!(s.migration_status().await.unwrap().iter().all(|m| m.state == MigrationState::Applied));
        s.ping().await.unwrap();
    }

    #[tokio::test]
    async fn a_database_from_a_newer_build_is_refused() {
        on_both(async |s: Store| {
            on_pool!(&s.pool, p => {
                sqlx::query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                     VALUES (9999, 'from the future', TRUE, $1, 0)",
                )
                .bind(vec![0u8; 48])
                .execute(p)
                .await
                .unwrap();
            });
            let status = s.migration_status().await.unwrap();
            assert_eq!(status.last().map(|m| (m.version, m.state)), Some((9999, MigrationState::Unknown)));
            let e = s.migrate().await.unwrap_err();
            assert!(matches!(e, StoreError::NewerSchema(9999)), "{e}");
            assert!(e.to_string().contains("newer version of bastion"), "{e}");
        })
        .await;
    }

    #[test]
    fn the_location_is_shown_without_credentials() {
        let s = StoreSettings::postgres("postgres://bastion:hunter2pw@db.internal:6432/gw?sslmode=prefer").unwrap();
        assert_eq!(s.backend(), Backend::Postgres);
        assert_eq!(s.to_string(), "postgres://db.internal:6432/gw");
        assert!(!format!("{s:?}").contains("hunter2pw"));
        let s = StoreSettings::sqlite("/var/lib/bastion/bastion.db");
        assert_eq!(s.to_string(), "sqlite:/var/lib/bastion/bastion.db");
        let e = StoreSettings::postgres("postgres://u:hunter2pw@h:notaport/d").map(|_| ()).unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        assert!(!e.to_string().contains("hunter2pw"), "{e}");
    }

    #[test]
    fn settings_follow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bastion.yaml");
        let parse = |text: &str| Config::parse(&path, text).unwrap();
        let s = StoreSettings::from_config(&parse("listen: 127.0.0.1:1\n"), &path).unwrap();
        assert_eq!(s.to_string(), format!("sqlite:{}", dir.path().join("data/bastion.db").display()));
        assert_eq!(s.max_connections(), 4);
        let s = StoreSettings::from_config(&parse("store: sqlite:state/b.db\n"), &path).unwrap();
        assert_eq!(s.to_string(), format!("sqlite:{}", dir.path().join("state/b.db").display()));
        let c = parse("store:\n  url: postgres://u@h:5433/d\n  max_connections: 7\n  acquire_timeout: 2s\n");
        let s = StoreSettings::from_config(&c, &path).unwrap();
        assert_eq!(
            (s.backend(), s.to_string(), s.max_connections()),
            (Backend::Postgres, "postgres://h:5433/d".into(), 7)
        );
        assert_eq!(s.pool.acquire_timeout, Duration::from_secs(2));
    }

    /// A free loopback port nobody listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_within_the_connect_timeout() {
        let url = format!("postgres://bastion:hunter2pw@127.0.0.1:{}/bastion", closed_port());
        let pool = PoolConfig {
            acquire_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(800),
            ..PoolConfig::default()
        };
        let settings = StoreSettings::postgres(&url).unwrap().with_pool(pool);
        let started = Instant::now();
        let e = Store::connect(&settings).await.map(|_| ()).unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(3), "{took:?}");
        assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("refused") && !msg.contains("hunter2pw"), "{msg}");
    }

    #[tokio::test]
    async fn calls_fail_fast_while_the_server_is_away_and_recover_after() {
        let Some(db) = PgTestDb::create().await else { return };
        let pool = PoolConfig { acquire_timeout: Duration::from_millis(500), ..test_pool() };
        let s = Store::open(&StoreSettings::postgres_with(db.options.clone()).with_pool(pool)).await.unwrap();
        s.ping().await.unwrap();
        // Every connection of the database is ended under the pool, as a
        // server restart would: the next calls reconnect by themselves.
        let mut admin = PgConnection::connect_with(&db.options).await.unwrap();
        let killed = sqlx::query(
            "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .int("n")
        .unwrap();
        assert!(killed >= 1, "the pool had connections");
        for _ in 0..3 {
            s.ping().await.unwrap();
            assert!(s.list_keys(None).await.unwrap().is_empty());
        }
        let _ = admin.close().await;

        // A pool to a port nobody listens on: each call fails within the
        // acquire timeout, never hangs.
        let away = PoolConfig { acquire_timeout: Duration::from_millis(400), ..test_pool() };
        let options = db.options.clone().port(closed_port());
        let pool = PgPoolOptions::new().acquire_timeout(away.acquire_timeout).connect_lazy_with(options);
        let gone = Store { pool: Pool::Postgres(pool), appender: None };
        for _ in 0..2 {
            let started = Instant::now();
            assert!(gone.find_key_by_hash("h").await.is_err());
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        }
        s.close().await;
        db.drop().await;
    }
}
