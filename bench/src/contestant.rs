//! The gateways under test, how each is started with the echo fixture as
//! its upstream, and how each is stopped.
//!
//! Every contestant listens on 127.0.0.1. Those that cannot be told which
//! address to bind (supergateway listens on all interfaces) are meant to be
//! run with the whole suite inside a private network namespace, which
//! `scripts/bench` arranges.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::mcp::Endpoint;
use crate::procs;

/// Where the binaries of the peers are; `None` when not installed.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    pub node: Option<PathBuf>,
    pub supergateway: Option<PathBuf>,
    pub mcp_proxy: Option<PathBuf>,
    pub contextforge_python: Option<PathBuf>,
    /// A `redis-server` for the contestant whose rate buckets live in Redis.
    pub redis_server: Option<PathBuf>,
}

impl Peers {
    /// From `BASTION_BENCH_*` variables (see `scripts/bench-provision --env`),
    /// keeping only paths that exist.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var_os(k).map(PathBuf::from).filter(|p| p.exists());
        Peers {
            node: get("BASTION_BENCH_NODE"),
            supergateway: get("BASTION_BENCH_SUPERGATEWAY"),
            mcp_proxy: get("BASTION_BENCH_MCP_PROXY"),
            contextforge_python: get("BASTION_BENCH_CONTEXTFORGE_PYTHON"),
            redis_server: get("BASTION_BENCH_REDIS_SERVER").or_else(|| on_path("redis-server")),
        }
    }
}

/// The first executable file named `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The upstream the contestant forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The echo fixture as a child process over stdio.
    Stdio,
    /// The echo fixture serving Streamable HTTP.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The echo fixture itself over HTTP: the floor.
    Direct,
    /// Bastion with API key authentication.
    Bastion,
    /// Bastion with access tokens (JWTs checked against a key set) and 50
    /// Cedar rules: authorization on.
    BastionAuthz,
    /// Bastion with the echo server run once per user: its environment
    /// names the user's own secret (`${user.TOKEN}`), so each user's calls
    /// go to a process of their own.
    BastionPerUser,
    /// Bastion as `Bastion`, with the audit trail off: what auditing costs.
    BastionNoAudit,
    /// Bastion as `Bastion`, with the data guard off: what reading every
    /// call's arguments and result costs.
    BastionNoGuard,
    /// Bastion as `Bastion`, with rate limits at every level, a server's
    /// calls in flight and a daily quota, in this process, all too high to
    /// refuse anything: what checking them costs.
    BastionLimits,
    /// Bastion as `BastionLimits`, its rate buckets in a Redis server of its
    /// own (started for it, outside the measured tree).
    BastionLimitsRedis,
    /// Bastion as `Bastion` (the audit trail on, every setting its
    /// default), its store — and so its audit trail — in a PostgreSQL
    /// server of its own (started for it, outside the measured tree).
    BastionPostgres,
    SupergatewayStateful,
    SupergatewayStateless,
    McpProxy,
    ContextForge,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bastion => "bastion",
            Kind::BastionAuthz => "bastion-authz",
            Kind::BastionPerUser => "bastion-per-user",
            Kind::BastionNoAudit => "bastion-noaudit",
            Kind::BastionNoGuard => "bastion-noguard",
            Kind::BastionLimits => "bastion-limits",
            Kind::BastionLimitsRedis => "bastion-limits-redis",
            Kind::BastionPostgres => "bastion-postgres",
            Kind::SupergatewayStateful => "supergateway-stateful",
            Kind::SupergatewayStateless => "supergateway-stateless",
            Kind::McpProxy => "mcp-proxy",
            Kind::ContextForge => "contextforge-translate",
        }
    }

    /// Whether the contestant cannot be told to bind 127.0.0.1 alone, and so
    /// runs only inside a private network namespace.
    pub fn binds_all_interfaces(self) -> bool {
        matches!(self, Kind::SupergatewayStateful | Kind::SupergatewayStateless)
    }

    /// Whether the peer's software is installed.
    pub fn available(self, peers: &Peers) -> bool {
        match self {
            Kind::Direct
            | Kind::Bastion
            | Kind::BastionAuthz
            | Kind::BastionPerUser
            | Kind::BastionNoAudit
            | Kind::BastionNoGuard
            | Kind::BastionLimits => true,
            Kind::BastionLimitsRedis => peers.redis_server.is_some(),
            Kind::BastionPostgres => crate::postgres::find_server().is_ok(),
            Kind::SupergatewayStateful | Kind::SupergatewayStateless => {
                peers.node.is_some() && peers.supergateway.is_some()
            }
            Kind::McpProxy => peers.mcp_proxy.is_some(),
            Kind::ContextForge => peers.contextforge_python.is_some(),
        }
    }

    /// Why the contestant cannot run here, when [`Kind::available`] says so.
    pub fn missing(self) -> String {
        match self {
            Kind::BastionLimitsRedis => {
                "redis-server not found on PATH (install Redis, or set BASTION_BENCH_REDIS_SERVER to one)".into()
            }
            Kind::BastionPostgres => crate::postgres::find_server().err().unwrap_or_default(),
            _ => "not installed (run scripts/bench-provision)".into(),
        }
    }
}

