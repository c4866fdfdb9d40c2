//! The whole comparison: every contestant × scenario, process-tree CPU and
//! memory around each run, idle sessions, start-to-ready, and the report
//! (`latest.json`, `latest.md`).
//!
//! Scenarios:
//! * `a`: `tools/call echo` through the gateway to the fixture over stdio;
//! * `b`: the same with the fixture serving Streamable HTTP;
//! * `c`: session set-up (`initialize`, `notifications/initialized`,
//!   `tools/list`);
//! * `d`: stateless `2026-07-28` `tools/call`;
//! * `e`: many idle sessions held open, RSS before and after;
//! * `replicas`: stateless `tools/call` through nginx in front of one
//!   Bastion replica and in front of three, on one PostgreSQL store and one
//!   Redis (see [`crate::replicas`]).
//!
//! The direct contestant (the fixture over HTTP, no gateway) is the floor
//! for `a` and `b` alike. `bastion-authz` runs `a`, `c` and `d` with access
//! tokens and 50 Cedar rules, set against `bastion` with API keys alone.
//!
//! Paired comparisons ([`Pairing`]) set a gateway with one thing changed
//! against the same gateway without it: authorization, the audit trail
//! (in the default SQLite store, and in a PostgreSQL store), the data
//! guard, and limits (in process, and on Redis) that refuse nothing. A
//! limits comparison in which anything was refused fails the suite: its
//! figures would measure refusals, not checks. A server started for a
//! variant outside the gateway's process tree (Redis, PostgreSQL) has its
//! CPU measured on its own, never in the gateway's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use crate::contestant::{self, Backend, Bins, Kind, Peers, Running, Upstream};
use crate::load::{self, LoadResult, LoadSpec, Workload};
use crate::mcp::Endpoint;
use crate::procs;
use crate::report;

/// How reports name scenario `replicas` (and `--only` selects it).
pub const REPLICAS: &str = "bastion-replicas";

/// Knobs of a suite run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub smoke: bool,
    /// Calls per second of the fixed-rate runs.
    pub rate: f64,
    /// Sessions of the call runs.
    pub concurrency: usize,
    /// Length of each timed run.
    pub duration: Duration,
    /// Request cap of each timed run.
    pub max_requests: u64,
    pub setup_concurrency: usize,
    pub warmup: Duration,
    pub warmup_requests: u64,
    /// Idle sessions to open on Bastion and the direct fixture.
    pub idle_sessions: usize,
    /// Idle sessions to open on the other gateways.
    pub idle_sessions_peers: usize,
    /// Idle sessions on a gateway that starts a process per session.
    pub idle_sessions_per_process: usize,
    /// Stdio servers of the start-to-ready measurement; 0 skips it.
    pub ready_servers: usize,
    pub ready_runs: usize,
    /// Rounds of each paired comparison ([`Pairing`]: one max-rate run of
    /// each side per round); 0 skips them.
    pub paired_rounds: usize,
    /// Only these paired comparisons (empty: all). Given without `only`,
    /// the single runs, start-to-ready and replicas are left out.
    pub pairings: Vec<Pairing>,
    /// The paired rounds' fixed rate (calls per second); `None`: max rate.
    pub paired_rate: Option<f64>,
    pub timeout: Duration,
}

