//! Runs the real `bastion` binary against real upstream servers.
//!
//! A [`Gateway`] is one `bastion serve` process with a generated JSON
//! config in its own temporary directory. Its stderr (the log) is kept in a
//! file so tests can look for lines in it. Each gateway has a small shell
//! watchdog whose stdin is a pipe held by this test process: when the test
//! process ends, however it ends, the pipe closes and the watchdog stops
//! the gateway, so shared gateways kept in statics never outlive the tests.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Longest time any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The gateway binary under test: `$BASTION_TEST_BIN` when set (to run the
/// suite against another build, e.g. an older release), else this build's.
pub fn bastion_bin() -> PathBuf {
    match std::env::var_os("BASTION_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_bastion")),
    }
}

/// The fixture servers' binary, built next to this build's `bastion` by the
/// workspace (also when the gateway binary is overridden).
pub fn fixture_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_bastion")).with_file_name("bastion-fixture");
    assert!(
        p.is_file(),
        "{} not found: build the workspace's binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The third-party servers and clients installed by `scripts/provision`.
pub struct Tools {
    pub node: PathBuf,
    pub everything_js: PathBuf,
    pub python: PathBuf,
    pub mcp_server_time: PathBuf,
    /// The MCP Inspector's command line (`mcp-inspector --cli`).
    pub inspector: PathBuf,
}

/// Reads an event stream in the background into a shared string.
pub fn collect(mut stream: reqwest::Response) -> (std::sync::Arc<Mutex<String>>, tokio::task::JoinHandle<()>) {
    let seen = std::sync::Arc::new(Mutex::new(String::new()));
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(Some(chunk)) = stream.chunk().await {
                seen.lock().expect("poisoned").push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    });
    (seen, reader)
}

