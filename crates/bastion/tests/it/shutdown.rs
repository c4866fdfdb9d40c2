//! Graceful shutdown, through the real binary. On SIGTERM the gateway stops
//! accepting connections and lets the calls in flight go on: each that ends
//! within `shutdown_grace` gets its normal answer, in the session era
//! (2025-11-25 and 2025-03-26), stateless (2026-07-28) and on legacy
//! HTTP+SSE (whose stream stays open until its calls are answered); the
//! ones still running when the grace runs out are answered with JSON-RPC
//! error -32030 on their own channel. A request arriving on an open
//! connection meanwhile gets 503 with that error (new connections are not
//! accepted); GET and `subscriptions/listen` streams end at once. The
//! gateway then exits with status 0, leaving no process of its tree behind.
//!
//! The upstream servers are started through `sh`, which first starts a
//! child of the server's own (a `sleep`), so each has a tree to clean up.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::harness::{
    Gates, Gateway, META_CAPABILITIES, META_VERSION, Mcp, Reply, Running, STATELESS, WAIT, collect, descendants,
    fixture_echo, group_members, http, open_legacy_sse, post_listen, scripted_stdio, sse_messages, tool_text,
};

/// JSON-RPC error code of a call the gateway stopped before it ended.
const SHUTTING_DOWN: i64 = -32030;
/// What the contract allows on top of `shutdown_grace` before the gateway
/// must have exited.
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// Runs a server's command through `sh`, which first starts a `sleep` of
/// its own in the server's process group, then becomes the server.
fn with_child(mut entry: Value) -> Value {
    let mut args =
        vec![json!("-c"), json!("sleep 600 </dev/null >/dev/null 2>&1 & exec \"$0\" \"$@\""), entry["command"].clone()];
    args.extend(entry["args"].as_array().cloned().unwrap_or_default());
    entry["command"] = json!("/bin/sh");
    entry["args"] = Value::Array(args);
    entry
}

/// `held`: the scripted server (its `hold` calls wait for a gate); `echo`:
/// the fixture (its `sleep` calls wait a given time).
fn config(grace: &str, gates: &Gates) -> Value {
    json!({
        "mcpServers": {"held": with_child(scripted_stdio(gates)), "echo": with_child(fixture_echo("echo"))},
        "shutdown_grace": grace
    })
}

