//! Upstream failures: each gives the caller the right JSON-RPC error and
//! leaves other calls, sessions and servers alone. Also what a child
//! process may see (environment) and where its stderr goes.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{GATEWAY_SECRET, GRANTED, Mcp, WAIT, children_of, eventually, faults, real, tool_text};

fn error_code(rpc: &Value) -> Option<i64> {
    rpc["error"]["code"].as_i64()
}

#[tokio::test]
async fn a_crash_mid_call_fails_that_call_and_the_server_restarts() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let other = Mcp::session(s.gw.url("/mcp"), &s.bob, "2025-11-25").await;
    assert_eq!(tool_text(&m.call_tool("crashy__echo", json!({"text": "before"})).await), "before");
    assert_eq!(tool_text(&other.call_tool("steady__echo", json!({"text": "one"})).await), "one");
    let before = s.gw.child_tagged("crashy").expect("the crashy server runs").pid;

    let rpc = m.call_tool("crashy__crash", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32000), "a crash mid-call: {rpc}");
    assert!(!rpc.to_string().contains("bastion-fixture"), "no server stderr in a response: {rpc}");

    // Another session on another server did not notice.
    assert_eq!(tool_text(&other.call_tool("steady__echo", json!({"text": "two"})).await), "two");
    // The next call restarts the server (after the 100 ms backoff).
    let rpc = m.call_tool("crashy__echo", json!({"text": "after"})).await;
    assert_eq!(tool_text(&rpc), "after", "the call after a crash: {rpc}");
    let after = s.gw.child_tagged("crashy").expect("the crashy server runs again").pid;
    assert_ne!(before, after, "a new process");
    s.gw.wait_for_log("crash tool called").await;
}

#[tokio::test]
async fn a_hanging_call_times_out_with_32001() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    // `hang` has `callTimeout: 500ms`.
    let rpc = m.call_tool("hang__sleep", json!({"ms": 5000})).await;
    assert_eq!(error_code(&rpc), Some(-32001), "{rpc}");
    let session = Mcp::session(s.gw.url("/mcp/hang"), &s.alice, "2025-11-25").await;
    let rpc = session.call_tool("sleep", json!({"ms": 5000})).await;
    assert_eq!(error_code(&rpc), Some(-32001), "in a session on /mcp/hang: {rpc}");
    // The server itself is fine, and quick calls are not cut short.
    assert_eq!(tool_text(&m.call_tool("hang__echo", json!({"text": "alive"})).await), "alive");
    assert_eq!(tool_text(&m.call_tool("hang__sleep", json!({"ms": 10})).await), "slept 10 ms");
}

#[tokio::test]
async fn a_line_that_is_not_json_is_ignored() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    assert_eq!(tool_text(&m.call_tool("garbage__echo", json!({"text": "first"})).await), "first");
    let pid = s.gw.child_tagged("garbage").expect("garbage server runs").pid;
    let rpc = m.call_tool("garbage__garbage", json!({})).await;
    assert_eq!(tool_text(&rpc), "wrote a non-JSON line to stdout");
    let rpc = m.call_tool("garbage__echo", json!({"text": "next"})).await;
    assert_eq!(tool_text(&rpc), "next", "the call after the garbage line: {rpc}");
    assert!(!rpc.to_string().contains("not JSON-RPC"), "{rpc}");
    assert_eq!(s.gw.child_tagged("garbage").map(|p| p.pid), Some(pid), "the connection was kept");
}

#[tokio::test]
async fn a_missing_command_is_32000_and_other_servers_work() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let rpc = m.call_tool("missing__anything", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32000), "{rpc}");
    let own = Mcp::stateless(s.gw.url("/mcp/missing"), &s.alice);
    let rpc = own.call("tools/list", json!({})).await;
    assert_eq!(error_code(&rpc), Some(-32000), "tools/list on /mcp/missing: {rpc}");

    assert_eq!(tool_text(&m.call_tool("steady__echo", json!({"text": "fine"})).await), "fine");
    let tools = m.tool_names().await;
    assert!(tools.iter().any(|t| t == "steady__echo"), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("missing__")), "{tools:?}");
}

