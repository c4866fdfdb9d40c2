//! The security model's claims (docs/security.md), each checked end to end
//! against the real gateway: what reaches an upstream and what does not,
//! what the log never holds, failing closed when the store cannot answer,
//! restart backoff, the stateless log-level gate, and the lifetimes of keys.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Gateway, Mcp, Options, Reply, STATELESS, WAIT, eventually, fixture_bin, http, run_bounded, tool_text, tools,
};
use crate::mock_upstream::{Behaviour, LOG_LEVELS, MOCK_SESSION, MockUpstream};

// ---------------------------------------------------------------------------
// Requests carrying a client's own credentials and headers
// ---------------------------------------------------------------------------

/// A cookie the client sends with every request.
const CLIENT_COOKIE: &str = "client_session=client-cookie-secret-5f1e";
/// A header of the client's own that Bastion has no reason to forward.
const CLIENT_HEADER: (&str, &str) = ("x-client-secret", "client-header-secret-77aa");
/// A W3C trace context header: one of those forwarded to a stateless server.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// POSTs `body` with the client's key, cookie and own headers; with the
/// stateless version's headers when `stateless`, with `session` if given.
async fn post_as_client(url: &str, key: &str, session: Option<&str>, stateless: bool, body: &Value) -> Reply {
    let mut b = http()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("cookie", CLIENT_COOKIE)
        .header(CLIENT_HEADER.0, CLIENT_HEADER.1)
        .header("traceparent", TRACEPARENT);
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    if stateless {
        b = b.header("mcp-protocol-version", STATELESS);
        if let Some(m) = body["method"].as_str() {
            b = b.header("mcp-method", m);
        }
        if let Some(name) = body["params"]["name"].as_str() {
            b = b.header("mcp-name", name);
        }
    }
    Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
}

fn stateless_request(id: i64, method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"]["io.modelcontextprotocol/protocolVersion"] = Value::from(STATELESS);
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({});
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn echo_call(id: i64, tool: &str, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"text": text}}})
}

/// A session-era session opened with the client's cookie and headers.
async fn open_session(url: &str, key: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bastion-it", "version": "0"}
    }});
    let r = post_as_client(url, key, None, false, &init).await;
    assert_eq!(r.status, 200, "initialize at {url}: {}", r.text);
    let sid = r.header("mcp-session-id").expect("Mcp-Session-Id").to_string();
    let n =
        post_as_client(url, key, Some(&sid), false, &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    assert_eq!(n.status, 202, "initialized: {}", n.text);
    sid
}

/// The text of an echo call's answer (panics on anything else).
fn echoed(r: &Reply, what: &str) -> String {
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    let rpc = r.rpc();
    assert!(rpc.get("result").is_some(), "{what}: {rpc}");
    tool_text(&rpc)
}

fn upstream_headers(name: &str) -> Value {
    json!({
        "Authorization": format!("Bearer upstream-token-for-{name}"),
        "X-Upstream-Key": format!("configured-upstream-header-{name}")
    })
}

