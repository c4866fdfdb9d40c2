//! The load engine: N concurrent clients, each with its own MCP session,
//! sending one request at a time.
//!
//! * Max-rate (closed loop): each client sends its next request as soon as
//!   the previous one is answered; latency is the service time.
//! * Fixed-rate (open loop): request `i` is due at `start + i / rate`,
//!   whichever client is free takes it. When every client was still busy at
//!   the due time, latency is counted from the due time, not from the late
//!   send, so a stalled server is charged for the requests it held back
//!   (coordinated-omission correction). A request whose client was idle is
//!   timed from its actual send, so the generator's own timer slack is not
//!   charged to the server.
//!
//! Runs stop at the duration or at the request cap, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::mcp::{CallError, Endpoint, Session};

/// What each request of a run is.
#[derive(Debug, Clone)]
pub enum Workload {
    /// A request in a session opened before the run starts.
    SessionCall { method: String, params: Value },
    /// A stateless (`2026-07-28`) request.
    StatelessCall { method: String, params: Value },
    /// A whole session set-up: `initialize`, `notifications/initialized`,
    /// `tools/list`. The session is closed (`DELETE`) after the timed part.
    Setup,
}

impl Workload {
    /// `tools/call` of `tool` with `args`.
    pub fn tool_call(stateless: bool, tool: &str, args: Value) -> Self {
        let method = "tools/call".to_string();
        let params = serde_json::json!({"name": tool, "arguments": args});
        if stateless { Workload::StatelessCall { method, params } } else { Workload::SessionCall { method, params } }
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workload: Workload,
    /// Concurrent clients (sessions).
    pub concurrency: usize,
    /// Requests per second over all clients; `None` for max rate.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Hard cap on the number of requests sent.
    pub max_requests: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        // Recorded in nanoseconds.
        let us = |v: u64| v as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// `max` or `fixed`.
    pub mode: &'static str,
    pub target_rate: Option<f64>,
    pub concurrency: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// A sample of the first error messages, for diagnosis.
    pub error_samples: Vec<String>,
    pub elapsed_s: f64,
    /// Successful requests per second.
    pub calls_per_s: f64,
    /// Latency of successful requests (corrected in fixed-rate mode).
    pub latency: Latency,
    /// Sessions that could not be opened before the run.
    pub setup_failures: u64,
    /// Fixed rate: requests that fell due within the run but were never sent
    /// because every session was still busy when it ended.
    pub unsent: u64,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits, in nanoseconds.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

struct WorkerOut {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    setup_failed: bool,
    last_done: Instant,
}

/// Runs one load and returns its statistics.
pub async fn run(endpoint: &Endpoint, spec: &LoadSpec) -> LoadResult {
    let concurrency = spec.concurrency.max(1);
    // Open the sessions first, a few at a time, outside the measurement.
    let mut sessions: Vec<Option<Result<Session, CallError>>> = Vec::with_capacity(concurrency);
    if matches!(spec.workload, Workload::SessionCall { .. }) {
        let opened = futures::stream::iter((0..concurrency).map(|_| endpoint.initialize()))
            .buffered(32.min(concurrency))
            .collect::<Vec<_>>()
            .await;
        sessions.extend(opened.into_iter().map(Some));
    } else {
        sessions.resize_with(concurrency, || None);
    }

    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for (worker, session) in sessions.into_iter().enumerate() {
        let endpoint = endpoint.clone();
        let spec = spec.clone();
        let tickets = tickets.clone();
        tasks.push(tokio::spawn(async move {
            worker_loop(&endpoint, &spec, worker as u64, session, &tickets, start, deadline).await
        }));
    }
    let mut hist = new_histogram();
    let mut ok = 0;
    let mut error_kinds = BTreeMap::new();
    let mut error_samples = Vec::new();
    let mut setup_failures = 0;
    let mut last_done = start;
    for t in tasks {
        let out = t.await.expect("worker panicked");
        hist.add(&out.hist).expect("same bounds");
        ok += out.ok;
        for (k, v) in out.errors {
            *error_kinds.entry(k).or_insert(0) += v;
        }
        for s in out.samples {
            if error_samples.len() < 5 && !error_samples.contains(&s) {
                error_samples.push(s);
            }
        }
        setup_failures += u64::from(out.setup_failed);
        last_done = last_done.max(out.last_done);
    }
    let errors: u64 = error_kinds.values().sum();
    let elapsed = last_done.duration_since(start).as_secs_f64().max(1e-9);
    LoadResult {
        mode: if spec.rate.is_some() { "fixed" } else { "max" },
        target_rate: spec.rate,
        concurrency,
        requests: ok + errors,
        ok,
        errors,
        error_kinds,
        error_samples,
        elapsed_s: elapsed,
        calls_per_s: ok as f64 / elapsed,
        latency: Latency::from_histogram(&hist),
        setup_failures,
        unsent: spec.rate.map_or(0, |rate| {
            let due = ((rate * spec.duration.as_secs_f64()).ceil() as u64).min(spec.max_requests);
            due.saturating_sub(ok + errors)
        }),
    }
}

async fn worker_loop(
    endpoint: &Endpoint,
    spec: &LoadSpec,
    worker: u64,
    session: Option<Result<Session, CallError>>,
    tickets: &AtomicU64,
    start: Instant,
    deadline: Instant,
) -> WorkerOut {
    let mut out = WorkerOut {
        hist: new_histogram(),
        ok: 0,
        errors: BTreeMap::new(),
        samples: Vec::new(),
        setup_failed: false,
        last_done: start,
    };
    let mut session = match session {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            out.setup_failed = true;
            out.errors.entry(format!("setup_{}", e.kind())).and_modify(|n| *n += 1).or_insert(1);
            out.samples.push(format!("session set-up: {e}"));
            return out;
        }
        None => None,
    };
    let mut stateless_id = worker << 40;
    loop {
        let ticket = tickets.fetch_add(1, Ordering::Relaxed);
        if ticket >= spec.max_requests {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            // Requests still due are not sent: a slow server's backlog must
            // not stretch the run past its duration. They count as unsent.
            break;
        }
        let t0 = match spec.rate {
            None => now,
            Some(rate) => {
                let due = start + Duration::from_secs_f64(ticket as f64 / rate);
                if due >= deadline {
                    break;
                }
                if now >= due {
                    // Every client was busy: charge the wait to the server.
                    due
                } else {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                }
            }
        };
        if t0 >= deadline {
            break;
        }
        let mut to_close = None;
        let res = match &spec.workload {
            Workload::SessionCall { method, params } => {
                let s = session.as_mut().expect("opened before the run");
                endpoint.request(s, method, params.clone()).await.map(drop)
            }
            Workload::StatelessCall { method, params } => {
                stateless_id += 1;
                endpoint.stateless(stateless_id, method, params.clone()).await.map(drop)
            }
            Workload::Setup => match endpoint.initialize().await {
                Ok(mut s) => {
                    let r = endpoint.request(&mut s, "tools/list", serde_json::json!({})).await.map(drop);
                    to_close = Some(s);
                    r
                }
                Err(e) => Err(e),
            },
        };
        let done = Instant::now();
        out.last_done = done;
        match res {
            Ok(()) => {
                out.ok += 1;
                let ns = done.duration_since(t0).as_nanos().min(u128::from(u64::MAX)) as u64;
                out.hist.saturating_record(ns.max(1_000));
            }
            Err(e) => {
                *out.errors.entry(e.kind()).or_insert(0) += 1;
                if out.samples.len() < 3 {
                    out.samples.push(e.to_string());
                }
            }
        }
        if let Some(s) = to_close {
            // Not timed: closing only keeps servers from piling up sessions.
            let _ = endpoint.close(s).await;
        }
    }
    if let Some(s) = session.take() {
        let _ = endpoint.close(s).await;
    }
    out
}