#[tokio::test]
async fn other_calls_complete_while_one_hangs() {
    let s = faults();
    let m = Arc::new(Mcp::stateless(s.gw.url("/mcp"), &s.alice));
    // Both servers running first, so only the calls themselves are measured.
    assert_eq!(tool_text(&m.call_tool("slow__echo", json!({"text": "warm"})).await), "warm");
    assert_eq!(tool_text(&m.call_tool("steady__echo", json!({"text": "warm"})).await), "warm");

    let long = tokio::spawn({
        let m = m.clone();
        async move { m.call_tool("slow__sleep", json!({"ms": 4000})).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let other_server = m.call_tool("steady__echo", json!({"text": "meanwhile"})).await;
    assert_eq!(tool_text(&other_server), "meanwhile");
    let same_server = m.call_tool("slow__echo", json!({"text": "same server"})).await;
    assert_eq!(tool_text(&same_server), "same server");
    assert!(!long.is_finished(), "the 4 s call was still running while the others completed");
    let rpc = long.await.expect("join");
    assert_eq!(tool_text(&rpc), "slept 4000 ms");
}

#[tokio::test]
async fn child_stderr_goes_to_the_log_not_to_clients() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let session = Mcp::session(s.gw.url("/mcp"), &s.alice, "2025-11-25").await;
    let mut responses = vec![m.call_tool("steady__echo", json!({"text": "x"})).await];
    responses.push(session.call_tool("steady__echo", json!({"text": "y"})).await);
    responses.push(session.call("tools/list", json!({})).await);
    s.gw.wait_for_log("bastion-fixture: echo server starting (stdio)").await;
    let log = s.gw.log();
    assert!(
        log.lines().any(|l| l.contains("bastion-fixture: echo server starting (stdio)") && l.contains("steady")),
        "the stderr line is logged with its server's name:\n{log}"
    );
    for r in responses {
        assert!(!r.to_string().contains("bastion-fixture"), "server stderr in a response: {r}");
    }
}

#[tokio::test]
async fn children_get_only_the_environment_the_config_grants() {
    let s = real();
    // Sanity: the gateway itself has the secret.
    let own = std::fs::read(format!("/proc/{}/environ", s.gw.pid())).expect("gateway environ");
    assert!(String::from_utf8_lossy(&own).contains(GATEWAY_SECRET.1), "the test set the secret on the gateway");

    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let rpc = m.call_tool("everything__get-env", json!({})).await;
    let text = tool_text(&rpc);
    let env: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("get-env is not JSON ({e}): {text}"));
    assert!(env.get(GATEWAY_SECRET.0).is_none(), "the gateway's own variable leaked to the server: {env}");
    assert!(!text.contains(GATEWAY_SECRET.1), "the secret's value leaked: {env}");
    assert_eq!(env[GRANTED.0], GRANTED.1, "the granted variable is passed: {env}");
    assert!(env.get("PATH").is_some(), "a PATH is provided: {env}");

    // The same seen from outside, for a fixture child.
    assert_eq!(tool_text(&m.call_tool("echo__echo", json!({"text": "x"})).await), "x");
    let child = eventually(WAIT, "the echo child", || async {
        children_of(s.gw.pid()).into_iter().find(|p| p.tag() == Some("echo"))
    })
    .await;
    assert_eq!(child.env_var(GATEWAY_SECRET.0), None, "{:?}", child.environ);
    assert_eq!(child.env_var("BASTION_IT_SERVER"), Some("echo"));
}

/// A stateless `tools/call` has its `Mcp-Param-*` headers checked against
/// the tool's definition; when the server cannot list its tools the check
/// cannot be made, and the call is refused rather than let through
/// unchecked. The session era has no such headers, but the tool's pin
/// cannot be checked either: refused too, unless the server is not pinned.
#[tokio::test]
async fn a_stateless_call_is_refused_when_its_tool_list_cannot_be_had() {
    let s = faults();
    let m = Mcp::stateless(s.gw.url("/mcp"), &s.alice);
    let rpc = m.call_tool("nolist__echo", json!({"text": "unchecked"})).await;
    assert_eq!(error_code(&rpc), Some(-32603), "the listing's error, not a result: {rpc}");
    assert!(rpc.get("result").is_none(), "{rpc}");

    let other = Mcp::session(s.gw.url("/mcp"), &s.bob, "2025-11-25").await;
    let rpc = other.call_tool("nolist__echo", json!({"text": "unpinned"})).await;
    assert_eq!(error_code(&rpc), Some(-32603), "the listing's error, not a result: {rpc}");
    assert_eq!(tool_text(&other.call_tool("unpinned__echo", json!({"text": "checked"})).await), "checked");
}
