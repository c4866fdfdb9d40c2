//! The audit trail's tables: records appended to keyed hash chains
//! (sealed by `bastion-audit`, which says how the chain works), read back
//! in order for verification, searched, and pruned by age.
//!
//! Appending is one transaction per batch: the chain's head row is moved
//! first (which takes the write lock on both backends, so replicas sharing
//! one chain take turns), the records are sealed from the head's MAC, and
//! the head takes the last record's MAC. A failed transaction leaves no
//! trace, so the batch can be retried whole.

use std::collections::HashMap;
use std::sync::Arc;

use bastion_audit::{AuditKey, Event, GENESIS, Head, Mac, Stored};

use crate::db::{Backend, Fields, on_pool};
use crate::store::{Store, StoreError};

/// What to look for in the trail; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub chain: Option<String>,
    pub user: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub outcome: Option<String>,
    pub kind: Option<String>,
    /// From this time (microseconds since the epoch), inclusive.
    pub since: Option<i64>,
    /// Before this time, exclusive.
    pub until: Option<i64>,
    /// Only records after this one in the order searched (time, chain,
    /// number): how a long search is read page by page.
    pub after: Option<(i64, String, u64)>,
}

/// A stored record with its chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub chain: String,
    pub record: Stored,
}

fn mac_of(bytes: Vec<u8>, what: &str) -> Result<Mac, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("audit {what} is not 32 bytes")))
}

fn seq_of(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("audit {what} is negative")))
}

fn row_to_stored(row: &impl Fields) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        chain: row.text("chain")?,
        record: Stored {
            seq: seq_of(row.int("seq")?, "seq")?,
            body: row.text("body")?,
            mac: row.bytes("mac")?,
            ts: row.int("ts")?,
            kind: row.text("kind")?,
            user: row.opt_text("user_name")?,
            server: row.opt_text("server")?,
            tool: row.opt_text("tool")?,
            outcome: row.text("outcome")?,
        },
    })
}

fn row_to_head(row: &impl Fields) -> Result<Head, StoreError> {
    Ok(Head {
        seq: seq_of(row.int("seq")?, "head")?,
        mac: mac_of(row.bytes("mac")?, "head")?,
        anchor_seq: seq_of(row.int("anchor_seq")?, "anchor")?,
        anchor_mac: mac_of(row.bytes("anchor_mac")?, "anchor")?,
    })
}

/// Records per INSERT statement: 10 parameters each, well inside both
/// backends' limits on a statement's parameters.
const INSERT_ROWS: usize = 64;

macro_rules! audit_columns {
    () => {
        "chain, seq, ts, kind, user_name, server, tool, outcome, body, mac"
    };
}

macro_rules! search_query {
    ($order:literal) => {
        concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_records
             WHERE ($1 IS NULL OR chain = $1) AND ($2 IS NULL OR user_name = $2) AND ($3 IS NULL OR server = $3)
               AND ($4 IS NULL OR tool = $4) AND ($5 IS NULL OR outcome = $5) AND ($6 IS NULL OR kind = $6)
               AND ($7 IS NULL OR ts >= $7) AND ($8 IS NULL OR ts < $8)
               AND ($10 IS NULL OR ts > $10 OR (ts = $10 AND (chain > $11 OR (chain = $11 AND seq > $12))))
             ORDER BY ts ",
            $order,
            ", chain ",
            $order,
            ", seq ",
            $order,
            " LIMIT $9"
        )
    };
}

/// Parameters per record inserted.
const INSERT_PARAMS: usize = 10;

/// The statement inserting `rows` records (1 to [`INSERT_ROWS`]), made once
/// per backend and size: a batch binds its values into text already
/// written, and the backend's statement cache knows it.
fn insert_statement(backend: Backend, rows: usize) -> &'static str {
    use std::fmt::Write as _;
    use std::sync::OnceLock;
    static MADE: [OnceLock<Vec<String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let (slot, head) = match backend {
        // SQLite: a failing row rolls the whole transaction back (the batch
        // is retried whole anyway), which spares the statement journal a
        // multi-row insert would otherwise keep.
        Backend::Sqlite => (0, concat!("INSERT OR ROLLBACK INTO audit_records (", audit_columns!(), ") VALUES ")),
        Backend::Postgres => (1, concat!("INSERT INTO audit_records (", audit_columns!(), ") VALUES ")),
    };
    let made = MADE[slot].get_or_init(|| {
        (1..=INSERT_ROWS)
            .map(|n| {
                let mut sql = String::from(head);
                for row in 0..n {
                    sql.push_str(if row == 0 { "(" } else { ", (" });
                    for p in 0..INSERT_PARAMS {
                        let sep = if p == 0 { "" } else { ", " };
                        // SQLite's plain `?` numbers itself; a named `$n`
                        // is looked up by name at every bind, which costs
                        // more than the insert.
                        match backend {
                            Backend::Sqlite => {
                                sql.push_str(sep);
                                sql.push('?');
                            }
                            Backend::Postgres => {
                                let _ = write!(sql, "{sep}${}", row * INSERT_PARAMS + p + 1);
                            }
                        }
                    }
                    sql.push(')');
                }
                sql
            })
            .collect()
    });
    &made[rows.clamp(1, INSERT_ROWS) - 1]
}

