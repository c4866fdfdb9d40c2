//! OpenTelemetry traces through the real binary: a collector in the test
//! (OTLP/HTTP, protobuf) receives the spans of a call, which continue the
//! client's trace; the servers behind the gateway (Streamable HTTP, legacy
//! HTTP+SSE, a stateless pass-through) receive a `traceparent` naming the
//! gateway's upstream span; log lines and the audit trail carry the trace
//! id; no credential reaches a log line or an exported span; and a
//! collector that is down or hangs costs spans, never a request.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::harness::{Gateway, Mcp, Options, WAIT, eventually, http, tool_text};
use crate::mock_upstream::{Behaviour, MockUpstream};

// ---------------------------------------------------------------------------
// A collector
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    /// service.name of each export.
    services: Vec<String>,
    /// Every body, as received: what a search for a canary reads.
    raw: Vec<u8>,
    headers: Vec<HeaderMap>,
}

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with protobuf bodies.
struct Collector {
    /// The base URL, as `tracing.otlp` takes it.
    base: String,
    got: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(got): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else { return StatusCode::BAD_REQUEST };
    let mut got = got.lock().expect("poisoned");
    got.raw.extend_from_slice(&body);
    got.headers.push(headers);
    for rs in request.resource_spans {
        if let Some(name) = rs.resource.as_ref().and_then(|r| string_attr(&r.attributes, "service.name")) {
            got.services.push(name);
        }
        for ss in rs.scope_spans {
            got.spans.extend(ss.spans);
        }
    }
    StatusCode::OK
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let port = listener.local_addr().expect("addr").port();
        let got: Arc<Mutex<Received>> = Default::default();
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(got.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector { base: format!("http://127.0.0.1:{port}"), got, task }
    }

    fn spans(&self) -> Vec<Span> {
        self.got.lock().expect("poisoned").spans.clone()
    }

    /// Waits until the spans of trace `trace` include one whose name
    /// starts with each of `names`; returns the trace's spans.
    async fn trace(&self, trace: &str, names: &[&str]) -> Vec<Span> {
        eventually(WAIT, &format!("spans {names:?} of trace {trace} at the collector"), || async {
            let spans: Vec<Span> = self.spans().into_iter().filter(|s| hex(&s.trace_id) == trace).collect();
            names.iter().all(|n| spans.iter().any(|s| s.name.starts_with(n))).then_some(spans)
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    })
}

fn named<'a>(spans: &'a [Span], prefix: &str) -> &'a Span {
    spans.iter().find(|s| s.name.starts_with(prefix)).unwrap_or_else(|| panic!("no span {prefix:?} in {spans:#?}"))
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

// ---------------------------------------------------------------------------
// A legacy HTTP+SSE server (protocol 2024-11-05) that records its posts
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LegacyState {
    stream: Mutex<Option<mpsc::Sender<String>>>,
    posts: Mutex<Vec<(HeaderMap, Value)>>,
}

struct Legacy {
    /// The stream's URL.
    url: String,
    state: Arc<LegacyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Legacy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn legacy_stream(State(state): State<Arc<LegacyState>>) -> Response {
    let (tx, rx) = mpsc::channel::<String>(64);
    *state.stream.lock().expect("poisoned") = Some(tx);
    let first = futures::stream::once(async { "event: endpoint\ndata: /messages?session_id=1\n\n".to_string() });
    let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let body = futures::StreamExt::map(futures::StreamExt::chain(first, rest), |s| {
        Ok::<_, std::convert::Infallible>(Bytes::from(s))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).expect("response")
}

async fn legacy_post(State(state): State<Arc<LegacyState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
    state.posts.lock().expect("poisoned").push((headers, msg.clone()));
    let (Some(id), Some(method)) = (msg.get("id"), msg.get("method").and_then(Value::as_str)) else {
        return StatusCode::ACCEPTED;
    };
    let result = match method {
        "initialize" => json!({
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "legacy-mock", "version": "0"}
        }),
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
        "tools/call" => {
            let text = msg["params"]["arguments"]["text"].as_str().unwrap_or("");
            json!({"content": [{"type": "text", "text": text}]})
        }
        _ => json!({}),
    };
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
    let tx = state.stream.lock().expect("poisoned").clone();
    if let Some(tx) = tx {
        let _ = tx.send(format!("event: message\ndata: {answer}\n\n")).await;
    }
    StatusCode::ACCEPTED
}

impl Legacy {
    async fn start() -> Legacy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the legacy server");
        let port = listener.local_addr().expect("addr").port();
        let state: Arc<LegacyState> = Default::default();
        let app = axum::Router::new()
            .route("/sse", axum::routing::get(legacy_stream))
            .route("/messages", axum::routing::post(legacy_post))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Legacy { url: format!("http://127.0.0.1:{port}/sse"), state, task }
    }

