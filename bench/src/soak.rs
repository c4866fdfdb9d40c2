//! Soak mode: Bastion in front of the echo fixture, over stdio and over
//! Streamable HTTP, for minutes under a bounded, steady, mixed load in both
//! protocol eras, with the gateway's memory, descriptors and threads read
//! from `/proc` at every interval.
//!
//! The load, paced (each worker has its own fixed period, so the rate stays
//! steady whatever the latency):
//! * session-era workers (`2025-11-25`): `initialize` with
//!   `Mcp-Session-Id`, an open `GET` stream, then `tools/call echo`,
//!   `tools/list` and `ping`; every `churn_every` the session is ended with
//!   `DELETE` (its `GET` stream must end with it) and a new one opened;
//! * stateless workers (`2026-07-28`): `tools/call echo`, `tools/list` and
//!   `server/discover`, no session;
//! * one fault worker, one fault at a time: a call the gateway times out
//!   (`callTimeout`), a call the client cancels with
//!   `notifications/cancelled`, and calls the client gives up on (session
//!   and stateless). Each fault has one expected outcome; any other is an
//!   error. After a session fault the session must still answer `ping`.
//!
//! Workers spread over three endpoints: the stdio server (`/mcp/echo`),
//! the HTTP server (`/mcp/echo-http`) and the aggregate (`/mcp`). The echo
//! fixture has no resources, so the mix has no `resources/*` requests.
//!
//! The gateway runs with its default per-principal limits: a session, stream
//! or in-flight slot that is never given back shows up as `429` errors
//! within minutes.
//!
//! At the end the sessions are closed, the gateway is stopped with SIGTERM
//! and must exit, with its stdio server, within `SHUTDOWN_LIMIT`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::contestant::{self, Bins, Kind, Running, Upstream};
use crate::load::Latency;
use crate::mcp::{CallError, Endpoint, Session};
use crate::procs;
use crate::suite::{Machine, machine};

