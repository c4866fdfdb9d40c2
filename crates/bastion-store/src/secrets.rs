//! The secrets vault's table: per-user and per-server secrets, each kept
//! as an opaque sealed blob (a versioned ciphertext made by the vault under
//! a data key, itself wrapped by a master key) and the id of that master
//! key. The store never sees a plaintext and cannot open a blob; it keeps
//! rows, checks names, and offers what rotating the master key needs:
//! [`Store::secrets_not_wrapped_by`] and the compare-and-swap
//! [`Store::rewrap_secret`], which never overwrites a value set meanwhile.
//! Every change bumps the [`SECRETS`](crate::changes::SECRETS) topic of the
//! change feed.

use chrono::{DateTime, Utc};

use crate::changes::{BumpChange, SECRETS};
use crate::db::{Fields, on_pool};
use crate::store::{Store, StoreError, ts};

/// The longest secret name, in bytes.
pub const MAX_SECRET_NAME_BYTES: usize = 128;
/// The longest owner name, in bytes.
pub const MAX_OWNER_BYTES: usize = 256;
/// The longest master key id, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 128;
/// The largest sealed blob, in bytes.
pub const MAX_SEALED_BYTES: usize = 1024 * 1024;

/// The rule [`is_valid_secret_name`] checks, in words.
pub const SECRET_NAME_RULE: &str = "invalid secret name: an environment variable name \
     (letters, digits and _, not starting with a digit), at most 128 characters";

/// Whether a secret name is acceptable: the shape of an environment
/// variable name, `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_SECRET_NAME_BYTES`].
pub fn is_valid_secret_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_SECRET_NAME_BYTES
}

/// Whose secret it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    User,
    Server,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "user",
            OwnerKind::Server => "server",
        }
    }
}

impl std::str::FromStr for OwnerKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<OwnerKind, StoreError> {
        match s {
            "user" => Ok(OwnerKind::User),
            "server" => Ok(OwnerKind::Server),
            _ => Err(StoreError::Invalid("the owner kind is `user` or `server`".into())),
        }
    }
}

impl std::fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored secret, blob included. `Debug` shows the blob's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub owner_kind: OwnerKind,
    pub owner: String,
    pub name: String,
    /// The master key that wrapped the blob's data key.
    pub key_id: String,
    /// The opaque sealed value.
    pub sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// When the value was last put (re-wrapping leaves it).
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("owner_kind", &self.owner_kind)
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .field("sealed_bytes", &self.sealed.len())
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A stored secret without its blob: what listings show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub owner_kind: OwnerKind,
    pub owner: String,
    pub name: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn check_owner(owner: &str) -> Result<(), StoreError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "invalid secret owner: 1 to {MAX_OWNER_BYTES} bytes, no control characters"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if is_valid_secret_name(name) { Ok(()) } else { Err(StoreError::Invalid(SECRET_NAME_RULE.into())) }
}

fn check_key_id(key_id: &str) -> Result<(), StoreError> {
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_BYTES || !key_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StoreError::Invalid(format!(
            "invalid master key id: 1 to {MAX_KEY_ID_BYTES} visible ASCII characters"
        )));
    }
    Ok(())
}

fn check_sealed(sealed: &[u8]) -> Result<(), StoreError> {
    if sealed.is_empty() || sealed.len() > MAX_SEALED_BYTES {
        return Err(StoreError::Invalid(format!("a sealed secret has 1 to {MAX_SEALED_BYTES} bytes")));
    }
    Ok(())
}

fn check_ref(owner: &str, name: &str) -> Result<(), StoreError> {
    check_owner(owner)?;
    check_name(name)
}

fn row_kind(row: &impl Fields) -> Result<OwnerKind, StoreError> {
    row.text("owner_kind")?.parse().map_err(|_| StoreError::Corrupt("secret owner_kind".into()))
}

fn time(row: &impl Fields, col: &str) -> Result<DateTime<Utc>, StoreError> {
    ts(Some(row.int(col)?)).ok_or_else(|| StoreError::Corrupt(format!("secret {col}")))
}

