//! Users kept in the store (`bastion users`): a role and the groups whose
//! servers the user may use, by name. A user named in the config file's
//! `users` wins over the store's entry of the same name; that rule is the
//! caller's (the store holds its own entries only).
//!
//! Removals leave a tombstone, so [`Store::users_changed_since`] reports
//! added, changed and removed users alike: the gateway ends what a user
//! who lost access has open.
//!
//! Every change bumps the [`USERS`](crate::changes::USERS) topic of the
//! change feed.

use bastion_core::access::Role;
use bastion_core::config::{USER_NAME_RULE, is_valid_user_name};
use chrono::{DateTime, Utc};

use crate::changes::{BumpChange, USERS};
use crate::db::{Fields, on_pool};
use crate::store::{Store, StoreError, ts};

/// How long a removal stays visible to [`Store::users_changed_since`]
/// (followers look back seconds, not days).
const TOMBSTONE_DAYS: i64 = 30;

/// A user to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if is_valid_user_name(name) { Ok(()) } else { Err(StoreError::Invalid(USER_NAME_RULE.into())) }
}

fn groups_json(groups: &[String]) -> Result<String, StoreError> {
    if let Some(g) = groups.iter().find(|g| g.is_empty()) {
        return Err(StoreError::Invalid(format!("invalid group name {g:?}")));
    }
    serde_json::to_string(groups).map_err(|e| StoreError::Invalid(format!("groups: {e}")))
}

fn row_to_user(row: &impl Fields) -> Result<UserRecord, StoreError> {
    let name = row.text("name")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("user {name:?}: {what}"));
    let role = row.text("role")?;
    let groups = row.text("groups")?;
    Ok(UserRecord {
        role: role.parse().map_err(|_| corrupt("role"))?,
        groups: serde_json::from_str(&groups).map_err(|_| corrupt("groups"))?,
        created_at: ts(Some(row.int("created_at")?)).ok_or_else(|| corrupt("created_at"))?,
        updated_at: ts(Some(row.int("updated_at")?)).ok_or_else(|| corrupt("updated_at"))?,
        name,
    })
}

macro_rules! user_columns {
    () => {
        "name, role, groups, created_at, updated_at"
    };
}

