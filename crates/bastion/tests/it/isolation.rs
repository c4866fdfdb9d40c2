//! Isolation between users sharing an upstream: three principals (alice,
//! bob, carol) against the scripted server (`tests/clients/scripted_server.py`)
//! over stdio, legacy HTTP+SSE and Streamable HTTP. Every check is about data
//! crossing: a marker string one user's call puts on the wire (a prompt, an
//! answer, a log line, a progress message) must never show up in what
//! another user receives, and what Bastion refuses is refused with an error,
//! never left hanging.
//!
//! Calls overlap deterministically: `hold` keeps a call in flight until the
//! test releases its gate file, so no extra call is needed to order them
//! (an extra call would itself change who has calls in flight).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::harness::{
    Gates, Gateway, META_CAPABILITIES, META_VERSION, Mcp, Reply, STATELESS, ScriptedServer, WAIT, collect, eventually,
    http, open_legacy_sse, post_listen, scripted_stdio, tool_text,
};

/// A session version that allows JSON-RPC batches.
const BATCH_VERSION: &str = "2025-03-26";
const SESSION_VERSION: &str = "2025-11-25";
/// The name of the scripted server in every config here.
const SERVER: &str = "s";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stdio,
    Sse,
    Http,
}

/// A gateway in front of the scripted server reached by `kind`, with a key
/// for each of the three users.
struct Setup {
    gw: Gateway,
    gates: Gates,
    _server: Option<ScriptedServer>,
    alice: String,
    bob: String,
    carol: String,
}

impl Setup {
    /// `entry` is merged into the server's config entry, `config` into the
    /// top level.
    fn start(kind: Kind, entry: Value, config: Value) -> Setup {
        let gates = Gates::new();
        let (mut server_entry, server) = match kind {
            Kind::Stdio => (scripted_stdio(&gates), None),
            Kind::Sse => {
                let s = ScriptedServer::start("sse", &gates);
                (s.entry("sse"), Some(s))
            }
            Kind::Http => {
                let s = ScriptedServer::start("streamable-http", &gates);
                (s.entry("http"), Some(s))
            }
        };
        merge(&mut server_entry, entry);
        let mut cfg = json!({"mcpServers": {SERVER: server_entry}});
        merge(&mut cfg, config);
        let gw = Gateway::start(cfg);
        let alice = gw.create_key("alice", &[]);
        let bob = gw.create_key("bob", &[]);
        let carol = gw.create_key("carol", &[]);
        Setup { gw, gates, _server: server, alice, bob, carol }
    }

    /// The scripted server's own endpoint (tool names unprefixed).
    fn url(&self) -> String {
        self.gw.url(&format!("/mcp/{SERVER}"))
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        for (k, v) in from {
            match into.get_mut(&k) {
                Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                _ => {
                    into.insert(k, v);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A session-era client that declares sampling, elicitation and roots.
async fn session(url: String, token: &str, version: &str) -> Mcp {
    let init = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}},
            "clientInfo": {"name": "isolation-test", "version": "0"}
        }
    });
    let resp = http()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .expect("POST initialize");
    let reply = Reply::read(resp).await;
    assert_eq!(reply.status, 200, "initialize: {}", reply.text);
    assert!(reply.rpc().get("result").is_some(), "initialize failed: {}", reply.text);
    let sid = reply.header("mcp-session-id").expect("Mcp-Session-Id on initialize").to_string();
    let m = Mcp::with_session(url, token, &sid);
    let n = m.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert_eq!(n.status, 202, "notifications/initialized: {}", n.text);
    m
}

/// Another handle on the same session (for a task of its own).
fn twin(m: &Mcp) -> Mcp {
    Mcp::with_session(m.url.clone(), m.token.as_deref().expect("token"), m.session.as_deref().expect("session"))
}

fn tool_call(id: &str, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
}

/// A stateless (2026-07-28) request that declares elicitation and sampling.
fn stateless_call(id: &str, name: &str, arguments: Value, extra: Value) -> Value {
    let mut params = json!({
        "name": name,
        "arguments": arguments,
        "_meta": {META_VERSION: STATELESS, META_CAPABILITIES: {"elicitation": {}, "sampling": {}}}
    });
    merge(&mut params, extra);
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// What a client answers a server request with: every answer carries `marker`.
fn answer_for(method: &str, marker: &str) -> Result<Value, Value> {
    match method {
        "sampling/createMessage" => {
            Ok(json!({"role": "assistant", "content": {"type": "text", "text": marker}, "model": "isolation-test"}))
        }
        "elicitation/create" => Ok(json!({"action": "accept", "content": {"name": marker}})),
        "roots/list" => Ok(json!({"roots": [{"uri": format!("file:///{marker}"), "name": marker}]})),
        _ => Err(json!({"code": -32601, "message": "not supported by this client"})),
    }
}

/// Everything a client received while one of its requests ran.
#[derive(Debug, Default)]
struct Seen {
    status: u16,
    text: String,
    messages: Vec<Value>,
}

impl Seen {
    /// The final JSON-RPC response.
    fn response(&self) -> Value {
        self.messages
            .iter()
            .rev()
            .find(|m| m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some()))
            .cloned()
            .unwrap_or_else(|| panic!("no JSON-RPC response in {} {}", self.status, self.text))
    }

    /// The server requests that reached this client.
    fn requests(&self) -> Vec<&Value> {
        self.messages.iter().filter(|m| m.get("method").is_some() && m.get("id").is_some()).collect()
    }
}

