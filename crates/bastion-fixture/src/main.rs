//! `bastion-fixture`: MCP servers used as upstreams by tests and benchmarks.
//!
//! Two servers are built into one binary, each reachable over stdio or over
//! Streamable HTTP:
//!
//! * `everything` — a port of the conformance suite's reference server: tools,
//!   resources, templates, prompts, completions, logging, progress, sampling,
//!   elicitation, subscriptions, and the stateless (`2026-07-28`) features
//!   such as `server/discover`, multi round-trip requests and
//!   `subscriptions/listen`.
//! * `echo` — a minimal, fast server (`echo`, `sleep`, `crash`, `garbage`)
//!   for benchmarks and fault-injection tests.
//!
//! At startup the fixture writes one line to stderr, so tests can check that a
//! gateway captures an upstream's stderr rather than forwarding it.
#![forbid(unsafe_code)]

mod echo;
mod everything;
mod json;
mod stateless;
mod transport;

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

/// MCP fixture servers for testing and benchmarking.
#[derive(Parser, Debug)]
#[command(name = "bastion-fixture", version, about)]
struct Cli {
    #[command(subcommand)]
    server: Server,
}

#[derive(Subcommand, Debug)]
enum Server {
    /// The conformance "everything" server.
    Everything(TransportArgs),
    /// A minimal echo server with fault-injection tools.
    Echo(TransportArgs),
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct TransportArgs {
    /// Serve over stdin/stdout.
    #[arg(long)]
    stdio: bool,
    /// Serve Streamable HTTP at `http://ADDR/mcp` (loopback only; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

/// Where a server is reached.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Stdio,
    Http(SocketAddr),
}

impl TransportArgs {
    fn mode(&self) -> anyhow::Result<Mode> {
        match (self.stdio, self.http) {
            (true, None) => Ok(Mode::Stdio),
            (false, Some(addr)) => {
                if !addr.ip().is_loopback() {
                    bail!("refusing to bind {addr}: the fixture binds loopback addresses only");
                }
                Ok(Mode::Http(addr))
            }
            _ => bail!("exactly one of --stdio or --http ADDR is required"),
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BASTION_FIXTURE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let (name, mode) = match &cli.server {
        Server::Everything(args) => ("everything", args.mode()?),
        Server::Echo(args) => ("echo", args.mode()?),
    };
    // Over stdio one client speaks on one ordered stream: one thread serves
    // it without cross-thread wake-ups. Over HTTP the default runtime serves
    // many connections (and is the benchmark's direct floor).
    let runtime = match mode {
        Mode::Stdio => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Mode::Http(_) => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(serve(cli, name, mode))
}

async fn serve(cli: Cli, name: &'static str, mode: Mode) -> anyhow::Result<()> {
    let how = match mode {
        Mode::Stdio => "stdio".to_owned(),
        Mode::Http(addr) => format!("http {addr}"),
    };
    eprintln!("bastion-fixture: {name} server starting ({how})");

    match cli.server {
        Server::Everything(_) => {
            let shared = everything::Shared::new();
            match mode {
                Mode::Stdio => transport::serve_stdio(everything::Everything::new(shared)).await,
                Mode::Http(addr) => {
                    transport::serve_http(addr, move || everything::Everything::new(shared.clone())).await
                }
            }
        }
        Server::Echo(_) => match mode {
            Mode::Stdio => {
                let (handler, garbage) = echo::Echo::with_stdout_channel();
                transport::serve_stdio_with_garbage(handler, garbage).await
            }
            Mode::Http(addr) => transport::serve_http(addr, echo::Echo::new).await,
        },
    }
    .with_context(|| format!("{name} server failed"))
}
