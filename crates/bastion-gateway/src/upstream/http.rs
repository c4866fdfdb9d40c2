//! Streamable HTTP servers (protocol 2025-03-26 and later, session-based).
//!
//! Each call is its own POST; the server answers with JSON or with an SSE
//! stream scoped to that call, which carries the call's notifications and
//! requests before its response — so association is exact. Unsolicited
//! messages come on the optional GET stream. Connections are pooled by the
//! HTTP client.
//!
//! The connection is shared by every client, so what comes on the GET
//! stream names no call: list changes and resource updates are fanned out;
//! a progress message goes to the one pending call whose progress token it
//! names; log messages and server requests go where the shared-connection
//! rule sends them (`owning_sink`: only when every pending call belongs to
//! one principal), else they are dropped or refused (`ping` and
//! `roots/list` are answered by Bastion).
//! Every answer and every SSE event obeys `upstream.max_message_bytes`.
//! With tracing on, each request made for a call carries the call's span
//! as W3C trace context (`traceparent`, `tracestate`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bastion_core::jsonrpc::{self, Message, error_object};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sse_stream::SseByteStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    CallError, Caller, ConnContext, EventSink, ServerInfo, ServerNotification, UpstreamEvent, initialize_params,
    is_broadcast,
};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The endpoint does not speak Streamable HTTP (a legacy SSE server
    /// answers a POST with 404 or 405).
    #[error("{0}")]
    NotStreamable(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

impl From<ConnectError> for CallError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::NotStreamable(m) => CallError::Unavailable(m),
            ConnectError::Call(c) => c,
        }
    }
}

struct Inner {
    ctx: ConnContext,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    session_id: Option<HeaderValue>,
    protocol_version: HeaderValue,
    next_id: AtomicU64,
    alive: AtomicBool,
    stop: CancellationToken,
    /// Whether the server also speaks the stateless 2026-07-28 version, so
    /// stateless clients can be passed through unchanged.
    stateless: AtomicBool,
    /// The calls waiting for their answer, by request id: who made them,
    /// and the progress token each carries.
    pending: std::sync::Mutex<std::collections::HashMap<u64, PendingCall>>,
    /// Calls answered within the last [`super::LINGER`]: a log line a server
    /// sends about a call on its GET stream may arrive just after the
    /// call's answer, and still belongs to that call's caller.
    recent: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64, Caller)>>,
}

struct PendingCall {
    caller: Caller,
    progress_token: Option<Value>,
}

/// Takes a call off the pending list however it ends.
struct Registered<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let Some(call) = self.inner.pending.lock().expect("poisoned").remove(&self.id) else { return };
        let now = std::time::Instant::now();
        let mut recent = self.inner.recent.lock().expect("poisoned");
        while recent.front().is_some_and(|(at, _, _)| now.duration_since(*at) > super::LINGER) {
            recent.pop_front();
        }
        recent.push_back((now, self.id, call.caller));
    }
}

/// Request headers a stateless client's request carries through to a
/// server that speaks the same version.
pub(crate) fn is_forwarded_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(n.as_str(), "mcp-protocol-version" | "mcp-method" | "mcp-name" | "traceparent" | "tracestate" | "baggage")
        || n.starts_with("mcp-param-")
}

pub(crate) struct HttpConn {
    inner: Arc<Inner>,
    pub info: ServerInfo,
}

pub(crate) fn build_client(connect_timeout: Duration) -> Result<reqwest::Client, CallError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CallError::Unavailable(format!("HTTP client: {e}")))
}

pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, CallError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| CallError::Unavailable(format!("bad header {k:?}")))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| CallError::Unavailable(format!("bad value for {k:?}")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// A request with the W3C trace context of the span being run, when
/// tracing is on and the request is made for one.
pub(crate) fn traced(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match crate::telemetry::outgoing() {
        Some(trace) => trace.apply(req),
        None => req,
    }
}

/// A short, secret-free description of an HTTP failure.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        // The URL may carry credentials in its query: never show it.
        let text = e.to_string();
        match e.url() {
            Some(url) => text.replace(url.as_str(), "<upstream>"),
            None => text,
        }
    }
}

