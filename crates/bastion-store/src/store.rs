//! The store: a connection pool (SQLite or PostgreSQL, see [`crate::db`])
//! and the API key queries on it. Creating and revoking a key bumps the
//! [`KEYS`](crate::changes::KEYS) topic of the change feed.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::changes::{BumpChange, KEYS};
use crate::db::{Fields, Pool, on_pool};

macro_rules! key_columns {
    () => {
        "id, user_name, display_prefix, key_hash, created_at, expires_at, revoked_at, last_used_at, use_count, max_uses, description"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The driver's error is in the message, and not given as the source
    // too: a chain of causes would repeat it.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database did not accept a connection when the store was opened.
    #[error("no connection to the database within {within:?}: {cause}")]
    Unreachable { within: std::time::Duration, cause: Box<sqlx::Error> },
    /// The database records a migration this build does not have.
    #[error("the store was migrated by a newer version of bastion (migration {0} is unknown here): upgrade bastion")]
    NewerSchema(i64),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "{path} has mode {mode:o}: it must not be accessible to other users (chmod 600 for files, 700 for directories)"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A value refused on write (the message names it, never a secret).
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Db(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e)
    }
}

/// A key to insert: everything but the plaintext.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub user: String,
    pub display_prefix: String,
    pub hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: Option<i64>,
    pub description: Option<String>,
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub user: String,
    pub display_prefix: String,
    #[serde(skip)]
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub use_count: i64,
    pub max_uses: Option<i64>,
    pub description: Option<String>,
}

/// Whether a key may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
    Exhausted,
}

impl ApiKeyRecord {
    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyState::Expired
        } else if self.max_uses.is_some_and(|m| self.use_count >= m) {
            KeyState::Exhausted
        } else {
            KeyState::Active
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// SQLite: the audit trail's appends, on a connection of their own
    /// (see [`crate::db::appender_options`]); `None`: the pool's.
    pub(crate) appender: Option<Pool>,
}

pub(crate) fn ts(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(|s| DateTime::from_timestamp(s, 0))
}

fn row_to_key(row: &impl Fields) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.text("id")?,
        user: row.text("user_name")?,
        display_prefix: row.text("display_prefix")?,
        hash: row.text("key_hash")?,
        created_at: ts(Some(row.int("created_at")?)).ok_or_else(|| StoreError::Corrupt("created_at".into()))?,
        expires_at: ts(row.opt_int("expires_at")?),
        revoked_at: ts(row.opt_int("revoked_at")?),
        last_used_at: ts(row.opt_int("last_used_at")?),
        use_count: row.int("use_count")?,
        max_uses: row.opt_int("max_uses")?,
        description: row.opt_text("description")?,
    })
}

