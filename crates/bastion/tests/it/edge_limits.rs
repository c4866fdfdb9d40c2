//! The HTTP edge's own limits, through the real binary: request heads that
//! take too long or are too large, idle connections, the connection cap,
//! HTTP/2 with prior knowledge and its stream cap, body limits on every
//! POST route, and Host/Origin lists that follow a reload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::harness::{Gateway, Reply, WAIT, collect, eventually, fixture_echo, http, open_legacy_sse};

/// How long a client that is *not* to be served is watched: long enough
/// that an answer would have come, short enough for a test.
const NOT_SERVED: Duration = Duration::from_millis(1500);
/// Room on top of a configured timeout before a test calls it missed.
const SLACK: Duration = Duration::from_secs(10);

fn config(http: Value) -> Value {
    json!({"mcpServers": {"echo": fixture_echo("echo")}, "http": http})
}

// ---------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------

async fn connect(g: &Gateway) -> TcpStream {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", g.port)))
        .await
        .expect("connect in time")
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one HTTP/1.1 response (its head, and a body of Content-Length
/// bytes); `None` when the connection ends first.
async fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned());
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// `GET /healthz` on a kept-alive connection; the answer.
async fn healthz_on(s: &mut TcpStream) -> String {
    s.write_all(HEALTHZ).await.expect("write request");
    tokio::time::timeout(WAIT, read_response(s)).await.expect("an answer in time").expect("an answer")
}

/// Whether the peer closes the connection (end of stream or reset) within
/// `within`; anything it sends meanwhile is read and dropped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 1024];
    let read_to_end = async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// An HTTP/2 connection with prior knowledge, driven in the background;
/// the task ends when the connection does.
async fn h2_connect(g: &Gateway) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = connect(g).await;
    let (send, conn) = tokio::time::timeout(WAIT, h2::client::handshake(tcp))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// An HTTP/2 `GET` with extra headers; its status and body, or the stream's
/// error.
async fn h2_get(
    send: &mut h2::client::SendRequest<Bytes>,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), h2::Error> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let ready = tokio::time::timeout(WAIT, send.clone().ready()).await.expect("a stream in time")?;
    *send = ready;
    let (resp, _) = send.send_request(b.body(()).expect("request"), true)?;
    let resp = tokio::time::timeout(WAIT, resp).await.expect("an HTTP/2 answer in time")?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(data) = tokio::time::timeout(WAIT, body.data()).await.expect("the body in time") {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// A legacy HTTP+SSE stream (`GET /sse`) read in the background; its
/// session id.
async fn legacy_stream(
    g: &Gateway,
    client: &reqwest::Client,
    key: &str,
) -> (String, Arc<Mutex<String>>, JoinHandle<()>) {
    let (seen, reader, endpoint) = open_legacy_sse(client, &g.url("/sse"), key).await;
    let session = endpoint.split("sessionId=").nth(1).expect("a session id in the endpoint").to_string();
    (session, seen, reader)
}

fn ping(id: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string()
}

// ---------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_trickling_its_request_head_is_cut_off_before_the_request_is_handled() {
    let g = Gateway::start(config(json!({"header_read_timeout": "2s", "idle_connection_timeout": "10m"})));
    // At one byte a second this head would be whole after 25 s, and then
    // be answered (403: no Host) and logged, were it not cut off.
    let head = b"GET /trickle HTTP/1.1\r\n\r\n";
    let mut s = connect(&g).await;
    let started = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        sent += 1;
        if closed_within(&mut s, Duration::from_secs(1)).await {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "a connection trickling its head was still open after the whole head ({sent} bytes, {elapsed:?})");
    assert!(sent < head.len(), "the head was sent whole ({elapsed:?})");
    assert!(elapsed < Duration::from_secs(2) + SLACK, "cut off only after {elapsed:?}");
    assert!(!g.log().contains("/trickle"), "the trickled request was handled:\n{}", g.log());

    let r = Reply::read(http().get(g.url("/healthz")).send().await.expect("GET /healthz")).await;
    assert_eq!(r.status, 200, "the gateway keeps serving: {}", r.text);
}

// HTTP/2 clients answer the gateway's shutdown (GOAWAY, PING) on their own
// thread while the test's thread waits for the gateway to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_oversized_request_head_gets_431_and_the_gateway_keeps_serving() {
    // 6000 bytes: below the smallest HTTP/1 read buffer of the server
    // library (8 KiB), so the edge's own count is what refuses 7000.
    let g = Gateway::start(config(json!({"max_header_bytes": 6000})));
    let just_over = "a".repeat(7000);
    let far_over = "a".repeat(200_000);

    let r = Reply::read(http().get(g.url("/healthz")).header("x-big", &just_over).send().await.expect("GET")).await;
    assert_eq!(r.status, 431, "a head just over the limit: {}", r.text);

    let mut s = connect(&g).await;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {far_over}\r\n\r\n");
    // The gateway may stop reading and close before the whole head is sent.
    let _ = s.write_all(request.as_bytes()).await;
    // An answer must be 431; closing without one refuses the head as well.
    let answer = tokio::time::timeout(WAIT, read_response(&mut s)).await.expect("an answer or a close in time");
    if let Some(answer) = answer {
        assert!(answer.starts_with("HTTP/1.1 431"), "a head far over the limit: {answer}");
    }

    // HTTP/2: the same limit, counted the same way by the edge; far over it
    // the stream is refused by the protocol layer (431 or a reset).
    let (mut send, _driver) = h2_connect(&g).await;
    let url = g.url("/healthz");
    let (status, body) = h2_get(&mut send, &url, &[("x-big", &just_over)]).await.expect("an HTTP/2 answer");
    assert_eq!(status, 431, "HTTP/2, a head just over the limit: {body}");
    let far = h2_get(&mut send, &url, &[("x-big", &far_over)]).await;
    assert!(!matches!(far, Ok((200, _))), "HTTP/2, a head far over the limit was served: {far:?}");

    let r = Reply::read(http().get(g.url("/healthz")).send().await.expect("GET /healthz")).await;
    assert_eq!(r.status, 200, "the gateway keeps serving: {}", r.text);
    let (mut send, _driver) = h2_connect(&g).await;
    assert_eq!(h2_get(&mut send, &url, &[]).await.expect("HTTP/2 after").0, 200);
}

