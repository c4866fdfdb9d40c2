//! Call quotas and lockdowns, shared by the gateways of one store.
//!
//! - Quota usage: calls counted per user, period (`day`, `month`) and
//!   window. A window is named by its start (`2026-12-06`, `2026-12`), so
//!   that the names of one period sort by date and past windows can be
//!   pruned by comparison. Counting is one statement, atomic on both
//!   backends: gateways adding at once never lose a call.
//! - Lockdowns (`bastion lockdown`): calls refused on every server (scope
//!   [`ALL_SERVERS`]) or on one server, until lifted. Setting and lifting
//!   one bumps the [`LOCKDOWN`](crate::changes::LOCKDOWN) topic, so that
//!   every gateway follows within the change feed's delay.

use chrono::{DateTime, Utc};

use crate::changes::{BumpChange, LOCKDOWN};
use crate::db::{Fields, on_pool};
use crate::store::{Store, StoreError};

/// The scope of a lockdown of every server.
pub const ALL_SERVERS: &str = "*";
/// The longest period or window name, in bytes.
const MAX_WINDOW_BYTES: usize = 32;
/// The longest user or scope name, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// The longest lockdown reason or author, in bytes.
const MAX_NOTE_BYTES: usize = 1024;

/// A lockdown in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lockdown {
    /// [`ALL_SERVERS`] or a server name.
    pub scope: String,
    pub reason: Option<String>,
    /// Who set it.
    pub set_by: Option<String>,
    pub since: DateTime<Utc>,
}

impl Lockdown {
    /// Whether it holds for calls to `server`.
    pub fn covers(&self, server: &str) -> bool {
        self.scope == ALL_SERVERS || self.scope == server
    }
}

fn row_to_lockdown(row: &impl Fields) -> Result<Lockdown, StoreError> {
    let scope = row.text("scope")?;
    let since = DateTime::from_timestamp_micros(row.int("since")?)
        .ok_or_else(|| StoreError::Corrupt(format!("lockdown {scope:?}: since")))?;
    Ok(Lockdown { reason: row.opt_text("reason")?, set_by: row.opt_text("set_by")?, since, scope })
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!("invalid {what}: 1 to {max} bytes, no control characters")));
    }
    Ok(())
}

fn check_usage_ref(user: &str, period: &str, window: &str) -> Result<(), StoreError> {
    check_text("quota user", user, MAX_NAME_BYTES)?;
    check_text("quota period", period, MAX_WINDOW_BYTES)?;
    check_text("quota window", window, MAX_WINDOW_BYTES)
}

fn count(calls: i64) -> Result<u64, StoreError> {
    u64::try_from(calls).map_err(|_| StoreError::Corrupt(format!("quota usage {calls}")))
}

impl Store {
    /// Adds `delta` calls to a user's usage in a window and returns the new
    /// total, in one statement (0 reads the total, creating the row).
    pub async fn add_quota_usage(&self, user: &str, period: &str, window: &str, delta: u64) -> Result<u64, StoreError> {
        check_usage_ref(user, period, window)?;
        let delta = i64::try_from(delta).map_err(|_| StoreError::Invalid(format!("quota delta {delta}")))?;
        let calls = on_pool!(&self.pool, p => sqlx::query(
            r#"INSERT INTO quota_usage (user_name, period, "window", calls) VALUES ($1, $2, $3, $4)
               ON CONFLICT (user_name, period, "window") DO UPDATE SET calls = quota_usage.calls + excluded.calls
               RETURNING calls"#,
        )
        .bind(user)
        .bind(period)
        .bind(window)
        .bind(delta)
        .fetch_one(p)
        .await?
        .int("calls")?);
        count(calls)
    }

    /// A user's usage in a window (0 when nothing was counted).
    pub async fn quota_usage(&self, user: &str, period: &str, window: &str) -> Result<u64, StoreError> {
        check_usage_ref(user, period, window)?;
        let calls = on_pool!(&self.pool, p => {
            let row = sqlx::query(
                r#"SELECT calls FROM quota_usage WHERE user_name = $1 AND period = $2 AND "window" = $3"#,
            )
            .bind(user)
            .bind(period)
            .bind(window)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(|r| r.int("calls")).transpose()?
        });
        calls.map_or(Ok(0), count)
    }

    /// Removes the usage of a period's windows before `keep_from_window`
    /// (by name, which sorts by date). Returns how many rows went.
    pub async fn prune_quota_usage(&self, period: &str, keep_from_window: &str) -> Result<u64, StoreError> {
        check_text("quota period", period, MAX_WINDOW_BYTES)?;
        check_text("quota window", keep_from_window, MAX_WINDOW_BYTES)?;
        let n = on_pool!(&self.pool, p => sqlx::query(r#"DELETE FROM quota_usage WHERE period = $1 AND "window" < $2"#)
            .bind(period)
            .bind(keep_from_window)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n)
    }

    /// Sets a lockdown on `scope` ([`ALL_SERVERS`] or a server name), or
    /// replaces the reason, author and time of the one it has.
    pub async fn set_lockdown(
        &self,
        scope: &str,
        reason: Option<&str>,
        set_by: Option<&str>,
    ) -> Result<(), StoreError> {
        check_scope(scope)?;
        if let Some(r) = reason {
            check_text("lockdown reason", r, MAX_NOTE_BYTES)?;
        }
        if let Some(b) = set_by {
            check_text("lockdown author", b, MAX_NOTE_BYTES)?;
        }
        let since = Utc::now().timestamp_micros();
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO lockdowns (scope, reason, set_by, since) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, set_by = excluded.set_by,
                                                   since = excluded.since",
            )
            .bind(scope)
            .bind(reason)
            .bind(set_by)
            .bind(since)
            .execute(&mut *tx)
            .await?;
            tx.bump_change(LOCKDOWN).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Lifts the lockdown on `scope`. Returns false when it had none.
    pub async fn clear_lockdown(&self, scope: &str) -> Result<bool, StoreError> {
        check_scope(scope)?;
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let removed = sqlx::query("DELETE FROM lockdowns WHERE scope = $1")
                .bind(scope)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if removed {
                tx.bump_change(LOCKDOWN).await?;
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Every lockdown in force, by scope ([`ALL_SERVERS`] first).
    pub async fn lockdowns(&self) -> Result<Vec<Lockdown>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query("SELECT scope, reason, set_by, since FROM lockdowns ORDER BY scope")
                .fetch_all(p)
                .await?;
            rows.iter().map(row_to_lockdown).collect()
        })
    }
}

