//! stdio servers that misbehave, through the real gateway and the raw fault
//! server (`tests/clients/fault_server.py`): an answer over the size limit
//! or not UTF-8 fails only its own call; bad lines that answer nothing
//! change nothing; a crash-looping server leaks no descriptor; and neither
//! a server nor what it started outlives the gateway, however the gateway
//! ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, WAIT, bastion_bin, clients_dir, eventually, run_bounded, tool_text, tools};

/// `upstream.max_message_bytes` of these tests' gateways.
const LIMIT: usize = 65_536;

/// Config entry for the fault server tagged `tag`, writing its pids to
/// `pid_file`, with `flags`.
fn fault_server(tag: &str, pid_file: &Path, flags: &[&str]) -> Value {
    let mut args = vec![json!(clients_dir().join("fault_server.py")), json!("--pid-file"), json!(pid_file)];
    args.extend(flags.iter().map(|f| json!(f)));
    json!({
        "command": tools().python,
        "args": args,
        "env": {"BASTION_IT_SERVER": tag, "PYTHONDONTWRITEBYTECODE": "1"}
    })
}

/// A gateway running one fault server, `f`, and an API key for it.
struct Setup {
    gw: Gateway,
    key: String,
    _dir: tempfile::TempDir,
    pid_file: PathBuf,
}

impl Setup {
    fn start(flags: &[&str], upstream: Value) -> Setup {
        let dir = tempfile::Builder::new().prefix("bastion-stdio-faults-").tempdir().expect("tempdir");
        let pid_file = dir.path().join("pids.json");
        let mut upstream = upstream;
        upstream["max_message_bytes"] = json!(LIMIT);
        let gw = Gateway::start(json!({
            "mcpServers": {"f": fault_server("fault", &pid_file, flags)},
            "upstream": upstream
        }));
        let key = gw.create_key("faults", &[]);
        Setup { gw, key, _dir: dir, pid_file }
    }

    fn client(&self) -> Arc<Mcp> {
        Arc::new(Mcp::stateless(self.gw.url("/mcp/f"), &self.key))
    }

    /// What the server wrote in its pid file (rewritten at each start).
    async fn pids(&self) -> Pids {
        let path = self.pid_file.clone();
        eventually(WAIT, "the fault server's pid file", || {
            let path = path.clone();
            async move {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                Some(Pids {
                    server: v["server"].as_u64()? as u32,
                    grandchild: v["grandchild"].as_u64().map(|p| p as u32),
                    pgid: v["pgid"].as_u64()? as u32,
                })
            }
        })
        .await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pids {
    server: u32,
    grandchild: Option<u32>,
    pgid: u32,
}

/// `/proc/PID/stat`: state, parent, process group, start time.
fn stat(pid: u32) -> Option<(char, u32, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn live(state: char) -> bool {
    state != 'Z' && state != 'X'
}

/// Live processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(state, _, pg, _)| pg == pgid && live(state)))
        .collect()
}

/// Processes a test saw, killed by pid when it ends if they still run (the
/// same process: its start time is checked), whatever the gateway did.
struct Seen(Vec<(u32, u64)>);

impl Seen {
    fn of(pids: impl IntoIterator<Item = u32>) -> Seen {
        Seen(pids.into_iter().filter_map(|p| stat(p).map(|(_, _, _, start)| (p, start))).collect())
    }

    /// Those still running.
    fn alive(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(pid, start)| stat(*pid).is_some_and(|(state, _, _, s)| s == *start && live(state)))
            .map(|(pid, _)| *pid)
            .collect()
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        for pid in self.alive() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn error_code(rpc: &Value) -> Option<i64> {
    rpc["error"]["code"].as_i64()
}

fn error_message(rpc: &Value) -> String {
    rpc["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// The log lines containing every one of `needles`.
fn log_lines(gw: &Gateway, needles: &[&str]) -> Vec<String> {
    gw.log().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).collect()
}

/// Starts a call of `sleep` for `ms` on `m`, and gives it time to reach the
/// server.
async fn slow_call(m: &Arc<Mcp>, ms: u64) -> tokio::task::JoinHandle<Value> {
    let call = tokio::spawn({
        let m = m.clone();
        async move { m.call_tool("sleep", json!({"ms": ms})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    call
}

#[tokio::test]
async fn an_answer_over_the_limit_fails_only_its_call() {
    let s = Setup::start(&[], json!({}));
    let m = s.client();
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "up"})).await), "up");
    let pids = s.pids().await;
    let guard = s.gw.child_tagged("fault").expect("the server's process").pid;

    for id_at in ["start", "end"] {
        let slow = slow_call(&m, 1500).await;
        let rpc = m.call_tool("long_line", json!({"bytes": 4 * LIMIT, "id_at": id_at})).await;
        assert_eq!(error_code(&rpc), Some(-32000), "an answer over the limit ({id_at}): {rpc}");
        let message = error_message(&rpc);
        assert!(message.contains("too large") && message.contains(&LIMIT.to_string()), "{rpc}");
        assert!(!rpc.to_string().contains("xxxxxxxx"), "the answer itself is never quoted: {rpc}");
        assert!(!slow.is_finished(), "the bad answer came while the slow call ran");
        let slow = slow.await.expect("join");
        assert_eq!(tool_text(&slow), "slept 1500 ms", "the slow call on the same process: {slow}");
    }
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "still"})).await), "still");
    assert_eq!(s.pids().await, pids, "the same server process");
    assert_eq!(s.gw.child_tagged("fault").map(|p| p.pid), Some(guard), "no restart");

    let warnings = log_lines(&s.gw, &["WARN", "longer than the limit", "server=f", "bytes="]);
    assert_eq!(warnings.len(), 2, "one warning per line:\n{}", s.gw.log());
    assert!(!s.gw.log().contains("xxxxxxxx"), "the log never holds the line");
}

