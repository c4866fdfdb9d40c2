//! Scenario `replicas`: stateless `tools/call echo` at max rate through
//! nginx in front of one Bastion replica, and in front of three, all on one
//! PostgreSQL store and one Redis.
//!
//! The benchmark starts everything itself and stops it after: a throwaway
//! PostgreSQL server (`scripts/pg-throwaway`) with a database of this run's
//! own, a throwaway `redis-server` (as the limits contestant does), three
//! `bastion serve --replica rN` with the same vault master key, audit key
//! and API key pepper from their environment, each with the echo fixture
//! over stdio and a global rate rule in Redis that never refuses, and two
//! nginx servers built from `deploy/nginx/bastion.conf`: one whose three
//! replica addresses all name `r1` (one replica), one naming `r1`, `r2` and
//! `r3`. In each round one max-rate run goes through each nginx, the order
//! alternating, so both cases meet the same machine, store and Redis.
//!
//! CPU per call is measured for the Bastion processes together (the three
//! replicas: the idle ones cost next to nothing in the one-replica case),
//! and on their own for nginx, Redis and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::contestant::{self, Bins, Peers};
use crate::load::{self, LoadResult, LoadSpec, Workload};
use crate::mcp::Endpoint;
use crate::postgres::{self, Postgres, postgres_bin, random_hex, repo_file};
use crate::procs;
use crate::suite::{self, Refused, Settings};

/// The replicas' names: `--replica` gives them, session ids start with them,
/// and `deploy/nginx/bastion.conf` routes by them.
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
/// Where each replica finds the shared keys.
const MASTER_KEY_VAR: &str = "BASTION_MASTER_KEY";
const AUDIT_KEY_VAR: &str = "BASTION_AUDIT_KEY";
const PEPPER_VAR: &str = "BASTION_KEY_PEPPER";

/// One max-rate run through one of the two nginx servers.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicasRun {
    /// Replicas behind the nginx server loaded: 1 or 3.
    pub replicas: usize,
    #[serde(flatten)]
    pub load: LoadResult,
    /// CPU of the three Bastion processes together (not their children),
    /// per successful call.
    pub bastion_cpu_us_per_call: Option<f64>,
    /// The same with their children (each replica's stdio echo server).
    pub bastion_tree_cpu_us_per_call: Option<f64>,
    /// nginx's master and workers.
    pub nginx_cpu_us_per_call: Option<f64>,
    pub redis_cpu_us_per_call: Option<f64>,
    /// The PostgreSQL server: its postmaster and every backend.
    pub postgres_cpu_us_per_call: Option<f64>,
    pub loadgen_cpu_us_per_call: Option<f64>,
    pub steal_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicasRound {
    pub one: ReplicasRun,
    pub three: ReplicasRun,
}

impl ReplicasRound {
    /// Three replicas' calls/s over one's.
    pub fn ratio(&self) -> Option<f64> {
        (self.one.load.calls_per_s > 0.0).then(|| self.three.load.calls_per_s / self.one.load.calls_per_s)
    }
}

/// Three replicas against one: medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicasComparison {
    /// The machine's cores, which every replica, nginx, PostgreSQL, Redis
    /// and the load generator share.
    pub nproc: usize,
    /// Concurrent clients, each sending one stateless request at a time.
    pub concurrency: usize,
    pub rounds: Vec<ReplicasRound>,
    pub one_calls_per_s: Option<f64>,
    pub three_calls_per_s: Option<f64>,
    /// Median of the rounds' ratios of three replicas' calls/s to one's.
    pub ratio: Option<f64>,
    pub one_bastion_cpu_us_per_call: Option<f64>,
    pub three_bastion_cpu_us_per_call: Option<f64>,
}

/// The programs the scenario needs beyond our own.
pub struct Tools {
    nginx: PathBuf,
    redis_server: PathBuf,
    psql: PathBuf,
    pg_throwaway: PathBuf,
    nginx_site: PathBuf,
}

