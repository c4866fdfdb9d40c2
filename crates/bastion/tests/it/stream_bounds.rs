//! What a session's long-lived stream may hold, through the real binary.
//!
//! - A legacy HTTP+SSE client that reads slowly loses no answer: while its
//!   stream's queue is over `http.stream_queue_bytes` its `POST /messages`
//!   are held back, and every answer is queued.
//! - A burst of notifications fanned out to thousands of GET streams that
//!   are not read stays bounded in memory (`http.stream_queue_bytes` per
//!   stream, `http.stream_queue_total_bytes` for all, `list_changed`
//!   coalesced), and the gateway keeps answering `/healthz` quickly.
//! - Streams not read beyond what their sockets hold lose notifications,
//!   then the fullest are ended; a stream that is read keeps working.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{
    Gates, Gateway, Reply, WAIT, eventually, fixture_echo, http, rss_kib, scripted_stdio, sse_messages, tool_text,
};

// ---------------------------------------------------------------------------
// A slow legacy client
// ---------------------------------------------------------------------------

/// Calls posted, by this many posters at once, each echoing this much text:
/// 1,500 × 8 KiB ≈ 12 MiB of answers, well over what the socket buffers of
/// a loopback connection absorb (a few MiB).
const LEGACY_CALLS: usize = 1500;
const POSTERS: usize = 4;
const ECHO_BYTES: usize = 8 * 1024;

/// The text the call `n` echoes: its number, then filler.
fn echo_text(n: usize) -> String {
    let mut t = format!("{n:05}:");
    let filler = b"abcdefghijklmnopqrstuvwxyz0123456789";
    t.extend((0..ECHO_BYTES).map(|i| filler[(i + n) % filler.len()] as char));
    t
}

/// An event stream read only when asked to, split into events.
struct Unread {
    resp: reqwest::Response,
    /// Text after the last complete event.
    partial: String,
    bytes: usize,
}

impl Unread {
    fn new(resp: reqwest::Response) -> Unread {
        Unread { resp, partial: String::new(), bytes: 0 }
    }

    /// Reads one chunk (waiting at most `within`); the complete events it
    /// ends, as raw text. `None` when the stream ended or nothing came.
    async fn next_events(&mut self, within: Duration) -> Option<Vec<String>> {
        let chunk = tokio::time::timeout(within, self.resp.chunk()).await.ok()?.ok()??;
        self.bytes += chunk.len();
        self.partial.push_str(&String::from_utf8_lossy(&chunk));
        let mut events = Vec::new();
        while let Some(end) = self.partial.find("\n\n") {
            events.push(self.partial[..end + 2].to_string());
            self.partial.drain(..end + 2);
        }
        Some(events)
    }

    /// Reads until an event satisfies `want`; that event.
    async fn until(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(events) = self.next_events(deadline - Instant::now()).await
                && let Some(e) = events.into_iter().find(|e| want(e))
            {
                return e;
            }
        }
        panic!("no {what} on the stream");
    }
}

