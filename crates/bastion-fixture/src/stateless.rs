//! The `2026-07-28` (stateless) half of the everything fixture.
//!
//! rmcp routes requests that carry per-request `_meta` without a session and
//! provides `server/discover`, header validation, `resultType` stamping and
//! the `subscriptions/listen` acknowledgment. This module adds what is
//! specific to the fixture:
//!
//! * multi round-trip request tools and prompt (SEP-2322), which answer with an
//!   `input_required` result and then with the final result once the client
//!   retries with `inputResponses` and the echoed `requestState`. On the
//!   session-based revisions the same tools and prompt gather the same input
//!   through real server-to-client requests over the session (elicitation,
//!   sampling, roots) and then return the same final result;
//! * `requestState` sealing with an HMAC, so tampered state is rejected;
//! * `test_missing_capability`, which rejects callers that did not declare
//!   sampling in their client capabilities (per-request, or at `initialize` on
//!   the session-based revisions, where it also sends a real sampling request);
//! * list-changed fan-out to open `subscriptions/listen` streams;
//! * the log-level gate: stateless requests get `notifications/message` only
//!   when their `_meta` asks for a log level.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use rmcp::ErrorData as McpError;
use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, GetPromptRequestParams, GetPromptResponse,
    InputRequests, InputRequiredResult, InputResponses, ProtocolVersion, ServerNotification, Tool,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::everything::{Everything, Shared};
use crate::json::{no_args, parse, text_result, tool};

/// A change to one of the server's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListChange {
    Tools,
    Prompts,
}

/// Tools that exist for the stateless revision's scenarios.
pub fn tools() -> Vec<Tool> {
    [
        ("test_missing_capability", "Test tool requiring sampling"),
        ("test_input_required_result_elicitation", "MRTR: returns InputRequiredResult with elicitation request"),
        ("test_input_required_result_sampling", "MRTR: returns InputRequiredResult with sampling request"),
        ("test_input_required_result_list_roots", "MRTR: returns InputRequiredResult with roots/list request"),
        ("test_input_required_result_request_state", "MRTR: returns InputRequiredResult with requestState"),
        (
            "test_input_required_result_multiple_inputs",
            "MRTR: returns InputRequiredResult with multiple input requests",
        ),
        ("test_input_required_result_multi_round", "MRTR: multi-round InputRequiredResult workflow"),
        ("test_input_required_result_tampered_state", "MRTR: HMAC-signed requestState integrity test"),
        ("test_input_required_result_capabilities", "MRTR: respects client capabilities in inputRequests"),
        ("test_streaming_elicitation", "Diagnostic tool validating response progress streams"),
        ("test_logging_tool", "Diagnostic logging validator tool"),
        ("test_trigger_tool_change", "Signals a tool list change to open subscriptions"),
        ("test_trigger_prompt_change", "Signals a prompt list change to open subscriptions"),
    ]
    .into_iter()
    .map(|(name, description)| tool(name, description, no_args()))
    .chain(std::iter::once(tool(
        "test_header_param",
        "Echoes a parameter that is mirrored in the Mcp-Param-Region header (SEP-2243)",
        json!({
            "type": "object",
            "properties": {
                "region": { "type": "string", "description": "A region name", "x-mcp-header": "Region" }
            },
            "required": ["region"]
        }),
    )))
    .collect()
}

/// Prompts that exist for the stateless revision's scenarios.
pub fn prompts() -> Vec<Value> {
    vec![json!({
        "name": "test_input_required_result_prompt",
        "description": "MRTR: prompt that requires elicitation input"
    })]
}