impl HttpConn {
    pub async fn connect(
        ctx: ConnContext,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<HttpConn, ConnectError> {
        let url = reqwest::Url::parse(url).map_err(|e| CallError::Unavailable(format!("bad URL: {e}")))?;
        let client = build_client(ctx.connect_timeout)?;
        let headers = header_map(headers)?;
        let init_body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
        let resp = traced(client.post(url.clone()))
            .headers(headers.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(init_body.to_string())
            .send()
            .await
            .map_err(|e| CallError::Unavailable(describe(&e)))?;
        let status = resp.status();
        if matches!(status.as_u16(), 404 | 405) {
            return Err(ConnectError::NotStreamable(format!("POST answered {status}")));
        }
        if !status.is_success() {
            return Err(CallError::Unavailable(format!("initialize answered HTTP {status}")).into());
        }
        let session_id = resp.headers().get(SESSION_HEADER).cloned();
        let mut inner = Inner {
            ctx,
            client,
            url,
            headers,
            session_id,
            protocol_version: HeaderValue::from_static(bastion_core::protocol::LATEST_SESSION_VERSION),
            next_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
            stop: CancellationToken::new(),
            stateless: AtomicBool::new(false),
            pending: Default::default(),
            recent: Default::default(),
        };
        let result = read_response(&inner, resp, &Value::from(0), &Caller::Gateway).await?;
        let info = ServerInfo::from_initialize_result(&result)?;
        inner.protocol_version = HeaderValue::from_str(&info.protocol_version)
            .map_err(|_| CallError::Protocol("bad protocol version".into()))?;
        let inner = Arc::new(inner);
        let conn = HttpConn { inner: inner.clone(), info };
        conn.notify("notifications/initialized", None).await;
        if probe_stateless(&inner).await {
            inner.stateless.store(true, Ordering::Release);
            tracing::info!(server = %inner.ctx.server, "server also speaks 2026-07-28: stateless clients pass through");
        }
        tokio::spawn(listen(inner));
        Ok(conn)
    }

    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    pub fn speaks_stateless(&self) -> bool {
        self.inner.stateless.load(Ordering::Acquire)
    }

    /// Sends a stateless client's request to the server as it is, with its
    /// protocol headers, and returns the server's answer unread so it can be
    /// streamed back. With tracing on, the client's trace context is
    /// replaced by the gateway's (its span a child of the client's).
    pub async fn passthrough(&self, body: bytes::Bytes, headers: &HeaderMap) -> Result<reqwest::Response, CallError> {
        let inner = &self.inner;
        let mut req = inner
            .client
            .post(inner.url.clone())
            .headers(inner.headers.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json");
        let trace = crate::telemetry::outgoing();
        for (name, value) in headers {
            let replaced = trace.is_some() && crate::telemetry::is_trace_context(name.as_str());
            if is_forwarded_header(name.as_str()) && !replaced {
                req = req.header(name, value);
            }
        }
        if let Some(trace) = &trace {
            req = trace.apply(req);
        }
        tokio::time::timeout(inner.ctx.call_timeout, req.body(body).send())
            .await
            .map_err(|_| CallError::Timeout(inner.ctx.call_timeout))?
            .map_err(|e| CallError::Unavailable(describe(&e)))
    }

    pub async fn call(&self, method: &str, params: Option<Value>, caller: Caller) -> Result<Value, CallError> {
        let inner = &self.inner;
        let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = Value::from(n);
        let progress_token = params.as_ref().and_then(|p| p.pointer("/_meta/progressToken")).cloned();
        inner.pending.lock().expect("poisoned").insert(n, PendingCall { caller: caller.clone(), progress_token });
        let _registered = Registered { inner, id: n };
        let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        let mut guard = CancelOnDrop { inner: inner.clone(), id: id.clone(), armed: true };
        let resp = post(inner, body.to_string()).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && inner.session_id.is_some() {
            // The server forgot the session: this connection is finished and
            // the next call starts a new one.
            inner.alive.store(false, Ordering::Release);
            guard.armed = false;
            return Err(CallError::Closed);
        }
        let result = read_response(inner, resp, &id, &caller).await;
        guard.armed = false;
        result
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) {
        let mut body = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            body["params"] = p;
        }
        if let Err(e) = post(&self.inner, body.to_string()).await {
            tracing::debug!(server = %self.inner.ctx.server, error = %e, "notification not delivered");
        }
    }

    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.alive.store(false, Ordering::Release);
        inner.stop.cancel();
        if let Some(sid) = &inner.session_id {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                inner
                    .client
                    .delete(inner.url.clone())
                    .headers(inner.headers.clone())
                    .header(SESSION_HEADER, sid)
                    .send(),
            )
            .await;
        }
    }
}