/// The searchable columns' values of one batch, each made once: a
/// batch's records mostly share their chain, kind, outcome, user, server
/// and tool, and a shared value goes to the driver without a copy per
/// record (SQLite's driver would otherwise copy every text it binds).
#[derive(Default)]
struct Shared<'a>(HashMap<&'a str, Arc<str>>);

impl<'a> Shared<'a> {
    fn get(&mut self, value: &'a str) -> Arc<str> {
        self.0.entry(value).or_insert_with(|| Arc::from(value)).clone()
    }

    fn opt(&mut self, value: Option<&'a str>) -> Option<Arc<str>> {
        value.map(|v| self.get(v))
    }
}

impl Store {
    /// Appends `events` to `chain`, in order, sealed with `key`, in one
    /// transaction. Returns the number of the last one (the head's, when
    /// `events` is empty).
    pub async fn append_audit(&self, key: &AuditKey, chain: &str, events: &[Event]) -> Result<u64, StoreError> {
        let n = i64::try_from(events.len()).map_err(|_| StoreError::Invalid("too many audit records".into()))?;
        let backend = self.backend();
        on_pool!(self.appender.as_ref().unwrap_or(&self.pool), p => {
            let mut tx = p.begin().await?;
            // One statement creates the head or moves it, taking the
            // chain's write lock for the rest of the transaction.
            let row = sqlx::query(
                "INSERT INTO audit_heads (chain, seq, mac, anchor_seq, anchor_mac) VALUES ($1, $2, $3, 0, $3)
                 ON CONFLICT (chain) DO UPDATE SET seq = audit_heads.seq + $2 RETURNING seq, mac",
            )
            .bind(chain)
            .bind(n)
            .bind(&GENESIS[..])
            .fetch_one(&mut *tx)
            .await?;
            let last = seq_of(row.int("seq")?, "head")?;
            let mut prev = mac_of(row.bytes("mac")?, "head")?;
            let first = last + 1 - events.len() as u64;
            let mut sealed = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let seq = first + i as u64;
                let body = e.to_body();
                let mac = key.seal(chain, seq, &prev, &body);
                sealed.push((seq as i64, e, body, Arc::<[u8]>::from(&mac[..])));
                prev = mac;
            }
            let mut shared = Shared::default();
            // The text and the MAC are moved into the statement, not copied.
            let mut sealed = sealed.into_iter();
            loop {
                let rows = sealed.len().min(INSERT_ROWS);
                if rows == 0 {
                    break;
                }
                let mut q = sqlx::query(insert_statement(backend, rows));
                for (seq, e, body, mac) in sealed.by_ref().take(rows) {
                    q = q
                        .bind(shared.get(chain))
                        .bind(seq)
                        .bind(e.ts_micros())
                        .bind(shared.get(&e.kind))
                        .bind(shared.opt(e.user.as_deref()))
                        .bind(shared.opt(e.server.as_deref()))
                        .bind(shared.opt(e.tool.as_deref()))
                        .bind(shared.get(e.outcome.as_str()))
                        .bind(body)
                        .bind(mac);
                }
                q.execute(&mut *tx).await?;
            }
            if !events.is_empty() {
                sqlx::query("UPDATE audit_heads SET mac = $2 WHERE chain = $1")
                    .bind(chain)
                    .bind(&prev[..])
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(last)
        })
    }