// ---------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_and_an_open_event_stream_is_not() {
    let idle = Duration::from_secs(1);
    let g = Gateway::start(config(json!({"idle_connection_timeout": "1s"})));
    let key = g.create_key("idler", &[]);
    let client = http();
    let (session, seen, reader) = legacy_stream(&g, &client, &key).await;
    let opened = Instant::now();

    let mut s = connect(&g).await;
    let answer = healthz_on(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "the answer ends the connection itself: {answer}"
    );
    assert!(
        closed_within(&mut s, idle + SLACK).await,
        "an idle kept-alive connection outlived idle_connection_timeout"
    );

    // The event stream, open for several idle periods, still carries messages.
    tokio::time::sleep((3 * idle).saturating_sub(opened.elapsed())).await;
    assert!(!reader.is_finished(), "the event stream was cut: {:?}", seen.lock().expect("poisoned"));
    let r = Reply::read(
        client
            .post(g.url(&format!("/messages?sessionId={session}")))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(ping("still-there"))
            .send()
            .await
            .expect("POST /messages"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    eventually(WAIT, "the ping's answer on the event stream", || {
        let seen = seen.clone();
        async move { seen.lock().expect("poisoned").contains("still-there").then_some(()) }
    })
    .await;
    reader.abort();
}

// HTTP/2 clients answer the gateway's shutdown (GOAWAY, PING) on their own
// thread while the test's thread waits for the gateway to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_idle_http2_connection_is_closed() {
    let g = Gateway::start(config(json!({"idle_connection_timeout": "1s"})));
    let (mut send, driver) = h2_connect(&g).await;
    let (status, _) = h2_get(&mut send, &g.url("/healthz"), &[]).await.expect("HTTP/2 GET");
    assert_eq!(status, 200);
    // The client keeps its handle: only the gateway can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(1) + SLACK, driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection outlived idle_connection_timeout");
    drop(send);
}

