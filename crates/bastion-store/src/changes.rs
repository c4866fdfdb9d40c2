//! The change feed: how gateway processes sharing one store learn that
//! another one (or the CLI) wrote something they keep in memory.
//!
//! Each write that others must see bumps its topic's version in the
//! `changes` table, in the same transaction as the write (one statement
//! more). On PostgreSQL that statement also sends the topic as a
//! notification on [`CHANNEL`], which the server delivers on commit only.
//! [`Store::watch_changes`] yields the topics that changed:
//!
//! - PostgreSQL: a connection of its own `LISTEN`s on [`CHANNEL`]. When it
//!   is lost, it is opened again (with a growing pause between attempts)
//!   and then every topic of [`TOPICS`] is yielded once, since
//!   notifications sent meanwhile were missed.
//! - SQLite has no notifications: the `changes` table (a row per topic) is
//!   read every [`POLL_INTERVAL`], and the topics whose version moved are
//!   yielded.
//!
//! A topic says what to read again, not what changed; a reader that is
//! told too much only reads again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use sqlx::pool::CloseEvent;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use crate::db::{Fields, Pool, on_pool};
use crate::store::{Store, StoreError};

/// API keys created or revoked.
pub const KEYS: &str = "keys";
/// Users and administrator accounts.
pub const USERS: &str = "users";
/// The vault's secrets.
pub const SECRETS: &str = "secrets";
/// Pins of the tools and prompts servers list.
pub const PINS: &str = "pins";
/// Lockdowns set or lifted.
pub const LOCKDOWN: &str = "lockdown";
/// Every topic the store's writes bump.
pub const TOPICS: [&str; 5] = [KEYS, USERS, SECRETS, PINS, LOCKDOWN];

/// The PostgreSQL notification channel; the payload is the topic.
pub const CHANNEL: &str = "bastion_changes";
/// How often the SQLite feed reads the `changes` table.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Topics a feed holds before its task waits for the reader.
const FEED_CAPACITY: usize = 64;
/// The first pause before opening a lost PostgreSQL listener again.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long one attempt waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const BUMP_SQLITE: &str = "INSERT INTO changes (topic, version) VALUES ($1, 1)
     ON CONFLICT (topic) DO UPDATE SET version = changes.version + 1";
const BUMP_POSTGRES: &str = "WITH bumped AS (
         INSERT INTO changes (topic, version) VALUES ($1, 1)
         ON CONFLICT (topic) DO UPDATE SET version = changes.version + 1
         RETURNING topic
     )
     SELECT pg_notify($2, topic) FROM bumped";

/// Bumping a topic on a connection (or, through it, a transaction) of
/// either backend: one statement.
pub(crate) trait BumpChange {
    fn bump_change(&mut self, topic: &str) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl BumpChange for SqliteConnection {
    async fn bump_change(&mut self, topic: &str) -> Result<(), sqlx::Error> {
        sqlx::query(BUMP_SQLITE).bind(topic).execute(self).await.map(|_| ())
    }
}

impl BumpChange for PgConnection {
    async fn bump_change(&mut self, topic: &str) -> Result<(), sqlx::Error> {
        sqlx::query(BUMP_POSTGRES).bind(topic).bind(CHANNEL).execute(self).await.map(|_| ())
    }
}

impl Store {
    /// Bumps a topic on its own, for a change made outside the store's
    /// write methods (those bump their topic themselves).
    pub async fn bump_change(&self, topic: &str) -> Result<(), StoreError> {
        check_topic(topic)?;
        on_pool!(&self.pool, p => {
            let mut conn = p.acquire().await?;
            conn.bump_change(topic).await?;
        });
        Ok(())
    }