/// How long the gateway may take to exit after SIGTERM once its sessions are
/// closed: its default `shutdown_grace` (10 s) and a margin.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// Knobs of a soak run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub smoke: bool,
    #[serde(rename = "duration_s", serialize_with = "secs")]
    pub duration: Duration,
    /// Time between two samples; the first interval is the warm-up.
    #[serde(rename = "interval_s", serialize_with = "secs")]
    pub interval: Duration,
    /// Requests per second over all paced workers (faults not included).
    pub rate: f64,
    /// Workers: session-era, stateless and one fault worker.
    pub workers: usize,
    /// A session-era worker ends its session and opens a new one this often.
    #[serde(rename = "churn_every_s", serialize_with = "secs")]
    pub churn_every: Duration,
    /// Pause between two faults.
    #[serde(rename = "fault_every_s", serialize_with = "secs")]
    pub fault_every: Duration,
    /// The servers' `callTimeout` in the gateway's config.
    #[serde(rename = "call_timeout_s", serialize_with = "secs")]
    pub call_timeout: Duration,
    /// The client's bound on each exchange.
    #[serde(rename = "client_timeout_s", serialize_with = "secs")]
    pub timeout: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Settings {
    /// A run of `duration`; `smoke` for the seconds-long check.
    pub fn new(duration: Duration, smoke: bool) -> Self {
        let mut s = if smoke {
            Settings {
                smoke,
                duration,
                interval: Duration::ZERO,
                rate: 100.0,
                workers: 8,
                churn_every: Duration::from_secs(4),
                fault_every: Duration::from_millis(500),
                call_timeout: Duration::from_secs(2),
                timeout: Duration::from_secs(10),
            }
        } else {
            Settings {
                smoke,
                duration,
                interval: Duration::ZERO,
                rate: 500.0,
                workers: 12,
                churn_every: Duration::from_secs(20),
                fault_every: Duration::from_secs(3),
                call_timeout: Duration::from_secs(2),
                timeout: Duration::from_secs(10),
            }
        };
        s.set_interval(None);
        s
    }

    /// Every minute for runs of 3 minutes or more, else a tenth of the run
    /// (at least a second); rounded so that the run is a whole number of
    /// intervals.
    pub fn set_interval(&mut self, wanted: Option<Duration>) {
        let d = self.duration.as_secs_f64();
        let wanted = wanted.map_or(if d >= 180.0 { 60.0 } else { (d / 10.0).max(1.0) }, |w| w.as_secs_f64());
        let n = (d / wanted.max(0.1)).round().max(1.0);
        self.interval = Duration::from_secs_f64(d / n);
    }

    fn intervals(&self) -> usize {
        (self.duration.as_secs_f64() / self.interval.as_secs_f64()).round().max(1.0) as usize
    }

    /// Session-era, stateless workers (the fault worker is the last one).
    fn split(&self) -> (usize, usize) {
        let paced = self.workers.max(3) - 1;
        let session = paced.div_ceil(2);
        (session, paced - session)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Era {
    /// `2025-11-25`, with `Mcp-Session-Id`.
    Session,
    /// `2026-07-28`, no session.
    Stateless,
}

impl Era {
    fn name(self) -> &'static str {
        match self {
            Era::Session => "session",
            Era::Stateless => "stateless",
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits, in nanoseconds.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    h.saturating_record(ns.max(1_000));
}

/// What happened in one interval.
struct Bucket {
    hist: Histogram<u64>,
    ok: [u64; 2],
    errors: u64,
    expected: u64,
    sessions_opened: u64,
    sessions_closed: u64,
}

impl Bucket {
    fn new() -> Self {
        Bucket { hist: new_histogram(), ok: [0; 2], errors: 0, expected: 0, sessions_opened: 0, sessions_closed: 0 }
    }
}

struct OpAcc {
    ok: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// What happened over the whole run.
struct Totals {
    hist: Histogram<u64>,
    ops: BTreeMap<(Era, &'static str), OpAcc>,
    errors: BTreeMap<String, u64>,
    expected: BTreeMap<String, u64>,
    samples: Vec<String>,
    sessions_opened: u64,
    sessions_closed: u64,
    streams_opened: u64,
    streams_ended_by_delete: u64,
}

struct Recorder {
    start: Instant,
    interval: Mutex<Bucket>,
    total: Mutex<Totals>,
}

impl Recorder {
    fn new(start: Instant) -> Self {
        Recorder {
            start,
            interval: Mutex::new(Bucket::new()),
            total: Mutex::new(Totals {
                hist: new_histogram(),
                ops: BTreeMap::new(),
                errors: BTreeMap::new(),
                expected: BTreeMap::new(),
                samples: Vec::new(),
                sessions_opened: 0,
                sessions_closed: 0,
                streams_opened: 0,
                streams_ended_by_delete: 0,
            }),
        }
    }

    fn op<'a>(t: &'a mut Totals, era: Era, op: &'static str) -> &'a mut OpAcc {
        t.ops.entry((era, op)).or_insert_with(|| OpAcc { ok: 0, errors: 0, hist: new_histogram() })
    }

    fn ok(&self, era: Era, op: &'static str, d: Duration) {
        {
            let mut b = self.interval.lock().expect("poisoned");
            record(&mut b.hist, d);
            b.ok[era as usize] += 1;
        }
        let mut t = self.total.lock().expect("poisoned");
        record(&mut t.hist, d);
        let acc = Self::op(&mut t, era, op);
        acc.ok += 1;
        record(&mut acc.hist, d);
    }

    /// A request that failed.
    fn fail(&self, era: Era, op: &'static str, e: &CallError) {
        Self::op(&mut self.total.lock().expect("poisoned"), era, op).errors += 1;
        self.problem(format!("{} {op}: {}", era.name(), e.kind()), e.to_string());
    }

    /// An unexpected outcome: counted by `kind`, the first ones kept whole.
    fn problem(&self, kind: String, detail: String) {
        self.interval.lock().expect("poisoned").errors += 1;
        let at = self.start.elapsed().as_secs_f64();
        let mut t = self.total.lock().expect("poisoned");
        if t.samples.len() < 20 {
            t.samples.push(format!("{at:.1} s: {kind}: {detail}"));
        }
        *t.errors.entry(kind).or_insert(0) += 1;
    }

    /// A fault that ended the way it should.
    fn expected(&self, kind: String) {
        self.interval.lock().expect("poisoned").expected += 1;
        *self.total.lock().expect("poisoned").expected.entry(kind).or_insert(0) += 1;
    }

    fn session_opened(&self) {
        self.interval.lock().expect("poisoned").sessions_opened += 1;
        self.total.lock().expect("poisoned").sessions_opened += 1;
    }

    fn session_closed(&self) {
        self.interval.lock().expect("poisoned").sessions_closed += 1;
        self.total.lock().expect("poisoned").sessions_closed += 1;
    }

    fn take_interval(&self) -> Bucket {
        std::mem::replace(&mut *self.interval.lock().expect("poisoned"), Bucket::new())
    }

    fn totals(&self) -> TotalStats {
        let t = self.total.lock().expect("poisoned");
        let per_op: Vec<OpStats> = t
            .ops
            .iter()
            .map(|(&(era, op), a)| OpStats {
                era,
                op,
                ok: a.ok,
                errors: a.errors,
                latency: Latency::from_histogram(&a.hist),
            })
            .collect();
        let era_ok = |e: Era| per_op.iter().filter(|o| o.era == e).map(|o| o.ok).sum::<u64>();
        let ok = per_op.iter().map(|o| o.ok).sum::<u64>();
        TotalStats {
            calls: ok + per_op.iter().map(|o| o.errors).sum::<u64>(),
            ok,
            session_ok: era_ok(Era::Session),
            stateless_ok: era_ok(Era::Stateless),
            errors: t.errors.values().sum::<u64>(),
            errors_by_kind: t.errors.clone(),
            error_samples: t.samples.clone(),
            faults_by_kind: t.expected.clone(),
            latency: Latency::from_histogram(&t.hist),
            per_op,
            sessions_opened: t.sessions_opened,
            sessions_closed: t.sessions_closed,
            get_streams_opened: t.streams_opened,
            get_streams_ended_by_delete: t.streams_ended_by_delete,
        }
    }
}

/// One endpoint of the gateway and the tool names it serves.
#[derive(Clone)]
struct Target {
    name: &'static str,
    ep: Endpoint,
    /// `echo` tools to call, in turn.
    echo: Vec<String>,
    sleep: String,
}

struct Shared {
    settings: Settings,
    rec: Recorder,
    start: Instant,
    deadline: Instant,
    /// Paced requests left: a run is bounded in count as well as in time.
    tickets: AtomicU64,
    exhausted: AtomicBool,
}

impl Shared {
    fn over(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn take_ticket(&self) -> bool {
        let ok = self.tickets.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !ok {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Sleeps `d`, or until the run ends.
    async fn pause(&self, d: Duration) {
        let until = (Instant::now() + d).min(self.deadline);
        tokio::time::sleep_until(until.into()).await;
    }

    /// A ticker with this worker's share of the rate, its first tick
    /// offset so that the workers do not send in step.
    fn ticker(&self, worker: usize, paced: usize) -> tokio::time::Interval {
        let period = Duration::from_secs_f64(paced as f64 / self.settings.rate.max(0.001));
        let offset = period.mul_f64(worker as f64 / paced as f64);
        let mut t = tokio::time::interval_at((self.start + offset).into(), period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }
}

fn echo_params(tool: &str) -> Value {
    json!({"name": tool, "arguments": {"text": "soak"}})
}

/// The `k`-th request of a session-era worker: 6 in 10 `tools/call`, then
/// `tools/list` and `ping`.
fn session_request(t: &Target, k: usize) -> (&'static str, Value) {
    match k % 10 {
        6 | 7 => ("tools/list", json!({})),
        8 | 9 => ("ping", json!({})),
        _ => ("tools/call", echo_params(&t.echo[k % t.echo.len()])),
    }
}

/// The `k`-th stateless request: 7 in 10 `tools/call`, then `tools/list`
/// and `server/discover`.
fn stateless_request(t: &Target, k: usize) -> (&'static str, Value) {
    match k % 10 {
        7 | 8 => ("tools/list", json!({})),
        9 => ("server/discover", json!({})),
        _ => ("tools/call", echo_params(&t.echo[k % t.echo.len()])),
    }
}

/// How a `GET` stream ended.
struct StreamEnd {
    how: String,
    bytes: u64,
}

async fn read_stream(resp: reqwest::Response) -> StreamEnd {
    let mut body = resp.bytes_stream();
    let mut bytes = 0;
    loop {
        match body.next().await {
            Some(Ok(chunk)) => bytes += chunk.len() as u64,
            Some(Err(e)) => return StreamEnd { how: format!("broke off: {e}"), bytes },
            None => return StreamEnd { how: "ended".into(), bytes },
        }
    }
}

async fn open_session(sh: &Shared, t: &Target) -> Option<Session> {
    let t0 = Instant::now();
    match t.ep.initialize().await {
        Ok(s) => {
            sh.rec.ok(Era::Session, "initialize", t0.elapsed());
            sh.rec.session_opened();
            Some(s)
        }
        Err(e) => {
            sh.rec.fail(Era::Session, "initialize", &e);
            None
        }
    }
}

/// Ends a session with `DELETE`; its `GET` stream, if any, must have stayed
/// open until then and must end with it.
async fn close_session(sh: &Shared, t: &Target, s: Session, stream: Option<JoinHandle<StreamEnd>>) {
    let mut stream = stream;
    if let Some(h) = stream.take_if(|h| h.is_finished()) {
        let end = h.await.unwrap_or_else(|e| StreamEnd { how: format!("reader failed: {e}"), bytes: 0 });
        sh.rec.problem(
            "session GET stream: ended while the session was open".into(),
            format!("{} endpoint, {} after {} bytes", t.name, end.how, end.bytes),
        );
    }
    let t0 = Instant::now();
    match t.ep.close(s).await {
        Ok(()) => {
            sh.rec.ok(Era::Session, "DELETE", t0.elapsed());
            sh.rec.session_closed();
        }
        Err(e) => sh.rec.fail(Era::Session, "DELETE", &e),
    }
    if let Some(mut h) = stream {
        match tokio::time::timeout(Duration::from_secs(2), &mut h).await {
            Ok(_) => sh.rec.total.lock().expect("poisoned").streams_ended_by_delete += 1,
            Err(_) => {
                h.abort();
                sh.rec
                    .problem("session GET stream: still open 2 s after DELETE".into(), format!("{} endpoint", t.name));
            }
        }
    }
}

async fn session_worker(sh: Arc<Shared>, t: Target, worker: usize, paced: usize) {
    let mut ticks = sh.ticker(worker, paced);
    let mut k = worker;
    // The first churn is staggered so that sessions do not all end at once.
    let mut churn_at = Instant::now() + sh.settings.churn_every.mul_f64((worker + 1) as f64 / (paced + 1) as f64);
    let stream_limit = sh.settings.duration + Duration::from_secs(60);
    while !sh.over() {
        let Some(mut s) = open_session(&sh, &t).await else {
            sh.pause(Duration::from_secs(1)).await;
            continue;
        };
        let t0 = Instant::now();
        let stream = match t.ep.open_stream(&s, stream_limit).await {
            Ok(resp) => {
                sh.rec.ok(Era::Session, "GET stream", t0.elapsed());
                sh.rec.total.lock().expect("poisoned").streams_opened += 1;
                Some(tokio::spawn(read_stream(resp)))
            }
            Err(e) => {
                sh.rec.fail(Era::Session, "GET stream", &e);
                None
            }
        };
        while Instant::now() < churn_at {
            ticks.tick().await;
            if sh.over() || !sh.take_ticket() {
                break;
            }
            let (method, params) = session_request(&t, k);
            k += 1;
            let t0 = Instant::now();
            match t.ep.request(&mut s, method, params).await {
                Ok(_) => sh.rec.ok(Era::Session, method, t0.elapsed()),
                Err(e) => sh.rec.fail(Era::Session, method, &e),
            }
        }
        churn_at = Instant::now() + sh.settings.churn_every;
        close_session(&sh, &t, s, stream).await;
    }
}

async fn stateless_worker(sh: Arc<Shared>, t: Target, worker: usize, paced: usize) {
    let mut ticks = sh.ticker(worker, paced);
    let mut k = worker;
    let mut id = (worker as u64) << 40;
    loop {
        ticks.tick().await;
        if sh.over() || !sh.take_ticket() {
            break;
        }
        let (method, params) = stateless_request(&t, k);
        k += 1;
        id += 1;
        let t0 = Instant::now();
        match t.ep.stateless(id, method, params).await {
            Ok(_) => sh.rec.ok(Era::Stateless, method, t0.elapsed()),
            Err(e) => sh.rec.fail(Era::Stateless, method, &e),
        }
    }
}

/// The faults, in turn.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `tools/call sleep` longer than `callTimeout`: the gateway answers
    /// `-32001`.
    GatewayTimeout(Era),
    /// `tools/call sleep`, then `notifications/cancelled` for it: the
    /// gateway answers the `POST` with `202` and no response.
    Cancel,
    /// `tools/call sleep`, and the client gives up (closes its connection)
    /// after 300 ms.
    Abandon(Era),
}

const FAULTS: [Fault; 5] = [
    Fault::GatewayTimeout(Era::Session),
    Fault::Cancel,
    Fault::Abandon(Era::Session),
    Fault::Abandon(Era::Stateless),
    Fault::GatewayTimeout(Era::Stateless),
];

impl Fault {
    fn era(self) -> Era {
        match self {
            Fault::GatewayTimeout(e) | Fault::Abandon(e) => e,
            Fault::Cancel => Era::Session,
        }
    }

    fn name(self) -> String {
        let what = match self {
            Fault::GatewayTimeout(_) => "call timed out by the gateway (-32001)",
            Fault::Cancel => "call cancelled (notifications/cancelled → 202)",
            Fault::Abandon(_) => "call abandoned by the client after 300 ms",
        };
        format!("{} {what}", self.era().name())
    }
}

async fn fault_worker(sh: Arc<Shared>, targets: Vec<Target>) {
    let mut sessions: Vec<Option<Session>> = targets.iter().map(|_| None).collect();
    let longest = sh.settings.call_timeout + Duration::from_secs(3);
    let mut n = 0usize;
    let mut id = 1u64 << 60;
    loop {
        sh.pause(sh.settings.fault_every).await;
        // A fault is not started when it could outlast the run.
        if sh.deadline.saturating_duration_since(Instant::now()) < longest {
            break;
        }
        let fault = FAULTS[n % FAULTS.len()];
        // 5 faults and 3 endpoints: every pair comes up within 15 faults.
        let ti = n % targets.len();
        n += 1;
        let t = &targets[ti];
        let outcome = match fault.era() {
            Era::Stateless => {
                id += 1;
                stateless_fault(&sh, t, fault, id).await
            }
            Era::Session => {
                if sessions[ti].is_none() {
                    sessions[ti] = open_session(&sh, t).await;
                }
                let Some(s) = sessions[ti].as_mut() else { continue };
                let outcome = session_fault(&sh, t, fault, s).await;
                // The session outlives the fault.
                let t0 = Instant::now();
                match t.ep.request(s, "ping", json!({})).await {
                    Ok(_) => sh.rec.ok(Era::Session, "ping", t0.elapsed()),
                    Err(e) => {
                        sh.rec.fail(Era::Session, "ping", &e);
                        if let Some(s) = sessions[ti].take() {
                            close_session(&sh, t, s, None).await;
                        }
                    }
                }
                outcome
            }
        };
        match outcome {
            Ok(()) => sh.rec.expected(fault.name()),
            Err(what) => sh.rec.problem(format!("fault: {}", fault.name()), format!("{} endpoint: {what}", t.name)),
        }
    }
    for (t, s) in targets.iter().zip(sessions) {
        if let Some(s) = s {
            close_session(&sh, t, s, None).await;
        }
    }
}

fn sleep_params(t: &Target, d: Duration) -> Value {
    json!({"name": t.sleep, "arguments": {"ms": d.as_millis() as u64}})
}

fn unexpected(r: Result<Value, CallError>) -> String {
    match r {
        Ok(_) => "answered with a result".into(),
        Err(e) => e.to_string(),
    }
}

async fn session_fault(sh: &Shared, t: &Target, fault: Fault, s: &mut Session) -> Result<(), String> {
    let past_timeout = sh.settings.call_timeout + Duration::from_secs(1);
    match fault {
        Fault::GatewayTimeout(_) => match t.ep.request(s, "tools/call", sleep_params(t, past_timeout)).await {
            Err(CallError::Rpc(-32001)) => Ok(()),
            r => Err(unexpected(r)),
        },
        Fault::Abandon(_) => {
            let ep = t.ep.with_request_timeout(Duration::from_millis(300));
            match ep.request(s, "tools/call", sleep_params(t, past_timeout)).await {
                Err(CallError::Timeout) => Ok(()),
                r => Err(unexpected(r)),
            }
        }
        Fault::Cancel => {
            let id = s.next_request_id();
            let same = s.clone();
            let call = t.ep.request(s, "tools/call", sleep_params(t, Duration::from_secs(5)));
            let cancel = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let params = json!({"requestId": id, "reason": "the soak cancels it"});
                t.ep.notify(&same, "notifications/cancelled", params).await
            };
            let (call, cancel) = tokio::join!(call, cancel);
            if let Err(e) = cancel {
                return Err(format!("notifications/cancelled: {e}"));
            }
            match call {
                // Answered with no response, on a JSON or an event stream.
                Err(CallError::Status(202)) => Ok(()),
                Err(CallError::Protocol(m)) if m.contains("without the response") => Ok(()),
                r => Err(unexpected(r)),
            }
        }
    }
}

async fn stateless_fault(sh: &Shared, t: &Target, fault: Fault, id: u64) -> Result<(), String> {
    let params = sleep_params(t, sh.settings.call_timeout + Duration::from_secs(1));
    match fault {
        Fault::GatewayTimeout(_) => match t.ep.stateless(id, "tools/call", params).await {
            Err(CallError::Rpc(-32001)) => Ok(()),
            r => Err(unexpected(r)),
        },
        Fault::Abandon(_) => {
            let ep = t.ep.with_request_timeout(Duration::from_millis(300));
            match ep.stateless(id, "tools/call", params).await {
                Err(CallError::Timeout) => Ok(()),
                r => Err(unexpected(r)),
            }
        }
        Fault::Cancel => unreachable!("cancellation is a session-era fault"),
    }
}

/// The gateway at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcSample {
    /// Seconds since the load started (negative: before it).
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: Option<usize>,
    pub threads: u64,
    /// The gateway and its stdio server together.
    pub tree_rss_kib: u64,
    pub processes: usize,
    /// The gateway's own CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    /// The gateway's descriptors by kind: `tcp gateway in` are client
    /// connections, `tcp → HTTP server` its connections to that server.
    pub fd_kinds: BTreeMap<String, usize>,
}

fn proc_sample(pid: u32, start: Instant, ports: &[(u16, &str)]) -> ProcSample {
    let tree = procs::sample(pid);
    ProcSample {
        t_s: Instant::now().saturating_duration_since(start).as_secs_f64(),
        rss_kib: procs::rss_kib(pid),
        fds: procs::fd_count(pid),
        threads: procs::threads(pid),
        tree_rss_kib: tree.tree_rss_kib,
        processes: tree.processes,
        cpu_ticks: tree.root_ticks,
        fd_kinds: procs::fd_kinds(pid, ports),
    }
}

/// One interval of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub index: usize,
    pub warmup: bool,
    pub end_s: f64,
    /// Requests that ended (ok or with an error); faults not included.
    pub calls: u64,
    pub session_ok: u64,
    pub stateless_ok: u64,
    /// Unexpected outcomes of any kind.
    pub errors: u64,
    /// Faults that ended as they should.
    pub faults: u64,
    pub calls_per_s: f64,
    pub latency: Latency,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    /// The gateway's CPU time as a share of one core, and per request.
    pub gateway_cpu_percent: Option<f64>,
    pub gateway_cpu_us_per_call: Option<f64>,
    /// The whole machine's busy share (load generator and upstreams too),
    /// and the share the hypervisor stole.
    pub machine_busy_percent: Option<f64>,
    pub steal_percent: Option<f64>,
    /// Lines the gateway logged at WARN and ERROR during the interval.
    pub log_warnings: u64,
    pub log_errors: u64,
    pub gateway: ProcSample,
}

/// Change over the run after the warm-up interval.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub first: f64,
    pub last: f64,
    /// `last - first`.
    pub delta: f64,
    /// Least-squares slope per minute over every sample after the warm-up.
    pub slope_per_min: Option<f64>,
}

impl Drift {
    fn of(points: &[(f64, f64)]) -> Option<Drift> {
        let (first, last) = (points.first()?.1, points.last()?.1);
        Some(Drift { first, last, delta: last - first, slope_per_min: slope(points) })
    }
}

/// Least-squares slope of `(seconds, value)` points, per minute.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx * 60.0)
}

#[derive(Debug, Clone, Serialize)]
pub struct Drifts {
    /// The sample the drift starts from: the end of the warm-up interval.
    pub from_s: f64,
    pub to_s: f64,
    pub rss_kib: Option<Drift>,
    pub fds: Option<Drift>,
    pub threads: Option<Drift>,
    pub tree_rss_kib: Option<Drift>,
}

impl Drifts {
    /// From the sample that ends the warm-up interval (the first) to the last.
    fn of(intervals: &[Interval]) -> Drifts {
        let points = |f: &dyn Fn(&ProcSample) -> Option<f64>| -> Vec<(f64, f64)> {
            intervals.iter().filter_map(|i| f(&i.gateway).map(|v| (i.gateway.t_s, v))).collect()
        };
        Drifts {
            from_s: intervals.first().map_or(0.0, |i| i.gateway.t_s),
            to_s: intervals.last().map_or(0.0, |i| i.gateway.t_s),
            rss_kib: Drift::of(&points(&|s| Some(s.rss_kib as f64))),
            fds: Drift::of(&points(&|s| s.fds.map(|f| f as f64))),
            threads: Drift::of(&points(&|s| Some(s.threads as f64))),
            tree_rss_kib: Drift::of(&points(&|s| Some(s.tree_rss_kib as f64))),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    pub era: Era,
    pub op: &'static str,
    pub ok: u64,
    pub errors: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct TotalStats {
    pub calls: u64,
    pub ok: u64,
    pub session_ok: u64,
    pub stateless_ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub faults_by_kind: BTreeMap<String, u64>,
    pub latency: Latency,
    pub per_op: Vec<OpStats>,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
    pub get_streams_opened: u64,
    pub get_streams_ended_by_delete: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shutdown {
    /// From SIGTERM to the gateway's exit.
    pub exit_ms: Option<f64>,
    pub status: String,
    /// Processes of the gateway's tree still running after it exited.
    pub leftover_processes: usize,
    pub clean: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    pub warnings: u64,
    pub errors: u64,
    /// The first distinct WARN and ERROR lines, timestamps removed.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub unix_time: u64,
    pub smoke: bool,
    pub machine: Machine,
    pub binaries: String,
    /// The commit the binaries were built from (`scripts/bench` sets it).
    pub revision: Option<String>,
    pub settings: Settings,
    pub workers: Value,
    pub baseline: ProcSample,
    pub intervals: Vec<Interval>,
    pub drift: Drifts,
    /// One second after every session was closed and every client
    /// connection dropped.
    pub after_close: ProcSample,
    /// Every process seen under the gateway over the run, by name (its
    /// stdio server and any helper it starts); more of them than
    /// `children_at_once`: some were replaced.
    pub children_seen: Vec<String>,
    pub children_at_once: usize,
    pub totals: TotalStats,
    pub shutdown: Shutdown,
    pub log: LogSummary,
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
}

/// Reads what the gateway logged since `offset`.
struct LogTail {
    path: PathBuf,
    /// Local paths in log lines, and what stands for them in the report.
    redact: Vec<(String, &'static str)>,
    offset: u64,
    partial: String,
    warnings: u64,
    errors: u64,
    samples: BTreeSet<String>,
}

impl LogTail {
    /// New WARN and ERROR lines since the last call.
    fn poll(&mut self) -> (u64, u64) {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.path)
            && f.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() {
                self.offset += buf.len() as u64;
                text = String::from_utf8_lossy(&buf).into_owned();
            }
        }
        self.partial.push_str(&text);
        let (mut w, mut e) = (0, 0);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines.lines() {
            let is_warn = line.contains(" WARN ");
            let is_error = line.contains(" ERROR ");
            if !(is_warn || is_error) {
                continue;
            }
            if is_warn {
                w += 1;
            } else {
                e += 1;
            }
            if self.samples.len() < 10 {
                // Without the timestamp, so repeats collapse.
                let mut rest = line.split_once(' ').map_or(line, |(_, r)| r).trim().to_string();
                for (path, name) in &self.redact {
                    rest = rest.replace(path.as_str(), name);
                }
                self.samples.insert(rest.chars().take(300).collect());
            }
        }
        self.warnings += w;
        self.errors += e;
        (w, e)
    }
}

/// Starts the HTTP fixture and Bastion in front of it and of the stdio
/// fixture, with default limits and a short `callTimeout`.
/// Also returns the HTTP server's port.
async fn start(bins: &Bins, settings: &Settings) -> anyhow::Result<(Running, u16)> {
    let dir = tempfile::Builder::new().prefix("bastion-bench-soak-").tempdir()?;
    let (http, http_url) = contestant::start_http_fixture(bins, dir.path()).await?;
    let http_port = reqwest::Url::parse(&http_url)?.port().context("the HTTP server's port")?;
    let call_timeout = format!("{}ms", settings.call_timeout.as_millis());
    let port = contestant::free_port()?;
    let config = json!({
        "listen": format!("127.0.0.1:{port}"),
        "data_dir": dir.path().join("data"),
        "mcpServers": {
            "echo": {"command": bins.fixture, "args": ["echo", "--stdio"], "callTimeout": call_timeout},
            "echo-http": {"url": http_url, "type": "streamable-http", "callTimeout": call_timeout},
        },
        "log": {"level": "warn"},
    });
    let (config, key) = contestant::bastion_config(bins, dir.path(), &config).await?;
    let (log_path, log) = contestant::log_file(dir.path(), "bastion")?;
    let root = tokio::process::Command::new(&bins.bastion)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting bastion")?;
    let running = Running {
        kind: Kind::Bastion,
        upstream: Upstream::Stdio,
        url: format!("http://127.0.0.1:{port}/mcp/echo"),
        bearer: Some(key),
        root,
        helpers: vec![http],
        issuer: None,
        redis: None,
        postgres: None,
        _dir: dir,
        log: log_path,
    };
    if let Err(e) = contestant::wait_ready(&running, Duration::from_secs(60)).await {
        running.stop().await;
        return Err(e);
    }
    Ok((running, http_port))
}

fn targets(r: &Running, settings: &Settings, pool: usize) -> anyhow::Result<Vec<Target>> {
    let base = r.url.strip_suffix("/echo").context("endpoint")?;
    let ep = |path: &str| {
        // Idle pooled connections are dropped before the gateway's 60 s
        // idle-connection timeout would close them under a request.
        Endpoint::with_pool_idle(
            &format!("{base}{path}"),
            r.bearer.as_deref(),
            settings.timeout,
            pool,
            Duration::from_secs(20),
        )
    };
    Ok(vec![
        Target { name: "stdio", ep: ep("/echo")?, echo: vec!["echo".into()], sleep: "sleep".into() },
        Target { name: "http", ep: ep("/echo-http")?, echo: vec!["echo".into()], sleep: "sleep".into() },
        Target {
            name: "aggregate",
            ep: ep("")?,
            echo: vec!["echo__echo".into(), "echo-http__echo".into()],
            sleep: "echo__sleep".into(),
        },
    ])
}

/// Every endpoint answers in both eras before the clock starts.
async fn check_targets(targets: &[Target]) -> anyhow::Result<()> {
    for t in targets {
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            let res = async {
                let mut s = t.ep.initialize().await?;
                let r = t.ep.request(&mut s, "tools/call", echo_params(&t.echo[0])).await;
                let _ = t.ep.close(s).await;
                r?;
                t.ep.stateless(1, "tools/call", echo_params(&t.echo[0])).await
            }
            .await;
            match res {
                Ok(_) => break,
                Err(e) if Instant::now() > limit => anyhow::bail!("the {} endpoint does not answer: {e}", t.name),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// Runs the soak, writes `soak-latest.json` and `soak-latest.md` into
/// `out_dir`, and returns the report.
pub async fn run(settings: Settings, bins: Bins, binaries: &str, out_dir: &Path) -> anyhow::Result<SoakReport> {
    eprintln!(
        "bench: soak: {:.1} min, sampled every {:.1} s, {} ops/s over {} workers",
        settings.duration.as_secs_f64() / 60.0,
        settings.interval.as_secs_f64(),
        settings.rate,
        settings.workers
    );
    let (mut running, http_port) = start(&bins, &settings).await?;
    let result = soak(&settings, &bins, &mut running, http_port, binaries).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            running.stop().await;
            return Err(e);
        }
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut json_text = serde_json::to_vec_pretty(&report)?;
    json_text.push(b'\n');
    std::fs::write(out_dir.join("soak-latest.json"), json_text)?;
    std::fs::write(out_dir.join("soak-latest.md"), crate::report::soak_markdown(&report))?;
    Ok(report)
}

async fn soak(
    settings: &Settings,
    bins: &Bins,
    running: &mut Running,
    http_port: u16,
    binaries: &str,
) -> anyhow::Result<SoakReport> {
    let pid = running.pid();
    let gateway_port = reqwest::Url::parse(&running.url)?.port().context("the gateway's port")?;
    let ports = [(gateway_port, "gateway"), (http_port, "HTTP server")];
    let (n_session, n_stateless) = settings.split();
    let paced = n_session + n_stateless;
    // Checked with clients of their own, whose connections are closed before
    // the baseline is taken.
    check_targets(&targets(running, settings, 2)?).await?;
    let targets = targets(running, settings, settings.workers * 2 + 4)?;
    let mut redact = Vec::new();
    if let Some(dir) = running.log.parent() {
        redact.push((dir.display().to_string(), "<run dir>"));
    }
    if let Some(dir) = bins.fixture.parent() {
        redact.push((dir.display().to_string(), "<bin dir>"));
    }
    let mut log = LogTail {
        path: running.log.clone(),
        redact,
        offset: 0,
        partial: String::new(),
        warnings: 0,
        errors: 0,
        samples: BTreeSet::new(),
    };
    log.poll();
    let mut children = BTreeMap::new();
    let mut children_at_once = 0;
    let mut note_children = |children: &mut BTreeMap<u32, String>| {
        let now: Vec<u32> = procs::tree(pid).into_iter().filter(|&p| p != pid).collect();
        children_at_once = children_at_once.max(now.len());
        for p in now {
            children.entry(p).or_insert_with(|| procs::comm(p).unwrap_or_else(|| "?".into()));
        }
    };
    let tps = procs::ticks_per_second() as f64;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let baseline = proc_sample(pid, start, &ports);
    let mut machine_before = procs::machine_cpu();
    let mut cpu_before = baseline.cpu_ticks;
    note_children(&mut children);
    let max_paced = (settings.rate * settings.duration.as_secs_f64() * 1.2).ceil() as u64 + 100;
    let sh = Arc::new(Shared {
        settings: settings.clone(),
        rec: Recorder::new(start),
        start,
        deadline: start + settings.duration,
        tickets: AtomicU64::new(max_paced),
        exhausted: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    let mut layout = Vec::new();
    for w in 0..paced {
        let t = targets[w % targets.len()].clone();
        let sh = sh.clone();
        if w < n_session {
            layout.push(format!("session {}", t.name));
            tasks.push(tokio::spawn(session_worker(sh, t, w, paced)));
        } else {
            layout.push(format!("stateless {}", t.name));
            tasks.push(tokio::spawn(stateless_worker(sh, t, w, paced)));
        }
    }
    layout.push("faults: stdio, http, aggregate in turn".into());
    tasks.push(tokio::spawn(fault_worker(sh.clone(), targets.clone())));

    let n = settings.intervals();
    let mut intervals = Vec::with_capacity(n);
    let mut last = start;
    for i in 1..=n {
        let at = start + settings.interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let b = sh.rec.take_interval();
        let gateway = proc_sample(pid, start, &ports);
        let machine_now = procs::machine_cpu();
        note_children(&mut children);
        let (log_warnings, log_errors) = log.poll();
        let now = Instant::now();
        let secs = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let calls = b.ok[0] + b.ok[1];
        let cpu_s = gateway.cpu_ticks.saturating_sub(cpu_before) as f64 / tps;
        cpu_before = gateway.cpu_ticks;
        let machine_busy_percent = procs::busy_percent(machine_before, machine_now);
        let steal_percent = procs::steal_percent(machine_before, machine_now);
        machine_before = machine_now;
        let iv = Interval {
            index: i,
            warmup: i == 1,
            end_s: gateway.t_s,
            calls: calls + b.errors,
            session_ok: b.ok[Era::Session as usize],
            stateless_ok: b.ok[Era::Stateless as usize],
            errors: b.errors,
            faults: b.expected,
            calls_per_s: calls as f64 / secs,
            latency: Latency::from_histogram(&b.hist),
            sessions_opened: b.sessions_opened,
            sessions_closed: b.sessions_closed,
            gateway_cpu_percent: Some(cpu_s * 100.0 / secs),
            gateway_cpu_us_per_call: (calls > 0).then(|| cpu_s * 1e6 / calls as f64),
            machine_busy_percent,
            steal_percent,
            log_warnings,
            log_errors,
            gateway,
        };
        eprintln!("bench: soak: {}", crate::report::soak_interval_line(&iv));
        intervals.push(iv);
    }

    // Workers stop at the deadline; the longest fault ends a few seconds later.
    let mut stuck = 0;
    let join_limit = Instant::now() + settings.call_timeout + Duration::from_secs(20);
    for mut t in tasks {
        if tokio::time::timeout_at(join_limit.into(), &mut t).await.is_err() {
            t.abort();
            stuck += 1;
        }
    }
    if stuck > 0 {
        sh.rec.problem("worker: still busy well after the run ended".into(), format!("{stuck} workers"));
    }
    // Every session is closed; dropping the last clients closes their
    // connections, so the gateway should be back to its baseline descriptors.
    drop(targets);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_close = proc_sample(pid, start, &ports);
    note_children(&mut children);

    let shutdown = stop_gateway(running).await;
    log.poll();

    let totals = sh.rec.totals();
    let drift = Drifts::of(&intervals);
    let failures = failures(&totals, &shutdown, &intervals);
    Ok(SoakReport {
        unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        smoke: settings.smoke,
        machine: machine(),
        binaries: binaries.to_string(),
        revision: std::env::var("BASTION_BENCH_REVISION").ok().filter(|r| !r.is_empty()),
        settings: settings.clone(),
        workers: json!({"session": n_session, "stateless": n_stateless, "fault": 1, "layout": layout}),
        baseline,
        intervals,
        drift,
        after_close,
        children_seen: children.into_values().collect(),
        children_at_once,
        totals,
        shutdown,
        log: LogSummary { warnings: log.warnings, errors: log.errors, samples: log.samples.into_iter().collect() },
        failures,
    })
}

/// Why a run failed: any unexpected error, an unclean stop, an era without
/// a single success, missing samples, or faults that never ran. Drift is
/// reported, not judged.
fn failures(totals: &TotalStats, shutdown: &Shutdown, intervals: &[Interval]) -> Vec<String> {
    let mut failures = Vec::new();
    if totals.errors > 0 {
        let kinds: Vec<String> = totals.errors_by_kind.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        failures.push(format!("{} unexpected errors: {}", totals.errors, kinds.join("; ")));
    }
    if !shutdown.clean {
        failures.push(format!(
            "the gateway did not stop cleanly on SIGTERM: {}, {} processes left",
            shutdown.status, shutdown.leftover_processes
        ));
    }
    if totals.session_ok == 0 || totals.stateless_ok == 0 {
        failures.push(format!(
            "no successful requests in one era: {} session-era, {} stateless",
            totals.session_ok, totals.stateless_ok
        ));
    }
    if intervals.len() < 2 || intervals.iter().any(|i| i.gateway.rss_kib == 0 || i.gateway.fds.is_none()) {
        failures.push("the gateway's /proc entries could not be sampled at every interval".into());
    }
    if totals.faults_by_kind.is_empty() {
        failures.push("no fault ran to its expected end".into());
    }
    failures
}

/// SIGTERM to the gateway alone; it must exit, and take its stdio server
/// with it, within [`SHUTDOWN_LIMIT`]. Whatever is left is killed.
async fn stop_gateway(running: &mut Running) -> Shutdown {
    let pid = running.pid();
    let tree = procs::tree(pid);
    let t0 = Instant::now();
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let waited = tokio::time::timeout(SHUTDOWN_LIMIT, running.root.wait()).await;
    let exit_ms = waited.is_ok().then(|| t0.elapsed().as_secs_f64() * 1000.0);
    let status = match &waited {
        Ok(Ok(s)) => s.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => format!("still running {} s after SIGTERM", SHUTDOWN_LIMIT.as_secs()),
    };
    let exited_ok = matches!(waited, Ok(Ok(s)) if s.success());
    // The stdio server ends when the gateway closes its stdin.
    let gone = |p: &u32| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p);
    let limit = Instant::now() + Duration::from_secs(3);
    while tree.iter().any(|p| !gone(p)) && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<u32> = tree.iter().copied().filter(|p| !gone(p)).collect();
    for p in &left {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    if waited.is_err() {
        let _ = running.root.start_kill();
        let _ = running.root.wait().await;
    }
    for mut h in running.helpers.drain(..) {
        let hp = h.id().unwrap_or(0);
        contestant::stop_tree(hp, &mut h).await;
    }
    let leftover_processes = left.iter().filter(|&&p| p != pid).count();
    Shutdown { exit_ms, status, leftover_processes, clean: exited_ok && left.is_empty() }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_per_minute() {
        let pts = [(60.0, 100.0), (120.0, 110.0), (180.0, 120.0)];
        assert!((slope(&pts).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), None);
        let d = Drift::of(&pts).unwrap();
        assert_eq!((d.first, d.last, d.delta), (100.0, 120.0, 20.0));
    }

    #[test]
    fn intervals_divide_the_run() {
        let s = Settings::new(Duration::from_secs(300), false);
        assert_eq!((s.interval, s.intervals()), (Duration::from_secs(60), 5));
        let s = Settings::new(Duration::from_secs(12), false);
        assert_eq!(s.intervals(), 10);
        let mut s = Settings::new(Duration::from_secs(15), true);
        s.set_interval(Some(Duration::from_secs(4)));
        assert_eq!(s.intervals(), 4);
        assert_eq!(s.split(), (4, 3));
        assert_eq!(Settings::new(Duration::from_secs(600), false).split(), (6, 5));
    }

    #[test]
    fn the_mix_has_every_request() {
        let t = Target {
            name: "aggregate",
            ep: Endpoint::new("http://127.0.0.1:1/mcp", None, Duration::from_secs(1), 1).unwrap(),
            echo: vec!["a__echo".into(), "b__echo".into()],
            sleep: "a__sleep".into(),
        };
        let session: BTreeSet<&str> = (0..10).map(|k| session_request(&t, k).0).collect();
        assert_eq!(session, BTreeSet::from(["tools/call", "tools/list", "ping"]));
        let stateless: BTreeSet<&str> = (0..10).map(|k| stateless_request(&t, k).0).collect();
        assert_eq!(stateless, BTreeSet::from(["tools/call", "tools/list", "server/discover"]));
        let tools: BTreeSet<String> =
            (0..10).filter_map(|k| session_request(&t, k).1["name"].as_str().map(str::to_owned)).collect();
        assert_eq!(tools, BTreeSet::from(["a__echo".to_string(), "b__echo".to_string()]));
    }

    #[test]
    fn any_unexpected_error_or_unclean_stop_fails_the_run() {
        let totals = |errors: u64| TotalStats {
            calls: 10,
            ok: 10,
            session_ok: 5,
            stateless_ok: 5,
            errors,
            errors_by_kind: BTreeMap::from([("stateless tools/call: http_500".to_string(), errors)]),
            error_samples: Vec::new(),
            faults_by_kind: BTreeMap::from([("session call cancelled".to_string(), 1)]),
            latency: Latency::default(),
            per_op: Vec::new(),
            sessions_opened: 1,
            sessions_closed: 1,
            get_streams_opened: 1,
            get_streams_ended_by_delete: 1,
        };
        let clean =
            Shutdown { exit_ms: Some(5.0), status: "exit status: 0".into(), leftover_processes: 0, clean: true };
        let sample = ProcSample { rss_kib: 1000, fds: Some(20), ..ProcSample::default() };
        let interval = |index| Interval {
            index,
            warmup: index == 1,
            end_s: index as f64,
            calls: 5,
            session_ok: 3,
            stateless_ok: 2,
            errors: 0,
            faults: 0,
            calls_per_s: 5.0,
            latency: Latency::default(),
            sessions_opened: 0,
            sessions_closed: 0,
            gateway_cpu_percent: None,
            gateway_cpu_us_per_call: None,
            machine_busy_percent: None,
            steal_percent: None,
            log_warnings: 0,
            log_errors: 0,
            gateway: sample.clone(),
        };
        let intervals = [interval(1), interval(2)];
        assert!(failures(&totals(0), &clean, &intervals).is_empty());
        let f = failures(&totals(2), &clean, &intervals);
        assert_eq!(f, ["2 unexpected errors: stateless tools/call: http_500 ×2"]);
        let unclean = Shutdown { clean: false, ..clean.clone() };
        assert_eq!(failures(&totals(0), &unclean, &intervals).len(), 1);
        assert_eq!(failures(&totals(0), &clean, &intervals[..1]).len(), 1, "one sample is not a soak");
    }

    #[test]
    fn log_lines_are_counted_by_level() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        std::fs::write(&path, "2026-01-01T00:00:00Z  WARN x: one\n2026-01-01T00:00:01Z  INFO x: two\n2026").unwrap();
        let mut tail = LogTail {
            path: path.clone(),
            redact: vec![("/x/y".into(), "<dir>")],
            offset: 0,
            partial: String::new(),
            warnings: 0,
            errors: 0,
            samples: BTreeSet::new(),
        };
        assert_eq!(tail.poll(), (1, 0));
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"-01-01T00:00:02Z ERROR x: three /x/y/z\n").unwrap();
        assert_eq!(tail.poll(), (0, 1));
        assert_eq!(tail.samples.len(), 2);
        assert!(tail.samples.contains("ERROR x: three <dir>/z"), "{:?}", tail.samples);
        assert!(tail.samples.contains("ERROR x: three <dir>/z"));
    }
}