    /// The headers of the post that carried a call with `text`.
    fn post_of(&self, text: &str) -> HeaderMap {
        let posts = self.state.posts.lock().expect("poisoned");
        posts
            .iter()
            .find(|(_, m)| m["params"]["arguments"]["text"] == text)
            .map(|(h, _)| h.clone())
            .unwrap_or_else(|| panic!("the legacy server got no call with {text:?}"))
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn echo_call(tool: &str, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {"text": text}}})
}

fn stateless_echo(text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
        "name": "echo",
        "arguments": {"text": text},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": crate::harness::STATELESS,
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }})
}

/// The header of the mock's request whose body carries `text`.
fn mock_header(mock: &MockUpstream, text: &str, header: &str) -> Option<String> {
    let requests = mock.requests();
    let r = requests
        .iter()
        .find(|r| r.body.contains(text) && r.body.contains("tools/call"))
        .unwrap_or_else(|| panic!("the mock got no call with {text:?}"));
    r.header(header).map(str::to_string)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The spans of one call: request (server kind) a child of the client's
/// span, and authenticate, authorize and upstream (client kind) children
/// of the request; returns them in that order.
fn check_call_spans<'a>(spans: &'a [Span], client_span: &str, server: &str) -> [&'a Span; 4] {
    let request = named(spans, "POST /mcp");
    let authenticate = named(spans, "authenticate");
    let authorize = named(spans, "authorize");
    let upstream = named(spans, "tools/call");
    assert_eq!(hex(&request.parent_span_id), client_span, "the request continues the client's span");
    assert_eq!(request.kind, SERVER);
    for child in [authenticate, authorize, upstream] {
        assert_eq!(hex(&child.parent_span_id), hex(&request.span_id), "{} is a child of the request", child.name);
    }
    assert_eq!(upstream.kind, CLIENT);
    assert_eq!(string_attr(&upstream.attributes, "bastion.server").as_deref(), Some(server));
    assert_eq!(string_attr(&upstream.attributes, "mcp.method.name").as_deref(), Some("tools/call"));
    assert_eq!(string_attr(&authorize.attributes, "bastion.decision").as_deref(), Some("allow"));
    assert_eq!(string_attr(&authenticate.attributes, "bastion.auth.method").as_deref(), Some("api_key"));
    assert_eq!(string_attr(&request.attributes, "http.response.status_code").as_deref(), Some("200"));
    [request, authenticate, authorize, upstream]
}

