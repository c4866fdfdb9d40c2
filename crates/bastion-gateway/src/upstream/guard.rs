//! stdio servers never outlive the gateway, however it ends.
//!
//! Each server runs in its own process group, so that stopping it also
//! stops what it started (`npx` → `node`). Three things kill that group:
//!
//! - the gateway itself, when a connection ends (its stdout closed, an idle
//!   stop, a reload, a failed start): [`Group::kill`], SIGKILL to the group,
//!   always before its leader is reaped so the id still names that group;
//! - the gateway on its way out: [`kill_all_children`], which the `bastion`
//!   binary calls on every exit path and from its panic hook;
//! - when the gateway dies without a chance to do either (SIGKILL, OOM),
//!   the **child guard**: the `bastion` binary run as
//!   `bastion __child-guard --parent PID -- PROGRAM ARGS…`, which leads the
//!   group and starts the server in it (through `bastion __child-guard
//!   --exec`, which clears the signal mask and becomes the server: the
//!   standard library would pass the guard's mask on). Its parent-death
//!   signal is SIGTERM;
//!   it blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD and waits for them: when
//!   the server exits, the guard exits with its status (128 + signal when
//!   killed); on any of the others it SIGKILLs its whole group, itself
//!   included. The server gets the three pipes; the guard keeps none of
//!   them (its own 0/1/2 become `/dev/null`), so the gateway sees the
//!   server's stdout end when the server's does.
//!
//! The parent-death signal fires when the *thread* that started the guard
//! ends, not the process; guards are therefore started from one thread kept
//! for that purpose for the life of the process.
//!
//! The guard is used once the binary has called [`use_guard`]; without it
//! (the gateway crate's own tests) servers are started directly, still in
//! their own group.
//!
//! A grandchild that leaves the group (`setsid`) escapes all of this.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The hidden subcommand of the `bastion` binary that runs a guard.
pub const SUBCOMMAND: &str = "__child-guard";

/// The guard's exit code when it did not start the server because the
/// gateway was already gone, or it could not set itself up.
pub const GUARD_FAILED: u8 = 125;

/// The binary that runs guards, once [`use_guard`] was called.
static GUARD_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Makes every stdio server start under a guard run by `exe` (the `bastion`
/// binary itself, `std::env::current_exe()`). Set once, at start-up.
pub fn use_guard(exe: PathBuf) {
    let _ = GUARD_EXE.set(exe);
}

/// Whether servers start under a guard.
pub(crate) fn guarded() -> bool {
    GUARD_EXE.get().is_some()
}

// ---------------------------------------------------------------------------
// The gateway's side
// ---------------------------------------------------------------------------

/// The live process groups, by id.
static LIVE: Mutex<BTreeMap<i32, Weak<Group>>> = Mutex::new(BTreeMap::new());

/// A child's process group, led by the child (the guard, or the server
/// itself when there is no guard).
#[derive(Debug)]
pub(crate) struct Group {
    pgid: i32,
    /// Set once the group was killed; its leader may be reaped only then.
    killed: Mutex<bool>,
}

impl Group {
    fn register(pgid: i32) -> Arc<Group> {
        let group = Arc::new(Group { pgid, killed: Mutex::new(false) });
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).insert(pgid, Arc::downgrade(&group));
        group
    }

    pub fn id(&self) -> i32 {
        self.pgid
    }

    /// SIGKILLs every process of the group, once. Until then the leader is
    /// not reaped (see [`Process`]), so the id cannot name another group.
    pub fn kill(&self) {
        let mut killed = self.killed.lock().unwrap_or_else(PoisonError::into_inner);
        if *killed {
            return;
        }
        *killed = true;
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        drop(killed);
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if live.get(&self.pgid).is_some_and(|w| std::ptr::eq(w.as_ptr(), self)) {
            live.remove(&self.pgid);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the process group of every stdio server still running. For the
/// gateway's exit paths, including a panic; safe to call more than once.
pub fn kill_all_children() {
    let groups: Vec<Weak<Group>> = LIVE.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
    for group in groups.iter().filter_map(Weak::upgrade) {
        group.kill();
    }
}

/// A started child and its group. Dropping it kills the group, then the
/// child (`kill_on_drop`), whose exit the runtime reaps.
#[derive(Debug)]
pub(crate) struct Process {
    pub group: Arc<Group>,
    pub child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        // The child is dropped (and may be reaped) only after this.
        self.group.kill();
    }
}

/// The command that starts `program`: under a guard once [`use_guard`] was
/// called, else directly. The caller adds the environment, directory and
/// pipes; the child always leads a new process group.
pub(crate) fn command(program: &Path, args: &[String]) -> Command {
    let mut cmd = match GUARD_EXE.get() {
        Some(exe) => {
            // `/proc/self/exe` still runs this binary when the file was
            // replaced (an upgrade) since the gateway started.
            let self_exe = Path::new("/proc/self/exe");
            let mut cmd = Command::new(if self_exe.exists() { self_exe } else { exe.as_path() });
            cmd.arg0(exe)
                .arg(SUBCOMMAND)
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--")
                .arg(program)
                .args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    };
    cmd.kill_on_drop(true).process_group(0);
    cmd
}

type Job = (Command, tokio::runtime::Handle, tokio::sync::oneshot::Sender<io::Result<Process>>);

/// Starts `cmd` (from [`command`]) and registers its group. With a guard,
/// from the thread kept for that (see the module's documentation).
pub(crate) async fn spawn(mut cmd: Command) -> io::Result<Process> {
    if !guarded() {
        return start(&mut cmd);
    }
    static SPAWNER: OnceLock<Option<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("bastion-spawner".into()).spawn(move || {
            for (mut cmd, runtime, reply) in rx {
                let _runtime = runtime.enter();
                // A caller that gave up drops the process: its group is killed.
                let _ = reply.send(start(&mut cmd));
            }
        });
        match thread {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that starts stdio servers; starting them from the runtime");
                None
            }
        }
    });
    let Some(spawner) = spawner else { return start(&mut cmd) };
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner
        .send((cmd, tokio::runtime::Handle::current(), tx))
        .map_err(|_| io::Error::other("the thread that starts stdio servers is gone"))?;
    rx.await.map_err(|_| io::Error::other("the thread that starts stdio servers is gone"))?
}