/// Sends `body` in `m`'s session and reads the answer to its end, answering
/// each server request on the way as a real client would, with `marker` in
/// the answer.
async fn answered_call(m: &Mcp, body: &Value, marker: &str) -> Seen {
    answered_call_live(m, body, marker, None).await
}

/// [`answered_call`], also copying what arrives into `live` as it arrives.
async fn answered_call_live(m: &Mcp, body: &Value, marker: &str, live: Option<Arc<Mutex<String>>>) -> Seen {
    let mut resp = m.builder().body(body.to_string()).send().await.expect("POST");
    let mut seen = Seen { status: resp.status().as_u16(), ..Seen::default() };
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse {
        seen.text = resp.text().await.expect("body");
        if let Ok(v) = serde_json::from_str(&seen.text) {
            seen.messages.push(v);
        }
        return seen;
    }
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let chunk = String::from_utf8_lossy(&chunk).replace("\r\n", "\n");
        seen.text.push_str(&chunk);
        if let Some(live) = &live {
            live.lock().expect("poisoned").push_str(&chunk);
        }
        buf.push_str(&chunk);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let Ok(msg) = serde_json::from_str::<Value>(&data.join("\n")) else { continue };
            if let (Some(method), Some(id)) = (msg["method"].as_str(), msg.get("id")) {
                let answer = match answer_for(method, marker) {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                    Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
                };
                let r = m.post(&answer).await;
                assert_eq!(r.status, 202, "answering {method}: {}", r.text);
            }
            seen.messages.push(msg);
        }
    }
    seen
}

/// [`answered_call`] in a task of its own.
fn spawn_answered(m: &Mcp, body: Value, marker: &'static str) -> JoinHandle<Seen> {
    let m = twin(m);
    tokio::spawn(async move { answered_call(&m, &body, marker).await })
}

