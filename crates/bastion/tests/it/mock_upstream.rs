//! An MCP server over Streamable HTTP inside the test process, on raw
//! HTTP/1.1, that records every request it receives — request line,
//! headers and body — so tests can see exactly what Bastion sends to an
//! upstream. It speaks the session-based protocol, and the stateless
//! 2026-07-28 version too when asked (it then answers `server/discover`, so
//! Bastion passes stateless clients through to it).
//!
//! Tools: `echo {text}`; `log_levels`, which sends one `notifications/message`
//! at every MCP log level on the call's event stream before its result;
//! `typed {region, count, flag}`, whose arguments are mirrored in
//! `Mcp-Param-Region` (string), `Mcp-Param-Count` (integer) and
//! `Mcp-Param-Flag` (boolean); `fail`, which answers a JSON-RPC error.
//!
//! It can also misbehave on purpose ([`Behaviour`]): answer every request
//! with an HTTP error whose body repeats the request target, with a body that
//! is not JSON, with 404 (not a Streamable HTTP endpoint), or not at all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head or body the mock reads.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How long a hanging mock keeps a connection without answering.
const HANG_FOR: Duration = Duration::from_secs(60);

/// The MCP log levels, least severe first.
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// The session id the mock hands out on `initialize`.
pub const MOCK_SESSION: &str = "mock-session-0001";

/// What the mock does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// A working MCP server.
    Normal,
    /// Every request answered with this HTTP status and a body that repeats
    /// the request target (query included).
    HttpError(u16),
    /// Every POST answered 200 with a body that is not JSON.
    NotJson,
    /// Every request answered 404, as by something that is not an MCP endpoint.
    NotFound,
    /// Requests are read and never answered.
    Hang,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Everything received, as text: request line, headers and body.
    pub fn raw(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.target);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s.push('\n');
        s.push_str(&self.body);
        s
    }
}

struct State {
    stateless: bool,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock server, on a thread of its own (so it outlives any one
/// test's runtime); stops when dropped.
pub struct MockUpstream {
    /// `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    pub port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl MockUpstream {
    /// Starts a mock on a free loopback port. `stateless`: it also speaks
    /// 2026-07-28.
    pub fn start(stateless: bool, behaviour: Behaviour) -> MockUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock upstream");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(State { stateless, behaviour: Mutex::new(behaviour), requests: Mutex::new(Vec::new()) });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        std::thread::Builder::new()
            .name(format!("mock-upstream-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("mock runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else { return };
                            tokio::spawn(serve_connection(stream, serving.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime ends the connections still served.
            })
            .expect("spawn the mock upstream thread");
        MockUpstream { url: format!("http://127.0.0.1:{port}/mcp"), port, state, stop: Some(stop_tx) }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("poisoned").clone()
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.state.behaviour.lock().expect("poisoned") = b;
    }
}

/// Reads one request (head and body) from `stream`; `None` on EOF or junk.
async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return None;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if let Some(len) = find("content-length").and_then(|l| l.parse::<usize>().ok()) {
        if len > MAX_REQUEST_BYTES {
            return None;
        }
        while rest.len() < len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        read_chunked(stream, rest).await?
    } else {
        Vec::new()
    };
    Some(Recorded { method, target, headers, body: String::from_utf8_lossy(&body).to_string() })
}

/// Decodes a chunked body, `buf` holding what was already read.
async fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > MAX_REQUEST_BYTES {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if body.len() + size > MAX_REQUEST_BYTES {
            return None;
        }
        while buf.len() < line_end + 2 + size + 2 {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}

/// An HTTP/1.1 response; the connection closes after it.
fn response(status: u16, content_type: Option<&str>, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn json_answer(body: &Value, extra: &[(&str, &str)]) -> Vec<u8> {
    response(200, Some("application/json"), extra, &body.to_string())
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let Some(req) = read_request(&mut stream).await else { return };
    state.requests.lock().expect("poisoned").push(req.clone());
    let behaviour = *state.behaviour.lock().expect("poisoned");
    let out = match behaviour {
        Behaviour::Hang => {
            tokio::time::sleep(HANG_FOR).await;
            return;
        }
        Behaviour::HttpError(status) => {
            response(status, Some("text/plain"), &[], &format!("upstream failure while serving {}", req.target))
        }
        Behaviour::NotFound => response(404, Some("text/plain"), &[], &format!("no MCP endpoint at {}", req.target)),
        Behaviour::NotJson if req.method == "POST" => {
            response(200, Some("application/json"), &[], &format!("this is not JSON: {}", req.target))
        }
        Behaviour::NotJson | Behaviour::Normal => match req.method.as_str() {
            "POST" => return answer_post(stream, &state, &req).await,
            "DELETE" => response(200, None, &[], ""),
            _ => response(405, None, &[("allow", "POST, DELETE")], ""),
        },
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

fn tools() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns its text.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        },
        {
            "name": "log_levels",
            "description": "Logs one message at every level, then returns.",
            "inputSchema": {"type": "object", "properties": {}}
        },
        {
            "name": "typed",
            "description": "Returns its arguments; each is mirrored in an Mcp-Param header.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "region": {"type": "string", "x-mcp-header": "Region"},
                    "count": {"type": "integer", "x-mcp-header": "Count"},
                    "flag": {"type": "boolean", "x-mcp-header": "Flag"}
                }
            }
        },
        {
            "name": "fail",
            "description": "Answers a JSON-RPC error.",
            "inputSchema": {"type": "object", "properties": {}}
        }
    ])
}

