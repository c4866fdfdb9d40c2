//! Configuration reload: on file change and on SIGHUP, keeping sessions and
//! the processes of unchanged servers; a bad file is reported and ignored.

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, Options, WAIT, collect, eventually, fixture_bin, fixture_echo, tool_text};

fn with_servers(servers: Value) -> Value {
    json!({"mcpServers": servers})
}

fn fixture_everything(tag: &str) -> Value {
    json!({"command": fixture_bin(), "args": ["everything", "--stdio"], "env": {"BASTION_IT_SERVER": tag}})
}

async fn wait_for_tool(m: &Mcp, tool: &str) -> Vec<String> {
    eventually(WAIT, &format!("{tool} in the session's tools/list"), || async {
        let names = m.tool_names().await;
        names.iter().any(|t| t == tool).then_some(names)
    })
    .await
}

#[tokio::test]
async fn a_changed_file_adds_a_server_to_open_sessions_and_keeps_running_processes() {
    let gw = Gateway::start(with_servers(json!({"a": fixture_echo("a")})));
    let key = gw.create_key("reloader", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "before"})).await), "before");
    let a_before = gw.child_tagged("a").expect("a runs");
    assert!(!m.tool_names().await.iter().any(|t| t.starts_with("b__")));

    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "b": fixture_everything("b")})));
    let names = wait_for_tool(&m, "b__test_simple_text").await;
    assert!(names.iter().any(|t| t == "a__echo"), "{names:?}");

    let rpc = m.call_tool("b__test_simple_text", json!({})).await;
    assert_eq!(tool_text(&rpc), "This is a simple text response for testing.");
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "after"})).await), "after");
    let a_after = gw.child_tagged("a").expect("a still runs");
    assert_eq!(a_before.pid, a_after.pid, "the unchanged server kept its process");
    assert!(gw.log().contains("configuration file changed"), "{}", gw.log());

    // Removing a server takes it out of the same session, and stops it.
    gw.write_config(&with_servers(json!({"b": fixture_everything("b")})));
    eventually(WAIT, "a__echo to leave the session's tools/list", || async {
        (!m.tool_names().await.iter().any(|t| t.starts_with("a__"))).then_some(())
    })
    .await;
    let rpc = m.call_tool("a__echo", json!({"text": "gone"})).await;
    assert_eq!(rpc["error"]["code"], -32602, "a removed server's tool is unknown: {rpc}");
    eventually(WAIT, "the removed server's process to exit", || async { gw.child_tagged("a").is_none().then_some(()) })
        .await;
}

#[tokio::test]
async fn sighup_reloads_the_configuration() {
    // The config path is a symlink whose target the file watcher does not
    // see: only the signal can make the gateway notice the change.
    let gw = Gateway::start_with(
        with_servers(json!({"a": fixture_echo("a")})),
        Options { config_via_symlink: true, ..Options::default() },
    );
    let key = gw.create_key("hup", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "x"})).await), "x");
    let a_before = gw.child_tagged("a").expect("a runs");

    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "c": fixture_echo("c")})));
    gw.sighup();
    wait_for_tool(&m, "c__echo").await;
    assert_eq!(tool_text(&m.call_tool("c__echo", json!({"text": "hup"})).await), "hup");
    assert!(gw.log().contains("SIGHUP"), "{}", gw.log());
    assert_eq!(gw.child_tagged("a").map(|p| p.pid), Some(a_before.pid), "the unchanged server kept its process");
}

#[tokio::test]
async fn an_invalid_file_is_reported_and_the_running_config_kept() {
    let gw = Gateway::start(with_servers(json!({"a": fixture_echo("a")})));
    let key = gw.create_key("careful", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "1"})).await), "1");

    // A value that does not validate…
    let mut bad = with_servers(json!({"a": fixture_echo("a"), "b": fixture_echo("b")}));
    bad["http"] = json!({"page_size": 0});
    gw.write_config(&bad);
    gw.wait_for_log("http.page_size").await;
    assert!(gw.log().contains("not reloaded"), "{}", gw.log());
    // …and a file that is not even JSON.
    gw.write_config_text("{\"mcpServers\": {\"a\": ");
    gw.sighup();
    eventually(WAIT, "a second rejection in the log", || async {
        (gw.log().matches("not reloaded").count() >= 2).then_some(())
    })
    .await;

    let names = m.tool_names().await;
    assert!(names.iter().any(|t| t == "a__echo"), "{names:?}");
    assert!(!names.iter().any(|t| t.starts_with("b__")), "the rejected file's server appeared: {names:?}");
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "2"})).await), "2");

    // A good file afterwards is applied.
    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "b": fixture_echo("b")})));
    wait_for_tool(&m, "b__echo").await;
}

#[tokio::test]
async fn open_sessions_are_told_that_the_tool_list_changed() {
    let gw = Gateway::start(with_servers(json!({"a": fixture_echo("a")})));
    let key = gw.create_key("listener", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(m.init["capabilities"]["tools"]["listChanged"], true, "{}", m.init);
    let (seen, reader) = m.open_stream().await;

    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "b": fixture_echo("b")})));
    gw.wait_for_log("configuration applied").await;
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if seen.lock().expect("poisoned").contains("notifications/tools/list_changed") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    reader.abort();
    assert!(
        outcome.is_ok(),
        "no notifications/tools/list_changed on the session's stream after a reload added a server; stream: {:?}",
        seen.lock().expect("poisoned")
    );
}