#[tokio::test]
async fn a_legacy_client_reading_slowly_loses_no_answer() {
    // The cap on calls in flight is raised out of the way: the calls are
    // answered quickly, it is their answers that wait for the reader.
    let gw = Gateway::start(json!({
        "mcpServers": {"echo": fixture_echo("echo")},
        "http": {"stream_queue_bytes": 65536},
        "limits": {"per_principal": {"calls_in_flight": 10_000}}
    }));
    let key = gw.create_key("slow-reader", &[]);
    let client = http();
    let resp = client.get(gw.url("/sse")).bearer_auth(&key).header("accept", "text/event-stream").send().await;
    let resp = resp.expect("GET /sse");
    assert_eq!(resp.status(), 200, "GET /sse");
    let mut stream = Unread::new(resp);
    let endpoint = stream.until("endpoint event", |e| e.contains("event: endpoint")).await;
    let endpoint = endpoint.lines().find_map(|l| l.strip_prefix("data:")).expect("endpoint data").trim().to_string();
    let messages = gw.url(&endpoint);
    let post = {
        let (client, key, messages) = (client.clone(), key.clone(), messages.clone());
        move |body: Value| {
            let (client, key, messages) = (client.clone(), key.clone(), messages.clone());
            async move {
                let resp = client
                    .post(&messages)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .timeout(Duration::from_secs(120))
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                if status == 202 { Ok(()) } else { Err(format!("HTTP {status} {text}")) }
            }
        }
    };
    let init = json!({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "bastion-it", "version": "0"}}});
    post(init).await.expect("initialize");
    stream.until("initialize answer", |e| e.contains("\"id\":\"init\"")).await;
    post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await.expect("initialized");

    // The posters go on while the stream is not read; with back-pressure
    // they are held back until it is.
    let failed_posts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let post = post.clone();
            let failed = failed_posts.clone();
            tokio::spawn(async move {
                for n in (p..LEGACY_CALLS).step_by(POSTERS) {
                    let body = json!({"jsonrpc": "2.0", "id": format!("c{n}"), "method": "tools/call",
                        "params": {"name": "echo__echo", "arguments": {"text": echo_text(n)}}});
                    if let Err(e) = post(body).await {
                        failed.lock().expect("poisoned").push(format!("c{n}: {e}"));
                    }
                }
            })
        })
        .collect();
    // The stream is left unread until every call is posted, or for 5 s
    // while the posters are held back.
    let unread_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < unread_until && !posters.iter().all(|p| p.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Then read slowly: a pause after every chunk.
    let mut answers: HashMap<String, usize> = HashMap::new();
    let mut wrong = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    while answers.len() < LEGACY_CALLS && Instant::now() < deadline {
        match stream.next_events(Duration::from_millis(500)).await {
            Some(events) => {
                quiet_since = Instant::now();
                for m in sse_messages(&events.concat()) {
                    let Some(id) = m["id"].as_str().filter(|id| id.starts_with('c')) else { continue };
                    *answers.entry(id.to_string()).or_default() += 1;
                    let n: usize = id[1..].parse().expect("an id of ours");
                    if m.get("result").is_none() || tool_text(&m) != echo_text(n) {
                        wrong.push(format!("{id}: {}", m.to_string().chars().take(300).collect::<String>()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Nothing more is coming once every POST is answered and the
            // stream has been quiet for a while.
            None if posters.iter().all(|p| p.is_finished()) && quiet_since.elapsed() > Duration::from_secs(5) => break,
            None => {}
        }
    }
    for p in posters {
        p.await.expect("poster");
    }
    let failed = failed_posts.lock().expect("poisoned").clone();
    let missing: Vec<usize> = (0..LEGACY_CALLS).filter(|n| !answers.contains_key(&format!("c{n}"))).collect();
    let twice: Vec<_> = answers.iter().filter(|(_, c)| **c > 1).map(|(id, c)| format!("{id} ×{c}")).collect();
    assert!(
        failed.is_empty() && missing.is_empty() && twice.is_empty() && wrong.is_empty(),
        "of {LEGACY_CALLS} calls ({} bytes read): {} answers lost (first: {:?}), {} POSTs failed (first: {:?}), \
         answered more than once: {twice:?}, wrong answers: {:?}",
        stream.bytes,
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>(),
        wrong.iter().take(3).collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------
// A notification burst to thousands of streams
// ---------------------------------------------------------------------------

/// Sessions, each with a GET stream subscribed to [`flood_uri`]; most are
/// never read, the first [`READERS`] are.
const SESSIONS: usize = 2000;
const READERS: usize = 20;
/// Rounds of the burst: each one `notifications/resources/updated` and one
/// `list_changed` (tools, prompts, resources in turn) to every session.
const ROUNDS: usize = 500;
/// The bound on the gateway's resident memory during the burst. The streams'
/// queues may hold 64 MiB together (the default total); the rest is the
/// gateway itself and what 2,000 sessions and connections cost.
const RSS_BOUND_KIB: u64 = 300 * 1024;
/// `/healthz` must answer within this, throughout: 50 ms for an optimized
/// gateway (run the suite with `BASTION_TEST_BIN=target/release/bastion`);
/// the unoptimized build the suite makes itself gets four times as long.
fn healthz_bound() -> Duration {
    let unoptimized = cfg!(debug_assertions) && std::env::var_os("BASTION_TEST_BIN").is_none_or(|b| b.is_empty());
    Duration::from_millis(if unoptimized { 200 } else { 50 })
}

/// A resource URI of about 270 bytes: the burst sends each stream ≈ 230 KiB,
/// ≈ 450 MiB to all. What the sockets do not absorb must wait in the
/// gateway, within the stream queues' bounds.
fn flood_uri() -> String {
    format!("test://doc?{}", "p".repeat(256))
}

/// POSTs a JSON-RPC message in session `sid` (or without one); the reply.
async fn post_rpc(client: &reqwest::Client, url: &str, key: &str, sid: Option<&str>, body: &Value) -> Reply {
    let mut b = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
}

/// A 2025-11-25 session subscribed to `uri`; its id.
async fn subscribed_session(client: &reqwest::Client, url: &str, key: &str, uri: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bastion-it", "version": "0"}}});
    let r = post_rpc(client, url, key, None, &init).await;
    assert_eq!(r.status, 200, "initialize: {}", r.text);
    let sid = r.header("mcp-session-id").expect("a session id").to_string();
    let r =
        post_rpc(client, url, key, Some(&sid), &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(r.status, 202, "initialized: {}", r.text);
    let sub = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}});
    let r = post_rpc(client, url, key, Some(&sid), &sub).await;
    assert_eq!(r.status, 200, "resources/subscribe: {}", r.text);
    assert!(r.rpc().get("result").is_some(), "resources/subscribe: {}", r.text);
    sid
}

/// Opens session `sid`'s GET stream on a connection of its own with a
/// small receive buffer; the connection, once the stream's head came.
async fn get_stream(port: u16, path: &str, key: &str, sid: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut s = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Accept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write the GET");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("the GET's head in time").expect("read");
        assert!(n > 0, "the GET stream closed before its head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 200"), "GET stream: {head}");
    s
}

/// Reads a GET stream to its end, counting the whole
/// `notifications/resources/updated` events in it.
async fn count_updates(s: &mut TcpStream, seen: &AtomicUsize) {
    let mut text = String::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        while let Some(end) = text.find("\n\n") {
            if text[..end].contains("notifications/resources/updated") {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            text.drain(..end + 2);
        }
    }
}

/// What the watcher saw: `/healthz` latencies, the gateway's RSS.
#[derive(Debug, Default)]
struct Watched {
    probes: usize,
    slowest: Duration,
    over_bound: usize,
    failures: Vec<String>,
    rss_max_kib: u64,
}

/// Every ~20 ms until `stop`: `GET /healthz` on a kept-alive connection of
/// its own (timed), and the gateway's RSS. A thread of its own, so the
/// test's other work cannot delay a probe.
fn watch(port: u16, pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Watched> {
    std::thread::spawn(move || {
        let mut w = Watched::default();
        let mut conn: Option<std::net::TcpStream> = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let outcome = healthz_probe(&mut conn, port);
            let took = started.elapsed();
            w.probes += 1;
            w.slowest = w.slowest.max(took);
            if took > healthz_bound() {
                w.over_bound += 1;
            }
            if let Err(e) = outcome
                && w.failures.len() < 5
            {
                w.failures.push(e);
            }
            w.rss_max_kib = w.rss_max_kib.max(rss_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20).saturating_sub(started.elapsed()));
        }
        w
    })
}

/// One `GET /healthz` on `conn` (connecting first if needed).
fn healthz_probe(conn: &mut Option<std::net::TcpStream>, port: u16) -> Result<(), String> {
    if conn.is_none() {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("connected");
    let result = (|| {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return if head.starts_with("http/1.1 200") { Ok(()) } else { Err(head) };
                }
            }
            let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })();
    if result.is_err() {
        *conn = None;
    }
    result
}

/// Raises this process's soft open-file limit to its hard limit (children,
/// the gateway among them, inherit it).
fn raise_nofile() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_burst_to_thousands_of_unread_streams_stays_bounded() {
    raise_nofile();
    let gates = Gates::new();
    let gw = Gateway::start(json!({
        "mcpServers": {"flood": scripted_stdio(&gates)},
        "limits": {"per_principal": {"sessions": SESSIONS + 100, "streams": SESSIONS + 100}}
    }));
    let key = gw.create_key("flooded", &[]);
    let path = "/mcp/flood";
    let url = gw.url(path);
    let uri = flood_uri();
    let client = http();

    let setup = Instant::now();
    let sessions: Vec<String> = futures::stream::iter(0..SESSIONS)
        .map(|_| subscribed_session(&client, &url, &key, &uri))
        .buffered(16)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(SESSIONS);
    for sid in &sessions {
        streams.push(get_stream(gw.port, path, &key, sid).await);
    }
    // The first streams are read to their end; the others never are.
    let updates_read: Vec<Arc<AtomicUsize>> = (0..READERS).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut readers = Vec::new();
    for (mut s, seen) in streams.drain(..READERS).zip(updates_read.iter().cloned()) {
        readers.push(tokio::spawn(async move { count_updates(&mut s, &seen).await }));
    }
    let setup = setup.elapsed();
    let rss_before = rss_kib(gw.pid()).unwrap_or(0);

    // For comparison, an idle gateway on the same machine, probed alike: if
    // it answers quickly while the other does not, the time is lost inside
    // the busy gateway, not on a loaded machine.
    let idle = Gateway::start(json!({"mcpServers": {}}));
    let stop = Arc::new(AtomicBool::new(false));
    let idle_watcher = watch(idle.port, idle.pid(), stop.clone());
    let watcher = watch(gw.port, gw.pid(), stop.clone());
    let burst = Instant::now();
    let flood = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "flood", "arguments": {"count": ROUNDS, "uri": uri}}});
    let flood = tokio::spawn({
        let (client, url, key, sid) = (client.clone(), url.clone(), key.clone(), sessions[0].clone());
        async move { post_rpc(&client, &url, &key, Some(&sid), &flood).await }
    });
    let flood_outcome = match tokio::time::timeout(Duration::from_secs(40), flood).await {
        Ok(Ok(r)) => match r.messages().into_iter().find(|m| m["id"] == 3) {
            Some(m) if m.get("result").is_some() => Ok(tool_text(&m)),
            _ => Err(format!("the flood call failed: HTTP {} {}", r.status, r.text)),
        },
        Ok(Err(e)) => Err(format!("the flood call got no answer: {e}")),
        Err(_) => Err("the flood call got no answer within 40 s".to_string()),
    };
    let sent = burst.elapsed();
    // The burst is over once the streams that are read have had every
    // update, or have had nothing new for a while.
    let (mut last, mut last_change) = (0, Instant::now());
    let give_up = burst + Duration::from_secs(40);
    while Instant::now() < give_up && last_change.elapsed() < Duration::from_secs(3) {
        let read: usize = updates_read.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if read == READERS * ROUNDS {
            break;
        }
        if read != last {
            (last, last_change) = (read, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = burst.elapsed();
    stop.store(true, Ordering::Relaxed);
    let watched = watcher.join().expect("watcher");
    let idle_watched = idle_watcher.join().expect("watcher");

    let reads: Vec<usize> = updates_read.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for r in readers {
        r.abort();
    }
    let log = gw.log();
    let warnings = |needle: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(needle)).count();
    // Each kind of warning once (told apart by the start of its message).
    let mut warned: Vec<String> = Vec::new();
    let mut kinds: Vec<String> = Vec::new();
    for l in log.lines() {
        let Some(at) = l.find("WARN") else { continue };
        let kind: String = l[at..].chars().take(60).collect();
        if !kinds.contains(&kind) && warned.len() < 6 {
            kinds.push(kind);
            warned.push(l.chars().take(300).collect());
        }
    }
    let bound = healthz_bound();
    let figures = format!(
        "{SESSIONS} streams ({READERS} read), {ROUNDS} rounds ({flood_outcome:?}) sent in {sent:?}, delivered to the streams \
         that are read in {delivered:?}, after a setup of {setup:?}; RSS {} MiB before, max {} MiB (bound {} MiB); /healthz: {} probes, slowest {:?}, {} over \
         {bound:?}, failures {:?} (an idle gateway meanwhile: slowest {:?}); resources/updated read by the read streams: {reads:?}; log: {} WARN \
         lines about dropped notifications, {} about slow streams disconnected; WARN lines: {warned:#?}",
        rss_before / 1024,
        watched.rss_max_kib / 1024,
        RSS_BOUND_KIB / 1024,
        watched.probes,
        watched.slowest,
        watched.over_bound,
        watched.failures,
        idle_watched.slowest,
        warnings("dropped"),
        warnings("slow stream disconnected"),
    );
    eprintln!("{figures}");
    assert!(flood_outcome.is_ok(), "{figures}");
    // Still serving afterwards.
    let probe = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
    let after = post_rpc(&client, &url, &key, Some(&sessions[1]), &probe).await;
    assert_eq!(after.status, 200, "tools/list after the burst: {}", after.text);
    assert!(after.rpc().get("result").is_some(), "tools/list after the burst: {}", after.text);
    assert!(watched.failures.is_empty(), "/healthz failed during the burst: {figures}");
    assert!(watched.rss_max_kib < RSS_BOUND_KIB, "the gateway's memory grew past the bound: {figures}");
    assert!(watched.slowest < bound, "/healthz was slow during the burst: {figures}");
    assert!(reads.iter().all(|n| *n > 0), "a stream that is read got no resources/updated: {figures}");
    drop(streams);
}

// ---------------------------------------------------------------------------
// Streams that are not read, beyond what the sockets hold
// ---------------------------------------------------------------------------

/// Reads what `s` has until it is quiet for `quiet`; whether the response
/// ended meanwhile (the last chunk of a chunked body, or the connection's
/// end), and the bytes read.
async fn drain_stream(s: &mut TcpStream, quiet: Duration) -> (bool, usize) {
    let (mut total, mut tail) = (0, Vec::new());
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, total),
            Ok(Ok(n)) => {
                total += n;
                tail.extend_from_slice(&chunk[..n]);
                let keep = tail.len().saturating_sub(16);
                tail.drain(..keep);
            }
            Err(_) => return (tail.ends_with(b"\r\n0\r\n\r\n"), total),
        }
    }
}