#[tokio::test]
async fn a_calls_spans_continue_the_clients_trace_to_every_kind_of_server() {
    let collector = Collector::start().await;
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    let pass = MockUpstream::start(true, Behaviour::Normal);
    let legacy = Legacy::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let gw = Gateway::start_with(
        json!({
            "mcpServers": {
                "http": {"url": streamable.url, "type": "streamable-http"},
                "pass": {"url": pass.url, "type": "streamable-http"},
                "legacy": {"url": legacy.url, "type": "sse"}
            },
            "tracing": {
                "otlp": collector.base,
                "service_name": "bastion-it",
                "headers": {"x-collector-key": "${env.BASTION_IT_COLLECTOR_KEY}"}
            },
            "log": {"format": "json"},
            "audit": {"stream": audit}
        }),
        Options { env: vec![("BASTION_IT_COLLECTOR_KEY".into(), "collector-key-1".into())], ..Default::default() },
    );
    let key = gw.create_key("alice", &[]);
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;

    // Streamable HTTP, with the client's tracestate.
    let (t1, c1) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let reply = session
        .post_with(
            &echo_call("http__echo", "via-streamable"),
            &[("traceparent", &traceparent(t1, c1)), ("tracestate", "client=one")],
        )
        .await;
    assert_eq!(tool_text(&reply.rpc()), "via-streamable");
    // Legacy HTTP+SSE.
    let (t2, c2) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let reply =
        session.post_with(&echo_call("legacy__echo", "via-legacy"), &[("traceparent", &traceparent(t2, c2))]).await;
    assert_eq!(tool_text(&reply.rpc()), "via-legacy");
    // A stateless client passed through to a server that speaks its version.
    let (t3, c3) = ("5d3f0b1e9a7c4e2f8b6a1c0d9e8f7a6b", "1a2b3c4d5e6f7081");
    let stateless = Mcp::stateless(gw.url("/mcp/pass"), &key);
    let reply = stateless.post_with(&stateless_echo("via-passthrough"), &[("traceparent", &traceparent(t3, c3))]).await;
    assert_eq!(tool_text(&reply.rpc()), "via-passthrough");

    // The spans, and what each server received.
    let spans = collector.trace(t1, &["POST /mcp", "authenticate", "authorize", "tools/call"]).await;
    let [_, _, _, upstream] = check_call_spans(&spans, c1, "http");
    let sent = mock_header(&streamable, "via-streamable", "traceparent").expect("a traceparent to the server");
    assert_eq!(sent, traceparent(t1, &hex(&upstream.span_id)), "the server's parent is the upstream span");
    assert_eq!(mock_header(&streamable, "via-streamable", "tracestate").as_deref(), Some("client=one"));

    let spans = collector.trace(t2, &["POST /mcp", "authenticate", "authorize", "tools/call"]).await;
    let [_, _, _, upstream] = check_call_spans(&spans, c2, "legacy");
    let posted = legacy.post_of("via-legacy");
    let sent = posted.get("traceparent").and_then(|v| v.to_str().ok()).expect("a traceparent on the legacy post");
    assert_eq!(sent, traceparent(t2, &hex(&upstream.span_id)));

    let spans = collector.trace(t3, &["POST /mcp/{name}", "authenticate", "authorize", "tools/call"]).await;
    let upstream = named(&spans, "tools/call");
    assert_eq!(hex(&named(&spans, "POST /mcp/{name}").parent_span_id), c3);
    let sent = mock_header(&pass, "via-passthrough", "traceparent").expect("a traceparent on the pass-through");
    assert_eq!(sent, traceparent(t3, &hex(&upstream.span_id)), "the client's own traceparent is replaced");

    // The collector got the resource and the configured header.
    {
        let got = collector.got.lock().expect("poisoned");
        assert!(got.services.iter().all(|s| s == "bastion-it"), "{:?}", got.services);
        assert!(got.headers.iter().all(|h| h.get("x-collector-key").is_some_and(|v| v == "collector-key-1")));
    }

    // The audit trail names the same trace.
    let record = eventually(WAIT, "the call's audit record", || async {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["method"] == "tools/call" && r["trace_id"] == t1)
    })
    .await;
    assert_eq!(record["outcome"], "ok", "{record}");

    // JSON log lines written within the request carry its ids.
    let lines: Vec<Value> = gw.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let request_span = hex(&named(&collector.trace(t1, &["POST /mcp"]).await, "POST /mcp").span_id);
    let access = lines
        .iter()
        .find(|l| l["trace_id"] == t1 && l["message"] == "request")
        .unwrap_or_else(|| panic!("no log line of the request with its trace id in:\n{}", gw.log()));
    assert_eq!(access["span_id"], request_span.as_str(), "{access}");
    // Lines outside any request carry none.
    let ready = lines.iter().find(|l| l["message"] == "bastion ready").expect("the ready line");
    assert!(ready.get("trace_id").is_none(), "{ready}");
}