/// Whether the request runs under the stateless revision (per-request `_meta`).
fn is_stateless(context: &RequestContext<RoleServer>) -> bool {
    context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

const LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// Whether a log message at `level` may be sent for this request: always on
/// session-based revisions, and on the stateless revision only when the
/// request's `_meta` names a log level at or below `level`.
pub fn may_log(context: &RequestContext<RoleServer>, level: &str) -> bool {
    if !is_stateless(context) {
        return true;
    }
    let Some(wanted) = context.meta.get("io.modelcontextprotocol/logLevel").and_then(Value::as_str) else {
        return false;
    };
    let rank = |l: &str| LEVELS.iter().position(|x| *x == l);
    match (rank(level), rank(wanted)) {
        (Some(level), Some(wanted)) => level >= wanted,
        _ => false,
    }
}

type HmacSha256 = Hmac<Sha256>;

fn tag(shared: &Shared, data: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(&shared.state_key).expect("any key length works");
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Seals `payload` (plus a fresh nonce) into an opaque, integrity-protected
/// `requestState`.
fn seal(shared: &Shared, mut payload: Value) -> String {
    if let Some(obj) = payload.as_object_mut() {
        obj.insert("nonce".into(), json!(hex::encode(rand::random::<[u8; 8]>())));
    }
    let data = payload.to_string();
    format!("{}.{data}", tag(shared, &data))
}

/// Opens a `requestState` sealed by [`seal`]; `None` if it was altered.
fn open(shared: &Shared, state: &str) -> Option<Value> {
    let (mac, data) = state.split_once('.')?;
    let mut verifier = HmacSha256::new_from_slice(&shared.state_key).expect("any key length works");
    verifier.update(data.as_bytes());
    let raw = hex::decode(mac).ok()?;
    verifier.verify_slice(&raw).ok()?;
    serde_json::from_str(data).ok()
}

fn elicit_request(message: &str, field: &str, ty: &str) -> Value {
    json!({
        "method": "elicitation/create",
        "params": {
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": { field: { "type": ty } },
                "required": [field]
            }
        }
    })
}

fn sampling_request(text: &str, max_tokens: u32) -> Value {
    json!({
        "method": "sampling/createMessage",
        "params": {
            "messages": [{ "role": "user", "content": { "type": "text", "text": text } }],
            "maxTokens": max_tokens
        }
    })
}

fn roots_request() -> Value {
    json!({ "method": "roots/list", "params": {} })
}

fn input_required(requests: Value, state: Option<String>) -> Result<CallToolResponse, McpError> {
    let requests: InputRequests = parse(requests)?;
    Ok(InputRequiredResult::new(Some(requests), state).into())
}

/// The accepted elicitation response `key`, when it is well formed.
fn accepted_content<'a>(
    responses: Option<&'a rmcp::model::InputResponses>,
    key: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    let response = responses?.get(key)?.as_object()?;
    if response.get("action").and_then(Value::as_str) != Some("accept") {
        return None;
    }
    response.get("content")?.as_object()
}

/// The text of sampling response `key`, when it is well formed.
fn sampled_text<'a>(responses: Option<&'a rmcp::model::InputResponses>, key: &str) -> Option<&'a str> {
    let response = responses?.get(key)?.as_object()?;
    response.get("content")?.get("text")?.as_str()
}

/// The number of roots in roots response `key`, when it is well formed.
fn roots_count(responses: Option<&rmcp::model::InputResponses>, key: &str) -> Option<usize> {
    let response = responses?.get(key)?.as_object()?;
    response.get("roots")?.as_array().map(Vec::len)
}

fn invalid_state() -> McpError {
    McpError::invalid_params("requestState integrity check failed", None)
}

