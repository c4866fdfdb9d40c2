//! `bastion-bench`: a load generator for MCP over Streamable HTTP and the
//! comparison suite behind `scripts/bench`.
//!
//! * `load` — loads one endpoint: N sessions (or stateless requests), fixed
//!   rate (open loop, coordinated-omission corrected) or max rate, bounded by
//!   a duration and a request cap; prints a table, or JSON with `--json`.
//! * `suite` — starts every contestant against the echo fixture, runs every
//!   scenario (three replicas against one among them), and writes
//!   `latest.json` and `latest.md`.
//! * `ready` — start-to-ready of `bastion serve` with N stdio servers.
//! * `soak` — Bastion under a steady mixed load for minutes, its memory
//!   and descriptors sampled; writes `soak-latest.json` and `soak-latest.md`.
#![forbid(unsafe_code)]

mod authz;
mod contestant;
mod load;
mod mcp;
mod postgres;
mod procs;
mod replicas;
mod report;
mod soak;
mod suite;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bastion-bench", version, about = "Load generator and benchmark suite for MCP gateways")]
struct Cli {
    /// Worker threads of the load generator (it shares the machine with
    /// the servers it measures).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load one MCP endpoint.
    Load(LoadArgs),
    /// Run every contestant and scenario; write the report.
    Suite(SuiteArgs),
    /// Measure start-to-ready of `bastion serve` with many stdio servers.
    Ready(ReadyArgs),
    /// Run Bastion under a steady mixed load for minutes; sample its memory
    /// and descriptors; write soak-latest.json and soak-latest.md.
    Soak(SoakArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// The MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
    /// Bearer token (also read from BASTION_BENCH_TOKEN).
    #[arg(long, env = "BASTION_BENCH_TOKEN", hide_env_values = true)]
    bearer: Option<String>,
    /// Concurrent sessions (clients).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Requests per second over all sessions (open loop); omit for max rate.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Hard cap on the number of requests.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// The tool to call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// The tool's arguments, as JSON.
    #[arg(long, default_value = r#"{"text":"hello"}"#)]
    args: String,
    /// Stateless 2026-07-28 requests instead of sessions.
    #[arg(long, conflicts_with = "setup")]
    stateless: bool,
    /// Measure session set-up (initialize + tools/list) instead of calls.
    #[arg(long)]
    setup: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SuiteArgs {
    /// Seconds-long runs of Bastion (API keys, and authz on) and the direct
    /// fixture only, and one round of each paired comparison (and of three
    /// replicas against one, when nginx, Redis and PostgreSQL are installed).
    #[arg(long)]
    smoke: bool,
    /// Directory with the release `bastion` and `bastion-fixture`.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where to write latest.json and latest.md.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Override the length of each timed run, in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Override the fixed rate, in calls per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Override the number of idle sessions opened on Bastion.
    #[arg(long)]
    idle_sessions: Option<usize>,
    /// Only these contestants (comma-separated names, or prefixes of
    /// them); default all. `replicas` selects the scenario of three
    /// replicas against one (`bastion-replicas`) alone.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds of each paired comparison — authz on with API keys alone,
    /// audit on (SQLite, and PostgreSQL) with audit off, guard on with guard
    /// off, limits in process and on Redis with limits off, three replicas
    /// with one — (default 3, 1 with --smoke; 0 skips them).
    #[arg(long, alias = "authz-rounds")]
    paired_rounds: Option<usize>,
    /// Run the paired comparisons' rounds at this fixed rate (calls per
    /// second) instead of at the max rate: both sides then do the same work
    /// per second, so the CPU per call compares without the effect of one
    /// side's lower rate on its own cost per call (fewer calls per wake-up).
    #[arg(long)]
    paired_rate: Option<f64>,
    /// Only these paired comparisons (comma-separated); without --only,
    /// nothing else runs.
    #[arg(long, value_delimiter = ',', value_enum)]
    pairings: Vec<suite::Pairing>,
}

#[derive(Args)]
struct ReadyArgs {
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    servers: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Args)]
struct SoakArgs {
    /// Minutes to run (fractions allowed, e.g. 0.2).
    #[arg(long, required_unless_present = "smoke")]
    minutes: Option<f64>,
    /// A seconds-long run that checks the harness (15 s unless --minutes).
    #[arg(long)]
    smoke: bool,
    /// Directory with `bastion` and `bastion-fixture`.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where to write soak-latest.json and soak-latest.md.
    #[arg(long)]
    out: PathBuf,
    /// Seconds between samples (default: 60, or a tenth of a run shorter
    /// than 3 minutes).
    #[arg(long)]
    interval: Option<f64>,
    /// Requests per second over all paced workers.
    #[arg(long)]
    rate: Option<f64>,
    /// Workers (at least 3): half session-era, half stateless, one fault worker.
    #[arg(long)]
    workers: Option<usize>,
}

fn bins(dir: &std::path::Path) -> anyhow::Result<contestant::Bins> {
    let dir = std::path::absolute(dir)?;
    let b = contestant::Bins { bastion: dir.join("bastion"), fixture: dir.join("bastion-fixture") };
    for p in [&b.bastion, &b.fixture] {
        if !p.exists() {
            bail!("{} is missing: build with `cargo build --release -p bastion -p bastion-fixture`", p.display());
        }
    }
    Ok(b)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Load(a) => run_load(a).await,
            Command::Suite(a) => run_suite(a).await,
            Command::Soak(a) => run_soak(a).await,
            Command::Ready(a) => {
                let rec = suite::start_to_ready(&bins(&a.bin_dir)?, a.servers, a.runs).await?;
                println!("{}", serde_json::to_string_pretty(&rec)?);
                Ok(())
            }
        }
    })
}

