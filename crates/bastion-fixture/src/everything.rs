//! The `everything` fixture: a port of the conformance suite's reference
//! server.
//!
//! It serves the fixed catalogue the conformance scenarios exercise — content
//! tools, logging and progress tools, server-initiated sampling and
//! elicitation (session-based revisions), static and templated resources,
//! resource subscriptions, prompts, completions and `logging/setLevel` — and,
//! through [`crate::stateless`], the `2026-07-28` additions: multi round-trip
//! (`input_required`) tools and prompts, capability checks against per-request
//! `_meta`, and list-changed delivery over `subscriptions/listen`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, GetPromptRequestParams,
    GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ServerConfig,
    ServerNotification, ServerRequest, SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::json::{content_result, no_args, parse, result, str_arg, string_args, text_result, tool};
use crate::stateless::{self, ListChange};

/// A 1x1 red PNG pixel.
pub const TEST_IMAGE_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A minimal WAV file.
pub const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// Cache lifetime advertised on list and read results (SEP-2549).
const CACHE_TTL_MS: u64 = 300_000;

/// State shared by every session of one server process.
pub struct Shared {
    /// Resource URIs subscribed through `resources/subscribe`.
    subscriptions: Mutex<HashSet<String>>,
    /// List changes, fanned out to open `subscriptions/listen` streams.
    pub(crate) changes: tokio::sync::broadcast::Sender<ListChange>,
    /// Key sealing `requestState` values handed to clients.
    pub(crate) state_key: [u8; 32],
}

impl Shared {
    pub fn new() -> Arc<Self> {
        let (changes, _) = tokio::sync::broadcast::channel(64);
        Arc::new(Self { subscriptions: Mutex::new(HashSet::new()), changes, state_key: rand::random() })
    }
}

/// The everything server; one instance per HTTP session or stdio connection.
#[derive(Clone)]
pub struct Everything {
    pub(crate) shared: Arc<Shared>,
}

impl Everything {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Tools served on every protocol revision.
    fn common_tools() -> Vec<Tool> {
        vec![
            tool("test_simple_text", "Tests simple text content response", no_args()),
            tool("test_image_content", "Tests image content response", no_args()),
            tool("test_audio_content", "Tests audio content response", no_args()),
            tool("test_embedded_resource", "Tests embedded resource content response", no_args()),
            tool(
                "test_multiple_content_types",
                "Tests response with multiple content types (text, image, resource)",
                no_args(),
            ),
            tool("test_tool_with_logging", "Tests tool that emits log messages during execution", no_args()),
            tool("test_tool_with_progress", "Tests tool that reports progress notifications", no_args()),
            tool("test_error_handling", "Tests error response handling", no_args()),
            tool("test_reconnection", "Tests SSE stream disconnection and client reconnection (SEP-1699).", no_args()),
            tool(
                "test_sampling",
                "Tests server-initiated sampling (LLM completion request)",
                string_args(&[("prompt", "The prompt to send to the LLM")]),
            ),
            tool(
                "test_elicitation",
                "Tests server-initiated elicitation (user input request)",
                string_args(&[("message", "The message to show the user")]),
            ),
            tool("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034", no_args()),
            tool(
                "test_elicitation_sep1330_enums",
                "Tests elicitation with enum schema improvements per SEP-1330",
                no_args(),
            ),
            tool(
                "json_schema_2020_12_tool",
                "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
                json_schema_2020_12(),
            ),
        ]
    }

    fn all_tools() -> Vec<Tool> {
        let mut tools = Self::common_tools();
        tools.extend(stateless::tools());
        tools
    }

    /// Sends a `notifications/message` unless the request opted out of logs.
    async fn log(&self, context: &RequestContext<RoleServer>, level: &str, data: Value) {
        if !stateless::may_log(context, level) {
            return;
        }
        let notification: Result<ServerNotification, _> = parse(json!({
            "method": "notifications/message",
            "params": { "level": level, "logger": "conformance-test-server", "data": data }
        }));
        if let Ok(notification) = notification {
            let _ = context.peer.send_notification(notification).await;
        }
    }

    async fn progress(&self, context: &RequestContext<RoleServer>, token: &Value, step: u32) {
        let notification: Result<ServerNotification, _> = parse(json!({
            "method": "notifications/progress",
            "params": {
                "progressToken": token,
                "progress": step,
                "total": 100,
                "message": format!("Completed step {step} of 100"),
            }
        }));
        if let Ok(notification) = notification {
            let _ = context.peer.send_notification(notification).await;
        }
    }