/// Handles the tools listed by [`tools`]; `None` if `request` names none of them.
pub async fn call_tool(
    server: &Everything,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Option<Result<CallToolResponse, McpError>> {
    let name = request.name.as_ref();
    if !tools().iter().any(|t| t.name == name) {
        return None;
    }
    let shared = &server.shared;
    let responses = request.input_responses.as_ref();
    let state = request.request_state.as_deref();
    let caps = context.client_capabilities();
    let is_mrtr = name.starts_with("test_input_required_result_");
    if is_mrtr && !is_stateless(context) {
        return Some(Ok(session_tool_result(name, call_session_tool(name, context).await)));
    }

    let outcome = match name {
        "test_missing_capability" => {
            if caps.as_ref().is_some_and(|c| c.sampling.is_some()) {
                if is_stateless(context) {
                    Ok(text_result("Success").into())
                } else {
                    let asked = ask_client(
                        context,
                        json!({ "sample": sampling_request("Reply with a short confirmation", 50) }),
                    )
                    .await;
                    Ok(session_tool_result(name, asked.map(|_| "Success".to_owned())))
                }
            } else {
                let required: Result<ClientCapabilities, McpError> = parse(json!({ "sampling": {} }));
                match required {
                    Ok(required) => Err(McpError::missing_required_client_capability(required)),
                    Err(e) => Err(e),
                }
            }
        }
        "test_input_required_result_elicitation" => {
            match accepted_content(responses, "user_name").and_then(|c| c.get("name")).and_then(Value::as_str) {
                Some(user) => Ok(text_result(format!("Hello, {user}!")).into()),
                None => {
                    input_required(json!({ "user_name": elicit_request("What is your name?", "name", "string") }), None)
                }
            }
        }
        "test_input_required_result_sampling" => match sampled_text(responses, "sample_request") {
            Some(text) => Ok(text_result(format!("Sampling result: {text}")).into()),
            None => input_required(
                json!({ "sample_request": sampling_request("What is the capital of France?", 100) }),
                None,
            ),
        },
        "test_input_required_result_list_roots" => match roots_count(responses, "roots_request") {
            Some(n) => Ok(text_result(format!("Found {n} root(s)")).into()),
            None => input_required(json!({ "roots_request": roots_request() }), None),
        },
        "test_input_required_result_request_state" => {
            let verified = state.map(|s| open(shared, s));
            match verified {
                Some(None) => Err(invalid_state()),
                Some(Some(st))
                    if st["kind"] == "request-state"
                        && accepted_content(responses, "confirm")
                            .and_then(|c| c.get("ok"))
                            .and_then(Value::as_bool)
                            == Some(true) =>
                {
                    Ok(text_result("state-ok: requestState validated").into())
                }
                _ => input_required(
                    json!({ "confirm": elicit_request("Please confirm", "ok", "boolean") }),
                    Some(seal(shared, json!({ "kind": "request-state" }))),
                ),
            }
        }
        "test_input_required_result_multiple_inputs" => {
            let verified = state.map(|s| open(shared, s));
            let user = accepted_content(responses, "user_name").and_then(|c| c.get("name")).and_then(Value::as_str);
            let greeting = sampled_text(responses, "greeting");
            let roots = roots_count(responses, "client_roots");
            match (verified, user, greeting, roots) {
                (Some(None), ..) => Err(invalid_state()),
                (Some(Some(st)), Some(user), Some(greeting), Some(roots)) if st["kind"] == "multiple-inputs" => {
                    Ok(text_result(format!("Name: {user}; Greeting: {greeting}; Roots: {roots}")).into())
                }
                _ => input_required(
                    json!({
                        "user_name": elicit_request("What is your name?", "name", "string"),
                        "greeting": sampling_request("Generate a greeting", 50),
                        "client_roots": roots_request()
                    }),
                    Some(seal(shared, json!({ "kind": "multiple-inputs" }))),
                ),
            }
        }
        "test_input_required_result_multi_round" => {
            let step1 = || {
                input_required(
                    json!({ "step1": elicit_request("Step 1: What is your name?", "name", "string") }),
                    Some(seal(shared, json!({ "kind": "multi-round", "round": 1 }))),
                )
            };
            match state.map(|s| open(shared, s)) {
                None => step1(),
                Some(None) => Err(invalid_state()),
                Some(Some(st)) => {
                    let round = st["round"].as_u64();
                    if round == Some(1)
                        && let Some(user) =
                            accepted_content(responses, "step1").and_then(|c| c.get("name")).and_then(Value::as_str)
                    {
                        input_required(
                            json!({ "step2": elicit_request("Step 2: What is your favorite color?", "color", "string") }),
                            Some(seal(shared, json!({ "kind": "multi-round", "round": 2, "name": user }))),
                        )
                    } else if round == Some(2)
                        && let Some(color) =
                            accepted_content(responses, "step2").and_then(|c| c.get("color")).and_then(Value::as_str)
                    {
                        let user = st["name"].as_str().unwrap_or("friend");
                        Ok(text_result(format!("Multi-round complete for {user} who likes {color}")).into())
                    } else {
                        step1()
                    }
                }
            }
        }
        "test_input_required_result_tampered_state" => match state.map(|s| open(shared, s)) {
            Some(None) => Err(invalid_state()),
            Some(Some(st)) if st["kind"] == "tamper-test" && accepted_content(responses, "confirm").is_some() => {
                Ok(text_result("integrity-ok: state verified").into())
            }
            _ => input_required(
                json!({ "confirm": elicit_request("Please confirm", "ok", "boolean") }),
                Some(seal(shared, json!({ "kind": "tamper-test" }))),
            ),
        },
        "test_input_required_result_capabilities" => {
            if let Some(responses) = responses.filter(|r| !r.is_empty()) {
                let keys: Vec<&str> = responses.keys().map(String::as_str).collect();
                Ok(text_result(format!("capabilities-ok: received {}", keys.join(","))).into())
            } else {
                let mut requests = serde_json::Map::new();
                if caps.as_ref().is_some_and(|c| c.elicitation.is_some()) {
                    requests.insert("elicit_input".into(), elicit_request("Elicitation input", "value", "string"));
                }
                if caps.as_ref().is_some_and(|c| c.sampling.is_some()) {
                    requests.insert("sample_input".into(), sampling_request("Sample request", 50));
                }
                if requests.is_empty() {
                    Ok(text_result("No supported capabilities declared").into())
                } else {
                    input_required(Value::Object(requests), Some(seal(shared, json!({ "kind": "capabilities-test" }))))
                }
            }
        }
        "test_streaming_elicitation" => Ok(text_result("Streaming complete").into()),
        "test_header_param" => {
            let region = crate::json::str_arg(request.arguments.as_ref(), "region");
            Ok(text_result(format!("region: {}", region.unwrap_or_default())).into())
        }
        "test_logging_tool" => {
            let notification: Result<ServerNotification, _> = parse(json!({
                "method": "notifications/message",
                "params": { "level": "info", "data": "Diagnostic trace logging activated" }
            }));
            if may_log(context, "info")
                && let Ok(notification) = notification
            {
                let _ = context.peer.send_notification(notification).await;
            }
            Ok(text_result("Logging evaluated").into())
        }
        "test_trigger_tool_change" | "test_trigger_prompt_change" => {
            let change = if name == "test_trigger_tool_change" { ListChange::Tools } else { ListChange::Prompts };
            let _ = shared.changes.send(change);
            if !is_stateless(context) {
                let _ = match change {
                    ListChange::Tools => context.peer.notify_tool_list_changed().await,
                    ListChange::Prompts => context.peer.notify_prompt_list_changed().await,
                };
            }
            Ok(text_result("Mutation triggered").into())
        }
        _ => return None,
    };
    Some(outcome)
}

/// Handles the multi round-trip prompt; `None` for any other prompt name.
pub async fn get_prompt(
    request: &GetPromptRequestParams,
    context: &RequestContext<RoleServer>,
) -> Option<Result<GetPromptResponse, McpError>> {
    if request.name != "test_input_required_result_prompt" {
        return None;
    }
    if !is_stateless(context) {
        return Some(get_session_prompt(&request.name, context).await);
    }
    let responses = request.input_responses.as_ref();
    let outcome =
        match accepted_content(responses, "user_context").and_then(|c| c.get("context")).and_then(Value::as_str) {
            Some(ctx) => crate::json::result::<rmcp::model::GetPromptResult>(json!({
                "messages": [{
                    "role": "user",
                    "content": { "type": "text", "text": format!("Prompt with context: {ctx}") }
                }]
            }))
            .map(GetPromptResponse::from),
            None => parse::<InputRequests>(json!({
                "user_context": elicit_request("What context should the prompt use?", "context", "string")
            }))
            .map(|requests| InputRequiredResult::from_input_requests(requests).into()),
        };
    Some(outcome)
}

/// Sends each request of `requests` (an `inputRequests`-shaped map) to the
/// client as a real server-to-client request over the session, all at once,
/// and collects the results under the same keys, as `inputResponses`.
async fn ask_client(context: &RequestContext<RoleServer>, requests: Value) -> Result<InputResponses, String> {
    let Value::Object(requests) = requests else {
        return Err("no input requests".to_owned());
    };
    let asks = requests.into_iter().map(|(key, request)| async move {
        let result = ask_one(context, &request).await?;
        Ok::<_, String>((key, result))
    });
    Ok(futures::future::try_join_all(asks).await?.into_iter().collect())
}

/// Sends one `{ method, params }` input request to the client through the
/// session, provided the client declared the capability it needs.
#[expect(deprecated, reason = "the session-based revisions still define sampling and roots")]
async fn ask_one(context: &RequestContext<RoleServer>, request: &Value) -> Result<Value, String> {
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
    let params = request.get("params").cloned().unwrap_or_else(|| json!({}));
    let caps = context.client_capabilities().unwrap_or_default();
    let declared = match method {
        "elicitation/create" => caps.elicitation.is_some(),
        "sampling/createMessage" => caps.sampling.is_some(),
        "roots/list" => caps.roots.is_some(),
        _ => return Err(format!("unsupported input request {method}")),
    };
    if !declared {
        return Err(format!("the client did not declare the capability {method} needs"));
    }
    let peer = &context.peer;
    let bad_params = |e: McpError| e.message.to_string();
    let failed = |e: rmcp::service::ServiceError| format!("{method} failed: {e}");
    let result = match method {
        "elicitation/create" => {
            serde_json::to_value(peer.create_elicitation(parse(params).map_err(bad_params)?).await.map_err(failed)?)
        }
        "sampling/createMessage" => {
            serde_json::to_value(peer.create_message(parse(params).map_err(bad_params)?).await.map_err(failed)?)
        }
        _ => serde_json::to_value(peer.list_roots().await.map_err(failed)?),
    };
    result.map_err(|e| e.to_string())
}

/// Why the client's answers did not complete a session-era tool call.
fn not_supplied(what: &str) -> String {
    format!("the client did not supply {what}")
}

/// The text of accepted elicitation response `key`'s `field`.
fn accepted_text<'a>(responses: &'a InputResponses, key: &str, field: &str) -> Result<&'a str, String> {
    accepted_content(Some(responses), key)
        .and_then(|c| c.get(field))
        .and_then(Value::as_str)
        .ok_or_else(|| not_supplied(&format!("an accepted {field}")))
}

