//! What the conformance gate exempts through a stdio upstream, tested
//! deterministically instead.
//!
//! A stdio server speaks the session-based protocol to Bastion and sees
//! Bastion's capabilities, not those of the stateless (2026-07-28) client
//! that made the call. Bastion refuses every server request the client did
//! not declare the capability for; it never forwards one. The suite's
//! `input-required-result-capability-check` scenario observes that refusal
//! only through a race (see docs/conformance.md), so the gate does not
//! score its check through the stdio upstream: these tests cover it.

use serde_json::{Value, json};

use crate::harness::{Gateway, HttpFixture, META_CAPABILITIES, META_VERSION, Mcp, Reply, STATELESS};

/// Capabilities a client can declare, and the method that needs each.
const NEEDS: &[(&str, &str)] = &[("sampling", "sampling/createMessage"), ("elicitation", "elicitation/create")];

/// A gateway with the fixture twice: `fixture` over Streamable HTTP (it
/// speaks 2026-07-28 itself) and `fixture-stdio` as a child process (it
/// speaks the session-based version; Bastion bridges).
fn gateway(remote: &HttpFixture) -> (Gateway, String) {
    let gw = Gateway::start(json!({
        "mcpServers": {
            "fixture": {"url": remote.url, "type": "streamable-http"},
            "fixture-stdio": {"command": crate::harness::fixture_bin(), "args": ["everything", "--stdio"]}
        }
    }));
    let key = gw.create_key("alice", &[]);
    (gw, key)
}

/// A stateless `tools/call` declaring `capabilities`.
async fn call(gw: &Gateway, key: &str, server: &str, tool: &str, capabilities: Value) -> Reply {
    let client = Mcp::stateless(gw.url(&format!("/mcp/{server}")), key);
    client
        .post(&json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {
                "name": tool,
                "arguments": {},
                "_meta": {META_VERSION: STATELESS, META_CAPABILITIES: capabilities}
            }
        }))
        .await
}

/// Methods of the server requests that reached the client in `reply`: as
/// messages of their own, or as input requests of an `InputRequiredResult`.
fn requests_seen(reply: &Reply) -> Vec<String> {
    let mut seen = Vec::new();
    for m in reply.messages() {
        if m.get("id").is_some()
            && let Some(method) = m.get("method").and_then(Value::as_str)
        {
            seen.push(method.to_string());
        }
        if let Some(requests) = m.pointer("/result/inputRequests").and_then(Value::as_object) {
            seen.extend(requests.values().filter_map(|r| r["method"].as_str()).map(str::to_string));
        }
    }
    seen
}

/// Asserts `reply` is the -32021 refusal naming `capability`.
fn assert_missing_capability(reply: &Reply, capability: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}: HTTP {} {}", reply.status, reply.text);
    let rpc = reply.rpc();
    assert_eq!(rpc["id"], json!(7), "{what}: {rpc}");
    assert_eq!(rpc["error"]["code"], json!(-32021), "{what}: {rpc}");
    let message = rpc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Missing required client capability"), "{what}: {rpc}");
    let required = rpc["error"]["data"]["requiredCapabilities"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no data.requiredCapabilities object: {rpc}"));
    assert!(required.contains_key(capability), "{what}: {capability} not named: {rpc}");
}

/// A client that did not declare sampling calls a tool that cannot work
/// without it: the same -32021 answer whether the server checks the
/// client's capabilities itself (HTTP upstream) or asks for a sample and
/// Bastion refuses it (stdio upstream); the request never reaches the client.
#[tokio::test]
async fn a_tool_that_needs_an_undeclared_capability_fails_with_missing_capability() {
    let remote = HttpFixture::start();
    let (mut gw, key) = gateway(&remote);
    for server in ["fixture", "fixture-stdio"] {
        for declared in [json!({}), json!({"elicitation": {}}), json!({"roots": {}})] {
            let what = format!("{server}, declaring {declared}");
            let reply = call(&gw, &key, server, "test_missing_capability", declared).await;
            assert_missing_capability(&reply, "sampling", &what);
            assert!(requests_seen(&reply).is_empty(), "{what}: a server request reached the client: {}", reply.text);
        }
        // Declared, it works: the refusal is about the capability, not the tool.
        let reply = call(&gw, &key, server, "test_missing_capability", json!({"sampling": {}})).await;
        let what = format!("{server}, declaring sampling");
        assert_eq!(reply.status, 200, "{what}: {}", reply.text);
        let rpc = reply.rpc();
        assert!(rpc.get("error").is_none(), "{what}: {rpc}");
        let result = &rpc["result"];
        if result["resultType"] == "input_required" {
            // Through the bridge the server's sampling request comes back
            // as an input request, and only that one.
            assert_eq!(requests_seen(&reply), vec!["sampling/createMessage".to_string()], "{what}: {rpc}");
        } else {
            assert_ne!(result["isError"], json!(true), "{what}: {rpc}");
        }
    }
    gw.stop();
}

/// The capability-check scenario's call, through the stdio upstream: the
/// client declares sampling but not elicitation. The server (seeing
/// Bastion's capabilities) asks for both at once; whichever of its two
/// requests Bastion meets first, the client is never asked to elicit. It
/// gets the sampling request alone, or — when the server gave up on the
/// refused elicitation before its sampling request was taken up — the
/// -32021 answer naming elicitation. Repeated, since the order varies.
#[tokio::test]
async fn undeclared_capabilities_are_never_asked_of_a_stateless_client_through_a_stdio_upstream() {
    let remote = HttpFixture::start();
    let (mut gw, key) = gateway(&remote);
    for (capability, method) in NEEDS {
        let declared = json!({ *capability: {} });
        let (other, other_method) = NEEDS.iter().find(|(c, _)| c != capability).copied().expect("two capabilities");
        for round in 0..10 {
            let what = format!("declaring only {capability}, round {round}");
            let reply =
                call(&gw, &key, "fixture-stdio", "test_input_required_result_capabilities", declared.clone()).await;
            let seen = requests_seen(&reply);
            assert!(
                !seen.iter().any(|m| m == other_method),
                "{what}: {other_method} reached a client that did not declare {other}: {}",
                reply.text
            );
            let rpc = reply.rpc();
            if rpc.get("error").is_some() {
                assert_missing_capability(&reply, other, &what);
            } else {
                assert_eq!(reply.status, 200, "{what}: {}", reply.text);
                assert_eq!(rpc["result"]["resultType"], "input_required", "{what}: {rpc}");
                assert_eq!(seen, vec![method.to_string()], "{what}: {rpc}");
            }
        }
    }
    // Both declared: both requests reach the client.
    let reply = call(
        &gw,
        &key,
        "fixture-stdio",
        "test_input_required_result_capabilities",
        json!({"sampling": {}, "elicitation": {}}),
    )
    .await;
    let mut seen = requests_seen(&reply);
    seen.sort();
    assert_eq!(seen, vec!["elicitation/create", "sampling/createMessage"], "declaring both: {}", reply.text);
    gw.stop();
}