    /// The chains in the store, by name.
    pub async fn audit_chains(&self) -> Result<Vec<String>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query("SELECT chain FROM audit_heads ORDER BY chain").fetch_all(p).await?;
            rows.iter().map(|r| r.text("chain").map_err(StoreError::from)).collect()
        })
    }

    /// A chain's head; `None` for a chain never written.
    pub async fn audit_head(&self, chain: &str) -> Result<Option<Head>, StoreError> {
        on_pool!(&self.pool, p => {
            let row = sqlx::query("SELECT seq, mac, anchor_seq, anchor_mac FROM audit_heads WHERE chain = $1")
                .bind(chain)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(row_to_head).transpose()
        })
    }

    /// Up to `limit` records of `chain` after `after`, in order: how a
    /// verification reads a chain, page by page.
    pub async fn audit_page(&self, chain: &str, after: u64, limit: u32) -> Result<Vec<Stored>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(concat!(
                "SELECT ",
                audit_columns!(),
                " FROM audit_records WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .bind(chain)
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| row_to_stored(r).map(|s| s.record)).collect()
        })
    }

    /// The records matching `filter`, oldest first, or with `newest` the
    /// last `limit` of them (still oldest first).
    pub async fn search_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let query = if newest { search_query!("DESC") } else { search_query!("ASC") };
        let mut rows = on_pool!(&self.pool, p => {
            let rows = sqlx::query(query)
            .bind(filter.chain.as_deref())
            .bind(filter.user.as_deref())
            .bind(filter.server.as_deref())
            .bind(filter.tool.as_deref())
            .bind(filter.outcome.as_deref())
            .bind(filter.kind.as_deref())
            .bind(filter.since)
            .bind(filter.until)
            .bind(i64::from(limit))
            .bind(filter.after.as_ref().map(|a| a.0))
            .bind(filter.after.as_ref().map(|a| a.1.as_str()))
            .bind(filter.after.as_ref().map(|a| a.2 as i64))
            .fetch_all(p)
            .await?;
            rows.iter().map(row_to_stored).collect::<Result<Vec<_>, StoreError>>()
        })?;
        if newest {
            rows.reverse();
        }
        Ok(rows)
    }

    /// Removes the records of `chain` older than `before` (microseconds
    /// since the epoch), oldest first and without gaps: the records kept
    /// still form a chain from the anchor, which takes the last removed
    /// record's number and MAC. The head's record is never removed.
    /// Returns how many were removed.
    pub async fn prune_audit(&self, chain: &str, before: i64) -> Result<u64, StoreError> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            // Moving the head row first takes the write lock (as appending
            // does), so no batch is appended meanwhile.
            let head = sqlx::query(
                "UPDATE audit_heads SET anchor_seq = anchor_seq WHERE chain = $1
                 RETURNING seq, mac, anchor_seq, anchor_mac",
            )
            .bind(chain)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(head) = head.as_ref().map(row_to_head).transpose()? else { return Ok(0) };
            // The first record to keep: the oldest one at or after `before`
            // (records are appended in time order per writer, not across
            // writers, so the cut is at the first kept, never past it).
            let keep = sqlx::query(
                "SELECT MIN(seq) AS seq FROM audit_records WHERE chain = $1 AND (ts >= $2 OR seq = $3)",
            )
            .bind(chain)
            .bind(before)
            .bind(head.seq as i64)
            .fetch_one(&mut *tx)
            .await?;
            let Some(keep) = keep.opt_int("seq")? else { return Ok(0) };
            let cut = seq_of(keep, "seq")?.saturating_sub(1);
            if cut <= head.anchor_seq {
                return Ok(0);
            }
            let last = sqlx::query("SELECT mac FROM audit_records WHERE chain = $1 AND seq = $2")
                .bind(chain)
                .bind(cut as i64)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("audit record {cut} of chain {chain} is missing")))?;
            let anchor_mac = mac_of(last.bytes("mac")?, "record")?;
            let removed = sqlx::query("DELETE FROM audit_records WHERE chain = $1 AND seq <= $2")
                .bind(chain)
                .bind(cut as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE audit_heads SET anchor_seq = $2, anchor_mac = $3 WHERE chain = $1")
                .bind(chain)
                .bind(cut as i64)
                .bind(&anchor_mac[..])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(removed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;
    use bastion_audit::{Outcome, Verifier};
    use chrono::{DateTime, Utc};

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[3; 32])
    }

    fn event(user: &str, tool: &str, at: i64) -> Event {
        let mut e = Event::at(DateTime::<Utc>::from_timestamp_micros(at).unwrap(), "mcp.request", Outcome::Ok);
        e.user = Some(user.into());
        e.server = Some("github".into());
        e.tool = Some(tool.into());
        e
    }

    #[test]
    fn insert_statements_number_every_row_s_parameters() {
        let two = insert_statement(Backend::Postgres, 2);
        assert!(two.starts_with("INSERT INTO audit_records (chain, seq,"), "{two}");
        assert!(
            two.ends_with(
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), ($11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
            ),
            "{two}"
        );
        let one = insert_statement(Backend::Sqlite, 1);
        assert!(
            one.starts_with("INSERT OR ROLLBACK INTO") && one.ends_with("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            "{one}"
        );
        let full = insert_statement(Backend::Postgres, INSERT_ROWS);
        assert_eq!(full.matches('(').count(), INSERT_ROWS + 1);
        assert!(full.ends_with(&format!("${})", INSERT_ROWS * INSERT_PARAMS)));
        assert_eq!(insert_statement(Backend::Sqlite, INSERT_ROWS).matches('?').count(), INSERT_ROWS * INSERT_PARAMS);
    }

    async fn verify(s: &Store, chain: &str) -> Result<bastion_audit::Verified, String> {
        let k = key();
        let head = s.audit_head(chain).await.unwrap().unwrap();
        let mut v = Verifier::new(&k, chain, &head);
        let mut after = head.anchor_seq;
        loop {
            let page = s.audit_page(chain, after, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                v.feed(r).map_err(|p| p.to_string())?;
            }
        }
        v.finish(&head).map_err(|p| p.to_string())
    }

    #[tokio::test]
    async fn appended_batches_form_one_chain_that_verifies() {
        on_both(async |s: Store| {
            let k = key();
            assert_eq!(
                s.append_audit(&k, "main", &[event("alice", "a", 1_000), event("bob", "b", 2_000)]).await.unwrap(),
                2
            );
            assert_eq!(s.append_audit(&k, "main", &[]).await.unwrap(), 2);
            assert_eq!(s.append_audit(&k, "main", &[event("alice", "c", 3_000)]).await.unwrap(), 3);
            assert_eq!(s.append_audit(&k, "other", &[event("carol", "d", 1_500)]).await.unwrap(), 1);
            assert_eq!(s.audit_chains().await.unwrap(), ["main", "other"]);
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.last), (3, 3));
            assert_eq!(verify(&s, "other").await.unwrap().records, 1);

            let f = AuditFilter { user: Some("alice".into()), ..Default::default() };
            let found = s.search_audit(&f, 10, false).await.unwrap();
            assert_eq!(found.iter().map(|r| r.record.seq).collect::<Vec<_>>(), [1, 3]);
            let all = s.search_audit(&AuditFilter::default(), 2, true).await.unwrap();
            assert_eq!(all.iter().map(|r| r.record.tool.clone().unwrap()).collect::<Vec<_>>(), ["b", "c"]);
            let window = AuditFilter { since: Some(1_500), until: Some(3_000), ..Default::default() };
            assert_eq!(s.search_audit(&window, 10, false).await.unwrap().len(), 2);
            // page by page, in order, nothing twice
            let mut seen = Vec::new();
            let mut f = AuditFilter::default();
            loop {
                let page = s.search_audit(&f, 1, false).await.unwrap();
                let Some(last) = page.last() else { break };
                f.after = Some((last.record.ts, last.chain.clone(), last.record.seq));
                seen.push(last.record.tool.clone().unwrap());
            }
            assert_eq!(seen, ["a", "d", "b", "c"]);
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_writers_share_one_chain() {
        on_both(async |s: Store| {
            let k = std::sync::Arc::new(key());
            let mut tasks = Vec::new();
            for w in 0..4 {
                let (s, k) = (s.clone(), k.clone());
                tasks.push(tokio::spawn(async move {
                    for b in 0..5 {
                        let batch: Vec<Event> =
                            (0..3).map(|i| event(&format!("w{w}"), &format!("{b}-{i}"), 1)).collect();
                        s.append_audit(&k, "main", &batch).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let v = verify(&s, "main").await.unwrap();
            assert_eq!(v.records, 60);
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_statement_is_stored_whole_and_in_order() {
        on_both(async |s: Store| {
            let k = key();
            let n = INSERT_ROWS * 2 + 7;
            let events: Vec<Event> = (0..n).map(|i| event("alice", &i.to_string(), 1_000 + i as i64)).collect();
            assert_eq!(s.append_audit(&k, "main", &events).await.unwrap(), n as u64);
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.last), (n as u64, n as u64));
            let page = s.audit_page("main", 0, n as u32).await.unwrap();
            let tools: Vec<String> = page.iter().map(|r| r.tool.clone().unwrap()).collect();
            assert_eq!(tools, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
            assert!(page.iter().zip(&events).all(|(r, e)| Event::from_body(&r.body).unwrap() == *e));
        })
        .await;
    }

    #[tokio::test]
    async fn pruning_keeps_a_chain_that_verifies() {
        on_both(async |s: Store| {
            let k = key();
            let events: Vec<Event> = (1..=10).map(|i| event("alice", &i.to_string(), i * 1_000)).collect();
            s.append_audit(&k, "main", &events).await.unwrap();
            assert_eq!(s.prune_audit("main", 4_500).await.unwrap(), 4);
            assert_eq!(s.prune_audit("main", 4_500).await.unwrap(), 0, "nothing more to prune");
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.first, v.last), (6, 5, 10));
            // everything old: the head's record stays
            assert_eq!(s.prune_audit("main", 1_000_000).await.unwrap(), 5);
            assert_eq!(verify(&s, "main").await.unwrap().records, 1);
            s.append_audit(&k, "main", &[event("bob", "x", 2_000_000)]).await.unwrap();
            assert_eq!(verify(&s, "main").await.unwrap().last, 11);
            assert_eq!(s.prune_audit("nothing", 1).await.unwrap(), 0);
        })
        .await;
    }
}