/// The client's `Authorization` (its Bastion key), its cookies and its own
/// headers never reach an upstream — not through Bastion's own session with
/// the server, not through the stateless bridge, not through the stateless
/// pass-through — while the headers configured for the server reach it on
/// every request.
#[tokio::test]
async fn the_clients_credentials_never_reach_an_upstream() {
    // `pass` speaks 2026-07-28 (stateless clients of /mcp/pass are passed
    // through); `bridged` speaks only the session-based versions.
    let pass = MockUpstream::start(true, Behaviour::Normal);
    let bridged = MockUpstream::start(false, Behaviour::Normal);
    let gw = Gateway::start(json!({"mcpServers": {
        // The data guard off: what it reads is never passed through unread.
        "pass": {"url": pass.url, "type": "streamable-http", "headers": upstream_headers("pass"), "guard": {"enabled": false}},
        "bridged": {"url": bridged.url, "type": "streamable-http", "headers": upstream_headers("bridged")}
    }}));
    let key = gw.create_key("claims", &[]);
    let all = gw.url("/mcp");
    let one = |name: &str| gw.url(&format!("/mcp/{name}"));

    // The session era, on the aggregate endpoint and on one server's.
    let sid = open_session(&all, &key).await;
    let list =
        post_as_client(&all, &key, Some(&sid), false, &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let r = post_as_client(&all, &key, Some(&sid), false, &echo_call(2, "pass__echo", "session-aggregate-pass")).await;
    assert_eq!(echoed(&r, "session, /mcp, pass"), "session-aggregate-pass");
    let r = post_as_client(&all, &key, Some(&sid), false, &echo_call(3, "bridged__echo", "session-aggregate-bridged"))
        .await;
    assert_eq!(echoed(&r, "session, /mcp, bridged"), "session-aggregate-bridged");
    let sid_pass = open_session(&one("pass"), &key).await;
    let r = post_as_client(&one("pass"), &key, Some(&sid_pass), false, &echo_call(4, "echo", "session-single")).await;
    assert_eq!(echoed(&r, "session, /mcp/pass"), "session-single");

    // The stateless version: bridged on the aggregate endpoint and for a
    // session-only server, passed through to the server that speaks it.
    let call =
        |id, tool: &str, text: &str| stateless_request(id, "tools/call", echo_call(id, tool, text)["params"].clone());
    let r = post_as_client(&all, &key, None, true, &call(5, "pass__echo", "stateless-aggregate")).await;
    assert_eq!(echoed(&r, "stateless, /mcp"), "stateless-aggregate");
    let r = post_as_client(&one("bridged"), &key, None, true, &call(6, "echo", "stateless-bridged")).await;
    assert_eq!(echoed(&r, "stateless, /mcp/bridged"), "stateless-bridged");
    let r = post_as_client(&one("pass"), &key, None, true, &stateless_request(7, "tools/list", json!({}))).await;
    assert_eq!(r.status, 200, "stateless tools/list passed through: {}", r.text);
    let r = post_as_client(&one("pass"), &key, None, true, &call(8, "echo", "stateless-passthrough")).await;
    assert_eq!(echoed(&r, "stateless, /mcp/pass"), "stateless-passthrough");

    // The pass-through really happened: the server got the client's own
    // request, with its protocol headers and the trace context.
    let pass_seen = pass.requests();
    let forwarded = pass_seen
        .iter()
        .find(|r| r.body.contains("stateless-passthrough"))
        .unwrap_or_else(|| panic!("the passed-through call never reached the server: {pass_seen:#?}"));
    assert_eq!(forwarded.header("mcp-method"), Some("tools/call"), "{}", forwarded.raw());
    assert_eq!(forwarded.header("mcp-protocol-version"), Some(STATELESS), "{}", forwarded.raw());
    assert!(forwarded.body.contains("io.modelcontextprotocol/protocolVersion"), "the client's body as it is");
    assert_eq!(forwarded.header("traceparent"), Some(TRACEPARENT), "trace context is forwarded");
    assert_eq!(forwarded.header("mcp-session-id"), None, "a stateless request carries no session");
    // And the session-era calls went over Bastion's own session.
    let own = pass_seen.iter().find(|r| r.body.contains("session-single")).expect("the session-era call");
    assert_eq!(own.header("mcp-session-id"), Some(MOCK_SESSION), "{}", own.raw());
    for text in ["session-aggregate-bridged", "stateless-bridged"] {
        assert!(bridged.requests().iter().any(|r| r.body.contains(text)), "{text} reached the session-only server");
    }

    for (name, mock) in [("pass", &pass), ("bridged", &bridged)] {
        let seen = mock.requests();
        assert!(seen.len() >= 4, "{name}: initialize, initialized, list, calls: {seen:#?}");
        let configured = upstream_headers(name);
        for r in &seen {
            let raw = r.raw();
            assert!(!raw.contains(&key), "{name}: the client's key reached the server:\n{raw}");
            assert!(!raw.contains("client-cookie-secret"), "{name}: the client's cookie reached the server:\n{raw}");
            assert!(!raw.contains(CLIENT_HEADER.1), "{name}: the client's own header reached the server:\n{raw}");
            assert_eq!(r.header("cookie"), None, "{name}: {raw}");
            assert_eq!(
                r.header("authorization"),
                configured["Authorization"].as_str(),
                "{name}: only the configured Authorization:\n{raw}"
            );
            assert_eq!(r.header("x-upstream-key"), configured["X-Upstream-Key"].as_str(), "{name}: {raw}");
        }
    }
}

// ---------------------------------------------------------------------------
// Secrets of the configuration never in the log
// ---------------------------------------------------------------------------

const URL_PASSWORD: &str = "url-password-9c41";
const URL_TOKEN: &str = "url-query-token-3e7d";
const HEADER_SECRET: &str = "header-secret-b08f";
const HEADER_SECRET_2: &str = "api-key-header-secret-51c2";
const SECRETS: [&str; 4] = [URL_PASSWORD, URL_TOKEN, HEADER_SECRET, HEADER_SECRET_2];

fn secret_url(port: u16) -> String {
    format!("http://bastion-user:{URL_PASSWORD}@127.0.0.1:{port}/mcp?token={URL_TOKEN}")
}

/// A remote server entry whose URL and headers carry secrets.
fn secret_server(port: u16, kind: Option<&str>) -> Value {
    let mut s = json!({
        "url": secret_url(port),
        "headers": {"Authorization": format!("Bearer {HEADER_SECRET}"), "X-Api-Key": HEADER_SECRET_2},
        "callTimeout": "2s"
    });
    if let Some(k) = kind {
        s["type"] = Value::from(k);
    }
    s
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn assert_no_secret(text: &str, what: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} holds the secret {s:?}:\n{text}");
    }
}

