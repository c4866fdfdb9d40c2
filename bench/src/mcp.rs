//! A minimal MCP client over Streamable HTTP, just enough to load a server:
//! both protocol eras, JSON or SSE answers, no retries and no extras.
//!
//! * Session era: `initialize`, then `notifications/initialized`, then
//!   requests carrying `Mcp-Session-Id` (when the server issued one) and
//!   `MCP-Protocol-Version`.
//! * Stateless era (`2026-07-28`): no handshake; every request carries the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers and the
//!   version, client capabilities and client info in `params._meta`.

use std::fmt;
use std::time::Duration;

use bastion_core::protocol::{self, meta};
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The session-era version the client asks for.
pub const SESSION_VERSION: &str = protocol::LATEST_SESSION_VERSION;
const CLIENT_NAME: &str = "bastion-bench";

/// Why one exchange failed, coarse enough to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection, reset, or a body that broke off.
    Transport(String),
    /// The request did not complete within the timeout.
    Timeout,
    /// An HTTP status other than the expected one.
    Status(u16),
    /// A JSON-RPC error response.
    Rpc(i64),
    /// A `tools/call` result with `isError: true`.
    Tool,
    /// A body that is not the expected JSON-RPC response.
    Protocol(&'static str),
}

impl CallError {
    /// A short key for error counts.
    pub fn kind(&self) -> String {
        match self {
            CallError::Transport(_) => "transport".into(),
            CallError::Timeout => "timeout".into(),
            CallError::Status(s) => format!("http_{s}"),
            CallError::Rpc(c) => format!("rpc_{c}"),
            CallError::Tool => "tool_error".into(),
            CallError::Protocol(_) => "protocol".into(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Status(s) => write!(f, "HTTP status {s}"),
            CallError::Rpc(c) => write!(f, "JSON-RPC error {c}"),
            CallError::Tool => write!(f, "tool returned isError"),
            CallError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

fn transport(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else {
        // The innermost cause says most (connection refused, reset…).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = s.to_string();
            src = s.source();
        }
        CallError::Transport(msg)
    }
}

/// Where and how to reach a server.
#[derive(Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    base_headers: HeaderMap,
    /// Replaces the client's timeout for this endpoint's exchanges.
    request_timeout: Option<Duration>,
}

impl Endpoint {
    /// `timeout` bounds each exchange, body included. `pool` is the number
    /// of idle connections kept per host (at least the concurrency).
    pub fn new(url: &str, bearer: Option<&str>, timeout: Duration, pool: usize) -> anyhow::Result<Self> {
        Self::with_pool_idle(url, bearer, timeout, pool, Duration::from_secs(600))
    }

    /// As [`Endpoint::new`], with idle pooled connections dropped after
    /// `pool_idle`: shorter than the server's idle-connection timeout, a
    /// long run never sends on a connection the server is closing.
    pub fn with_pool_idle(
        url: &str,
        bearer: Option<&str>,
        timeout: Duration,
        pool: usize,
        pool_idle: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(pool_idle)
            .tcp_nodelay(true)
            .http1_only()
            .no_proxy()
            .build()?;
        let mut base_headers = HeaderMap::new();
        base_headers.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        if let Some(token) = bearer {
            base_headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}"))?);
        }
        Ok(Endpoint { client, url: reqwest::Url::parse(url)?, base_headers, request_timeout: None })
    }

    /// The same endpoint (and connection pool) with another bound on each
    /// exchange: a client that gives up on a call early.
    pub fn with_request_timeout(&self, timeout: Duration) -> Endpoint {
        Endpoint { request_timeout: Some(timeout), ..self.clone() }
    }

    async fn post(&self, headers: HeaderMap, body: Vec<u8>) -> Result<reqwest::Response, CallError> {
        let mut req = self
            .client
            .post(self.url.clone())
            .headers(self.base_headers.clone())
            .headers(headers)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = self.request_timeout {
            req = req.timeout(t);
        }
        req.send().await.map_err(transport)
    }

    /// A notification in a session; the server's `202` (or any 2xx).
    pub async fn notify(&self, session: &Session, method: &str, params: Value) -> Result<(), CallError> {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params});
        let resp = self.post(session.headers(), serde_json::to_vec(&body).expect("json")).await?;
        let status = resp.status();
        let _ = resp.bytes().await;
        if status.is_success() { Ok(()) } else { Err(CallError::Status(status.as_u16())) }
    }

    /// Opens the session's `GET` stream and returns it once the server has
    /// answered with an event stream; its body is the caller's to read.
    /// `limit` bounds the whole stream (the endpoint's timeout does not).
    pub async fn open_stream(&self, session: &Session, limit: Duration) -> Result<reqwest::Response, CallError> {
        let resp = self
            .client
            .get(self.url.clone())
            .headers(self.base_headers.clone())
            .headers(session.headers())
            .timeout(limit)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let _ = resp.bytes().await;
            return Err(CallError::Status(status.as_u16()));
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        if !is_sse {
            return Err(CallError::Protocol("GET answered without an event stream"));
        }
        Ok(resp)
    }

    /// Opens a session: `initialize` then `notifications/initialized`.
    /// Servers that issue no session id (stateless session-era servers) give
    /// a session without one.
    pub async fn initialize(&self) -> Result<Session, CallError> {
        let body = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": SESSION_VERSION,
                "capabilities": {},
                "clientInfo": {"name": CLIENT_NAME, "version": env!("CARGO_PKG_VERSION")}
            }
        });
        let resp = self.post(HeaderMap::new(), serde_json::to_vec(&body).expect("json")).await?;
        let session_id = resp.headers().get("mcp-session-id").cloned();
        let result = read_response(resp, &json!(0)).await?;
        let version = result.get("protocolVersion").and_then(Value::as_str).unwrap_or(SESSION_VERSION);
        let version =
            HeaderValue::from_str(version).map_err(|_| CallError::Protocol("invalid protocolVersion in the result"))?;
        let session = Session { id: session_id, version, next_id: 1 };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let resp = self.post(session.headers(), serde_json::to_vec(&note).expect("json")).await?;
        if !resp.status().is_success() {
            return Err(CallError::Status(resp.status().as_u16()));
        }
        // Drain whatever body there is so the connection can be reused.
        let _ = resp.bytes().await;
        Ok(session)
    }

    /// One request in a session; the `result` on success.
    pub async fn request(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, CallError> {
        let id = json!(session.next_id);
        session.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = self.post(session.headers(), serde_json::to_vec(&body).expect("json")).await?;
        let result = read_response(resp, &id).await?;
        check_tool_result(method, &result)?;
        Ok(result)
    }

    /// Ends a session (`DELETE`); servers without session ids are left alone.
    pub async fn close(&self, session: Session) -> Result<(), CallError> {
        if session.id.is_none() {
            return Ok(());
        }
        let mut req =
            self.client.delete(self.url.clone()).headers(self.base_headers.clone()).headers(session.headers());
        if let Some(t) = self.request_timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let _ = resp.bytes().await;
        // 405: the server does not let clients end sessions.
        if status.is_success() || status == StatusCode::METHOD_NOT_ALLOWED {
            Ok(())
        } else {
            Err(CallError::Status(status.as_u16()))
        }
    }

    /// One stateless (`2026-07-28`) request, `id` chosen by the caller.
    pub async fn stateless(&self, id: u64, method: &str, params: Value) -> Result<Value, CallError> {
        let mut params = match params {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            _ => return Err(CallError::Protocol("params must be an object")),
        };
        let name = match method {
            "tools/call" | "prompts/get" => params.get("name").and_then(Value::as_str).map(str::to_owned),
            "resources/read" => params.get("uri").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let meta_obj = params.entry("_meta").or_insert_with(|| json!({}));
        if let Value::Object(m) = meta_obj {
            m.insert(meta::PROTOCOL_VERSION.into(), json!(protocol::STATELESS_VERSION));
            m.insert(meta::CLIENT_CAPABILITIES.into(), json!({}));
            m.insert(meta::CLIENT_INFO.into(), json!({"name": CLIENT_NAME, "version": env!("CARGO_PKG_VERSION")}));
        }
        let mut headers = HeaderMap::new();
        headers.insert("mcp-protocol-version", HeaderValue::from_static(protocol::STATELESS_VERSION));
        headers.insert(
            "mcp-method",
            HeaderValue::from_str(method).map_err(|_| CallError::Protocol("method is not a header value"))?,
        );
        if let Some(name) = name {
            headers.insert(
                "mcp-name",
                HeaderValue::from_str(&name).map_err(|_| CallError::Protocol("name is not a header value"))?,
            );
        }
        let idv = json!(id);
        let body = json!({"jsonrpc": "2.0", "id": idv, "method": method, "params": params});
        let resp = self.post(headers, serde_json::to_vec(&body).expect("json")).await?;
        let result = read_response(resp, &idv).await?;
        check_tool_result(method, &result)?;
        Ok(result)
    }
}

/// An open session. A clone shares the session (its id and version) but
/// numbers its requests on its own.
#[derive(Clone)]
pub struct Session {
    /// `Mcp-Session-Id`, when the server issued one.
    pub id: Option<HeaderValue>,
    version: HeaderValue,
    next_id: u64,
}

impl Session {
    /// The id the next request of this session will carry.
    pub fn next_request_id(&self) -> u64 {
        self.next_id
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(id) = &self.id {
            h.insert("mcp-session-id", id.clone());
        }
        h.insert("mcp-protocol-version", self.version.clone());
        h
    }
}

fn check_tool_result(method: &str, result: &Value) -> Result<(), CallError> {
    if method == "tools/call" && result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(CallError::Tool);
    }
    Ok(())
}