/// The provisioned tools; a missing one fails the test with a message
/// saying how to install them (these tests never skip).
pub fn tools() -> Tools {
    let t = repo_root().join(".tools");
    let tools = Tools {
        node: t.join("node/bin/node"),
        everything_js: t.join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
        python: t.join("venv/bin/python"),
        mcp_server_time: t.join("venv/bin/mcp-server-time"),
        inspector: t.join("npm/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
    };
    for p in [&tools.node, &tools.everything_js, &tools.python, &tools.mcp_server_time, &tools.inspector] {
        assert!(p.exists(), "{} is missing: run scripts/provision first (it installs .tools)", p.display());
    }
    tools
}

/// Config entry for a `bastion-fixture echo --stdio` server, tagged with an
/// environment variable so its process can be recognised in /proc.
pub fn fixture_echo(tag: &str) -> Value {
    json!({
        "command": fixture_bin(),
        "args": ["echo", "--stdio"],
        "env": {"BASTION_IT_SERVER": tag}
    })
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A process seen in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
    pub environ: Vec<String>,
}

impl Proc {
    /// The value of `BASTION_IT_SERVER` in its environment.
    pub fn tag(&self) -> Option<&str> {
        self.environ.iter().find_map(|e| e.strip_prefix("BASTION_IT_SERVER="))
    }

    pub fn env_var(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.environ.iter().find_map(|e| e.strip_prefix(prefix.as_str()))
    }
}

/// Live (non-zombie) processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) || state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
            .unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|b| {
                b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect()
            })
            .unwrap_or_default();
        out.push(Proc { pid, cmdline, environ });
    }
    out
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`;
/// panics naming `what` if it never does.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a command to completion within `timeout` (killed otherwise).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_bounded(child, &format!("{cmd:?}"), timeout)
}

/// Waits for a child whose stdout and stderr are pipes, reading both, and
/// kills it after `timeout`.
pub fn wait_bounded(mut child: std::process::Child, what: &str, timeout: Duration) -> std::process::Output {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

/// A watchdog that stops `pid` when this test process goes away (its stdin
/// closes), then removes `cleanup` if given.
fn spawn_watchdog(pid: u32, cleanup: Option<&Path>) -> Child {
    let script = r#"read _ignored
kill -TERM "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 150 ]; do sleep 0.2; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null
if [ -n "$2" ]; then rm -rf "$2"; fi"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(pid.to_string())
        .arg(cleanup.map(|p| p.as_os_str().to_owned()).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog")
}

/// Removes ANSI colour sequences (the log is meant for people).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf))
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// How to start a gateway.
#[derive(Default)]
pub struct Options {
    /// Extra environment of the gateway process.
    pub env: Vec<(String, String)>,
    /// Make the config path a symlink into a subdirectory, so that edits of
    /// the real file are not seen by the gateway's file watcher (only a
    /// SIGHUP reloads them).
    pub config_via_symlink: bool,
    /// Keep the directory when the value is dropped (for shared gateways,
    /// whose watchdog removes it when the test process ends).
    pub shared: bool,
    /// Extra arguments of `serve`.
    pub serve_args: Vec<String>,
    /// The gateway serves HTTPS (`tls` in its config): readiness is its log
    /// line and an open port, not a plain-HTTP `/healthz`.
    pub tls: bool,
}

/// Written anywhere in a config's strings, replaced by the gateway's port
/// (for `auth.resource` and other URLs of the gateway itself).
pub const PORT: &str = "{PORT}";

pub struct Gateway {
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    /// The path given to `--config`.
    pub config_path: PathBuf,
    /// The file actually holding the config (differs with a symlink).
    real_config: PathBuf,
    pub port: u16,
    log_path: PathBuf,
    child: Child,
    watchdog: Child,
    /// Users `create_key` made admins in the store.
    store_users: Mutex<std::collections::HashSet<String>>,
}

impl Gateway {
    /// Starts `bastion serve` with `config` (its `listen` is filled in) and
    /// waits until `/healthz` answers.
    pub fn start(config: Value) -> Gateway {
        Gateway::start_with(config, Options::default())
    }

    // The child is waited for in `stop` (also on drop).
    #[allow(clippy::zombie_processes)]
    pub fn start_with(config: Value, opts: Options) -> Gateway {
        let tempdir = tempfile::Builder::new().prefix("bastion-it-").tempdir().expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let config_path = dir.join("bastion.json");
        let real_config = if opts.config_via_symlink {
            let real_dir = dir.join("real");
            std::fs::create_dir(&real_dir).expect("mkdir");
            let real = real_dir.join("bastion.json");
            std::os::unix::fs::symlink(&real, &config_path).expect("symlink");
            real
        } else {
            config_path.clone()
        };
        let log_path = dir.join("gateway.log");
        let tempdir = if opts.shared {
            let _ = tempdir.keep();
            None
        } else {
            Some(tempdir)
        };

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut cfg = config.clone();
            cfg["listen"] = Value::from(format!("127.0.0.1:{port}"));
            let text = serde_json::to_string_pretty(&cfg).expect("json").replace(PORT, &port.to_string());
            std::fs::write(&real_config, text).expect("write config");
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut cmd = Command::new(bastion_bin());
            cmd.arg("--config")
                .arg(&config_path)
                .arg("serve")
                .args(&opts.serve_args)
                .current_dir(&dir)
                .env_remove("BASTION_CONFIG")
                .env("BASTION_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn bastion serve");
            let watchdog = spawn_watchdog(child.id(), if opts.shared { Some(&dir) } else { None });
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let mut w = watchdog;
                    let _ = w.kill();
                    let _ = w.wait();
                    if last_log.contains("cannot listen") {
                        break; // the port was taken meanwhile: try another
                    }
                    panic!("bastion serve exited with {status} during start-up; log:\n{}", strip_ansi(&last_log));
                }
                let healthy = if opts.tls {
                    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
                } else {
                    http_get_blocking(addr, "/healthz").is_some_and(|(s, _)| s == 200)
                };
                let ours = std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("bastion ready"));
                if healthy && ours {
                    return Gateway {
                        dir,
                        _tempdir: tempdir,
                        config_path,
                        real_config,
                        port,
                        log_path,
                        child,
                        watchdog,
                        store_users: Default::default(),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "bastion serve did not become healthy within {WAIT:?}; log:\n{}",
                        strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default())
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not find a free port for bastion serve; last log:\n{}", strip_ansi(&last_log));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The log so far, without colours.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        eventually(WAIT, &format!("{needle:?} in the gateway log"), || async {
            self.log().contains(needle).then_some(())
        })
        .await
    }

    /// Replaces the config file (keeping the port).
    pub fn write_config(&self, config: &Value) {
        let mut cfg = config.clone();
        cfg["listen"] = Value::from(format!("127.0.0.1:{}", self.port));
        let text = serde_json::to_string_pretty(&cfg).expect("json").replace(PORT, &self.port.to_string());
        self.write_config_text(&text);
    }

    #[allow(dead_code)]
    /// The directory holding the config (and the store), for files a
    /// config names by relative path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the config file with arbitrary text.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.real_config, text).expect("write config");
    }

    pub fn sighup(&self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    }

    /// Runs `bastion --config <this gateway's config> ARGS…`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        run_bounded(
            Command::new(bastion_bin()).arg("--config").arg(&self.config_path).args(args).current_dir(&self.dir),
            WAIT,
        )
    }

    /// Creates an API key with `bastion keys create --user USER [EXTRA…]`,
    /// for a user who may use every server: unless the config names the
    /// user in `users`, it is made an `admin` in the store first
    /// (`bastion users add`).
    pub fn create_key(&self, user: &str, extra: &[&str]) -> String {
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&self.real_config).unwrap_or_default())
            .unwrap_or(Value::Null);
        let in_config = config.get("users").and_then(|u| u.get(user)).is_some();
        if !in_config && self.store_users.lock().expect("poisoned").insert(user.to_string()) {
            let out = self.cli(&["users", "add", user, "--role", "admin"]);
            assert!(out.status.success(), "users add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.create_bare_key(user, extra)
    }

    /// Creates an API key and nothing else: the user's access is whatever
    /// the config and the store say.
    pub fn create_bare_key(&self, user: &str, extra: &[&str]) -> String {
        let mut args = vec!["keys", "create", "--user", user];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        stdout.trim().to_string()
    }

    /// The id of the (only) key of `user`, from `keys list --json`.
    pub fn key_id(&self, user: &str) -> String {
        let out = self.cli(&["keys", "list", "--json", "--user", user]);
        assert!(out.status.success(), "keys list failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let rows: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        assert_eq!(rows.len(), 1, "expected one key for {user}: {stdout}");
        rows[0]["id"].as_str().expect("id").to_string()
    }

    /// The gateway's live child processes: one per running stdio server,
    /// the guard the server runs under (`bastion __child-guard`). A guard
    /// has its server's environment and command line in its own, leads the
    /// server's process group (its pid is the group's id) and lives as long
    /// as its server, which is its one child.
    pub fn children(&self) -> Vec<Proc> {
        children_of(self.pid())
    }

    /// The child started for the server tagged `tag` (see [`fixture_echo`]):
    /// its guard (see [`Gateway::children`]).
    pub fn child_tagged(&self, tag: &str) -> Option<Proc> {
        self.children().into_iter().find(|p| p.tag() == Some(tag))
    }

    /// Stops the gateway (SIGTERM), waiting a bounded time.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let children = self.children();
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for c in children {
            let _ = killpg(Pid::from_raw(c.pid as i32), Signal::SIGKILL);
        }
        None
    }
}

