//! What one principal may hold at once (`limits.per_principal`) and the
//! size of what a client declares about itself (`http.max_client_info_bytes`),
//! through the real binary.
//!
//! Reaching a cap is HTTP 429 with `Retry-After: 1` and a JSON-RPC error
//! -32029 whose message names the limit. Caps belong to a user: the keys of
//! one user share them, another user is not affected. Whatever ends —
//! a deleted session, a closed stream, a finished or resumed call, a
//! revoked key — gives its slot back, and a reload applies new caps without
//! a restart. After each test the gateway still answers `/healthz`.
//!
//! Calls are held in flight deterministically with the scripted server's
//! `hold` tool (it creates `started-GATE`, then waits for `release-GATE`),
//! so a refusal is never a matter of timing.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::harness::{
    Gates, Gateway, HttpFixture, META_CAPABILITIES, META_VERSION, Mcp, Reply, STATELESS, WAIT, collect, eventually,
    fixture_echo, http, post_listen, scripted_stdio, tool_text,
};

const VERSION: &str = "2025-11-25";
/// A session version that allows JSON-RPC batches.
const BATCH_VERSION: &str = "2025-03-26";
const LIMIT_REACHED: i64 = -32029;
const INVALID_PARAMS: i64 = -32602;

/// What each limit's message names.
const SESSIONS: &str = "live sessions";
const STREAMS: &str = "open streams";
const LISTEN_STREAMS: &str = "subscriptions/listen streams";
const PARKED: &str = "calls waiting for input";
const IN_FLIGHT: &str = "requests in flight";

/// A config with `servers` and these per-principal caps.
fn config(servers: Value, caps: Value) -> Value {
    json!({"mcpServers": servers, "limits": {"per_principal": caps}})
}

/// The fixture's echo server as the only upstream.
fn echo_only(caps: Value) -> Value {
    config(json!({"echo": fixture_echo("caps-echo")}), caps)
}

async fn assert_healthy(gw: &Gateway) {
    let r = http().get(gw.url("/healthz")).send().await.expect("GET /healthz");
    assert_eq!(r.status(), 200, "/healthz after the test");
}

/// Asserts `r` is the refusal of a reached cap: 429, `Retry-After: 1`, and
/// -32029 naming `limit` and its value `cap`.
fn assert_limited(r: &Reply, limit: &str, cap: usize, what: &str) {
    assert_eq!(r.status, 429, "{what}: expected 429, got HTTP {} {}", r.status, r.text);
    assert_eq!(r.header("retry-after"), Some("1"), "{what}: Retry-After; body {}", r.text);
    let body = r.json();
    assert_eq!(body["error"]["code"], json!(LIMIT_REACHED), "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "{what}: the message must name {limit:?}: {body}");
    assert!(message.contains(&format!("at most {cap}")), "{what}: the message must give the cap {cap}: {body}");
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

fn init_body(version: &str, capabilities: Value, client_info: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": "init", "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": capabilities, "clientInfo": client_info}
    })
}

fn client_info() -> Value {
    json!({"name": "bastion-caps-test", "version": "0"})
}

/// POSTs `body` without a session (an `initialize`).
async fn post_fresh(url: &str, token: &str, body: &Value) -> Reply {
    let resp = http()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    Reply::read(resp).await
}

/// A plain `initialize`, as is.
async fn initialize(url: &str, token: &str) -> Reply {
    post_fresh(url, token, &init_body(VERSION, json!({}), client_info())).await
}

/// `DELETE` of a session; the status.
async fn delete_session(m: &Mcp) -> u16 {
    http()
        .delete(&m.url)
        .bearer_auth(m.token.as_deref().expect("token"))
        .header("mcp-session-id", m.session.as_deref().expect("session"))
        .send()
        .await
        .expect("DELETE")
        .status()
        .as_u16()
}

fn tool_call(id: &str, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
}