async fn finish(call: JoinHandle<Seen>, what: &str) -> Seen {
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The text of a tool result, parsed (the scripted server's results are JSON).
fn tool_json(rpc: &Value) -> Value {
    let text = tool_text(rpc);
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text} in {rpc}"))
}

/// `tools/call` in a session; the parsed result.
async fn call_tool(m: &Mcp, name: &str, args: Value) -> Value {
    let rpc = tokio::time::timeout(WAIT, m.call_tool(name, args))
        .await
        .unwrap_or_else(|_| panic!("{name} was not answered within {WAIT:?}"));
    tool_json(&rpc)
}

/// An event stream read in the background.
struct Stream {
    seen: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Stream {
    fn text(&self) -> String {
        self.seen.lock().expect("poisoned").clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    fn ended(&self) -> bool {
        self.reader.is_finished()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn get_stream(m: &Mcp) -> Stream {
    let (seen, reader) = m.open_stream().await;
    Stream { seen, reader }
}

/// A legacy HTTP+SSE stream (`GET /sse`), once its endpoint event arrived.
async fn legacy_stream(gw: &Gateway, token: &str) -> (Stream, String) {
    let (seen, reader, endpoint) = open_legacy_sse(&http(), &gw.url("/sse"), token).await;
    (Stream { seen, reader }, endpoint)
}

/// A stateless `subscriptions/listen` stream, once acknowledged.
async fn listen_stream(url: &str, token: &str, uris: &[&str]) -> Stream {
    let resp =
        post_listen(url, token, "listen-1", json!({"toolsListChanged": true, "resourceSubscriptions": uris})).await;
    assert_eq!(resp.status(), 200, "subscriptions/listen");
    let (seen, reader) = collect(resp);
    let stream = Stream { seen, reader };
    eventually(WAIT, "the subscription's acknowledgement", || async {
        stream.text().contains("notifications/subscriptions/acknowledged").then_some(())
    })
    .await;
    stream
}

/// What went wrong in one test, gathered so that a failure reports every
/// crossing at once rather than the first.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    /// None of `markers` (another user's data) appears in `seen`.
    fn absent(&mut self, seen: &str, markers: &[&str], whose: &str) {
        for m in markers {
            self.check(!seen.contains(m), format!("{m:?} (another user's) reached {whose}: {seen}"));
        }
    }

    #[track_caller]
    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} problem(s):\n- {}", self.0.len(), self.0.join("\n- "));
    }
}

/// Polls `done` until it holds or `deadline` passes; whether it held.
async fn by_deadline(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Finding 1: server requests and log messages on shared stdio and legacy
// SSE connections reach a client only when every pending call is its own.
// ---------------------------------------------------------------------------

/// While Alice's call is in flight, Bob's batched calls (which have no
/// stream of their own) sample and log: the sampling request must be refused
/// to the server, not sent to Alice, so Alice's answer cannot become Bob's
/// result; the log line must be dropped, not shown to Alice.
async fn batched_calls_never_use_another_users_call(kind: Kind) {
    let s = Setup::start(kind, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let bob = session(s.url(), &s.bob, BATCH_VERSION).await;

    let held = spawn_answered(&alice, tool_call("a1", "hold", json!({"gate": "alice"})), "answer-from-alice");
    s.gates.wait("started", "alice").await;
    let batch = json!([
        tool_call("b1", "sample", json!({"prompt": "prompt-from-bob"})),
        tool_call("b2", "log", json!({"level": "info", "message": "log-from-bob"})),
    ]);
    let reply = tokio::time::timeout(WAIT, bob.post(&batch)).await.expect("Bob's batch must be answered, not hang");
    s.gates.release("alice");
    let alice_seen = finish(held, "Alice's held call").await;
    assert!(
        alice_seen.text.contains("hold started alice"),
        "control: Alice's own log line must reach her call's stream: {}",
        alice_seen.text
    );
    assert_eq!(tool_json(&alice_seen.response())["released"], true, "Alice's call ends normally");
    assert_eq!(reply.status, 200, "Bob's batch: {}", reply.text);

    let mut p = Problems::default();
    p.absent(&alice_seen.text, &["prompt-from-bob", "log-from-bob"], "Alice's call stream");
    p.check(!reply.text.contains("answer-from-alice"), format!("Alice's answer became Bob's result: {}", reply.text));
    let answers = reply.json();
    let sampled = answers
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == "b1"))
        .unwrap_or_else(|| panic!("no answer to the sampling call in {answers}"));
    let sampled = tool_json(sampled);
    p.check(
        sampled["answer"].is_null() && sampled["error"].is_string(),
        format!("the sampling request must be refused to the server with an error; the server got {sampled}"),
    );
    p.assert_none();
}

#[tokio::test]
async fn batched_calls_never_use_another_users_call_stdio() {
    batched_calls_never_use_another_users_call(Kind::Stdio).await;
}

#[tokio::test]
async fn batched_calls_never_use_another_users_call_legacy_sse() {
    batched_calls_never_use_another_users_call(Kind::Sse).await;
}

/// Calls without a stream of their own are pending calls too: what the
/// server logs while handling Bob's list fetch, the `resources/subscribe`
/// behind Bob's stateless `subscriptions/listen`, and Bob's
/// `logging/setLevel` must not reach Alice's call in flight.
async fn streamless_calls_count_as_owners(kind: Kind) {
    let s = Setup::start(kind, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let bob = session(s.url(), &s.bob, SESSION_VERSION).await;

    let held = spawn_answered(&alice, tool_call("a1", "hold", json!({"gate": "alice"})), "answer-from-alice");
    s.gates.wait("started", "alice").await;
    // The list first: nothing has fetched it on this connection yet.
    let list = tokio::time::timeout(WAIT, bob.call("tools/list", json!({}))).await.expect("Bob's tools/list");
    assert!(list["result"]["tools"].is_array(), "Bob's tools/list: {list}");
    drop(listen_stream(&s.url(), &s.bob, &["test://bob-listen-marker"]).await);
    // Last, as it changes what the server logs; at this level it still logs
    // at info.
    let level = tokio::time::timeout(WAIT, bob.call("logging/setLevel", json!({"level": "info"})))
        .await
        .expect("Bob's logging/setLevel");
    assert!(level.get("result").is_some(), "Bob's logging/setLevel: {level}");
    s.gates.release("alice");
    let alice_seen = finish(held, "Alice's held call").await;
    assert!(alice_seen.text.contains("hold started alice"), "control: {}", alice_seen.text);

    let mut p = Problems::default();
    p.absent(
        &alice_seen.text,
        &["handled tools/list", "test://bob-listen-marker", "handled logging/setLevel"],
        "Alice's call stream",
    );
    p.assert_none();
}

#[tokio::test]
async fn streamless_calls_count_as_owners_stdio() {
    streamless_calls_count_as_owners(Kind::Stdio).await;
}

#[tokio::test]
async fn streamless_calls_count_as_owners_legacy_sse() {
    streamless_calls_count_as_owners(Kind::Sse).await;
}

/// Carol's stateless call asks a first question and is parked while Carol
/// answers it; the server asks a second question while she is away and
/// Alice has a call in flight. The second question belongs to Carol: it
/// must not be put to Alice, and Alice's answer must not reach Carol's
/// result.
async fn a_parked_calls_later_requests_stay_with_its_caller(kind: Kind) {
    let s = Setup::start(kind, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let carol = Mcp::stateless(s.url(), &s.carol);

    let args = json!({"first": "question-1-for-carol", "second": "question-2-for-carol", "gate": "carol"});
    let first = tokio::time::timeout(WAIT, carol.post(&stateless_call("c1", "elicit_twice", args.clone(), json!({}))))
        .await
        .expect("Carol's call must be answered");
    assert_eq!(first.status, 200, "Carol's first round: {}", first.text);
    let input = first.rpc()["result"].clone();
    assert_eq!(input["resultType"], "input_required", "Carol is asked the first question: {}", first.text);
    assert!(input.to_string().contains("question-1-for-carol"), "{input}");
    let state = input["requestState"].clone();
    let key = input["inputRequests"]
        .as_object()
        .and_then(|r| r.keys().next().cloned())
        .unwrap_or_else(|| panic!("no input request in {input}"));

    let held = spawn_answered(&alice, tool_call("a1", "hold", json!({"gate": "alice"})), "answer-from-alice");
    s.gates.wait("started", "alice").await;
    s.gates.release("carol");
    s.gates.wait("second-settled", "carol").await;
    s.gates.release("alice");
    let alice_seen = finish(held, "Alice's held call").await;

    let answer = json!({"action": "accept", "content": {"name": "carol-own-answer"}});
    let retry =
        stateless_call("c2", "elicit_twice", args, json!({"requestState": state, "inputResponses": {key: answer}}));
    let last = tokio::time::timeout(WAIT, carol.post(&retry)).await.expect("Carol's retry must be answered");
    assert_eq!(last.status, 200, "Carol's retry: {}", last.text);
    let outcome = tool_json(&last.rpc());
    assert_eq!(outcome["first"]["answer"]["content"]["name"], "carol-own-answer", "control: Carol's own answer");

    let mut p = Problems::default();
    p.absent(&alice_seen.text, &["question-2-for-carol"], "Alice's call stream");
    p.check(
        alice_seen.requests().is_empty(),
        format!("Alice was asked something that was not hers: {:?}", alice_seen.requests()),
    );
    p.check(!last.text.contains("answer-from-alice"), format!("Alice's answer reached Carol's result: {}", last.text));
    p.check(
        outcome["second"]["error"].is_string(),
        format!("the second question must be refused to the server; it got {}", outcome["second"]),
    );
    p.assert_none();
}

#[tokio::test]
async fn a_parked_calls_later_requests_stay_with_its_caller_stdio() {
    a_parked_calls_later_requests_stay_with_its_caller(Kind::Stdio).await;
}

#[tokio::test]
async fn a_parked_calls_later_requests_stay_with_its_caller_legacy_sse() {
    a_parked_calls_later_requests_stay_with_its_caller(Kind::Sse).await;
}

/// The other side of the rule: with no other client on the connection, the
/// second question a parked call's server asks is Carol's, and she gets it
/// on her retry (refusing it would break servers that ask twice).
async fn a_parked_call_alone_gets_its_later_requests(kind: Kind) {
    let s = Setup::start(kind, json!({}), json!({}));
    let carol = Mcp::stateless(s.url(), &s.carol);
    let args = json!({"first": "question-1-for-carol", "second": "question-2-for-carol", "gate": "carol"});
    let round = |n: usize, extra: Value| stateless_call(&format!("c{n}"), "elicit_twice", args.clone(), extra);
    let input_of = |r: &Reply, what: &str| {
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        let result = r.rpc()["result"].clone();
        assert_eq!(result["resultType"], "input_required", "{what}: {}", r.text);
        let key = result["inputRequests"]
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_else(|| panic!("{what}: no input request in {result}"));
        (result, key)
    };
    let first = tokio::time::timeout(WAIT, carol.post(&round(1, json!({})))).await.expect("Carol's first round");
    let (first, key) = input_of(&first, "the first question");
    assert!(first.to_string().contains("question-1-for-carol"), "{first}");
    // The second question is asked while Carol is away.
    s.gates.release("carol");
    s.gates.wait("second-asked", "carol").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = |name: &str| json!({"action": "accept", "content": {"name": name}});
    let retry =
        round(2, json!({"requestState": first["requestState"], "inputResponses": {key: answer("carol-first")}}));
    let second = tokio::time::timeout(WAIT, carol.post(&retry)).await.expect("Carol's second round");
    let mut p = Problems::default();
    if second.rpc()["result"]["resultType"] == "input_required" {
        let (second, key) = input_of(&second, "the second question");
        p.check(second.to_string().contains("question-2-for-carol"), format!("the second question: {second}"));
        let retry =
            round(3, json!({"requestState": second["requestState"], "inputResponses": {key: answer("carol-second")}}));
        let last = tokio::time::timeout(WAIT, carol.post(&retry)).await.expect("Carol's last round");
        let outcome = tool_json(&last.rpc());
        p.check(outcome["first"]["answer"]["content"]["name"] == "carol-first", format!("first: {outcome}"));
        p.check(outcome["second"]["answer"]["content"]["name"] == "carol-second", format!("second: {outcome}"));
    } else {
        p.check(false, format!("Carol's own second question was not put to her: {}", second.text));
    }
    p.assert_none();
}

#[tokio::test]
async fn a_parked_call_alone_gets_its_later_requests_stdio() {
    a_parked_call_alone_gets_its_later_requests(Kind::Stdio).await;
}

#[tokio::test]
async fn a_parked_call_alone_gets_its_later_requests_legacy_sse() {
    a_parked_call_alone_gets_its_later_requests(Kind::Sse).await;
}

// ---------------------------------------------------------------------------
// Finding 2: log and progress messages of a Streamable HTTP server reach the
// call they belong to or nobody; only list changes and subscribed resource
// updates are fanned out.
// ---------------------------------------------------------------------------

const CHANGED: &str = "notifications/tools/list_changed";

/// Has Bob's session make the server announce a tool list change until both
/// streams have seen more than `before` of them; returns how many each saw.
/// Everything the server sent earlier has then been delivered.
async fn sync_on_list_change(bob: &Mcp, streams: [&Stream; 2], before: usize) -> usize {
    eventually(WAIT, "a tools/list_changed on both streams", || async move {
        call_tool(bob, "notify_list_changed", json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        streams.iter().all(|s| s.count(CHANGED) > before).then_some(())
    })
    .await;
    streams.iter().map(|s| s.count(CHANGED)).min().unwrap_or(0)
}

#[tokio::test]
async fn http_upstream_logs_and_progress_reach_no_other_session() {
    let s = Setup::start(Kind::Http, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let carol = session(s.url(), &s.carol, SESSION_VERSION).await;
    let bob = session(s.url(), &s.bob, BATCH_VERSION).await;
    let alice_stream = get_stream(&alice).await;
    let carol_stream = get_stream(&carol).await;

    // A list change reaches both streams: the fan-out works end to end (and
    // the server's own GET stream is open).
    let before = sync_on_list_change(&bob, [&alice_stream, &carol_stream], 0).await;

    // Bob's messages on the server's own stream, about no call.
    call_tool(&bob, "log", json!({"level": "info", "message": "bob-unrelated-log", "related": false})).await;
    call_tool(&bob, "progress", json!({"message": "bob-unrelated-progress", "related": false})).await;
    // Bob's calls without a stream of their own (batch items, a list fetch,
    // the log level), whose server streams messages about them.
    let batch = json!([
        tool_call("b1", "log", json!({"level": "info", "message": "bob-batch-log"})),
        {"jsonrpc": "2.0", "id": "b2", "method": "tools/call", "params": {
            "name": "progress", "arguments": {"message": "bob-batch-progress"},
            "_meta": {"progressToken": "bob-progress-token"}}},
        {"jsonrpc": "2.0", "id": "b3", "method": "tools/list"},
        {"jsonrpc": "2.0", "id": "b4", "method": "logging/setLevel", "params": {"level": "info"}},
    ]);
    let reply = tokio::time::timeout(WAIT, bob.post(&batch)).await.expect("Bob's batch must be answered");
    assert_eq!(reply.status, 200, "Bob's batch: {}", reply.text);
    assert_eq!(reply.json().as_array().map(Vec::len), Some(4), "{}", reply.text);

    // Resource updates go to the subscribed session only.
    let sub = alice.call("resources/subscribe", json!({"uri": "test://alice-doc"})).await;
    assert!(sub.get("result").is_some(), "Alice's subscribe: {sub}");
    let sent = call_tool(&bob, "notify_updated", json!({"uri": "test://alice-doc"})).await;
    assert_eq!(sent["sent"], true, "{sent}");

    // Everything above was sent before this list change, on the same streams.
    sync_on_list_change(&bob, [&alice_stream, &carol_stream], before).await;
    assert!(alice_stream.text().contains("test://alice-doc"), "control: Alice's update: {}", alice_stream.text());

    let markers = [
        "bob-unrelated-log",
        "bob-unrelated-progress",
        "bob-batch-log",
        "bob-batch-progress",
        "bob-progress-token",
        "handled tools/list",
        "handled logging/setLevel",
    ];
    let mut p = Problems::default();
    p.absent(&alice_stream.text(), &markers, "Alice's GET stream");
    p.absent(&carol_stream.text(), &markers, "Carol's GET stream");
    p.absent(&carol_stream.text(), &["test://alice-doc"], "Carol's GET stream (not subscribed)");
    p.assert_none();
}

// ---------------------------------------------------------------------------
// Finding 3: revoked and expired keys lose their open streams and sessions;
// sessions have a maximum lifetime.
// ---------------------------------------------------------------------------

/// A user's session-era GET stream, legacy SSE stream and stateless
/// `subscriptions/listen` stream, with the session.
struct OpenStreams {
    session: Mcp,
    get: Stream,
    legacy: Stream,
    listen: Stream,
}

async fn open_everything(gw: &Gateway, token: &str) -> OpenStreams {
    let session = session(gw.url("/mcp"), token, SESSION_VERSION).await;
    let ping = session.call("ping", json!({})).await;
    assert!(ping.get("result").is_some(), "the key works: {ping}");
    let get = get_stream(&session).await;
    let (legacy, _) = legacy_stream(gw, token).await;
    let listen = listen_stream(&gw.url("/mcp"), token, &[]).await;
    OpenStreams { session, get, legacy, listen }
}

impl OpenStreams {
    fn all_ended(&self) -> bool {
        self.get.ended() && self.legacy.ended() && self.listen.ended()
    }

    fn none_ended(&self) -> bool {
        !self.get.ended() && !self.legacy.ended() && !self.listen.ended()
    }

    fn still_open(&self) -> Vec<&'static str> {
        [("GET stream", &self.get), ("legacy SSE stream", &self.legacy), ("subscriptions/listen stream", &self.listen)]
            .into_iter()
            .filter(|(_, s)| !s.ended())
            .map(|(name, _)| name)
            .collect()
    }
}

const KEY_TTL: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_revoked_key_loses_its_streams_and_sessions_within_the_cache_ttl() {
    let s = Setup::start(Kind::Stdio, json!({}), json!({"auth": {"key_cache_ttl": "1s"}}));
    let alice_id = s.gw.key_id("alice");
    let alice = open_everything(&s.gw, &s.alice).await;
    let bob = open_everything(&s.gw, &s.bob).await;
    assert!(alice.none_ended() && bob.none_ended(), "the streams are open");

    let out = s.gw.cli(&["keys", "revoke", &alice_id]);
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + KEY_TTL + Duration::from_secs(1);
    let mut p = Problems::default();
    let ended = by_deadline(deadline, || alice.all_ended()).await;
    p.check(ended, format!("still open {KEY_TTL:?} + 1 s after the revocation: {:?}", alice.still_open()));

    // Her session is gone too, even for another key of hers.
    let new_key = s.gw.create_key("alice", &[]);
    let again = Mcp::with_session(alice.session.url.clone(), &new_key, alice.session.session.as_deref().expect("sid"));
    let status = again.request("ping", json!({})).await.status;
    p.check(status == 404, format!("the revoked key's session still answers {status}, not 404"));

    // Bob is not affected.
    p.check(bob.none_ended(), format!("Bob's streams ended; open: {:?}", bob.still_open()));
    let ping = bob.session.call("ping", json!({})).await;
    p.check(ping.get("result").is_some(), format!("Bob's session: {ping}"));
    p.assert_none();
}

/// A stateless request belongs to no session: it ends by itself when its
/// key is revoked, with an error, and Bob's request is not touched.
#[tokio::test]
async fn a_revoked_keys_stateless_call_in_flight_ends_within_the_cache_ttl() {
    let s = Setup::start(Kind::Stdio, json!({}), json!({"auth": {"key_cache_ttl": "1s"}}));
    let alice_id = s.gw.key_id("alice");
    let alice = Mcp::stateless(s.url(), &s.alice);
    let bob = Mcp::stateless(s.url(), &s.bob);
    let alice_call =
        tokio::spawn(
            async move { alice.post(&stateless_call("a1", "hold", json!({"gate": "alice"}), json!({}))).await },
        );
    s.gates.wait("started", "alice").await;
    let bob_call =
        tokio::spawn(async move { bob.post(&stateless_call("b1", "hold", json!({"gate": "bob"}), json!({}))).await });
    s.gates.wait("started", "bob").await;

    let out = s.gw.cli(&["keys", "revoke", &alice_id]);
    assert!(out.status.success(), "revoke: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + KEY_TTL + Duration::from_secs(1);
    let ended = by_deadline(deadline, || alice_call.is_finished()).await;
    assert!(ended, "Alice's stateless call still runs {KEY_TTL:?} + 1 s after her key was revoked");
    let reply = alice_call.await.expect("Alice's call");
    let rpc = reply.rpc();
    assert_eq!(rpc["error"]["code"], -32003, "the call ends with an error saying why: {rpc}");
    assert!(!bob_call.is_finished(), "Bob's call was ended too");
    s.gates.release("bob");
    let rpc = tokio::time::timeout(WAIT, bob_call).await.expect("Bob's call ends").expect("Bob's call").rpc();
    assert!(rpc.get("result").is_some(), "Bob's call: {rpc}");
}

#[tokio::test]
async fn an_expired_key_loses_its_streams_within_the_cache_ttl() {
    const LIFE: Duration = Duration::from_secs(5);
    let s = Setup::start(Kind::Stdio, json!({}), json!({"auth": {"key_cache_ttl": "1s"}}));
    let key = s.gw.create_key("dora", &["--expires", "5s"]);
    // The key expires at most LIFE after this point.
    let expires_by = Instant::now() + LIFE;
    let dora = open_everything(&s.gw, &key).await;
    if Instant::now() + Duration::from_secs(1) < expires_by {
        assert!(dora.none_ended(), "open while the key is valid; open: {:?}", dora.still_open());
    }
    let bob = open_everything(&s.gw, &s.bob).await;
    let deadline = expires_by + KEY_TTL + Duration::from_secs(1);
    let mut p = Problems::default();
    let ended = by_deadline(deadline, || dora.all_ended()).await;
    p.check(ended, format!("still open {KEY_TTL:?} + 1 s after the key expired: {:?}", dora.still_open()));
    p.check(bob.none_ended(), format!("Bob's streams ended; open: {:?}", bob.still_open()));
    p.assert_none();
}

#[tokio::test]
async fn sessions_end_after_their_maximum_lifetime() {
    const LIFETIME: Duration = Duration::from_secs(2);
    let s = Setup::start(Kind::Stdio, json!({}), json!({"http": {"session_max_lifetime": "2s"}}));
    let alice = session(s.gw.url("/mcp"), &s.alice, SESSION_VERSION).await;
    let created = Instant::now();
    let get = get_stream(&alice).await;
    let (legacy, _) = legacy_stream(&s.gw, &s.alice).await;
    let ping = alice.request("ping", json!({})).await;
    assert_eq!(ping.status, 200, "the new session works: {}", ping.text);

    // Kept busy all along: the lifetime is not an idle timeout.
    let deadline = created + LIFETIME + Duration::from_secs(2);
    let mut status = 200;
    while status != 404 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = alice.request("ping", json!({})).await.status;
    }
    let mut p = Problems::default();
    p.check(status == 404, format!("the session still answers {status} after its maximum lifetime"));
    p.check(by_deadline(deadline, || get.ended()).await, "the session's GET stream is still open");
    p.check(by_deadline(deadline, || legacy.ended()).await, "the legacy SSE session's stream is still open");
    p.assert_none();
}

// ---------------------------------------------------------------------------
// Finding 4: one client does not change a shared process for everyone.
// ---------------------------------------------------------------------------

/// A shared connection's `roots/list` is answered from the config (no
/// roots when none are configured), never by the client that happens to
/// have a call in flight; a client's roots change is not forwarded.
async fn roots_come_from_the_config_never_from_a_client(kind: Kind) {
    let data = json!([{"uri": "file:///srv/data", "name": "data"}]);
    let configured = Setup::start(kind, json!({"roots": data}), json!({}));
    let bare = Setup::start(kind, json!({}), json!({}));
    let mut p = Problems::default();
    for (s, want) in [(&configured, json!({"roots": data})), (&bare, json!({"roots": []}))] {
        let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
        let seen = answered_call(&alice, &tool_call("r1", "roots", json!({})), "alice-widened").await;
        p.check(seen.requests().is_empty(), format!("roots/list was put to a client: {:?}", seen.requests()));
        p.check(
            !seen.text.contains("alice-widened"),
            format!("a client's roots reached a shared server: {}", seen.text),
        );
        let got = tool_json(&seen.response());
        p.check(got == want, format!("the server got {got}, not {want}"));

        let n = alice.post(&json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})).await;
        assert_eq!(n.status, 202, "{}", n.text);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let count = call_tool(&alice, "roots_notifications", json!({})).await;
        p.check(count["count"] == 0, format!("notifications/roots/list_changed reached the shared server: {count}"));
    }
    p.assert_none();
}

#[tokio::test]
async fn roots_come_from_the_config_never_from_a_client_stdio() {
    roots_come_from_the_config_never_from_a_client(Kind::Stdio).await;
}

#[tokio::test]
async fn roots_come_from_the_config_never_from_a_client_legacy_sse() {
    roots_come_from_the_config_never_from_a_client(Kind::Sse).await;
}

#[tokio::test]
async fn roots_come_from_the_config_never_from_a_client_http() {
    roots_come_from_the_config_never_from_a_client(Kind::Http).await;
}

/// Alice sets `error`, Carol `debug`, Bob never sets a level: each receives
/// what the level they chose (or `info`) lets through, whatever the others
/// chose.
async fn log_levels_are_per_session(kind: Kind) {
    let s = Setup::start(kind, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let bob = session(s.url(), &s.bob, SESSION_VERSION).await;
    let carol = session(s.url(), &s.carol, SESSION_VERSION).await;
    for (m, level) in [(&alice, "error"), (&carol, "debug")] {
        let rpc = m.call("logging/setLevel", json!({"level": level})).await;
        assert!(rpc.get("result").is_some(), "setLevel {level}: {rpc}");
    }
    let expected: [(&str, &Mcp, &[&str]); 3] = [
        ("alice", &alice, &["error"]),
        ("bob", &bob, &["info", "warning", "error"]),
        ("carol", &carol, &["debug", "info", "warning", "error"]),
    ];
    let mut p = Problems::default();
    for (who, m, want) in expected {
        // The call stays open until its last line (at a level every filter
        // lets through) has reached the client: what came before it has too.
        let live = Arc::new(Mutex::new(String::new()));
        let body = tool_call("l1", "log_levels", json!({"message": who, "gate": who}));
        let call = {
            let (m, live) = (twin(m), live.clone());
            tokio::spawn(async move { answered_call_live(&m, &body, "unused", Some(live)).await })
        };
        let last = format!("\"{who}-last\"");
        eventually(WAIT, &format!("{who}'s last log line"), || async {
            live.lock().expect("poisoned").contains(&last).then_some(())
        })
        .await;
        s.gates.release(who);
        let call = finish(call, &format!("{who}'s log_levels call")).await;
        let got: Vec<&str> = ["debug", "info", "warning", "error"]
            .into_iter()
            .filter(|l| call.text.contains(&format!("\"{who}-{l}\"")))
            .collect();
        p.check(got == want, format!("{who} received log levels {got:?}, not {want:?}"));
    }
    let upstream = call_tool(&bob, "current_level", json!({})).await;
    if !p.0.is_empty() {
        p.0.push(format!("(the server's own level is now {})", upstream["level"]));
    }
    p.assert_none();
}

#[tokio::test]
async fn log_levels_are_per_session_stdio() {
    log_levels_are_per_session(Kind::Stdio).await;
}

#[tokio::test]
async fn log_levels_are_per_session_legacy_sse() {
    log_levels_are_per_session(Kind::Sse).await;
}

#[tokio::test]
async fn log_levels_are_per_session_http() {
    log_levels_are_per_session(Kind::Http).await;
}

/// Has `m` make the server announce an update of `uri` until `stream` has
/// seen more than `before` updates; false if the server no longer was
/// subscribed to it.
async fn update_reaches(m: &Mcp, uri: &str, stream: &Stream, before: usize) -> bool {
    for _ in 0..50 {
        let sent = call_tool(m, "notify_updated", json!({"uri": uri})).await;
        if sent["sent"] != true {
            return false;
        }
        // Retried: the server's own GET stream may still be opening (HTTP).
        let seen = || stream.count("notifications/resources/updated") > before;
        if by_deadline(Instant::now() + Duration::from_millis(400), seen).await {
            return true;
        }
    }
    panic!("no update of {uri} reached the stream after 50 announcements");
}

/// Alice and Bob (sessions) and Carol's stateless `subscriptions/listen`
/// stream subscribe to the same URI. Alice unsubscribes, then Bob: the
/// others still hear about it. The server is unsubscribed only when Carol's
/// stream, the last subscriber, ends.
async fn unsubscribing_ends_only_ones_own_updates(kind: Kind) {
    const URI: &str = "test://shared-doc";
    const UPDATED: &str = "notifications/resources/updated";
    let s = Setup::start(kind, json!({}), json!({}));
    let alice = session(s.url(), &s.alice, SESSION_VERSION).await;
    let bob = session(s.url(), &s.bob, SESSION_VERSION).await;
    let carol = session(s.url(), &s.carol, SESSION_VERSION).await;
    for m in [&alice, &bob] {
        let rpc = m.call("resources/subscribe", json!({"uri": URI})).await;
        assert!(rpc.get("result").is_some(), "subscribe: {rpc}");
    }
    let alice_stream = get_stream(&alice).await;
    let bob_stream = get_stream(&bob).await;
    // On the aggregate endpoint, where Bastion keeps the stream itself
    // (one server's endpoint passes stateless requests through to a server
    // that speaks that version).
    let prefixed = format!("{SERVER}+{URI}");
    let carol_listen = listen_stream(&s.gw.url("/mcp"), &s.carol, &[&prefixed]).await;
    assert!(carol_listen.text().contains(&prefixed), "Carol's subscription is acknowledged: {}", carol_listen.text());

    let mut p = Problems::default();
    let rpc = alice.call("resources/unsubscribe", json!({"uri": URI})).await;
    assert!(rpc.get("result").is_some(), "unsubscribe: {rpc}");
    if update_reaches(&carol, URI, &bob_stream, 0).await {
        p.check(bob_stream.text().contains(URI), format!("Bob's update names the URI: {}", bob_stream.text()));
        let before = carol_listen.count(UPDATED);
        p.check(
            update_reaches(&carol, URI, &carol_listen, before).await,
            "the server was unsubscribed while Carol listens",
        );
        p.check(alice_stream.count(UPDATED) == 0, format!("Alice unsubscribed: {}", alice_stream.text()));
    } else {
        p.check(false, "Alice's unsubscribe ended the server's subscription Bob and Carol still hold");
    }

    let rpc = bob.call("resources/unsubscribe", json!({"uri": URI})).await;
    assert!(rpc.get("result").is_some(), "unsubscribe: {rpc}");
    let before = carol_listen.count(UPDATED);
    p.check(
        update_reaches(&carol, URI, &carol_listen, before).await,
        "Bob's unsubscribe ended the subscription Carol still holds",
    );

    // The last subscriber leaves: the server hears it.
    drop(carol_listen);
    let unsubscribed = async {
        for _ in 0..100 {
            if call_tool(&carol, "notify_updated", json!({"uri": URI})).await["sent"] == false {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    p.check(unsubscribed.await, "the server is still subscribed after every subscriber left");
    p.assert_none();
}

#[tokio::test]
async fn unsubscribing_ends_only_ones_own_updates_stdio() {
    unsubscribing_ends_only_ones_own_updates(Kind::Stdio).await;
}

#[tokio::test]
async fn unsubscribing_ends_only_ones_own_updates_legacy_sse() {
    unsubscribing_ends_only_ones_own_updates(Kind::Sse).await;
}

#[tokio::test]
async fn unsubscribing_ends_only_ones_own_updates_http() {
    unsubscribing_ends_only_ones_own_updates(Kind::Http).await;
}
