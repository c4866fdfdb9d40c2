//! The `store` key: where Bastion keeps what changes at run time (API keys,
//! users, administrators, sealed secrets), and how its connections are
//! pooled.
//!
//! Two forms, a URL or a mapping:
//!
//! ```yaml
//! store: postgres://bastion@db.internal:5432/bastion
//! ```
//!
//! ```yaml
//! store:
//!   url: postgres://bastion@db.internal:5432/bastion
//!   max_connections: 20
//!   acquire_timeout: 5s
//! ```
//!
//! Absent (or a mapping without `url`): SQLite, `bastion.db` in the data
//! directory. A password may be written in the URL but belongs in
//! `PGPASSWORD` or a `.pgpass` file; whatever prints the location (errors,
//! logs, `config check`) leaves it out.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::redact;

/// The `store` key, after parsing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreConfig {
    pub location: StoreLocation,
    pub pool: PoolConfig,
}

/// Which database holds the store.
#[derive(Clone, PartialEq, Default)]
pub enum StoreLocation {
    /// SQLite, `bastion.db` in the data directory (the default).
    #[default]
    DataDir,
    /// An SQLite file named by `sqlite:PATH` or `sqlite://PATH`; a relative
    /// path is relative to the config file's directory.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL.
    Postgres(PostgresUrl),
}

impl StoreLocation {
    /// Whether this is a PostgreSQL server.
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

/// Printable: a PostgreSQL URL without its user, password and query.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::DataDir => f.write_str("sqlite:<data_dir>/bastion.db"),
            StoreLocation::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreLocation::Postgres(u) => fmt::Display::fmt(u, f),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::DataDir => f.write_str("DataDir"),
            StoreLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StoreLocation::Postgres(u) => f.debug_tuple("Postgres").field(u).finish(),
        }
    }
}

/// A `postgres://` or `postgresql://` URL as written in the config. It may
/// hold a password: `Display` and `Debug` show it without user, password
/// and query (see [`redact::url`]); [`PostgresUrl::expose`] is for the
/// database driver alone.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// The URL itself, password included: hand it to the driver, never to
    /// a log or a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a password (`user:password@`, or a
    /// `password=` parameter).
    pub fn has_password(&self) -> bool {
        let rest = self.0.split_once("://").map_or("", |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
        let in_query = rest
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p.to_ascii_lowercase().starts_with("password=")));
        in_userinfo || in_query
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact::url(&self.0))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({:?})", redact::url(&self.0))
    }
}

/// The connection pool. Every default is written on its field.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections open at once. Default 4 with SQLite, 10 with
    /// PostgreSQL.
    pub max_connections: Option<u32>,
    /// Connections kept open even when idle. Default 0.
    pub min_connections: u32,
    /// How long one store call waits for a connection (reconnecting
    /// included) before it fails; a request that needed it is refused with
    /// 503. Default 5s.
    pub acquire_timeout: Duration,
    /// An idle connection above `min_connections` is closed after this
    /// long. Default 10m.
    pub idle_timeout: Duration,
    /// How long opening the store (at `serve`, or a command's start) waits
    /// for the database to accept a connection. Default 10s.
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: None,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// `max_connections`, or the backend's default.
    pub fn max_connections_for(&self, location: &StoreLocation) -> u32 {
        self.max_connections.unwrap_or(if location.is_postgres() { 10 } else { 4 })
    }

    /// The first problem with these settings: the key under `store` and
    /// what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == Some(0) {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if let Some(max) = self.max_connections
            && self.min_connections > max
        {
            return Err(("min_connections", "must not be more than max_connections".into()));
        }
        for (key, d) in [("acquire_timeout", self.acquire_timeout), ("connect_timeout", self.connect_timeout)] {
            if d < Duration::from_millis(10) {
                return Err((key, "must be at least 10ms".into()));
            }
        }
        Ok(())
    }
}