fn check_scope(scope: &str) -> Result<(), StoreError> {
    if scope == ALL_SERVERS || bastion_core::naming::is_valid_server_name(scope) {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "invalid lockdown scope {scope:?}: {ALL_SERVERS:?} or a server name ({})",
        bastion_core::naming::NAME_RULE
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    #[tokio::test]
    async fn usage_is_counted_per_window() {
        on_both(async |s: Store| {
            assert_eq!(s.quota_usage("alice", "day", "2026-12-06").await.unwrap(), 0);
            assert_eq!(s.add_quota_usage("alice", "day", "2026-12-06", 0).await.unwrap(), 0);
            assert_eq!(s.add_quota_usage("alice", "day", "2026-12-06", 3).await.unwrap(), 3);
            assert_eq!(s.add_quota_usage("alice", "day", "2026-12-06", 2).await.unwrap(), 5);
            assert_eq!(s.add_quota_usage("alice", "month", "2026-12", 5).await.unwrap(), 5);
            assert_eq!(s.add_quota_usage("bob", "day", "2026-12-06", 1).await.unwrap(), 1);
            assert_eq!(s.quota_usage("alice", "day", "2026-12-06").await.unwrap(), 5);
            assert_eq!(s.quota_usage("alice", "day", "2026-12-07").await.unwrap(), 0);
            assert!(matches!(s.add_quota_usage("alice", "day", "", 1).await, Err(StoreError::Invalid(_))));
            assert!(matches!(s.add_quota_usage("alice", "day", "x", u64::MAX).await, Err(StoreError::Invalid(_))));
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_additions_are_all_counted() {
        on_both(async |s: Store| {
            let mut adds = tokio::task::JoinSet::new();
            for _ in 0..20 {
                let s = s.clone();
                adds.spawn(async move { s.add_quota_usage("alice", "day", "2026-12-06", 1).await.unwrap() });
            }
            let mut totals = adds.join_all().await;
            totals.sort_unstable();
            assert_eq!(totals, (1..=20).collect::<Vec<u64>>(), "each addition saw its own total");
            assert_eq!(s.quota_usage("alice", "day", "2026-12-06").await.unwrap(), 20);
        })
        .await;
    }

    #[tokio::test]
    async fn past_windows_are_pruned() {
        on_both(async |s: Store| {
            for w in ["2026-11-30", "2026-12-01", "2026-12-06"] {
                s.add_quota_usage("alice", "day", w, 1).await.unwrap();
                s.add_quota_usage("bob", "day", w, 1).await.unwrap();
            }
            s.add_quota_usage("alice", "month", "2026-11", 1).await.unwrap();
            assert_eq!(s.prune_quota_usage("day", "2026-12-06").await.unwrap(), 4);
            assert_eq!(s.quota_usage("alice", "day", "2026-12-01").await.unwrap(), 0);
            assert_eq!(s.quota_usage("bob", "day", "2026-12-06").await.unwrap(), 1);
            assert_eq!(s.quota_usage("alice", "month", "2026-11").await.unwrap(), 1, "other periods are kept");
            assert_eq!(s.prune_quota_usage("day", "2026-12-06").await.unwrap(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn lockdowns_are_set_replaced_and_lifted() {
        on_both(async |s: Store| {
            assert!(s.lockdowns().await.unwrap().is_empty());
            let before = Utc::now() - chrono::Duration::seconds(1);
            s.set_lockdown("files", None, None).await.unwrap();
            s.set_lockdown(ALL_SERVERS, Some("incident 42"), Some("alice")).await.unwrap();
            let all = s.lockdowns().await.unwrap();
            assert_eq!(all.iter().map(|l| l.scope.as_str()).collect::<Vec<_>>(), ["*", "files"]);
            assert_eq!((all[0].reason.as_deref(), all[0].set_by.as_deref()), (Some("incident 42"), Some("alice")));
            assert!(all[0].since > before && all[0].since <= Utc::now());
            assert!(all[0].covers("anything") && all[1].covers("files") && !all[1].covers("search"));

            s.set_lockdown("files", Some("leak"), Some("bob")).await.unwrap();
            let files = s.lockdowns().await.unwrap().into_iter().find(|l| l.scope == "files").unwrap();
            assert_eq!((files.reason.as_deref(), files.set_by.as_deref()), (Some("leak"), Some("bob")));

            assert!(s.clear_lockdown(ALL_SERVERS).await.unwrap());
            assert!(!s.clear_lockdown(ALL_SERVERS).await.unwrap());
            assert_eq!(s.lockdowns().await.unwrap().len(), 1);
            for bad in ["", "a b", "**", "x\n"] {
                assert!(matches!(s.set_lockdown(bad, None, None).await, Err(StoreError::Invalid(_))), "{bad:?}");
            }
            assert!(matches!(s.set_lockdown("files", Some(""), None).await, Err(StoreError::Invalid(_))));
        })
        .await;
    }
}