    /// Every topic's version, by topic (topics never bumped are absent).
    pub async fn change_versions(&self) -> Result<HashMap<String, i64>, StoreError> {
        on_pool!(&self.pool, p => {
            let rows = sqlx::query("SELECT topic, version FROM changes").fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.text("topic")?, r.int("version")?))).collect()
        })
    }

    /// Follows the writes made through any handle on this store's database
    /// (see the module documentation): the receiver yields the topics that
    /// changed after this returns. The task behind it ends when the
    /// receiver is dropped, or when the store is closed (the receiver then
    /// yields `None`).
    pub async fn watch_changes(&self) -> Result<mpsc::Receiver<String>, StoreError> {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        match &self.pool {
            Pool::Sqlite(p) => {
                let seen = self.change_versions().await?;
                let pool = p.clone();
                tokio::spawn(async move {
                    let stop = pin!(stopped(&tx, pool.close_event()));
                    poll_sqlite(&pool, seen, &tx, stop).await;
                });
            }
            Pool::Postgres(p) => {
                // A pool of one connection, outside the store's pool: the
                // listener keeps its connection for as long as it runs.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with((*p.connect_options()).clone());
                let listener = listen(&pool).await?;
                let store_closed = p.close_event();
                tokio::spawn(async move {
                    let stop = pin!(stopped(&tx, store_closed));
                    follow_postgres(&pool, listener, &tx, stop).await;
                    pool.close().await;
                });
            }
        }
        Ok(rx)
    }
}

/// Completes when a feed must end: its receiver was dropped, or the store
/// closed.
async fn stopped(tx: &mpsc::Sender<String>, store_closed: CloseEvent) {
    tokio::select! {
        () = tx.closed() => {}
        () = store_closed => {}
    }
}

fn check_topic(topic: &str) -> Result<(), StoreError> {
    if topic.is_empty() || topic.len() > 64 || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(StoreError::Invalid(format!("invalid change topic {topic:?}: 1 to 64 letters, digits and - _ .")));
    }
    Ok(())
}

/// The SQLite feed: reads the versions every [`POLL_INTERVAL`] and sends
/// the topics that moved since `seen`. A failed read is retried on the
/// next tick (what changed meanwhile is seen then).
async fn poll_sqlite(
    pool: &SqlitePool,
    mut seen: HashMap<String, i64>,
    tx: &mpsc::Sender<String>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let rows = match sqlx::query("SELECT topic, version FROM changes").fetch_all(pool).await {
            Ok(rows) => rows,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's changes; trying again");
                continue;
            }
        };
        for row in &rows {
            let (Ok(topic), Ok(version)) = (row.text("topic"), row.int("version")) else { continue };
            if seen.get(&topic) == Some(&version) {
                continue;
            }
            seen.insert(topic.clone(), version);
            if tx.send(topic).await.is_err() {
                return;
            }
        }
    }
}

