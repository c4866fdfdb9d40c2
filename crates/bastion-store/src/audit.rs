//! The audit trail's tables: records appended to keyed hash chains
//! (sealed by `bastion-audit`, which says how the chain works and how a
//! batch of records is laid out), read back in order for verification,
//! searched, and pruned by age.
//!
//! Records are kept in batches, a row per batch written (see the
//! `bastion_audit::batch` module): the row's indexes are paid once per
//! batch, not per record. A batch spans at most
//! [`bastion_audit::SPAN_MICROS`], which is what lets a search by time
//! start at the batches begun that much before it.
//!
//! Appending is one transaction per batch: the chain's head row is moved
//! first (which takes the write lock on both backends, so replicas sharing
//! one chain take turns), the records are sealed from the head's MAC, and
//! the head takes the last record's MAC. A failed transaction leaves no
//! trace, so the batch can be retried whole.

use bastion_audit::{AuditKey, Batch, GENESIS, Head, Mac, SPAN_MICROS, Sealable, Stored, read_batch};

use crate::db::{Fields, on_pool};
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

impl AuditFilter {
    fn matches(&self, chain: &str, r: &Stored) -> bool {
        fn same(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        same(&self.chain, Some(chain))
            && same(&self.user, r.user.as_deref())
            && same(&self.server, r.server.as_deref())
            && same(&self.tool, r.tool.as_deref())
            && same(&self.outcome, Some(&r.outcome))
            && same(&self.kind, Some(&r.kind))
            && self.since.is_none_or(|t| r.ts >= t)
            && self.until.is_none_or(|t| r.ts < t)
            && self.after.as_ref().is_none_or(|(ts, c, seq)| (r.ts, chain, r.seq) > (*ts, c.as_str(), *seq))
    }
}

/// A stored record with its chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub chain: String,
    pub record: Stored,
}

/// A stored batch: its bounds as kept, and its records as read from its
/// text.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditBatch {
    pub first: u64,
    pub last: u64,
    pub ts_min: i64,
    pub ts_max: i64,
    pub records: Vec<Stored>,
}

fn mac_of(bytes: Vec<u8>, what: &str) -> Result<Mac, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("audit {what} is not 32 bytes")))
}

fn seq_of(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("audit {what} is negative")))
}

fn row_to_batch(row: &impl Fields) -> Result<(String, AuditBatch), StoreError> {
    let first = seq_of(row.int("first_seq")?, "batch")?;
    Ok((
        row.text("chain")?,
        AuditBatch {
            first,
            last: seq_of(row.int("last_seq")?, "batch")?,
            ts_min: row.int("ts_min")?,
            ts_max: row.int("ts_max")?,
            records: read_batch(&row.text("records")?, first),
        },
    ))
}

fn row_to_head(row: &impl Fields) -> Result<Head, StoreError> {
    Ok(Head {
        seq: seq_of(row.int("seq")?, "head")?,
        mac: mac_of(row.bytes("mac")?, "head")?,
        anchor_seq: seq_of(row.int("anchor_seq")?, "anchor")?,
        anchor_mac: mac_of(row.bytes("anchor_mac")?, "anchor")?,
    })
}

/// Batches read per query while searching.
const SEARCH_ROWS: i64 = 32;