#[tokio::test]
async fn an_answer_that_is_not_utf8_fails_only_its_call() {
    let s = Setup::start(&[], json!({}));
    let m = s.client();
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "up"})).await), "up");
    let pids = s.pids().await;
    let guard = s.gw.child_tagged("fault").expect("the server's process").pid;

    let slow = slow_call(&m, 1500).await;
    let rpc = m.call_tool("bad_utf8", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32000), "an answer that is not UTF-8: {rpc}");
    assert!(error_message(&rpc).contains("not valid UTF-8"), "{rpc}");
    assert!(!rpc.to_string().contains("bytes\""), "the answer itself is never quoted: {rpc}");
    assert!(!slow.is_finished(), "the bad answer came while the slow call ran");
    assert_eq!(tool_text(&slow.await.expect("join")), "slept 1500 ms");

    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "still"})).await), "still");
    assert_eq!(s.pids().await, pids, "the same server process");
    assert_eq!(s.gw.child_tagged("fault").map(|p| p.pid), Some(guard), "no restart");
    let warnings = log_lines(&s.gw, &["WARN", "not valid UTF-8", "server=f", "bytes="]);
    assert_eq!(warnings.len(), 1, "one warning:\n{}", s.gw.log());
}

#[tokio::test]
async fn bad_lines_that_answer_nothing_change_nothing() {
    let s = Setup::start(&[], json!({}));
    let m = s.client();
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "up"})).await), "up");
    let pids = s.pids().await;

    let slow = slow_call(&m, 2500).await;
    let rpc = m.call_tool("long_line_unknown_id", json!({"bytes": 3 * LIMIT})).await;
    assert_eq!(tool_text(&rpc), "after a long line", "{rpc}");
    let rpc = m.call_tool("bad_utf8_notification", json!({})).await;
    assert_eq!(tool_text(&rpc), "after a bad notification", "{rpc}");
    let rpc = m.call_tool("garbage", json!({})).await;
    assert_eq!(tool_text(&rpc), "wrote a non-JSON line to stdout", "{rpc}");
    let rpc = m.call_tool("flood", json!({"count": 5000})).await;
    assert_eq!(tool_text(&rpc), "flooded 5000", "{rpc}");
    assert!(!slow.is_finished(), "the bad lines came while the slow call ran");
    assert_eq!(tool_text(&slow.await.expect("join")), "slept 2500 ms");
    assert_eq!(s.pids().await, pids, "the same server process");

    // The two long lines (an answer to no call, a notification) and the
    // line that is not UTF-8 were each logged once, by size only.
    let long = log_lines(&s.gw, &["WARN", "longer than the limit", "server=f", "bytes="]);
    assert_eq!(long.len(), 2, "{}", s.gw.log());
    assert!(long.iter().all(|l| !l.contains("failed_call")), "no call failed: {long:?}");
    assert_eq!(log_lines(&s.gw, &["WARN", "not valid UTF-8", "server=f"]).len(), 1, "{}", s.gw.log());
    assert!(!s.gw.log().contains("xxxxxxxx"));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn a_crash_looping_server_leaks_no_descriptor() {
    const CYCLES: usize = 10;
    let s = Setup::start(&[], json!({"restart_backoff": "20ms", "restart_backoff_max": "100ms"}));
    let m = s.client();
    let cycle = |i: usize| {
        let m = m.clone();
        async move {
            let rpc = m.call_tool("crash", json!({})).await;
            assert_eq!(error_code(&rpc), Some(-32000), "crash {i}: {rpc}");
            let text = format!("after crash {i}");
            let rpc = m.call_tool("echo", json!({"text": text})).await;
            assert_eq!(tool_text(&rpc), text, "the call after crash {i}: {rpc}");
        }
    };
    // One cycle first: what the gateway opens once (the client's
    // connection, the runtime's own) is then open.
    cycle(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_fds(s.gw.pid());
    let first = s.pids().await;
    for i in 1..=CYCLES {
        cycle(i).await;
    }
    assert_ne!(s.pids().await, first, "the server was restarted");
    let starts = log_lines(&s.gw, &["upstream process started", "server=f"]).len();
    assert!(starts > CYCLES, "{starts} starts for {CYCLES} crashes");
    // The last dead connection may still be being closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = open_fds(s.gw.pid());
    while after > before + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = open_fds(s.gw.pid());
    }
    eprintln!("open descriptors of the gateway: {before} before, {after} after {CYCLES} crashes");
    assert!(after <= before + 2, "descriptors grew from {before} to {after} over {CYCLES} crashes");
}