impl Store {
    /// The user of that name, if the store has one.
    pub async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE name = $1"))
                .bind(name)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(row_to_user).transpose()
        })
    }

    /// Every stored user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users ORDER BY name")).fetch_all(p).await?;
            rows.iter().map(row_to_user).collect()
        })
    }

    /// Adds a user. Returns false (and changes nothing) when the name is
    /// taken.
    pub async fn insert_user(&self, u: &NewUser) -> Result<bool, StoreError> {
        check_name(&u.name)?;
        let groups = groups_json(&u.groups)?;
        let now = Utc::now().timestamp();
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO users (name, role, groups, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&u.name)
            .bind(u.role.as_str())
            .bind(&groups)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                sqlx::query("DELETE FROM user_tombstones WHERE name = $1").bind(&u.name).execute(&mut *tx).await?;
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Adds a user, or replaces the role and groups of an existing one.
    pub async fn upsert_user(&self, u: &NewUser) -> Result<(), StoreError> {
        check_name(&u.name)?;
        let groups = groups_json(&u.groups)?;
        let now = Utc::now().timestamp();
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO users (name, role, groups, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role, groups = excluded.groups,
                                                  updated_at = excluded.updated_at",
            )
            .bind(&u.name)
            .bind(u.role.as_str())
            .bind(&groups)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM user_tombstones WHERE name = $1").bind(&u.name).execute(&mut *tx).await?;
            tx.bump_change(USERS).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Changes a user's role and/or groups (`None` keeps what is stored).
    /// Returns the user as changed, or `None` when there is no such user.
    pub async fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        groups: Option<Vec<String>>,
    ) -> Result<Option<UserRecord>, StoreError> {
        let groups = groups.as_deref().map(groups_json).transpose()?;
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query(concat!(
                "UPDATE users SET role = COALESCE($1, role), groups = COALESCE($2, groups), updated_at = $3 \
                 WHERE name = $4 RETURNING ",
                user_columns!()
            ))
            .bind(role.map(Role::as_str))
            .bind(&groups)
            .bind(Utc::now().timestamp())
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            let user = row.as_ref().map(row_to_user).transpose()?;
            if user.is_some() {
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(user)
        })
    }

    /// Removes a user (its API keys stay). Returns false when there is no
    /// such user.
    pub async fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp();
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let deleted =
                sqlx::query("DELETE FROM users WHERE name = $1").bind(name).execute(&mut *tx).await?.rows_affected() == 1;
            if deleted {
                sqlx::query(
                    "INSERT INTO user_tombstones (name, deleted_at) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET deleted_at = excluded.deleted_at",
                )
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM user_tombstones WHERE deleted_at < $1")
                    .bind(now - TOMBSTONE_DAYS * 86_400)
                    .execute(&mut *tx)
                    .await?;
                tx.bump_change(USERS).await?;
            }
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// Names of the users added, changed or removed at or after `since`
    /// (one-second resolution: the whole second of `since` counts), each
    /// once, sorted.
    pub async fn users_changed_since(&self, since: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT name FROM users WHERE updated_at >= $1
                 UNION SELECT name FROM user_tombstones WHERE deleted_at >= $1
                 ORDER BY name",
            )
            .bind(since.timestamp())
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| r.text("name").map_err(StoreError::from)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    fn user(name: &str, role: Role, groups: &[&str]) -> NewUser {
        NewUser { name: name.into(), role, groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[tokio::test]
    async fn users_crud() {
        on_both(async |s: Store| {
            assert!(s.get_user("alice").await.unwrap().is_none());
            assert!(s.insert_user(&user("alice", Role::User, &["dev", "ops"])).await.unwrap());
            assert!(!s.insert_user(&user("alice", Role::Admin, &[])).await.unwrap(), "the name is taken");
            let a = s.get_user("alice").await.unwrap().unwrap();
            assert_eq!((a.role, a.groups.clone()), (Role::User, vec!["dev".to_string(), "ops".to_string()]));
            assert!(a.created_at <= a.updated_at);

            let a = s.update_user("alice", Some(Role::Viewer), None).await.unwrap().unwrap();
            assert_eq!((a.role, a.groups.len()), (Role::Viewer, 2), "groups kept");
            let a = s.update_user("alice", None, Some(vec![])).await.unwrap().unwrap();
            assert_eq!((a.role, a.groups.len()), (Role::Viewer, 0), "role kept");
            assert!(s.update_user("nobody", Some(Role::Admin), None).await.unwrap().is_none());

            s.upsert_user(&user("bob", Role::Manager, &["dev"])).await.unwrap();
            s.upsert_user(&user("bob", Role::Admin, &[])).await.unwrap();
            let b = s.get_user("bob").await.unwrap().unwrap();
            assert_eq!((b.role, b.groups.len()), (Role::Admin, 0));

            let names: Vec<String> = s.list_users().await.unwrap().into_iter().map(|u| u.name).collect();
            assert_eq!(names, ["alice", "bob"]);

            assert!(s.delete_user("alice").await.unwrap());
            assert!(!s.delete_user("alice").await.unwrap());
            assert!(s.get_user("alice").await.unwrap().is_none());
            assert_eq!(s.list_users().await.unwrap().len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn names_and_groups_are_checked_on_write() {
        on_both(async |s: Store| {
            for bad in ["", " alice", "al\nice"] {
                assert!(matches!(s.insert_user(&user(bad, Role::User, &[])).await, Err(StoreError::Invalid(_))));
            }
            assert!(matches!(s.insert_user(&user("carol", Role::User, &[""])).await, Err(StoreError::Invalid(_))));
            // Names are exact: no case folding.
            assert!(s.insert_user(&user("Carol", Role::User, &[])).await.unwrap());
            assert!(s.get_user("carol").await.unwrap().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn changes_since_include_removals() {
        on_both(async |s: Store| {
            let t0 = Utc::now();
            s.insert_user(&user("alice", Role::User, &[])).await.unwrap();
            s.insert_user(&user("bob", Role::User, &[])).await.unwrap();
            assert_eq!(s.users_changed_since(t0).await.unwrap(), ["alice", "bob"]);
            let later = Utc::now() + chrono::Duration::seconds(5);
            assert!(s.users_changed_since(later).await.unwrap().is_empty());

            // Removed and changed users are seen; an unchanged one is not.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let t2 = Utc::now();
            assert!(s.users_changed_since(t2).await.unwrap().is_empty());
            assert!(s.delete_user("alice").await.unwrap());
            s.update_user("bob", Some(Role::Viewer), None).await.unwrap();
            s.insert_user(&user("carol", Role::User, &[])).await.unwrap();
            assert_eq!(s.users_changed_since(t2).await.unwrap(), ["alice", "bob", "carol"]);

            // A name removed and added again is reported once.
            s.delete_user("carol").await.unwrap();
            s.insert_user(&user("carol", Role::Admin, &[])).await.unwrap();
            assert_eq!(s.users_changed_since(t2).await.unwrap(), ["alice", "bob", "carol"]);
        })
        .await;
    }
}