/// Configured upstream headers and URLs (credentials in the URL's user
/// info and query) appear neither in the log nor in what clients get —
/// whether the server works, is down, hangs, answers HTTP errors, answers
/// something that is not JSON, or is not an MCP endpoint at all. The
/// gateway logs at debug level here, to cover every line it can write.
#[tokio::test]
async fn upstream_headers_and_urls_never_reach_the_log() {
    let working = MockUpstream::start(true, Behaviour::Normal);
    let erroring = MockUpstream::start(false, Behaviour::HttpError(500));
    let not_json = MockUpstream::start(false, Behaviour::NotJson);
    let not_mcp = MockUpstream::start(false, Behaviour::NotFound);
    let hanging = MockUpstream::start(false, Behaviour::Hang);
    let gw = Gateway::start_with(
        json!({
            "mcpServers": {
                "working": secret_server(working.port, Some("streamable-http")),
                "erroring": secret_server(erroring.port, Some("streamable-http")),
                "notjson": secret_server(not_json.port, Some("streamable-http")),
                "notmcp": secret_server(not_mcp.port, None),
                "hanging": secret_server(hanging.port, Some("streamable-http")),
                "down": secret_server(closed_port(), None),
                "downsse": secret_server(closed_port(), Some("sse"))
            },
            "upstream": {"start_timeout": "2s", "connect_timeout": "2s", "restart_backoff": "50ms", "restart_backoff_max": "100ms"}
        }),
        Options { env: vec![("BASTION_LOG".into(), "debug".into())], ..Options::default() },
    );
    let key = gw.create_key("claims", &[]);
    let mut answers = Vec::new();

    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let stateless = Mcp::stateless(gw.url("/mcp"), &key);
    let rpc = session.call_tool("working__echo", json!({"text": "fine"})).await;
    assert_eq!(tool_text(&rpc), "fine", "the working server answers");
    for server in ["erroring", "notjson", "notmcp", "hanging", "down", "downsse"] {
        for m in [&session, &stateless] {
            let rpc = m.call_tool(&format!("{server}__echo"), json!({"text": "x"})).await;
            assert!(rpc.get("error").is_some(), "{server} cannot answer: {rpc}");
            answers.push(rpc.to_string());
        }
        let own = Mcp::stateless(gw.url(&format!("/mcp/{server}")), &key);
        let r = own.request("tools/list", json!({})).await;
        answers.push(r.text);
    }
    answers.push(session.call("tools/list", json!({})).await.to_string());

    // The working server fails in its turn, on an open connection: HTTP
    // errors, then something that is not JSON, in both eras and through the
    // stateless pass-through.
    let passthrough = Mcp::stateless(gw.url("/mcp/working"), &key);
    assert_eq!(tool_text(&passthrough.call_tool("echo", json!({"text": "direct"})).await), "direct");
    for b in [Behaviour::HttpError(502), Behaviour::NotJson, Behaviour::HttpError(401)] {
        working.set_behaviour(b);
        answers.push(session.call_tool("working__echo", json!({"text": "x"})).await.to_string());
        answers.push(stateless.call_tool("working__echo", json!({"text": "x"})).await.to_string());
        // Passed through, the server's own answer reaches the client as it
        // is (this one repeats its request target): only the log is checked.
        let _ = passthrough.request("tools/call", json!({"name": "echo", "arguments": {"text": "x"}})).await;
    }
    working.set_behaviour(Behaviour::Normal);

    let log = gw.log();
    // The failures were logged: the log was looked at where secrets could be.
    for server in ["erroring", "notjson", "notmcp", "hanging", "down", "downsse"] {
        let named = [format!("server={server} "), format!("server=\"{server}\"")];
        assert!(
            log.lines().any(|l| l.contains("WARN") && named.iter().any(|n| l.contains(n.as_str()))),
            "the failure of {server} is in the log:\n{log}"
        );
    }
    assert!(log.contains("upstream call failed"), "failed calls on the open connection are logged:\n{log}");
    assert_no_secret(&log, "the log");
    for a in &answers {
        assert_no_secret(a, "an answer to a client");
    }
    assert!(!log.contains(&key), "the client's key is never logged");
}

