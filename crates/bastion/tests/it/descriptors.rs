//! File descriptors, through the real binary: at start the gateway raises
//! its soft open-file limit to the hard limit; once fewer than
//! `http.descriptor_headroom` descriptors remain under it, new client
//! connections are refused at once with 503 (JSON-RPC error -32029,
//! `Retry-After: 1`) and a warning is logged, rather than left hanging;
//! service resumes when descriptors are freed.
//!
//! Each test sets this test process's own limits, which the gateway
//! inherits (each test runs in a process of its own).

use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, Mcp, WAIT, fixture_echo, http, tool_text};

/// The open-file limit (soft and hard) the gateway is started with.
const LIMIT: u64 = 400;
const HEADROOM: u64 = 64;
/// Upstream servers (stdio) the gateway runs in that test.
const UPSTREAMS: usize = 40;
/// JSON-RPC error code of a refusal for lack of resources.
const OVERLOADED: i64 = -32029;
/// How long a refusal, or `/healthz`, may take: an answer, not a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A response read by hand: status, head (lower case), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response head, and for a response that is not an event stream
/// its body of Content-Length bytes. `None` when the connection ends first.
async fn read_raw(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if status == 200 || buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..(end + 4 + len).min(buf.len())]).into_owned();
                return Some(Raw { status, head, body });
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What became of a new connection.
enum Opened {
    Stream(TcpStream),
    /// Refused with this answer, after this long.
    Refused(Raw, Duration),
    /// Anything else: no answer in time, an unexpected one, a failed connect.
    Failed(String),
}

/// Opens session `sid`'s GET stream on a new connection.
async fn open_stream(port: u16, key: &str, sid: &str) -> Opened {
    let started = Instant::now();
    let mut s = match tokio::time::timeout(ANSWER_WITHIN, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Opened::Failed(format!("connect: {e}")),
        Err(_) => return Opened::Failed("connect: no connection within 1 s".into()),
    };
    let head = format!(
        "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Accept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
    );
    if let Err(e) = s.write_all(head.as_bytes()).await {
        return Opened::Failed(format!("write: {e}"));
    }
    match tokio::time::timeout(ANSWER_WITHIN, read_raw(&mut s)).await {
        Err(_) => Opened::Failed("no answer within 1 s".into()),
        Ok(None) => Opened::Failed("the connection was closed without an answer".into()),
        Ok(Some(r)) if r.status == 200 => Opened::Stream(s),
        Ok(Some(r)) if r.status == 503 => Opened::Refused(r, started.elapsed()),
        Ok(Some(r)) => Opened::Failed(format!("HTTP {}: {} {}", r.status, r.head, r.body)),
    }
}

/// `GET /healthz` on a fresh connection: its status, or what went wrong.
async fn healthz(port: u16) -> Result<u16, String> {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_raw(&mut s).await.map(|r| r.status).ok_or_else(|| "closed without an answer".to_string())
    };
    tokio::time::timeout(ANSWER_WITHIN, attempt).await.unwrap_or_else(|_| Err("no answer within 1 s".into()))
}

/// A 2025-11-25 session (initialized) on `client`; its id.
async fn new_session(client: &reqwest::Client, url: &str, key: &str) -> String {
    let m = Mcp::session_on(client.clone(), url.to_string(), key, "2025-11-25").await;
    m.session.expect("a session id")
}

/// The soft and hard "Max open files" of process `pid`.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace().map(|v| v.parse::<u64>().expect("a number"));
    (values.next().expect("soft"), values.next().expect("hard"))
}

#[tokio::test]
async fn the_gateway_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let soft = 1024.min(hard / 2);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("setrlimit");
    let gw = Gateway::start(json!({"mcpServers": {"echo": fixture_echo("echo")}}));
    assert_eq!(nofile_of(gw.pid()), (hard, hard), "the gateway was started with {soft} of {hard}");
    let log = gw.log();
    assert!(log.contains(&hard.to_string()), "the log does not mention the limit {hard}:\n{log}");
}