#[tokio::test]
async fn a_request_without_trace_context_starts_a_trace_and_sampling_is_followed() {
    let collector = Collector::start().await;
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    let gw = Gateway::start(json!({
        "mcpServers": {"http": {"url": streamable.url, "type": "streamable-http"}},
        "tracing": {"otlp": collector.base, "sample_ratio": 0.0}
    }));
    let key = gw.create_key("alice", &[]);
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;

    // No traceparent, and a ratio of 0: the new trace is not sampled, yet
    // the server still learns its id (unsampled) and the log carries it.
    let reply = session.post(&echo_call("http__echo", "no-context")).await;
    assert_eq!(tool_text(&reply.rpc()), "no-context");
    let sent = mock_header(&streamable, "no-context", "traceparent").expect("a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "00"), "{sent}");
    let fresh = parts[1].to_string();
    assert!(fresh.len() == 32 && fresh != "0".repeat(32), "{sent}");
    gw.wait_for_log(&format!("trace_id={fresh}")).await;

    // A client's sampled trace is recorded whatever the ratio.
    let (t, c) = ("7e1f3a2b4c5d6e7f8091a2b3c4d5e6f7", "aa00bb11cc22dd33");
    let reply = session.post_with(&echo_call("http__echo", "sampled"), &[("traceparent", &traceparent(t, c))]).await;
    assert_eq!(tool_text(&reply.rpc()), "sampled");
    let spans = collector.trace(t, &["POST /mcp", "tools/call"]).await;
    assert_eq!(hex(&named(&spans, "POST /mcp").parent_span_id), c);
    assert!(!collector.spans().iter().any(|s| hex(&s.trace_id) == fresh), "the unsampled trace was exported");
}

const BEARER_CANARY: &str = "canary-bearer-Zq71Kx";
const COOKIE_CANARY: &str = "canary-cookie-Wb38Fy";
const INTERNAL_CANARY: &str = "canary-internal-Hn52Tr";
const PROXY_CANARY: &str = "canary-proxy-Ld94Mc";
const API_KEY_CANARY: &str = "canary-apikey-Pe16Gs";
const UPSTREAM_CANARY: &str = "canary-upstream-Xo29Vb";
const AGENT_CANARY: &str = "canary-agent-Rt63Qw";

#[tokio::test]
async fn credentials_reach_no_log_line_and_no_span() {
    let collector = Collector::start().await;
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    let gw = Gateway::start_with(
        json!({
            "mcpServers": {"http": {
                "url": streamable.url,
                "type": "streamable-http",
                "headers": {"X-Upstream-Secret": UPSTREAM_CANARY, "Authorization": format!("Bearer {UPSTREAM_CANARY}")}
            }},
            // The user agent is recorded on spans unless listed, as here.
            "log": {"redact_headers": ["X-Internal-Token", "User-Agent"]},
            "tracing": {"otlp": collector.base}
        }),
        Options { env: vec![("BASTION_LOG".into(), "debug".into())], ..Default::default() },
    );
    let key = gw.create_key("alice", &[]);
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let extra = [
        ("cookie", format!("sid={COOKIE_CANARY}")),
        ("x-internal-token", INTERNAL_CANARY.to_string()),
        ("proxy-authorization", format!("Basic {PROXY_CANARY}")),
        ("x-api-key", API_KEY_CANARY.to_string()),
        ("user-agent", format!("client/1.0 {AGENT_CANARY}")),
    ];

    // A call with every kind of credential beside the key.
    let (t1, c1) = ("11111111111111111111111111111111", "2222222222222222");
    let mut headers: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tp1 = traceparent(t1, c1);
    headers.push(("traceparent", &tp1));
    let reply = session.post_with(&echo_call("http__echo", "masked"), &headers).await;
    assert_eq!(tool_text(&reply.rpc()), "masked");
    // The server got its configured credentials (and none of the client's).
    assert_eq!(mock_header(&streamable, "masked", "x-upstream-secret").as_deref(), Some(UPSTREAM_CANARY));

    // A refused bearer token.
    let (t2, c2) = ("33333333333333333333333333333333", "4444444444444444");
    let mut refused = http()
        .post(gw.url("/mcp"))
        .header("authorization", format!("Bearer {BEARER_CANARY}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", traceparent(t2, c2));
    for (k, v) in &extra {
        refused = refused.header(*k, v);
    }
    let r = refused.body(echo_call("http__echo", "refused").to_string()).send().await.expect("POST");
    assert_eq!(r.status(), 401);

    let spans = collector.trace(t1, &["POST /mcp", "authenticate", "authorize", "tools/call"]).await;
    let request = named(&spans, "POST /mcp");
    let ua = string_attr(&request.attributes, "user_agent.original").expect("the user agent is recorded");
    assert_eq!(ua, "[redacted]");
    let spans = collector.trace(t2, &["POST /mcp", "authenticate"]).await;
    let authenticate = named(&spans, "authenticate");
    assert_eq!(string_attr(&authenticate.attributes, "error.type").as_deref(), Some("invalid"));
    // The log carries the trace ids of both requests (text format).
    gw.wait_for_log(&format!("trace_id={t1}")).await;
    gw.wait_for_log(&format!("trace_id={t2}")).await;

    let log = gw.log();
    let exported = {
        let got = collector.got.lock().expect("poisoned");
        format!("{}\n{:?}", String::from_utf8_lossy(&got.raw), got.spans)
    };
    assert!(log.contains("DEBUG"), "debug logging is on");
    let canaries =
        [BEARER_CANARY, COOKIE_CANARY, INTERNAL_CANARY, PROXY_CANARY, API_KEY_CANARY, UPSTREAM_CANARY, AGENT_CANARY];
    for canary in canaries.iter().copied().chain([key.as_str()]) {
        assert!(!log.contains(canary), "{canary} reached the log:\n{log}");
        assert!(!exported.contains(canary), "{canary} reached an exported span");
    }
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_fails_no_request() {
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    // Nothing listens on `down`; `hung` accepts connections and never answers.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hung_port = hung.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });

    for (collector, extra) in [
        (format!("http://127.0.0.1:{down}"), json!({})),
        (format!("http://127.0.0.1:{hung_port}"), json!({"queue": 2})),
    ] {
        let mut tracing = json!({"otlp": collector, "timeout": "500ms"});
        if let Some(q) = extra.get("queue") {
            tracing["queue"] = q.clone();
        }
        let gw = Gateway::start(json!({
            "mcpServers": {"http": {"url": streamable.url, "type": "streamable-http"}},
            "tracing": tracing
        }));
        let key = gw.create_key("alice", &[]);
        let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
        for i in 0..12 {
            let text = format!("call-{i}");
            let reply = session.post(&echo_call("http__echo", &text)).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(tool_text(&reply.rpc()), text);
        }
        gw.wait_for_log("traces could not be sent to the collector; requests are not affected").await;
        if extra.get("queue").is_some() {
            gw.wait_for_log("spans dropped: the export queue was full").await;
        }
    }
    holder.abort();
}

#[tokio::test]
async fn the_last_spans_are_sent_at_shutdown() {
    let collector = Collector::start().await;
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    let mut gw = Gateway::start(json!({
        "mcpServers": {"http": {"url": streamable.url, "type": "streamable-http"}},
        "tracing": {"otlp": collector.base}
    }));
    let key = gw.create_key("alice", &[]);
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let (t, c) = ("9f8e7d6c5b4a39281706f5e4d3c2b1a0", "0123456789abcdef");
    let reply = session.post_with(&echo_call("http__echo", "last"), &[("traceparent", &traceparent(t, c))]).await;
    assert_eq!(tool_text(&reply.rpc()), "last");
    gw.terminate();
    let status = gw.wait_exit(WAIT).await.expect("the gateway exits");
    assert!(status.success(), "{status:?}");
    // The server's tools are listed for the call (its tool's pin is
    // checked first): a span of its own in the same trace.
    let spans = collector.trace(t, &["POST /mcp", "authenticate", "authorize", "tools/list", "tools/call"]).await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
}

#[tokio::test]
async fn without_a_tracing_section_nothing_is_added() {
    let streamable = MockUpstream::start(false, Behaviour::Normal);
    let gw = Gateway::start(json!({
        "mcpServers": {"http": {"url": streamable.url, "type": "streamable-http"}},
        "log": {"format": "json"}
    }));
    let key = gw.create_key("alice", &[]);
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let (t, c) = ("aaaabbbbccccddddeeeeffff00001111", "2222333344445555");
    let reply = session.post_with(&echo_call("http__echo", "untraced"), &[("traceparent", &traceparent(t, c))]).await;
    assert_eq!(tool_text(&reply.rpc()), "untraced");
    assert_eq!(mock_header(&streamable, "untraced", "traceparent"), None, "no trace context is made up");
    gw.wait_for_log("\"message\":\"request\"").await;
    assert!(!gw.log().contains("trace_id"), "{}", gw.log());
}