macro_rules! search_query {
    ($cmp:literal, $order:literal) => {
        concat!(
            "SELECT chain, first_seq, last_seq, ts_min, ts_max, records FROM audit_batches
             WHERE ($1 IS NULL OR chain = $1) AND ($2 IS NULL OR ts_min >= $2) AND ($3 IS NULL OR ts_min < $3)
               AND ($4 IS NULL OR (ts_min, chain, first_seq) ",
            $cmp,
            " ($4, $5, $6))
             ORDER BY ts_min ",
            $order,
            ", chain ",
            $order,
            ", first_seq ",
            $order,
            " LIMIT $7"
        )
    };
}

impl Store {
    /// Appends `events` (events, or entries written ahead) to `chain`, in
    /// order, sealed with `key`, in one transaction. Returns the number of
    /// the last one (the head's, when `events` is empty).
    pub async fn append_audit<E: Sealable + Sync>(
        &self,
        key: &AuditKey,
        chain: &str,
        events: &[E],
    ) -> Result<u64, StoreError> {
        let seal = |first, prev| std::future::ready(key.seal_batches(chain, first, prev, events));
        self.append_audit_sealed(chain, events.len(), seal).await
    }

    /// [`Store::append_audit`] for `count` records sealed by `seal`, which
    /// is given the first one's number and the MAC it is chained to once
    /// the transaction knows them, and returns their batches and the last
    /// one's MAC (`AuditKey::seal_batches`, wherever the caller runs it).
    pub async fn append_audit_sealed<F, Fut>(&self, chain: &str, count: usize, seal: F) -> Result<u64, StoreError>
    where
        F: FnOnce(u64, Mac) -> Fut,
        Fut: std::future::Future<Output = (Vec<Batch>, Mac)>,
    {
        let n = i64::try_from(count).map_err(|_| StoreError::Invalid("too many audit records".into()))?;
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
            let prev = mac_of(row.bytes("mac")?, "head")?;
            let (batches, head_mac) = seal(last + 1 - count as u64, prev).await;
            for b in batches {
                // The text is moved into the statement, not copied.
                sqlx::query(
                    "INSERT INTO audit_batches (chain, first_seq, last_seq, ts_min, ts_max, records)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(chain)
                .bind(b.first as i64)
                .bind(b.last as i64)
                .bind(b.ts_min)
                .bind(b.ts_max)
                .bind(b.text)
                .execute(&mut *tx)
                .await?;
            }
            if count > 0 {
                sqlx::query("UPDATE audit_heads SET mac = $2 WHERE chain = $1")
                    .bind(chain)
                    .bind(&head_mac[..])
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

    /// Up to `limit` stored batches of `chain` in order of their first
    /// record, those after the batch beginning at `after` (from the start
    /// when `None`): how a verification reads a chain, page by page. Every
    /// batch stored is read, whatever its bounds say.
    pub async fn audit_batches(
        &self,
        chain: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditBatch>, StoreError> {
        let after = match after {
            Some(a) => i64::try_from(a).map_err(|_| StoreError::Invalid("audit record number out of range".into()))?,
            None => i64::MIN,
        };
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(
                "SELECT chain, first_seq, last_seq, ts_min, ts_max, records FROM audit_batches
                 WHERE chain = $1 AND first_seq > $2 ORDER BY first_seq LIMIT $3",
            )
            .bind(chain)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| row_to_batch(r).map(|(_, b)| b)).collect()
        })
    }

    /// The records matching `filter`, oldest first, or with `newest` the
    /// last `limit` of them (still oldest first). The order is by time,
    /// then chain, then number.
    pub async fn search_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let limit = limit as usize;
        // The records of a time are in the batches begun at most a span
        // before it; a batch begun after a time holds nothing before it.
        let lower = match (filter.since, &filter.after) {
            (Some(s), Some(a)) => Some(s.max(a.0)),
            (s, a) => s.or(a.as_ref().map(|a| a.0)),
        };
        let from = lower.map(|t| t.saturating_sub(SPAN_MICROS));
        let mut found: Vec<AuditRow> = Vec::new();
        let mut cursor: Option<(i64, String, i64)> = None;
        loop {
            let query = if newest { search_query!("<", "DESC") } else { search_query!(">", "ASC") };
            let page = on_pool!(&self.pool, p => {
                let rows = sqlx::query(query)
                    .bind(filter.chain.as_deref())
                    .bind(from)
                    .bind(filter.until)
                    .bind(cursor.as_ref().map(|c| c.0))
                    .bind(cursor.as_ref().map(|c| c.1.as_str()))
                    .bind(cursor.as_ref().map(|c| c.2))
                    .bind(SEARCH_ROWS)
                    .fetch_all(p)
                    .await?;
                rows.iter().map(row_to_batch).collect::<Result<Vec<_>, StoreError>>()
            })?;
            let done = page.len() < SEARCH_ROWS as usize;
            let mut stop = false;
            for (chain, batch) in page {
                // Enough found, and this batch (and every one after it) can
                // hold nothing that would come before the last of them.
                if found.len() >= limit {
                    sort(&mut found, newest);
                    found.truncate(limit);
                    let edge = found.last().map_or(0, |r| r.record.ts);
                    if (!newest && batch.ts_min > edge) || (newest && batch.ts_min.saturating_add(SPAN_MICROS) < edge) {
                        stop = true;
                        break;
                    }
                }
                cursor = Some((batch.ts_min, chain.clone(), batch.first as i64));
                for record in batch.records {
                    if filter.matches(&chain, &record) {
                        found.push(AuditRow { chain: chain.clone(), record });
                    }
                }
            }
            if stop || done {
                break;
            }
        }
        sort(&mut found, newest);
        found.truncate(limit);
        if newest {
            found.reverse();
        }
        Ok(found)
    }

    /// Removes the records of `chain` older than `before` (microseconds
    /// since the epoch), oldest first, batch by batch and without gaps: the
    /// records kept still form a chain from the anchor, which takes the last
    /// removed record's number and MAC. A batch goes once all its records
    /// are older; the head's record is never removed. Returns how many
    /// records were removed.
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
            // The first batch to keep: the oldest one with a record at or
            // after `before`, or the head's (records are appended in time
            // order per writer, not across writers, so the cut is at the
            // first kept, never past it).
            let keep = sqlx::query(
                "SELECT first_seq FROM audit_batches WHERE chain = $1 AND (ts_max >= $2 OR last_seq >= $3)
                 ORDER BY first_seq LIMIT 1",
            )
            .bind(chain)
            .bind(before)
            .bind(head.seq as i64)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(keep) = keep else { return Ok(0) };
            let cut = seq_of(keep.int("first_seq")?, "batch")?.saturating_sub(1);
            if cut <= head.anchor_seq {
                return Ok(0);
            }
            let last = sqlx::query(
                "SELECT chain, first_seq, last_seq, ts_min, ts_max, records FROM audit_batches
                 WHERE chain = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1",
            )
            .bind(chain)
            .bind(cut as i64)
            .fetch_optional(&mut *tx)
            .await?;
            let missing = || StoreError::Corrupt(format!("audit record {cut} of chain {chain} is missing"));
            let (_, last) = row_to_batch(&last.ok_or_else(missing)?)?;
            let anchor = last.records.last().filter(|r| last.last == cut && r.seq == cut).ok_or_else(missing)?;
            let anchor_mac = mac_of(anchor.mac.clone(), "record")?;
            let removed = sqlx::query(
                "SELECT CAST(COALESCE(SUM(last_seq - first_seq + 1), 0) AS BIGINT) AS n FROM audit_batches
                 WHERE chain = $1 AND first_seq <= $2",
            )
            .bind(chain)
            .bind(cut as i64)
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
            sqlx::query("DELETE FROM audit_batches WHERE chain = $1 AND first_seq <= $2")
                .bind(chain)
                .bind(cut as i64)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE audit_heads SET anchor_seq = $2, anchor_mac = $3 WHERE chain = $1")
                .bind(chain)
                .bind(cut as i64)
                .bind(&anchor_mac[..])
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(removed.max(0) as u64)
        })
    }
}