#[tokio::test]
async fn past_the_descriptor_headroom_new_connections_get_a_quick_503_until_descriptors_are_freed() {
    setrlimit(Resource::RLIMIT_NOFILE, LIMIT, LIMIT).expect("setrlimit");
    // Many upstream servers hold descriptors of the gateway's (their pipes),
    // so that the gateway runs short of descriptors before this process,
    // whose limit is the same, does.
    let servers: serde_json::Map<String, Value> =
        (0..UPSTREAMS).map(|i| (format!("echo{i}"), fixture_echo(&format!("echo{i}")))).collect();
    let gw = Gateway::start(json!({
        "mcpServers": servers,
        "http": {"descriptor_headroom": HEADROOM},
        "limits": {"per_principal": {"sessions": 1000, "streams": 1000}}
    }));
    let key = gw.create_key("hoarder", &[]);
    let url = gw.url("/mcp");
    let tools = Mcp::stateless(url.clone(), &key).tool_names().await;
    assert_eq!(tools.iter().filter(|t| t.ends_with("__echo")).count(), UPSTREAMS, "every server runs: {tools:?}");
    // One kept-alive connection creates the sessions.
    let client = http();
    let mut sessions = Vec::new();
    for _ in 0..LIMIT {
        sessions.push(new_session(&client, &url, &key).await);
    }

    let mut streams = Vec::new();
    let mut refusals = Vec::new();
    let mut problems = Vec::new();
    // Fewer than LIMIT streams can be opened from this process (its own
    // limit is LIMIT too); the gateway must refuse well before that.
    for (i, sid) in sessions.iter().enumerate().take((LIMIT - 40) as usize) {
        match open_stream(gw.port, &key, sid).await {
            Opened::Stream(s) => streams.push(s),
            Opened::Refused(r, took) => {
                let code = serde_json::from_str::<Value>(&r.body).ok().and_then(|v| v["error"]["code"].as_i64());
                if code != Some(OVERLOADED) || !r.head.lines().any(|l| l.replace(' ', "") == "retry-after:1") {
                    problems
                        .push(format!("refusal {}: not 503 with error {OVERLOADED} and Retry-After: 1: {r:?}", i + 1));
                }
                refusals.push(took);
            }
            Opened::Failed(e) => problems.push(format!("stream {} (with {} open): {e}", i + 1, streams.len())),
        }
        if i % 25 == 0 || !refusals.is_empty() || !problems.is_empty() {
            match healthz(gw.port).await {
                Ok(200 | 503) => {}
                Ok(s) => problems.push(format!("/healthz with {} streams open: HTTP {s}", streams.len())),
                Err(e) => problems.push(format!("/healthz with {} streams open: {e}", streams.len())),
            }
        }
        if refusals.len() >= 5 || !problems.is_empty() {
            break;
        }
    }
    let opened = streams.len();
    if refusals.is_empty() && problems.is_empty() {
        problems.push(format!("{opened} streams opened under an open-file limit of {LIMIT}, none refused"));
    }
    if !refusals.is_empty() {
        let log = gw.log();
        if !log.lines().any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("descriptor")) {
            problems.push("no warning about descriptors in the log".into());
        }
    }

    // Freed descriptors: new connections are served again, calls work (in
    // sessions that had no stream: the gateway may not have seen the
    // others' streams end yet).
    drop(streams);
    let again = tokio::time::timeout(WAIT, async {
        loop {
            if healthz(gw.port).await == Ok(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if again.is_err() {
        problems.push("/healthz was not served again once the streams were closed".into());
    } else {
        match open_stream(gw.port, &key, &sessions[sessions.len() - 1]).await {
            Opened::Stream(_) => {}
            Opened::Refused(r, _) => problems.push(format!("a stream after the others closed: refused {r:?}")),
            Opened::Failed(e) => problems.push(format!("a stream after the others closed: {e}")),
        }
        let m = Mcp::with_session(url.clone(), &key, &sessions[sessions.len() - 2]);
        let rpc = m.call_tool("echo0__echo", json!({"text": "after"})).await;
        if rpc.get("result").is_none() || tool_text(&rpc) != "after" {
            problems.push(format!("a call after the others closed: {rpc}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) ({opened} streams opened, {} refused in {refusals:?}):\n- {}",
        problems.len(),
        refusals.len(),
        problems.join("\n- ")
    );
}