/// A `tools/call` request with the id `id`, in the stateless form when
/// `stateless`.
fn call_body(stateless: bool, id: &str, name: &str, args: Value) -> Value {
    let mut params = json!({"name": name, "arguments": args});
    if stateless {
        params["_meta"] = json!({META_VERSION: STATELESS, META_CAPABILITIES: {}});
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

fn error_code(rpc: &Value) -> Option<i64> {
    rpc["error"]["code"].as_i64()
}

// ---------------------------------------------------------------------------
// Legacy HTTP+SSE
// ---------------------------------------------------------------------------

/// An initialized legacy HTTP+SSE session, its stream read in the
/// background.
struct Legacy {
    client: reqwest::Client,
    key: String,
    /// The full URL of the session's message endpoint.
    messages: String,
    seen: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Legacy {
    async fn open(gw: &Gateway, key: &str) -> Legacy {
        let client = http();
        let (seen, reader, endpoint) = open_legacy_sse(&client, &gw.url("/sse"), key).await;
        let legacy = Legacy { client, key: key.to_string(), messages: gw.url(&endpoint), seen, reader };
        let init = json!({
            "jsonrpc": "2.0", "id": "legacy-init", "method": "initialize",
            "params": {
                "protocolVersion": "2024-11-05", "capabilities": {},
                "clientInfo": {"name": "bastion-it", "version": "0"}
            }
        });
        let r = legacy.post(&init).await;
        assert_eq!(r.status, 202, "legacy initialize: {}", r.text);
        let answer = legacy.wait_answer("legacy-init", WAIT).await;
        assert!(answer.is_some_and(|a| a.get("result").is_some()), "legacy initialize: {}", legacy.text());
        let r = legacy.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(r.status, 202, "legacy notifications/initialized: {}", r.text);
        legacy
    }

    /// POSTs one message to the session's endpoint on this session's client.
    async fn post(&self, body: &Value) -> Reply {
        let resp = self
            .client
            .post(&self.messages)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /messages");
        Reply::read(resp).await
    }

    fn text(&self) -> String {
        self.seen.lock().expect("poisoned").clone()
    }

    /// Every answer to `id` on the stream so far.
    fn answers(&self, id: &str) -> Vec<Value> {
        sse_messages(&self.text())
            .into_iter()
            .filter(|m| m["id"] == id && (m.get("result").is_some() || m.get("error").is_some()))
            .collect()
    }

    /// Waits at most `timeout` for the answer to `id` on the stream.
    async fn wait_answer(&self, id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.answers(id).into_iter().next() {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Calls in flight
// ---------------------------------------------------------------------------

/// A call POSTed in the session era or stateless, its answer awaited in the
/// background.
struct Post {
    what: String,
    id: String,
    answer: JoinHandle<Result<Reply, String>>,
}

/// Every kind of call, in flight: `hold` calls on the scripted server in
/// the 2025-11-25 and 2025-03-26 session eras, stateless and on legacy
/// HTTP+SSE, and `sleep {sleep_ms}` calls on the fixture stateless, in a
/// session and on legacy HTTP+SSE. Returns once every `hold` has started.
struct InFlight {
    posts: Vec<Post>,
    legacy: Legacy,
    /// Ids of the legacy calls, with what they are.
    legacy_calls: Vec<(String, String)>,
    /// The gates the `hold` calls wait on.
    gates: Vec<String>,
    /// Kept so the sessions are not deleted.
    _clients: Vec<Arc<Mcp>>,
}

impl InFlight {
    async fn start(gw: &Gateway, key: &str, gates: &Gates, sleep_ms: u64) -> InFlight {
        let url = gw.url("/mcp");
        let s25 = Arc::new(Mcp::session(url.clone(), key, "2025-11-25").await);
        let s03 = Arc::new(Mcp::session(url.clone(), key, "2025-03-26").await);
        let stateless = Arc::new(Mcp::stateless(url.clone(), key));
        let legacy = Legacy::open(gw, key).await;
        // The fixture runs before its calls are timed.
        assert_eq!(tool_text(&stateless.call_tool("echo__echo", json!({"text": "warm"})).await), "warm");

        let mut posts = Vec::new();
        let mut post = |what: &str, m: &Arc<Mcp>, stateless: bool, name: &str, args: Value| {
            let id = format!("call-{}", posts.len());
            let body = call_body(stateless, &id, name, args);
            let m = m.clone();
            let answer = tokio::spawn(async move { send(&m, stateless, &body).await });
            posts.push(Post { what: what.to_string(), id, answer });
        };
        post("2025-11-25 session hold", &s25, false, "held__hold", json!({"gate": "s25"}));
        post("2025-03-26 session hold", &s03, false, "held__hold", json!({"gate": "s03"}));
        post("stateless hold", &stateless, true, "held__hold", json!({"gate": "stateless"}));
        let mut legacy_calls = Vec::new();
        let r = legacy.post(&call_body(false, "legacy-hold", "held__hold", json!({"gate": "legacy"}))).await;
        assert_eq!(r.status, 202, "legacy hold: {}", r.text);
        legacy_calls.push(("legacy-hold".to_string(), "legacy hold".to_string()));
        let gate_names: Vec<String> = ["s25", "s03", "stateless", "legacy"].map(String::from).to_vec();
        for g in &gate_names {
            gates.wait("started", g).await;
        }

        // The fixture's calls once the scripted server's are running.
        let sleep = json!({"ms": sleep_ms});
        post("stateless echo sleep", &stateless, true, "echo__sleep", sleep.clone());
        post("2025-11-25 session echo sleep", &s25, false, "echo__sleep", sleep.clone());
        let r = legacy.post(&call_body(false, "legacy-sleep", "echo__sleep", sleep)).await;
        assert_eq!(r.status, 202, "legacy echo sleep: {}", r.text);
        legacy_calls.push(("legacy-sleep".to_string(), "legacy echo sleep".to_string()));
        // Time for them to reach the fixture.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for p in &posts {
            assert!(!p.answer.is_finished(), "{} ended before the shutdown", p.what);
        }
        InFlight { posts, legacy, legacy_calls, gates: gate_names, _clients: vec![s25, s03, stateless] }
    }
}

/// POSTs `body` with `m`'s headers (and a stateless call's own); the
/// reply, or how the request failed.
async fn send(m: &Mcp, stateless: bool, body: &Value) -> Result<Reply, String> {
    let mut b = m.builder();
    if stateless {
        b = b.header("mcp-protocol-version", STATELESS).header("mcp-method", "tools/call");
        if let Some(name) = body["params"]["name"].as_str() {
            b = b.header("mcp-name", name);
        }
    }
    let resp = b.body(body.to_string()).send().await.map_err(|e| format!("the request failed: {e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.map_err(|e| format!("HTTP {status}, then the body failed: {e:?}"))?;
    Ok(Reply { status, headers, text })
}

/// Awaits a POST's answer until `deadline`; a description of what came
/// instead of an answer when none did.
async fn answer_by(p: Post, deadline: Instant) -> (String, String, Result<Reply, String>) {
    let left = deadline.saturating_duration_since(Instant::now());
    let outcome = match tokio::time::timeout(left, p.answer).await {
        Err(_) => Err("no answer in time".to_string()),
        Ok(Err(e)) => Err(format!("the request's task failed: {e}")),
        Ok(Ok(outcome)) => outcome,
    };
    (p.what, p.id, outcome)
}

/// The JSON-RPC response of a reply to the request `id`, or what is wrong
/// with the reply.
fn response_to(id: &str, reply: &Reply) -> Result<Value, String> {
    let responses: Vec<Value> =
        reply.messages().into_iter().filter(|m| m.get("result").is_some() || m.get("error").is_some()).collect();
    match responses.as_slice() {
        [one] if one["id"] == id => Ok(one.clone()),
        _ => Err(format!(
            "HTTP {} with {} response(s) instead of one to {id}: {:?}",
            reply.status,
            responses.len(),
            reply.text
        )),
    }
}

// ---------------------------------------------------------------------------
// Process trees
// ---------------------------------------------------------------------------

/// The gateway's process tree, found while it runs.
fn tree(gw: &Gateway) -> Vec<Running> {
    let tree = descendants(gw.pid());
    // Two servers, each with the `sleep` of its own.
    assert!(tree.len() >= 4, "expected two servers with a child each under the gateway: {tree:?}");
    tree
}

/// What is left of `tree` (processes, and members of their process
/// groups); everything left is killed, so the test leaves nothing either.
fn leftovers(tree: &[Running]) -> Vec<String> {
    let mut left = Vec::new();
    for p in tree.iter().filter(|p| p.alive()) {
        left.push(format!("pid {} ({})", p.pid, p.cmdline));
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
    let mut groups: Vec<u32> = tree.iter().map(|p| p.pgid).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        for pid in group_members(g) {
            left.push(format!("pid {pid} in process group {g}"));
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    left
}

/// Whether a background reader of a stream ends within `within`.
async fn ends_within(reader: &mut JoinHandle<()>, within: Duration) -> bool {
    tokio::time::timeout(within, reader).await.is_ok()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Waits until `deadline` for the gateway to exit with status 0 (killing
/// it if it does not), noting any problem; how long after SIGTERM it ended.
async fn wait_clean_exit(
    gw: &mut Gateway,
    sigterm: Instant,
    deadline: Instant,
    limit: &str,
    problems: &mut Vec<String>,
) -> Duration {
    let status = gw.wait_exit(deadline.saturating_duration_since(Instant::now())).await;
    let took = sigterm.elapsed();
    match status {
        Some(s) if s.success() => {}
        Some(s) => problems.push(format!("the gateway exited with {s}")),
        None => {
            problems.push(format!("the gateway still ran {took:?} after SIGTERM ({limit})"));
            gw.kill_now();
        }
    }
    took
}

#[tokio::test]
async fn calls_in_flight_at_sigterm_that_end_within_the_grace_get_their_results() {
    let grace = Duration::from_secs(10);
    let gates = Gates::new();
    let mut gw = Gateway::start(config("10s", &gates));
    let key = gw.create_key("drain", &[]);
    let calls = InFlight::start(&gw, &key, &gates, 2000).await;

    let sigterm = Instant::now();
    gw.terminate();
    gw.wait_for_log("shutting down").await;
    // The calls go on past the signal, then end well within the grace.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for g in &calls.gates {
        gates.release(g);
    }

    let mut problems = Vec::new();
    let deadline = sigterm + grace;
    for p in calls.posts {
        let (what, id, outcome) = answer_by(p, deadline).await;
        let rpc = outcome.and_then(|reply| {
            if reply.status == 200 {
                response_to(&id, &reply)
            } else {
                Err(format!("HTTP {}: {}", reply.status, reply.text))
            }
        });
        match rpc {
            Ok(rpc) if rpc.get("result").is_some() => {
                let text = tool_text(&rpc);
                let expected = if what.contains("sleep") { "slept 2000 ms" } else { "\"released\": true" };
                if !text.contains(expected) {
                    problems.push(format!("{what}: {text}"));
                }
            }
            Ok(rpc) => problems.push(format!("{what}: an error instead of its result: {rpc}")),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    for (id, what) in &calls.legacy_calls {
        let left = deadline.saturating_duration_since(Instant::now());
        match calls.legacy.wait_answer(id, left).await {
            Some(a) if a.get("result").is_some() => {}
            Some(a) => problems.push(format!("{what}: an error instead of its result: {a}")),
            None => problems.push(format!("{what}: no answer on the legacy stream")),
        }
    }
    let took = wait_clean_exit(&mut gw, sigterm, deadline, &format!("grace {grace:?}"), &mut problems).await;
    for (id, what) in &calls.legacy_calls {
        let n = calls.legacy.answers(id).len();
        if n > 1 {
            problems.push(format!("{what}: answered {n} times"));
        }
    }
    let mut legacy = calls.legacy;
    if !ends_within(&mut legacy.reader, Duration::from_secs(1)).await {
        problems.push("the legacy stream outlived the gateway".into());
        legacy.reader.abort();
    }
    assert!(problems.is_empty(), "{} problem(s) (exit after {took:?}):\n- {}", problems.len(), problems.join("\n- "));
}

#[tokio::test]
async fn calls_still_running_when_the_grace_runs_out_get_32030_and_nothing_is_left_running() {
    let grace = Duration::from_secs(2);
    let gates = Gates::new();
    let mut gw = Gateway::start(config("2s", &gates));
    let key = gw.create_key("drain", &[]);
    // Both kinds would take 30 s: the gates are never released.
    let calls = InFlight::start(&gw, &key, &gates, 30_000).await;
    let tree = tree(&gw);

    let sigterm = Instant::now();
    gw.terminate();
    let deadline = sigterm + grace + EXIT_SLACK;
    let mut problems = Vec::new();
    for p in calls.posts {
        let (what, id, outcome) = answer_by(p, deadline).await;
        match outcome.and_then(|reply| response_to(&id, &reply)) {
            Ok(rpc) if error_code(&rpc) == Some(SHUTTING_DOWN) => {}
            Ok(rpc) => problems.push(format!("{what}: {rpc} instead of error {SHUTTING_DOWN}")),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    for (id, what) in &calls.legacy_calls {
        let left = deadline.saturating_duration_since(Instant::now());
        match calls.legacy.wait_answer(id, left).await {
            Some(a) if error_code(&a) == Some(SHUTTING_DOWN) => {}
            Some(a) => problems.push(format!("{what}: {a} instead of error {SHUTTING_DOWN}")),
            None => problems.push(format!("{what}: no answer on the legacy stream")),
        }
    }
    let limit = format!("grace {grace:?} + {EXIT_SLACK:?}");
    let took = wait_clean_exit(&mut gw, sigterm, deadline, &limit, &mut problems).await;
    // The upstream servers are stopped by the gateway itself, so nothing is
    // left once it has exited; a second is allowed for the kernel to finish
    // with the processes it killed.
    let settle = Instant::now() + Duration::from_secs(1);
    while tree.iter().any(Running::alive) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = leftovers(&tree);
    if !left.is_empty() {
        problems.push(format!("processes of the gateway's tree were left running: {}", left.join(", ")));
    }
    let mut legacy = calls.legacy;
    if !ends_within(&mut legacy.reader, Duration::from_secs(1)).await {
        problems.push("the legacy stream outlived the gateway".into());
        legacy.reader.abort();
    }
    assert!(problems.is_empty(), "{} problem(s) (exit after {took:?}):\n- {}", problems.len(), problems.join("\n- "));
}

/// A client whose one connection is kept alive: HTTP/1.1, at most one idle
/// connection, opened now with a first request.
async fn kept_alive(gw: &Gateway) -> reqwest::Client {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(600))
        .timeout(WAIT)
        .build()
        .expect("reqwest client");
    let r = client.get(gw.url("/healthz")).send().await.expect("GET /healthz");
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    client
}

/// Whether `reply` is 503 with JSON-RPC error -32030; what it is otherwise.
async fn refused_as_shutting_down(what: &str, reply: Result<reqwest::Response, reqwest::Error>) -> Option<String> {
    let resp = match reply {
        Ok(r) => r,
        // A refused connect: the kept-alive connection had been closed, and
        // the client's new one found no listener.
        Err(e) => return Some(format!("{what}: no answer on the kept-alive connection: {e:?}")),
    };
    let r = Reply::read(resp).await;
    let code = serde_json::from_str::<Value>(&r.text).ok().and_then(|v| error_code(&v));
    (r.status != 503 || code != Some(SHUTTING_DOWN))
        .then(|| format!("{what}: HTTP {} {} instead of 503 with error {SHUTTING_DOWN}", r.status, r.text))
}

/// `GET /healthz` on a new connection: the status line of a 200 answer,
/// if one comes within a second.
async fn served_on_a_new_connection(gw: &Gateway) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port)).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut head)).await.ok()?.ok()?;
    let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_string();
    line.starts_with("HTTP/1.1 200").then_some(line)
}

#[tokio::test]
async fn during_the_shutdown_new_requests_get_503_and_streams_without_answers_end() {
    let gates = Gates::new();
    let mut gw = Gateway::start(config("10s", &gates));
    let key = gw.create_key("drain", &[]);
    let url = gw.url("/mcp");
    let session = Mcp::session(url.clone(), &key, "2025-11-25").await;
    let stateless = Arc::new(Mcp::stateless(url.clone(), &key));
    let legacy = Legacy::open(&gw, &key).await;
    assert_eq!(tool_text(&stateless.call_tool("echo__echo", json!({"text": "warm"})).await), "warm");

    // Streams that carry no answers.
    let (get_seen, mut get_reader) = session.open_stream().await;
    let listen = post_listen(&url, &key, "listen-1", json!({"toolsListChanged": true})).await;
    assert_eq!(listen.status(), 200, "subscriptions/listen");
    let (listen_seen, mut listen_reader) = collect(listen);

    // One call keeps the gateway shutting down.
    let held = tokio::spawn({
        let m = stateless.clone();
        let body = call_body(true, "keep", "held__hold", json!({"gate": "keep"}));
        async move { send(&m, true, &body).await }
    });
    gates.wait("started", "keep").await;
    // One kept-alive connection per request sent during the shutdown.
    let (for_session, for_stateless, for_legacy) =
        (kept_alive(&gw).await, kept_alive(&gw).await, kept_alive(&gw).await);

    let sigterm = Instant::now();
    gw.terminate();
    gw.wait_for_log("shutting down").await;
    let mut problems = Vec::new();

    let session_req = for_session
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session.session.as_deref().expect("session id"))
        .body(call_body(false, "late-session", "echo__echo", json!({"text": "late"})).to_string())
        .send();
    let stateless_req = for_stateless
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", STATELESS)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo__echo")
        .body(call_body(true, "late-stateless", "echo__echo", json!({"text": "late"})).to_string())
        .send();
    let legacy_req = for_legacy
        .post(&legacy.messages)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(call_body(false, "late-legacy", "echo__echo", json!({"text": "late"})).to_string())
        .send();
    let (a, b, c) = tokio::join!(session_req, stateless_req, legacy_req);
    problems.extend(refused_as_shutting_down("a session-era request", a).await);
    problems.extend(refused_as_shutting_down("a stateless request", b).await);
    problems.extend(refused_as_shutting_down("a legacy request", c).await);
    // New connections are no longer accepted (refused, or at least not served).
    if let Some(answer) = served_on_a_new_connection(&gw).await {
        problems.push(format!("a new connection was served during the shutdown: {answer}"));
    }

    // Streams without answers end while the call still runs.
    let within = Duration::from_secs(5).saturating_sub(sigterm.elapsed());
    if !ends_within(&mut get_reader, within).await {
        problems
            .push(format!("the GET stream was still open 5 s after SIGTERM: {:?}", get_seen.lock().expect("poisoned")));
        get_reader.abort();
    }
    if !ends_within(&mut listen_reader, Duration::from_secs(5).saturating_sub(sigterm.elapsed())).await {
        problems.push(format!(
            "the subscriptions/listen stream was still open 5 s after SIGTERM: {:?}",
            listen_seen.lock().expect("poisoned")
        ));
        listen_reader.abort();
    }
    if held.is_finished() {
        problems.push("the held call ended before it was released".into());
    }

    gates.release("keep");
    match tokio::time::timeout(WAIT, held).await {
        Ok(Ok(outcome)) => match outcome.and_then(|reply| response_to("keep", &reply)) {
            Ok(rpc) if rpc.get("result").is_some() && tool_text(&rpc).contains("\"released\": true") => {}
            Ok(rpc) => problems.push(format!("the held call: {rpc}")),
            Err(e) => problems.push(format!("the held call: {e}")),
        },
        Ok(Err(e)) => problems.push(format!("the held call's task failed: {e}")),
        Err(_) => problems.push("the held call got no answer".into()),
    }
    match gw.wait_exit(Duration::from_secs(10) + EXIT_SLACK).await {
        Some(s) if s.success() => {}
        Some(s) => problems.push(format!("the gateway exited with {s}")),
        None => {
            problems.push("the gateway did not exit".into());
            gw.kill_now();
        }
    }
    legacy.reader.abort();
    assert!(problems.is_empty(), "{} problem(s):\n- {}", problems.len(), problems.join("\n- "));
}