/// A configuration that is refused on reload is reported in the log by
/// the key at fault, without the secrets the entry holds (a mistyped scheme
/// in a URL that carries credentials).
#[tokio::test]
async fn a_refused_configuration_does_not_log_its_upstream_secrets() {
    let gw = Gateway::start_with(json!({"mcpServers": {}}), Options { config_via_symlink: true, ..Options::default() });
    let url = format!("htps://bastion-user:{URL_PASSWORD}@127.0.0.1:1/mcp?token={URL_TOKEN}");
    gw.write_config(&json!({"mcpServers": {"typo": {
        "url": url,
        "headers": {"Authorization": format!("Bearer {HEADER_SECRET}")}
    }}}));
    gw.sighup();
    gw.wait_for_log("configuration not reloaded").await;
    let log = gw.log();
    assert!(log.contains("mcpServers.typo.url"), "the key at fault is named:\n{log}");
    assert_no_secret(&log, "the log");
}

// ---------------------------------------------------------------------------
// Store outage: fail closed
// ---------------------------------------------------------------------------

/// The database file of a gateway.
fn database(gw: &Gateway) -> std::path::PathBuf {
    gw.config_path.parent().expect("config dir").join("data/bastion.db")
}

/// Makes the store unreadable for a running gateway: every page is moved
/// from the write-ahead log into the database file (a checkpoint, from a
/// separate SQLite process), then the file's header is overwritten, then
/// the shared-memory index's header too. The last step is what makes every
/// gateway connection drop its cached pages: one that read the database
/// between the checkpoint and the overwrite (the change feed polls) would
/// otherwise keep answering from its cache. SQLite rebuilds that index
/// from the (empty) log. Returns the header, to put back.
fn break_store(db: &std::path::Path) -> Vec<u8> {
    let script = r#"
import os, sqlite3, sys, time
path = sys.argv[1]
con = sqlite3.connect(path, timeout=5)
for _ in range(100):
    busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy == 0:
        break
    time.sleep(0.05)
else:
    sys.exit("the checkpoint stayed busy")
fd = os.open(path, os.O_RDWR)
header = os.pread(fd, 100, 0)
os.pwrite(fd, b"\0" * 100, 0)
os.fsync(fd)
os.close(fd)
shm = os.open(path + "-shm", os.O_RDWR)
os.pwrite(shm, b"\0" * 96, 0)
os.close(shm)
con.close()
print(header.hex())
"#;
    let out = run_bounded(std::process::Command::new(tools().python).arg("-c").arg(script).arg(db), WAIT);
    assert!(out.status.success(), "breaking the store: {}", String::from_utf8_lossy(&out.stderr));
    let hex = String::from_utf8(out.stdout).expect("utf-8");
    let hex = hex.trim();
    assert_eq!(hex.len(), 200, "the saved header: {hex:?}");
    (0..100).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

/// Puts the header back, then writes to the database from a separate
/// SQLite process (the same `user_version` again), which tells the
/// gateway's connections to drop the pages they cached while it was broken.
fn restore_store(db: &std::path::Path, header: &[u8]) {
    let script = r#"
import os, sqlite3, sys
path, header = sys.argv[1], bytes.fromhex(sys.argv[2])
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, header, 0)
os.fsync(fd)
os.close(fd)
con = sqlite3.connect(path, timeout=5)
version = con.execute("PRAGMA user_version").fetchone()[0]
con.execute("PRAGMA user_version = %d" % version)
con.commit()
con.close()
"#;
    let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
    let out = run_bounded(std::process::Command::new(tools().python).arg("-c").arg(script).arg(db).arg(hex), WAIT);
    assert!(out.status.success(), "restoring the store: {}", String::from_utf8_lossy(&out.stderr));
}

