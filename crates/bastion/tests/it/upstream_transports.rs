//! Remote upstreams over the legacy HTTP+SSE transport: chosen explicitly
//! with `type: sse`, and found by falling back from Streamable HTTP when the
//! type is not given. The upstream is the official Python SDK's own SSE
//! server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{Gateway, Mcp, clients_dir, run_client, tool_text, tools};

/// The SDK's test server on a free loopback port: in legacy SSE mode, or
/// as `start_with` says.
pub(crate) struct SseServer {
    /// Where the server listens (`/mcp`, or `/sse` for legacy SSE).
    pub(crate) url: String,
    child: Child,
}

impl SseServer {
    fn start() -> SseServer {
        SseServer::start_with(&["--transport", "sse"])
    }

    /// The test server with these arguments (a transport and its options).
    pub(crate) fn start_with(args: &[&str]) -> SseServer {
        let t = tools();
        let mut child = Command::new(&t.python)
            .arg(clients_dir().join("testserver.py"))
            .args(["--port", "0"])
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the SSE test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("test server stdout");
        let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("test server said {line:?}"));
        let url = ready["url"].as_str().unwrap_or_else(|| panic!("no url in {ready}")).to_string();
        SseServer { url, child }
    }
}

impl Drop for SseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn legacy_sse_servers_are_reached_explicitly_and_by_fallback() {
    let server = SseServer::start();
    let mut gw = Gateway::start(json!({
        "mcpServers": {
            "explicit": {"url": server.url, "type": "sse"},
            "fallback": {"url": server.url}
        }
    }));
    let key = gw.create_key("alice", &[]);
    for name in ["explicit", "fallback"] {
        let tool = format!("{name}__echo");
        let run = run_client(
            "session_client.py",
            &gw.url("/mcp"),
            &key,
            &["--action", "call-tool", "--tool", &tool, "--args", r#"{"text":"through legacy sse"}"#],
        )
        .await;
        let out = run.ok();
        assert!(
            out["text"].as_str().is_some_and(|t| t.contains("through legacy sse")),
            "{name}: unexpected result {out}"
        );
    }
    assert!(gw.log().contains("trying legacy HTTP+SSE"), "the fallback was not logged:\n{}", gw.log());
    gw.stop();
}

/// Answers from remote servers obey `upstream.max_message_bytes` as stdio
/// lines do: a larger answer fails that call with a clear error, and the
/// gateway and the connection carry on.
#[tokio::test]
async fn remote_answers_larger_than_the_message_limit_fail_the_call_only() {
    let sse = SseServer::start();
    let streamed = SseServer::start_with(&["--transport", "streamable-http"]);
    let json_answers = SseServer::start_with(&["--transport", "streamable-http", "--json-response"]);
    let mut gw = Gateway::start(json!({
        "mcpServers": {
            "sse": {"url": sse.url, "type": "sse"},
            "streamed": {"url": streamed.url, "type": "http"},
            "plain": {"url": json_answers.url, "type": "http"}
        },
        "upstream": {"max_message_bytes": 8192}
    }));
    let key = gw.create_key("alice", &[]);
    let m = Mcp::session(gw.url("/mcp"), &key, "2025-11-25").await;
    let big = "x".repeat(20_000);
    for name in ["sse", "streamed", "plain"] {
        let tool = format!("{name}__echo");
        assert_eq!(tool_text(&m.call_tool(&tool, json!({"text": "small"})).await), "small", "{name}");
        let rpc = m.call_tool(&tool, json!({"text": big})).await;
        let error = &rpc["error"];
        assert!(
            error.is_object(),
            "{name}: an oversized answer was relayed: {}",
            &rpc.to_string()[..200.min(rpc.to_string().len())]
        );
        assert!(!rpc.to_string().contains(&big), "{name}");
        assert_eq!(
            tool_text(&m.call_tool(&tool, json!({"text": "after"})).await),
            "after",
            "{name}: the server is still reachable"
        );
    }
    gw.stop();
}
