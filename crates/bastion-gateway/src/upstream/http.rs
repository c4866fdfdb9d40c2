//! Streamable HTTP servers (protocol 2025-03-26 and later, session-based).
//!
//! Each call is its own POST; the server answers with JSON or with an SSE
//! stream scoped to that call, which carries the call's notifications and
//! requests before its response — so association is exact. Unsolicited
//! messages come on the optional GET stream. Connections are pooled by the
//! HTTP client.

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

use super::{CallError, ConnContext, EventSink, ServerInfo, ServerNotification, UpstreamEvent, initialize_params};

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
        let resp = client
            .post(url.clone())
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
        };
        let result = read_response(&inner, resp, &Value::from(0), None).await?;
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
    /// streamed back.
    pub async fn passthrough(&self, body: bytes::Bytes, headers: &HeaderMap) -> Result<reqwest::Response, CallError> {
        let inner = &self.inner;
        let mut req = inner
            .client
            .post(inner.url.clone())
            .headers(inner.headers.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            if is_forwarded_header(name.as_str()) {
                req = req.header(name, value);
            }
        }
        tokio::time::timeout(inner.ctx.call_timeout, req.body(body).send())
            .await
            .map_err(|_| CallError::Timeout(inner.ctx.call_timeout))?
            .map_err(|e| CallError::Unavailable(describe(&e)))
    }

    pub async fn call(&self, method: &str, params: Option<Value>, sink: Option<EventSink>) -> Result<Value, CallError> {
        let inner = &self.inner;
        let id = Value::from(inner.next_id.fetch_add(1, Ordering::Relaxed));
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
        let result = read_response(inner, resp, &id, sink).await;
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
    let send = inner
        .client
        .post(inner.url.clone())
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
    match read_response(inner, resp, &Value::from("bastion-discover"), None).await {
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
    let mut req = inner
        .client
        .post(inner.url.clone())
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
/// messages before the response are relayed to `sink`.
async fn read_response(
    inner: &Inner,
    resp: reqwest::Response,
    id: &Value,
    sink: Option<EventSink>,
) -> Result<Value, CallError> {
    let status = resp.status();
    let content_type =
        resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") && status.is_success() {
        let mut events = SseByteStream::new(resp.bytes_stream());
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| CallError::Protocol(format!("SSE: {e}")))?;
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
            let value: Value =
                serde_json::from_str(&data).map_err(|_| CallError::Protocol("SSE event is not JSON".into()))?;
            match Message::from_value(value) {
                Ok(Message::Response(r)) if &r.id == id => return r.outcome.map_err(CallError::Rpc),
                Ok(Message::Response(_)) => {}
                Ok(Message::Notification(n)) => match &sink {
                    Some(s) => {
                        let _ = s.try_send(UpstreamEvent::Notification { method: n.method, params: n.params });
                    }
                    None => {
                        let _ = inner.ctx.notifications.send(ServerNotification {
                            server: inner.ctx.server.clone(),
                            method: n.method,
                            params: n.params,
                        });
                    }
                },
                Ok(Message::Request(r)) => relay_request(inner, r.id, r.method, r.params, sink.as_ref()),
                Err(e) => return Err(CallError::Protocol(e.to_string())),
            }
        }
        return Err(CallError::Closed);
    }
    let bytes = resp.bytes().await.map_err(|e| CallError::Unavailable(describe(&e)))?;
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    match value.map(Message::from_value) {
        Some(Ok(Message::Response(r))) => r.outcome.map_err(CallError::Rpc),
        _ if !status.is_success() => Err(CallError::Unavailable(format!("HTTP {status}"))),
        _ => Err(CallError::Protocol("the response is not a JSON-RPC response".into())),
    }
}

/// Hands a server request to the call's client and posts the answer back.
fn relay_request(inner: &Inner, id: Value, method: String, params: Option<Value>, sink: Option<&EventSink>) {
    let client = inner.client.clone();
    let url = inner.url.clone();
    let headers = inner.headers.clone();
    let session = inner.session_id.clone();
    let version = inner.protocol_version.clone();
    let timeout = inner.ctx.call_timeout;
    let (tx, rx) = oneshot::channel();
    let delivered = match sink {
        Some(s) => s.try_send(UpstreamEvent::Request { method: method.clone(), params, reply: tx }).is_ok(),
        None => false,
    };
    tokio::spawn(async move {
        let outcome = if method == "ping" {
            Ok(json!({}))
        } else if !delivered {
            Err(error_object(jsonrpc::METHOD_NOT_FOUND, format!("no client is waiting for {method}")))
        } else {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Err(error_object(jsonrpc::INTERNAL_ERROR, "the client went away")),
                Err(_) => Err(error_object(jsonrpc::REQUEST_TIMEOUT, "the client did not answer in time")),
            }
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
                let mut events = SseByteStream::new(r.bytes_stream());
                loop {
                    let next = tokio::select! {
                        _ = inner.stop.cancelled() => return,
                        n = events.next() => n,
                    };
                    let Some(Ok(event)) = next else { break };
                    let Some(data) = event.data else { continue };
                    let Ok(value) = serde_json::from_str::<Value>(&data) else { continue };
                    match Message::from_value(value) {
                        Ok(Message::Notification(n)) => {
                            let _ = inner.ctx.notifications.send(ServerNotification {
                                server: inner.ctx.server.clone(),
                                method: n.method,
                                params: n.params,
                            });
                        }
                        Ok(Message::Request(r)) => relay_request(&inner, r.id, r.method, r.params, None),
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