impl Settings {
    pub fn full() -> Self {
        Settings {
            smoke: false,
            rate: 1000.0,
            concurrency: 16,
            duration: Duration::from_secs(10),
            max_requests: 300_000,
            setup_concurrency: 4,
            warmup: Duration::from_secs(2),
            warmup_requests: 20_000,
            idle_sessions: 10_000,
            idle_sessions_peers: 1_000,
            idle_sessions_per_process: 50,
            ready_servers: 100,
            ready_runs: 3,
            paired_rounds: 3,
            pairings: Vec::new(),
            paired_rate: None,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn smoke() -> Self {
        Settings {
            smoke: true,
            rate: 500.0,
            concurrency: 4,
            duration: Duration::from_secs(1),
            max_requests: 300,
            setup_concurrency: 2,
            warmup: Duration::from_millis(300),
            warmup_requests: 50,
            idle_sessions: 200,
            idle_sessions_peers: 50,
            idle_sessions_per_process: 10,
            ready_servers: 10,
            ready_runs: 1,
            paired_rounds: 1,
            pairings: Vec::new(),
            paired_rate: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// a / b
    Call,
    /// c
    Setup,
    /// d
    Stateless,
}

/// One timed run of one contestant.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub contestant: &'static str,
    pub upstream: &'static str,
    pub scenario: Scenario,
    #[serde(flatten)]
    pub load: LoadResult,
    /// CPU of the gateway process alone, per successful request.
    pub gateway_cpu_us_per_call: Option<f64>,
    /// CPU of the gateway and all its children (the stdio upstream), per call.
    pub tree_cpu_us_per_call: Option<f64>,
    /// CPU of the load generator, per call (to see whether it was the limit).
    pub loadgen_cpu_us_per_call: Option<f64>,
    /// CPU of the contestant's Redis server (outside the gateway's tree),
    /// per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cpu_us_per_call: Option<f64>,
    /// CPU of the contestant's PostgreSQL server (outside the gateway's
    /// tree: its postmaster and every backend), per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_cpu_us_per_call: Option<f64>,
    pub gateway_peak_rss_kib: u64,
    pub tree_peak_rss_kib: u64,
    pub processes: usize,
    /// Share of the machine's CPU time the hypervisor took during the run:
    /// above a few percent, the run measured its neighbours as much as itself.
    pub steal_percent: Option<f64>,
}

/// What a paired comparison sets against what: a contestant with one
/// thing changed (`variant`) against the same gateway without it (`base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// Authorization on (access tokens, Cedar rules) against API keys alone.
    Authz,
    /// Every call audited against the audit trail off.
    Audit,
    /// Every call audited into a PostgreSQL store (a throwaway server of
    /// its own) against the audit trail off.
    AuditPostgres,
    /// The data guard (the defaults) reading a 1 KiB argument and its 1 KiB
    /// echo against the guard off.
    Guard,
    /// Rate limits at every level, a server's calls in flight and a daily
    /// quota, in this process and never reached, against no limits.
    Limits,
    /// The same limits with their rate buckets in Redis against no limits.
    LimitsRedis,
}

impl Pairing {
    pub const ALL: [Pairing; 6] =
        [Pairing::Authz, Pairing::Audit, Pairing::AuditPostgres, Pairing::Guard, Pairing::Limits, Pairing::LimitsRedis];

    /// The contestants: (base, variant).
    pub fn kinds(self) -> (Kind, Kind) {
        match self {
            Pairing::Authz => (Kind::Bastion, Kind::BastionAuthz),
            Pairing::Audit => (Kind::BastionNoAudit, Kind::Bastion),
            Pairing::AuditPostgres => (Kind::BastionNoAudit, Kind::BastionPostgres),
            Pairing::Guard => (Kind::BastionNoGuard, Kind::Bastion),
            Pairing::Limits => (Kind::Bastion, Kind::BastionLimits),
            Pairing::LimitsRedis => (Kind::Bastion, Kind::BastionLimitsRedis),
        }
    }

    /// Whether the variant is one whose limits must refuse nothing.
    pub fn refuses_nothing(self) -> bool {
        matches!(self, Pairing::Limits | Pairing::LimitsRedis)
    }

    /// The arguments of the calls compared.
    pub fn arguments(self) -> Value {
        match self {
            Pairing::Guard => guard_args(),
            _ => echo_args(),
        }
    }

    /// How the report names the two sides: (base, variant).
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Pairing::Authz => ("API keys", "authz on"),
            Pairing::Audit => ("audit off", "audit on"),
            Pairing::AuditPostgres => ("audit off", "audit on PostgreSQL"),
            Pairing::Guard => ("guard off", "guard on"),
            Pairing::Limits => ("limits off", "limits in process"),
            Pairing::LimitsRedis => ("limits off", "limits on Redis"),
        }
    }
}

/// A variant against its base, measured in pairs: both gateways started
/// side by side, then in each round one max-rate `tools/call` run of each,
/// their order alternating, so that both meet the same machine (other work
/// on it, the host's steal) as nearly as possible.
#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    pub pairing: Pairing,
    /// The rounds' fixed rate (calls per second); absent: max rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub rounds: Vec<PairedRound>,
    /// Medians over the rounds of the gateway's CPU per call (µs).
    pub base_gateway_cpu_us_per_call: Option<f64>,
    pub variant_gateway_cpu_us_per_call: Option<f64>,
    /// Median over the rounds of variant minus base (µs per call).
    pub difference_us_per_call: Option<f64>,
    /// Median over the rounds of the variant's max rate over the base's.
    pub rate_ratio: Option<f64>,
    /// Median over the rounds of the variant's Redis server's CPU per call
    /// (µs), not the gateway's and not in the difference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_redis_cpu_us_per_call: Option<f64>,
    /// The same for the variant's PostgreSQL server (its postmaster and
    /// every backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_postgres_cpu_us_per_call: Option<f64>,
}

impl PairedComparison {
    /// The median CPU per call of the variant's `backend`, when it has one.
    pub fn variant_backend_cpu(&self, backend: Backend) -> Option<f64> {
        match backend {
            Backend::Redis => self.variant_redis_cpu_us_per_call,
            Backend::Postgres => self.variant_postgres_cpu_us_per_call,
        }
    }
}