impl Drop for Gateway {
    /// Tears down quickly: the servers first, then the gateway (a graceful
    /// stop is what [`Gateway::stop`] tests).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            for c in self.children() {
                let _ = killpg(Pid::from_raw(c.pid as i32), Signal::SIGKILL);
            }
        }
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Other long-running helpers
// ---------------------------------------------------------------------------

/// `bastion-fixture everything --http 127.0.0.1:0`, for the whole test run.
pub struct HttpFixture {
    pub url: String,
    _child: Child,
    _watchdog: Child,
}

impl HttpFixture {
    pub fn start() -> HttpFixture {
        let mut child = Command::new(fixture_bin())
            .args(["everything", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bastion-fixture --http");
        let watchdog = spawn_watchdog(child.id(), None);
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("fixture stdout");
        let url =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("fixture said {line:?}")).to_string();
        HttpFixture { url, _child: child, _watchdog: watchdog }
    }
}

// ---------------------------------------------------------------------------
// Shared gateways
// ---------------------------------------------------------------------------

/// A gateway shared by the tests that do not disturb each other, with the
/// keys of two users.
pub struct Shared {
    pub gw: Gateway,
    pub alice: String,
    pub bob: String,
}

impl Shared {
    /// A gateway shared by a group of tests (its secret set in its
    /// environment), with keys for two users.
    fn start(config: Value) -> Shared {
        let gw = Gateway::start_with(
            config,
            Options {
                env: vec![(GATEWAY_SECRET.0.into(), GATEWAY_SECRET.1.into())],
                shared: true,
                ..Options::default()
            },
        );
        let alice = gw.create_key("alice", &[]);
        let bob = gw.create_key("bob", &[]);
        Shared { gw, alice, bob }
    }
}

/// A value set only in the gateway's environment: it must never reach an
/// upstream server.
pub const GATEWAY_SECRET: (&str, &str) = ("BASTION_TEST_SECRET", "gateway-only-secret-value");
/// A value granted to server-everything by the config's `env`.
pub const GRANTED: (&str, &str) = ("BASTION_GRANTED_VAR", "granted-to-the-server");

/// Real third-party servers: `everything` (server-everything over stdio;
/// `sampler` is a second one, used only by the sampling test, because a
/// stdio server's requests cannot be told apart between concurrent calls),
/// `time` (mcp-server-time), `echo` (the fixture over stdio), and `remote`
/// (the fixture's everything server over Streamable HTTP). Lists are paged
/// three items at a time, bodies are limited to 64 KiB.
pub fn real() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    static REMOTE: OnceLock<HttpFixture> = OnceLock::new();
    SHARED.get_or_init(|| {
        let t = tools();
        let remote = REMOTE.get_or_init(HttpFixture::start);
        let config = json!({
            "mcpServers": {
                "everything": {
                    "command": t.node,
                    "args": [t.everything_js, "stdio"],
                    "env": {GRANTED.0: GRANTED.1}
                },
                "sampler": {"command": t.node, "args": [t.everything_js, "stdio"]},
                "time": {"command": t.mcp_server_time, "args": ["--local-timezone", "Etc/UTC"]},
                "echo": fixture_echo("echo"),
                "remote": {"url": remote.url, "type": "streamable-http"}
            },
            "http": {"page_size": 3, "max_body_bytes": 65536},
            "upstream": {"restart_backoff": "100ms"}
        });
        Shared::start(config)
    })
}

