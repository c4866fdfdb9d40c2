//! Several replicas serving as one gateway, through the real binary: three
//! `bastion serve --replica rN` on one PostgreSQL store and one Redis,
//! behind nginx with `deploy/nginx/bastion.conf`.
//!
//! - Session-era clients (Streamable HTTP and legacy SSE) work behind the
//!   balancer: each session lives in the replica its id names (`rN.…`),
//!   which nginx routes its requests to; sessions spread over the replicas;
//!   stateless clients go to any.
//! - A global rate of R calls/s holds within 5 % across the replicas under
//!   load from several clients (the budget lives in Redis).
//! - A key revoked and a lockdown set or lifted with the CLI on one replica
//!   are in force on all three within a second (the store's change feed).
//! - A replica killed mid-load loses only its calls in flight: stateless
//!   clients carry on, and session clients whose session was on it get an
//!   error (404 or 502) and carry on in a new session on another replica.
//!
//! Each test makes a database of its own on the PostgreSQL server that
//! `BASTION_TEST_POSTGRES` names (as `scripts/pg-throwaway start` prints)
//! and uses the Redis that `BASTION_TEST_REDIS_URL` names (as
//! `scripts/redis-throwaway start` prints), with a user name no other run
//! uses; it runs its own nginx on free loopback ports. Without PostgreSQL
//! the tests are skipped with a message, unless `BASTION_REQUIRE_POSTGRES=1`;
//! without Redis or nginx, unless `BASTION_REQUIRE_REDIS=1` (`scripts/test`
//! sets both): then they fail. Every replica has the same vault master key,
//! audit key and API key pepper (`auth.key_pepper`, in its environment), as
//! `docs/operations.md` asks.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{
    Gateway, META_CAPABILITIES, META_VERSION, Mcp, Options, Reply, STATELESS, WAIT, bastion_bin, children_of,
    eventually, fixture_echo, http, open_legacy_sse, psql, run_bounded, sse_messages, tool_text,
};

const VERSION: &str = "2025-11-25";
const LIMIT_REACHED: i64 = -32029;
/// A denial: what the lockdown answers.
const FORBIDDEN: i64 = -32003;

/// The PostgreSQL server each test makes its database on.
const POSTGRES_VAR: &str = "BASTION_TEST_POSTGRES";
/// Set to `1`, a missing PostgreSQL fails the tests instead of skipping them.
const REQUIRE_POSTGRES_VAR: &str = "BASTION_REQUIRE_POSTGRES";
/// The Redis of the shared budgets.
const REDIS_VAR: &str = "BASTION_TEST_REDIS_URL";
/// Set to `1`, a missing Redis or nginx fails the tests instead of
/// skipping them.
const REQUIRE_REDIS_VAR: &str = "BASTION_REQUIRE_REDIS";

/// The replicas' names, as `--replica` gives them and session ids start.
const REPLICAS: [&str; 3] = ["r1", "r2", "r3"];
/// How soon a change made on one replica must be in force on all.
const PROPAGATION: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// What the tests need
// ---------------------------------------------------------------------------

/// The PostgreSQL server, the Redis and nginx, or `None` (after saying
/// which is missing) when the tests run without them. Panics when they
/// are required and missing.
fn prerequisites() -> Option<(String, String, PathBuf)> {
    let required = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    let postgres = match std::env::var(POSTGRES_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ if required(REQUIRE_POSTGRES_VAR) => panic!(
            "{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_VAR} is not set: the replica tests cannot run \
             (scripts/pg-throwaway start runs a throwaway server and prints its URL)"
        ),
        _ => {
            eprintln!("skipped: {POSTGRES_VAR} is not set (scripts/pg-throwaway start runs a throwaway PostgreSQL)");
            return None;
        }
    };
    let redis = match std::env::var(REDIS_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ if required(REQUIRE_REDIS_VAR) => panic!(
            "{REQUIRE_REDIS_VAR}=1 but {REDIS_VAR} is not set: the replica tests cannot run \
             (scripts/redis-throwaway start runs a throwaway Redis and prints its URL)"
        ),
        _ => {
            eprintln!("skipped: {REDIS_VAR} is not set (scripts/redis-throwaway start runs a throwaway Redis)");
            return None;
        }
    };
    let nginx = match nginx_bin() {
        Some(p) => p,
        None if required(REQUIRE_REDIS_VAR) => {
            panic!(
                "{REQUIRE_REDIS_VAR}=1 but nginx is not installed: the replica tests cannot run (scripts/provision installs it)"
            )
        }
        None => {
            eprintln!("skipped: nginx is not installed (scripts/provision installs it)");
            return None;
        }
    };
    Some((postgres, redis, nginx))
}