fn discover() -> Value {
    stateless_request(1, "server/discover", json!({}))
}

async fn post_discover(gw: &Gateway, key: &str) -> Reply {
    let m = Mcp::stateless(gw.url("/mcp"), key);
    m.post(&discover()).await
}

async fn readyz(gw: &Gateway) -> Reply {
    Reply::read(http().get(gw.url("/readyz")).send().await.expect("GET /readyz")).await
}

/// A gateway whose store is about to fail, with a key the gateway has
/// never seen (so it is in no cache), and the store's saved header.
struct Outage {
    gw: Gateway,
    key: String,
    db: std::path::PathBuf,
    header: Vec<u8>,
}

async fn outage() -> Outage {
    let gw = Gateway::start(json!({"mcpServers": {}}));
    let key = gw.create_key("never-seen", &[]);
    let r = readyz(&gw).await;
    assert_eq!(r.status, 200, "ready before the outage: {}", r.text);
    let db = database(&gw);
    let header = break_store(&db);
    Outage { gw, key, db, header }
}

/// When the store cannot answer, a key that is not in the cache is refused
/// with 503 and a JSON body — never let through, never a crash — in every
/// era; once the store is back, the same key works.
#[tokio::test]
async fn a_store_outage_is_503_and_never_lets_a_request_through() {
    let o = outage().await;
    for attempt in 0..3 {
        let r = post_discover(&o.gw, &o.key).await;
        assert_eq!(r.status, 503, "attempt {attempt}: {}", r.text);
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", r.headers);
        let body = r.json();
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
        assert!(
            !r.header("www-authenticate").is_some_and(|c| c.contains("invalid_token")),
            "an outage does not call the key invalid: {:?}",
            r.headers
        );
    }
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bastion-it", "version": "0"}
    }});
    let r = Reply::read(
        http()
            .post(o.gw.url("/mcp"))
            .bearer_auth(&o.key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(init.to_string())
            .send()
            .await
            .expect("POST initialize"),
    )
    .await;
    assert_eq!(r.status, 503, "initialize during the outage: {}", r.text);
    r.json();
    let r = Reply::read(
        http()
            .get(o.gw.url("/sse"))
            .bearer_auth(&o.key)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(r.status, 503, "a legacy SSE stream during the outage: {}", r.text);
    r.json();
    assert!(o.gw.log().contains("key lookup failed"), "the outage is logged:\n{}", o.gw.log());
    let health = Reply::read(http().get(o.gw.url("/healthz")).send().await.expect("GET /healthz")).await;
    assert_eq!(health.status, 200, "the gateway is alive: {}", health.text);

    restore_store(&o.db, &o.header);
    let gw = &o.gw;
    let key = &o.key;
    let r = eventually(WAIT, "the key to work once the store is back", || async {
        let r = post_discover(gw, key).await;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "after the outage: {}", r.text);
}

/// Readiness follows the store: not ready (503) while it cannot answer a
/// key lookup, ready again once it can.
#[tokio::test]
async fn readiness_reports_a_store_outage() {
    let o = outage().await;
    let r = post_discover(&o.gw, &o.key).await;
    assert_eq!(r.status, 503, "the store is out: {}", r.text);
    let r = readyz(&o.gw).await;
    assert_eq!(r.status, 503, "/readyz while key lookups fail: {}", r.text);
    assert_eq!(r.json()["status"], "not ready", "{}", r.text);

    restore_store(&o.db, &o.header);
    let gw = &o.gw;
    eventually(WAIT, "/readyz to say ready again", || async { (readyz(gw).await.status == 200).then_some(()) }).await;
}

// ---------------------------------------------------------------------------
// Restart backoff
// ---------------------------------------------------------------------------

/// Wall-clock times of the log lines containing all of `needles`.
fn log_times(log: &str, needles: &[&str]) -> Vec<chrono::DateTime<chrono::FixedOffset>> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(stamp).unwrap_or_else(|e| panic!("no timestamp ({e}) in {l:?}"))
        })
        .collect()
}