/// Fixture echo servers for fault injection, one per kind of fault so the
/// tests can run at once: `crashy`, `hang` (500 ms call timeout), `garbage`,
/// `slow`, `steady`, `nolist` (its `tools/list` fails, its tools work),
/// `unpinned` (the same, with `pinning: off`), and `missing` (a command
/// that does not exist).
pub fn faults() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let mut hang = fixture_echo("hang");
        hang["callTimeout"] = Value::from("500ms");
        let mut nolist = fixture_echo("nolist");
        nolist["env"]["BASTION_FIXTURE_FAIL_TOOLS_LIST"] = Value::from("1");
        let mut unpinned = nolist.clone();
        unpinned["env"]["BASTION_IT_SERVER"] = Value::from("unpinned");
        unpinned["pinning"] = Value::from("off");
        let config = json!({
            "mcpServers": {
                "crashy": fixture_echo("crashy"),
                "hang": hang,
                "garbage": fixture_echo("garbage"),
                "slow": fixture_echo("slow"),
                "steady": fixture_echo("steady"),
                "nolist": nolist,
                "unpinned": unpinned,
                "missing": {"command": "/nonexistent/bastion-it-no-such-command"}
            },
            "upstream": {"restart_backoff": "100ms", "restart_backoff_max": "1s"}
        });
        Shared::start(config)
    })
}

