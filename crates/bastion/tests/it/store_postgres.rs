//! The store on PostgreSQL, through the real binary: `bastion migrate`,
//! keys and users created by the CLI, a gateway serving from it, and an
//! outage — the server stopped under a running gateway: requests are
//! refused (never let through), and served again once the server is back,
//! without a restart — and a dump of the database holding no secret.
//!
//! Each test runs its own throwaway server (`scripts/pg-throwaway`: a
//! fresh cluster in a temporary directory on a free loopback port), never
//! a server of the machine. Without PostgreSQL's server binaries the tests
//! fail, saying how to install them: they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Gateway, Mcp, Reply, WAIT, bastion_bin, eventually, fixture_echo, http, proc_stat, psql, repo_root, run_bounded,
    tool_text,
};

/// A private PostgreSQL server, stopped and removed on drop. A watchdog
/// holding a pipe from this process stops it too if the tests die.
pub(crate) struct PgServer {
    pub(crate) url: String,
    dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

fn script() -> PathBuf {
    repo_root().join("scripts/pg-throwaway")
}

fn pg_throwaway(args: &[&str]) -> std::process::Output {
    let out = run_bounded(Command::new(script()).args(args), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "scripts/pg-throwaway {args:?} failed (PostgreSQL's server is needed: scripts/provision installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    pub(crate) fn start() -> PgServer {
        let out = pg_throwaway(&["start"]);
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = stdout.lines();
        let url = lines.next().expect("the URL").to_string();
        let dir = PathBuf::from(lines.next().expect("the directory"));
        assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"read _ignored; exec "$0" stop "$1""#)
            .arg(script())
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server's watchdog");
        let stdin = child.stdin.take().expect("piped");
        PgServer { url, dir, watchdog: Some((child, stdin)) }
    }

    fn port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("port")).expect("port file").trim().parse().expect("a port")
    }

    /// Stops the server (fast shutdown), keeping its data and port.
    fn pause(&self) {
        pg_throwaway(&["pause", self.dir.to_str().expect("utf-8 path")]);
    }

    /// Starts it again.
    fn resume(&self) {
        pg_throwaway(&["resume", self.dir.to_str().expect("utf-8 path")]);
    }

    /// A database of its own on this server; its URL.
    fn create_database(&self, name: &str) -> String {
        let out =
            run_bounded(Command::new(psql()).arg(&self.url).args(["-qAtc", &format!("CREATE DATABASE {name}")]), WAIT);
        assert!(out.status.success(), "CREATE DATABASE: {}", String::from_utf8_lossy(&out.stderr));
        format!("{}/{name}", self.url.rsplit_once('/').expect("a path").0)
    }

    /// Runs one SQL query on `url`, returns its output (unaligned).
    fn query(url: &str, sql: &str) -> String {
        let out = run_bounded(Command::new(psql()).arg(url).args(["-qAtc", sql]), WAIT);
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog stop the server and remove
        // its directory.
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// `pg_dump` of the newest server installed (a dump must not be older
/// than the server), else from PATH.
fn pg_dump() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin/pg_dump")).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from("pg_dump"))
}

