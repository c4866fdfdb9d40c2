//! Malformed and hostile requests get precise HTTP statuses and JSON-RPC
//! errors, and leave the gateway serving.

use serde_json::{Value, json};

use crate::harness::{Mcp, Reply, Shared, http, real, tool_text};

const ACCEPT_BOTH: &str = "application/json, text/event-stream";

fn ping() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
}

/// POST `body` (raw bytes) to `path` with alice's key and the given headers.
async fn raw(s: &Shared, path: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Reply {
    let mut b = http().post(s.gw.url(path)).bearer_auth(&s.alice);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Reply::read(b.body(body).send().await.expect("POST")).await
}

fn json_headers() -> Vec<(&'static str, &'static str)> {
    vec![("content-type", "application/json"), ("accept", ACCEPT_BOTH)]
}

fn assert_rpc_error(r: &Reply, status: u16, code: i64, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    let body = r.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}

async fn malformed_json(s: &Shared) {
    let r = raw(s, "/mcp", &json_headers(), "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ").await;
    assert_rpc_error(&r, 400, -32700, "truncated JSON");
    let r = raw(s, "/mcp", &json_headers(), vec![0xff_u8, 0xfe, 0x00]).await;
    assert_rpc_error(&r, 400, -32700, "binary garbage");
}

async fn wrong_content_type(s: &Shared) {
    let r = raw(s, "/mcp", &[("content-type", "text/plain"), ("accept", ACCEPT_BOTH)], ping().to_string()).await;
    assert_eq!(r.status, 415, "{}", r.text);
    let r = raw(s, "/mcp", &[("accept", ACCEPT_BOTH)], ping().to_string()).await;
    assert_eq!(r.status, 415, "no Content-Type: {}", r.text);
}

async fn accept_without_event_stream(s: &Shared) {
    let r = raw(s, "/mcp", &[("content-type", "application/json"), ("accept", "application/json")], ping().to_string())
        .await;
    assert_eq!(r.status, 406, "{}", r.text);
}

async fn body_too_large(s: &Shared) {
    // `http.max_body_bytes` is 64 KiB on this gateway.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"text": "x".repeat(70 * 1024)}}});
    let r = raw(s, "/mcp", &json_headers(), big.to_string()).await;
    assert_eq!(r.status, 413, "{}", r.text);
}

async fn batches_only_in_2025_03_26(s: &Shared) {
    let batch = json!([
        {"jsonrpc": "2.0", "id": "b1", "method": "ping"},
        {"jsonrpc": "2.0", "id": "b2", "method": "tools/list"}
    ]);
    let new = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-11-25").await;
    let r = new.post(&batch).await;
    assert_rpc_error(&r, 400, -32600, "a batch in a 2025-11-25 session");

    let old = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-03-26").await;
    assert_eq!(old.init["protocolVersion"], "2025-03-26", "{}", old.init);
    let r = old.post(&batch).await;
    assert_eq!(r.status, 200, "a batch in a 2025-03-26 session: {}", r.text);
    let answers = r.json();
    let answers = answers.as_array().unwrap_or_else(|| panic!("a batch answer is an array: {answers}"));
    assert_eq!(answers.len(), 2, "{answers:?}");
    let by_id = |id: &str| answers.iter().find(|a| a["id"] == id).unwrap_or_else(|| panic!("no answer {id}"));
    assert_eq!(by_id("b1")["result"], json!({}));
    assert!(by_id("b2")["result"]["tools"].is_array(), "{answers:?}");

    let r = new.post(&json!([])).await;
    assert_eq!(r.status, 400, "an empty batch: {}", r.text);
}

async fn unknown_session(s: &Shared) {
    let m = Mcp::with_session(s.gw.url("/mcp"), &s.alice, "no-such-session-id");
    let r = m.request("tools/list", json!({})).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

async fn no_session_and_not_stateless(s: &Shared) {
    let r =
        raw(s, "/mcp", &json_headers(), json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string()).await;
    assert_rpc_error(&r, 400, -32600, "no session, no stateless markers");
}

async fn unknown_tool(s: &Shared) {
    let m = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-11-25").await;
    let r = m.request("tools/call", json!({"name": "nope__x", "arguments": {}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.rpc()["error"]["code"], -32602, "{}", r.text);
    let r = m.request("tools/call", json!({"name": "no_prefix_at_all", "arguments": {}})).await;
    assert_eq!(r.rpc()["error"]["code"], -32602, "{}", r.text);
    // A long name is not sent back whole.
    let long = format!("nope__{}", "x".repeat(10_000));
    let r = m.request("tools/call", json!({"name": long, "arguments": {}})).await;
    assert_eq!(r.rpc()["error"]["code"], -32602, "{}", r.text);
    assert!(r.text.len() < 1024, "{} bytes", r.text.len());
    let stateless = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let r = stateless.request("tools/call", json!({"name": "nope__x", "arguments": {}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.rpc()["error"]["code"], -32602, "{}", r.text);
}

async fn foreign_origin_and_host(s: &Shared) {
    let mut h = json_headers();
    h.push(("origin", "https://evil.example"));
    let r = raw(s, "/mcp", &h, ping().to_string()).await;
    assert_eq!(r.status, 403, "foreign Origin: {}", r.text);
    let mut h = json_headers();
    h.push(("host", "evil.example"));
    let r = raw(s, "/mcp", &h, ping().to_string()).await;
    assert_eq!(r.status, 403, "foreign Host: {}", r.text);
    // Pages served from this machine may call.
    let mut h = json_headers();
    h.push(("origin", "http://localhost:6274"));
    h.push(("mcp-protocol-version", "2026-07-28"));
    h.push(("mcp-method", "server/discover"));
    let r = raw(s, "/mcp", &h, stateless_body("server/discover", "2026-07-28")).await;
    assert_eq!(r.status, 200, "a loopback Origin: {}", r.text);
}

async fn unknown_endpoint(s: &Shared) {
    let r = raw(s, "/mcp/nosuch", &json_headers(), ping().to_string()).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let anonymous = Reply::read(
        http()
            .post(s.gw.url("/mcp/nosuch"))
            .header("content-type", "application/json")
            .header("accept", ACCEPT_BOTH)
            .body(ping().to_string())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(anonymous.status, 401, "an unknown endpoint tells anonymous callers nothing: {}", anonymous.text);
    let r = Reply::read(http().get(s.gw.url("/nowhere")).send().await.expect("GET")).await;
    assert_eq!(r.status, 404, "{}", r.text);
}

fn stateless_body(method: &str, version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": method,
    "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": {}
    }}})
    .to_string()
}

async fn stateless_header_mismatch(s: &Shared) {
    let mut h = json_headers();
    h.push(("mcp-protocol-version", "2026-07-28"));
    h.push(("mcp-method", "tools/list"));
    let r = raw(s, "/mcp", &h, stateless_body("tools/list", "2025-11-25")).await;
    assert_rpc_error(&r, 400, -32020, "MCP-Protocol-Version differs from _meta");
    let mut h = json_headers();
    h.push(("mcp-protocol-version", "2026-07-28"));
    h.push(("mcp-method", "prompts/list"));
    let r = raw(s, "/mcp", &h, stateless_body("tools/list", "2026-07-28")).await;
    assert_rpc_error(&r, 400, -32020, "Mcp-Method differs from the body");
    let call = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
    "params": {"name": "echo__echo", "arguments": {"text": "x"}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    }}});
    let mut h = json_headers();
    h.push(("mcp-protocol-version", "2026-07-28"));
    h.push(("mcp-method", "tools/call"));
    h.push(("mcp-name", "echo__other"));
    let r = raw(s, "/mcp", &h, call.to_string()).await;
    assert_rpc_error(&r, 400, -32020, "Mcp-Name differs from the body");
}