// ---------------------------------------------------------------------------
// Raw HTTP and JSON-RPC
// ---------------------------------------------------------------------------

pub const STATELESS: &str = "2026-07-28";
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("reqwest client")
}

/// An HTTP answer, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("response body");
        Reply { status, headers, text }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text))
    }

    /// Every JSON-RPC message in the body: the JSON body itself, or each
    /// `data:` of an SSE stream.
    pub fn messages(&self) -> Vec<Value> {
        if self.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")) {
            let mut out = Vec::new();
            for event in self.text.replace("\r\n", "\n").split("\n\n") {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty()
                    && let Ok(v) = serde_json::from_str(&data.join("\n"))
                {
                    out.push(v);
                }
            }
            out
        } else if self.text.trim().is_empty() {
            Vec::new()
        } else {
            vec![self.json()]
        }
    }

    /// The JSON-RPC response (the message with a result or an error).
    pub fn rpc(&self) -> Value {
        self.messages()
            .into_iter()
            .rev()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no JSON-RPC response in {} {:?}", self.status, self.text))
    }
}

/// A minimal MCP client over raw HTTP: session era (after
/// [`Mcp::initialize`]) or stateless 2026-07-28.
pub struct Mcp {
    http: reqwest::Client,
    pub url: String,
    pub token: Option<String>,
    pub session: Option<String>,
    /// The `initialize` result (session era).
    pub init: Value,
    stateless: bool,
    next_id: std::sync::atomic::AtomicI64,
}

impl Mcp {
    fn new(url: String, token: Option<&str>, stateless: bool) -> Mcp {
        Mcp {
            http: http(),
            url,
            token: token.map(str::to_string),
            session: None,
            init: Value::Null,
            stateless,
            next_id: std::sync::atomic::AtomicI64::new(1),
        }
    }

    /// A session-era client presenting an existing session id.
    pub fn with_session(url: String, token: &str, session: &str) -> Mcp {
        let mut m = Mcp::new(url, Some(token), false);
        m.session = Some(session.to_string());
        m
    }

    /// A stateless (2026-07-28) client.
    pub fn stateless(url: String, token: &str) -> Mcp {
        Mcp::new(url, Some(token), true)
    }

    /// A session-era client: `initialize` with `version`, then `initialized`.
    pub async fn session(url: String, token: &str, version: &str) -> Mcp {
        Mcp::session_on(http(), url, token, version).await
    }