    /// Sends a server-to-client request and returns its result as JSON.
    async fn ask_client(
        &self,
        context: &RequestContext<RoleServer>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let request: ServerRequest =
            parse(json!({ "method": method, "params": params })).map_err(|e| e.message.to_string())?;
        let result = context.peer.send_request(request).await.map_err(|e| e.to_string())?;
        serde_json::to_value(result).map_err(|e| e.to_string())
    }

    async fn elicit(&self, context: &RequestContext<RoleServer>, params: Value, prefix: &str) -> CallToolResponse {
        match self.ask_client(context, "elicitation/create", params).await {
            Ok(result) => {
                let action = result.get("action").and_then(Value::as_str).unwrap_or("");
                let content = result.get("content").cloned().unwrap_or_else(|| json!({}));
                text_result(format!("{prefix}: action={action}, content={content}")).into()
            }
            Err(e) => text_result(format!("Elicitation not supported or error: {e}")).into(),
        }
    }

    async fn call_common_tool(
        &self,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<CallToolResponse>, McpError> {
        let args = request.arguments.as_ref();
        let response: CallToolResponse = match request.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing.").into(),
            "test_image_content" => content_result(json!([
                { "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" }
            ]))?
            .into(),
            "test_audio_content" => content_result(json!([
                { "type": "audio", "data": TEST_AUDIO_BASE64, "mimeType": "audio/wav" }
            ]))?
            .into(),
            "test_embedded_resource" => content_result(json!([{
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content."
                }
            }]))?
            .into(),
            "test_multiple_content_types" => content_result(json!([
                { "type": "text", "text": "Multiple content types test:" },
                { "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" },
                {
                    "type": "resource",
                    "resource": {
                        "uri": "test://mixed-content-resource",
                        "mimeType": "application/json",
                        "text": json!({ "test": "data", "value": 123 }).to_string()
                    }
                }
            ]))?
            .into(),
            "test_tool_with_logging" => {
                for (i, message) in ["Tool execution started", "Tool processing data", "Tool execution completed"]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    self.log(context, "info", json!(message)).await;
                }
                text_result("Tool with logging executed successfully").into()
            }
            "test_tool_with_progress" => {
                let token = context.meta.get("progressToken").cloned();
                if let Some(token) = &token {
                    for (i, step) in [0, 50, 100].into_iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        self.progress(context, token, step).await;
                    }
                }
                let shown = match token {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => "0".to_owned(),
                };
                text_result(shown).into()
            }
            "test_error_handling" => {
                let mut result = text_result("This tool intentionally returns an error for testing");
                result.is_error = Some(true);
                result.into()
            }
            "test_reconnection" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                text_result(
                    "Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.",
                )
                .into()
            }
            "test_sampling" => {
                let prompt = str_arg(args, "prompt").unwrap_or_default();
                let params = json!({
                    "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
                    "maxTokens": 100
                });
                match self.ask_client(context, "sampling/createMessage", params).await {
                    Ok(result) => {
                        let text = result
                            .pointer("/content/text")
                            .or_else(|| result.pointer("/message/content/text"))
                            .and_then(Value::as_str)
                            .unwrap_or("No response");
                        text_result(format!("LLM response: {text}")).into()
                    }
                    Err(e) => text_result(format!("Sampling not supported or error: {e}")).into(),
                }
            }
            "test_elicitation" => {
                let message = str_arg(args, "message").unwrap_or_default();
                let params = json!({
                    "message": message,
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "response": { "type": "string", "description": "User's response" }
                        },
                        "required": ["response"]
                    }
                });
                self.elicit(context, params, "User response").await
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(context, sep1034_params(), "Elicitation completed").await
            }
            "test_elicitation_sep1330_enums" => self.elicit(context, sep1330_params(), "Elicitation completed").await,
            "json_schema_2020_12_tool" => {
                let shown = Value::Object(args.cloned().unwrap_or_default());
                text_result(format!("JSON Schema 2020-12 tool called with: {shown}")).into()
            }
            _ => return Ok(None),
        };
        Ok(Some(response))
    }

    fn read_static(uri: &str) -> Option<Value> {
        let content = match uri {
            "test://static-text" => json!({
                "uri": uri, "mimeType": "text/plain",
                "text": "This is the content of the static text resource."
            }),
            "test://static-binary" => json!({
                "uri": uri, "mimeType": "image/png", "blob": TEST_IMAGE_BASE64
            }),
            "test://watched-resource" => json!({
                "uri": uri, "mimeType": "text/plain", "text": "Watched resource content"
            }),
            "test://stateless-static-text" => json!({
                "uri": uri, "mimeType": "text/plain",
                "text": "Static text content from the stateless draft path."
            }),
            _ => {
                let id = uri
                    .strip_prefix("test://template/")?
                    .strip_suffix("/data")
                    .filter(|id| !id.is_empty() && !id.contains('/'))?;
                json!({
                    "uri": uri,
                    "mimeType": "application/json",
                    "text": json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string()
                })
            }
        };
        Some(content)
    }
}

fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {
                    "street": { "type": "string" },
                    "city": { "type": "string" }
                }
            }
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": {
            "properties": { "contactMethod": { "const": "phone" } },
            "required": ["contactMethod"]
        },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    })
}

fn sep1034_params() -> Value {
    json!({
        "message": "Please review and update the form fields with defaults",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "User name", "default": "John Doe" },
                "age": { "type": "integer", "description": "User age", "default": 30 },
                "score": { "type": "number", "description": "User score", "default": 95.5 },
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active"
                },
                "verified": { "type": "boolean", "description": "Verification status", "default": true }
            },
            "required": []
        }
    })
}

fn sep1330_params() -> Value {
    json!({
        "message": "Please select options from the enum fields",
        "requestedSchema": {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "description": "Select one option",
                    "enum": ["option1", "option2", "option3"]
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Select one option with titles",
                    "oneOf": [
                        { "const": "value1", "title": "First Option" },
                        { "const": "value2", "title": "Second Option" },
                        { "const": "value3", "title": "Third Option" }
                    ]
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Select one option (legacy)",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"]
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Select multiple options",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Select multiple options with titles",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "anyOf": [
                            { "const": "value1", "title": "First Choice" },
                            { "const": "value2", "title": "Second Choice" },
                            { "const": "value3", "title": "Third Choice" }
                        ]
                    }
                }
            },
            "required": []
        }
    })
}

fn with_cache_hints(mut result: Value, scope: &str) -> Value {
    if let Some(obj) = result.as_object_mut() {
        obj.insert("ttlMs".into(), json!(CACHE_TTL_MS));
        obj.insert("cacheScope".into(), json!(scope));
    }
    result
}