/// Asks the server whether it speaks 2026-07-28 (`server/discover`).
async fn probe_stateless(inner: &Inner) -> bool {
    use bastion_core::protocol::{STATELESS_VERSION, meta};
    let body = json!({
        "jsonrpc": "2.0",
        "id": "bastion-discover",
        "method": "server/discover",
        "params": {"_meta": {
            meta::PROTOCOL_VERSION: STATELESS_VERSION,
            meta::CLIENT_CAPABILITIES: {},
            meta::CLIENT_INFO: {"name": "bastion", "version": env!("CARGO_PKG_VERSION")}
        }}
    });
    let send = traced(inner.client.post(inner.url.clone()))
        .headers(inner.headers.clone())
        .header(ACCEPT, "application/json, text/event-stream")
        .header(CONTENT_TYPE, "application/json")
        .header(VERSION_HEADER, STATELESS_VERSION)
        .header("mcp-method", "server/discover")
        .body(body.to_string())
        .send();
    let Ok(Ok(resp)) = tokio::time::timeout(inner.ctx.connect_timeout, send).await else { return false };
    if !resp.status().is_success() {
        return false;
    }
    match read_response(inner, resp, &Value::from("bastion-discover"), &Caller::Gateway).await {
        Ok(result) => result
            .get("supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|x| x == STATELESS_VERSION)),
        Err(_) => false,
    }
}

/// Sends `notifications/cancelled` for a call abandoned before its response.
struct CancelOnDrop {
    inner: Arc<Inner>,
    id: Value,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed || !self.inner.alive.load(Ordering::Acquire) {
            return;
        }
        let inner = self.inner.clone();
        let body = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": self.id}});
        tokio::spawn(async move {
            let _ = post(&inner, body.to_string()).await;
        });
    }
}

async fn post(inner: &Inner, body: String) -> Result<reqwest::Response, CallError> {
    let mut req = traced(inner.client.post(inner.url.clone()))
        .headers(inner.headers.clone())
        .header(ACCEPT, "application/json, text/event-stream")
        .header(CONTENT_TYPE, "application/json")
        .header(VERSION_HEADER, inner.protocol_version.clone());
    if let Some(sid) = &inner.session_id {
        req = req.header(SESSION_HEADER, sid.clone());
    }
    req.body(body).send().await.map_err(|e| CallError::Unavailable(describe(&e)))
}

/// Reads the answer to one request: a JSON body, or an SSE stream whose
/// messages before the response are relayed to the caller's sink.
async fn read_response(
    inner: &Inner,
    resp: reqwest::Response,
    id: &Value,
    caller: &Caller,
) -> Result<Value, CallError> {
    let status = resp.status();
    let max = inner.ctx.max_message_bytes;
    let content_type =
        resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") && status.is_success() {
        let mut events = SseByteStream::new(bounded_events(resp.bytes_stream(), max));
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| CallError::Protocol(format!("SSE: {e}")))?;
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
            let value: Value =
                serde_json::from_str(&data).map_err(|_| CallError::Protocol("SSE event is not JSON".into()))?;
            match Message::from_value(value) {
                Ok(Message::Response(r)) if &r.id == id => return r.outcome.map_err(CallError::Rpc),
                Ok(Message::Response(_)) => {}
                Ok(Message::Notification(n)) => on_call_notification(inner, n.method, n.params, caller.sink()),
                Ok(Message::Request(r)) => relay_request(inner, r.id, r.method, r.params, caller.sink()),
                Err(e) => return Err(CallError::Protocol(e.to_string())),
            }
        }
        return Err(CallError::Closed);
    }
    let bytes = read_bounded(resp, max).await?;
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    match value.map(Message::from_value) {
        Some(Ok(Message::Response(r))) => r.outcome.map_err(CallError::Rpc),
        _ if !status.is_success() => Err(CallError::Unavailable(format!("HTTP {status}"))),
        _ => Err(CallError::Protocol("the response is not a JSON-RPC response".into())),
    }
}