    /// [`Mcp::session`] on a given HTTP client (and its connection pool).
    pub async fn session_on(client: reqwest::Client, url: String, token: &str, version: &str) -> Mcp {
        let mut m = Mcp::new(url, Some(token), false);
        m.http = client;
        let id = m.id();
        let init = json!({
            "jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {"sampling": {}, "elicitation": {}},
                "clientInfo": {"name": "bastion-it", "version": "0"}
            }
        });
        let reply = m.post(&init).await;
        assert_eq!(reply.status, 200, "initialize: {}", reply.text);
        let rpc = reply.rpc();
        assert!(rpc.get("result").is_some(), "initialize failed: {rpc}");
        m.init = rpc["result"].clone();
        m.session = Some(reply.header("mcp-session-id").expect("Mcp-Session-Id on initialize").to_string());
        let n = m.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(n.status, 202, "notifications/initialized: {}", n.text);
        m
    }

    fn id(&self) -> i64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The session's GET stream, opened and checked (200), read in the
    /// background by [`collect`].
    pub async fn open_stream(&self) -> (std::sync::Arc<Mutex<String>>, tokio::task::JoinHandle<()>) {
        let mut b = self.http.get(&self.url).header("accept", "text/event-stream");
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        if let Some(sid) = &self.session {
            b = b.header("mcp-session-id", sid);
        }
        let stream = b.send().await.expect("GET stream");
        assert_eq!(stream.status(), 200, "GET stream");
        collect(stream)
    }

    /// A POST request with this client's headers, not yet sent.
    pub fn builder(&self) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        if let Some(s) = &self.session {
            b = b.header("mcp-session-id", s);
        }
        b
    }

    /// POSTs one message (or batch) as is.
    pub async fn post(&self, body: &Value) -> Reply {
        self.post_with(body, &[]).await
    }

    /// [`Mcp::post`] with extra headers.
    pub async fn post_with(&self, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let mut b = self.builder();
        for (name, value) in extra {
            b = b.header(*name, *value);
        }
        if self.stateless {
            b = b.header("mcp-protocol-version", STATELESS);
            if let Some(m) = body.get("method").and_then(Value::as_str) {
                b = b.header("mcp-method", m);
                let field = match m {
                    "tools/call" | "prompts/get" => Some("name"),
                    "resources/read" => Some("uri"),
                    _ => None,
                };
                if let Some(name) = field.and_then(|f| body["params"][f].as_str()) {
                    b = b.header("mcp-name", name);
                }
            }
        }
        Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
    }

    /// Sends a request and returns the raw reply.
    pub async fn request(&self, method: &str, params: Value) -> Reply {
        let mut params = params;
        if self.stateless {
            if !params.is_object() {
                params = json!({});
            }
            params["_meta"][META_VERSION] = Value::from(STATELESS);
            params["_meta"][META_CAPABILITIES] = json!({});
        }
        let body = json!({"jsonrpc": "2.0", "id": self.id(), "method": method, "params": params});
        self.post(&body).await
    }

    /// Sends a request that must get HTTP 200; returns the JSON-RPC response.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let reply = self.request(method, params).await;
        assert_eq!(reply.status, 200, "{method}: HTTP {} {}", reply.status, reply.text);
        reply.rpc()
    }

    /// `tools/call`; returns the JSON-RPC response.
    pub async fn call_tool(&self, name: &str, args: Value) -> Value {
        self.call("tools/call", json!({"name": name, "arguments": args})).await
    }

    /// Every item of a list method, following cursors; also the page count.
    pub async fn list_all(&self, method: &str, field: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for pages in 1..=1000 {
            let params = match cursor.take() {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let rpc = self.call(method, params).await;
            let result = rpc.get("result").unwrap_or_else(|| panic!("{method} failed: {rpc}"));
            items.extend(result[field].as_array().unwrap_or_else(|| panic!("no {field}: {rpc}")).iter().cloned());
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => return (items, pages),
            }
        }
        panic!("{method}: more than 1000 pages");
    }

    /// Names of every tool.
    pub async fn tool_names(&self) -> Vec<String> {
        let (tools, _) = self.list_all("tools/list", "tools").await;
        tools.iter().map(|t| t["name"].as_str().expect("tool name").to_string()).collect()
    }
}

/// The text of a `tools/call` JSON-RPC response (panics on an error).
pub fn tool_text(rpc: &Value) -> String {
    let result = rpc.get("result").unwrap_or_else(|| panic!("tools/call failed: {rpc}"));
    result["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content: {rpc}"))
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

// ---------------------------------------------------------------------------
// Real clients (the Python scripts)
// ---------------------------------------------------------------------------

/// What a client script printed.
#[derive(Debug)]
pub struct ClientRun {
    pub out: Value,
    pub stderr: String,
    pub status: ExitStatus,
}

impl ClientRun {
    /// The output, asserting `"ok": true`.
    pub fn ok(&self) -> &Value {
        assert!(
            self.out["ok"] == json!(true) && self.status.success(),
            "client failed ({}): {}\nstderr:\n{}",
            self.status,
            self.out,
            self.stderr
        );
        &self.out
    }
}