impl RunRecord {
    /// The CPU per call of the contestant's `backend`, when it has one.
    pub fn backend_cpu(&self, backend: Backend) -> Option<f64> {
        match backend {
            Backend::Redis => self.redis_cpu_us_per_call,
            Backend::Postgres => self.postgres_cpu_us_per_call,
        }
    }
}

/// A limits comparison in which something was refused, or the gateway's
/// denial counters could not show that nothing was: its figures are void
/// and the suite fails.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

#[derive(Debug, Clone, Serialize)]
pub struct PairedRound {
    pub base: RunRecord,
    pub variant: RunRecord,
}

impl PairedRound {
    pub fn difference(&self) -> Option<f64> {
        Some(self.variant.gateway_cpu_us_per_call? - self.base.gateway_cpu_us_per_call?)
    }

    pub fn rate_ratio(&self) -> Option<f64> {
        (self.base.load.calls_per_s > 0.0).then(|| self.variant.load.calls_per_s / self.base.load.calls_per_s)
    }
}

/// The median of the values present.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Scenario `e`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRecord {
    pub contestant: &'static str,
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub open_seconds: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_after_kib: u64,
    /// Growth of the tree's RSS per session.
    pub bytes_per_session: Option<f64>,
    /// Sessions sampled after opening all, and how many still answered.
    pub checked: usize,
    pub still_alive: usize,
    pub processes_after: usize,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadyRecord {
    pub servers: usize,
    /// Milliseconds from spawn to the first 200 on `/readyz`, per run.
    pub readyz_ms: Vec<f64>,
    /// Milliseconds from spawn until `tools/list` shows every server's tools.
    pub all_tools_ms: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub contestant: &'static str,
    pub upstream: &'static str,
    pub scenario: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub unix_time: u64,
    pub smoke: bool,
    pub machine: Machine,
    pub settings: Value,
    pub runs: Vec<RunRecord>,
    pub idle: Vec<IdleRecord>,
    pub start_to_ready: Option<ReadyRecord>,
    pub paired: Vec<PairedComparison>,
    pub skipped: Vec<Skip>,
    pub targets: Vec<report::TargetCheck>,
    /// Scenario `replicas`: three replicas against one, behind nginx.
    pub replicas: Option<crate::replicas::ReplicasComparison>,
    /// What makes the run fail whatever its figures (a limits comparison
    /// or the replicas with refusals).
    pub failures: Vec<String>,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    Machine { nproc: std::thread::available_parallelism().map_or(1, usize::from), cpu_model, memory_mib, kernel }
}

pub fn echo_args() -> Value {
    json!({"text": "hello from bastion-bench"})
}

/// 1 KiB of ordinary text (words, numbers, a URL, no value any detector
/// takes): what the guard reads on the way in, and again in the echo.
pub fn guard_args() -> Value {
    let line = "Order 20481 shipped to warehouse 7 on 2026-11-30; see https://example.com/orders/20481 for details. ";
    let mut text = String::new();
    while text.len() < 1024 {
        text.push_str(line);
    }
    text.truncate(1024);
    json!({"text": text})
}

struct Ctx {
    settings: Settings,
    bins: Bins,
    peers: Peers,
    tps: f64,
    runs: Vec<RunRecord>,
    idle: Vec<IdleRecord>,
    skipped: Vec<Skip>,
}

impl Ctx {
    fn skip(&mut self, kind: Kind, upstream: Upstream, scenario: &str, reason: impl Into<String>) {
        let reason = reason.into();
        eprintln!("bench: skip {} ({}) {scenario}: {reason}", kind.name(), upstream_name(upstream));
        self.skipped.push(Skip {
            contestant: kind.name(),
            upstream: upstream_name(upstream),
            scenario: scenario.into(),
            reason,
        });
    }

    /// A skip of something that is not a contestant's (stdio upstream).
    fn skip_named(&mut self, name: &'static str, scenario: &str, reason: impl Into<String>) {
        let reason = reason.into();
        eprintln!("bench: skip {name} {scenario}: {reason}");
        self.skipped.push(Skip { contestant: name, upstream: "stdio", scenario: scenario.into(), reason });
    }

    fn endpoint(&self, r: &Running, pool: usize) -> anyhow::Result<Endpoint> {
        Endpoint::new(&r.url, r.bearer.as_deref(), self.settings.timeout, pool)
    }

    /// One timed run with CPU and memory measured around it.
    async fn measure(&mut self, r: &Running, scenario: Scenario, workload: Workload, rate: Option<f64>) {
        if let Some(rec) = self.run_once(r, scenario, workload, rate).await {
            self.runs.push(rec);
        }
    }