impl ServerHandler for Everything {
    fn get_info(&self) -> ServerConfig {
        parse(json!({
            "protocolVersion": ProtocolVersion::V_2025_11_25,
            "capabilities": {
                "tools": { "listChanged": true },
                "resources": { "subscribe": true, "listChanged": true },
                "prompts": { "listChanged": true },
                "logging": {},
                "completions": {}
            },
            "serverInfo": { "name": "mcp-conformance-test-server", "version": "1.0.0" }
        }))
        .expect("static server config is valid")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut result = ListToolsResult::with_all_items(Self::all_tools());
        result.ttl_ms = Some(CACHE_TTL_MS);
        result.cache_scope = Some(parse(json!("public"))?);
        Ok(result)
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        Self::all_tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(response) = self.call_common_tool(&request, &context).await? {
            return Ok(response);
        }
        if let Some(response) = stateless::call_tool(self, &request, &context).await {
            return response;
        }
        Err(McpError::invalid_params(format!("Tool {} not found", request.name), None))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        result(with_cache_hints(
            json!({
                "resources": [
                    {
                        "uri": "test://static-text",
                        "name": "static-text",
                        "title": "Static Text Resource",
                        "description": "A static text resource for testing",
                        "mimeType": "text/plain"
                    },
                    {
                        "uri": "test://static-binary",
                        "name": "static-binary",
                        "title": "Static Binary Resource",
                        "description": "A static binary resource (image) for testing",
                        "mimeType": "image/png"
                    },
                    {
                        "uri": "test://watched-resource",
                        "name": "watched-resource",
                        "title": "Watched Resource",
                        "description": "A resource that auto-updates every 3 seconds",
                        "mimeType": "text/plain"
                    },
                    {
                        "uri": "test://stateless-static-text",
                        "name": "Stateless Static Text",
                        "description": "A static text resource served on the draft path",
                        "mimeType": "text/plain"
                    }
                ]
            }),
            "public",
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        result(with_cache_hints(
            json!({
                "resourceTemplates": [{
                    "uriTemplate": "test://template/{id}/data",
                    "name": "template",
                    "title": "Resource Template",
                    "description": "A resource template with parameter substitution",
                    "mimeType": "application/json"
                }]
            }),
            "public",
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        match Self::read_static(uri) {
            Some(content) => {
                let result: rmcp::model::ReadResourceResult =
                    result(with_cache_hints(json!({ "contents": [content] }), "private"))?;
                Ok(result.into())
            }
            None => Err(McpError::resource_not_found(format!("Resource {uri} not found"), Some(json!({ "uri": uri })))),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri;
        if let Ok(mut subs) = self.shared.subscriptions.lock() {
            subs.insert(uri.clone());
        }
        self.log(&context, "info", json!(format!("Subscribed to resource: {uri}"))).await;
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri;
        if let Ok(mut subs) = self.shared.subscriptions.lock() {
            subs.remove(&uri);
        }
        self.log(&context, "info", json!(format!("Unsubscribed from resource: {uri}"))).await;
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let mut prompts = vec![
            json!({
                "name": "test_simple_prompt",
                "title": "Simple Test Prompt",
                "description": "A simple prompt without arguments"
            }),
            json!({
                "name": "test_prompt_with_arguments",
                "title": "Prompt With Arguments",
                "description": "A prompt with required arguments",
                "arguments": [
                    { "name": "arg1", "description": "First test argument", "required": true },
                    { "name": "arg2", "description": "Second test argument", "required": true }
                ]
            }),
            json!({
                "name": "test_prompt_with_embedded_resource",
                "title": "Prompt With Embedded Resource",
                "description": "A prompt that includes an embedded resource",
                "arguments": [
                    { "name": "resourceUri", "description": "URI of the resource to embed", "required": true }
                ]
            }),
            json!({
                "name": "test_prompt_with_image",
                "title": "Prompt With Image",
                "description": "A prompt that includes image content"
            }),
        ];
        prompts.extend(stateless::prompts());
        result(with_cache_hints(json!({ "prompts": prompts }), "public"))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.as_ref();
        let arg = |name: &str| str_arg(args, name).unwrap_or_default().to_owned();
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([{
                "role": "user",
                "content": { "type": "text", "text": "This is a simple prompt for testing." }
            }]),
            "test_prompt_with_arguments" => json!([{
                "role": "user",
                "content": {
                    "type": "text",
                    "text": format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1"), arg("arg2"))
                }
            }]),
            "test_prompt_with_embedded_resource" => json!([
                {
                    "role": "user",
                    "content": {
                        "type": "resource",
                        "resource": {
                            "uri": arg("resourceUri"),
                            "mimeType": "text/plain",
                            "text": "Embedded resource content for testing."
                        }
                    }
                },
                {
                    "role": "user",
                    "content": { "type": "text", "text": "Please process the embedded resource above." }
                }
            ]),
            "test_prompt_with_image" => json!([
                {
                    "role": "user",
                    "content": { "type": "image", "data": TEST_IMAGE_BASE64, "mimeType": "image/png" }
                },
                {
                    "role": "user",
                    "content": { "type": "text", "text": "Please analyze the image above." }
                }
            ]),
            _ => {
                if let Some(response) = stateless::get_prompt(&request, &context).await {
                    return response;
                }
                return Err(McpError::invalid_params(format!("Prompt {} not found", request.name), None));
            }
        };
        let result: rmcp::model::GetPromptResult = result(json!({ "messages": messages }))?;
        Ok(result.into())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        result(json!({ "completion": { "values": [], "total": 0, "hasMore": false } }))
    }

    #[expect(deprecated, reason = "the session-based revisions still define logging/setLevel")]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let level = serde_json::to_value(request.level).unwrap_or(Value::Null);
        let level = level.as_str().unwrap_or("unknown").to_owned();
        self.log(&context, "info", json!(format!("Log level set to: {level}"))).await;
        Ok(())
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        stateless::listen(&self.shared, context).await
    }
}