async fn unsupported_stateless_version(s: &Shared) {
    let mut h = json_headers();
    h.push(("mcp-protocol-version", "2099-01-01"));
    h.push(("mcp-method", "tools/list"));
    let r = raw(s, "/mcp", &h, stateless_body("tools/list", "2099-01-01")).await;
    assert_rpc_error(&r, 400, -32022, "an unknown stateless version");
    let mut h = json_headers();
    h.push(("mcp-method", "tools/list"));
    let r = raw(s, "/mcp", &h, stateless_body("tools/list", "2099-01-01")).await;
    assert_rpc_error(&r, 400, -32022, "an unknown version in _meta only");
}

async fn still_serving(s: &Shared) {
    let r = Reply::read(http().get(s.gw.url("/healthz")).send().await.expect("GET /healthz")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    assert_eq!(tool_text(&m.call_tool("echo__echo", json!({"text": "still here"})).await), "still here");
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    malformed_json(real()).await;
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    wrong_content_type(real()).await;
}

#[tokio::test]
async fn accept_without_event_stream_is_406() {
    accept_without_event_stream(real()).await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    body_too_large(real()).await;
}

#[tokio::test]
async fn batches_are_accepted_only_in_2025_03_26_sessions() {
    batches_only_in_2025_03_26(real()).await;
}

#[tokio::test]
async fn an_unknown_session_is_404() {
    unknown_session(real()).await;
}

#[tokio::test]
async fn a_request_without_session_or_stateless_markers_is_400() {
    no_session_and_not_stateless(real()).await;
}

#[tokio::test]
async fn an_unknown_tool_is_invalid_params() {
    unknown_tool(real()).await;
}

#[tokio::test]
async fn foreign_origin_and_host_are_forbidden() {
    foreign_origin_and_host(real()).await;
}

#[tokio::test]
async fn an_unknown_endpoint_is_404_or_401() {
    unknown_endpoint(real()).await;
}

#[tokio::test]
async fn stateless_header_mismatch_is_32020() {
    stateless_header_mismatch(real()).await;
}

#[tokio::test]
async fn an_unsupported_stateless_version_is_32022() {
    unsupported_stateless_version(real()).await;
}

#[tokio::test]
async fn the_gateway_keeps_serving_after_bad_input() {
    let s = real();
    malformed_json(s).await;
    wrong_content_type(s).await;
    accept_without_event_stream(s).await;
    body_too_large(s).await;
    batches_only_in_2025_03_26(s).await;
    unknown_session(s).await;
    no_session_and_not_stateless(s).await;
    unknown_tool(s).await;
    foreign_origin_and_host(s).await;
    unknown_endpoint(s).await;
    stateless_header_mismatch(s).await;
    unsupported_stateless_version(s).await;
    still_serving(s).await;
}