/// Runs `tests/clients/SCRIPT` against `url` with `token` and `args`.
pub async fn run_client(script: &str, url: &str, token: &str, args: &[&str]) -> ClientRun {
    let t = tools();
    let mut cmd = tokio::process::Command::new(&t.python);
    cmd.arg(clients_dir().join(script))
        .args(["--url", url, "--token", token, "--timeout", "60"])
        .args(args)
        .current_dir(clients_dir())
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let (status, stdout, stderr) = run_client_process(cmd, &format!("{script} {args:?}")).await;
    let out = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("{script} printed no JSON object; stdout {stdout:?}\nstderr:\n{stderr}"));
    ClientRun { out, stderr, status }
}

/// Runs a client to its end (at most 90 s), on loopback without proxies;
/// returns its exit status, stdout and stderr.
async fn run_client_process(
    mut cmd: tokio::process::Command,
    what: &str,
) -> (std::process::ExitStatus, String, String) {
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 90 s"))
        .expect("client output");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (output.status, stdout, String::from_utf8_lossy(&output.stderr).to_string())
}

/// Runs the MCP Inspector's command line against `url` (Streamable HTTP)
/// with `token`; returns its exit status and what it printed (JSON on
/// success).
pub async fn run_inspector(url: &str, token: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let t = tools();
    let auth = format!("Authorization: Bearer {token}");
    let mut cmd = tokio::process::Command::new(&t.node);
    cmd.arg(&t.inspector).args(["--cli", url, "--transport", "http", "--header", &auth]).args(args);
    run_client_process(cmd, &format!("the inspector {args:?}")).await
}