    /// One timed run with CPU and memory measured around it, not recorded.
    async fn run_once(
        &self,
        r: &Running,
        scenario: Scenario,
        workload: Workload,
        rate: Option<f64>,
    ) -> Option<RunRecord> {
        let s = &self.settings;
        let concurrency = if scenario == Scenario::Setup { s.setup_concurrency } else { s.concurrency };
        let spec = LoadSpec { workload, concurrency, rate, duration: s.duration, max_requests: s.max_requests };
        let ep = self.endpoint(r, concurrency * 2).ok()?;
        let pid = r.pid();
        procs::reset_peaks(pid);
        let me = std::process::id();
        let backends = r.backends();
        let before = procs::sample(pid);
        let me_before = procs::sample(me);
        let backends_before = backend_ticks(&backends);
        let machine_before = procs::machine_cpu();
        let result = load::run(&ep, &spec).await;
        let machine_after = procs::machine_cpu();
        let after = procs::sample(pid);
        let me_after = procs::sample(me);
        let backends_after = backend_ticks(&backends);
        let per_call = |ticks: u64| (result.ok > 0).then(|| ticks as f64 / self.tps / result.ok as f64 * 1e6);
        let backend_cpu = |which: Backend| {
            let (_, b) = backends_before.iter().find(|(k, _)| *k == which)?;
            let (_, a) = backends_after.iter().find(|(k, _)| *k == which)?;
            per_call(a.saturating_sub(*b))
        };
        let rec = RunRecord {
            contestant: r.kind.name(),
            upstream: upstream_name(r.upstream),
            scenario,
            gateway_cpu_us_per_call: per_call(after.root_ticks.saturating_sub(before.root_ticks)),
            tree_cpu_us_per_call: per_call(after.tree_ticks.saturating_sub(before.tree_ticks)),
            loadgen_cpu_us_per_call: per_call(me_after.root_ticks.saturating_sub(me_before.root_ticks)),
            redis_cpu_us_per_call: backend_cpu(Backend::Redis),
            postgres_cpu_us_per_call: backend_cpu(Backend::Postgres),
            gateway_peak_rss_kib: after.root_hwm_kib,
            tree_peak_rss_kib: after.tree_hwm_kib,
            processes: after.processes,
            steal_percent: procs::steal_percent(machine_before, machine_after),
            load: result,
        };
        eprintln!("bench: {}", report::one_line(&rec));
        Some(rec)
    }

    async fn warm_up(&self, r: &Running, workload: Workload) {
        let s = &self.settings;
        let spec = LoadSpec {
            workload,
            concurrency: s.concurrency,
            rate: None,
            duration: s.warmup,
            max_requests: s.warmup_requests,
        };
        if let Ok(ep) = self.endpoint(r, s.concurrency * 2) {
            let _ = load::run(&ep, &spec).await;
        }
    }

    /// Whether the contestant answers a stateless request at all.
    async fn probe_stateless(&self, r: &Running) -> Result<(), String> {
        let ep = self.endpoint(r, 2).map_err(|e| e.to_string())?;
        ep.stateless(1, "tools/call", json!({"name": "echo", "arguments": echo_args()}))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn idle_sessions(&mut self, r: &Running, requested: usize, note: Option<String>) {
        let rec = idle(self, r, requested, note).await;
        match rec {
            Ok(rec) => {
                eprintln!(
                    "bench: {} idle: {} sessions, {} per session",
                    rec.contestant,
                    rec.opened,
                    rec.bytes_per_session.map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0))
                );
                self.idle.push(rec);
            }
            Err(e) => self.skip(r.kind, r.upstream, "e", format!("{e:#}")),
        }
    }
}

/// The CPU ticks of each backend server, at one moment.
fn backend_ticks(backends: &[(Backend, u32)]) -> Vec<(Backend, u64)> {
    backends.iter().map(|(b, pid)| (*b, b.ticks(&procs::sample(*pid)))).collect()
}

fn upstream_name(u: Upstream) -> &'static str {
    match u {
        Upstream::Stdio => "stdio",
        Upstream::Http => "http",
    }
}