// HTTP/2 clients answer the gateway's shutdown (GOAWAY, PING) on their own
// thread while the test's thread waits for the gateway to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_http2_connection_carrying_an_event_stream_is_not_idle() {
    let idle = Duration::from_secs(1);
    let g = Gateway::start(config(json!({"idle_connection_timeout": "1s"})));
    let key = g.create_key("streamer", &[]);
    let (mut send, driver) = h2_connect(&g).await;
    let bearer = format!("Bearer {key}");
    let req = http::Request::get(g.url("/sse"))
        .header("authorization", &bearer)
        .header("accept", "text/event-stream")
        .body(())
        .expect("request");
    send = tokio::time::timeout(WAIT, send.ready()).await.expect("ready in time").expect("ready");
    let (resp, _) = send.send_request(req, true).expect("GET /sse");
    let resp = tokio::time::timeout(WAIT, resp).await.expect("an answer in time").expect("GET /sse");
    assert_eq!(resp.status(), 200);
    let mut events = resp.into_body();
    let first = tokio::time::timeout(WAIT, events.data()).await.expect("the endpoint event in time");
    assert!(first.is_some_and(|d| d.is_ok()), "the event stream ended at once");

    // Several idle periods later the connection still takes new streams:
    // had it been taken for idle, it would have been told to go away.
    tokio::time::sleep(3 * idle).await;
    assert!(!driver.is_finished(), "the connection was closed under an open event stream");
    let (status, _) = h2_get(&mut send, &g.url("/healthz"), &[]).await.expect("a new stream on the same connection");
    assert_eq!(status, 200);
    drop(events);
}

// ---------------------------------------------------------------------------
// The connection cap
// ---------------------------------------------------------------------------

/// Asserts that a connection that sent `GET /healthz` gets no answer (and
/// is not closed) for a while.
async fn not_served(s: &mut TcpStream, what: &str) {
    let early = tokio::time::timeout(NOT_SERVED, read_response(s)).await;
    assert!(early.is_err(), "{what} was served (or closed): {early:?}");
}

