//! stdio servers start on first use, never at start-up, and stop when idle.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::harness::{Gateway, Mcp, Reply, WAIT, eventually, fixture_echo, http, tool_text, tools};

#[tokio::test]
async fn stdio_servers_start_on_first_use_only() {
    let servers: Map<String, Value> =
        (1..=20).map(|i| (format!("s{i:02}"), fixture_echo(&format!("s{i:02}")))).collect();
    let gw = Gateway::start(json!({"mcpServers": servers}));
    let key = gw.create_key("lazy", &[]);

    let ready = Reply::read(http().get(gw.url("/readyz")).send().await.expect("GET /readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(gw.children().is_empty(), "children at start-up: {:?}", gw.children());

    // Neither a session nor discovery on /mcp starts anything.
    let session = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let stateless = Mcp::stateless(gw.url("/mcp"), &key);
    let rpc = stateless.call("server/discover", json!({})).await;
    assert!(rpc.get("result").is_some(), "{rpc}");
    assert!(gw.children().is_empty(), "children before any call: {:?}", gw.children());

    let rpc = session.call_tool("s07__echo", json!({"text": "wake up"})).await;
    assert_eq!(tool_text(&rpc), "wake up");
    let children = gw.children();
    assert_eq!(children.len(), 1, "exactly one child after one call: {children:?}");
    assert_eq!(children[0].tag(), Some("s07"), "the called server's process: {children:?}");
    assert!(children[0].cmdline.contains("bastion-fixture echo --stdio"), "{children:?}");

    // A second call reuses it.
    let rpc = stateless.call_tool("s07__echo", json!({"text": "again"})).await;
    assert_eq!(tool_text(&rpc), "again");
    let again = gw.children();
    assert_eq!(again.iter().map(|c| c.pid).collect::<Vec<_>>(), [children[0].pid], "{again:?}");
}

#[tokio::test]
async fn an_idle_stdio_server_is_stopped_and_restarted_on_demand() {
    let gw = Gateway::start(json!({
        "mcpServers": {"a": fixture_echo("a"), "b": fixture_echo("b")},
        "upstream": {"idle_timeout": "1s"}
    }));
    let key = gw.create_key("idle", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &key);
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "1"})).await), "1");
    let first = gw.child_tagged("a").expect("a runs after a call");
    eventually(WAIT, "the idle server to be stopped", || async { gw.children().is_empty().then_some(()) }).await;
    assert!(gw.log().contains("stopping idle upstream"), "{}", gw.log());

    // The next call starts it again.
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "2"})).await), "2");
    let second = gw.child_tagged("a").expect("a runs again");
    assert_ne!(first.pid, second.pid);
}

#[tokio::test]
async fn a_long_call_is_not_stopped_as_idle() {
    let gw = Gateway::start(json!({
        "mcpServers": {"a": fixture_echo("a")},
        "upstream": {"idle_timeout": "1s"}
    }));
    let key = gw.create_key("busy", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &key);
    // A call longer than the idle timeout keeps its server.
    assert_eq!(tool_text(&m.call_tool("a__sleep", json!({"ms": 3000})).await), "slept 3000 ms");
}

/// A minimal MCP server over stdio that writes `MARKER` when its stdin
/// closes: it shows whether it was stopped gracefully.
const EOF_WATCHER: &str = r#"
import json, sys
marker = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    method = msg["method"]
    if method == "initialize":
        result = {"protocolVersion": msg["params"].get("protocolVersion", "2025-11-25"),
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "eof-watcher", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "ping", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "pong"}]}
    else:
        result = {}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
with open(marker, "w") as f:
    f.write("stdin closed\n")
"#;

#[tokio::test]
async fn an_idle_server_is_stopped_by_closing_its_stdin() {
    let t = tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("eof_watcher.py");
    std::fs::write(&script, EOF_WATCHER).expect("write script");
    let marker = dir.path().join("stdin-closed");
    let gw = Gateway::start(json!({
        "mcpServers": {"w": {"command": t.python, "args": [script, marker]}},
        "upstream": {"idle_timeout": "1s"}
    }));
    let key = gw.create_key("eof", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &key);
    assert_eq!(tool_text(&m.call_tool("w__ping", json!({})).await), "pong");
    eventually(WAIT, "the idle server to be stopped", || async { gw.children().is_empty().then_some(()) }).await;
    eventually(Duration::from_secs(5), "the server to see its stdin closed (a graceful stop)", || async {
        marker.exists().then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_the_gateway_and_its_servers() {
    let mut gw = Gateway::start(json!({"mcpServers": {"a": fixture_echo("a"), "b": fixture_echo("b")}}));
    let key = gw.create_key("stopper", &[]);
    let m = Mcp::stateless(gw.url("/mcp"), &key);
    assert_eq!(tool_text(&m.call_tool("a__echo", json!({"text": "1"})).await), "1");
    assert_eq!(tool_text(&m.call_tool("b__echo", json!({"text": "2"})).await), "2");
    let pids: Vec<u32> = gw.children().iter().map(|c| c.pid).collect();
    assert_eq!(pids.len(), 2, "{:?}", gw.children());

    let status = gw.stop().expect("the gateway exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(gw.log().contains("shutting down"), "{}", gw.log());
    for pid in pids {
        eventually(WAIT, &format!("server process {pid} to end"), || async {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
            matches!(state.as_deref(), None | Some("Z") | Some("X")).then_some(())
        })
        .await;
    }
}