fn start(cmd: &mut Command) -> io::Result<Process> {
    let child = cmd.spawn()?;
    let pgid = child.id().ok_or_else(|| io::Error::other("the child exited at once"))?;
    Ok(Process { group: Group::register(pgid as i32), child })
}

/// The server's own pid, from its guard's pid: the guard's one child.
pub(crate) fn server_pid(pid: u32) -> Option<u32> {
    if !guarded() {
        return Some(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// The guard process
// ---------------------------------------------------------------------------

/// The `bastion __child-guard ARGS…` subcommand (`ARGS` being what follows
/// it), synchronous, before any runtime or thread exists:
///
/// - `--parent PID -- PROGRAM ARGS…`: the guard. Returns the server's exit
///   status; never returns when told to stop (it kills its own group).
/// - `--exec -- PROGRAM ARGS…`: how the guard starts the server: clears the
///   signal mask (the standard library keeps the mask of the process that
///   starts a child, and the guard blocks signals) and becomes `PROGRAM`.
pub fn main(args: &[OsString]) -> ExitCode {
    let (mode, command) = match parse_args(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("bastion {SUBCOMMAND}: {e}");
            return ExitCode::from(GUARD_FAILED);
        }
    };
    let Some((program, args)) = command.split_first() else {
        eprintln!("bastion {SUBCOMMAND}: no program to run");
        return ExitCode::from(GUARD_FAILED);
    };
    if matches!(mode, Mode::Guard { .. }) {
        // Started as `/proc/self/exe`, it would show as `exe` in `ps` and `top`.
        let _ = nix::sys::prctl::set_name(c"bastion-guard");
    }
    match mode {
        Mode::Exec => become_program(program, args),
        Mode::Guard { parent } => match guard(parent, program, args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bastion {SUBCOMMAND}: {e}");
                ExitCode::from(GUARD_FAILED)
            }
        },
    }
}

/// Clears the signal mask and replaces this process with `program`.
fn become_program(program: &OsString, args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    if let Err(e) = SigSet::empty().thread_set_mask() {
        eprintln!("bastion {SUBCOMMAND}: cannot clear the signal mask: {e}");
        return ExitCode::from(GUARD_FAILED);
    }
    // Only returns on failure. SIGPIPE, ignored by Rust programs, is reset.
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("bastion {SUBCOMMAND}: cannot start {}: {e}", Path::new(program).display());
    ExitCode::from(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

/// The signals the guard waits for.
fn awaited() -> SigSet {
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD].into_iter().collect()
}

fn guard(parent: u32, program: &OsString, args: &[OsString]) -> Result<ExitCode, String> {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, getpgrp, getpid, getppid, setpgid};

    let signals = awaited();
    // Before anything can send them: they wait until `wait` takes them.
    signals.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    // The gateway may have died before the parent-death signal was set.
    if getppid().as_raw() as u32 != parent {
        return Ok(ExitCode::from(GUARD_FAILED));
    }
    // Killing "the group" must never reach anyone else's.
    if getpgrp() != getpid() {
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| format!("cannot lead a process group: {e}"))?;
    }
    // The server inherits 0/1/2, the environment and the directory, and
    // starts through `--exec`, which clears the mask inherited from here.
    let self_exe = Path::new("/proc/self/exe");
    let exe = if self_exe.exists() {
        self_exe.to_path_buf()
    } else {
        std::env::current_exe().map_err(|e| format!("cannot find the gateway's binary: {e}"))?
    };
    let mut server =
        match std::process::Command::new(exe).arg(SUBCOMMAND).arg("--exec").arg("--").arg(program).args(args).spawn() {
            Ok(s) => s,
            Err(e) => return Err(format!("cannot start {}: {e}", Path::new(program).display())),
        };
    // Whether the gateway's pipes close is up to the server alone now.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let _ = dup2_stdin(&null).and_then(|()| dup2_stdout(&null)).and_then(|()| dup2_stderr(&null));
    drop(null);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match server.try_wait() {
                Ok(Some(status)) => return Ok(exit_code(status)),
                Ok(None) => {}
                Err(_) => return Ok(stop_group()),
            },
            Ok(_) => return Ok(stop_group()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Ok(stop_group()),
        }
    }
}