/// A listener on [`CHANNEL`], its connection taken from `pool`.
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is opened again here, not inside the listener.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The PostgreSQL feed: sends each notification's topic; on a lost
/// connection, listens again and sends every topic.
async fn follow_postgres(
    pool: &PgPool,
    mut listener: PgListener,
    tx: &mpsc::Sender<String>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) {
    loop {
        let received = tokio::select! {
            r = listener.try_recv() => r,
            () = &mut stop => return,
        };
        match received {
            Ok(Some(n)) => {
                if tx.send(n.payload().to_owned()).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => tracing::warn!("the store's change notifications were interrupted; listening again"),
            Err(e) => tracing::warn!(error = %e, "the store's change notifications were interrupted; listening again"),
        }
        // The pool has one connection: the old listener gives it back
        // before a new one takes it.
        drop(listener);
        listener = match relisten(pool, stop.as_mut()).await {
            Some(l) => l,
            None => return,
        };
        for topic in TOPICS {
            if tx.send(topic.to_owned()).await.is_err() {
                return;
            }
        }
    }
}

/// Listens again, pausing between failed attempts (from
/// [`RECONNECT_FIRST`], doubling up to [`RECONNECT_MAX`]). `None` when the
/// feed was stopped meanwhile.
async fn relisten(pool: &PgPool, mut stop: Pin<&mut impl Future<Output = ()>>) -> Option<PgListener> {
    let mut pause = RECONNECT_FIRST;
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut stop => return None,
        }
        let attempt = tokio::select! {
            r = listen(pool) => r,
            () = &mut stop => return None,
        };
        match attempt {
            Ok(l) => {
                tracing::info!("listening to the store's change notifications again");
                return Some(l);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot listen to the store's change notifications");
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sqlx::Connection;

    use super::*;
    use crate::testdb::{PgTestDb, on_both, test_pool};
    use bastion_core::access::Role;

    use crate::admins::TotpSecret;
    use crate::{NewApiKey, NewUser, OwnerKind, PinRecord, StoreSettings};

    /// The next topic of a feed, failing after two seconds.
    async fn next(feed: &mut mpsc::Receiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(2), feed.recv())
            .await
            .expect("a change within two seconds")
            .expect("the feed is open")
    }

    /// Whether the feed yields nothing for a little longer than a poll.
    async fn quiet(feed: &mut mpsc::Receiver<String>) -> bool {
        tokio::time::timeout(POLL_INTERVAL * 2, feed.recv()).await.is_err()
    }

    fn key(id: &str) -> NewApiKey {
        NewApiKey {
            id: id.into(),
            user: "alice".into(),
            display_prefix: "bst_abcd".into(),
            hash: format!("hash-{id}"),
            expires_at: None,
            max_uses: None,
            description: None,
        }
    }

    /// Writes through `writer` are seen on `reader`'s feed.
    async fn check_feed(writer: &Store, reader: &Store) {
        let mut feed = reader.watch_changes().await.unwrap();
        assert!(quiet(&mut feed).await, "nothing changed yet");

        let started = Instant::now();
        writer.insert_key(&key("k1")).await.unwrap();
        assert_eq!(next(&mut feed).await, KEYS);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

        writer.set_lockdown("*", Some("incident"), Some("ops")).await.unwrap();
        assert_eq!(next(&mut feed).await, LOCKDOWN);
        // A write that changes nothing bumps nothing.
        assert!(!writer.revoke_key("nope").await.unwrap());
        assert!(quiet(&mut feed).await);

        writer.bump_change("custom").await.unwrap();
        assert_eq!(next(&mut feed).await, "custom");
        assert!(matches!(writer.bump_change("").await, Err(StoreError::Invalid(_))));
    }

    #[tokio::test]
    async fn writes_on_one_handle_are_seen_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let a = Store::open_sqlite(&path).await.unwrap();
        let b = Store::open_sqlite(&path).await.unwrap();
        check_feed(&a, &b).await;
        a.close().await;
        b.close().await;

        if let Some(db) = PgTestDb::create().await {
            let other =
                Store::connect(&StoreSettings::postgres_with(db.options.clone()).with_pool(test_pool())).await.unwrap();
            check_feed(&db.store, &other).await;
            other.close().await;
            db.drop().await;
        }
    }

    #[tokio::test]
    async fn write_methods_bump_their_topic() {
        on_both(async |s: Store| {
            let version = async |topic: &str| s.change_versions().await.unwrap().get(topic).copied().unwrap_or(0);
            // Each step must move its topic by `moves` and leave the others.
            let mut expected: HashMap<&str, i64> = HashMap::new();
            let mut step = async |topic: &'static str, moves: i64| {
                *expected.entry(topic).or_default() += moves;
                for t in TOPICS {
                    assert_eq!(version(t).await, expected.get(t).copied().unwrap_or(0), "{t} after a {topic} write");
                }
            };

            s.insert_key(&key("k1")).await.unwrap();
            step(KEYS, 1).await;
            assert!(s.revoke_key("k1").await.unwrap());
            assert!(!s.revoke_key("k1").await.unwrap());
            s.record_key_use("k1", 1, chrono::Utc::now()).await.unwrap();
            step(KEYS, 1).await;

            let alice = NewUser { name: "alice".into(), role: Role::User, groups: vec![] };
            assert!(s.insert_user(&alice).await.unwrap());
            assert!(!s.insert_user(&alice).await.unwrap());
            s.upsert_user(&alice).await.unwrap();
            assert!(s.update_user("alice", Some(Role::Viewer), None).await.unwrap().is_some());
            assert!(s.update_user("nobody", Some(Role::Viewer), None).await.unwrap().is_none());
            assert!(s.delete_user("alice").await.unwrap());
            step(USERS, 4).await;
            let hash = crate::admins::hash_password("a long enough password").unwrap();
            assert!(s.create_admin("root", &hash).await.unwrap());
            assert!(s.set_admin_password("root", &hash).await.unwrap());
            assert!(s.set_admin_totp("root", Some(&TotpSecret::generate()), None).await.unwrap());
            assert!(s.confirm_admin_totp("root", 1).await.unwrap());
            assert!(s.delete_admin("root").await.unwrap());
            assert!(!s.delete_admin("root").await.unwrap());
            step(USERS, 5).await;

            s.put_secret(OwnerKind::Server, "files", "TOKEN", "k1", b"sealed").await.unwrap();
            let read = s.get_secret(OwnerKind::Server, "files", "TOKEN").await.unwrap().unwrap();
            assert!(s.rewrap_secret(&read, "k2", b"resealed").await.unwrap());
            assert!(!s.rewrap_secret(&read, "k2", b"resealed").await.unwrap());
            assert!(s.delete_secret(OwnerKind::Server, "files", "TOKEN").await.unwrap());
            step(SECRETS, 3).await;

            let pin = PinRecord {
                server: "files".into(),
                kind: "tool".into(),
                name: "read".into(),
                state: "pending".into(),
                reason: None,
                approved_hash: None,
                approved_definition: None,
                approved_by: None,
                seen_hash: "aa".into(),
                seen_definition: "{}".into(),
                version: 0,
                created_at: chrono::Utc::now(),
                updated_at: chrono::Utc::now(),
            };
            let written = s.write_pin(&pin, None).await.unwrap().unwrap();
            assert!(s.write_pin(&pin, None).await.unwrap().is_none());
            assert!(s.write_pin(&pin, Some(written.version)).await.unwrap().is_some());
            assert_eq!(s.delete_pins("files", None).await.unwrap(), 1);
            assert_eq!(s.delete_pins("files", None).await.unwrap(), 0);
            step(PINS, 3).await;

            s.set_lockdown("files", None, None).await.unwrap();
            s.set_lockdown("files", Some("again"), None).await.unwrap();
            assert!(s.clear_lockdown("files").await.unwrap());
            assert!(!s.clear_lockdown("files").await.unwrap());
            step(LOCKDOWN, 3).await;
        })
        .await;
    }

    /// The connections listening on the store's database.
    async fn listeners(options: &sqlx::postgres::PgConnectOptions) -> i64 {
        let mut admin = PgConnection::connect_with(options).await.unwrap();
        let n = sqlx::query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .int("n")
        .unwrap();
        let _ = admin.close().await;
        n
    }

    #[tokio::test]
    async fn the_feed_ends_with_its_receiver_or_the_store() {
        on_both(async |s: Store| {
            // Closing the store ends the feed.
            let mut feed = s.watch_changes().await.unwrap();
            let other = s.watch_changes().await.unwrap();
            s.close().await;
            let end = tokio::time::timeout(Duration::from_secs(2), feed.recv()).await;
            assert_eq!(end, Ok(None), "the feed ends when the store closes");
            drop(other);
        })
        .await;

        // A dropped receiver ends the task, and its listening connection.
        let Some(db) = PgTestDb::create().await else { return };
        let feed = db.store.watch_changes().await.unwrap();
        assert_eq!(listeners(&db.options).await, 1);
        drop(feed);
        let started = Instant::now();
        while listeners(&db.options).await > 0 {
            assert!(started.elapsed() < Duration::from_secs(2), "the listener is still connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db.store.bump_change(KEYS).await.unwrap();
        db.drop().await;
    }

    #[tokio::test]
    async fn a_lost_listener_listens_again_and_reports_every_topic() {
        let Some(db) = PgTestDb::create().await else { return };
        let mut feed = db.store.watch_changes().await.unwrap();
        let mut admin = PgConnection::connect_with(&db.options).await.unwrap();
        let killed = sqlx::query(
            "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .int("n")
        .unwrap();
        let _ = admin.close().await;
        assert_eq!(killed, 1, "the listener's connection");
        let mut got = Vec::new();
        for _ in TOPICS {
            got.push(next(&mut feed).await);
        }
        got.sort();
        let mut all = TOPICS.map(String::from).to_vec();
        all.sort();
        assert_eq!(got, all);
        // And it listens again.
        db.store.bump_change(PINS).await.unwrap();
        assert_eq!(next(&mut feed).await, PINS);
        drop(feed);
        db.drop().await;
    }
}