fn row_to_record(row: &impl Fields) -> Result<SecretRecord, StoreError> {
    Ok(SecretRecord {
        owner_kind: row_kind(row)?,
        owner: row.text("owner")?,
        name: row.text("name")?,
        key_id: row.text("key_id")?,
        sealed: row.bytes("sealed")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn row_to_info(row: &impl Fields) -> Result<SecretInfo, StoreError> {
    Ok(SecretInfo {
        owner_kind: row_kind(row)?,
        owner: row.text("owner")?,
        name: row.text("name")?,
        key_id: row.text("key_id")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

impl Store {
    /// Stores a sealed secret, replacing the value of an existing one of
    /// the same owner and name (its creation time is kept).
    pub async fn put_secret(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        check_ref(owner, name)?;
        check_key_id(key_id)?;
        check_sealed(sealed)?;
        let now = Utc::now().timestamp();
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO secrets (owner_kind, owner, name, key_id, sealed, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (owner_kind, owner, name) DO UPDATE SET key_id = excluded.key_id,
                     sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(kind.as_str())
            .bind(owner)
            .bind(name)
            .bind(key_id)
            .bind(sealed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.bump_change(SECRETS).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One secret, blob included.
    pub async fn get_secret(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
    ) -> Result<Option<SecretRecord>, StoreError> {
        check_ref(owner, name)?;
        on_pool!(&self.pool, p => {
            let row = sqlx::query(
                "SELECT owner_kind, owner, name, key_id, sealed, created_at, updated_at FROM secrets
                 WHERE owner_kind = $1 AND owner = $2 AND name = $3",
            )
            .bind(kind.as_str())
            .bind(owner)
            .bind(name)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(row_to_record).transpose()
        })
    }

    /// The secrets of one kind of owner and/or one owner (`None`: any),
    /// without their blobs, by owner kind, owner and name.
    pub async fn list_secrets(
        &self,
        kind: Option<OwnerKind>,
        owner: Option<&str>,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT owner_kind, owner, name, key_id, created_at, updated_at FROM secrets
                 WHERE ($1 IS NULL OR owner_kind = $1) AND ($2 IS NULL OR owner = $2)
                 ORDER BY owner_kind, owner, name",
            )
            .bind(kind.map(OwnerKind::as_str))
            .bind(owner)
            .fetch_all(p)
            .await?;
            rows.iter().map(row_to_info).collect()
        })
    }

    /// Removes a secret. Returns whether it existed.
    pub async fn delete_secret(&self, kind: OwnerKind, owner: &str, name: &str) -> Result<bool, StoreError> {
        check_ref(owner, name)?;
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let deleted = sqlx::query("DELETE FROM secrets WHERE owner_kind = $1 AND owner = $2 AND name = $3")
                .bind(kind.as_str())
                .bind(owner)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if deleted {
                tx.bump_change(SECRETS).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// The secrets whose data key is wrapped by another master key than
    /// `key_id`, blobs included: what re-wrapping under `key_id` has to do.
    pub async fn secrets_not_wrapped_by(&self, key_id: &str) -> Result<Vec<SecretRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT owner_kind, owner, name, key_id, sealed, created_at, updated_at FROM secrets
                 WHERE key_id <> $1 ORDER BY owner_kind, owner, name",
            )
            .bind(key_id)
            .fetch_all(p)
            .await?;
            rows.iter().map(row_to_record).collect()
        })
    }

    /// Replaces the blob and key id of the secret `read` was read from,
    /// only if the row still holds that key id and blob: a value put
    /// meanwhile (or a removal) wins, and this returns false. The update
    /// time is left as it is: the value did not change.
    pub async fn rewrap_secret(&self, read: &SecretRecord, key_id: &str, sealed: &[u8]) -> Result<bool, StoreError> {
        check_ref(&read.owner, &read.name)?;
        check_key_id(key_id)?;
        check_sealed(sealed)?;
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let rewrapped = sqlx::query(
                "UPDATE secrets SET key_id = $1, sealed = $2
                 WHERE owner_kind = $3 AND owner = $4 AND name = $5 AND key_id = $6 AND sealed = $7",
            )
            .bind(key_id)
            .bind(sealed)
            .bind(read.owner_kind.as_str())
            .bind(&read.owner)
            .bind(&read.name)
            .bind(&read.key_id)
            .bind(&read.sealed)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if rewrapped {
                tx.bump_change(SECRETS).await?;
            }
            tx.commit().await?;
            Ok(rewrapped)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    #[test]
    fn names_are_environment_variable_names() {
        for ok in ["A", "_", "GITHUB_TOKEN", "_x9", "a_b_C"] {
            assert!(is_valid_secret_name(ok), "{ok}");
        }
        assert!(is_valid_secret_name(&"A".repeat(MAX_SECRET_NAME_BYTES)));
        for bad in ["", "9A", "A-B", "A B", "A.B", "É", "A\n", "A=B"] {
            assert!(!is_valid_secret_name(bad), "{bad:?}");
        }
        assert!(!is_valid_secret_name(&"A".repeat(MAX_SECRET_NAME_BYTES + 1)));
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        on_both(async |s: Store| {
            assert!(s.get_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap().is_none());
            s.put_secret(OwnerKind::User, "alice", "TOKEN", "k1", b"sealed-1").await.unwrap();
            s.put_secret(OwnerKind::User, "alice", "OTHER", "k1", b"sealed-2").await.unwrap();
            s.put_secret(OwnerKind::User, "bob", "TOKEN", "k1", b"sealed-3").await.unwrap();
            s.put_secret(OwnerKind::Server, "github", "TOKEN", "k2", &[0, 255, 0, 1]).await.unwrap();

            let r = s.get_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap().unwrap();
            assert_eq!((r.key_id.as_str(), r.sealed.as_slice()), ("k1", &b"sealed-1"[..]));
            let bin = s.get_secret(OwnerKind::Server, "github", "TOKEN").await.unwrap().unwrap();
            assert_eq!(bin.sealed, vec![0, 255, 0, 1], "bytes kept exactly");
            assert!(!format!("{bin:?}").contains("255"), "Debug shows no blob");
            // Kinds are apart: a server named like a user is another owner.
            assert!(s.get_secret(OwnerKind::Server, "alice", "TOKEN").await.unwrap().is_none());

            // Put again: the value changes, the creation time stays.
            s.put_secret(OwnerKind::User, "alice", "TOKEN", "k2", b"sealed-1b").await.unwrap();
            let r2 = s.get_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap().unwrap();
            assert_eq!((r2.key_id.as_str(), r2.sealed.as_slice()), ("k2", &b"sealed-1b"[..]));
            assert_eq!(r2.created_at, r.created_at);
            assert!(r2.updated_at >= r.updated_at);

            let names = |v: Vec<SecretInfo>| -> Vec<String> {
                v.into_iter().map(|i| format!("{}/{}/{}", i.owner_kind, i.owner, i.name)).collect()
            };
            assert_eq!(
                names(s.list_secrets(None, None).await.unwrap()),
                ["server/github/TOKEN", "user/alice/OTHER", "user/alice/TOKEN", "user/bob/TOKEN"]
            );
            assert_eq!(
                names(s.list_secrets(Some(OwnerKind::User), Some("alice")).await.unwrap()),
                ["user/alice/OTHER", "user/alice/TOKEN"]
            );
            assert_eq!(names(s.list_secrets(Some(OwnerKind::Server), None).await.unwrap()), ["server/github/TOKEN"]);
            assert_eq!(names(s.list_secrets(None, Some("bob")).await.unwrap()), ["user/bob/TOKEN"]);
            assert!(s.list_secrets(Some(OwnerKind::Server), Some("alice")).await.unwrap().is_empty());
            let listed = serde_json::to_string(&s.list_secrets(None, None).await.unwrap()).unwrap();
            assert!(!listed.contains("sealed"), "listings carry no blob: {listed}");

            assert!(s.delete_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap());
            assert!(!s.delete_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap());
            assert!(s.get_secret(OwnerKind::User, "alice", "TOKEN").await.unwrap().is_none());
            assert_eq!(s.list_secrets(None, None).await.unwrap().len(), 3);
        })
        .await;
    }

    #[tokio::test]
    async fn writes_are_checked() {
        on_both(async |s: Store| {
            let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Invalid(_)));
            assert!(invalid(s.put_secret(OwnerKind::User, "alice", "9BAD", "k1", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "alice", "BAD-NAME", "k1", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "", "OK", "k1", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "al\nice", "OK", "k1", b"x").await));
            let long_owner = "a".repeat(MAX_OWNER_BYTES + 1);
            assert!(invalid(s.put_secret(OwnerKind::User, &long_owner, "OK", "k1", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "alice", "OK", "", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "alice", "OK", "k 1", b"x").await));
            assert!(invalid(s.put_secret(OwnerKind::User, "alice", "OK", "k1", b"").await));
            let e = s.put_secret(OwnerKind::User, "alice", "9BAD", "k1", b"x").await.unwrap_err();
            assert_eq!(e.to_string(), SECRET_NAME_RULE);
            assert!(matches!(s.get_secret(OwnerKind::User, "alice", "A-B").await, Err(StoreError::Invalid(_))));
            assert!(matches!(s.delete_secret(OwnerKind::User, "", "A").await, Err(StoreError::Invalid(_))));
            assert!(s.list_secrets(None, None).await.unwrap().is_empty(), "nothing was written");
            assert!("admin".parse::<OwnerKind>().is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn rewrapping_never_overwrites_a_concurrent_put() {
        on_both(async |s: Store| {
            s.put_secret(OwnerKind::User, "alice", "A", "old", b"a-old").await.unwrap();
            s.put_secret(OwnerKind::User, "alice", "B", "old", b"b-old").await.unwrap();
            s.put_secret(OwnerKind::Server, "gh", "C", "new", b"c-new").await.unwrap();

            let todo = s.secrets_not_wrapped_by("new").await.unwrap();
            let names: Vec<&str> = todo.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["A", "B"]);
            assert_eq!(todo[0].sealed, b"a-old", "the blobs come along for re-wrapping");

            // A is re-wrapped undisturbed.
            assert!(s.rewrap_secret(&todo[0], "new", b"a-new").await.unwrap());
            let a = s.get_secret(OwnerKind::User, "alice", "A").await.unwrap().unwrap();
            assert_eq!((a.key_id.as_str(), a.sealed.as_slice()), ("new", &b"a-new"[..]));
            assert_eq!(a.updated_at, todo[0].updated_at, "re-wrapping is no new value");
            // Twice from the same read: the row moved on, nothing changes.
            assert!(!s.rewrap_secret(&todo[0], "new", b"a-other").await.unwrap());
            assert_eq!(s.get_secret(OwnerKind::User, "alice", "A").await.unwrap().unwrap().sealed, b"a-new");

            // B is set meanwhile (under the old key, as a writer that has not
            // seen the rotation would): the rotation's write is refused.
            s.put_secret(OwnerKind::User, "alice", "B", "old", b"b-set-meanwhile").await.unwrap();
            assert!(!s.rewrap_secret(&todo[1], "new", b"b-new").await.unwrap());
            let b = s.get_secret(OwnerKind::User, "alice", "B").await.unwrap().unwrap();
            assert_eq!((b.key_id.as_str(), b.sealed.as_slice()), ("old", &b"b-set-meanwhile"[..]));
            // Read again, it goes through.
            let again = s.secrets_not_wrapped_by("new").await.unwrap();
            assert_eq!(again.len(), 1);
            assert!(s.rewrap_secret(&again[0], "new", b"b-new").await.unwrap());
            assert!(s.secrets_not_wrapped_by("new").await.unwrap().is_empty());

            // A secret removed meanwhile is not brought back.
            let c = s.get_secret(OwnerKind::Server, "gh", "C").await.unwrap().unwrap();
            assert!(s.delete_secret(OwnerKind::Server, "gh", "C").await.unwrap());
            assert!(!s.rewrap_secret(&c, "newer", b"c-newer").await.unwrap());
            assert!(s.get_secret(OwnerKind::Server, "gh", "C").await.unwrap().is_none());
        })
        .await;
    }
}