/// A notification on a call's own stream: list changes and resource
/// updates concern every client; progress and log messages concern this
/// call's client only (at the log level its session chose).
fn on_call_notification(inner: &Inner, method: String, params: Option<Value>, sink: Option<&EventSink>) {
    if is_broadcast(&method) {
        let _ = inner.ctx.notifications.send(ServerNotification {
            server: inner.ctx.server.clone(),
            user: inner.ctx.user.clone(),
            method,
            params,
        });
        return;
    }
    let Some(sink) = sink else { return };
    if method == "notifications/message" && !sink.admits_log(params.as_ref(), inner.ctx.log_level()) {
        return;
    }
    let _ = sink.try_send(UpstreamEvent::Notification { method, params });
}

/// A notification on the GET stream, which names no call.
fn on_unbound_notification(inner: &Inner, method: String, params: Option<Value>) {
    if is_broadcast(&method) {
        let _ = inner.ctx.notifications.send(ServerNotification {
            server: inner.ctx.server.clone(),
            user: inner.ctx.user.clone(),
            method,
            params,
        });
        return;
    }
    let sink = match method.as_str() {
        // Exact when one pending call carries the token; else nobody's.
        "notifications/progress" => {
            let token = params.as_ref().and_then(|p| p.get("progressToken"));
            let pending = inner.pending.lock().expect("poisoned");
            let mut carrying = pending.values().filter(|c| token.is_some() && c.progress_token.as_ref() == token);
            match (carrying.next(), carrying.next()) {
                (Some(one), None) => one.caller.sink().cloned(),
                _ => None,
            }
        }
        // Calls answered a moment ago count too: the line may trail the answer.
        "notifications/message" => {
            let pending = inner.pending.lock().expect("poisoned");
            let recent = inner.recent.lock().expect("poisoned");
            let now = std::time::Instant::now();
            let lately = recent.iter().filter(|(at, _, _)| now.duration_since(*at) <= super::LINGER);
            let calls = pending.iter().map(|(id, c)| (*id, &c.caller)).chain(lately.map(|(_, id, c)| (*id, c)));
            super::owning_sink(calls).filter(|s| s.admits_log(params.as_ref(), inner.ctx.log_level()))
        }
        _ => None,
    };
    match sink {
        Some(s) => {
            let _ = s.try_send(UpstreamEvent::Notification { method, params });
        }
        None => tracing::debug!(server = %inner.ctx.server, %method, "message for no single client dropped"),
    }
}

/// See [`super::owning_sink`].
fn owning_sink(inner: &Inner) -> Option<EventSink> {
    let pending = inner.pending.lock().expect("poisoned");
    super::owning_sink(pending.iter().map(|(id, c)| (*id, &c.caller)))
}

/// A body read whole, refusing more than `max` bytes.
async fn read_bounded(resp: reqwest::Response, max: usize) -> Result<bytes::Bytes, CallError> {
    let too_large = || CallError::Protocol(format!("the answer is larger than {max} bytes"));
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| CallError::Unavailable(describe(&e)))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Passes an SSE byte stream through, failing it when one event grows
/// past `max` bytes: a server that never ends an event must not make the
/// gateway buffer without limit.
pub(crate) fn bounded_events<E: std::fmt::Display>(
    stream: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
    max: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let mut counter = EventSizeCounter::default();
    stream.map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        if counter.feed(&chunk) > max {
            return Err(std::io::Error::other(format!("an event is larger than {max} bytes")));
        }
        Ok(chunk)
    })
}