/// A server started for a contestant outside the gateway's process tree
/// (its rate limits' backend, its store): not the gateway's, so its CPU is
/// measured on its own and kept out of the gateway's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Redis, Backend::Postgres];

    /// How reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redis => "Redis",
            Backend::Postgres => "PostgreSQL",
        }
    }

    /// Its CPU ticks in a sample of its process tree: Redis's process
    /// alone; PostgreSQL's postmaster and every process under it (a
    /// backend per connection, the background workers), those that
    /// exited during the run included.
    pub fn ticks(self, s: &procs::TreeSample) -> u64 {
        match self {
            Backend::Redis => s.root_ticks,
            Backend::Postgres => s.tree_ticks,
        }
    }
}

/// Paths of our own release binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub bastion: PathBuf,
    pub fixture: PathBuf,
}

/// A started contestant.
pub struct Running {
    pub kind: Kind,
    pub upstream: Upstream,
    /// The MCP endpoint to load.
    pub url: String,
    pub bearer: Option<String>,
    /// The gateway process: the root of the measured process tree.
    pub root: Child,
    /// Helpers outside the measured tree (an HTTP upstream).
    pub helpers: Vec<Child>,
    /// The identity provider whose tokens the gateway checks, kept
    /// serving for the contestant's lifetime.
    pub issuer: Option<crate::authz::Issuer>,
    /// The Redis server holding the contestant's rate buckets: not the
    /// gateway's, so outside the measured tree, measured on its own.
    pub redis: Option<Child>,
    /// The PostgreSQL server holding the contestant's store: as `redis`.
    pub postgres: Option<crate::postgres::Postgres>,
    /// Kept alive for the contestant's lifetime (config, data, logs).
    pub _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.root.id().unwrap_or(0)
    }

    /// The servers started for the contestant outside the gateway's tree,
    /// each with the process id at the root of its own tree.
    pub fn backends(&self) -> Vec<(Backend, u32)> {
        let redis = self.redis.as_ref().and_then(Child::id).map(|p| (Backend::Redis, p));
        let postgres = self.postgres.as_ref().and_then(crate::postgres::Postgres::pid).map(|p| (Backend::Postgres, p));
        redis.into_iter().chain(postgres).collect()
    }

    /// The gateway's `/metrics` (Bastion contestants: served on the
    /// gateway's own address to loopback clients).
    pub fn metrics_url(&self) -> Option<String> {
        let (origin, _) = self.url.split_once("/mcp")?;
        Some(format!("{origin}/metrics"))
    }

    /// Stops the gateway and everything it started, then the helpers, the
    /// Redis server and the PostgreSQL server.
    pub async fn stop(mut self) {
        let pid = self.pid();
        stop_tree(pid, &mut self.root).await;
        for mut h in self.helpers.drain(..).chain(self.redis.take()) {
            let hp = h.id().unwrap_or(0);
            stop_tree(hp, &mut h).await;
        }
        if let Some(pg) = self.postgres.take() {
            pg.stop().await;
        }
    }
}