impl Tools {
    /// What this machine has, or why the scenario cannot run here.
    pub fn find(peers: &Peers) -> Result<Tools, String> {
        let mut missing = Vec::new();
        let nginx = nginx_bin();
        if nginx.is_none() {
            missing.push("nginx");
        }
        if peers.redis_server.is_none() {
            missing.push("redis-server (or set BASTION_BENCH_REDIS_SERVER)");
        }
        let psql = postgres_bin("psql");
        if ["initdb", "pg_ctl"].iter().any(|b| postgres_bin(b).is_none()) || psql.is_none() {
            missing.push("PostgreSQL's server and client (initdb, pg_ctl, psql)");
        }
        if !missing.is_empty() {
            return Err(format!("not installed: {} (scripts/provision installs them)", missing.join(", ")));
        }
        let pg_throwaway = repo_file(postgres::SCRIPT)?;
        let nginx_site = repo_file("deploy/nginx/bastion.conf")?;
        Ok(Tools {
            nginx: nginx.expect("checked"),
            redis_server: peers.redis_server.clone().expect("checked"),
            psql: psql.expect("checked"),
            pg_throwaway,
            nginx_site,
        })
    }
}

/// `nginx`, on PATH or where distributions put it.
fn nginx_bin() -> Option<PathBuf> {
    contestant::on_path("nginx")
        .or_else(|| ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].map(PathBuf::from).into_iter().find(|p| p.is_file()))
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// nginx with `deploy/nginx/bastion.conf`, its three replica addresses
/// (`bastion-N:8080`) replaced by `targets`, its listener by a free
/// loopback port.
struct Nginx {
    port: u16,
    child: Child,
}