/// A gateway whose server ignores stdin closing and SIGTERM and has a
/// grandchild doing the same: everything a test must see gone, and the
/// groups they are in.
async fn stubborn() -> (Setup, Seen, BTreeSet<u32>) {
    let s = Setup::start(&["--ignore-eof", "--grandchild", "--ignore-term"], json!({}));
    let m = s.client();
    assert_eq!(tool_text(&m.call_tool("echo", json!({"text": "up"})).await), "up");
    let pids = s.pids().await;
    let grandchild = pids.grandchild.expect("a grandchild");
    let guard = s.gw.child_tagged("fault").expect("the server's process").pid;
    let seen = Seen::of([pids.server, grandchild, guard]);
    assert_eq!(seen.alive().len(), 3, "server, grandchild and the process the gateway started run");
    let groups: BTreeSet<u32> =
        [pids.server, grandchild].iter().filter_map(|p| stat(*p).map(|(_, _, pgid, _)| pgid)).collect();
    assert!(!groups.contains(&(s.gw.pid())), "the server is not in the gateway's process group");
    (s, seen, groups)
}

async fn all_gone(seen: &Seen, groups: &BTreeSet<u32>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let alive = seen.alive();
        let members: Vec<u32> = groups.iter().flat_map(|g| group_members(*g)).collect();
        if alive.is_empty() && members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {within:?}: {alive:?}; in their process groups {groups:?}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn servers_and_their_children_die_when_the_gateway_is_killed() {
    let (s, seen, groups) = stubborn().await;
    // SIGKILL to the gateway alone: it runs no code of its own after this.
    kill(Pid::from_raw(s.gw.pid() as i32), Signal::SIGKILL).expect("SIGKILL the gateway");
    all_gone(&seen, &groups, Duration::from_secs(5), "after SIGKILL of the gateway").await;
}

#[tokio::test]
async fn servers_and_their_children_die_when_the_gateway_stops() {
    let (mut s, seen, groups) = stubborn().await;
    let status = s.gw.stop().expect("the gateway exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    all_gone(&seen, &groups, Duration::from_secs(5), "after SIGTERM of the gateway").await;
}

#[tokio::test]
async fn a_server_runs_in_its_own_group_with_no_blocked_signals() {
    let s = Setup::start(&[], json!({}));
    let m = s.client();
    let masks: Value = serde_json::from_str(&tool_text(&m.call_tool("sigmask", json!({})).await)).expect("masks");
    let blocked = u64::from_str_radix(masks["blocked"].as_str().expect("blocked"), 16).expect("hex");
    assert_eq!(blocked, 0, "the server starts with no blocked signal: {masks}");
    let pids = s.pids().await;
    let guard = s.gw.child_tagged("fault").expect("the gateway's child").pid;
    let (_, server_parent, server_group, _) = stat(pids.server).expect("the server runs");
    assert_eq!(server_group, guard, "the gateway's child leads the server's process group");
    assert_eq!(pids.pgid, guard);
    assert!(server_parent == guard || pids.server == guard, "the server is the child's child (or the child itself)");
    let (_, guard_parent, guard_group, _) = stat(guard).expect("the gateway's child runs");
    assert_eq!((guard_parent, guard_group), (s.gw.pid(), guard));
}

#[test]
fn the_guard_subcommand_is_hidden_and_checks_its_parent() {
    let help = run_bounded(Command::new(bastion_bin()).arg("--help"), WAIT);
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("child-guard"), "hidden from --help");

    // The exit status of the program it runs is its own.
    let out = run_bounded(
        Command::new(bastion_bin())
            .args(["__child-guard", "--parent", &std::process::id().to_string(), "--"])
            .args(["/bin/sh", "-c", "exit 7"]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    // Its parent is not the one named (the gateway died): nothing is run.
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let out = run_bounded(
        Command::new(bastion_bin())
            .args(["__child-guard", "--parent", "1", "--", "/bin/sh", "-c"])
            .arg(format!("touch {}", marker.display())),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(!marker.exists(), "the program was not started");
}