/// A session-era tool call's final result: the completion text, or an error
/// result saying why the call could not complete.
fn session_tool_result(name: &str, outcome: Result<String, String>) -> CallToolResponse {
    match outcome {
        Ok(text) => text_result(text).into(),
        Err(why) => {
            let mut result = text_result(format!("{name}: {why}"));
            result.is_error = Some(true);
            result.into()
        }
    }
}

/// Runs a multi round-trip tool on a session-based revision: the input the
/// stateless revision asks for with `input_required` is requested from the
/// client directly, and the same completion text is returned.
async fn call_session_tool(name: &str, context: &RequestContext<RoleServer>) -> Result<String, String> {
    match name {
        "test_input_required_result_elicitation" => {
            let responses =
                ask_client(context, json!({ "user_name": elicit_request("What is your name?", "name", "string") }))
                    .await?;
            let user = accepted_text(&responses, "user_name", "name")?;
            Ok(format!("Hello, {user}!"))
        }
        "test_input_required_result_sampling" => {
            let responses = ask_client(
                context,
                json!({ "sample_request": sampling_request("What is the capital of France?", 100) }),
            )
            .await?;
            let text = sampled_text(Some(&responses), "sample_request").ok_or_else(|| not_supplied("sampled text"))?;
            Ok(format!("Sampling result: {text}"))
        }
        "test_input_required_result_list_roots" => {
            let responses = ask_client(context, json!({ "roots_request": roots_request() })).await?;
            let n = roots_count(Some(&responses), "roots_request").ok_or_else(|| not_supplied("a roots list"))?;
            Ok(format!("Found {n} root(s)"))
        }
        "test_input_required_result_request_state" => {
            let responses =
                ask_client(context, json!({ "confirm": elicit_request("Please confirm", "ok", "boolean") })).await?;
            let ok = accepted_content(Some(&responses), "confirm").and_then(|c| c.get("ok")).and_then(Value::as_bool);
            if ok == Some(true) {
                Ok("state-ok: requestState validated".to_owned())
            } else {
                Err(not_supplied("a confirmation"))
            }
        }
        "test_input_required_result_multiple_inputs" => {
            let responses = ask_client(
                context,
                json!({
                    "user_name": elicit_request("What is your name?", "name", "string"),
                    "greeting": sampling_request("Generate a greeting", 50),
                    "client_roots": roots_request()
                }),
            )
            .await?;
            let user = accepted_text(&responses, "user_name", "name")?;
            let greeting = sampled_text(Some(&responses), "greeting").ok_or_else(|| not_supplied("a greeting"))?;
            let roots = roots_count(Some(&responses), "client_roots").ok_or_else(|| not_supplied("a roots list"))?;
            Ok(format!("Name: {user}; Greeting: {greeting}; Roots: {roots}"))
        }
        "test_input_required_result_multi_round" => {
            let step1 =
                ask_client(context, json!({ "step1": elicit_request("Step 1: What is your name?", "name", "string") }))
                    .await?;
            let user = accepted_text(&step1, "step1", "name")?;
            let step2 = ask_client(
                context,
                json!({ "step2": elicit_request("Step 2: What is your favorite color?", "color", "string") }),
            )
            .await?;
            let color = accepted_text(&step2, "step2", "color")?;
            Ok(format!("Multi-round complete for {user} who likes {color}"))
        }
        "test_input_required_result_tampered_state" => {
            let responses =
                ask_client(context, json!({ "confirm": elicit_request("Please confirm", "ok", "boolean") })).await?;
            match accepted_content(Some(&responses), "confirm") {
                Some(_) => Ok("integrity-ok: state verified".to_owned()),
                None => Err(not_supplied("a confirmation")),
            }
        }
        "test_input_required_result_capabilities" => {
            let caps = context.client_capabilities().unwrap_or_default();
            let mut requests = serde_json::Map::new();
            if caps.elicitation.is_some() {
                requests.insert("elicit_input".into(), elicit_request("Elicitation input", "value", "string"));
            }
            if caps.sampling.is_some() {
                requests.insert("sample_input".into(), sampling_request("Sample request", 50));
            }
            if requests.is_empty() {
                return Ok("No supported capabilities declared".to_owned());
            }
            let responses = ask_client(context, Value::Object(requests)).await?;
            let keys: Vec<&str> = responses.keys().map(String::as_str).collect();
            Ok(format!("capabilities-ok: received {}", keys.join(",")))
        }
        _ => Err(format!("unknown tool {name}")),
    }
}