impl Nginx {
    async fn start(bin: &Path, shipped: &Path, dir: &Path, targets: [u16; 3]) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir.join("temp"))?;
        let mut site = std::fs::read_to_string(shipped).with_context(|| format!("reading {}", shipped.display()))?;
        for (i, port) in targets.iter().enumerate() {
            let name = format!("bastion-{}:8080", i + 1);
            if !site.contains(&name) {
                bail!("{} names no {name}", shipped.display());
            }
            site = site.replace(&name, &format!("127.0.0.1:{port}"));
        }
        if !site.contains("listen 8080;") {
            bail!("{} has no `listen 8080;`", shipped.display());
        }
        // The temp paths of the modules this build of nginx has.
        let built = Command::new(bin).arg("-V").output().await.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let built = built.unwrap_or_default();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|m| **m == "client_body" || !built.contains(&format!("--without-http_{m}_module")))
            .map(|m| format!("    {m}_temp_path {}/temp/{m};\n", dir.display()))
            .collect();
        // As root, the workers would run as `nobody`, who cannot enter the
        // temporary directory.
        let user = if nix::unistd::geteuid().is_root() { "user root;\n" } else { "" };
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = contestant::free_port()?;
            std::fs::write(
                dir.join("bastion.conf"),
                site.replace("listen 8080;", &format!("listen 127.0.0.1:{port};")),
            )?;
            let main = format!(
                "daemon off;\nmaster_process on;\nworker_processes auto;\n{user}pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n    access_log off;\n{temp_paths}    include {d}/bastion.conf;\n}}\n",
                d = dir.display()
            );
            std::fs::write(dir.join("nginx.conf"), main)?;
            let (_, out) = contestant::log_file(dir, "nginx")?;
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return Ok(Nginx { port, child });
                }
                if tokio::time::Instant::now() > deadline {
                    let pid = child.id().unwrap_or(0);
                    contestant::stop_tree(pid, &mut child).await;
                    bail!("nginx did not listen within 10 s: {}", Nginx::errors(dir));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last_error = Nginx::errors(dir);
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        bail!("nginx did not start: {last_error}")
    }

    fn errors(dir: &Path) -> String {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!("{}{}", read("nginx.log"), read("error.log")).trim().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        let pid = self.pid();
        contestant::stop_tree(pid, &mut self.child).await;
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Everything the scenario started, stopped in reverse order.
#[derive(Default)]
struct Cluster {
    postgres: Option<Postgres>,
    redis: Option<Child>,
    /// Each replica's process and port.
    replicas: Vec<(Child, u16)>,
    /// nginx in front of `r1` alone, and in front of all three.
    one: Option<Nginx>,
    three: Option<Nginx>,
}

impl Cluster {
    async fn stop(mut self) {
        for n in [self.one.take(), self.three.take()].into_iter().flatten() {
            n.stop().await;
        }
        for (mut child, _) in self.replicas.drain(..).chain(self.redis.take().map(|c| (c, 0))) {
            let pid = child.id().unwrap_or(0);
            contestant::stop_tree(pid, &mut child).await;
        }
        if let Some(pg) = self.postgres.take() {
            pg.stop().await;
        }
    }

    fn replica_pids(&self) -> Vec<u32> {
        self.replicas.iter().filter_map(|(c, _)| c.id()).collect()
    }
}

/// A replica's config: the API key contestant's, on the shared store, with
/// the shared keys from the environment and a global rate rule in Redis
/// that never refuses (so each call takes its bucket there).
fn replica_config(dir: &Path, port: u16, fixture: &Path, store: &str, redis: &str) -> serde_json::Value {
    let mut servers = serde_json::Map::new();
    servers.insert("echo".into(), json!({"command": fixture, "args": ["echo", "--stdio"]}));
    let mut config = contestant::base_config(dir, port, &servers, "warn");
    config["store"] = json!(store);
    config["vault"] = json!({"master_key": {"env": MASTER_KEY_VAR}});
    config["audit"] = json!({"key": {"env": AUDIT_KEY_VAR}});
    config["auth"] = json!({"key_pepper": {"env": PEPPER_VAR}});
    config["users"] = json!({"bench": {"role": "admin"}});
    let limits = &mut config["limits"];
    limits["redis"] = json!(redis);
    limits["on_redis_error"] = json!("refuse");
    limits["rules"] = json!([{
        "scope": "global",
        "rate": contestant::NEVER_REACHED_RATE,
        "burst": contestant::NEVER_REACHED_BURST,
    }]);
    config
}

/// Three replicas against one; `Err` when something could not be started
/// or measured, [`Refused`] inside it when a replica refused a call.
pub async fn compare(settings: &Settings, bins: &Bins, tools: &Tools, tps: f64) -> anyhow::Result<ReplicasComparison> {
    let dir = tempfile::Builder::new().prefix("bastion-bench-replicas-").tempdir()?;
    let mut cluster = Cluster::default();
    let result = run(settings, bins, tools, tps, dir.path(), &mut cluster).await;
    cluster.stop().await;
    if result.is_err() {
        for name in REPLICAS {
            let log = std::fs::read_to_string(dir.path().join(name).join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            if !tail.is_empty() {
                eprintln!("bench: {name}'s log ends with:");
                for l in tail.into_iter().rev() {
                    eprintln!("  {l}");
                }
            }
        }
    }
    result
}

async fn run(
    settings: &Settings,
    bins: &Bins,
    tools: &Tools,
    tps: f64,
    dir: &Path,
    cluster: &mut Cluster,
) -> anyhow::Result<ReplicasComparison> {
    eprintln!("bench: replicas: starting PostgreSQL, Redis, three replicas and nginx");
    let pg = Postgres::start(&tools.pg_throwaway, dir).await?;
    let pg = cluster.postgres.insert(pg);
    let store = pg.create_database(&tools.psql, "bench_replicas").await?;
    let (redis, redis_port) = contestant::start_redis(&tools.redis_server, dir).await?;
    cluster.redis = Some(redis);
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");

    let env = [(MASTER_KEY_VAR, random_hex(32)?), (AUDIT_KEY_VAR, random_hex(32)?), (PEPPER_VAR, random_hex(32)?)];
    let mut configs = Vec::new();
    for name in REPLICAS {
        let rdir = dir.join(name);
        std::fs::create_dir_all(&rdir)?;
        let port = contestant::free_port()?;
        let path = rdir.join("bastion.json");
        let config = replica_config(&rdir, port, &bins.fixture, &store, &redis_url);
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        configs.push((name, rdir, path, port));
    }
    // The key, made once in the shared store (which this first command
    // migrates), is good on every replica: they share the pepper.
    let out = Command::new(&bins.bastion)
        .arg("--config")
        .arg(&configs[0].2)
        .args(["keys", "create", "--user", "bench", "--expires", "never"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running bastion keys create")?;
    if !out.status.success() {
        bail!("bastion keys create failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let key = String::from_utf8(out.stdout)?.trim().to_string();

    for (name, rdir, path, port) in &configs {
        let (_, log) = contestant::log_file(rdir, name)?;
        let child = Command::new(&bins.bastion)
            .arg("--config")
            .arg(path)
            .args(["serve", "--replica", name])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting replica {name}"))?;
        cluster.replicas.push((child, *port));
    }
    // Until a replica reaches Redis, its limited calls are refused: ready
    // is a call answered.
    for (name, _, _, port) in &configs {
        let url = format!("http://127.0.0.1:{port}/mcp/echo");
        contestant::wait_answering(&url, Some(&key), Duration::from_secs(60))
            .await
            .with_context(|| format!("replica {name} not ready"))?;
    }
    let ports: Vec<u16> = configs.iter().map(|c| c.3).collect();
    let one = Nginx::start(&tools.nginx, &tools.nginx_site, &dir.join("nginx-one"), [ports[0]; 3]).await?;
    cluster.one = Some(one);
    let three =
        Nginx::start(&tools.nginx, &tools.nginx_site, &dir.join("nginx-three"), [ports[0], ports[1], ports[2]]).await?;
    cluster.three = Some(three);
    let cluster = &*cluster;
    let (Some(one), Some(three)) = (&cluster.one, &cluster.three) else { unreachable!("both started") };

    let s = settings;
    let call = Workload::tool_call(true, "echo", suite::echo_args());
    let endpoint = |n: &Nginx| {
        Endpoint::new(&format!("http://127.0.0.1:{}/mcp/echo", n.port), Some(&key), s.timeout, s.concurrency * 2)
    };
    let (ep_one, ep_three) = (endpoint(one)?, endpoint(three)?);
    for (ep, n) in [(&ep_one, 1), (&ep_three, 3)] {
        ep.stateless(1, "tools/call", json!({"name": "echo", "arguments": suite::echo_args()}))
            .await
            .map_err(|e| anyhow::anyhow!("a stateless call through nginx in front of {n} replica(s): {e}"))?;
        let warm = LoadSpec {
            workload: call.clone(),
            concurrency: s.concurrency,
            rate: None,
            duration: s.warmup,
            max_requests: s.warmup_requests,
        };
        let _ = load::run(ep, &warm).await;
    }

    let probe = Probe {
        replicas: cluster.replica_pids(),
        redis: cluster.redis.as_ref().and_then(Child::id),
        postgres: cluster.postgres.as_ref().and_then(Postgres::pid),
        tps,
    };
    let spec = LoadSpec {
        workload: call,
        concurrency: s.concurrency,
        rate: None,
        duration: s.duration,
        max_requests: s.max_requests,
    };
    let n = s.paired_rounds.max(1);
    eprintln!("bench: replicas: three against one, {n} round(s)");
    let mut rounds = Vec::new();
    for i in 0..n {
        // Alternating order: one replica first in even rounds.
        let mut pair = [None, None];
        for k in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (ep, nginx, replicas) = if k == 0 { (&ep_one, one, 1) } else { (&ep_three, three, 3) };
            let r = probe.run(ep, nginx, replicas, &spec).await;
            eprintln!("bench: {}", crate::report::replicas_line(&r));
            pair[k] = Some(r);
        }
        let [Some(one), Some(three)] = pair else { unreachable!("both runs made") };
        rounds.push(ReplicasRound { one, three });
    }

    // Nothing may have been refused: the rule is there to put Redis on the
    // path, not to limit.
    let mut found = Vec::new();
    for (name, port) in REPLICAS.iter().zip(&ports) {
        match suite::denials_at(&format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(counts) => {
                let nonzero: Vec<String> =
                    counts.iter().filter(|(_, v)| *v > 0.0).map(|(k, v)| format!("{k} {v}")).collect();
                if !nonzero.is_empty() {
                    found.push(format!("{name} counted {}", nonzero.join(", ")));
                }
            }
            Err(e) => found.push(format!("{name}'s denial counters could not be read: {e:#}")),
        }
    }
    if !found.is_empty() {
        return Err(anyhow::Error::new(Refused(format!("the replicas must refuse nothing: {}", found.join("; ")))));
    }

    let c = ReplicasComparison {
        nproc: suite::machine().nproc,
        concurrency: s.concurrency,
        one_calls_per_s: suite::median(rounds.iter().map(|r| Some(r.one.load.calls_per_s))),
        three_calls_per_s: suite::median(rounds.iter().map(|r| Some(r.three.load.calls_per_s))),
        ratio: suite::median(rounds.iter().map(ReplicasRound::ratio)),
        one_bastion_cpu_us_per_call: suite::median(rounds.iter().map(|r| r.one.bastion_cpu_us_per_call)),
        three_bastion_cpu_us_per_call: suite::median(rounds.iter().map(|r| r.three.bastion_cpu_us_per_call)),
        rounds,
    };
    eprintln!("bench: {}", crate::report::replicas_summary(&c));
    Ok(c)
}

/// The processes measured around each run.
struct Probe {
    replicas: Vec<u32>,
    redis: Option<u32>,
    postgres: Option<u32>,
    tps: f64,
}

/// Ticks of the processes measured, at one moment.
struct Ticks {
    bastion: u64,
    bastion_tree: u64,
    nginx: u64,
    redis: Option<u64>,
    postgres: Option<u64>,
    me: u64,
}

impl Probe {
    fn ticks(&self, nginx: u32) -> Ticks {
        let replicas: Vec<procs::TreeSample> = self.replicas.iter().map(|p| procs::sample(*p)).collect();
        Ticks {
            bastion: replicas.iter().map(|s| s.root_ticks).sum(),
            bastion_tree: replicas.iter().map(|s| s.tree_ticks).sum(),
            nginx: procs::sample(nginx).tree_ticks,
            redis: self.redis.map(|p| procs::sample(p).root_ticks),
            postgres: self.postgres.map(|p| procs::sample(p).tree_ticks),
            me: procs::sample(std::process::id()).root_ticks,
        }
    }

    async fn run(&self, ep: &Endpoint, nginx: &Nginx, replicas: usize, spec: &LoadSpec) -> ReplicasRun {
        let before = self.ticks(nginx.pid());
        let machine_before = procs::machine_cpu();
        let result = load::run(ep, spec).await;
        let machine_after = procs::machine_cpu();
        let after = self.ticks(nginx.pid());
        let per_call =
            |b: u64, a: u64| (result.ok > 0).then(|| a.saturating_sub(b) as f64 / self.tps / result.ok as f64 * 1e6);
        let opt = |b: Option<u64>, a: Option<u64>| b.zip(a).and_then(|(b, a)| per_call(b, a));
        ReplicasRun {
            replicas,
            bastion_cpu_us_per_call: per_call(before.bastion, after.bastion),
            bastion_tree_cpu_us_per_call: per_call(before.bastion_tree, after.bastion_tree),
            nginx_cpu_us_per_call: per_call(before.nginx, after.nginx),
            redis_cpu_us_per_call: opt(before.redis, after.redis),
            postgres_cpu_us_per_call: opt(before.postgres, after.postgres),
            loadgen_cpu_us_per_call: per_call(before.me, after.me),
            steal_percent: procs::steal_percent(machine_before, machine_after),
            load: result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replicas' config is one the gateway accepts.
    #[test]
    fn replica_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let config = replica_config(
            dir.path(),
            8080,
            Path::new("/bin/true"),
            "postgres://postgres@127.0.0.1:5999/bench_replicas_0",
            "redis://127.0.0.1:6390/0",
        );
        let text = serde_json::to_string_pretty(&config).unwrap();
        let parsed = bastion_core::config::Config::parse(Path::new("bastion.json"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(parsed.limits.redis.is_some());
        assert_eq!(parsed.limits.rules.len(), 1);
        assert!(parsed.auth.key_pepper.is_some());
    }

    /// The shipped nginx site names the three addresses and the listener
    /// the scenario replaces.
    #[test]
    fn the_shipped_nginx_site_has_what_is_replaced() {
        let site = std::fs::read_to_string(repo_file("deploy/nginx/bastion.conf").unwrap()).unwrap();
        for name in ["bastion-1:8080", "bastion-2:8080", "bastion-3:8080", "listen 8080;"] {
            assert!(site.contains(name), "{name}");
        }
    }
}