/// A string array field of a client's output.
pub fn strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array in {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// The scripted server (tests/clients/scripted_server.py)
// ---------------------------------------------------------------------------

/// The gate files of a scripted server: `hold(gate)` creates `started-GATE`
/// and returns once `release-GATE` exists.
pub struct Gates {
    dir: tempfile::TempDir,
}

impl Default for Gates {
    fn default() -> Self {
        Gates::new()
    }
}

impl Gates {
    pub fn new() -> Gates {
        Gates { dir: tempfile::Builder::new().prefix("bastion-gates-").tempdir().expect("gate dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Lets every call waiting on `gate` go on.
    pub fn release(&self, gate: &str) {
        std::fs::write(self.dir.path().join(format!("release-{gate}")), "1").expect("release gate");
    }

    /// Waits until the server has created `KIND-GATE` (`started`, `second-settled`).
    pub async fn wait(&self, kind: &str, gate: &str) {
        let path = self.dir.path().join(format!("{kind}-{gate}"));
        eventually(WAIT, &format!("{kind}-{gate} from the scripted server"), || async { path.exists().then_some(()) })
            .await
    }
}

/// Config entry for the scripted server over stdio, using `gates`.
pub fn scripted_stdio(gates: &Gates) -> Value {
    let t = tools();
    json!({
        "command": t.python,
        "args": [clients_dir().join("scripted_server.py"), "--transport", "stdio", "--gate-dir", gates.path()],
        "env": {"PYTHONDONTWRITEBYTECODE": "1"}
    })
}

/// The scripted server over HTTP (`sse` or `streamable-http`) on a free
/// loopback port, stopped on drop (and by its watchdog if the tests end).
pub struct ScriptedServer {
    pub url: String,
    child: Child,
    _watchdog: Child,
}

impl ScriptedServer {
    pub fn start(transport: &str, gates: &Gates) -> ScriptedServer {
        let t = tools();
        let mut child = Command::new(&t.python)
            .arg(clients_dir().join("scripted_server.py"))
            .args(["--transport", transport, "--port", "0", "--gate-dir"])
            .arg(gates.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the scripted server");
        let watchdog = spawn_watchdog(child.id(), None);
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("scripted server stdout");
        let ready: Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("the scripted server said {line:?}"));
        let url = ready["url"].as_str().unwrap_or_else(|| panic!("no url in {ready}")).to_string();
        ScriptedServer { url, child, _watchdog: watchdog }
    }

    /// Config entry reaching this server (`type` as given: `sse` or `http`).
    pub fn entry(&self, kind: &str) -> Value {
        json!({"url": self.url, "type": kind})
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Long-lived streams opened by hand
// ---------------------------------------------------------------------------

/// POSTs a stateless `subscriptions/listen` asking for `notifications`;
/// the answer is unread (an event stream when accepted).
pub async fn post_listen(url: &str, token: &str, id: &str, notifications: Value) -> reqwest::Response {
    let body = json!({
        "jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
        "params": {"_meta": {META_VERSION: STATELESS, META_CAPABILITIES: {}}, "notifications": notifications}
    });
    http()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS)
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .expect("POST subscriptions/listen")
}

/// Opens a legacy HTTP+SSE stream (`GET url`) read in the background, and
/// waits for its endpoint event: the text so far, the reader, the endpoint.
pub async fn open_legacy_sse(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (std::sync::Arc<Mutex<String>>, tokio::task::JoinHandle<()>, String) {
    let resp = client.get(url).bearer_auth(token).header("accept", "text/event-stream").send().await.expect("GET /sse");
    assert_eq!(resp.status(), 200, "GET /sse");
    let (seen, reader) = collect(resp);
    let endpoint = eventually(WAIT, "the legacy endpoint event", || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().expect("poisoned");
            seen.lines().find_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string())
        }
    })
    .await;
    (seen, reader, endpoint)
}

// ---------------------------------------------------------------------------
// Stopping by signal, process trees, resources
// ---------------------------------------------------------------------------

impl Gateway {
    /// Sends `signal` to the gateway process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Waits at most `timeout` for the gateway to exit: its exit status, or
    /// `None` when it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the gateway (SIGKILL) and its children's process groups at
    /// once, for a test that found it still running where it should not be.
    pub fn kill_now(&mut self) {
        for c in self.children() {
            let _ = killpg(Pid::from_raw(c.pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `/proc/PID/stat` says of a process: its state, parent, process
/// group and start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    pub start: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt
    // majflt cmajflt utime stime cutime cstime priority nice num_threads
    // itrealvalue starttime …`; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// A process found running, recognisable later even if its pid is reused.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: u32,
    pub pgid: u32,
    start: u64,
    pub cmdline: String,
}

impl Running {
    /// Whether this same process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z' && s.state != 'X')
    }
}

/// Every live descendant of `pid`: its children, theirs, and so on.
pub fn descendants(pid: u32) -> Vec<Running> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(parent) = todo.pop() {
        for c in children_of(parent) {
            if let Some(st) = proc_stat(c.pid) {
                todo.push(c.pid);
                out.push(Running { pid: c.pid, pgid: st.pgid, start: st.start, cmdline: c.cmdline });
            }
        }
    }
    out
}

/// Live processes (not zombies) of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s.pgid == pgid && s.state != 'Z' && s.state != 'X'))
        .collect()
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Every JSON-RPC message of an event stream's text (the `data:` of each
/// complete event; an event not yet ended by a blank line is left out).
pub fn sse_messages(text: &str) -> Vec<Value> {
    let text = text.replace("\r\n", "\n");
    let mut events: Vec<&str> = text.split("\n\n").collect();
    events.pop(); // what follows the last blank line is not a whole event
    events
        .into_iter()
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() { None } else { serde_json::from_str(&data.join("\n")).ok() }
        })
        .collect()
}

/// `psql`, on PATH or beside the server binaries.
pub fn psql() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("psql");
            if p.is_file() {
                return p;
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin/psql")).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("psql not found: install PostgreSQL (scripts/provision does)")
}

/// `bastion audit export` with `args`: one JSON object per line.
pub fn audit_export(gw: &Gateway, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "export"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    assert!(out.status.success(), "audit export: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