/// A stdio server that exits as soon as it starts.
fn dying_server() -> Value {
    json!({"command": "/bin/sh", "args": ["-c", "echo dying-at-start >&2; exit 3"]})
}

fn assert_unavailable(rpc: &Value, server: &str, what: &str) {
    assert_eq!(rpc["error"]["code"], -32000, "{what}: {rpc}");
    let message = rpc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(server), "{what}: the message names the server: {rpc}");
    assert!(!rpc.to_string().contains("dying-at-start"), "{what}: no server stderr in an answer: {rpc}");
}

/// A server that dies at every start is restarted after delays that double
/// from `restart_backoff` and stop growing at `restart_backoff_max`, as the
/// start times in the log show; every call meanwhile, including concurrent
/// ones, gets a clear JSON-RPC error rather than hanging.
#[tokio::test]
async fn restart_delays_grow_and_are_capped() {
    const BACKOFF: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(1);
    const STARTS: usize = 8;
    let gw = Gateway::start(json!({
        "mcpServers": {"dead": dying_server()},
        "upstream": {"restart_backoff": "200ms", "restart_backoff_max": "1s"}
    }));
    let key = gw.create_key("claims", &[]);
    let m = Mcp::stateless(gw.url("/mcp/dead"), &key);
    let started = |gw: &Gateway| log_times(&gw.log(), &["upstream process started", "server=dead"]);

    let deadline = Instant::now() + Duration::from_secs(60);
    for call in 0..3 * STARTS {
        if started(&gw).len() >= STARTS {
            break;
        }
        assert!(Instant::now() < deadline, "{STARTS} starts took more than a minute:\n{}", gw.log());
        let rpc = tokio::time::timeout(WAIT, m.call("tools/list", json!({})))
            .await
            .unwrap_or_else(|_| panic!("call {call} hung"));
        assert_unavailable(&rpc, "dead", &format!("call {call}"));
    }
    let starts = started(&gw);
    assert!(starts.len() >= STARTS, "{} starts:\n{}", starts.len(), gw.log());
    assert!(gw.log().contains("dying-at-start"), "the server's stderr went to the log");

    // The delay after the n-th failure is BACKOFF·2^(n-1), at most CAP.
    let mut gaps = Vec::new();
    for (n, pair) in starts.windows(2).enumerate().take(STARTS - 1) {
        let gap = (pair[1] - pair[0]).to_std().expect("starts in order");
        let delay = BACKOFF.saturating_mul(1u32 << n).min(CAP);
        // Log times have microsecond resolution; allow for clock rounding.
        assert!(
            gap + Duration::from_millis(5) >= delay,
            "start {} came {gap:?} after the previous one, before its {delay:?} delay:\n{}",
            n + 2,
            gw.log()
        );
        gaps.push(gap);
    }
    // Capped: uncapped, the delays before starts 6 to 8 would be 3.2 s to
    // 12.8 s. With the cap they stay near 1 s; 3 s leaves room for a slow start.
    for (n, gap) in gaps.iter().enumerate().skip(4) {
        assert!(*gap < Duration::from_secs(3), "delay before start {} not capped: {gap:?} (all: {gaps:?})", n + 2);
    }

    // Several calls in a backoff window: each gets the error, none hangs.
    let calls = (0..3).map(|_| {
        let m = Mcp::stateless(gw.url("/mcp/dead"), &key);
        async move { tokio::time::timeout(WAIT, m.call("tools/list", json!({}))).await }
    });
    for (i, outcome) in futures::future::join_all(calls).await.into_iter().enumerate() {
        let rpc = outcome.unwrap_or_else(|_| panic!("concurrent call {i} hung"));
        assert_unavailable(&rpc, "dead", &format!("concurrent call {i}"));
    }
}