#[tokio::test]
async fn stateless_listeners_are_told_that_the_tool_list_changed() {
    let gw = Gateway::start(with_servers(json!({"a": fixture_echo("a")})));
    let key = gw.create_key("stateless-listener", &[]);
    let body = json!({
        "jsonrpc": "2.0",
        "id": "listen-1",
        "method": "subscriptions/listen",
        "params": {
            "_meta": {
                crate::harness::META_VERSION: crate::harness::STATELESS,
                crate::harness::META_CAPABILITIES: {}
            },
            "notifications": {"toolsListChanged": true, "promptsListChanged": false}
        }
    });
    let stream = crate::harness::http()
        .post(gw.url("/mcp"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", crate::harness::STATELESS)
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .expect("POST subscriptions/listen");
    assert_eq!(stream.status(), 200);
    let (seen, reader) = collect(stream);
    eventually(WAIT, "the subscription's acknowledgement", || async {
        seen.lock().expect("poisoned").contains("notifications/subscriptions/acknowledged").then_some(())
    })
    .await;

    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "b": fixture_echo("b")})));
    eventually(WAIT, "notifications/tools/list_changed on the listen stream", || async {
        seen.lock().expect("poisoned").contains("notifications/tools/list_changed").then_some(())
    })
    .await;
    reader.abort();
    let text = seen.lock().expect("poisoned").clone();
    let events: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect();
    assert_eq!(events[0]["method"], "notifications/subscriptions/acknowledged", "{text}");
    for e in &events {
        assert_eq!(e["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1", "untagged: {e}");
        assert_ne!(e["method"], "notifications/prompts/list_changed", "not asked for: {e}");
    }
}

#[tokio::test]
async fn a_reload_applies_live_settings_and_names_those_needing_a_restart() {
    let servers = json!({"a": fixture_echo("a")});
    let gw = Gateway::start(with_servers(servers.clone()));
    let key = gw.create_key("tuner", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "x"})).await), "x");

    // A new listen address and log format need a restart; the session
    // timeout applies at once: the idle session is closed.
    let mut cfg = with_servers(servers);
    cfg["log"] = json!({"format": "json"});
    cfg["http"] = json!({"session_idle_timeout": "1s"});
    cfg["auth"] = json!({"key_cache_ttl": "500ms"});
    cfg["listen"] = Value::from("127.0.0.1:1");
    gw.write_config_text(&serde_json::to_string_pretty(&cfg).expect("json"));
    gw.wait_for_log("take effect only after a restart").await;
    let log = gw.log();
    let warning = log.lines().find(|l| l.contains("take effect only after a restart")).expect("the warning");
    assert!(warning.contains("listen") && warning.contains("log"), "{warning}");
    assert!(!warning.contains("http") && !warning.contains("auth"), "live settings are not named: {warning}");

    // Each request touches the session: leave it idle between looks.
    let mut closed = false;
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        if m.request("tools/list", json!({})).await.status == 404 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the idle session was not closed under the reloaded timeout");
    // The gateway still serves on its original address.
    let m2 = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    assert_eq!(tool_text(&m2.call_tool("a__echo", json!({"text": "still here"})).await), "still here");
}

/// A server whose definition changed starts again at once; while it
/// starts, lists across servers show its previous list instead of waiting
/// for it, and its sessions hear when the new one is there.
#[tokio::test]
async fn lists_across_servers_do_not_wait_for_a_server_restarting_after_a_reload() {
    let gw = Gateway::start(with_servers(json!({"a": fixture_echo("a"), "b": fixture_echo("b")})));
    let key = gw.create_key("lister", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let before = m.tool_names().await;
    assert!(before.iter().any(|t| t == "b__echo"), "{before:?}");

    // The new definition of `b` takes 4 s to start.
    let slow_b = json!({
        "command": "/bin/sh",
        "args": ["-c", format!("sleep 4; exec '{}' everything --stdio", fixture_bin().display())],
        "env": {"BASTION_IT_SERVER": "b"}
    });
    gw.write_config(&with_servers(json!({"a": fixture_echo("a"), "b": slow_b})));
    gw.wait_for_log("configuration applied").await;
    let (stream, _reader) = m.open_stream().await;
    let listed = tokio::time::timeout(std::time::Duration::from_secs(2), m.tool_names())
        .await
        .expect("tools/list on /mcp answered while b restarts");
    assert_eq!(listed, before, "b's previous tools stand in while it starts");

    // Once up, the new b's tools are listed and the session was told.
    let names = wait_for_tool(&m, "b__test_simple_text").await;
    assert!(names.iter().any(|t| t == "a__echo"), "{names:?}");
    eventually(WAIT, "tools/list_changed on the session's stream", || async {
        stream.lock().unwrap().contains("notifications/tools/list_changed").then_some(())
    })
    .await;
}