async fn run_load(a: LoadArgs) -> anyhow::Result<()> {
    let args: serde_json::Value = serde_json::from_str(&a.args).context("--args is not JSON")?;
    let workload = if a.setup { load::Workload::Setup } else { load::Workload::tool_call(a.stateless, &a.tool, args) };
    if !(a.duration > 0.0 && a.timeout > 0.0) || a.rate.is_some_and(|r| r <= 0.0) {
        bail!("--duration, --timeout and --rate must be positive");
    }
    let spec = load::LoadSpec {
        workload,
        concurrency: a.concurrency.max(1),
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        max_requests: a.max_requests,
    };
    let ep = mcp::Endpoint::new(&a.url, a.bearer.as_deref(), Duration::from_secs_f64(a.timeout), a.concurrency * 2)?;
    let result = load::run(&ep, &spec).await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", report::load_table(&result));
    }
    if result.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

async fn run_suite(a: SuiteArgs) -> anyhow::Result<()> {
    let mut settings = if a.smoke { suite::Settings::smoke() } else { suite::Settings::full() };
    if let Some(d) = a.duration {
        settings.duration = Duration::from_secs_f64(d);
    }
    if let Some(r) = a.rate {
        settings.rate = r;
    }
    if let Some(n) = a.idle_sessions {
        settings.idle_sessions = n;
    }
    if let Some(n) = a.paired_rounds {
        settings.paired_rounds = n;
    }
    settings.pairings = a.pairings;
    settings.paired_rate = a.paired_rate;
    let peers = contestant::Peers::from_env();
    let report = suite::run(settings, bins(&a.bin_dir)?, peers, &a.out, &a.only).await?;
    print!("{}", report::markdown(&report));
    if !report.failures.is_empty() {
        bail!("the run failed: {}", report.failures.join("; "));
    }
    // A smoke run checks that everything works, never how fast.
    if report.smoke {
        let paired = report.paired.iter().flat_map(|c| c.rounds.iter().flat_map(|r| [&r.base, &r.variant]));
        let mut failed: Vec<String> = report
            .runs
            .iter()
            .chain(paired)
            .filter(|r| r.load.ok == 0 || r.load.errors > 0)
            .map(|r| format!("{} {:?}", r.contestant, r.scenario))
            .collect();
        let replicas = report.replicas.iter().flat_map(|c| c.rounds.iter().flat_map(|r| [&r.one, &r.three]));
        failed.extend(
            replicas
                .filter(|r| r.load.ok == 0 || r.load.errors > 0)
                .map(|r| format!("{} ({} replica(s))", suite::REPLICAS, r.replicas)),
        );
        if !failed.is_empty() {
            bail!("smoke run had failing requests: {}", failed.join("; "));
        }
        // Nothing run at all is a failure; a run of paired comparisons
        // alone (`--pairings`) has no single runs.
        let nothing = report.runs.is_empty() && report.paired.iter().all(|c| c.rounds.is_empty());
        if nothing || !report.skipped.is_empty() {
            bail!("smoke run skipped scenarios: see the report");
        }
    }
    Ok(())
}

async fn run_soak(a: SoakArgs) -> anyhow::Result<()> {
    let minutes = a.minutes.unwrap_or(0.25);
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        bail!("--minutes must be positive and at most a day");
    }
    let mut settings = soak::Settings::new(Duration::from_secs_f64(minutes * 60.0), a.smoke);
    if let Some(r) = a.rate {
        if r <= 0.0 {
            bail!("--rate must be positive");
        }
        settings.rate = r;
    }
    if let Some(w) = a.workers {
        if w < 3 {
            bail!("--workers must be at least 3");
        }
        settings.workers = w;
    }
    if let Some(i) = a.interval.filter(|i| *i > 0.0) {
        settings.set_interval(Some(Duration::from_secs_f64(i)));
    } else {
        settings.set_interval(None);
    }
    let bin_dir = std::path::absolute(&a.bin_dir)?;
    let binaries = if bin_dir.ends_with("release") {
        "release"
    } else if bin_dir.ends_with("debug") {
        "debug"
    } else {
        ""
    };
    let report = soak::run(settings, bins(&a.bin_dir)?, binaries, &a.out).await?;
    print!("{}", report::soak_markdown(&report));
    eprintln!("bench: soak report in {}", a.out.join("soak-latest.md").display());
    // The report is written first: a failed soak still leaves its figures.
    if !report.failures.is_empty() {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}