/// `nginx`, on PATH or where distributions put it.
fn nginx_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain(["/usr/sbin/nginx", "/usr/local/sbin/nginx"].map(PathBuf::from)).find(|p| p.is_file())
}

/// A name no other run of these tests uses (budgets in a shared Redis are
/// keyed by user).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

/// A watchdog that stops `pid` when this test process goes away (its stdin
/// closes): for what must not outlive a test that dies.
fn watchdog(pid: u32) -> (Child, ChildStdin) {
    let script = r#"read _ignored
kill -TERM "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a watchdog");
    let stdin = child.stdin.take().expect("piped");
    (child, stdin)
}

// ---------------------------------------------------------------------------
// A database of the test's own
// ---------------------------------------------------------------------------

/// A database of its own on the test server, dropped on drop.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    fn create(server: &str) -> Database {
        let name = format!("bastion_replicas_{:016x}", rand::random::<u64>());
        Database::sql(server, &format!("CREATE DATABASE {name}"));
        let (base, query) = match server.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (server, String::new()),
        };
        let url = format!("{}/{name}{query}", base.rsplit_once('/').expect("a database in the URL").0);
        Database { server: server.to_string(), name, url }
    }

    fn sql(url: &str, sql: &str) {
        let out = run_bounded(Command::new(psql()).arg(url).args(["-qAtc", sql]), WAIT);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new(psql())
                .arg(&self.server)
                .args(["-qAtc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)]),
            WAIT,
        );
    }
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// nginx with `deploy/nginx/bastion.conf` in front of the replicas, on a
/// free loopback port; stopped on drop (and by its watchdog if the tests
/// die).
struct Nginx {
    port: u16,
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    _dir: tempfile::TempDir,
}

impl Nginx {
    // The child is waited for on drop.
    #[allow(clippy::zombie_processes)]
    fn start(bin: &Path, replicas: &[u16]) -> Nginx {
        let dir = tempfile::Builder::new().prefix("bastion-nginx-").tempdir().expect("tempdir");
        let d = dir.path();
        let shipped = crate::harness::repo_root().join("deploy/nginx/bastion.conf");
        let mut site = std::fs::read_to_string(&shipped).expect("deploy/nginx/bastion.conf");
        for (i, port) in replicas.iter().enumerate() {
            let name = format!("bastion-{}:8080", i + 1);
            assert!(site.contains(&name), "{} names no {name}", shipped.display());
            site = site.replace(&name, &format!("127.0.0.1:{port}"));
        }
        assert!(site.contains("listen 8080;"), "{} has no `listen 8080;`", shipped.display());
        // What this module's build of nginx can take: the temp paths of the
        // modules it has.
        let built = Command::new(bin).arg("-V").output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        let built = built.unwrap_or_default();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|m| **m == "client_body" || !built.contains(&format!("--without-http_{m}_module")))
            .map(|m| format!("    {m}_temp_path {}/temp/{m};\n", d.display()))
            .collect();
        std::fs::create_dir(d.join("temp")).expect("mkdir temp");
        // As root, the workers would run as `nobody`, who cannot enter this
        // directory.
        let user = if nix::unistd::geteuid().is_root() { "user root;\n" } else { "" };

        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(d.join("bastion.conf"), site.replace("listen 8080;", &format!("listen 127.0.0.1:{port};")))
                .expect("write the site");
            let main = format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n    access_log off;\n{temp_paths}    include {d}/bastion.conf;\n}}\n",
                d = d.display()
            );
            std::fs::write(d.join("nginx.conf"), main).expect("write nginx.conf");
            let out = std::fs::File::create(d.join("nginx.out")).expect("nginx.out");
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let watchdog = watchdog(child.id());
            let deadline = Instant::now() + WAIT;
            let up = loop {
                if child.try_wait().expect("try_wait").is_some() {
                    break false;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                assert!(Instant::now() < deadline, "nginx did not listen within {WAIT:?}: {}", Nginx::errors(d));
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                return Nginx { port, child, watchdog: Some(watchdog), _dir: dir };
            }
            // nginx is gone (and waited for): stop its watchdog first.
            let (mut w, stdin) = watchdog;
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
            last_error = Nginx::errors(d);
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    fn errors(dir: &Path) -> String {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!("{}{}", read("nginx.out"), read("error.log"))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until nginx answers through a replica.
    async fn wait_ready(&self) {
        let url = self.url("/healthz");
        eventually(WAIT, "/healthz through nginx", || async {
            http().get(&url).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM: the master stops its workers), bounded;
    /// then SIGKILL to the master and its workers.
    fn drop(&mut self) {
        let pid = self.child.id();
        let workers = children_of(pid);
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            for w in &workers {
                let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some((mut child, stdin)) = self.watchdog.take() {
            let _ = child.kill();
            drop(stdin);
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// Three replicas and nginx. Dropped in this order: nginx, the replicas,
/// their data directories, the database.
struct Cluster {
    nginx: Nginx,
    replicas: Vec<Gateway>,
    /// The shared master and audit keys, given to the replicas and the CLI.
    env: Vec<(String, String)>,
    _data: tempfile::TempDir,
    _db: Database,
}

impl Cluster {
    /// Starts the replicas with `rules` in `limits.rules` (buckets in
    /// Redis), and nginx in front of them; `None` when the tests run
    /// without PostgreSQL, Redis or nginx.
    fn start(rules: Value) -> Option<Cluster> {
        let (postgres, redis, nginx) = prerequisites()?;
        let db = Database::create(&postgres);
        let data = tempfile::Builder::new().prefix("bastion-replicas-").tempdir().expect("tempdir");
        let env = vec![
            ("BASTION_MASTER_KEY".to_string(), STANDARD.encode(rand::random::<[u8; 32]>())),
            ("BASTION_AUDIT_KEY".to_string(), STANDARD.encode(rand::random::<[u8; 32]>())),
            // One pepper for every replica: keys are stored as hashes keyed by it.
            ("BASTION_KEY_PEPPER".to_string(), STANDARD.encode(rand::random::<[u8; 32]>())),
        ];
        let config = |name: &str| {
            let dir = data.path().join(name);
            json!({
                "store": {"url": db.url, "max_connections": 4},
                "data_dir": dir,
                "vault": {"master_key": {"env": "BASTION_MASTER_KEY"}},
                "audit": {"key": {"env": "BASTION_AUDIT_KEY"}},
                "auth": {"key_pepper": {"env": "BASTION_KEY_PEPPER"}},
                "mcpServers": {"echo": fixture_echo("replicas-echo")},
                "limits": {"redis": redis, "rules": rules}
            })
        };
        let start = |name: &str, config: Value| {
            Gateway::start_with(
                config,
                Options { env: env.clone(), serve_args: vec!["--replica".into(), name.into()], ..Options::default() },
            )
        };
        // The first applies the store's migrations; the others start together.
        let first = start(REPLICAS[0], config(REPLICAS[0]));
        let configs: Vec<Value> = REPLICAS[1..].iter().map(|n| config(n)).collect();
        let mut replicas = vec![first];
        std::thread::scope(|s| {
            let started: Vec<_> =
                REPLICAS[1..].iter().zip(configs).map(|(n, c)| s.spawn(move || start(n, c))).collect();
            replicas.extend(started.into_iter().map(|h| h.join().expect("a replica's start")));
        });
        let nginx = Nginx::start(&nginx, &replicas.iter().map(|g| g.port).collect::<Vec<_>>());
        Some(Cluster { nginx, replicas, env, _data: data, _db: db })
    }

    /// Waits until every replica reached Redis (until then limited calls
    /// are refused) and nginx answers.
    async fn ready(&self) {
        for gw in &self.replicas {
            gw.wait_for_log("rate limits kept in Redis").await;
        }
        self.nginx.wait_ready().await;
    }

    /// The gateway's endpoint through nginx.
    fn url(&self) -> String {
        self.nginx.url("/mcp")
    }

    /// `bastion --config <replica i's config> ARGS…`, with the replicas'
    /// environment; asserts it succeeds and returns its stdout.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let gw = &self.replicas[i];
        let out = run_bounded(
            Command::new(bastion_bin())
                .arg("--config")
                .arg(&gw.config_path)
                .args(args)
                .envs(self.env.iter().cloned())
                .current_dir(gw.dir()),
            WAIT,
        );
        assert!(out.status.success(), "bastion {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// [`Cluster::cli`], returning when the command exited (to the
    /// moment: the wait is not polled).
    async fn cli_exited(&self, i: usize, args: &[&str]) -> Instant {
        let gw = &self.replicas[i];
        let mut cmd = tokio::process::Command::new(bastion_bin());
        cmd.arg("--config")
            .arg(&gw.config_path)
            .args(args)
            .envs(self.env.iter().cloned())
            .current_dir(gw.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("bastion {args:?} did not finish within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("bastion {args:?}: {e}"));
        let exited = Instant::now();
        assert!(out.status.success(), "bastion {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        exited
    }

    /// A key for `user`, made an admin in the shared store, created once
    /// (on the first replica).
    fn create_key(&self, user: &str) -> String {
        self.cli(0, &["users", "add", user, "--role", "admin"]);
        self.cli(0, &["keys", "create", "--user", user]).trim().to_string()
    }

    /// The id of the (only) key of `user`.
    fn key_id(&self, user: &str) -> String {
        let listed = self.cli(0, &["keys", "list", "--json", "--user", user]);
        let rows: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        assert_eq!(rows.len(), 1, "one key for {user}: {listed}");
        rows[0]["id"].as_str().expect("id").to_string()
    }

    /// A call with `key` on every replica directly, which must be
    /// answered: the key works everywhere, and each replica's echo server
    /// is running.
    async fn call_each(&self, key: &str) {
        for (gw, name) in self.replicas.iter().zip(REPLICAS) {
            let m = Mcp::stateless(gw.url("/mcp"), key);
            let r = try_call(&m, true, 1, "echo__echo", json!({"text": name})).await;
            let r = r.unwrap_or_else(|e| panic!("a call on {name}: {e}"));
            assert!(answered(&r), "a call on {name}: HTTP {} {}", r.status, r.text);
        }
    }
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

/// `tools/call` of `tool`, stateless or in `m`'s session; the answer read
/// to its end, or why there is none (what a replica killed mid-answer
/// leaves).
async fn try_call(m: &Mcp, stateless: bool, id: u64, tool: &str, args: Value) -> Result<Reply, String> {
    let mut params = json!({"name": tool, "arguments": args});
    let mut b = m.builder();
    if stateless {
        params["_meta"] = json!({META_VERSION: STATELESS, META_CAPABILITIES: {}});
        b = b.header("mcp-protocol-version", STATELESS).header("mcp-method", "tools/call").header("mcp-name", tool);
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
    let resp = b.body(body.to_string()).send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.map_err(|e| format!("HTTP {status}, the body cut short: {e}"))?;
    Ok(Reply { status, headers, text })
}

/// The JSON-RPC response in `r`, if it has a whole one.
fn response(r: &Reply) -> Option<Value> {
    let sse = r.header("content-type").is_some_and(|c| c.starts_with("text/event-stream"));
    let messages = if sse {
        sse_messages(&r.text)
    } else {
        serde_json::from_str::<Value>(&r.text).map(|v| vec![v]).unwrap_or_default()
    };
    messages.into_iter().rev().find(|m| m.get("result").is_some() || m.get("error").is_some())
}

/// Whether `r` is an answered call (HTTP 200, a JSON-RPC result).
fn answered(r: &Reply) -> bool {
    r.status == 200 && response(r).is_some_and(|m| m.get("result").is_some())
}

/// Whether `r` is the lockdown's refusal.
fn locked_down(r: &Reply) -> bool {
    response(r).is_some_and(|m| m["error"]["code"] == json!(FORBIDDEN) && m["error"]["data"]["lockdown"] == json!(true))
}

/// A short description of a call's outcome, for messages.
fn outcome(r: &Result<Reply, String>) -> String {
    match r {
        Ok(r) => format!("HTTP {} {}", r.status, r.text.chars().take(200).collect::<String>()),
        Err(e) => e.clone(),
    }
}

/// The replica a session id names (`r1` of `r1.…`).
fn replica_of(session: &str) -> &str {
    session.split_once('.').map(|(r, _)| r).unwrap_or("")
}

// ---------------------------------------------------------------------------
// Sessions behind the balancer
// ---------------------------------------------------------------------------

/// Sessions opened through nginx spread over the replicas, each named by
/// its replica, and every request of a session reaches that replica (the
/// others do not know it: 404); its GET stream too. A legacy SSE session
/// (its POSTs routed by `?sessionId=`) works; stateless clients work.
#[tokio::test]
async fn session_era_clients_work_behind_the_balancer() {
    let Some(cluster) = Cluster::start(json!([{"scope": "user", "rate": "1000/s", "burst": 1000}])) else { return };
    cluster.ready().await;
    let user = unique("sessions");
    let key = cluster.create_key(&user);
    let url = cluster.url();

    let mut sessions = Vec::new();
    for i in 0..6 {
        let m = Mcp::session(url.clone(), &key, VERSION).await;
        let sid = m.session.clone().expect("a session id");
        assert!(REPLICAS.contains(&replica_of(&sid)), "session {i}: its id {sid:?} names no replica");
        for j in 0..3 {
            let text = format!("session {i} call {j}");
            let rpc = m.call_tool("echo__echo", json!({"text": text})).await;
            assert!(tool_text(&rpc).contains(&text), "session {i} ({sid}), call {j}: {rpc}");
        }
        sessions.push((sid, m));
    }
    let mut used: Vec<&str> = sessions.iter().map(|(sid, _)| replica_of(sid)).collect();
    println!("6 sessions through nginx landed on {used:?}");
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "every session landed on {used:?}");

    // Each session is known to its replica alone.
    for (sid, _) in &sessions {
        for (gw, name) in cluster.replicas.iter().zip(REPLICAS) {
            let direct = Mcp::with_session(gw.url("/mcp"), &key, sid);
            let r = try_call(&direct, false, 99, "echo__echo", json!({"text": "direct"})).await;
            let r = r.unwrap_or_else(|e| panic!("session {sid} on {name}: {e}"));
            if replica_of(sid) == name {
                assert!(answered(&r), "session {sid} on its replica: HTTP {} {}", r.status, r.text);
            } else {
                assert_eq!(r.status, 404, "session {sid} on {name}, which does not hold it: {}", r.text);
            }
        }
    }

    // A session's GET stream goes to its replica too, and a DELETE ends it
    // there.
    let (sid, m) = &sessions[0];
    let (_seen, reader) = m.open_stream().await;
    reader.abort();
    let r = http().delete(&url).bearer_auth(&key).header("mcp-session-id", sid).send().await.expect("DELETE");
    assert!(r.status().is_success(), "DELETE of session {sid} through nginx: {}", r.status());
    let r = try_call(m, false, 100, "echo__echo", json!({"text": "after"})).await.expect("an answer");
    assert_eq!(r.status, 404, "session {sid} after its DELETE: {}", r.text);

    // Legacy SSE: the stream through nginx, its POSTs routed by the
    // session id in their query.
    let client = http();
    let (seen, reader, endpoint) = open_legacy_sse(&client, &cluster.nginx.url("/sse"), &key).await;
    let legacy_sid = endpoint.split("sessionId=").nth(1).expect("a session id in the endpoint").to_string();
    assert!(REPLICAS.contains(&replica_of(&legacy_sid)), "legacy session id {legacy_sid:?}");
    let post = |body: Value| {
        let req = client
            .post(cluster.nginx.url(&endpoint))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_string());
        async move { Reply::read(req.send().await.expect("POST /messages")).await }
    };
    let answer = |id: &'static str| {
        let seen = seen.clone();
        eventually(WAIT, "the legacy answer", move || {
            let seen = seen.clone();
            async move {
                let text = seen.lock().expect("poisoned").clone();
                sse_messages(&text).into_iter().find(|m| m["id"] == id && m.get("result").is_some())
            }
        })
    };
    let init = json!({
        "jsonrpc": "2.0", "id": "init", "method": "initialize",
        "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "bastion-it", "version": "0"}}
    });
    assert_eq!(post(init).await.status, 202, "legacy initialize through nginx");
    answer("init").await;
    assert_eq!(post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await.status, 202);
    for i in 0..3 {
        let id: &'static str = ["call-0", "call-1", "call-2"][i];
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "echo__echo", "arguments": {"text": format!("legacy {i}")}}});
        assert_eq!(post(body).await.status, 202, "legacy call {i} through nginx");
        let rpc = answer(id).await;
        assert!(tool_text(&rpc).contains(&format!("legacy {i}")), "legacy call {i}: {rpc}");
    }
    reader.abort();
    println!("a legacy SSE session through nginx on {}", replica_of(&legacy_sid));

    // Stateless clients go to any replica.
    let stateless = Mcp::stateless(url.clone(), &key);
    for i in 0..6 {
        let r = try_call(&stateless, true, i, "echo__echo", json!({"text": "stateless"})).await;
        assert!(r.as_ref().is_ok_and(answered), "stateless call {i} through nginx: {}", outcome(&r));
    }
}

// ---------------------------------------------------------------------------
// One budget across the replicas
// ---------------------------------------------------------------------------

/// The global rate.
const RATE: f64 = 20.0;
const BURST: u32 = 10;
/// Clients calling at once, through nginx.
const LOAD_CLIENTS: usize = 6;
/// How long they call.
const LOAD_FOR: Duration = Duration::from_secs(4);

/// Several clients calling through nginx as fast as they can, spread over
/// the three replicas: the calls answered are the burst plus the rate
/// times the time taken, within 5 % either way; every other call is
/// refused with 429 and -32029.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rate_holds_across_the_replicas_within_five_percent() {
    let rules = json!([
        {"scope": "global", "rate": format!("{RATE}/s"), "burst": BURST},
        {"scope": "user", "rate": "1000/s", "burst": 1000}
    ]);
    let Some(cluster) = Cluster::start(rules) else { return };
    cluster.ready().await;
    let user = unique("global");
    let key = cluster.create_key(&user);
    // Each replica's echo server started and the key checked, by lists
    // (no call rule limits them).
    for gw in &cluster.replicas {
        let r = Mcp::stateless(gw.url("/mcp"), &key).request("tools/list", json!({})).await;
        assert_eq!(r.status, 200, "tools/list on {}: {}", gw.url(""), r.text);
    }
    // Whatever took from the budget before (another run) has been given back.
    tokio::time::sleep(Duration::from_secs_f64(2.0 * f64::from(BURST) / RATE)).await;

    let go = Arc::new(tokio::sync::Barrier::new(LOAD_CLIENTS + 1));
    let mut tasks = Vec::new();
    for _ in 0..LOAD_CLIENTS {
        let m = Mcp::stateless(cluster.url(), &key);
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let until = Instant::now() + LOAD_FOR;
            let (mut ok, mut limited, mut other) = (0u64, 0u64, Vec::new());
            let mut last = Instant::now();
            for id in 0..100_000u64 {
                if Instant::now() >= until {
                    break;
                }
                let r = try_call(&m, true, id, "echo__echo", json!({"text": "load"})).await;
                last = Instant::now();
                match &r {
                    Ok(reply) if answered(reply) => ok += 1,
                    Ok(reply)
                        if reply.status == 429
                            && response(reply).is_some_and(|m| m["error"]["code"] == json!(LIMIT_REACHED)) =>
                    {
                        limited += 1
                    }
                    _ => other.push(outcome(&r)),
                }
            }
            (ok, limited, other, last)
        }));
    }
    let started = Instant::now();
    go.wait().await;
    let (mut ok, mut limited, mut other, mut last) = (0u64, 0u64, Vec::new(), started);
    for t in tasks {
        let (o, l, x, at) = t.await.expect("a load client");
        ok += o;
        limited += l;
        other.extend(x);
        last = last.max(at);
    }
    let elapsed = last - started;
    let allowed = f64::from(BURST) + RATE * elapsed.as_secs_f64();
    let offered = (ok + limited) as f64 / elapsed.as_secs_f64();
    let deviation = (ok as f64 - allowed) / allowed * 100.0;
    println!(
        "global limit {RATE}/s, burst {BURST}, {LOAD_CLIENTS} clients through nginx for {elapsed:.2?}: \
         {ok} answered, {limited} refused (offered {offered:.0}/s); allowed {allowed:.1}: {deviation:+.2} %"
    );
    assert!(other.is_empty(), "{} calls neither answered nor refused by the rate, e.g. {:?}", other.len(), &other[..1]);
    // The rate must be what holds the clients back, on a busy machine too.
    assert!(
        offered > 2.0 * RATE,
        "the clients offered only {offered:.0} calls/s: not enough to test a rate of {RATE}/s"
    );
    assert!(
        (ok as f64) <= 1.05 * allowed && (ok as f64) >= 0.95 * allowed,
        "{ok} calls answered where {allowed:.1} were allowed ({deviation:+.2} %, more than 5 %)"
    );
}

// ---------------------------------------------------------------------------
// Changes on one replica, in force on all
// ---------------------------------------------------------------------------

/// Polls every replica directly, every 20 ms, with calls by `key`, until
/// `done` says a reply shows the change; the time each took after `since`
/// (when its answer came).
async fn until_every_replica(
    cluster: &Cluster,
    key: &str,
    since: Instant,
    done: fn(&Reply) -> bool,
    what: &str,
) -> Vec<Duration> {
    let polls = cluster.replicas.iter().zip(REPLICAS).map(|(gw, name)| {
        let m = Mcp::stateless(gw.url("/mcp"), key);
        async move {
            let mut polls = 0;
            loop {
                polls += 1;
                let r = try_call(&m, true, polls, "echo__echo", json!({"text": "poll"})).await;
                let at = since.elapsed();
                if r.as_ref().is_ok_and(done) {
                    return (at, polls);
                }
                assert!(at < WAIT, "{name}: {what} not seen after {at:?}; last answer {}", outcome(&r));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let times = futures::future::join_all(polls).await;
    println!(
        "{what}: {}",
        REPLICAS
            .iter()
            .zip(&times)
            .map(|(n, (t, polls))| format!("{n} {t:.0?} ({polls} calls)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    times.into_iter().map(|(t, _)| t).collect()
}

/// A key just used on all three replicas, revoked with the CLI of one, is
/// refused (401) by each within a second of the command's end; a lockdown
/// set on another refuses calls on all three within a second, and lifted,
/// they are answered again within a second.
#[tokio::test]
async fn revocation_and_lockdown_reach_every_replica_within_a_second() {
    let Some(cluster) = Cluster::start(json!([{"scope": "user", "rate": "1000/s", "burst": 1000}])) else { return };
    cluster.ready().await;
    let user = unique("revoked");
    let key = cluster.create_key(&user);
    let id = cluster.key_id(&user);
    cluster.call_each(&key).await;

    let exited = cluster.cli_exited(0, &["keys", "revoke", &id]).await;
    let times =
        until_every_replica(&cluster, &key, exited, |r| r.status == 401, "the key revoked on r1 refused (401)").await;
    for (name, t) in REPLICAS.iter().zip(&times) {
        assert!(*t <= PROPAGATION, "{name} refused the revoked key only {t:?} after the revocation");
    }

    let other = unique("locked");
    let key = cluster.create_key(&other);
    cluster.call_each(&key).await;
    let exited = cluster.cli_exited(1, &["lockdown", "on", "--reason", "replica test"]).await;
    let times = until_every_replica(&cluster, &key, exited, locked_down, "the lockdown set on r2 in force").await;
    for (name, t) in REPLICAS.iter().zip(&times) {
        assert!(*t <= PROPAGATION, "{name} followed the lockdown only {t:?} after it was set");
    }
    let exited = cluster.cli_exited(2, &["lockdown", "off"]).await;
    let times =
        until_every_replica(&cluster, &key, exited, answered, "the lockdown lifted on r3, calls answered").await;
    for (name, t) in REPLICAS.iter().zip(&times) {
        assert!(*t <= PROPAGATION, "{name} answered again only {t:?} after the lockdown was lifted");
    }
}

// ---------------------------------------------------------------------------
// A replica lost mid-load
// ---------------------------------------------------------------------------

/// Stateless clients calling through nginx during the failover.
const FAILOVER_STATELESS: usize = 4;
/// How long calls go on before the kill, and after it.
const BEFORE_KILL: Duration = Duration::from_millis(1500);
/// Past nginx's `fail_timeout` (5 s), so that it tries the dead replica
/// again meanwhile.
const AFTER_KILL: Duration = Duration::from_secs(6);
/// After the kill, how long calls may still fail (those in flight).
const GRACE: Duration = Duration::from_secs(1);
/// What each call takes in the echo server: calls are in flight at the kill.
const CALL_MS: u64 = 20;

/// One call of the failover's load.
struct Call {
    sent: Instant,
    /// When its answer, or the lack of one, came.
    done: Instant,
    ok: bool,
    what: String,
    /// The session's replica (session clients).
    replica: String,
}

/// A replica killed (SIGKILL) under load through nginx: only its calls in
/// flight fail; stateless clients carry on; session clients whose session
/// was on it get 404 or 502 and carry on in a new session elsewhere;
/// sessions on the other replicas are not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_loses_only_its_calls_in_flight() {
    let Some(mut cluster) = Cluster::start(json!([{"scope": "user", "rate": "1000/s", "burst": 1000}])) else {
        return;
    };
    cluster.ready().await;
    let user = unique("failover");
    let key = cluster.create_key(&user);
    cluster.call_each(&key).await;
    let url = cluster.url();

    // Sessions through nginx until one is on r2 and one elsewhere.
    let mut sessions = Vec::new();
    for _ in 0..9 {
        let m = Mcp::session(url.clone(), &key, VERSION).await;
        sessions.push(m);
        let on_r2 = sessions.iter().filter(|m| replica_of(m.session.as_deref().unwrap_or("")) == "r2").count();
        if sessions.len() >= 3 && on_r2 >= 1 && on_r2 < sessions.len() {
            break;
        }
    }
    let placed: Vec<String> = sessions.iter().map(|m| replica_of(m.session.as_deref().unwrap_or("")).into()).collect();
    assert!(placed.iter().any(|r| r == "r2") && placed.iter().any(|r| r != "r2"), "sessions on {placed:?}");
    println!("session clients on {placed:?}; {FAILOVER_STATELESS} stateless clients");
    // And a session on r2 that has nothing in flight at the kill.
    let mut idle = None;
    for _ in 0..6 {
        let m = Mcp::session(url.clone(), &key, VERSION).await;
        if replica_of(m.session.as_deref().unwrap_or("")) == "r2" {
            idle = Some(m);
            break;
        }
    }
    let idle = idle.expect("no idle session landed on r2");

    let stop = Arc::new(AtomicBool::new(false));
    let args = json!({"ms": CALL_MS});
    let mut stateless = Vec::new();
    for _ in 0..FAILOVER_STATELESS {
        let (m, stop, args) = (Mcp::stateless(url.clone(), &key), stop.clone(), args.clone());
        stateless.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for id in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let r = try_call(&m, true, id, "echo__sleep", args.clone()).await;
                let ok = r.as_ref().is_ok_and(answered);
                calls.push(Call { sent, done: Instant::now(), ok, what: outcome(&r), replica: String::new() });
            }
            calls
        }));
    }
    let mut sessioned = Vec::new();
    for m in sessions {
        let (url, key, stop, args) = (url.clone(), key.clone(), stop.clone(), args.clone());
        sessioned.push(tokio::spawn(async move {
            let mut m = m;
            let mut calls = Vec::new();
            for id in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let replica = replica_of(m.session.as_deref().unwrap_or("")).to_string();
                let sent = Instant::now();
                let r = try_call(&m, false, id, "echo__sleep", args.clone()).await;
                let ok = r.as_ref().is_ok_and(answered);
                calls.push(Call { sent, done: Instant::now(), ok, what: outcome(&r), replica });
                if !ok {
                    // The session is gone: a new one, as the protocol says.
                    m = Mcp::session(url.clone(), &key, VERSION).await;
                }
            }
            calls
        }));
    }

    tokio::time::sleep(BEFORE_KILL).await;
    let killed = Instant::now();
    cluster.replicas[1].signal(Signal::SIGKILL);
    assert!(cluster.replicas[1].wait_exit(WAIT).await.is_some(), "r2 still running after SIGKILL");
    tokio::time::sleep(GRACE).await;
    // The idle session's next request goes to r2's backup, which does not
    // know it: 404, and the client starts a new session.
    let r = try_call(&idle, false, 1, "echo__echo", json!({"text": "idle"})).await;
    assert!(r.as_ref().is_ok_and(|r| r.status == 404), "the idle session on r2 after the kill: {}", outcome(&r));
    let again = Mcp::session(url.clone(), &key, VERSION).await;
    let sid = again.session.clone().unwrap_or_default();
    assert_ne!(replica_of(&sid), "r2", "a new session on the dead replica");
    let r = try_call(&again, false, 1, "echo__echo", json!({"text": "again"})).await;
    assert!(r.as_ref().is_ok_and(answered), "the new session on {}: {}", replica_of(&sid), outcome(&r));
    println!("the idle session on r2: 404 after the kill; a new one on {}", replica_of(&sid));
    tokio::time::sleep(AFTER_KILL - GRACE).await;
    stop.store(true, Ordering::Relaxed);

    // A call may fail only if it was in flight at the kill, or began within
    // the grace after it; every call that ended before the kill was
    // answered.
    let excused = |c: &Call| c.done >= killed && c.sent < killed + GRACE;
    let mut failed_stateless = 0;
    for (i, t) in stateless.into_iter().enumerate() {
        let calls = t.await.expect("a stateless client");
        let before = calls.iter().filter(|c| c.done < killed).count();
        let after: Vec<&Call> = calls.iter().filter(|c| c.sent >= killed + GRACE).collect();
        let failed: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
        println!(
            "stateless client {i}: {} calls, {before} before the kill, {} failed ({}), {} answered after the grace",
            calls.len(),
            failed.len(),
            failed.iter().map(|c| summary(c, killed)).collect::<Vec<_>>().join(", "),
            after.iter().filter(|c| c.ok).count()
        );
        for c in &failed {
            assert!(excused(c), "stateless client {i}: a call failed: {}: {}", summary(c, killed), c.what);
        }
        assert!(after.len() >= 10, "stateless client {i} made only {} calls after the grace", after.len());
        failed_stateless += failed.len();
    }
    assert!(
        failed_stateless <= FAILOVER_STATELESS,
        "{failed_stateless} stateless calls failed: more than were in flight at the kill"
    );

    for (i, (t, replica)) in sessioned.into_iter().zip(&placed).enumerate() {
        let calls = t.await.expect("a session client");
        let failed: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
        let later: Vec<&Call> = calls.iter().filter(|c| c.sent >= killed + GRACE).collect();
        println!(
            "session client {i} (on {replica}): {} calls, {} failed ({}), then on {:?}",
            calls.len(),
            failed.len(),
            failed.iter().map(|c| summary(c, killed)).collect::<Vec<_>>().join(", "),
            later.last().map(|c| c.replica.as_str())
        );
        assert!(later.len() >= 10, "session client {i} made only {} calls after the grace", later.len());
        if replica == "r2" {
            assert_eq!(failed.len(), 1, "session client {i} on r2: one call fails, then a new session goes on");
            let f = failed[0];
            assert!(excused(f), "session client {i}: {}: {}", summary(f, killed), f.what);
            assert!(f.what.starts_with("HTTP 404") || f.what.starts_with("HTTP 502"), "session client {i}: {}", f.what);
            assert!(later.iter().all(|c| c.replica != "r2"), "session client {i}: a new session on the dead replica");
        } else {
            assert!(failed.is_empty(), "session client {i} on {replica}: {}", failed[0].what);
            assert!(later.iter().all(|c| c.replica == *replica), "session client {i} kept its session");
        }
    }
}

/// When a call was sent and ended, next to the kill, and its outcome's
/// first words.
fn summary(c: &Call, killed: Instant) -> String {
    let at = |t: Instant| {
        if t >= killed { format!("+{:.0?}", t - killed) } else { format!("-{:.0?}", killed - t) }
    };
    let what: Vec<&str> = c.what.split(' ').take(2).collect();
    format!("{} sent {} ended {}", what.join(" "), at(c.sent), at(c.done))
}