/// Passes a body through, failing it past `max` bytes in all.
pub(crate) fn bounded_body<E: std::fmt::Display>(
    stream: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
    max: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let mut seen = 0usize;
    stream.map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen > max {
            return Err(std::io::Error::other(format!("the answer is larger than {max} bytes")));
        }
        Ok(chunk)
    })
}

/// Counts the bytes of the SSE event being received (since the last blank line).
#[derive(Default)]
struct EventSizeCounter {
    current: usize,
    largest: usize,
    after_newline: bool,
}

impl EventSizeCounter {
    /// Feeds a chunk; returns the size of the largest event seen in it.
    fn feed(&mut self, chunk: &[u8]) -> usize {
        self.largest = 0;
        for &b in chunk {
            match b {
                b'\n' if self.after_newline => {
                    self.largest = self.largest.max(self.current);
                    self.current = 0;
                }
                b'\n' => {
                    self.after_newline = true;
                    self.current += 1;
                }
                b'\r' => self.current += 1,
                _ => {
                    self.after_newline = false;
                    self.current += 1;
                }
            }
        }
        self.largest.max(self.current)
    }
}

/// Hands a server request to the call's client and posts the answer back.
fn relay_request(inner: &Inner, id: Value, method: String, mut params: Option<Value>, sink: Option<&EventSink>) {
    let ctx = inner.ctx.clone();
    let owner: Option<Arc<str>> = sink.map(|s| Arc::from(s.owner()));
    let client = inner.client.clone();
    let url = inner.url.clone();
    let headers = inner.headers.clone();
    let session = inner.session_id.clone();
    let version = inner.protocol_version.clone();
    let timeout = inner.ctx.call_timeout;
    let (tx, rx) = oneshot::channel();
    let local = inner.ctx.answer_locally(&method);
    let refused = match local {
        None => crate::inspect::server_request(&ctx, owner.as_deref(), &method, &mut params).err(),
        Some(_) => None,
    };
    let delivered = match (&local, &refused, sink) {
        (None, None, Some(s)) => {
            s.try_send(UpstreamEvent::Request { method: method.clone(), params, reply: tx }).is_ok()
        }
        _ => false,
    };
    tokio::spawn(async move {
        let outcome = if let Some(answer) = local {
            answer
        } else if let Some(refusal) = refused {
            Err(refusal)
        } else if !delivered {
            Err(error_object(jsonrpc::METHOD_NOT_FOUND, format!("no client is waiting for {method}")))
        } else {
            let mut outcome = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Err(error_object(jsonrpc::INTERNAL_ERROR, "the client went away")),
                Err(_) => Err(error_object(jsonrpc::REQUEST_TIMEOUT, "the client did not answer in time")),
            };
            crate::inspect::client_answer(&ctx, owner.as_deref(), &method, &mut outcome);
            outcome
        };
        let body = match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        };
        let mut req = client
            .post(url)
            .headers(headers)
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .header(VERSION_HEADER, version);
        if let Some(s) = session {
            req = req.header(SESSION_HEADER, s);
        }
        let _ = req.body(body.to_string()).send().await;
    });
}

