//! What appending audit records costs the process, per record: a store
//! (SQLite in a temporary directory, or PostgreSQL given its URL as the
//! first argument) takes batches like the gateway's audit writer makes,
//! and the process's CPU time (all threads, the SQLite work included) is
//! divided by the records written.
//!
//! ```sh
//! cargo run --release -p bastion-store --example audit_append [POSTGRES_URL]
//! ```
//!
//! `USERS=N` spreads the records over N users (default 1: one client under
//! load); `POOL=N` caps the store's connections; `BATCH=N` sets the records
//! per batch (default 1000, the writer's); `RECORDS=N` the records written
//! (default 200,000); `DB=PATH` keeps the SQLite file there instead, so a
//! schema can be tried on it. Each batch's times are fresh, as a gateway's
//! are: the time index sees the order it sees in service.

use std::time::{Duration, Instant};

use bastion_audit::{AuditKey, Event, Outcome};
use bastion_store::{Store, StoreSettings};

/// CPU time of this process so far (user + system, all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Linux reports in USER_HZ, 100 per second on every supported target.
    Duration::from_millis(ticks * 10)
}

fn event(i: usize, users: usize) -> Event {
    let mut e = Event::new("mcp.request", Outcome::Ok);
    e.user = Some(format!("user-{}", i % users));
    e.auth = Some("api_key".into());
    e.client_ip = Some("127.0.0.1".into());
    e.session = Some("5f0c7c1e6a2b4d8f9e3a1b2c3d4e5f60".into());
    e.request_id = Some(format!("{i:032x}"));
    e.trace_id = Some(format!("{:032x}", i * 7919));
    e.method = Some("tools/call".into());
    e.server = Some("echo".into());
    e.tool = Some("echo".into());
    e.args_digest = Some("b5d4045c3f466fa91fe2cc6abe79232a1a57cdf104f7a26e716e0a1e2789df78".into());
    e.bytes_in = Some(120);
    e.bytes_out = Some(180);
    e.duration_us = Some(85);
    e
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let settings = match std::env::args().nth(1) {
        Some(url) => StoreSettings::postgres(&url).expect("a PostgreSQL URL"),
        None => StoreSettings::sqlite(std::env::var("DB").map_or(dir.path().join("bastion.db"), Into::into)),
    };
    let settings = match std::env::var("POOL") {
        Ok(n) => settings.with_pool(bastion_core::config::PoolConfig {
            max_connections: Some(n.parse().expect("POOL")),
            ..Default::default()
        }),
        Err(_) => settings,
    };
    let store = Store::open(&settings).await.expect("the store");
    let key = AuditKey::from_bytes(&[7; 32]);
    let users = std::env::var("USERS").map_or(1, |n| n.parse().expect("USERS"));
    let batch: usize = std::env::var("BATCH").map_or(1000, |n| n.parse().expect("BATCH"));
    let records: usize = std::env::var("RECORDS").map_or(200_000, |n| n.parse().expect("RECORDS"));
    let mut events: Vec<Event> = (0..batch).map(|i| event(i, users)).collect();
    let body = events[0].to_body();
    println!("record body: {} bytes", body.len());
    // Warm up: the tables and the statement cache.
    store.append_audit(&key, "bench", &events).await.expect("append");

    let (cpu0, t0) = (cpu_time(), Instant::now());
    for _ in 0..records / batch {
        let now = chrono::Utc::now();
        for (i, e) in events.iter_mut().enumerate() {
            e.ts = now + chrono::Duration::microseconds(i as i64);
        }
        store.append_audit(&key, "bench", &events).await.expect("append");
    }
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    let per = |d: Duration| d.as_secs_f64() * 1e6 / records as f64;
    println!(
        "{records} records in batches of {batch}: {:.2} µs of CPU and {:.2} µs of wall time per record",
        per(cpu),
        per(wall)
    );
}