/// Opens `requested` sessions and holds them; RSS before and after.
async fn idle(ctx: &Ctx, r: &Running, requested: usize, note: Option<String>) -> anyhow::Result<IdleRecord> {
    use futures::StreamExt as _;
    let ep = ctx.endpoint(r, 64)?;
    let pid = r.pid();
    // Whether the server keeps sessions at all.
    let probe = ep.initialize().await.map_err(|e| anyhow::anyhow!("initialize: {e}"))?;
    if probe.id.is_none() {
        anyhow::bail!("the server issues no session ids (stateless): no idle sessions to hold");
    }
    let _ = ep.close(probe).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procs::sample(pid);
    let start = Instant::now();
    // Bounded in time as well as in count.
    let limit = if ctx.settings.smoke { Duration::from_secs(20) } else { Duration::from_secs(180) };
    let mut sessions = Vec::with_capacity(requested);
    let mut failed = 0;
    let mut opening = futures::stream::iter(0..requested).map(|_| ep.initialize()).buffer_unordered(32);
    while let Some(res) = opening.next().await {
        match res {
            Ok(s) => sessions.push(s),
            Err(_) => failed += 1,
        }
        if start.elapsed() > limit {
            break;
        }
    }
    drop(opening);
    let open_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procs::sample(pid);
    // A sample of the sessions must still be usable.
    let step = (sessions.len() / 20).max(1);
    let mut checked = 0;
    let mut alive = 0;
    for s in sessions.iter_mut().step_by(step).take(20) {
        checked += 1;
        if ep.request(s, "tools/list", json!({})).await.is_ok() {
            alive += 1;
        }
    }
    let opened = sessions.len();
    let grew = after.tree_rss_kib.saturating_sub(before.tree_rss_kib);
    Ok(IdleRecord {
        contestant: r.kind.name(),
        requested,
        opened,
        failed,
        open_seconds,
        rss_before_kib: before.tree_rss_kib,
        rss_after_kib: after.tree_rss_kib,
        gateway_rss_before_kib: before.root_rss_kib,
        gateway_rss_after_kib: after.root_rss_kib,
        bytes_per_session: (opened > 0).then(|| grew as f64 * 1024.0 / opened as f64),
        checked,
        still_alive: alive,
        processes_after: after.processes,
        note,
    })
    // The sessions are dropped with the contestant, which is stopped next.
}

/// What to run against one started contestant.
struct Plan {
    kind: Kind,
    upstream: Upstream,
    call: bool,
    setup: bool,
    stateless: bool,
    idle: Option<usize>,
    idle_note: Option<String>,
}

fn plans(s: &Settings) -> Vec<Plan> {
    let p = |kind, upstream, call, setup, stateless, idle: Option<usize>| Plan {
        kind,
        upstream,
        call,
        setup,
        stateless,
        idle,
        idle_note: None,
    };
    let mut v = vec![
        p(Kind::Direct, Upstream::Http, true, true, true, Some(s.idle_sessions)),
        p(Kind::Bastion, Upstream::Stdio, true, true, true, Some(s.idle_sessions)),
        // The same with the audit trail off: what auditing every call costs.
        p(Kind::BastionNoAudit, Upstream::Stdio, true, false, false, None),
        // Right after the API key runs it is compared with, on a machine in
        // the same state.
        p(Kind::BastionAuthz, Upstream::Stdio, true, true, true, None),
        // Each user's own process: the calls of scenario a against those of
        // `bastion` above.
        p(Kind::BastionPerUser, Upstream::Stdio, true, false, false, None),
        p(Kind::Bastion, Upstream::Http, true, false, false, None),
    ];
    if s.smoke {
        return v;
    }
    let mut sg = p(Kind::SupergatewayStateful, Upstream::Stdio, true, true, true, Some(s.idle_sessions_per_process));
    sg.idle_note = Some("one upstream process per session: fewer sessions opened".into());
    v.push(sg);
    v.push(p(Kind::SupergatewayStateless, Upstream::Stdio, true, true, true, None));
    v.push(p(Kind::McpProxy, Upstream::Stdio, true, true, true, Some(s.idle_sessions_peers)));
    v.push(p(Kind::ContextForge, Upstream::Stdio, true, true, true, Some(s.idle_sessions_peers)));
    v.push(p(Kind::ContextForge, Upstream::Http, true, false, false, None));
    v
}

