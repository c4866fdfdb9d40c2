//! Authentication: bearer API keys, their revocation and expiry, sessions
//! bound to their creator, and the refusal to run without authentication
//! off loopback.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, Options, Reply, WAIT, bastion_bin, eventually, http, real, run_bounded};

fn discover() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    }}})
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> Reply {
    let mut b = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28");
    if let Some(m) = body["method"].as_str() {
        b = b.header("mcp-method", m);
    }
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    Reply::read(b.body(body.to_string()).send().await.expect("POST")).await
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: challenge {challenge:?}");
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{what}: {:?}", r.headers);
    let body = r.json();
    assert!(body["error"].is_string(), "{what}: JSON error body: {body}");
}

fn assert_invalid_token(r: &Reply, what: &str) {
    assert_unauthorized(r, what);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"error="invalid_token""#), "{what}: challenge {challenge:?}");
}

#[tokio::test]
async fn a_request_without_a_key_gets_401_with_a_challenge() {
    let s = real();
    let r = post(&s.gw.url("/mcp"), None, &discover()).await;
    assert_unauthorized(&r, "POST /mcp without a key");
    let r = post(&s.gw.url("/mcp/time"), None, &discover()).await;
    assert_unauthorized(&r, "POST /mcp/time without a key");
    let r =
        Reply::read(http().get(s.gw.url("/sse")).header("accept", "text/event-stream").send().await.expect("GET /sse"))
            .await;
    assert_unauthorized(&r, "GET /sse without a key");
    // With the key the same request passes.
    let r = post(&s.gw.url("/mcp"), Some(&s.alice), &discover()).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_wrong_key_gets_invalid_token() {
    let s = real();
    let forged = format!("bst_{}", "A".repeat(43));
    let r = post(&s.gw.url("/mcp"), Some(&forged), &discover()).await;
    assert_invalid_token(&r, "a well-formed unknown key");
    let r = post(&s.gw.url("/mcp"), Some("not-a-key"), &discover()).await;
    assert_invalid_token(&r, "a malformed key");
    // One character changed in a real key.
    let mut tampered = s.alice.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'x' { 'y' } else { 'x' });
    let r = post(&s.gw.url("/mcp"), Some(&tampered), &discover()).await;
    assert_invalid_token(&r, "a tampered key");
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_cache_ttl() {
    let s = real();
    let key = s.gw.create_key("revoke-me", &[]);
    let r = post(&s.gw.url("/mcp"), Some(&key), &discover()).await;
    assert_eq!(r.status, 200, "the new key works: {}", r.text);
    let id = s.gw.key_id("revoke-me");
    let out = s.gw.cli(&["keys", "revoke", &id]);
    assert!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    let url = s.gw.url("/mcp");
    let r = eventually(Duration::from_secs(10), "the revoked key to be refused", || async {
        let r = post(&url, Some(&key), &discover()).await;
        (r.status != 200).then_some(r)
    })
    .await;
    assert_invalid_token(&r, "a revoked key");
    // Revoking twice is an error.
    let out = s.gw.cli(&["keys", "revoke", &id]);
    assert!(!out.status.success(), "a second revoke succeeded");
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let s = real();
    let key = s.gw.create_key("expires-soon", &["--expires", "1s"]);
    let url = s.gw.url("/mcp");
    let r = eventually(Duration::from_secs(10), "the expired key to be refused", || async {
        let r = post(&url, Some(&key), &discover()).await;
        (r.status != 200).then_some(r)
    })
    .await;
    assert_invalid_token(&r, "an expired key");
    let out = s.gw.cli(&["keys", "list", "--json", "--user", "expires-soon"]);
    let listed: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line");
    assert_eq!(listed["state"], "expired", "{listed}");
}

#[tokio::test]
async fn a_session_is_invisible_to_another_user() {
    let s = real();
    let alice = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-11-25").await;
    let sid = alice.session.clone().expect("session id");
    let bob = Mcp::with_session(s.gw.url("/mcp"), &s.bob, &sid);

    let r = bob.request("tools/list", json!({})).await;
    assert_eq!(r.status, 404, "bob using alice's session: {}", r.text);
    let r = bob.request("ping", json!({})).await;
    assert_eq!(r.status, 404, "bob using alice's session: {}", r.text);
    let get = Reply::read(
        http()
            .get(s.gw.url("/mcp"))
            .bearer_auth(&s.bob)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(get.status, 404, "bob opening alice's stream: {}", get.text);
    let del = Reply::read(
        http()
            .delete(s.gw.url("/mcp"))
            .bearer_auth(&s.bob)
            .header("mcp-session-id", &sid)
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_eq!(del.status, 404, "bob deleting alice's session: {}", del.text);

    // Alice's session is untouched.
    let rpc = alice.call("ping", json!({})).await;
    assert!(rpc.get("result").is_some(), "alice's session still works: {rpc}");
}

#[tokio::test]
async fn a_legacy_sse_session_is_invisible_to_another_user() {
    let s = real();
    let mut stream = http()
        .get(s.gw.url("/sse"))
        .bearer_auth(&s.alice)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(stream.status(), 200);
    let endpoint = tokio::time::timeout(WAIT, async {
        let mut seen = String::new();
        while let Some(chunk) = stream.chunk().await.expect("SSE chunk") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(line) = seen.lines().find_map(|l| l.strip_prefix("data:"))
                && seen.contains("\n\n")
            {
                return line.trim().to_string();
            }
        }
        panic!("the SSE stream ended without an endpoint event: {seen:?}");
    })
    .await
    .expect("endpoint event in time");
    assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let send = |token: &str| {
        http()
            .post(s.gw.url(&endpoint))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(ping.clone())
            .send()
    };
    let r = Reply::read(send(&s.bob).await.expect("POST")).await;
    assert_eq!(r.status, 404, "bob posting to alice's legacy session: {}", r.text);
    let r = Reply::read(send(&s.alice).await.expect("POST")).await;
    assert_eq!(r.status, 202, "alice posting to her legacy session: {}", r.text);
}

fn refuses_insecure(config: Value, serve_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bastion.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let out = run_bounded(
        std::process::Command::new(bastion_bin())
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .arg("--insecure-no-auth")
            .args(serve_args)
            .current_dir(dir.path())
            .env("BASTION_LOG", "info"),
        WAIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve --insecure-no-auth off loopback must exit non-zero; stderr:\n{stderr}");
    assert!(stderr.contains("insecure-no-auth"), "the message names the flag: {stderr}");
    assert!(!stderr.contains("bastion ready"), "it must never serve: {stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let port = free_port();
    refuses_insecure(json!({"listen": format!("0.0.0.0:{port}")}), &[]);
    // The same with the address given on the command line.
    let port = free_port();
    refuses_insecure(json!({"listen": "127.0.0.1:1"}), &["--listen", &format!("0.0.0.0:{port}")]);
}

#[tokio::test]
async fn no_auth_on_loopback_serves_without_keys() {
    let gw = Gateway::start_with(
        json!({"mcpServers": {}}),
        Options { serve_args: vec!["--insecure-no-auth".into()], ..Options::default() },
    );
    assert!(gw.log().contains("AUTHENTICATION IS DISABLED"), "a loud warning: {}", gw.log());
    let r = post(&gw.url("/mcp"), None, &discover()).await;
    assert_eq!(r.status, 200, "{}", r.text);
}