/// Streams whose clients do not read get their notifications dropped past
/// `http.stream_queue_bytes`, and when all queues together pass
/// `http.stream_queue_total_bytes` the fullest are ended, with a log line
/// for each; streams that are read keep theirs.
#[tokio::test]
async fn streams_not_read_lose_notifications_then_the_fullest_are_ended() {
    let gates = Gates::new();
    let gw = Gateway::start(json!({
        "mcpServers": {"flood": scripted_stdio(&gates)},
        "http": {"stream_queue_bytes": 1048576, "stream_queue_total_bytes": 2097152}
    }));
    // Streams not read fill their queues (1 MiB each) far beyond what a
    // stream that is read ever lags by, so those are the fullest.
    let key = gw.create_key("stalled", &[]);
    let path = "/mcp/flood";
    let url = gw.url(path);
    // 4 KiB per update: 2,000 of them are ≈ 8 MiB per stream, more than a
    // connection's socket buffers hold.
    let uri = format!("test://doc?{}", "q".repeat(4096));
    let client = http();
    const UNREAD: usize = 8;
    let mut unread = Vec::new();
    for _ in 0..UNREAD {
        let sid = subscribed_session(&client, &url, &key, &uri).await;
        unread.push(get_stream(gw.port, path, &key, &sid).await);
    }
    let reader_sid = subscribed_session(&client, &url, &key, &uri).await;
    let mut reader = get_stream(gw.port, path, &key, &reader_sid).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let read_task = tokio::spawn({
        let seen = seen.clone();
        async move { count_updates(&mut reader, &seen).await }
    });

    let flood = |count: usize, id: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "flood", "arguments": {"count": count, "uri": uri}}})
    };
    let r = post_rpc(&client, &url, &key, Some(&reader_sid), &flood(2000, 3)).await;
    assert!(r.messages().iter().any(|m| m["id"] == 3 && m.get("result").is_some()), "the flood: {}", r.text);

    gw.wait_for_log("slow stream disconnected").await;
    let log = gw.log();
    assert!(log.contains("notifications dropped"), "no drop was logged:\n{log}");
    let mut ended = 0;
    for s in &mut unread {
        let (end, _) = drain_stream(s, Duration::from_millis(500)).await;
        ended += usize::from(end);
    }
    assert!(ended >= 1, "no stream that was not read was ended");

    // The stream that is read still works: a last update reaches it.
    let before = seen.load(Ordering::Relaxed);
    assert!(before > 0, "the stream that is read had no update");
    let r = post_rpc(&client, &url, &key, Some(&reader_sid), &flood(1, 4)).await;
    assert!(r.messages().iter().any(|m| m["id"] == 4 && m.get("result").is_some()), "the last update: {}", r.text);
    eventually(WAIT, "the last update on the stream that is read", || async {
        (seen.load(Ordering::Relaxed) > before).then_some(())
    })
    .await;
    read_task.abort();
}
