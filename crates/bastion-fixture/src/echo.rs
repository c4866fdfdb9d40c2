//! The `echo` fixture: a minimal, fast MCP server for benchmarks and
//! fault-injection tests.
//!
//! Tools:
//! * `echo {text}` — returns `text` as one text block.
//! * `sleep {ms}` — waits `ms` milliseconds (cancellable), then returns.
//! * `crash` — terminates the process at once, without answering.
//! * `garbage` — over stdio, writes one line that is not JSON to stdout, then
//!   answers normally and keeps serving.
//!
//! With `BASTION_FIXTURE_FAIL_TOOLS_LIST` set in its environment, `tools/list`
//! answers an error while the tools still work (a broken listing).

use std::time::Duration;

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::json::{text_result, tool};

/// The raw line the `garbage` tool writes to stdout.
pub const GARBAGE_LINE: &str = "this line is not JSON-RPC";

/// The echo server. Cheap to clone; one instance per HTTP session.
#[derive(Clone, Default)]
pub struct Echo {
    /// Raw stdout lines, when serving over stdio.
    garbage: Option<mpsc::UnboundedSender<String>>,
}

impl Echo {
    /// An echo server for HTTP, where `garbage` has no raw stdout to write to.
    pub fn new() -> Self {
        Self::default()
    }

    /// An echo server for stdio, and the receiver of its raw stdout lines.
    pub fn with_stdout_channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { garbage: Some(tx) }, rx)
    }

    fn tools() -> Vec<Tool> {
        vec![
            tool(
                "echo",
                "Returns its `text` argument as text content.",
                json!({
                    "type": "object",
                    "properties": { "text": { "type": "string", "description": "Text to echo back" } },
                    "required": ["text"]
                }),
            ),
            tool(
                "sleep",
                "Waits `ms` milliseconds, then returns.",
                json!({
                    "type": "object",
                    "properties": { "ms": { "type": "integer", "minimum": 0, "description": "Milliseconds to wait" } },
                    "required": ["ms"]
                }),
            ),
            tool("crash", "Terminates the server process immediately.", crate::json::no_args()),
            tool(
                "garbage",
                "Over stdio, writes a line that is not JSON to stdout, then answers normally.",
                crate::json::no_args(),
            ),
        ]
    }
}

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = rmcp::model::Implementation::new("bastion-fixture-echo", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        if std::env::var_os("BASTION_FIXTURE_FAIL_TOOLS_LIST").is_some() {
            return Err(McpError::internal_error("tools/list fails (fault injection)", None));
        }
        Ok(ListToolsResult::with_all_items(Self::tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        Self::tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.as_ref();
        let result = match request.name.as_ref() {
            "echo" => {
                let Some(text) = crate::json::str_arg(args, "text") else {
                    return Err(McpError::invalid_params("`text` must be a string", None));
                };
                text_result(text)
            }
            "sleep" => {
                let Some(ms) = args.and_then(|a| a.get("ms")).and_then(Value::as_u64) else {
                    return Err(McpError::invalid_params("`ms` must be a non-negative integer", None));
                };
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = context.ct.cancelled() => {
                        return Err(McpError::internal_error("cancelled", None));
                    }
                }
                text_result(format!("slept {ms} ms"))
            }
            "crash" => {
                eprintln!("bastion-fixture: crash tool called, exiting");
                std::process::exit(70);
            }
            "garbage" => match &self.garbage {
                Some(tx) => {
                    let _ = tx.send(GARBAGE_LINE.to_owned());
                    text_result("wrote a non-JSON line to stdout")
                }
                None => text_result("garbage has no effect over HTTP"),
            },
            other => {
                return Err(McpError::invalid_params(format!("unknown tool: {other}"), None));
            }
        };
        Ok(result.into())
    }
}