async fn served(s: &mut TcpStream, what: &str) {
    let answer = tokio::time::timeout(WAIT, read_response(s)).await.unwrap_or_else(|_| panic!("{what}: no answer"));
    let answer = answer.unwrap_or_else(|| panic!("{what}: connection closed"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer}");
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes_or_the_limit_grows() {
    let g = Gateway::start(config(json!({"max_connections": 2})));
    let mut a = connect(&g).await;
    assert!(healthz_on(&mut a).await.starts_with("HTTP/1.1 200"));
    let mut b = connect(&g).await;
    assert!(healthz_on(&mut b).await.starts_with("HTTP/1.1 200"));

    // The third connection is made (the listen backlog) but not accepted.
    let mut c = connect(&g).await;
    c.write_all(HEALTHZ).await.expect("write");
    not_served(&mut c, "a third connection with max_connections = 2").await;
    g.wait_for_log("connection limit reached").await;
    drop(a);
    served(&mut c, "the third connection once the first closed").await;

    // A fourth waits too, until a reload raises the limit.
    let mut d = connect(&g).await;
    d.write_all(HEALTHZ).await.expect("write");
    not_served(&mut d, "a fourth connection with two open and max_connections = 2").await;
    g.write_config(&config(json!({"max_connections": 3})));
    g.sighup();
    served(&mut d, "the fourth connection after max_connections became 3").await;
    drop((b, c, d));
}

// ---------------------------------------------------------------------------
// HTTP/2 with prior knowledge
// ---------------------------------------------------------------------------

// HTTP/2 clients answer the gateway's shutdown (GOAWAY, PING) on their own
// thread while the test's thread waits for the gateway to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn http2_with_prior_knowledge_is_served_and_its_streams_are_capped() {
    let g = Gateway::start(config(json!({"http2_max_concurrent_streams": 2})));
    let key = g.create_key("h2c", &[]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");

    // An MCP request over h2c.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bastion-it", "version": "0"}}});
    let resp = client
        .post(g.url("/mcp/echo"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .expect("initialize over h2c");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("mcp-session-id").is_some(), "{r:?}");
    assert_eq!(r.rpc()["result"]["serverInfo"]["name"], "bastion-fixture-echo", "{}", r.text);

    // What the gateway announces.
    let (mut send, _driver) = h2_connect(&g).await;
    assert_eq!(h2_get(&mut send, &g.url("/healthz"), &[]).await.expect("HTTP/2 GET").0, 200);
    assert_eq!(send.current_max_send_streams(), 2, "SETTINGS_MAX_CONCURRENT_STREAMS");

    // A client that keeps to it queues: two event streams hold the
    // connection's streams, a third request waits for one of them to end.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let resp = client
            .get(g.url("/sse"))
            .bearer_auth(&key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET /sse over h2c");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        streams.push(collect(resp));
    }
    let third = tokio::spawn({
        let client = client.clone();
        let url = g.url("/healthz");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(NOT_SERVED).await;
    assert!(!third.is_finished(), "a third stream was served while two were open: {:?}", third.await);
    let (_, first_reader) = streams.remove(0);
    first_reader.abort();
    let status = tokio::time::timeout(WAIT, third).await.expect("the third request once a stream ended");
    assert_eq!(status.expect("task").expect("GET /healthz"), 200);
    for (_, reader) in streams {
        reader.abort();
    }
}

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_bodies_get_413_on_every_post_route_with_or_without_a_length() {
    let g = Gateway::start(config(json!({"max_body_bytes": 1024})));
    let key = g.create_key("bulky", &[]);
    let client = http();
    let (session, _seen, reader) = legacy_stream(&g, &client, &key).await;
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(4096)}}).to_string();

    // The gateway closes a connection whose body it did not read: no
    // connection is reused from one case to the next.
    let fresh = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().expect("reqwest client");
    let messages = format!("/messages?sessionId={session}");
    // `/mcp` with a Content-Length is `bad_input::an_oversized_body_is_413`.
    let cases: [(&str, bool); 5] =
        [("/mcp", false), ("/mcp/echo", true), ("/mcp/echo", false), (&messages, true), (&messages, false)];
    for (path, with_length) in cases {
        let body = if with_length {
            reqwest::Body::from(big.clone())
        } else {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                big.as_bytes().chunks(700).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        };
        let resp = fresh
            .post(g.url(path))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let r = Reply::read(resp).await;
        let framing = if with_length { "Content-Length" } else { "chunked" };
        assert_eq!(r.status, 413, "POST {path} ({framing}): {}", r.text);
        assert_eq!(r.json()["error"]["code"], -32600, "{}", r.text);
    }
    reader.abort();
}

/// A refusal sent before the request body arrived says the connection
/// closes, so a client does not send its next request (the same one, with
/// a token) into a connection the gateway is closing. A request answered
/// after its body was read, even with a refusal, keeps the connection.
#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_the_connection_and_says_so() {
    let g = Gateway::start(config(json!({})));
    let key = g.create_key("keeper", &[]);
    let body = ping("kept");

    // The head alone; the body is still on its way when the refusal goes out.
    let mut s = connect(&g).await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let answer =
        tokio::time::timeout(WAIT, read_response(&mut s)).await.expect("an answer in time").expect("an answer");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 401"), "{answer}");
    assert!(lower.contains("connection: close"), "the refusal does not say the connection closes: {answer}");
    assert!(closed_within(&mut s, WAIT).await, "the connection stayed open");

    // The whole request, with a key, refused for want of a session once its
    // body was read: the connection is kept.
    let mut s = connect(&g).await;
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write request");
    let answer =
        tokio::time::timeout(WAIT, read_response(&mut s)).await.expect("an answer in time").expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("Mcp-Session-Id"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(healthz_on(&mut s).await.starts_with("HTTP/1.1 200"), "the connection was not kept");
}

// ---------------------------------------------------------------------------
// Host and Origin lists
// ---------------------------------------------------------------------------

async fn status_with(g: &Gateway, host: &str, origin: Option<&str>) -> u16 {
    let mut b = http().get(g.url("/healthz")).header("host", host);
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    b.send().await.expect("GET /healthz").status().as_u16()
}

#[tokio::test]
async fn host_and_origin_lists_follow_a_reload() {
    let lists = |hosts: Value, origins: Value| config(json!({"allowed_hosts": hosts, "allowed_origins": origins}));
    let g = Gateway::start(lists(json!([]), json!([])));
    let local = format!("127.0.0.1:{}", g.port);
    let (app, evil) = ("https://app.example.com", "https://evil.example");

    assert_eq!(status_with(&g, &local, None).await, 200, "loopback by default");
    assert_eq!(status_with(&g, "mcp.example.com", None).await, 403, "a foreign Host by default");
    assert_eq!(status_with(&g, &local, Some(app)).await, 403, "a foreign Origin by default");

    g.write_config(&lists(json!(["mcp.example.com"]), json!([app])));
    g.sighup();
    eventually(WAIT, "the reloaded Host list to apply", || async {
        (status_with(&g, "mcp.example.com", None).await == 200).then_some(())
    })
    .await;
    assert_eq!(status_with(&g, "mcp.example.com:443", Some(app)).await, 200, "a listed Origin");
    assert_eq!(status_with(&g, "mcp.example.com", Some(evil)).await, 403, "an unlisted Origin");
    assert_eq!(status_with(&g, &local, None).await, 403, "the list replaces the loopback default");
}