/// Search results in the order asked: by time, chain and number, or the
/// reverse for the newest.
fn sort(rows: &mut [AuditRow], newest: bool) {
    rows.sort_by(|a, b| {
        let order = (a.record.ts, a.chain.as_str(), a.record.seq).cmp(&(b.record.ts, b.chain.as_str(), b.record.seq));
        if newest { order.reverse() } else { order }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::on_both;
    use bastion_audit::{Event, Outcome, Verifier};
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

    async fn verify(s: &Store, chain: &str) -> Result<bastion_audit::Verified, String> {
        let k = key();
        let head = s.audit_head(chain).await.unwrap().unwrap();
        let mut v = Verifier::new(&k, chain, &head);
        let mut after = None;
        loop {
            let page = s.audit_batches(chain, after, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.first);
            for b in &page {
                v.batch(b.first, b.last, b.ts_min, b.ts_max, &b.records).map_err(|p| p.to_string())?;
            }
        }
        v.finish(&head).map_err(|p| p.to_string())
    }

    fn records(batches: &[AuditBatch]) -> Vec<Stored> {
        batches.iter().flat_map(|b| b.records.clone()).collect()
    }

    /// A caller sealing records elsewhere is told where the chain stands
    /// inside the transaction, and its batches join the chain as if the
    /// store had sealed them.
    #[tokio::test]
    async fn records_sealed_by_the_caller_join_the_chain_where_it_stands() {
        on_both(async |s: Store| {
            let k = std::sync::Arc::new(key());
            s.append_audit(&k, "main", &[event("alice", "a", 1_000), event("bob", "b", 2_000)]).await.unwrap();
            let head = s.audit_head("main").await.unwrap().unwrap();
            let events = std::sync::Arc::new(vec![event("carol", "c", 3_000), event("dave", "d", 4_000)]);
            let asked = std::sync::Mutex::new(None);
            let seal = |first, prev| {
                *asked.lock().unwrap() = Some((first, prev));
                let (k, e) = (k.clone(), events.clone());
                async move {
                    tokio::task::spawn_blocking(move || k.seal_batches("main", first, prev, &e)).await.unwrap()
                }
            };
            assert_eq!(s.append_audit_sealed("main", events.len(), seal).await.unwrap(), 4);
            assert_eq!(asked.lock().unwrap().take(), Some((3, head.mac)));
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.last), (4, 4));
        })
        .await;
    }

    #[tokio::test]
    async fn appended_batches_form_one_chain_that_verifies() {
        on_both(async |s: Store| {
            let k = key();
            assert_eq!(
                s.append_audit(&k, "main", &[event("alice", "a", 1_000), event("bob", "b", 2_000)]).await.unwrap(),
                2
            );
            assert_eq!(s.append_audit::<Event>(&k, "main", &[]).await.unwrap(), 2);
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
    async fn a_batch_is_one_row_and_a_long_one_several() {
        on_both(async |s: Store| {
            let k = key();
            let n = 300;
            let events: Vec<Event> = (0..n).map(|i| event("alice", &i.to_string(), 1_000 + i as i64)).collect();
            assert_eq!(s.append_audit(&k, "main", &events).await.unwrap(), n as u64);
            let stored = s.audit_batches("main", None, 100).await.unwrap();
            assert_eq!(stored.len(), 1);
            assert_eq!((stored[0].first, stored[0].last, stored[0].ts_min, stored[0].ts_max), (1, 300, 1_000, 1_299));
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.last), (n as u64, n as u64));
            let all = records(&stored);
            let tools: Vec<String> = all.iter().map(|r| r.tool.clone().unwrap()).collect();
            assert_eq!(tools, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
            assert!(all.iter().zip(&events).all(|(r, e)| Event::from_body(&r.body).unwrap() == *e));
            // records spooled through a long outage: a batch per span
            let late: Vec<Event> = (0..5).map(|i| event("bob", "x", 10_000_000 + i * 700_000)).collect();
            s.append_audit(&k, "main", &late).await.unwrap();
            let stored = s.audit_batches("main", Some(1), 100).await.unwrap();
            assert_eq!(
                stored.iter().map(|b| (b.first, b.last)).collect::<Vec<_>>(),
                [(301, 302), (303, 304), (305, 305)]
            );
            assert_eq!(verify(&s, "main").await.unwrap().records, 305);
        })
        .await;
    }

    #[tokio::test]
    async fn searches_find_records_across_batches_in_time_order() {
        on_both(async |s: Store| {
            let k = key();
            // Two writers' batches overlapping in time, a record out of
            // order within a batch, and batches far apart.
            let a: Vec<Event> = [100, 300, 250, 900].iter().map(|&t| event("alice", &format!("a{t}"), t)).collect();
            let b: Vec<Event> = [200, 300, 800].iter().map(|&t| event("bob", &format!("b{t}"), t)).collect();
            let c: Vec<Event> = [5_000_000, 5_000_100].iter().map(|&t| event("alice", &format!("c{t}"), t)).collect();
            s.append_audit(&k, "one", &a).await.unwrap();
            s.append_audit(&k, "two", &b).await.unwrap();
            s.append_audit(&k, "one", &c).await.unwrap();
            let tools = |rows: &[AuditRow]| rows.iter().map(|r| r.record.tool.clone().unwrap()).collect::<Vec<_>>();
            let all = s.search_audit(&AuditFilter::default(), 100, false).await.unwrap();
            assert_eq!(tools(&all), ["a100", "b200", "a250", "a300", "b300", "b800", "a900", "c5000000", "c5000100"]);
            // page by page, in order, nothing twice
            for size in 1..4 {
                let mut seen = Vec::new();
                let mut f = AuditFilter::default();
                loop {
                    let page = s.search_audit(&f, size, false).await.unwrap();
                    let Some(last) = page.last() else { break };
                    f.after = Some((last.record.ts, last.chain.clone(), last.record.seq));
                    seen.extend(tools(&page));
                }
                assert_eq!(seen, tools(&all), "pages of {size}");
            }
            let newest = s.search_audit(&AuditFilter::default(), 3, true).await.unwrap();
            assert_eq!(tools(&newest), ["a900", "c5000000", "c5000100"]);
            let f = AuditFilter { until: Some(5_000_000), ..Default::default() };
            assert_eq!(tools(&s.search_audit(&f, 2, true).await.unwrap()), ["b800", "a900"]);
            let f = AuditFilter { since: Some(300), until: Some(900), ..Default::default() };
            assert_eq!(tools(&s.search_audit(&f, 10, false).await.unwrap()), ["a300", "b300", "b800"]);
            let f = AuditFilter { user: Some("bob".into()), chain: Some("two".into()), ..Default::default() };
            assert_eq!(tools(&s.search_audit(&f, 10, false).await.unwrap()), ["b200", "b300", "b800"]);
            let f = AuditFilter { user: Some("alice".into()), since: Some(1_000_000), ..Default::default() };
            assert_eq!(tools(&s.search_audit(&f, 1, false).await.unwrap()), ["c5000000"]);
            let f = AuditFilter {
                tool: Some("a250".into()),
                outcome: Some("ok".into()),
                kind: Some("mcp.request".into()),
                ..Default::default()
            };
            assert_eq!(s.search_audit(&f, 10, false).await.unwrap()[0].record.seq, 3);
            assert!(
                s.search_audit(&AuditFilter { outcome: Some("denied".into()), ..Default::default() }, 10, false)
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .await;
    }

    #[tokio::test]
    async fn pruning_keeps_a_chain_that_verifies() {
        on_both(async |s: Store| {
            let k = key();
            for i in 1..=10 {
                s.append_audit(&k, "main", &[event("alice", &i.to_string(), i * 1_000)]).await.unwrap();
            }
            assert_eq!(s.prune_audit("main", 4_500).await.unwrap(), 4);
            assert_eq!(s.prune_audit("main", 4_500).await.unwrap(), 0, "nothing more to prune");
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.first, v.last), (6, 5, 10));
            // everything old: the head's record stays
            assert_eq!(s.prune_audit("main", 1_000_000).await.unwrap(), 5);
            assert_eq!(verify(&s, "main").await.unwrap().records, 1);
            s.append_audit(&k, "main", &[event("bob", "x", 2_000_000)]).await.unwrap();
            assert_eq!(verify(&s, "main").await.unwrap().last, 11);
            // a batch goes whole, once all its records are older
            let straddling = [event("bob", "y", 2_100_000), event("bob", "z", 2_900_000)];
            s.append_audit(&k, "main", &straddling).await.unwrap();
            assert_eq!(s.prune_audit("main", 2_500_000).await.unwrap(), 2);
            assert_eq!(s.prune_audit("main", 2_500_000).await.unwrap(), 0);
            let v = verify(&s, "main").await.unwrap();
            assert_eq!((v.records, v.first, v.last), (2, 12, 13));
            assert_eq!(s.prune_audit("nothing", 1).await.unwrap(), 0);
        })
        .await;
    }

    /// Records kept one per row before batches (migration 8) become
    /// batches of one, and the chain still verifies and is searched.
    async fn records_kept_one_per_row_become_batches(s: Store) {
        let k = key();
        on_pool!(&s.pool, p => {
            s.migrator().run_to(7, p).await.expect("migrations up to 7");
            let mut prev = GENESIS;
            for seq in 1..=3u64 {
                let e = event(if seq == 2 { "bob" } else { "alice" }, &format!("t{seq}"), seq as i64 * 1_000);
                let body = e.to_body();
                let mac = k.seal("main", seq, &prev, &body);
                sqlx::query(
                    "INSERT INTO audit_records (chain, seq, ts, kind, user_name, server, tool, outcome, body, mac)
                     VALUES ('main', $1, $2, 'mcp.request', $3, 'github', $4, 'ok', $5, $6)",
                )
                .bind(seq as i64)
                .bind(e.ts_micros())
                .bind(e.user.clone())
                .bind(e.tool.clone())
                .bind(body)
                .bind(&mac[..])
                .execute(p)
                .await
                .unwrap();
                prev = mac;
            }
            sqlx::query("INSERT INTO audit_heads (chain, seq, mac, anchor_seq, anchor_mac) VALUES ('main', 3, $1, 0, $2)")
                .bind(&prev[..])
                .bind(&GENESIS[..])
                .execute(p)
                .await
                .unwrap();
        });
        s.migrate().await.expect("the remaining migrations");
        assert_eq!(verify(&s, "main").await.unwrap().records, 3);
        let f = AuditFilter { user: Some("bob".into()), ..Default::default() };
        assert_eq!(s.search_audit(&f, 10, false).await.unwrap()[0].record.tool.as_deref(), Some("t2"));
        s.append_audit(&k, "main", &[event("carol", "t4", 4_000)]).await.unwrap();
        assert_eq!(verify(&s, "main").await.unwrap().records, 4);
    }

    #[tokio::test]
    async fn records_kept_one_per_row_become_batches_that_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = Store::connect(&crate::StoreSettings::sqlite(dir.path().join("old.db"))).await.unwrap();
        records_kept_one_per_row_become_batches(sqlite.clone()).await;
        sqlite.close().await;
        if let Some(db) = crate::testdb::PgTestDb::create_empty().await {
            records_kept_one_per_row_become_batches(db.store.clone()).await;
            db.drop().await;
        }
    }
}
