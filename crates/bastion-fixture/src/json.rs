//! Small helpers for building rmcp values from JSON literals.
//!
//! Many rmcp model types are `#[non_exhaustive]`, so the fixtures describe
//! their tools, resources and results as JSON (as the protocol does) and
//! deserialize them into the typed model here.

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, Tool};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Deserializes a protocol value, mapping a mismatch to an internal error.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, McpError> {
    serde_json::from_value(value)
        .map_err(|e| McpError::internal_error(format!("fixture built an invalid value: {e}"), None))
}

/// Deserializes a complete result, stamping `resultType: "complete"` (the
/// stateless revision requires it; rmcp strips it again for older peers).
pub fn result<T: DeserializeOwned>(mut value: Value) -> Result<T, McpError> {
    if let Some(obj) = value.as_object_mut() {
        obj.entry("resultType").or_insert_with(|| json!("complete"));
    }
    parse(value)
}

/// A tool definition with the given input schema.
pub fn tool(name: &str, description: &str, input_schema: Value) -> Tool {
    parse(json!({
        "name": name,
        "description": description,
        "inputSchema": input_schema,
    }))
    .expect("static tool definition is valid")
}

/// The input schema of a tool that takes no arguments.
pub fn no_args() -> Value {
    json!({ "type": "object", "properties": {} })
}

/// An input schema with the given required string properties.
pub fn string_args(props: &[(&str, &str)]) -> Value {
    let mut properties = serde_json::Map::new();
    for (name, description) in props {
        properties.insert((*name).to_owned(), json!({ "type": "string", "description": description }));
    }
    let required: Vec<&str> = props.iter().map(|(name, _)| *name).collect();
    json!({ "type": "object", "properties": properties, "required": required })
}

/// A successful tool result holding one text block.
pub fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![rmcp::model::ContentBlock::text(text.into())])
}

/// A tool result built from a list of content blocks given as JSON.
pub fn content_result(content: Value) -> Result<CallToolResult, McpError> {
    result(json!({ "content": content }))
}

/// The string argument `name`, if present.
pub fn str_arg<'a>(args: Option<&'a serde_json::Map<String, Value>>, name: &str) -> Option<&'a str> {
    args.and_then(|a| a.get(name)).and_then(Value::as_str)
}
