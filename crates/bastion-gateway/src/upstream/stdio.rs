//! stdio servers: a child process speaking newline-delimited JSON-RPC.
//!
//! The child gets a clean environment: a minimal `PATH` (the directory of
//! the resolved command, then the system directories), `HOME`, `LANG`, and
//! what the config grants under `env` — nothing else of Bastion's
//! environment, so the gateway's own credentials never leak into a server.
//! Its stderr goes to Bastion's log (never to clients). It runs in its own
//! process group, under a guard that kills the group if the gateway dies, so
//! that stopping it also stops the processes it started (`npx` → `node`);
//! see [`super::guard`].
//!
//! Lines are read with a bounded buffer ([`super::reader`]): a line over
//! `upstream.max_message_bytes`, or one that is not UTF-8, is skipped and
//! reading goes on; when it answered a call whose id can be told, that call
//! alone fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::executable;
use super::guard::{self, Group, Process};
use super::lines::LineWriter;
use super::mux::{Mux, Outbound};
use super::reader::{self, Line, LineReader};
use super::{CallError, Caller, ConnContext, ServerInfo, initialize_params};

/// Longest stderr line kept in the log.
const MAX_STDERR_LINE: usize = 4096;
/// The system directories every child's PATH ends with.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long a server asked to stop (stdin closed) has before its process
/// group is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the last stderr lines are still read after the group was killed
/// (a process that left the group may hold the pipe open).
const STDERR_DRAIN: Duration = Duration::from_secs(1);
/// Longest wait for a killed child to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// A running stdio server. When its stdout ends, the connection is over:
/// pending calls fail, stdin is closed, its process group is killed and the
/// child reaped, whether or not anyone still holds the connection. Dropping
/// it does the same at once.
pub(crate) struct StdioConn {
    pub mux: Arc<Mux>,
    pub info: ServerInfo,
    server: Arc<str>,
    /// The child's process group (the guard's pid, or the server's).
    group: Arc<Group>,
    /// The server's own pid, for the log.
    pid: Option<u32>,
    writer: Arc<LineWriter>,
    /// Ends the connection: stdin closes at once, the group is killed, the
    /// child reaped, stdout no longer read.
    stop: CancellationToken,
    /// Cancelled when the server's stdout ends.
    stdout_closed: CancellationToken,
    /// Cancelled once the child was reaped (or given up on).
    reaped: CancellationToken,
}

/// The environment a child starts with, before the config's `env`.
pub(crate) fn base_env(resolved: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut path = String::new();
    if let Some(dir) = resolved.parent().filter(|d| !d.as_os_str().is_empty()) {
        path.push_str(&dir.to_string_lossy());
        path.push(':');
    }
    path.push_str(SYSTEM_PATH);
    env.insert("PATH".into(), path);
    if let Ok(home) = std::env::var("HOME") {
        env.insert("HOME".into(), home);
    }
    env.insert("LANG".into(), std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()));
    env
}