/// Serves the multi round-trip prompt on a session-based revision: elicits
/// the context over the session, then returns the same prompt.
async fn get_session_prompt(name: &str, context: &RequestContext<RoleServer>) -> Result<GetPromptResponse, McpError> {
    let responses = ask_client(
        context,
        json!({ "user_context": elicit_request("What context should the prompt use?", "context", "string") }),
    )
    .await
    .and_then(|responses| accepted_text(&responses, "user_context", "context").map(str::to_owned));
    match responses {
        Ok(ctx) => crate::json::result::<rmcp::model::GetPromptResult>(json!({
            "messages": [{
                "role": "user",
                "content": { "type": "text", "text": format!("Prompt with context: {ctx}") }
            }]
        }))
        .map(GetPromptResponse::from),
        Err(why) => Err(McpError::invalid_params(format!("{name}: {why}"), None)),
    }
}

/// Serves one `subscriptions/listen` stream: forwards the list changes its
/// accepted filter asks for until the client goes away.
pub async fn listen(shared: &Arc<Shared>, context: SubscriptionContext) -> Result<(), McpError> {
    let mut changes = shared.changes.subscribe();
    let sink = context.sink().clone();
    loop {
        tokio::select! {
            () = context.cancelled() => return Ok(()),
            change = changes.recv() => {
                let sent = match change {
                    Ok(ListChange::Tools) if sink.accepted().tools_list_changed == Some(true) => {
                        sink.notify_tool_list_changed().await
                    }
                    Ok(ListChange::Prompts) if sink.accepted().prompts_list_changed == Some(true) => {
                        sink.notify_prompt_list_changed().await
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                };
                if sent.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