pub async fn run(
    settings: Settings,
    bins: Bins,
    peers: Peers,
    out_dir: &Path,
    only: &[String],
) -> anyhow::Result<Report> {
    let mut ctx = Ctx {
        tps: procs::ticks_per_second() as f64,
        settings: settings.clone(),
        bins,
        peers,
        runs: Vec::new(),
        idle: Vec::new(),
        skipped: Vec::new(),
    };
    // Set by scripts/bench when it runs the suite under `unshare -n`.
    let in_private_netns = std::env::var_os("BASTION_BENCH_NETNS").is_some_and(|v| v == "1");
    let wanted = |k: Kind| only.is_empty() || only.iter().any(|o| k.name().starts_with(o.as_str()));
    // `--pairings` alone: those comparisons and nothing else.
    let pairings_alone = !settings.pairings.is_empty() && only.is_empty();
    let single = |k: Kind| wanted(k) && !pairings_alone;
    for plan in plans(&settings).into_iter().filter(|p| single(p.kind)) {
        if !plan.kind.available(&ctx.peers) {
            ctx.skip(plan.kind, plan.upstream, "all", plan.kind.missing());
            continue;
        }
        if plan.kind.binds_all_interfaces() && !in_private_netns {
            ctx.skip(
                plan.kind,
                plan.upstream,
                "all",
                "listens on every interface: runs only in a private network namespace (scripts/bench)",
            );
            continue;
        }
        eprintln!("bench: starting {} ({})", plan.kind.name(), upstream_name(plan.upstream));
        let r = match contestant::start(plan.kind, plan.upstream, &ctx.bins, &ctx.peers).await {
            Ok(r) => r,
            Err(e) => {
                ctx.skip(plan.kind, plan.upstream, "all", format!("did not start: {e:#}"));
                continue;
            }
        };
        let call = Workload::tool_call(false, "echo", echo_args());
        if plan.call {
            ctx.warm_up(&r, call.clone()).await;
            ctx.measure(&r, Scenario::Call, call.clone(), Some(settings.rate)).await;
            ctx.measure(&r, Scenario::Call, call.clone(), None).await;
        }
        if plan.setup {
            ctx.measure(&r, Scenario::Setup, Workload::Setup, None).await;
        }
        if plan.stateless {
            match ctx.probe_stateless(&r).await {
                Ok(()) => {
                    let w = Workload::tool_call(true, "echo", echo_args());
                    ctx.warm_up(&r, w.clone()).await;
                    ctx.measure(&r, Scenario::Stateless, w.clone(), Some(settings.rate)).await;
                    ctx.measure(&r, Scenario::Stateless, w, None).await;
                }
                Err(e) => ctx.skip(plan.kind, plan.upstream, "d", format!("stateless request refused: {e}")),
            }
        }
        if let Some(n) = plan.idle {
            ctx.idle_sessions(&r, n, plan.idle_note.clone()).await;
        }
        if let Some(idp) = &r.issuer {
            eprintln!("bench: {}: its key set was fetched {} time(s)", plan.kind.name(), idp.fetches());
        }
        r.stop().await;
    }

    let mut paired = Vec::new();
    let mut failures = Vec::new();
    for pairing in Pairing::ALL {
        let (base, variant) = pairing.kinds();
        let chosen = settings.pairings.is_empty() || settings.pairings.contains(&pairing);
        if settings.paired_rounds == 0 || !chosen || !wanted(base) || !wanted(variant) {
            continue;
        }
        if !variant.available(&ctx.peers) {
            if settings.smoke {
                // A smoke run checks what this machine has; it fails on
                // any skip, so what it cannot run it leaves out.
                eprintln!("bench: paired comparison with {} left out: {}", variant.name(), variant.missing());
            } else {
                ctx.skip(variant, Upstream::Stdio, "paired comparison", variant.missing());
            }
            continue;
        }
        match compare(&ctx, pairing).await {
            Ok(c) => paired.push(c),
            Err(e) => {
                if let Some(r) = e.downcast_ref::<Refused>() {
                    eprintln!("bench: FAILED: {}: {r}", variant.name());
                    failures.push(format!("{} (paired comparison): {r}", variant.name()));
                }
                ctx.skip(variant, Upstream::Stdio, "paired comparison", format!("{e:#}"));
            }
        }
    }

    // Scenario `replicas`: `--only replicas`, or any prefix of its name.
    let replicas_wanted = only.is_empty() || only.iter().any(|o| o == "replicas" || REPLICAS.starts_with(o.as_str()));
    let replicas = if settings.paired_rounds > 0 && replicas_wanted && !pairings_alone {
        match crate::replicas::Tools::find(&ctx.peers) {
            Err(reason) if settings.smoke => {
                // As the paired comparisons: a smoke run leaves out what
                // this machine cannot run.
                eprintln!("bench: scenario replicas left out: {reason}");
                None
            }
            Err(reason) => {
                ctx.skip_named(REPLICAS, "replicas", reason);
                None
            }
            Ok(tools) => match crate::replicas::compare(&settings, &ctx.bins, &tools, ctx.tps).await {
                Ok(c) => Some(c),
                Err(e) => {
                    if let Some(r) = e.downcast_ref::<Refused>() {
                        eprintln!("bench: FAILED: {REPLICAS}: {r}");
                        failures.push(format!("{REPLICAS}: {r}"));
                    }
                    ctx.skip_named(REPLICAS, "replicas", format!("{e:#}"));
                    None
                }
            },
        }
    } else {
        None
    };

    let start_to_ready = if settings.ready_servers > 0 && single(Kind::Bastion) {
        match start_to_ready(&ctx.bins, settings.ready_servers, settings.ready_runs).await {
            Ok(r) => Some(r),
            Err(e) => {
                ctx.skip(Kind::Bastion, Upstream::Stdio, "start-to-ready", format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut report = Report {
        unix_time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        smoke: settings.smoke,
        machine: machine(),
        settings: json!({
            "fixed_rate_per_s": settings.rate,
            "concurrency": settings.concurrency,
            "setup_concurrency": settings.setup_concurrency,
            "duration_s": settings.duration.as_secs_f64(),
            "max_requests": settings.max_requests,
            "warmup_s": settings.warmup.as_secs_f64(),
            "idle_sessions": settings.idle_sessions,
            "idle_sessions_peers": settings.idle_sessions_peers,
            "idle_sessions_per_process": settings.idle_sessions_per_process,
            "ready_servers": settings.ready_servers,
            "paired_rounds": settings.paired_rounds,
            "tool": "echo",
            "arguments": echo_args(),
        }),
        runs: ctx.runs,
        idle: ctx.idle,
        start_to_ready,
        paired,
        replicas,
        skipped: ctx.skipped,
        targets: Vec::new(),
        failures,
    };
    report.targets = report::targets(&report);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut json_text = serde_json::to_vec_pretty(&report)?;
    json_text.push(b'\n');
    std::fs::write(out_dir.join("latest.json"), json_text)?;
    std::fs::write(out_dir.join("latest.md"), report::markdown(&report))?;
    Ok(report)
}

/// One pairing, in pairs of max-rate runs (see [`PairedComparison`]).
async fn compare(ctx: &Ctx, pairing: Pairing) -> anyhow::Result<PairedComparison> {
    let (base_kind, variant_kind) = pairing.kinds();
    let (base_label, variant_label) = pairing.labels();
    let n = ctx.settings.paired_rounds;
    eprintln!("bench: paired comparison of {variant_label} with {base_label}: {n} round(s)");
    let base = contestant::start(base_kind, Upstream::Stdio, &ctx.bins, &ctx.peers).await?;
    let variant = match contestant::start(variant_kind, Upstream::Stdio, &ctx.bins, &ctx.peers).await {
        Ok(v) => v,
        Err(e) => {
            base.stop().await;
            return Err(e);
        }
    };
    let call = Workload::tool_call(false, "echo", pairing.arguments());
    ctx.warm_up(&base, call.clone()).await;
    ctx.warm_up(&variant, call.clone()).await;
    let mut rounds = Vec::new();
    let mut failed = None;
    for i in 0..n {
        // Alternating order: the base first in even rounds, the variant in odd.
        let mut pair = [None, None];
        for k in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let r = if k == 0 { &base } else { &variant };
            pair[k] = ctx.run_once(r, Scenario::Call, call.clone(), ctx.settings.paired_rate).await;
        }
        match pair {
            [Some(base), Some(variant)] => rounds.push(PairedRound { base, variant }),
            _ => {
                failed = Some(format!("round {}: a run could not be made", i + 1));
                break;
            }
        }
    }
    // Limits that refused anything measured refusals, not checks: the
    // rounds' errors and the gateway's own denial counters (warm-up
    // included) must both be zero.
    let refused =
        if pairing.refuses_nothing() && failed.is_none() { refusals(&variant, &rounds).await.err() } else { None };
    base.stop().await;
    variant.stop().await;
    if let Some(f) = failed {
        anyhow::bail!(f);
    }
    if let Some(r) = refused {
        return Err(anyhow::Error::new(Refused(r)));
    }
    let c = PairedComparison {
        pairing,
        base_gateway_cpu_us_per_call: median(rounds.iter().map(|r| r.base.gateway_cpu_us_per_call)),
        variant_gateway_cpu_us_per_call: median(rounds.iter().map(|r| r.variant.gateway_cpu_us_per_call)),
        difference_us_per_call: median(rounds.iter().map(PairedRound::difference)),
        // At a fixed rate both sides make the same rate: no ratio to tell.
        rate_ratio: if ctx.settings.paired_rate.is_some() {
            None
        } else {
            median(rounds.iter().map(PairedRound::rate_ratio))
        },
        rate: ctx.settings.paired_rate,
        variant_redis_cpu_us_per_call: median(rounds.iter().map(|r| r.variant.redis_cpu_us_per_call)),
        variant_postgres_cpu_us_per_call: median(rounds.iter().map(|r| r.variant.postgres_cpu_us_per_call)),
        rounds,
    };
    eprintln!("bench: {}", report::paired_line(&c));
    Ok(c)
}

/// Checks that a limits contestant refused nothing: no failed request in
/// its rounds, and its `/metrics` count no denial and no rate-limit check
/// Redis could not answer. `Err` says what was found.
async fn refusals(variant: &Running, rounds: &[PairedRound]) -> Result<(), String> {
    let mut found = Vec::new();
    for (i, x) in rounds.iter().enumerate() {
        let l = &x.variant.load;
        if l.errors > 0 {
            let kinds: Vec<String> = l.error_kinds.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let sample = l.error_samples.first().map_or(String::new(), |e| format!("; first: {e}"));
            found.push(format!("round {}: {} failed requests ({}){sample}", i + 1, l.errors, kinds.join(", ")));
        }
    }
    match gateway_denials(variant).await {
        Ok(counts) => {
            let nonzero: Vec<String> =
                counts.iter().filter(|(_, v)| *v > 0.0).map(|(k, v)| format!("{k} {v}")).collect();
            if !nonzero.is_empty() {
                found.push(format!("the gateway counted {}", nonzero.join(", ")));
            }
        }
        Err(e) => found.push(format!("the gateway's denial counters could not be read: {e:#}")),
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(format!("its limits must refuse nothing: {}", found.join("; ")))
}

/// The gateway's denial counters by reason, and the rate-limit checks
/// Redis could not answer, from its `/metrics`.
async fn gateway_denials(r: &Running) -> anyhow::Result<Vec<(String, f64)>> {
    denials_at(&r.metrics_url().context("the contestant has no /metrics")?).await
}

/// The denial counters of the gateway whose `/metrics` is at `url`, as
/// [`gateway_denials`].
pub async fn denials_at(url: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let resp = client.get(url).send().await?.error_for_status()?;
    let text = resp.text().await?;
    let counts = parse_denials(&text);
    if !counts.iter().any(|(k, _)| k.starts_with("denials")) {
        anyhow::bail!("{url} shows no bastion_denials_total series");
    }
    Ok(counts)
}

/// `bastion_denials_total{reason="…"}` and `bastion_limit_backend_errors_total`
/// of a metrics text, as (`denials{reason}`, value) pairs.
fn parse_denials(text: &str) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let reason = labels.split_once("reason=\"").and_then(|(_, r)| r.split_once('"')).map_or("", |(r, _)| r);
        match name {
            "bastion_denials_total" => v.push((format!("denials{{{reason}}}"), value)),
            "bastion_limit_backend_errors_total" => v.push(("limit_backend_errors".into(), value)),
            _ => {}
        }
    }
    v
}

/// Start-to-ready of `bastion serve` with `servers` stdio servers.
pub async fn start_to_ready(bins: &Bins, servers: usize, runs: usize) -> anyhow::Result<ReadyRecord> {
    let dir = tempfile::Builder::new().prefix("bastion-bench-ready-").tempdir()?;
    let port = contestant::free_port()?;
    let mut map = serde_json::Map::new();
    for i in 0..servers {
        map.insert(format!("echo{i}"), json!({"command": bins.fixture, "args": ["echo", "--stdio"]}));
    }
    let (config, key) = contestant::bastion_setup(bins, dir.path(), port, &map, "warn").await?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let ep = Endpoint::new(&format!("http://127.0.0.1:{port}/mcp"), Some(&key), Duration::from_secs(30), 2)?;
    let mut rec = ReadyRecord { servers, readyz_ms: Vec::new(), all_tools_ms: Vec::new() };
    for _ in 0..runs {
        let log = std::fs::File::create(dir.path().join("serve.log"))?;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(&bins.bastion)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let limit = Duration::from_secs(30);
        let mut ready = None;
        while t0.elapsed() < limit {
            if let Ok(resp) = client.get(&readyz).send().await
                && resp.status().is_success()
            {
                ready = Some(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(ready) = ready else {
            let _ = child.start_kill();
            anyhow::bail!("/readyz did not answer 200 within {limit:?}");
        };
        rec.readyz_ms.push(ready);
        // Until every server's tools are listed (each server has 4 tools).
        let mut all = None;
        if let Ok(mut session) = ep.initialize().await {
            while t0.elapsed() < Duration::from_secs(60) {
                if count_tools(&ep, &mut session).await >= servers * 4 {
                    all = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        rec.all_tools_ms.push(all);
        let pid = child.id().unwrap_or(0);
        for p in procs::tree(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(rec)
}

async fn count_tools(ep: &Endpoint, session: &mut crate::mcp::Session) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let Ok(res) = ep.request(session, "tools/list", params).await else { return n };
        n += res.get("tools").and_then(Value::as_array).map_or(0, Vec::len);
        match res.get("nextCursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_counters_are_read() {
        let text = "# HELP bastion_denials Requests refused\n\
                    # TYPE bastion_denials counter\n\
                    bastion_denials_total{reason=\"auth\"} 0\n\
                    bastion_denials_total{reason=\"rate_limit\"} 3\n\
                    bastion_denials_created{reason=\"rate_limit\"} 1.7e9\n\
                    bastion_limit_backend_errors_total 0\n\
                    bastion_tool_calls_total{server=\"echo\",tool=\"echo\",outcome=\"ok\"} 9\n";
        let v = parse_denials(text);
        assert_eq!(
            v,
            vec![
                ("denials{auth}".to_string(), 0.0),
                ("denials{rate_limit}".to_string(), 3.0),
                ("limit_backend_errors".to_string(), 0.0),
            ]
        );
    }
}
