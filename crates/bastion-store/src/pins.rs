//! Pins of what servers list (`bastion tools`): for each server's tool or
//! prompt, by name, the hash of the approved definition, the definition
//! seen last, and the state that makes of it. What the states mean and how
//! they change is the gateway's (`bastion_guard::pin`); the store keeps the
//! rows and changes them by compare and set, so that gateways sharing one
//! store and the CLI never overwrite each other's decisions unseen. Every
//! change bumps the [`PINS`](crate::changes::PINS) topic of the change feed.

use chrono::{DateTime, Utc};

use crate::changes::{BumpChange, PINS};
use crate::db::{Fields, on_pool};
use crate::store::{Store, StoreError, ts};

/// One pinned item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PinRecord {
    pub server: String,
    /// `tool` or `prompt`.
    pub kind: String,
    pub name: String,
    /// `pinned`, `pending`, `quarantined` or `rejected`.
    pub state: String,
    /// Why the item is held (`changed`, `poisoning: …`, `new`), for people.
    pub reason: Option<String>,
    pub approved_hash: Option<String>,
    #[serde(skip)]
    pub approved_definition: Option<String>,
    /// `auto` (pinned on first sight) or the operator who approved.
    pub approved_by: Option<String>,
    pub seen_hash: String,
    #[serde(skip)]
    pub seen_definition: String,
    /// Bumped by every write; a write names the version it replaces.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! pin_columns {
    () => {
        "server, kind, name, state, reason, approved_hash, approved_definition, approved_by, seen_hash, \
         seen_definition, version, created_at, updated_at"
    };
}

fn row_to_pin(row: &impl Fields) -> Result<PinRecord, StoreError> {
    let name = row.text("name")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("pin {name:?}: {what}"));
    Ok(PinRecord {
        server: row.text("server")?,
        kind: row.text("kind")?,
        state: row.text("state")?,
        reason: row.opt_text("reason")?,
        approved_hash: row.opt_text("approved_hash")?,
        approved_definition: row.opt_text("approved_definition")?,
        approved_by: row.opt_text("approved_by")?,
        seen_hash: row.text("seen_hash")?,
        seen_definition: row.text("seen_definition")?,
        version: row.int("version")?,
        created_at: ts(Some(row.int("created_at")?)).ok_or_else(|| corrupt("created_at"))?,
        updated_at: ts(Some(row.int("updated_at")?)).ok_or_else(|| corrupt("updated_at"))?,
        name,
    })
}

impl Store {
    /// The pin of one item, if there is one.
    pub async fn get_pin(&self, server: &str, kind: &str, name: &str) -> Result<Option<PinRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query(concat!(
                "SELECT ", pin_columns!(), " FROM tool_pins WHERE server = $1 AND kind = $2 AND name = $3"
            ))
            .bind(server)
            .bind(kind)
            .bind(name)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(row_to_pin).transpose()
        })
    }

    /// Every pin (of one server), by server, kind and name.
    pub async fn list_pins(&self, server: Option<&str>) -> Result<Vec<PinRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = match server {
                Some(s) => sqlx::query(concat!(
                    "SELECT ", pin_columns!(), " FROM tool_pins WHERE server = $1 ORDER BY server, kind, name"
                ))
                .bind(s)
                .fetch_all(p)
                .await?,
                None => sqlx::query(concat!("SELECT ", pin_columns!(), " FROM tool_pins ORDER BY server, kind, name"))
                    .fetch_all(p)
                    .await?,
            };
            rows.iter().map(row_to_pin).collect()
        })
    }

    /// Pins written at or after `since` (one-second resolution: the whole
    /// second of `since` counts).
    pub async fn pins_changed_since(&self, since: DateTime<Utc>) -> Result<Vec<PinRecord>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(concat!(
                "SELECT ", pin_columns!(), " FROM tool_pins WHERE updated_at >= $1 ORDER BY server, kind, name"
            ))
            .bind(since.timestamp())
            .fetch_all(p)
            .await?;
            rows.iter().map(row_to_pin).collect()
        })
    }

    /// Writes a pin: a new row when `expected` is `None` (false when the
    /// item has one already), else a change of the row at version
    /// `expected` (false when it has changed since). The row's version,
    /// `created_at` and `updated_at` are the store's; on success the record
    /// is returned as written.
    pub async fn write_pin(&self, pin: &PinRecord, expected: Option<i64>) -> Result<Option<PinRecord>, StoreError> {
        check_pin(pin)?;
        let now = Utc::now().timestamp();
        let written = on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let n = match expected {
                None => sqlx::query(
                    "INSERT INTO tool_pins (server, kind, name, state, reason, approved_hash, approved_definition,
                         approved_by, seen_hash, seen_definition, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)
                     ON CONFLICT (server, kind, name) DO NOTHING",
                )
                .bind(&pin.server)
                .bind(&pin.kind)
                .bind(&pin.name)
                .bind(&pin.state)
                .bind(&pin.reason)
                .bind(&pin.approved_hash)
                .bind(&pin.approved_definition)
                .bind(&pin.approved_by)
                .bind(&pin.seen_hash)
                .bind(&pin.seen_definition)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Some(version) => sqlx::query(
                    "UPDATE tool_pins SET state = $1, reason = $2, approved_hash = $3, approved_definition = $4,
                         approved_by = $5, seen_hash = $6, seen_definition = $7, version = version + 1, updated_at = $8
                     WHERE server = $9 AND kind = $10 AND name = $11 AND version = $12",
                )
                .bind(&pin.state)
                .bind(&pin.reason)
                .bind(&pin.approved_hash)
                .bind(&pin.approved_definition)
                .bind(&pin.approved_by)
                .bind(&pin.seen_hash)
                .bind(&pin.seen_definition)
                .bind(now)
                .bind(&pin.server)
                .bind(&pin.kind)
                .bind(&pin.name)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if n == 1 {
                tx.bump_change(PINS).await?;
            }
            tx.commit().await?;
            n
        });
        if written != 1 {
            return Ok(None);
        }
        self.get_pin(&pin.server, &pin.kind, &pin.name).await
    }

    /// Removes the pins of a server (all of them, or one item's). Returns
    /// how many were removed.
    pub async fn delete_pins(&self, server: &str, item: Option<(&str, &str)>) -> Result<u64, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let n = match item {
                Some((kind, name)) => {
                    sqlx::query("DELETE FROM tool_pins WHERE server = $1 AND kind = $2 AND name = $3")
                        .bind(server)
                        .bind(kind)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                }
                None => sqlx::query("DELETE FROM tool_pins WHERE server = $1")
                    .bind(server)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            };
            if n > 0 {
                tx.bump_change(PINS).await?;
            }
            tx.commit().await?;
            Ok(n)
        })
    }
}