impl StdioConn {
    pub async fn spawn(
        ctx: ConnContext,
        command: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        cwd: &Path,
        sha256: Option<&str>,
    ) -> Result<StdioConn, CallError> {
        let resolved = executable::resolve(command, cwd)
            .ok_or_else(|| CallError::Unavailable(format!("command {command:?} not found")))?;
        if let Some(expected) = sha256 {
            // Hashed just before the start, through the path that is
            // started (see `executable` for what remains possible).
            let (path, expected_owned) = (resolved.clone(), expected.to_string());
            let checked = tokio::task::spawn_blocking(move || executable::verify(&path, &expected_owned))
                .await
                .unwrap_or_else(|e| Err(executable::PinError::Unreadable(std::io::Error::other(e.to_string()))));
            if let Err(e) = checked {
                tracing::error!(
                    server = %ctx.server,
                    path = %resolved.display(),
                    expected,
                    error = %e,
                    "executable refused by its sha256 pin; the server is not started"
                );
                return Err(CallError::Refused(match e {
                    executable::PinError::Mismatch { .. } => "its executable does not match its sha256 pin".into(),
                    executable::PinError::Unreadable(_) => {
                        "its executable cannot be read to check its sha256 pin".into()
                    }
                }));
            }
        }
        let mut cmd = guard::command(&resolved, args);
        cmd.env_clear()
            .envs(base_env(&resolved))
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process =
            guard::spawn(cmd).await.map_err(|e| CallError::Unavailable(format!("cannot start {command:?}: {e}")))?;
        let group = process.group.clone();
        tracing::info!(server = %ctx.server, pgid = group.id(), command, "upstream process started");

        let stdin = process.child.stdin.take().expect("piped");
        let stdout = process.child.stdout.take().expect("piped");
        let stderr = process.child.stderr.take().expect("piped");

        // Calls write their lines into stdin themselves; closing it is the
        // polite way to ask a stdio server to exit.
        let stop = CancellationToken::new();
        let writer = LineWriter::start(stdin, stop.clone())
            .map_err(|e| CallError::Unavailable(format!("cannot use the stdin of {command:?}: {e}")))?;
        let mux = Arc::new(Mux::new(ctx.clone(), Outbound::Pipe(writer.clone())));
        let stdout_closed = CancellationToken::new();
        let reaped = CancellationToken::new();

        tokio::spawn(read_stdout(
            stdout,
            ctx.clone(),
            mux.clone(),
            writer.clone(),
            stop.clone(),
            stdout_closed.clone(),
        ));
        tokio::spawn(read_stderr(stderr, ctx.server.clone(), stop.clone()));
        tokio::spawn(reap(process, ctx.server.clone(), stop.clone(), reaped.clone()));

        let conn = StdioConn {
            mux,
            info: ServerInfo::default(),
            server: ctx.server.clone(),
            group,
            pid: None,
            writer,
            stop,
            stdout_closed,
            reaped,
        };
        conn.initialize().await
    }

    async fn initialize(mut self) -> Result<StdioConn, CallError> {
        let result = match self.mux.call("initialize", Some(initialize_params()), Caller::Gateway).await {
            Ok(r) => r,
            Err(e) => {
                self.shutdown().await;
                return Err(match e {
                    CallError::Closed => CallError::Unavailable("the process exited during initialize".into()),
                    other => other,
                });
            }
        };
        self.info = ServerInfo::from_initialize_result(&result)?;
        // It answered: it runs, under its guard if there is one.
        self.pid = guard::server_pid(self.group.id() as u32);
        tracing::debug!(server = %self.server, pid = self.pid, pgid = self.group.id(), "upstream process initialized");
        self.mux.notify("notifications/initialized", None).await;
        Ok(self)
    }

    /// Closes stdin, gives the process a moment to exit, then kills its
    /// process group (which may hold grandchildren even when the server
    /// exited) and reaps it.
    pub async fn shutdown(&self) {
        self.mux.close();
        // Lines already queued (a cancellation, say) still go out first.
        self.writer.close();
        let _ = tokio::time::timeout(STOP_GRACE, self.stdout_closed.cancelled()).await;
        self.stop.cancel();
        let _ = tokio::time::timeout(REAP_WAIT, self.reaped.cancelled()).await;
    }
}

impl Drop for StdioConn {
    fn drop(&mut self) {
        self.mux.close();
        self.writer.abort();
        self.stop.cancel();
        // Here, not only in the reaper: the runtime may be going away.
        self.group.kill();
        if !self.reaped.is_cancelled() {
            tracing::debug!(server = %self.server, pid = self.pid, pgid = self.group.id(), "upstream connection dropped; process group killed");
        }
    }
}

/// stdout lines → the multiplexer, until stdout ends or the connection is
/// stopped; then the connection is over.
async fn read_stdout(
    stdout: tokio::process::ChildStdout,
    ctx: ConnContext,
    mux: Arc<Mux>,
    writer: Arc<LineWriter>,
    stop: CancellationToken,
    closed: CancellationToken,
) {
    let server = &ctx.server;
    let max = ctx.max_message_bytes;
    let mut lines = LineReader::new(stdout, max);
    loop {
        let line = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            line = lines.next_line() => line,
        };
        match line {
            Ok(Some(Line::Whole(line))) => on_line(&mux, server, &line),
            Ok(Some(Line::TooLong { len, head, tail })) => {
                let call = reader::envelope(&head, &tail).answered_call();
                let failed = call.is_some_and(|id| {
                    mux.fail(
                        id,
                        CallError::Protocol(format!(
                            "its answer was too large ({len} bytes; the gateway's limit is {max} bytes)"
                        )),
                    )
                });
                tracing::warn!(server = %server, bytes = len, max, failed_call = failed.then_some(call).flatten(), "upstream wrote a line longer than the limit; skipped");
            }
            Ok(None) => {
                tracing::info!(server = %server, "upstream closed its stdout");
                break;
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "cannot read from upstream");
                break;
            }
        }
        // Lines already read come without waiting: a flooding server must
        // still let other tasks of this worker run.
        tokio::task::consume_budget().await;
    }
    // The connection is over: calls fail, stdin closes, the group is killed.
    mux.close();
    writer.abort();
    closed.cancel();
    stop.cancel();
}