/// A stateless (2026-07-28) `tools/call` declaring `capabilities`; `extra`
/// is added to its params (a retry's `requestState` and `inputResponses`).
fn stateless_call(id: &str, name: &str, arguments: Value, capabilities: Value, extra: Value) -> Value {
    let mut params = json!({
        "name": name,
        "arguments": arguments,
        "_meta": {META_VERSION: STATELESS, META_CAPABILITIES: capabilities}
    });
    if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
        p.extend(extra);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// An event stream read in the background, closed (by the client) on drop.
struct Open {
    seen: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Open {
    fn new(resp: reqwest::Response) -> Open {
        let (seen, reader) = collect(resp);
        Open { seen, reader }
    }

    fn text(&self) -> String {
        self.seen.lock().expect("poisoned").clone()
    }

    /// Whether the gateway ended the stream.
    fn ended(&self) -> bool {
        self.reader.is_finished()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The session's GET stream, or the answer refusing it.
async fn get_stream(m: &Mcp) -> Result<Open, Reply> {
    let resp = http()
        .get(&m.url)
        .bearer_auth(m.token.as_deref().expect("token"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", m.session.as_deref().expect("session"))
        .send()
        .await
        .expect("GET stream");
    if resp.status() == 200 { Ok(Open::new(resp)) } else { Err(Reply::read(resp).await) }
}

/// A legacy HTTP+SSE stream (`GET path`) once its endpoint event arrived,
/// with the message endpoint; or the answer refusing it.
async fn legacy_stream(gw: &Gateway, token: &str, path: &str) -> Result<(Open, String), Reply> {
    let resp = http()
        .get(gw.url(path))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET legacy stream");
    if resp.status() != 200 {
        return Err(Reply::read(resp).await);
    }
    let open = Open::new(resp);
    let endpoint = eventually(WAIT, "the legacy endpoint event", || async {
        open.text().lines().find_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string())
    })
    .await;
    assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");
    Ok((open, endpoint))
}

/// POSTs a message to a legacy session's endpoint.
async fn legacy_post(gw: &Gateway, token: &str, endpoint: &str, body: &Value) -> Reply {
    let resp = http()
        .post(gw.url(endpoint))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /messages");
    Reply::read(resp).await
}

/// A stateless `subscriptions/listen` stream once acknowledged, or the
/// answer refusing it.
async fn listen(url: &str, token: &str, id: &str) -> Result<Open, Reply> {
    let resp = post_listen(url, token, id, json!({"toolsListChanged": true})).await;
    if resp.status() != 200 {
        return Err(Reply::read(resp).await);
    }
    let open = Open::new(resp);
    eventually(WAIT, "the subscription's acknowledgement", || async {
        open.text().contains("notifications/subscriptions/acknowledged").then_some(())
    })
    .await;
    Ok(open)
}

fn opened<T>(r: Result<T, Reply>, what: &str) -> T {
    r.unwrap_or_else(|r| panic!("{what}: HTTP {} {}", r.status, r.text))
}

fn refused<T>(r: Result<T, Reply>, what: &str) -> Reply {
    match r {
        Ok(_) => panic!("{what}: opened, but a cap should have refused it"),
        Err(r) => r,
    }
}

/// The id of `user`'s key created with `--description description`.
fn key_id(gw: &Gateway, user: &str, description: &str) -> String {
    let out = gw.cli(&["keys", "list", "--json", "--user", user]);
    assert!(out.status.success(), "keys list failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .find(|k| k["description"] == description)
        .and_then(|k| k["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no key of {user} described {description:?}: {stdout}"))
}

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_session_cap_refuses_the_next_initialize_per_user_until_a_session_ends() {
    let gw = Gateway::start(echo_only(json!({"sessions": 2})));
    let alice = gw.create_key("alice", &[]);
    let alice2 = gw.create_key("alice", &["--description", "second"]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");

    // Two keys of one user share its two sessions.
    let first = Mcp::session(url.clone(), &alice, VERSION).await;
    let second = Mcp::session(url.clone(), &alice2, VERSION).await;
    for (key, which) in [(&alice, "the first key"), (&alice2, "the second key")] {
        let r = initialize(&url, key).await;
        assert_limited(&r, SESSIONS, 2, &format!("a third session with {which}"));
        assert_eq!(r.json()["id"], "init", "the refusal answers the initialize: {}", r.text);
        assert!(r.header("mcp-session-id").is_none(), "a refused initialize has no session: {:?}", r.headers);
    }
    // A legacy session is a session too.
    let r = refused(legacy_stream(&gw, &alice, "/sse").await, "a legacy session past the cap");
    assert_limited(&r, SESSIONS, 2, "a legacy session past the cap");

    // Another user is not affected.
    let bob_sessions = [Mcp::session(url.clone(), &bob, VERSION).await, Mcp::session(url.clone(), &bob, VERSION).await];
    for m in &bob_sessions {
        assert_eq!(tool_text(&m.call_tool("echo__echo", json!({"text": "bob"})).await), "bob");
    }
    // The sessions already open keep working at the cap.
    assert_eq!(tool_text(&first.call_tool("echo__echo", json!({"text": "first"})).await), "first");
    assert_eq!(tool_text(&second.call_tool("echo__echo", json!({"text": "second"})).await), "second");

    // Ending one (with the other key's session) makes room for one.
    assert_eq!(delete_session(&first).await, 200, "DELETE");
    let third = Mcp::session(url.clone(), &alice2, VERSION).await;
    assert_eq!(tool_text(&third.call_tool("echo__echo", json!({"text": "third"})).await), "third");
    assert_limited(&initialize(&url, &alice).await, SESSIONS, 2, "again at the cap");
    // A refused request never took a slot: one more session ended, one more opens.
    assert_eq!(delete_session(&third).await, 200, "DELETE");
    let (_legacy, _endpoint) = opened(legacy_stream(&gw, &alice, "/sse").await, "a legacy session below the cap");
    assert_limited(&initialize(&url, &alice).await, SESSIONS, 2, "at the cap with a legacy session");
    assert_healthy(&gw).await;
}

/// A stateless client has no session: its `subscriptions/listen` streams
/// are capped by `streams` and `listen_streams`, not by `sessions`
/// ("live sessions (Streamable HTTP and legacy SSE)").
#[tokio::test]
async fn a_listen_stream_is_not_counted_as_a_session() {
    let gw = Gateway::start(echo_only(json!({"sessions": 1})));
    let alice = gw.create_key("alice", &[]);
    let url = gw.url("/mcp");

    // At the session cap, the user can still listen...
    let m = Mcp::session(url.clone(), &alice, VERSION).await;
    let listening = match listen(&url, &alice, "listen-1").await {
        Ok(open) => open,
        Err(r) => panic!(
            "subscriptions/listen at the session cap was refused (HTTP {}): {} - a stateless client holds no session",
            r.status, r.text
        ),
    };
    // ...and a listen stream does not take the place of a session.
    assert_eq!(delete_session(&m).await, 200, "DELETE");
    let r = initialize(&url, &alice).await;
    assert_eq!(r.status, 200, "the one session the cap allows, with a listen stream open: {}", r.text);
    assert!(!listening.ended(), "the listen stream is still open");
    assert_healthy(&gw).await;
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_stream_cap_counts_get_legacy_and_listen_streams_together() {
    let gw = Gateway::start(echo_only(json!({"streams": 2, "sessions": 10, "listen_streams": 10})));
    let alice = gw.create_key("alice", &[]);
    let alice2 = gw.create_key("alice", &["--description", "second"]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");

    let s1 = Mcp::session(url.clone(), &alice, VERSION).await;
    let s2 = Mcp::session(url.clone(), &alice2, VERSION).await;
    let s3 = Mcp::session(url.clone(), &alice, VERSION).await;
    let get1 = opened(get_stream(&s1).await, "the first GET stream");
    let (legacy, _endpoint) = opened(legacy_stream(&gw, &alice2, "/sse").await, "a legacy stream as the second");

    assert_limited(&refused(get_stream(&s2).await, "a third stream"), STREAMS, 2, "a GET stream past the cap");
    assert_limited(
        &refused(legacy_stream(&gw, &alice, "/sse").await, "a legacy stream past the cap"),
        STREAMS,
        2,
        "a legacy stream past the cap",
    );
    assert_limited(
        &refused(listen(&url, &alice2, "listen-1").await, "a listen stream past the cap"),
        STREAMS,
        2,
        "a listen stream past the stream cap",
    );
    // The refused legacy stream opened no session: requests still work.
    assert_eq!(tool_text(&s3.call_tool("echo__echo", json!({"text": "s3"})).await), "s3");

    // Another user is not affected.
    let b1 = Mcp::session(url.clone(), &bob, VERSION).await;
    let b2 = Mcp::session(url.clone(), &bob, VERSION).await;
    let _bob_streams = [opened(get_stream(&b1).await, "Bob's stream"), opened(get_stream(&b2).await, "Bob's stream")];

    // A session ended by its client ends its stream, and the slot comes back.
    assert_eq!(delete_session(&s1).await, 200, "DELETE");
    eventually(WAIT, "the deleted session's stream to end", || async { get1.ended().then_some(()) }).await;
    let _get2 = opened(get_stream(&s2).await, "a GET stream once another ended");
    assert_limited(&refused(get_stream(&s3).await, "at the cap again"), STREAMS, 2, "at the cap again");

    // A stream the client closes gives its slot back too.
    drop(legacy);
    let _get3 = eventually(WAIT, "a stream slot after the client closed its legacy stream", || async {
        get_stream(&s3).await.ok()
    })
    .await;
    assert_limited(&refused(listen(&url, &alice, "listen-2").await, "full"), STREAMS, 2, "full again");
    assert_healthy(&gw).await;
}

#[tokio::test]
async fn the_listen_stream_cap_is_its_own_and_a_closed_listen_stream_frees_its_slot() {
    let gw = Gateway::start(echo_only(json!({"listen_streams": 2, "streams": 10})));
    let alice = gw.create_key("alice", &[]);
    let alice2 = gw.create_key("alice", &["--description", "second"]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");

    let l1 = opened(listen(&url, &alice, "l1").await, "the first listen stream");
    let _l2 = opened(listen(&url, &alice2, "l2").await, "the second listen stream (another key of alice)");
    let r = refused(listen(&url, &alice, "l3").await, "a third listen stream");
    assert_limited(&r, LISTEN_STREAMS, 2, "a third listen stream");
    assert_eq!(r.json()["id"], "l3", "the refusal answers the listen request: {}", r.text);

    // Other streams are capped separately, and other users not at all.
    let m = Mcp::session(url.clone(), &alice, VERSION).await;
    let _get = opened(get_stream(&m).await, "a GET stream while listen streams are at their cap");
    let _bob = [
        opened(listen(&url, &bob, "b1").await, "Bob's listen stream"),
        opened(listen(&url, &bob, "b2").await, "Bob's listen stream"),
    ];

    // The client closes one: its slot comes back.
    drop(l1);
    let _l3 = eventually(WAIT, "a listen slot after the client closed a listen stream", || async {
        listen(&url, &alice, "l3").await.ok()
    })
    .await;
    assert_limited(&refused(listen(&url, &alice2, "l4").await, "full"), LISTEN_STREAMS, 2, "at the cap again");
    assert_healthy(&gw).await;
}

// ---------------------------------------------------------------------------
// Parked stateless calls
// ---------------------------------------------------------------------------

const ELICIT: &str = "remote__test_elicitation";

/// A stateless call of the fixture's eliciting tool, declaring elicitation.
fn elicit_call(id: &str, extra: Value) -> Value {
    stateless_call(id, ELICIT, json!({"message": "May I?"}), json!({"elicitation": {}}), extra)
}

/// The `requestState` and input key of an `InputRequiredResult`.
fn input_required(r: &Reply, what: &str) -> (Value, String) {
    assert_eq!(r.status, 200, "{what}: HTTP {} {}", r.status, r.text);
    let result = r.rpc()["result"].clone();
    assert_eq!(result["resultType"], "input_required", "{what}: {}", r.text);
    let key = result["inputRequests"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .unwrap_or_else(|| panic!("{what}: no input request in {result}"));
    (result["requestState"].clone(), key)
}

fn retry_of(id: &str, state: &Value, key: &str) -> Value {
    let answer = json!({"action": "accept", "content": {"response": "yes"}});
    elicit_call(id, json!({"requestState": state, "inputResponses": {key: answer}}))
}

/// Stateless calls parked on an `InputRequiredResult` are capped; the call
/// that would park past the cap ends with 429 and -32029. Resuming a
/// parked call, or revoking the key that parked it, gives its slot back.
#[tokio::test]
async fn the_parked_call_cap_ends_the_call_that_would_park_past_it() {
    // A Streamable HTTP upstream: each call's server requests are its own,
    // so several calls can wait for input at once. The aggregate endpoint
    // makes Bastion bridge the stateless calls (and park them) itself.
    let remote = HttpFixture::start();
    let gw = Gateway::start(config(
        json!({"remote": {"url": remote.url, "type": "streamable-http"}}),
        json!({"parked_calls": 2}),
    ));
    let alice = gw.create_key("alice", &[]);
    let revocable = gw.create_key("alice", &["--description", "revocable"]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp");
    let a = Mcp::stateless(url.clone(), &alice);
    let a2 = Mcp::stateless(url.clone(), &revocable);

    let (state1, key1) = input_required(&a.post(&elicit_call("p1", json!({}))).await, "the first parked call");
    let (state2, key2) = input_required(&a2.post(&elicit_call("p2", json!({}))).await, "a second, with another key");
    let r = a.post(&elicit_call("p3", json!({}))).await;
    assert_limited(&r, PARKED, 2, "a third call that would park");
    assert_eq!(r.json()["id"], "p3", "the refusal answers that call: {}", r.text);

    // Another user is not affected.
    let b = Mcp::stateless(url.clone(), &bob);
    input_required(&b.post(&elicit_call("b1", json!({}))).await, "Bob's call");
    input_required(&b.post(&elicit_call("b2", json!({}))).await, "Bob's second call");

    // Resuming the first gives its slot back.
    let done = a.post(&retry_of("p1-retry", &state1, &key1)).await;
    assert_eq!(done.status, 200, "the resumed call: {}", done.text);
    let text = tool_text(&done.rpc());
    assert!(text.contains("action=accept"), "the resumed call completes with the answer: {text}");
    let (_state4, _key4) = input_required(&a.post(&elicit_call("p4", json!({}))).await, "a call after one resumed");
    assert_limited(&a.post(&elicit_call("p5", json!({}))).await, PARKED, 2, "at the cap again");

    // Revoking the key a call was parked with drops that call and its slot.
    let out = gw.cli(&["keys", "revoke", &key_id(&gw, "alice", "revocable")]);
    assert!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    let parked = eventually(WAIT, "a parked slot after the key of a parked call was revoked", || async {
        let r = a.post(&elicit_call("p6", json!({}))).await;
        (r.status == 200).then_some(r)
    })
    .await;
    input_required(&parked, "a call after the revocation");
    // The dropped call cannot be resumed, not even by the same user.
    let r = a.post(&retry_of("p2-retry", &state2, &key2)).await;
    assert_eq!(r.rpc()["error"]["code"], json!(INVALID_PARAMS), "resuming a dropped call: {}", r.text);
    assert_healthy(&gw).await;
}

// ---------------------------------------------------------------------------
// Requests in flight
// ---------------------------------------------------------------------------

/// Requests in flight in every era share one cap: a session's request, a
/// JSON-RPC batch (counted once, however many items), a stateless call and
/// a legacy `/messages` request. Past it, each era's next request gets 429
/// (on legacy, the POST itself); once they finish, requests work again.
#[tokio::test]
async fn the_in_flight_cap_is_shared_by_every_era_and_a_batch_counts_once() {
    let gates = Gates::new();
    let gw = Gateway::start(config(json!({"s": scripted_stdio(&gates)}), json!({"calls_in_flight": 4})));
    let alice = gw.create_key("alice", &[]);
    let alice2 = gw.create_key("alice", &["--description", "second"]);
    let bob = gw.create_key("bob", &[]);
    let url = gw.url("/mcp/s");

    let batch_session = Mcp::session(url.clone(), &alice, BATCH_VERSION).await;
    let session = Mcp::session(url.clone(), &alice2, VERSION).await;
    let stateless = Mcp::stateless(url.clone(), &alice);
    let (legacy, endpoint) = opened(legacy_stream(&gw, &alice, "/sse/s").await, "a legacy session");
    let init = init_body(VERSION, json!({}), client_info());
    assert_eq!(legacy_post(&gw, &alice, &endpoint, &init).await.status, 202, "legacy initialize");
    eventually(WAIT, "the legacy initialize result", || async { legacy.text().contains("\"init\"").then_some(()) })
        .await;
    // The stateless call checks its tool's schema: have the list fetched.
    let listed = stateless.call("tools/list", json!({})).await;
    assert!(listed["result"]["tools"].is_array(), "{listed}");

    // Four holders: a batch of two held calls, a session call (another key
    // of alice), a stateless call, a legacy request.
    let batch = json!([
        tool_call("b1", "hold", json!({"gate": "batch-1"})),
        tool_call("b2", "hold", json!({"gate": "batch-2"})),
    ]);
    let held_batch = {
        let m = Mcp::with_session(url.clone(), &alice, batch_session.session.as_deref().expect("session"));
        tokio::spawn(async move { m.post(&batch).await })
    };
    let held_session = {
        let m = Mcp::with_session(url.clone(), &alice2, session.session.as_deref().expect("session"));
        tokio::spawn(async move { m.post(&tool_call("h1", "hold", json!({"gate": "session"}))).await })
    };
    let held_stateless = {
        let m = Mcp::stateless(url.clone(), &alice);
        tokio::spawn(async move {
            m.request("tools/call", json!({"name": "hold", "arguments": {"gate": "stateless"}})).await
        })
    };
    let r = legacy_post(&gw, &alice, &endpoint, &tool_call("l1", "hold", json!({"gate": "legacy"}))).await;
    assert_eq!(r.status, 202, "the legacy held call: {}", r.text);
    for gate in ["batch-1", "session", "stateless", "legacy"] {
        gates.wait("started", gate).await;
    }

    // Every era's next request is refused; nothing of it reaches the server.
    let probe = |id: &str| tool_call(id, "current_level", json!({}));
    let r = session.post(&probe("p1")).await;
    assert_limited(&r, IN_FLIGHT, 4, "a session's request");
    assert_eq!(r.json()["id"], "p1", "{}", r.text);
    let r = batch_session.post(&json!([probe("p2"), probe("p3")])).await;
    assert_limited(&r, IN_FLIGHT, 4, "a batch");
    let r = stateless.request("tools/call", json!({"name": "current_level", "arguments": {}})).await;
    assert_limited(&r, IN_FLIGHT, 4, "a stateless call");
    let r = legacy_post(&gw, &alice, &endpoint, &probe("p4")).await;
    assert_limited(&r, IN_FLIGHT, 4, "a legacy /messages request");
    assert_eq!(r.json()["id"], "p4", "{}", r.text);
    // Only requests count: a notification and a new session still go through.
    let n = session.post(&json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})).await;
    assert_eq!(n.status, 202, "a notification at the cap: {}", n.text);
    let extra = Mcp::session(url.clone(), &alice, VERSION).await;

    // Another user is not affected.
    let b = Mcp::session(url.clone(), &bob, VERSION).await;
    let rpc = b.call_tool("current_level", json!({})).await;
    assert!(rpc.get("result").is_some(), "Bob's call: {rpc}");

    for gate in ["batch-1", "batch-2", "session", "stateless", "legacy"] {
        gates.release(gate);
    }
    let done = |h: JoinHandle<Reply>| async move {
        tokio::time::timeout(WAIT, h).await.expect("a held call to end").expect("task")
    };
    let r = done(held_batch).await;
    assert_eq!(r.status, 200, "the batch: {}", r.text);
    let answers = r.json();
    assert_eq!(answers.as_array().map(Vec::len), Some(2), "both batch items answered: {answers}");
    assert!(answers.as_array().unwrap().iter().all(|a| a.get("result").is_some()), "{answers}");
    for (h, what) in [(held_session, "the session's call"), (held_stateless, "the stateless call")] {
        let r = done(h).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        assert!(tool_text(&r.rpc()).contains("\"released\": true"), "{what}: {}", r.text);
    }
    eventually(WAIT, "the legacy held call's result on its stream", || async {
        legacy.text().contains("\"l1\"").then_some(())
    })
    .await;

    // Every era works again (a slot is given back as its answer goes out).
    let ok = |r: &Reply| r.status == 200 || r.status == 202;
    eventually(WAIT, "a session's request after the held calls ended", || async {
        let r = extra.post(&probe("after-1")).await;
        ok(&r).then_some(())
    })
    .await;
    let r = batch_session.post(&json!([probe("after-2"), probe("after-3")])).await;
    assert_eq!(r.status, 200, "a batch after the held calls ended: {}", r.text);
    let r = stateless.request("tools/call", json!({"name": "current_level", "arguments": {}})).await;
    assert_eq!(r.status, 200, "a stateless call after the held calls ended: {}", r.text);
    let r = legacy_post(&gw, &alice, &endpoint, &probe("after-4")).await;
    assert_eq!(r.status, 202, "a legacy request after the held calls ended: {}", r.text);
    eventually(WAIT, "the legacy answer", || async { legacy.text().contains("\"after-4\"").then_some(()) }).await;
    assert_healthy(&gw).await;
}

/// A request its client gives up on — with `notifications/cancelled`, or
/// by closing the connection — gives its slot back at once, while the
/// server is still working on it.
#[tokio::test]
async fn a_request_its_client_gives_up_on_gives_its_slot_back() {
    let gates = Gates::new();
    let gw = Gateway::start(config(json!({"s": scripted_stdio(&gates)}), json!({"calls_in_flight": 1})));
    let alice = gw.create_key("alice", &[]);
    let url = gw.url("/mcp/s");
    let session = Mcp::session(url.clone(), &alice, VERSION).await;
    let stateless = Mcp::stateless(url.clone(), &alice);
    let listed = stateless.call("tools/list", json!({})).await;
    assert!(listed["result"]["tools"].is_array(), "{listed}");
    let probe = || async {
        let r = session.post(&tool_call("probe", "current_level", json!({}))).await;
        match r.status {
            200 => Some(()),
            429 => None,
            _ => panic!("probe: HTTP {} {}", r.status, r.text),
        }
    };

    // Cancelled with notifications/cancelled.
    let held = {
        let m = Mcp::with_session(url.clone(), &alice, session.session.as_deref().expect("session"));
        tokio::spawn(async move { m.post(&tool_call("held-1", "hold", json!({"gate": "cancelled"}))).await })
    };
    gates.wait("started", "cancelled").await;
    assert!(probe().await.is_none(), "the held call takes the only slot");
    let n = session
        .post(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "held-1"}}))
        .await;
    assert_eq!(n.status, 202, "notifications/cancelled: {}", n.text);
    eventually(WAIT, "the slot of a cancelled request", probe).await;
    let _ = tokio::time::timeout(WAIT, held).await.expect("the cancelled request is answered");

    // A session request whose client closes the connection.
    let held = {
        let m = Mcp::with_session(url.clone(), &alice, session.session.as_deref().expect("session"));
        tokio::spawn(async move { m.post(&tool_call("held-2", "hold", json!({"gate": "session-closed"}))).await })
    };
    gates.wait("started", "session-closed").await;
    assert!(probe().await.is_none(), "the held call takes the only slot");
    held.abort();
    eventually(WAIT, "the slot of a session request whose client went away", probe).await;

    // A stateless call whose client closes the connection.
    let held = {
        let m = Mcp::stateless(url.clone(), &alice);
        tokio::spawn(async move {
            m.request("tools/call", json!({"name": "hold", "arguments": {"gate": "stateless-closed"}})).await
        })
    };
    gates.wait("started", "stateless-closed").await;
    assert!(probe().await.is_none(), "the held call takes the only slot");
    held.abort();
    eventually(WAIT, "the slot of a stateless call whose client went away", probe).await;

    for gate in ["cancelled", "session-closed", "stateless-closed"] {
        gates.release(gate);
    }
    assert_healthy(&gw).await;
}

/// A session closed for being idle gives its slot back.
#[tokio::test]
async fn an_idle_session_closed_by_the_gateway_gives_its_slot_back() {
    let mut cfg = echo_only(json!({"sessions": 1}));
    cfg["http"] = json!({"session_idle_timeout": "1s"});
    let gw = Gateway::start(cfg);
    let alice = gw.create_key("alice", &[]);
    let url = gw.url("/mcp");
    let idle = Mcp::session(url.clone(), &alice, VERSION).await;
    let r = initialize(&url, &alice).await;
    // Refused unless the first session already expired meanwhile.
    if r.status != 200 {
        assert_limited(&r, SESSIONS, 1, "a second session");
    }
    eventually(WAIT, "a session once the idle one was closed", || async {
        (initialize(&url, &alice).await.status == 200).then_some(())
    })
    .await;
    let gone = idle.request("tools/list", json!({})).await;
    assert_eq!(gone.status, 404, "the idle session is closed: {}", gone.text);
    assert_healthy(&gw).await;
}

// ---------------------------------------------------------------------------
// Client info size
// ---------------------------------------------------------------------------

/// `capabilities` plus `clientInfo` of exactly `size` bytes as compact JSON.
fn declared(size: usize) -> (Value, Value) {
    let capabilities = json!({"elicitation": {}});
    let mut info = json!({"name": "", "version": "0"});
    let base = capabilities.to_string().len() + info.to_string().len();
    assert!(size >= base, "at least {base} bytes");
    info["name"] = Value::from("n".repeat(size - base));
    assert_eq!(capabilities.to_string().len() + info.to_string().len(), size);
    (capabilities, info)
}

fn assert_too_large(r: &Reply, what: &str) {
    assert_eq!(r.status, 400, "{what}: HTTP {} {}", r.status, r.text);
    let body = r.json();
    assert_eq!(body["error"]["code"], json!(INVALID_PARAMS), "{what}: {body}");
    assert_eq!(body["id"], "init", "{what}: the refusal answers the initialize: {body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("at most 4096"), "{what}: {body}");
}

#[tokio::test]
async fn an_oversized_client_declaration_is_refused_in_session_and_legacy_initialize() {
    let mut cfg = echo_only(json!({"sessions": 2}));
    cfg["http"] = json!({"max_client_info_bytes": 4096});
    let gw = Gateway::start(cfg);
    let alice = gw.create_key("alice", &[]);
    let url = gw.url("/mcp");

    // Session era: one byte over is refused, and takes no session.
    for _ in 0..3 {
        let (caps, info) = declared(4097);
        let r = post_fresh(&url, &alice, &init_body(VERSION, caps, info)).await;
        assert_too_large(&r, "clientInfo one byte over");
        assert!(r.header("mcp-session-id").is_none(), "{:?}", r.headers);
    }
    let huge_caps = json!({"experimental": {"padding": "c".repeat(8192)}});
    let r = post_fresh(&url, &alice, &init_body(VERSION, huge_caps.clone(), client_info())).await;
    assert_too_large(&r, "oversized capabilities");
    // Exactly at the limit is accepted (and is the first of two sessions).
    let (caps, info) = declared(4096);
    let r = post_fresh(&url, &alice, &init_body(VERSION, caps, info)).await;
    assert_eq!(r.status, 200, "exactly at the limit: {}", r.text);
    assert!(r.header("mcp-session-id").is_some(), "a session at the limit");

    // Legacy: the initialize POST itself is refused; the session stays usable.
    let (legacy, endpoint) = opened(legacy_stream(&gw, &alice, "/sse").await, "a legacy session");
    let (caps, info) = declared(4097);
    let r = legacy_post(&gw, &alice, &endpoint, &init_body(VERSION, caps, info)).await;
    assert_too_large(&r, "legacy clientInfo one byte over");
    let r = legacy_post(&gw, &alice, &endpoint, &init_body(VERSION, huge_caps, client_info())).await;
    assert_too_large(&r, "legacy oversized capabilities");
    assert!(
        !legacy.text().contains("\"init\""),
        "a refused initialize is not answered on the stream: {}",
        legacy.text()
    );
    let (caps, info) = declared(4096);
    let r = legacy_post(&gw, &alice, &endpoint, &init_body(VERSION, caps, info)).await;
    assert_eq!(r.status, 202, "legacy initialize at the limit: {}", r.text);
    eventually(WAIT, "the legacy initialize result", || async {
        legacy.text().contains("\"protocolVersion\"").then_some(())
    })
    .await;
    assert_healthy(&gw).await;
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// Rewrites the config and waits until the gateway applied it.
async fn reload(gw: &Gateway, cfg: &Value) {
    let before = gw.log().matches("configuration applied").count();
    gw.write_config(cfg);
    eventually(WAIT, "the reload to be applied", || async {
        (gw.log().matches("configuration applied").count() > before).then_some(())
    })
    .await;
}

/// Initializes until the answer is not a success (the new cap may be
/// stored an instant after the reload is logged); a session opened meanwhile
/// is deleted again. Returns the refusal.
async fn refused_initialize(url: &str, token: &str) -> Reply {
    eventually(WAIT, "initialize to be refused under the new cap", || async {
        let r = initialize(url, token).await;
        if r.status != 200 {
            return Some(r);
        }
        let sid = r.header("mcp-session-id").expect("session id");
        assert_eq!(delete_session(&Mcp::with_session(url.to_string(), token, sid)).await, 200, "DELETE");
        None
    })
    .await
}

#[tokio::test]
async fn a_reload_applies_new_caps_to_new_holdings_without_a_restart() {
    let cfg = |sessions: usize, streams: usize| echo_only(json!({"sessions": sessions, "streams": streams}));
    let gw = Gateway::start(cfg(4, 4));
    let pid = gw.pid();
    let alice = gw.create_key("alice", &[]);
    let url = gw.url("/mcp");
    let s1 = Mcp::session(url.clone(), &alice, VERSION).await;
    let s2 = Mcp::session(url.clone(), &alice, VERSION).await;
    let _stream1 = opened(get_stream(&s1).await, "a stream before the reload");

    // Lowered below what alice holds: what she holds runs on, nothing new.
    reload(&gw, &cfg(1, 1)).await;
    assert_limited(&refused_initialize(&url, &alice).await, SESSIONS, 1, "a session under the lowered cap");
    assert_limited(&refused(get_stream(&s2).await, "a second stream"), STREAMS, 1, "a stream under the lowered cap");
    for (m, what) in [(&s1, "s1"), (&s2, "s2")] {
        assert_eq!(tool_text(&m.call_tool("echo__echo", json!({"text": what})).await), what, "{what} runs on");
    }
    // One of two ended: still at the cap of one.
    assert_eq!(delete_session(&s2).await, 200, "DELETE");
    assert_limited(&initialize(&url, &alice).await, SESSIONS, 1, "still at the lowered cap");

    // Raised again: room at once.
    reload(&gw, &cfg(3, 4)).await;
    let s3 = eventually(WAIT, "a session under the raised cap", || async {
        let r = initialize(&url, &alice).await;
        (r.status == 200).then(|| r.header("mcp-session-id").expect("session id").to_string())
    })
    .await;
    let s3 = Mcp::with_session(url.clone(), &alice, &s3);
    let _stream3 = opened(get_stream(&s3).await, "a stream under the raised cap");
    let _s4 = Mcp::session(url.clone(), &alice, VERSION).await;
    assert_limited(&initialize(&url, &alice).await, SESSIONS, 3, "at the raised cap");
    assert_eq!(gw.pid(), pid, "no restart");
    assert!(gw.log().contains("configuration file changed"), "reloaded from the file");
    assert_healthy(&gw).await;
}
