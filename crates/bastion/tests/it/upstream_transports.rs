//! Remote upstreams over the legacy HTTP+SSE transport: chosen explicitly
//! with `type: sse`, and found by falling back from Streamable HTTP when the
//! type is not given. The upstream is the official Python SDK's own SSE
//! server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::harness::{Gateway, clients_dir, run_client, tools};

/// The SDK's test server in legacy SSE mode on a free loopback port.
struct SseServer {
    url: String,
    child: Child,
}

impl SseServer {
    fn start() -> SseServer {
        let t = tools();
        let mut child = Command::new(&t.python)
            .arg(clients_dir().join("testserver.py"))
            .args(["--port", "0", "--transport", "sse"])
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