/// One line the server wrote on stdout.
fn on_line(mux: &Mux, server: &str, line: &[u8]) {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return;
    }
    // serde_json checks that strings are UTF-8 as it parses them.
    match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Array(items)) => {
            for m in items {
                mux.on_message(m);
            }
        }
        Ok(v) => mux.on_message(v),
        Err(_) if std::str::from_utf8(trimmed).is_err() => {
            let calls = reader::answered_calls_lossy(trimmed);
            let failed: Vec<u64> = calls
                .into_iter()
                .filter(|id| mux.fail(*id, CallError::Protocol("its answer was not valid UTF-8".into())))
                .collect();
            tracing::warn!(server = %server, bytes = line.len(), failed_calls = ?failed, "upstream wrote a line that is not valid UTF-8; skipped");
        }
        Err(_) => {
            tracing::warn!(server = %server, bytes = line.len(), "upstream wrote a line that is not JSON; ignored")
        }
    }
}

/// stderr → the log, line by line, bounded: until stderr ends, or shortly
/// after the connection was stopped.
async fn read_stderr(stderr: tokio::process::ChildStderr, server: Arc<str>, stop: CancellationToken) {
    let mut lines = LineReader::new(stderr, MAX_STDERR_LINE);
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(STDERR_DRAIN).await;
    };
    tokio::pin!(deadline);
    loop {
        let line = tokio::select! {
            biased;
            line = lines.next_line() => line,
            _ = &mut deadline => break,
        };
        match line {
            Ok(Some(Line::Whole(line))) => {
                tracing::info!(target: "bastion::upstream::stderr", server = %server, "{}", String::from_utf8_lossy(&line))
            }
            Ok(Some(Line::TooLong { len, .. })) => {
                tracing::info!(target: "bastion::upstream::stderr", server = %server, bytes = len, "(long line skipped)")
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// Waits until the connection is stopped, then kills the process group and
/// reaps the child.
async fn reap(mut process: Process, server: Arc<str>, stop: CancellationToken, reaped: CancellationToken) {
    stop.cancelled().await;
    process.group.kill();
    match tokio::time::timeout(REAP_WAIT, process.child.wait()).await {
        Ok(Ok(status)) => {
            tracing::info!(server = %server, pgid = process.group.id(), %status, "upstream process exited")
        }
        Ok(Err(e)) => tracing::warn!(server = %server, error = %e, "cannot wait for the upstream process"),
        Err(_) => tracing::warn!(server = %server, pgid = process.group.id(), "upstream process not reaped in time"),
    }
    drop(process);
    reaped.cancel();
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn base_env_is_minimal() {
        let env = base_env(Path::new("/opt/node/bin/npx"));
        assert_eq!(env["PATH"], format!("/opt/node/bin:{SYSTEM_PATH}"));
        assert!(env.keys().all(|k| ["PATH", "HOME", "LANG"].contains(&k.as_str())));
    }

    fn ctx(max_message_bytes: usize) -> ConnContext {
        ConnContext {
            server: "s".into(),
            notifications: tokio::sync::mpsc::unbounded_channel().0,
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_message_bytes,
            roots: Arc::new(serde_json::json!([])),
            log_level: Arc::new(std::sync::atomic::AtomicU8::new(crate::upstream::NO_LEVEL)),
            user: None,
            guard: None,
            audit: None,
        }
    }

    /// A stdio server in sh: answers `initialize`, then runs `script`.
    /// `id` (a function) prints the id of the JSON-RPC line it is given.
    async fn sh_server(max: usize, script: &str) -> StdioConn {
        let script = format!(
            r#"id() {{ printf '%s' "$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p'; }}
read -r l; printf '{{"jsonrpc":"2.0","id":%s,"result":{{"capabilities":{{}}}}}}\n' "$(id "$l")"
read -r l
{script}"#
        );
        StdioConn::spawn(ctx(max), "/bin/sh", &["-c".into(), script], &BTreeMap::new(), Path::new("/"), None)
            .await
            .expect("the sh server starts")
    }

    /// Live (not zombie) processes of a process group.
    pub(in crate::upstream) fn members(pgid: i32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
                rest.first().is_some_and(|s| *s != "Z") && rest.get(2) == Some(&pgid.to_string().as_str())
            })
            .count()
    }

    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    #[tokio::test]
    async fn bad_lines_fail_only_the_call_they_answer() {
        // Two calls are read; the `long` one is answered with 100 kB, the
        // other with a line that is not UTF-8 (after a notification that is
        // not UTF-8 either); then a third call is answered properly.
        let conn = sh_server(
            10_000,
            r#"read -r a; read -r b
case "$a" in *long*) long=$(id "$a"); bad=$(id "$b");; *) long=$(id "$b"); bad=$(id "$a");; esac
printf '{"jsonrpc":"2.0","id":%s,"result":{"t":"' "$long"; head -c 100000 /dev/zero | tr '\0' x; printf '"}}\n'
printf '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"\377"}}\n'
printf '{"jsonrpc":"2.0","id":%s,"result":{"t":"\377\376"}}\n' "$bad"
read -r c; printf '{"jsonrpc":"2.0","id":%s,"result":{"ok":true}}\n' "$(id "$c")"
read -r d"#,
        )
        .await;
        let call = |name: &'static str| {
            let mux = conn.mux.clone();
            async move { mux.call("tools/call", Some(serde_json::json!({"name": name})), Caller::Gateway).await }
        };
        let (long, bad) = within("the two bad answers", futures::future::join(call("long"), call("bad"))).await;
        match long {
            Err(CallError::Protocol(m)) => assert!(m.contains("too large") && m.contains("10000"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&bad, Err(CallError::Protocol(m)) if m.contains("not valid UTF-8")), "{bad:?}");
        // The connection is fine.
        assert!(conn.mux.is_alive());
        assert_eq!(within("a good answer", call("next")).await.unwrap()["ok"], true);
        conn.shutdown().await;
    }

    #[tokio::test]
    async fn the_end_of_stdout_closes_and_reaps_everything() {
        // A grandchild in the group outlives the server unless killed.
        let conn = sh_server(1 << 20, "sleep 60 </dev/null >/dev/null 2>&1 &\nread -r call\nexit 3").await;
        let pgid = conn.group.id();
        let call = conn.mux.call("tools/call", None, Caller::Gateway);
        // The server exits on reading the call; the grandchild keeps no pipe.
        assert!(matches!(within("the call to fail", call).await, Err(CallError::Closed)));
        within("stdout to be seen closed", conn.stdout_closed.cancelled()).await;
        within("the child to be reaped", conn.reaped.cancelled()).await;
        assert!(conn.stop.is_cancelled() && conn.writer.is_closed() && !conn.mux.is_alive());
        within("the group to be gone", async {
            while members(pgid) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn dropping_a_connection_kills_its_group() {
        let conn =
            sh_server(1 << 20, "trap '' TERM HUP\nsleep 60 </dev/null >/dev/null 2>&1 &\nwhile :; do sleep 1; done")
                .await;
        let pgid = conn.group.id();
        within("sh and its sleep", async {
            while members(pgid) < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let reaped = conn.reaped.clone();
        drop(conn);
        within("the child to be reaped", reaped.cancelled()).await;
        within("the group to be gone", async {
            while members(pgid) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_stops_a_server_that_ignores_stdin_closing() {
        let conn = sh_server(1 << 20, "trap '' TERM HUP\nwhile :; do sleep 1; done").await;
        let pgid = conn.group.id();
        let started = std::time::Instant::now();
        within("shutdown", conn.shutdown()).await;
        assert!(started.elapsed() >= STOP_GRACE, "it had its grace period");
        assert!(conn.reaped.is_cancelled());
        within("the group to be gone", async {
            while members(pgid) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}