/// The GET stream for unsolicited server messages, reopened while the
/// connection lives. A server without one answers 405 and is left alone.
async fn listen(inner: Arc<Inner>) {
    let mut delay = Duration::from_millis(500);
    while inner.alive.load(Ordering::Acquire) {
        let mut req =
            inner.client.get(inner.url.clone()).headers(inner.headers.clone()).header(ACCEPT, "text/event-stream");
        req = req.header(VERSION_HEADER, inner.protocol_version.clone());
        if let Some(sid) = &inner.session_id {
            req = req.header(SESSION_HEADER, sid.clone());
        }
        let resp = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = req.send() => r,
        };
        match resp {
            Ok(r) if r.status().is_success() => {
                delay = Duration::from_millis(500);
                let mut events = SseByteStream::new(bounded_events(r.bytes_stream(), inner.ctx.max_message_bytes));
                loop {
                    let next = tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        n = events.next() => n,
                    };
                    let Some(Ok(event)) = next else { break };
                    let Some(data) = event.data else { continue };
                    let Ok(value) = serde_json::from_str::<Value>(&data) else { continue };
                    match Message::from_value(value) {
                        Ok(Message::Notification(n)) => on_unbound_notification(&inner, n.method, n.params),
                        Ok(Message::Request(r)) => {
                            let sink = owning_sink(&inner);
                            relay_request(&inner, r.id, r.method, r.params, sink.as_ref())
                        }
                        _ => {}
                    }
                }
            }
            Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                inner.alive.store(false, Ordering::Release);
                return;
            }
            _ => {}
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_sizes_are_counted_between_blank_lines() {
        let mut c = EventSizeCounter::default();
        assert_eq!(c.feed(b"data: 12345\n\n"), 12);
        assert_eq!(c.feed(b"data: 1"), 7);
        assert_eq!(c.feed(b"23\r\n\r\ndata: x"), 12);
        assert_eq!(c.current, 7);
    }

    /// Events as a server writes them, with either line ending.
    fn sse_text(events: &[(String, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (data, crlf) in events {
            let nl: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(data.as_bytes());
            out.extend_from_slice(nl);
            out.extend_from_slice(nl);
        }
        out
    }

    /// The event data an SSE body yields through the bounded parser, the
    /// body cut into chunks at `cuts`.
    fn parse(body: &[u8], cuts: &[usize], max: usize) -> Result<Vec<String>, ()> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.extend([0, body.len()]);
        points.sort_unstable();
        points.dedup();
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            points.windows(2).map(|w| Ok(bytes::Bytes::copy_from_slice(&body[w[0]..w[1]]))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut events = SseByteStream::new(bounded_events(futures::stream::iter(chunks), max));
            let mut data = Vec::new();
            while let Some(e) = events.next().await {
                data.push(e.map_err(|_| ())?.data.unwrap_or_default());
            }
            Ok(data)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// However a body is cut into chunks, the same events come out,
        /// and the size bound depends on the events, not on the cuts.
        #[test]
        fn sse_parsing_does_not_depend_on_chunking(
            events in proptest::collection::vec(("[a-zA-Z0-9 {}:\",]{1,40}", proptest::bool::ANY), 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let body = sse_text(&events);
            let expected: Vec<String> = events.iter().map(|(d, _)| d.clone()).collect();
            proptest::prop_assert_eq!(parse(&body, &[], usize::MAX), Ok(expected.clone()));
            proptest::prop_assert_eq!(parse(&body, &cuts, usize::MAX), Ok(expected));
            let largest = events.iter().map(|(d, crlf)| 6 + d.len() + if *crlf { 3 } else { 1 }).max().unwrap_or(0);
            if largest > 0 {
                proptest::prop_assert!(parse(&body, &cuts, largest).is_ok());
                proptest::prop_assert!(parse(&body, &cuts, largest - 1).is_err());
            }
        }
    }

    #[tokio::test]
    async fn an_endless_event_fails_the_stream() {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            (0..10).map(|_| Ok(bytes::Bytes::from_static(b"data: aaaaaaaaaa"))).collect();
        let mut s = Box::pin(bounded_events(futures::stream::iter(chunks), 64));
        let mut passed = 0;
        while let Some(item) = s.next().await {
            if item.is_err() {
                break;
            }
            passed += 1;
        }
        assert_eq!(passed, 4);
        let ok: Vec<Result<bytes::Bytes, std::io::Error>> =
            (0..10).map(|_| Ok(bytes::Bytes::from_static(b"data: aaaaaaaaaa\n\n"))).collect();
        let s = bounded_events(futures::stream::iter(ok), 64);
        assert!(s.all(|r| async move { r.is_ok() }).await);
    }
}