fn check_pin(pin: &PinRecord) -> Result<(), StoreError> {
    if !matches!(pin.kind.as_str(), "tool" | "prompt") {
        return Err(StoreError::Invalid(format!("pin kind {:?}: tool or prompt", pin.kind)));
    }
    if !matches!(pin.state.as_str(), "pinned" | "pending" | "quarantined" | "rejected") {
        return Err(StoreError::Invalid(format!("pin state {:?}", pin.state)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;

    fn pin(name: &str, state: &str, seen: &str) -> PinRecord {
        PinRecord {
            server: "files".into(),
            kind: "tool".into(),
            name: name.into(),
            state: state.into(),
            reason: None,
            approved_hash: (state == "pinned").then(|| seen.to_string()),
            approved_definition: (state == "pinned").then(|| format!("{{\"h\":\"{seen}\"}}")),
            approved_by: (state == "pinned").then(|| "auto".to_string()),
            seen_hash: seen.into(),
            seen_definition: format!("{{\"h\":\"{seen}\"}}"),
            version: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn pins_are_written_by_compare_and_set() {
        on_both(async |s: Store| {
            let since = Utc::now() - chrono::Duration::seconds(1);
            let first = s.write_pin(&pin("read", "pinned", "aa"), None).await.unwrap().expect("inserted");
            assert_eq!((first.version, first.approved_by.as_deref()), (1, Some("auto")));
            assert!(s.write_pin(&pin("read", "pending", "bb"), None).await.unwrap().is_none(), "the row exists");

            let mut changed = first.clone();
            changed.state = "quarantined".into();
            changed.reason = Some("changed".into());
            changed.seen_hash = "bb".into();
            let second = s.write_pin(&changed, Some(first.version)).await.unwrap().expect("updated");
            assert_eq!((second.version, second.state.as_str()), (2, "quarantined"));
            assert_eq!(second.approved_hash.as_deref(), Some("aa"), "the approval is kept");
            // A writer that read version 1 lost the race.
            assert!(s.write_pin(&changed, Some(1)).await.unwrap().is_none());

            s.write_pin(&pin("list", "pending", "cc"), None).await.unwrap().expect("inserted");
            let mut prompt = pin("greet", "pinned", "dd");
            prompt.kind = "prompt".into();
            s.write_pin(&prompt, None).await.unwrap().expect("inserted");
            let names: Vec<_> = s.list_pins(Some("files")).await.unwrap().into_iter().map(|p| p.name).collect();
            assert_eq!(names, ["greet", "list", "read"]);
            assert_eq!(s.pins_changed_since(since).await.unwrap().len(), 3);
            assert!(s.pins_changed_since(Utc::now() + chrono::Duration::seconds(5)).await.unwrap().is_empty());

            let mut bad = pin("x", "pinned", "ee");
            bad.state = "maybe".into();
            assert!(matches!(s.write_pin(&bad, None).await, Err(StoreError::Invalid(_))));

            assert_eq!(s.delete_pins("files", Some(("tool", "list"))).await.unwrap(), 1);
            assert_eq!(s.delete_pins("files", None).await.unwrap(), 2);
            assert!(s.list_pins(None).await.unwrap().is_empty());
        })
        .await;
    }
}