/// SIGTERM to a process tree we started, SIGKILL to whatever is left after
/// a grace period.
pub async fn stop_tree(pid: u32, child: &mut Child) {
    if pid == 0 {
        return;
    }
    let pids = procs::tree(pid);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for p in procs::tree(pid).into_iter().chain(pids) {
        if Path::new(&format!("/proc/{p}")).exists() {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
    }
}

/// A free TCP port on 127.0.0.1 (there is a small race until it is bound).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn log_file(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&path)?;
    Ok((path, f))
}

/// Starts `bastion-fixture echo --http 127.0.0.1:0` and returns it with its URL.
pub async fn start_http_fixture(bins: &Bins, dir: &Path) -> anyhow::Result<(Child, String)> {
    let (_, log) = log_file(dir, "fixture-http")?;
    let mut child = Command::new(&bins.fixture)
        .args(["echo", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bins.fixture.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the fixture did not print its address")??
        .context("the fixture exited")?;
    let url = line.strip_prefix("listening on ").context("unexpected fixture output")?.trim().to_string();
    // Keep draining stdout so the fixture never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

fn fixture_stdio_command(bins: &Bins) -> String {
    format!("{} echo --stdio", shell_quote(&bins.fixture.to_string_lossy()))
}

fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Writes a Bastion config with the given `mcpServers` JSON entries, creates
/// an API key, and returns the config path and the key.
pub async fn bastion_setup(
    bins: &Bins,
    dir: &Path,
    port: u16,
    servers: &serde_json::Map<String, serde_json::Value>,
    log_level: &str,
) -> anyhow::Result<(PathBuf, String)> {
    bastion_config(bins, dir, &base_config(dir, port, servers, log_level)).await
}

/// The config of the API key contestant.
pub fn base_config(
    dir: &Path,
    port: u16,
    servers: &serde_json::Map<String, serde_json::Value>,
    log_level: &str,
) -> serde_json::Value {
    serde_json::json!({
        "listen": format!("127.0.0.1:{port}"),
        "data_dir": dir.join("data"),
        "mcpServers": servers,
        "log": {"level": log_level},
        // One key drives every scenario, the 10,000 idle sessions among
        // them: the per-principal caps are raised to let it.
        "limits": {"per_principal": {"sessions": 20000, "calls_in_flight": 4096}},
    })
}

/// Writes `config` as Bastion's config file in `dir`, creates an API key,
/// and returns the config path and the key.
pub async fn bastion_config(bins: &Bins, dir: &Path, config: &serde_json::Value) -> anyhow::Result<(PathBuf, String)> {
    let path = dir.join("bastion.json");
    // The benchmark's user may use every server (unless the scenario says
    // otherwise).
    let mut config = config.clone();
    if config.get("users").is_none() {
        config["users"] = serde_json::json!({"bench": {"role": "admin"}});
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    let out = Command::new(&bins.bastion)
        .arg("--config")
        .arg(&path)
        .args(["keys", "create", "--user", "bench", "--expires", "never"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running bastion keys create")?;
    if !out.status.success() {
        bail!("bastion keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key = String::from_utf8(out.stdout)?.trim().to_string();
    if key.is_empty() {
        bail!("bastion keys create printed no key");
    }
    Ok((path, key))
}

/// `bastion secrets set --user USER NAME`, the value on standard input.
async fn set_user_secret(bins: &Bins, config: &Path, user: &str, name: &str, value: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(&bins.bastion)
        .arg("--config")
        .arg(config)
        .args(["secrets", "set", "--user", user, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running bastion secrets set")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(value.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("bastion secrets set failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Starts a contestant and waits until it answers `initialize`.
pub async fn start(kind: Kind, upstream: Upstream, bins: &Bins, peers: &Peers) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new().prefix("bastion-bench-").tempdir()?;
    let mut helpers = Vec::new();
    let http_upstream = if upstream == Upstream::Http {
        let (child, url) = start_http_fixture(bins, dir.path()).await?;
        helpers.push(child);
        Some(url)
    } else {
        None
    };
    let (log_path, log) = log_file(dir.path(), kind.name())?;
    let stdio_cmd = fixture_stdio_command(bins);
    let port = free_port()?;
    let mut bearer = None;
    let mut issuer = None;
    let mut redis = None;
    let mut postgres = None;
    let mut cmd;
    let url;
    match kind {
        Kind::Direct => {
            if upstream == Upstream::Stdio {
                bail!("the direct contestant is the HTTP fixture itself");
            }
            // The helper is the contestant: measure it, not a gateway.
            let root = helpers.pop().expect("started above");
            return Ok(Running {
                kind,
                upstream,
                url: http_upstream.expect("http"),
                bearer: None,
                root,
                helpers,
                issuer: None,
                redis: None,
                postgres: None,
                _dir: dir,
                log: log_path,
            });
        }
        Kind::Bastion
        | Kind::BastionAuthz
        | Kind::BastionPerUser
        | Kind::BastionNoAudit
        | Kind::BastionNoGuard
        | Kind::BastionLimits
        | Kind::BastionLimitsRedis
        | Kind::BastionPostgres => {
            let mut servers = serde_json::Map::new();
            let mut entry = match &http_upstream {
                None => serde_json::json!({"command": bins.fixture, "args": ["echo", "--stdio"]}),
                Some(u) => serde_json::json!({"url": u, "type": "streamable-http"}),
            };
            if kind == Kind::BastionPerUser {
                entry["env"] = serde_json::json!({"TOKEN": "${user.TOKEN}"});
            }
            servers.insert("echo".into(), entry);
            let mut config = base_config(dir.path(), port, &servers, "warn");
            if kind == Kind::BastionNoAudit {
                config["audit"] = serde_json::json!({"enabled": false});
            }
            if kind == Kind::BastionNoGuard {
                config["guard"] = serde_json::json!({"enabled": false});
            }
            if kind == Kind::BastionPostgres {
                // Dropped on an error below, the server is stopped all the
                // same (its watchdog's stdin closes).
                let script = crate::postgres::find_server().map_err(anyhow::Error::msg)?;
                let pg = crate::postgres::Postgres::start(&script, dir.path()).await?;
                config["store"] = serde_json::json!(pg.url());
                postgres = Some(pg);
            }
            if matches!(kind, Kind::BastionLimits | Kind::BastionLimitsRedis) {
                let redis_url = if kind == Kind::BastionLimitsRedis {
                    let server = peers.redis_server.as_ref().context("redis-server")?;
                    let (child, redis_port) = start_redis(server, dir.path()).await?;
                    redis = Some(child);
                    Some(format!("redis://127.0.0.1:{redis_port}/0"))
                } else {
                    None
                };
                add_limits(&mut config, "echo", redis_url.as_deref());
            }
            let resource = format!("http://127.0.0.1:{port}/mcp");
            if kind == Kind::BastionAuthz {
                // The same gateway and limits, with tokens and policies on.
                let idp = crate::authz::Issuer::start().await?;
                if let (Some(c), serde_json::Value::Object(extra)) =
                    (config.as_object_mut(), idp.config(&resource, "echo"))
                {
                    c.extend(extra);
                }
                std::fs::write(dir.path().join(crate::authz::POLICY_FILE), crate::authz::POLICY)?;
                issuer = Some(idp);
            }
            let (config, key) = bastion_config(bins, dir.path(), &config).await?;
            if kind == Kind::BastionPerUser {
                set_user_secret(bins, &config, "bench", "TOKEN", "bench-per-user-token").await?;
            }
            // Clients of the authz contestant present the token; its API key
            // goes unused.
            bearer = Some(match &issuer {
                Some(idp) => idp.token(crate::authz::USER, &resource)?,
                None => key,
            });
            cmd = Command::new(&bins.bastion);
            cmd.arg("--config").arg(&config).arg("serve");
            url = format!("http://127.0.0.1:{port}/mcp/echo");
        }
        Kind::SupergatewayStateful | Kind::SupergatewayStateless => {
            if upstream == Upstream::Http {
                bail!("supergateway does not serve a Streamable HTTP upstream over Streamable HTTP");
            }
            cmd = Command::new(peers.node.as_ref().context("node")?);
            cmd.arg(peers.supergateway.as_ref().context("supergateway")?)
                .args(["--stdio", &stdio_cmd, "--outputTransport", "streamableHttp", "--port"])
                .arg(port.to_string())
                .args(["--logLevel", "none"]);
            if kind == Kind::SupergatewayStateful {
                cmd.arg("--stateful");
            }
            url = format!("http://127.0.0.1:{port}/mcp");
        }
        Kind::McpProxy => {
            if upstream == Upstream::Http {
                bail!("mcp-proxy serves stdio servers only");
            }
            cmd = Command::new(peers.mcp_proxy.as_ref().context("mcp-proxy")?);
            cmd.args(["--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--log-level", "WARNING", "--"])
                .arg(&bins.fixture)
                .args(["echo", "--stdio"]);
            url = format!("http://127.0.0.1:{port}/mcp");
        }
        Kind::ContextForge => {
            if upstream == Upstream::Http {
                // Tried: `--connect-streamable-http URL --expose-streamable-http`
                // pumps the remote server to stdio and never listens.
                bail!("its bridge connects a Streamable HTTP server to stdio only, not to Streamable HTTP");
            }
            cmd = Command::new(peers.contextforge_python.as_ref().context("contextforge")?);
            cmd.args(["-m", "mcpgateway.translate"]);
            cmd.args(["--stdio", &stdio_cmd, "--expose-streamable-http", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args(["--logLevel", "warning"])
                .current_dir(dir.path());
            // Its settings refuse to load without strong secrets; the bridge
            // uses none of them.
            let secret = bastion_core::apikey::random_token(32);
            for k in ["JWT_SECRET_KEY", "AUTH_ENCRYPTION_SECRET"] {
                cmd.env(k, &secret);
            }
            for k in ["BASIC_AUTH_PASSWORD", "PLATFORM_ADMIN_PASSWORD", "DEFAULT_USER_PASSWORD"] {
                cmd.env(k, format!("Pw1-{secret}"));
            }
            cmd.env("LOG_LEVEL", "WARNING");
            url = format!("http://127.0.0.1:{port}/mcp");
        }
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    let root = cmd.spawn().with_context(|| format!("starting {}", kind.name()))?;
    let running =
        Running { kind, upstream, url, bearer, root, helpers, issuer, redis, postgres, _dir: dir, log: log_path };
    if let Err(e) = wait_ready(&running, Duration::from_secs(60)).await {
        let log = std::fs::read_to_string(&running.log).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        running.stop().await;
        bail!("{e:#}\n--- log tail ---\n{tail}");
    }
    Ok(running)
}

/// A rate no run comes near: the most a rule may allow (a million per
/// second), with as large a burst.
pub const NEVER_REACHED_RATE: &str = "1000000/s";
pub const NEVER_REACHED_BURST: u32 = 1_000_000;
/// Calls per user per day no run comes near.
const NEVER_REACHED_QUOTA: u64 = 1_000_000_000;

/// Rate rules at every level a call to `tool` of `server` falls under —
/// every caller, the user, the server, the tool, the user and the tool —
/// and a limit of calls in flight on the server, none of them reachable
/// in a run: what the limit phase costs when it refuses nothing. No group
/// rule: the benchmark's user is in no group, and putting it in one would
/// change what authorization does too.
pub fn limit_rules(server: &str, tool: &str) -> serde_json::Value {
    let (rate, burst) = (NEVER_REACHED_RATE, NEVER_REACHED_BURST);
    serde_json::json!([
        {"scope": "global", "rate": rate, "burst": burst},
        {"scope": "user", "rate": rate, "burst": burst},
        {"scope": "server", "match": server, "rate": rate, "burst": burst},
        {"scope": "server", "match": server, "concurrency": 4096},
        {"scope": "tool", "match": tool, "rate": rate, "burst": burst},
        {"scope": "user_tool", "rate": rate, "burst": burst},
    ])
}

/// Adds [`limit_rules`] for the echo tool of `server` and a daily quota no
/// run comes near to a config made by `base_config`; their rate buckets in
/// Redis at `redis_url` when given.
fn add_limits(config: &mut serde_json::Value, server: &str, redis_url: Option<&str>) {
    let limits = &mut config["limits"];
    limits["rules"] = limit_rules(server, &format!("{server}__echo"));
    limits["quotas"] = serde_json::json!([{"scope": "user", "per": "day", "calls": NEVER_REACHED_QUOTA}]);
    if let Some(url) = redis_url {
        limits["redis"] = serde_json::json!(url);
        // Redis out of reach refuses calls, which the suite then reports
        // as a failed run: nothing falls back to this process's buckets.
        limits["on_redis_error"] = serde_json::json!("refuse");
    }
}

/// Starts a throwaway `redis-server` on a free loopback port — nothing
/// saved, no append-only file, its files in `dir` — and waits until it
/// answers `PING`. Returns it and its port.
pub async fn start_redis(server: &Path, dir: &Path) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let redis_dir = dir.join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let (log_path, log) = log_file(dir, "redis")?;
    let tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let mut child = Command::new(server)
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"])
        .arg("--dir")
        .arg(&redis_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", server.display()))?;
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("redis-server exited ({status})\n--- log tail ---\n{}", tail());
        }
        match redis_ping(port).await {
            Ok(()) => return Ok((child, port)),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap_or(0);
    stop_tree(pid, &mut child).await;
    bail!("redis-server on port {port} did not answer PING within 10 s: {last}\n--- log tail ---\n{}", tail())
}

/// `PING` on a fresh connection; `+PONG` expected.
async fn redis_ping(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await??;
    if !buf[..n].starts_with(b"+PONG") {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

/// Polls until a session can be opened and the echo tool answers.
pub async fn wait_ready(r: &Running, limit: Duration) -> anyhow::Result<()> {
    wait_answering(&r.url, r.bearer.as_deref(), limit).await.with_context(|| format!("{} not ready", r.kind.name()))
}

/// Polls the MCP endpoint at `url` until a session can be opened and the
/// echo tool answers in it, for at most `limit`.
pub async fn wait_answering(url: &str, bearer: Option<&str>, limit: Duration) -> anyhow::Result<()> {
    let ep = Endpoint::new(url, bearer, Duration::from_secs(10), 4)?;
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match ep.initialize().await {
            Ok(mut s) => {
                let args = serde_json::json!({"name": "echo", "arguments": {"text": "ready"}});
                let res = ep.request(&mut s, "tools/call", args).await;
                let _ = ep.close(s).await;
                match res {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not answer after {limit:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits contestants' configs are ones the gateway accepts.
    #[test]
    fn limits_configs_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = serde_json::Map::new();
        servers.insert("echo".into(), serde_json::json!({"command": "/bin/true", "args": ["echo", "--stdio"]}));
        for redis in [None, Some("redis://127.0.0.1:6390/0")] {
            let mut config = base_config(dir.path(), 8080, &servers, "warn");
            add_limits(&mut config, "echo", redis);
            config["users"] = serde_json::json!({"bench": {"role": "admin"}});
            let text = serde_json::to_string_pretty(&config).unwrap();
            let parsed = bastion_core::config::Config::parse(Path::new("bastion.json"), &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(parsed.limits.rules.len(), 6);
            assert_eq!(parsed.limits.quotas.len(), 1);
            assert_eq!(parsed.limits.redis.is_some(), redis.is_some());
        }
    }

    /// The PostgreSQL contestant's config (a store URL as the throwaway
    /// server prints it) is one the gateway accepts.
    #[test]
    fn postgres_store_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = serde_json::Map::new();
        servers.insert("echo".into(), serde_json::json!({"command": "/bin/true", "args": ["echo", "--stdio"]}));
        let mut config = base_config(dir.path(), 8080, &servers, "warn");
        config["store"] = serde_json::json!("postgres://postgres@127.0.0.1:5999/postgres");
        config["users"] = serde_json::json!({"bench": {"role": "admin"}});
        let text = serde_json::to_string_pretty(&config).unwrap();
        let parsed = bastion_core::config::Config::parse(Path::new("bastion.json"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(parsed.store.location.is_postgres());
    }
}