/// When the next restart is further away than a start may take, a call is
/// refused at once with an error saying so, and the server is not started
/// for it.
#[tokio::test]
async fn a_call_during_a_long_backoff_is_refused_without_a_start() {
    let gw = Gateway::start(json!({
        "mcpServers": {"dead": dying_server()},
        "upstream": {"restart_backoff": "30s", "restart_backoff_max": "30s", "start_timeout": "2s"}
    }));
    let key = gw.create_key("claims", &[]);
    let m = Mcp::stateless(gw.url("/mcp/dead"), &key);
    let rpc = m.call("tools/list", json!({})).await;
    assert_unavailable(&rpc, "dead", "the first call");
    let starts = log_times(&gw.log(), &["upstream process started", "server=dead"]).len();
    assert_eq!(starts, 1, "one start:\n{}", gw.log());
    for i in 0..3 {
        let rpc = tokio::time::timeout(WAIT, m.call("tools/list", json!({})))
            .await
            .unwrap_or_else(|_| panic!("call {i} in the backoff window hung"));
        assert_unavailable(&rpc, "dead", &format!("call {i} in the backoff window"));
        let message = rpc["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("retry in"), "the error says when the server restarts: {rpc}");
    }
    let starts = log_times(&gw.log(), &["upstream process started", "server=dead"]).len();
    assert_eq!(starts, 1, "no start inside the backoff window:\n{}", gw.log());
}

// ---------------------------------------------------------------------------
// The stateless log-level gate
// ---------------------------------------------------------------------------

/// Levels of the `notifications/message` in an answer, in order.
fn log_levels_in(r: &Reply) -> Vec<String> {
    r.messages()
        .iter()
        .filter(|m| m["method"] == "notifications/message")
        .map(|m| m["params"]["level"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A stateless request gets log messages only when its `_meta` names a log
/// level, and then only at that level and above. The server (reached over
/// a session-based connection, so Bastion bridges) logs at every level.
#[tokio::test]
async fn stateless_log_messages_follow_the_requested_level() {
    let logs = MockUpstream::start(false, Behaviour::Normal);
    let gw = Gateway::start(json!({"mcpServers": {
        "logs": {"url": logs.url, "type": "streamable-http"},
        "everything": {"command": fixture_bin(), "args": ["everything", "--stdio"]}
    }}));
    let key = gw.create_key("claims", &[]);
    let level_meta = |level: Option<&str>| match level {
        Some(l) => json!({"_meta": {"io.modelcontextprotocol/logLevel": l}}),
        None => json!({}),
    };
    for (path, tool) in [("/mcp", "logs__log_levels"), ("/mcp/logs", "log_levels")] {
        let m = Mcp::stateless(gw.url(path), &key);
        for level in [None, Some("debug"), Some("warning"), Some("error"), Some("emergency")] {
            let mut params = level_meta(level);
            params["name"] = Value::from(tool);
            params["arguments"] = json!({});
            let r = m.request("tools/call", params).await;
            assert_eq!(r.status, 200, "{path} {level:?}: {}", r.text);
            assert_eq!(tool_text(&r.rpc()), "logged at every level", "{path} {level:?}");
            let expected: Vec<String> = match level {
                None => Vec::new(),
                Some(min) => {
                    let from = LOG_LEVELS.iter().position(|l| *l == min).expect("a level");
                    LOG_LEVELS[from..].iter().map(|l| l.to_string()).collect()
                }
            };
            assert_eq!(log_levels_in(&r), expected, "{path} with logLevel {level:?}: {}", r.text);
        }
    }
    // The fixture's tool logs three `info` messages.
    let m = Mcp::stateless(gw.url("/mcp"), &key);
    for (level, count) in [(None, 0), (Some("info"), 3), (Some("error"), 0)] {
        let mut params = level_meta(level);
        params["name"] = Value::from("everything__test_tool_with_logging");
        params["arguments"] = json!({});
        let r = m.request("tools/call", params).await;
        assert_eq!(r.status, 200, "{level:?}: {}", r.text);
        assert!(r.rpc().get("result").is_some(), "{level:?}: {}", r.text);
        assert_eq!(log_levels_in(&r), vec!["info".to_string(); count], "logLevel {level:?}: {}", r.text);
    }
}

// ---------------------------------------------------------------------------
// Key lifetimes
// ---------------------------------------------------------------------------

fn assert_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"error="invalid_token""#), "{what}: {challenge:?}");
    assert_eq!(r.json()["error"], "invalid_token", "{what}");
}

/// A key with a short lifetime works until it expires, and is refused from
/// then on — even though it sits in the authentication cache.
#[tokio::test]
async fn a_key_works_until_it_expires_then_stops() {
    let gw = Gateway::start(json!({"mcpServers": {}, "auth": {"key_cache_ttl": "1h"}}));
    let key = gw.create_key("short-lived", &["--expires", "6s"]);
    let r = post_discover(&gw, &key).await;
    assert_eq!(r.status, 200, "the key works before it expires: {}", r.text);
    let r = post_discover(&gw, &key).await;
    assert_eq!(r.status, 200, "and again (from the cache): {}", r.text);

    let out = gw.cli(&["keys", "list", "--json", "--user", "short-lived"]);
    let listed: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line");
    let expires_at = chrono::DateTime::parse_from_rfc3339(listed["expires_at"].as_str().expect("expires_at"))
        .expect("an RFC 3339 time")
        .with_timezone(&chrono::Utc);
    let left = (expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
    assert!(left <= Duration::from_secs(6), "expires within its lifetime: {listed}");
    // Past the expiry (with slack for clock rounding), the key is refused.
    tokio::time::sleep(left + Duration::from_millis(300)).await;
    let r = post_discover(&gw, &key).await;
    assert_refused(&r, "an expired key");
    let r = post_discover(&gw, &key).await;
    assert_refused(&r, "an expired key, again");
}

/// A revoked key is refused within `auth.key_cache_ttl` of the revocation:
/// every request sent from the TTL on (with 500 ms of slack) is refused,
/// even while the key was cached as valid.
#[tokio::test]
async fn a_revoked_key_is_refused_within_the_cache_ttl() {
    const TTL: Duration = Duration::from_secs(1);
    let gw = Gateway::start(json!({"mcpServers": {}, "auth": {"key_cache_ttl": "1s"}}));
    let key = gw.create_key("revoked-soon", &[]);
    let id = gw.key_id("revoked-soon");
    for i in 0..2 {
        let r = post_discover(&gw, &key).await;
        assert_eq!(r.status, 200, "request {i} before the revocation: {}", r.text);
    }
    let out = gw.cli(&["keys", "revoke", &id]);
    assert!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    let revoked = Instant::now();
    let deadline = revoked + TTL + Duration::from_millis(500);

    // Requests may pass until the cached entry is older than the TTL; none
    // sent after the deadline may.
    let mut refused = None;
    for _ in 0..200 {
        let sent = Instant::now();
        let r = post_discover(&gw, &key).await;
        if r.status != 200 {
            refused = Some((sent, r));
            break;
        }
        assert!(sent < deadline, "a request sent {:?} after the revocation was accepted", sent - revoked);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sent, r) = refused.expect("refused in the end");
    assert!(sent < deadline, "first refusal only for a request sent {:?} after the revocation", sent - revoked);
    assert_refused(&r, "a revoked key");
    // From then on, always refused.
    for i in 0..3 {
        assert_refused(&post_discover(&gw, &key).await, &format!("a revoked key, request {i} after the first refusal"));
    }
}