/// SIGKILL to the guard's whole group, itself included.
fn stop_group() -> ExitCode {
    let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    // Not reached: the guard is in the group.
    ExitCode::from(128 + Signal::SIGKILL as u8)
}

/// A process's exit status as an exit code: its own, or 128 + the signal
/// that killed it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.wrapping_add(signal as u8)),
        (None, None) => ExitCode::from(GUARD_FAILED),
    }
}

/// What the subcommand was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// Guard the server (`--parent PID`).
    Guard { parent: u32 },
    /// Become the server (`--exec`).
    Exec,
}

/// Parses what follows the subcommand: `--parent PID -- PROGRAM ARGS…` or
/// `--exec -- PROGRAM ARGS…`.
pub fn parse_args(args: &[OsString]) -> Result<(Mode, Vec<OsString>), String> {
    let mut parent = None;
    let mut exec = false;
    let parse_pid = |v: &str| v.parse::<u32>().map_err(|_| format!("--parent: not a process id: {v:?}"));
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_os_str();
        if a == OsStr::new("--") {
            let command = args[i + 1..].to_vec();
            if command.is_empty() {
                return Err("no program after --".into());
            }
            return match (parent, exec) {
                (Some(parent), false) => Ok((Mode::Guard { parent }, command)),
                (None, true) => Ok((Mode::Exec, command)),
                _ => Err("expected one of --parent PID and --exec".into()),
            };
        } else if a == OsStr::new("--exec") {
            exec = true;
            i += 1;
        } else if a == OsStr::new("--parent") {
            let v = args.get(i + 1).and_then(|v| v.to_str()).ok_or("--parent needs a process id")?;
            parent = Some(parse_pid(v)?);
            i += 2;
        } else if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--parent=")) {
            parent = Some(parse_pid(v)?);
            i += 1;
        } else {
            return Err(format!("unexpected argument {a:?}"));
        }
    }
    Err("expected -- PROGRAM ARGS…".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&os(&["--parent", "42", "--", "/bin/prog", "--flag", "--"])),
            Ok((Mode::Guard { parent: 42 }, os(&["/bin/prog", "--flag", "--"])))
        );
        assert_eq!(parse_args(&os(&["--parent=7", "--", "p"])), Ok((Mode::Guard { parent: 7 }, os(&["p"]))));
        assert_eq!(parse_args(&os(&["--exec", "--", "p", "a"])), Ok((Mode::Exec, os(&["p", "a"]))));
        assert!(parse_args(&os(&["--", "p"])).is_err());
        assert!(parse_args(&os(&["--exec", "--parent", "1", "--", "p"])).is_err());
        assert!(parse_args(&os(&["--parent", "x", "--", "p"])).is_err());
        assert!(parse_args(&os(&["--parent", "1", "--"])).is_err());
        assert!(parse_args(&os(&["--parent", "1", "p"])).is_err());
    }

    /// Why the guard starts the server through `--exec`: a process started
    /// by the standard library keeps the blocked signals of the thread that
    /// started it (SIGPIPE, ignored by Rust programs, is reset).
    #[test]
    fn started_processes_keep_the_signal_mask() {
        let status = std::thread::spawn(|| {
            awaited().thread_block().unwrap();
            std::process::Command::new("/bin/cat").arg("/proc/self/status").output().unwrap()
        })
        .join()
        .unwrap();
        let status = String::from_utf8_lossy(&status.stdout).to_string();
        let mask = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        let bit = |s: Signal| 1u64 << (s as u64 - 1);
        let awaited = awaited().iter().map(bit).fold(0, |a, b| a | b);
        assert_eq!(mask("SigBlk:") & awaited, awaited, "{status}");
        assert_eq!(mask("SigIgn:") & bit(Signal::SIGPIPE), 0, "{status}");
    }

    #[test]
    fn exit_codes() {
        use std::os::unix::process::ExitStatusExt;
        let code = |raw| format!("{:?}", exit_code(std::process::ExitStatus::from_raw(raw)));
        assert_eq!(code(3 << 8), format!("{:?}", ExitCode::from(3)));
        assert_eq!(code(9), format!("{:?}", ExitCode::from(137)));
    }

    #[tokio::test]
    async fn a_dropped_process_takes_its_group_along() {
        let mut cmd = command(Path::new("/bin/sh"), &["-c".into(), "sleep 60 & sleep 60 & wait".into()]);
        cmd.stdin(std::process::Stdio::null());
        let process = spawn(cmd).await.unwrap();
        let pgid = process.group.id();
        let members = || super::super::stdio::tests::members(pgid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while members() < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(members(), 3, "sh and its two sleeps");
        assert!(LIVE.lock().unwrap().contains_key(&pgid));
        drop(process);
        assert!(!LIVE.lock().unwrap().contains_key(&pgid), "unregistered");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while members() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(members(), 0, "the whole group is gone");
    }
}