/// What a `store` URL means. The text is never quoted in an error: it may
/// hold a password.
pub fn parse_location(text: &str) -> Result<StoreLocation, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the store URL is empty".into());
    }
    if text.chars().any(|c| c.is_control() || c == ' ') {
        return Err("the store URL must not contain spaces or control characters".into());
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return Ok(StoreLocation::Postgres(PostgresUrl(text.to_string())));
    }
    if let Some(rest) = lower.strip_prefix("sqlite:").map(|_| &text["sqlite:".len()..]) {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err("an sqlite: URL needs a file path, e.g. sqlite:data/bastion.db".into());
        }
        if path.contains('?') || path.contains('#') {
            return Err("an sqlite: URL takes a file path only, without options".into());
        }
        if path == ":memory:" {
            return Err("an in-memory SQLite store would lose every key at exit: name a file".into());
        }
        return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
    }
    Err("unknown store URL scheme: use postgres://, postgresql:// or sqlite:".into())
}

/// The mapping form, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreMapping {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    min_connections: Option<u32>,
    #[serde(default, deserialize_with = "super::opt_duration")]
    acquire_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::opt_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::opt_duration")]
    connect_timeout: Option<Duration>,
}

impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StoreVisitor;

        impl<'de> Visitor<'de> for StoreVisitor {
            type Value = StoreConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a store URL or a mapping with `url` and pool settings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StoreConfig, E> {
                let location = parse_location(v).map_err(E::custom)?;
                Ok(StoreConfig { location, pool: PoolConfig::default() })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StoreConfig, A::Error> {
                let m = StoreMapping::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let location = match m.url.as_deref() {
                    Some(u) => parse_location(u).map_err(de::Error::custom)?,
                    None => StoreLocation::DataDir,
                };
                let defaults = PoolConfig::default();
                let pool = PoolConfig {
                    max_connections: m.max_connections,
                    min_connections: m.min_connections.unwrap_or(defaults.min_connections),
                    acquire_timeout: m.acquire_timeout.unwrap_or(defaults.acquire_timeout),
                    idle_timeout: m.idle_timeout.unwrap_or(defaults.idle_timeout),
                    connect_timeout: m.connect_timeout.unwrap_or(defaults.connect_timeout),
                };
                Ok(StoreConfig { location, pool })
            }
        }

        d.deserialize_any(StoreVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.yaml"), text)
    }

    fn json(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.json"), text)
    }

    #[test]
    fn absent_is_sqlite_in_the_data_dir() {
        let c = yaml("listen: 127.0.0.1:8080\n").unwrap();
        assert_eq!(c.store, StoreConfig::default());
        assert_eq!(c.store.location, StoreLocation::DataDir);
        assert_eq!(c.store.pool.max_connections_for(&c.store.location), 4);
        assert_eq!(c.store.pool.acquire_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_url_names_the_backend() {
        for url in ["postgres://bastion@db:5432/bastion", "postgresql://bastion@db/bastion", "POSTGRES://h/db"] {
            let c = yaml(&format!("store: {url}\n")).unwrap();
            match &c.store.location {
                StoreLocation::Postgres(u) => assert_eq!(u.expose(), url),
                other => panic!("{url}: {other:?}"),
            }
            assert_eq!(c.store.pool.max_connections_for(&c.store.location), 10);
        }
        let c = yaml("store: sqlite://data/b.db\n").unwrap();
        assert_eq!(c.store.location, StoreLocation::Sqlite("data/b.db".into()));
        let c = yaml("store: sqlite:///var/lib/bastion/b.db\n").unwrap();
        assert_eq!(c.store.location, StoreLocation::Sqlite("/var/lib/bastion/b.db".into()));
        let c = yaml("store: 'sqlite:b.db'\n").unwrap();
        assert_eq!(c.store.location, StoreLocation::Sqlite("b.db".into()));
        let c = json(r#"{"store": "postgres://u@h/d"}"#).unwrap();
        assert!(c.store.location.is_postgres());
    }

    #[test]
    fn the_mapping_sets_the_pool() {
        let c = yaml(
            "store:\n  url: postgres://u@h:5432/d\n  max_connections: 20\n  min_connections: 2\n  \
             acquire_timeout: 1500ms\n  idle_timeout: 5m\n  connect_timeout: 30s\n",
        )
        .unwrap();
        assert!(c.store.location.is_postgres());
        let p = &c.store.pool;
        assert_eq!((p.max_connections, p.min_connections), (Some(20), 2));
        assert_eq!(p.acquire_timeout, Duration::from_millis(1500));
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.connect_timeout, Duration::from_secs(30));
        // Without a URL: SQLite in the data directory, with these settings.
        let c = yaml("store:\n  max_connections: 2\n").unwrap();
        assert_eq!(c.store.location, StoreLocation::DataDir);
        assert_eq!(c.store.pool.max_connections_for(&c.store.location), 2);
        assert_eq!(c.store.pool.acquire_timeout, Duration::from_secs(5), "defaults kept");
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("store: mysql://u:hunter2pw@h/d\n", "store", "unknown store URL scheme"),
            ("store: 'hunter2pw'\n", "store", "unknown store URL scheme"),
            ("store: ''\n", "store", "empty"),
            ("store: 'sqlite:'\n", "store", "file path"),
            ("store: 'sqlite::memory:'\n", "store", "in-memory"),
            ("store: 'sqlite:b.db?mode=rw'\n", "store", "without options"),
            ("store:\n  url: mysql://u:hunter2pw@h/d\n", "store", "unknown store URL scheme"),
            ("store:\n  url: postgres://h/d\n  max_connections: 0\n", "store.max_connections", "at least 1"),
            (
                "store:\n  url: postgres://h/d\n  max_connections: 2\n  min_connections: 3\n",
                "store.min_connections",
                "max_connections",
            ),
            ("store:\n  acquire_timeout: 0s\n", "store.acquire_timeout", "at least"),
            ("store:\n  acquire_timeout: soon\n", "store.acquire_timeout", "a duration"),
            ("store:\n  pool_size: 3\n", "store", "unknown field `pool_size`"),
            ("store: 5\n", "store", "store URL or a mapping"),
        ];
        for (text, key, needle) in cases {
            let err = yaml(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains("hunter2pw"), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_password_is_never_printed() {
        let c = yaml("store: 'postgres://bastion:hunter2pw@db.internal:5432/bastion?sslmode=require'\n").unwrap();
        let StoreLocation::Postgres(url) = &c.store.location else { panic!("{:?}", c.store.location) };
        assert!(url.has_password());
        assert!(url.expose().contains("hunter2pw"), "the driver gets it");
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            c.store.location.to_string(),
            format!("{:?}", c.store),
            format!("{c:?}"),
        ] {
            assert!(!shown.contains("hunter2pw"), "{shown}");
        }
        assert_eq!(c.store.location.to_string(), "postgres://db.internal:5432/bastion?…");

        let with_param = parse_location("postgres://db/bastion?user=b&password=hunter2pw").unwrap();
        let StoreLocation::Postgres(u) = &with_param else { panic!() };
        assert!(u.has_password());
        assert!(!with_param.to_string().contains("hunter2pw"));
        let without = parse_location("postgres://bastion@db/bastion").unwrap();
        let StoreLocation::Postgres(u) = &without else { panic!() };
        assert!(!u.has_password());
        assert_eq!(without.to_string(), "postgres://db/bastion");
    }

    #[test]
    fn errors_never_quote_the_url() {
        for text in [
            "store: 'postgres://u:hunter2pw@h/d x'\n",
            "store: 'ftp://u:hunter2pw@h/d'\n",
            "store:\n  url: 'redis://:hunter2pw@h'\n",
        ] {
            let err = yaml(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2pw") && err.contains("store"), "{err}");
        }
    }
}