fn bastion(config: &Path, args: &[&str]) -> std::process::Output {
    run_bounded(
        Command::new(bastion_bin()).arg("--config").arg(config).args(args).current_dir(config.parent().expect("dir")),
        WAIT,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn migrate_applies_and_checks_on_postgres() {
    let pg = PgServer::start();
    let url = pg.create_database("gw");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bastion.yaml");
    // The password goes nowhere near the output, though the server does not
    // ask for one.
    let with_password = url.replacen("postgres@", "postgres:hunter2pw@", 1);
    std::fs::write(&config, format!("store:\n  url: {with_password}\n  connect_timeout: 5s\n")).expect("config");

    let out = bastion(&config, &["config", "check"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("store postgres://127.0.0.1:{}/gw", pg.port())), "{err}");
    assert!(err.contains("PGPASSWORD"), "a password in the config is warned about: {err}");

    // Before: everything pending, and --check fails.
    let out = bastion(&config, &["migrate", "--check"]);
    assert!(!out.status.success(), "pending migrations fail the check");
    let listed = text(&out.stdout);
    let known = std::fs::read_dir(crate::harness::repo_root().join("crates/bastion-store/migrations/postgres"))
        .expect("the migrations")
        .count();
    assert_eq!(listed.lines().count(), known, "{listed}");
    assert!(listed.lines().all(|l| l.contains(" pending ")), "{listed}");
    assert!(text(&out.stderr).contains(&format!("{known} migrations pending")), "{}", text(&out.stderr));

    // Applied once, reported by version.
    let out = bastion(&config, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let applied = text(&out.stdout);
    assert_eq!(applied.lines().count(), known, "{applied}");
    assert!(
        applied.starts_with(
            "applied 0001 api keys\napplied 0002 users admins\napplied 0003 secrets\napplied 0004 audit\n"
        ),
        "{applied}"
    );
    let out = bastion(&config, &["migrate"]);
    assert!(out.status.success() && out.stdout.is_empty(), "nothing left: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("up to date"), "{}", text(&out.stderr));
    let out = bastion(&config, &["migrate", "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).lines().all(|l| l.contains(" applied ")), "{}", text(&out.stdout));
    for o in [&out.stdout, &out.stderr] {
        assert!(!text(o).contains("hunter2pw"));
    }

    // The tables are in PostgreSQL, and the CLI's rows land there.
    let tables = PgServer::query(
        &url,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(
        tables,
        "_sqlx_migrations,admins,api_keys,audit_batches,audit_heads,changes,lockdowns,quota_usage,secrets,tool_pins,user_tombstones,users"
    );
    let out = bastion(&config, &["keys", "create", "--user", "dave"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(PgServer::query(&url, "SELECT user_name FROM api_keys"), "dave");
    let data = dir.path().join("data");
    assert!(data.join("api-key.pepper").is_file(), "the pepper stays in the data directory");
    assert!(!data.join("bastion.db").exists(), "no SQLite store beside");

    // A database changed by a newer build is refused, not touched.
    PgServer::query(
        &url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'later', TRUE, '\\x00', 0)",
    );
    let out = bastion(&config, &["migrate"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("newer version of bastion"), "{}", text(&out.stderr));
}

/// A `tools/call` of the echo server, as a stateless client.
async fn echo(m: &Mcp, what: &str) -> Reply {
    m.request("tools/call", json!({"name": "echo__echo", "arguments": {"text": what}})).await
}

async fn status_of(url: &str) -> u16 {
    http().get(url).send().await.expect("GET").status().as_u16()
}

#[tokio::test]
async fn a_postgres_outage_fails_closed_and_recovers_by_itself() {
    let pg = PgServer::start();
    let acquire = Duration::from_secs(1);
    let ttl = Duration::from_secs(1);
    let config: Value = json!({
        "store": {"url": pg.url, "acquire_timeout": "1s", "connect_timeout": "5s"},
        "mcpServers": {"echo": fixture_echo("store-postgres")},
        "auth": {"key_cache_ttl": "1s"}
    });
    let gw = Gateway::start(config);
    assert!(
        gw.log().contains(&format!("store=postgres://127.0.0.1:{}/postgres", pg.port())),
        "the log names the store: {}",
        gw.log()
    );
    // Users and keys made by the CLI, in PostgreSQL.
    let key = gw.create_key("alice", &[]);
    let spare = gw.create_key("bob", &[]);
    assert_eq!(
        PgServer::query(&pg.url, "SELECT string_agg(user_name, ',' ORDER BY user_name) FROM api_keys"),
        "alice,bob"
    );
    assert_eq!(PgServer::query(&pg.url, "SELECT string_agg(name, ',' ORDER BY name) FROM users"), "alice,bob");

    let alice = Mcp::stateless(gw.url("/mcp"), &key);
    assert_eq!(tool_text(&alice.call_tool("echo__echo", json!({"text": "before"})).await), "before");
    assert_eq!(status_of(&gw.url("/readyz")).await, 200);

    // The server goes away.
    pg.pause();

    // A key the gateway has not seen: refused at once with 503, within the
    // acquire timeout (with room for a slow machine), never let through.
    let bob = Mcp::stateless(gw.url("/mcp"), &spare);
    let started = Instant::now();
    let r = echo(&bob, "during").await;
    assert_eq!(r.status, 503, "an unknown key during the outage: {} {}", r.status, r.text);
    assert!(started.elapsed() < acquire + Duration::from_secs(4), "answered in {:?}", started.elapsed());
    assert!(r.text.contains("temporarily_unavailable"), "{}", r.text);

    // A key validated before the outage is trusted for `key_cache_ttl` at
    // most; past it, it is refused too, every time.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let r = echo(&alice, "during").await;
        assert_eq!(r.status, 503, "a cached key past its TTL during the outage: {} {}", r.status, r.text);
        assert!(started.elapsed() < acquire + Duration::from_secs(4), "answered in {:?}", started.elapsed());
    }
    assert_eq!(status_of(&gw.url("/readyz")).await, 503, "not ready without its store");
    assert_eq!(status_of(&gw.url("/healthz")).await, 200, "alive all the same");

    // The CLI fails too, within its connect timeout.
    let started = Instant::now();
    let out = gw.cli(&["keys", "list"]);
    assert!(!out.status.success(), "keys list without a store");
    assert!(text(&out.stderr).contains("opening the store"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // Back: the same gateway serves again, both keys, without a restart.
    let pid = gw.pid();
    pg.resume();
    let reply = eventually(WAIT, "requests served again after the store is back", || async {
        let r = echo(&alice, "after").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(tool_text(&reply.rpc()), "after");
    assert_eq!(tool_text(&bob.call_tool("echo__echo", json!({"text": "bob"})).await), "bob");
    assert_eq!(status_of(&gw.url("/readyz")).await, 200);
    assert_eq!(gw.pid(), pid);
    assert!(proc_stat(pid).is_some_and(|s| s.state != 'Z'), "the gateway kept running");
    assert!(gw.log().contains("key lookup failed; refusing the request"), "the refusals are logged");
}

/// Every way a value may show in a dump: as text, as `bytea` hex, and
/// as base64.
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    vec![value.to_string(), hex, base64::engine::general_purpose::STANDARD.encode(value)]
}

#[tokio::test]
async fn a_dump_of_the_database_holds_no_secret() {
    const SERVER: &str = "canary-pg-server-Jx4Wq8Ty2Mv";
    const ALICE: &str = "canary-pg-alice-Rb7Nc3Zh5Ke";
    let pg = PgServer::start();
    let t = crate::harness::tools();
    let everything = |env: Value| json!({"command": t.node, "args": [t.everything_js, "stdio"], "env": env});
    let gw = Gateway::start(json!({
        "store": pg.url,
        "mcpServers": {
            "shared": everything(json!({"TOKEN": "${server.TOKEN}"})),
            "own": everything(json!({"TOKEN": "${user.TOKEN}"}))
        }
    }));
    let key = gw.create_key("alice", &[]);
    for (args, value) in [(["--server", "shared"], SERVER), (["--user", "alice"], ALICE)] {
        let out = crate::users_cli::cli_with_input(&gw, &["secrets", "set", args[0], args[1], "TOKEN"], value);
        assert!(out.status.success(), "secrets set: {}", text(&out.stderr));
    }
    let alice = Mcp::stateless(gw.url("/mcp"), &key);
    let token_of = |rpc: Value| -> String {
        let env: Value = serde_json::from_str(&tool_text(&rpc)).unwrap_or_else(|_| panic!("get-env: {rpc}"));
        env["TOKEN"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(token_of(alice.call_tool("shared__get-env", json!({})).await), SERVER);
    assert_eq!(token_of(alice.call_tool("own__get-env", json!({})).await), ALICE);

    // Rotated while served: the old ciphertexts are re-wrapped, and read.
    let out = gw.cli(&["secrets", "rotate-master"]);
    assert!(out.status.success(), "rotate-master: {}", text(&out.stderr));
    let bob = Mcp::stateless(gw.url("/mcp"), &gw.create_key("bob", &[]));
    assert_eq!(token_of(bob.call_tool("shared__get-env", json!({})).await), SERVER);

    // Stored: one ciphertext each, and nowhere in clear, in any encoding.
    assert_eq!(PgServer::query(&pg.url, "SELECT count(*) FROM secrets"), "2");
    let dump = run_bounded(Command::new(pg_dump()).arg("--no-owner").arg(&pg.url), WAIT);
    assert!(dump.status.success(), "pg_dump: {}", text(&dump.stderr));
    let dump = text(&dump.stdout);
    assert!(dump.contains("CREATE TABLE public.secrets"), "the dump holds the secrets table");
    let listed = gw.cli(&["secrets", "list"]);
    for canary in [SERVER, ALICE] {
        for form in encodings(canary) {
            assert!(!dump.contains(&form), "{form} is in the dump");
        }
        assert!(!gw.log().contains(canary), "{canary} is in the log");
        assert!(!text(&listed.stdout).contains(canary) && !text(&listed.stderr).contains(canary));
    }
}

#[tokio::test]
async fn audit_records_made_during_an_outage_are_written_afterwards_in_order() {
    let pg = PgServer::start();
    let gw = Gateway::start(json!({
        "store": {"url": pg.url, "acquire_timeout": "1s", "connect_timeout": "5s"},
        "mcpServers": {"echo": fixture_echo("audit-outage")},
        "users": {"alice": {"role": "admin"}},
        "auth": {"key_cache_ttl": "60s"}
    }));
    let alice = Mcp::stateless(gw.url("/mcp"), &gw.create_key("alice", &[]));
    let call = async |i: usize| {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "echo__echo", "arguments": {"text": format!("call {i}")},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
        }});
        alice.post_with(&body, &[("x-request-id", &format!("call-{i:02}"))]).await
    };
    for i in 0..5 {
        assert_eq!(call(i).await.status, 200);
    }
    pg.pause();
    // Served or refused, every request is recorded: to the spool for now.
    for i in 5..10 {
        let _ = call(i).await;
    }
    let spool = gw.dir().join("data").join("audit-spool.jsonl");
    eventually(WAIT, "records are spooled while the store is away", || async {
        std::fs::read_to_string(&spool).is_ok_and(|s| s.lines().count() >= 5).then_some(())
    })
    .await;
    assert!(gw.log().contains("records are spooled until it can"), "the outage is logged");
    pg.resume();
    for i in 10..15 {
        let r = eventually(WAIT, "served again", || async {
            let r = call(i).await;
            (r.status == 200).then_some(r)
        })
        .await;
        assert_eq!(r.status, 200);
    }
    let ids = eventually(WAIT, "every request audited", || async {
        let out = gw.cli(&["audit", "export", "--kind", "mcp.request"]);
        let ids: Vec<String> = text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| r["request_id"].as_str().map(str::to_string))
            .collect();
        (ids.iter().filter(|id| id.starts_with("call-")).count() >= 15).then_some(ids)
    })
    .await;
    let ours: Vec<&String> = ids.iter().filter(|id| id.starts_with("call-")).collect();
    let expected: Vec<String> = (0..15).map(|i| format!("call-{i:02}")).collect();
    let mut distinct = ours.clone();
    distinct.dedup();
    assert_eq!(
        distinct.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "in order: {ours:?}"
    );
    assert!(!spool.exists(), "the spool is emptied once replayed");
    let out = gw.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}