/// The `result` of the response to `id`, from a JSON or an SSE body.
async fn read_response(resp: reqwest::Response, id: &Value) -> Result<Value, CallError> {
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if is_sse && status.is_success() {
        return read_sse(resp, id).await;
    }
    let body = resp.bytes().await.map_err(transport)?;
    // An error status with a JSON-RPC error body counts as that error.
    match serde_json::from_slice::<Value>(&body) {
        Ok(msg) if msg.get("error").is_some() || status.is_success() => outcome(msg, id, status),
        _ => Err(CallError::Status(status.as_u16())),
    }
}

fn outcome(mut msg: Value, id: &Value, status: StatusCode) -> Result<Value, CallError> {
    if let Some(err) = msg.get("error") {
        let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
        return Err(CallError::Rpc(code));
    }
    if !status.is_success() {
        return Err(CallError::Status(status.as_u16()));
    }
    if msg.get("id") != Some(id) {
        return Err(CallError::Protocol("response id does not match"));
    }
    msg.get_mut("result").map(Value::take).ok_or(CallError::Protocol("response without result"))
}

/// Reads SSE events until the response to `id` arrives; other messages
/// (progress, logging) are skipped.
async fn read_sse(resp: reqwest::Response, id: &Value) -> Result<Value, CallError> {
    let mut stream = resp.bytes_stream();
    let mut buf = BytesMut::new();
    let mut data = String::new();
    loop {
        // Handle every complete line in the buffer.
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1);
            let mut line = &line[..pos];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if !data.is_empty() {
                    if let Ok(msg) = serde_json::from_str::<Value>(&data)
                        && msg.get("id") == Some(id)
                    {
                        return outcome(msg, id, StatusCode::OK);
                    }
                    data.clear();
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(&String::from_utf8_lossy(rest));
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(chunk.chunk()),
            Some(Err(e)) => return Err(transport(e)),
            None => return Err(CallError::Protocol("event stream ended without the response")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_checks_id_and_error() {
        let id = json!(3);
        assert_eq!(
            outcome(json!({"jsonrpc": "2.0", "id": 3, "result": {"a": 1}}), &id, StatusCode::OK),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            outcome(json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32601}}), &id, StatusCode::OK),
            Err(CallError::Rpc(-32601))
        );
        assert!(matches!(
            outcome(json!({"jsonrpc": "2.0", "id": 4, "result": {}}), &id, StatusCode::OK),
            Err(CallError::Protocol(_))
        ));
    }

    #[test]
    fn tool_errors_are_errors() {
        assert_eq!(check_tool_result("tools/call", &json!({"isError": true})), Err(CallError::Tool));
        assert_eq!(check_tool_result("tools/list", &json!({"isError": true})), Ok(()));
    }
}