fn text_content(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

async fn answer_post(mut stream: TcpStream, state: &State, req: &Recorded) {
    let out = post_answer(state, req);
    let _ = match out {
        Answer::Bytes(b) => stream.write_all(&b).await,
        Answer::Events(events) => {
            let mut body = String::new();
            for e in events {
                body.push_str(&format!("event: message\ndata: {e}\n\n"));
            }
            stream.write_all(&response(200, Some("text/event-stream"), &[], &body)).await
        }
    };
    let _ = stream.shutdown().await;
}

enum Answer {
    Bytes(Vec<u8>),
    Events(Vec<Value>),
}

fn post_answer(state: &State, req: &Recorded) -> Answer {
    let Ok(msg) = serde_json::from_str::<Value>(&req.body) else {
        let err = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}});
        return Answer::Bytes(response(400, Some("application/json"), &[], &err.to_string()));
    };
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return Answer::Bytes(response(202, None, &[], "")); // a response to a request of ours
    };
    let Some(id) = msg.get("id").cloned() else {
        return Answer::Bytes(response(202, None, &[], "")); // a notification
    };
    let stateless = req.header("mcp-protocol-version") == Some("2026-07-28");
    let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    let ok = |mut result: Value| {
        if stateless {
            result["resultType"] = Value::from("complete");
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    let err =
        |code: i64, message: &str| json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let capabilities = json!({"tools": {"listChanged": false}, "logging": {}});
    let server_info = json!({"name": "bastion-it-mock", "version": "1.0.0"});
    let answer = match method {
        "initialize" => {
            let version = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("2025-11-25");
            let result = json!({"protocolVersion": version, "capabilities": capabilities, "serverInfo": server_info});
            return Answer::Bytes(json_answer(&ok(result), &[("mcp-session-id", MOCK_SESSION)]));
        }
        "server/discover" if state.stateless => ok(json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": capabilities,
            "_meta": {"io.modelcontextprotocol/serverInfo": server_info}
        })),
        "server/discover" => {
            let e = err(-32600, "Bad Request: no valid session");
            return Answer::Bytes(response(400, Some("application/json"), &[], &e.to_string()));
        }
        "ping" | "logging/setLevel" => ok(json!({})),
        "tools/list" => ok(json!({"tools": tools()})),
        "tools/call" => {
            let args = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
            match params.get("name").and_then(Value::as_str) {
                Some("echo") => ok(text_content(args.get("text").and_then(Value::as_str).unwrap_or(""))),
                Some("typed") => ok(text_content(&args.to_string())),
                Some("fail") => err(-32603, "the mock failed on purpose"),
                Some("log_levels") => {
                    let mut events: Vec<Value> = LOG_LEVELS
                        .iter()
                        .map(|level| {
                            json!({
                                "jsonrpc": "2.0",
                                "method": "notifications/message",
                                "params": {"level": level, "logger": "mock", "data": format!("a {level} message")}
                            })
                        })
                        .collect();
                    events.push(ok(text_content("logged at every level")));
                    return Answer::Events(events);
                }
                _ => err(-32602, "unknown tool"),
            }
        }
        _ => err(-32601, "Method not found"),
    };
    Answer::Bytes(json_answer(&answer, &[]))
}