impl Store {
    /// Whether the store can answer: reads the keys table, so a database
    /// that cannot be read fails here as every key lookup would.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.pool, p => sqlx::query("SELECT 1 FROM api_keys LIMIT 1").fetch_optional(p).await.map(|_| ())?);
        Ok(())
    }

    /// Adds a key (bumps [`KEYS`]).
    pub async fn insert_key(&self, k: &NewApiKey) -> Result<(), StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO api_keys (id, user_name, display_prefix, key_hash, created_at, expires_at, max_uses, description)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&k.id)
            .bind(&k.user)
            .bind(&k.display_prefix)
            .bind(&k.hash)
            .bind(Utc::now().timestamp())
            .bind(k.expires_at.map(|t| t.timestamp()))
            .bind(k.max_uses)
            .bind(&k.description)
            .execute(&mut *tx)
            .await?;
            tx.bump_change(KEYS).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE key_hash = $1"))
                .bind(hash)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(row_to_key).transpose()
        })
    }

    pub async fn find_key_by_id(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1"))
                .bind(id)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(row_to_key).transpose()
        })
    }

    /// Ids of keys revoked at or after `since`, or that expired between
    /// `since` and `now`: what open sessions must be checked against.
    pub async fn keys_ended_between(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT id FROM api_keys WHERE (revoked_at IS NOT NULL AND revoked_at >= $1) \
                 OR (expires_at IS NOT NULL AND expires_at >= $1 AND expires_at <= $2)",
            )
            .bind(since.timestamp())
            .bind(now.timestamp())
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| r.text("id").map_err(StoreError::from)).collect()
        })
    }

    pub async fn list_keys(&self, user: Option<&str>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = match user {
                Some(u) => {
                    sqlx::query(concat!(
                        "SELECT ",
                        key_columns!(),
                        " FROM api_keys WHERE user_name = $1 ORDER BY created_at, id"
                    ))
                    .bind(u)
                    .fetch_all(p)
                    .await?
                }
                None => {
                    sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys ORDER BY created_at, id"))
                        .fetch_all(p)
                        .await?
                }
            };
            rows.iter().map(row_to_key).collect()
        })
    }

    /// Revokes a key by id (bumps [`KEYS`]). Returns false when there is no
    /// such key or it was already revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let revoked = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(Utc::now().timestamp())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if revoked {
                tx.bump_change(KEYS).await?;
            }
            tx.commit().await?;
            Ok(revoked)
        })
    }

    /// Adds `uses` to a key's usage count and stamps its last use (never
    /// moving it back).
    pub async fn record_key_use(&self, id: &str, uses: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        on_pool!(&self.pool, p => sqlx::query(
            "UPDATE api_keys SET use_count = use_count + $1,
                 last_used_at = CASE WHEN COALESCE(last_used_at, 0) > $2 THEN last_used_at ELSE $2 END
             WHERE id = $3",
        )
        .bind(uses)
        .bind(at.timestamp())
        .bind(id)
        .execute(p)
        .await.map(|_| ())?);
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(a) = &self.appender {
            on_pool!(a, p => p.close().await)
        }
        on_pool!(&self.pool, p => p.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    fn key(id: &str, hash: &str) -> NewApiKey {
        NewApiKey {
            id: id.into(),
            user: "alice".into(),
            display_prefix: "bst_abcd".into(),
            hash: hash.into(),
            expires_at: Some(Utc::now() + chrono::Duration::days(30)),
            max_uses: None,
            description: None,
        }
    }

    #[tokio::test]
    async fn insert_find_revoke() {
        on_both(async |s: Store| {
            s.insert_key(&key("k1", "h1")).await.unwrap();
            let k = s.find_key_by_hash("h1").await.unwrap().unwrap();
            assert_eq!(k.user, "alice");
            assert_eq!(k.state(Utc::now()), KeyState::Active);
            assert!(s.find_key_by_hash("nope").await.unwrap().is_none());
            assert!(s.revoke_key("k1").await.unwrap());
            assert!(!s.revoke_key("k1").await.unwrap());
            let k = s.find_key_by_hash("h1").await.unwrap().unwrap();
            assert_eq!(k.state(Utc::now()), KeyState::Revoked);
        })
        .await;
    }

    #[tokio::test]
    async fn usage_and_limits() {
        on_both(async |s: Store| {
            let mut k = key("k2", "h2");
            k.max_uses = Some(3);
            s.insert_key(&k).await.unwrap();
            s.record_key_use("k2", 2, Utc::now()).await.unwrap();
            let r = s.find_key_by_hash("h2").await.unwrap().unwrap();
            assert_eq!(r.use_count, 2);
            assert_eq!(r.state(Utc::now()), KeyState::Active);
            s.record_key_use("k2", 1, Utc::now()).await.unwrap();
            let r = s.find_key_by_hash("h2").await.unwrap().unwrap();
            assert_eq!(r.state(Utc::now()), KeyState::Exhausted);
            assert!(r.last_used_at.is_some());
        })
        .await;
    }

    #[tokio::test]
    async fn ended_keys_are_found_by_time() {
        on_both(async |s: Store| {
            let now = Utc::now();
            s.insert_key(&key("live", "h5")).await.unwrap();
            s.insert_key(&key("revoked", "h6")).await.unwrap();
            let mut expiring = key("expired", "h7");
            expiring.expires_at = Some(now - chrono::Duration::seconds(1));
            s.insert_key(&expiring).await.unwrap();
            s.revoke_key("revoked").await.unwrap();
            let mut ended = s.keys_ended_between(now - chrono::Duration::seconds(5), Utc::now()).await.unwrap();
            ended.sort();
            assert_eq!(ended, vec!["expired".to_string(), "revoked".to_string()]);
            let later = Utc::now() + chrono::Duration::seconds(10);
            assert!(s.keys_ended_between(later, later).await.unwrap().is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn expiry_and_duplicate_hashes() {
        on_both(async |s: Store| {
            let mut k = key("k3", "h3");
            k.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
            s.insert_key(&k).await.unwrap();
            assert_eq!(s.find_key_by_hash("h3").await.unwrap().unwrap().state(Utc::now()), KeyState::Expired);
            assert!(s.insert_key(&key("k4", "h3")).await.is_err());
            assert_eq!(s.list_keys(Some("alice")).await.unwrap().len(), 1);
            assert_eq!(s.list_keys(Some("bob")).await.unwrap().len(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let _s = Store::open_sqlite(&d.path().join("b.db")).await.unwrap();
        let mode = std::fs::metadata(d.path().join("b.db")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
