//! stdio servers: a child process speaking newline-delimited JSON-RPC.
//!
//! The child gets a clean environment: a minimal `PATH` (the directory of
//! the resolved command, then the system directories), `HOME`, `LANG`, and
//! what the config grants under `env` — nothing else of Bastion's
//! environment, so the gateway's own credentials never leak into a server.
//! Its stderr goes to Bastion's log (never to clients). It runs in its own
//! process group so that stopping it also stops the processes it started
//! (`npx` → `node`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::lines::LineWriter;
use super::mux::{Mux, Outbound};
use super::{CallError, Caller, ConnContext, ServerInfo, initialize_params};

/// Longest stderr line kept in the log.
const MAX_STDERR_LINE: usize = 4096;
/// The system directories every child's PATH ends with.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub(crate) struct StdioConn {
    pub mux: Arc<Mux>,
    pub info: ServerInfo,
    child: tokio::sync::Mutex<Option<Child>>,
    pid: Option<u32>,
    writer: Arc<LineWriter>,
    /// Closes the child's stdin at once, queued lines or not.
    stop: tokio_util::sync::CancellationToken,
}

/// Finds `command` the way a shell would, on Bastion's own PATH.
fn resolve_command(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(command)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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
    ) -> Result<StdioConn, CallError> {
        let resolved =
            resolve_command(command).ok_or_else(|| CallError::Unavailable(format!("command {command:?} not found")))?;
        let mut cmd = Command::new(&resolved);
        cmd.args(args)
            .env_clear()
            .envs(base_env(&resolved))
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| CallError::Unavailable(format!("cannot start {command:?}: {e}")))?;
        let pid = child.id();
        tracing::info!(server = %ctx.server, pid, command, "upstream process started");

        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");

        // Calls write their lines into stdin themselves; stopping closes it,
        // the polite way to ask a stdio server to exit.
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = LineWriter::start(stdin, stop.clone())
            .map_err(|e| CallError::Unavailable(format!("cannot use the stdin of {command:?}: {e}")))?;
        let mux = Arc::new(Mux::new(ctx.clone(), Outbound::Pipe(writer.clone())));

        // Reader: stdout lines → the multiplexer.
        let reader_mux = mux.clone();
        let server = ctx.server.clone();
        let max = ctx.max_message_bytes;
        tokio::spawn(async move {
            let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max));
            while let Some(line) = lines.next().await {
                match line {
                    Ok(line) => {
                        let trimmed = line.trim();
                        if trimmed.is_empty() {
                            continue;
                        }
                        match serde_json::from_str::<Value>(trimmed) {
                            Ok(v) if v.is_array() => {
                                for m in v.as_array().into_iter().flatten() {
                                    reader_mux.on_message(m.clone());
                                }
                            }
                            Ok(v) => reader_mux.on_message(v),
                            Err(_) => {
                                tracing::warn!(server = %server, bytes = line.len(), "upstream wrote a line that is not JSON; ignored")
                            }
                        }
                    }
                    Err(LinesCodecError::MaxLineLengthExceeded) => {
                        tracing::warn!(server = %server, max, "upstream wrote a line longer than the limit; skipped");
                    }
                    Err(LinesCodecError::Io(e)) => {
                        tracing::warn!(server = %server, error = %e, "cannot read from upstream");
                        break;
                    }
                }
            }
            tracing::info!(server = %server, "upstream closed its stdout");
            reader_mux.close();
        });

        // stderr → log, line by line, bounded.
        let server = ctx.server.clone();
        tokio::spawn(async move {
            let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_STDERR_LINE));
            while let Some(line) = lines.next().await {
                match line {
                    Ok(line) => tracing::info!(target: "bastion::upstream::stderr", server = %server, "{}", line),
                    Err(LinesCodecError::MaxLineLengthExceeded) => {
                        tracing::info!(target: "bastion::upstream::stderr", server = %server, "(long line skipped)")
                    }
                    Err(LinesCodecError::Io(_)) => break,
                }
            }
        });

        let conn = StdioConn {
            mux,
            info: ServerInfo::default(),
            child: tokio::sync::Mutex::new(Some(child)),
            pid,
            writer,
            stop,
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
        self.mux.notify("notifications/initialized", None).await;
        Ok(self)
    }

    /// Closes stdin, gives the process a moment to exit, then kills its
    /// process group.
    pub async fn shutdown(&self) {
        self.mux.close();
        // Lines already queued (a cancellation, say) still go out first.
        self.writer.close();
        let Some(mut child) = self.child.lock().await.take() else {
            self.stop.cancel();
            return;
        };
        let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_ok();
        self.stop.cancel();
        if let Some(pid) = self.pid {
            // The group may still hold grandchildren even when the child exited.
            let pgid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        if !exited {
            let _ = child.kill().await;
        }
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_env_is_minimal() {
        let env = base_env(Path::new("/opt/node/bin/npx"));
        assert_eq!(env["PATH"], format!("/opt/node/bin:{SYSTEM_PATH}"));
        assert!(env.keys().all(|k| ["PATH", "HOME", "LANG"].contains(&k.as_str())));
    }

    #[test]
    fn resolves_on_path() {
        assert_eq!(resolve_command("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert!(resolve_command("sh").is_some());
        assert!(resolve_command("definitely-not-a-command-xyz").is_none());
    }
}
