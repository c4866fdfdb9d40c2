//! The stateless protocol version (2026-07-28): no handshake and no
//! session; every request carries its protocol version and the client's
//! capabilities in `_meta`, mirrored into `MCP-Protocol-Version`,
//! `Mcp-Method` and `Mcp-Name` headers that must agree with the body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bastion_core::jsonrpc::{self, Message, Request, error_object, error_response};
use bastion_core::protocol::{self, MethodClass, STATELESS_VERSION, classify, meta};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{
    VERSION_HEADER, accepted, aggregate_capabilities, header_str, json_response, limit_response, response_value,
    rpc_error,
};
use crate::auth::Principal;
use crate::gateway::{CredentialWatch, Gateway};
use crate::load::{Kind, Slot};
use crate::session::Scope;
use crate::upstream::{Caller, EventSink, UpstreamEvent, bounded_body, bounded_events, log_rank};
use crate::{mrtr, proxy};

/// Methods the stateless version removed.
const REMOVED: &[&str] = &["ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"];

fn meta_version(msg: &Message) -> Option<&str> {
    let params = match msg {
        Message::Request(r) => r.params.as_ref(),
        Message::Notification(n) => n.params.as_ref(),
        Message::Response(_) => None,
    };
    jsonrpc::params_meta(params)?.get(meta::PROTOCOL_VERSION)?.as_str()
}

/// Whether a request without a session is meant as a stateless one.
pub(crate) fn is_stateless(headers: &HeaderMap, msg: &Message) -> bool {
    header_str(headers, VERSION_HEADER) == Some(STATELESS_VERSION) || meta_version(msg).is_some()
}

/// A header value, decoding the `=?base64?…?=` sentinel form.
fn decode_header_value(v: &str) -> Option<String> {
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => String::from_utf8(STANDARD.decode(b64).ok()?).ok(),
        None => Some(v.to_string()),
    }
}

fn mismatch(id: Option<&Value>, what: &str) -> Response {
    rpc_error(StatusCode::BAD_REQUEST, id, jsonrpc::HEADER_MISMATCH, format!("Header mismatch: {what}"))
}

pub(crate) async fn handle(
    gw: Arc<Gateway>,
    scope: Scope,
    principal: Principal,
    headers: &HeaderMap,
    msg: Message,
    raw: Bytes,
) -> Response {
    let req = match msg {
        Message::Request(r) => r,
        Message::Notification(_) => return accepted(),
        Message::Response(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                jsonrpc::INVALID_REQUEST,
                "clients do not send responses in this protocol version",
            );
        }
    };
    let id = Some(&req.id);
    if let Err(problem) = check_meta(&req) {
        return rpc_error(StatusCode::BAD_REQUEST, id, jsonrpc::INVALID_PARAMS, problem);
    }
    let header_version = header_str(headers, VERSION_HEADER);
    let body_version = meta_version(&Message::Request(req.clone())).map(str::to_string);
    let version = match (header_version, body_version.as_deref()) {
        (Some(h), Some(b)) if h != b => return mismatch(id, "MCP-Protocol-Version differs from _meta protocolVersion"),
        (Some(h), _) => h.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => unreachable_version(),
    };
    if version != STATELESS_VERSION {
        let mut body = error_response(
            id,
            jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            format!("Unsupported protocol version: {version}"),
        );
        body["error"]["data"] = json!({"supported": [STATELESS_VERSION], "requested": version});
        return json_response(StatusCode::BAD_REQUEST, &body);
    }
    match header_str(headers, "mcp-method") {
        Some(m) if m == req.method => {}
        Some(_) => return mismatch(id, "Mcp-Method differs from the body's method"),
        None => return mismatch(id, "the Mcp-Method header is required"),
    }
    if let Some(expected) = name_field(&req) {
        match header_str(headers, "mcp-name") {
            Some(h) if decode_header_value(h).as_deref() == Some(expected) => {}
            Some(_) => return mismatch(id, "Mcp-Name differs from the body"),
            None => return mismatch(id, "the Mcp-Name header is required"),
        }
    }
    // The request holds one of its principal's in-flight slots until its
    // answer has been sent (or it is parked, which holds a slot of its own).
    let slot = match gw.acquire(&principal, Kind::InFlight) {
        Ok(slot) => slot,
        Err(e) => return limit_response(id, &e),
    };
    // Without a session to close, the request itself ends when its key is
    // revoked or expires.
    let watch = gw.watch_credential(&principal);
    // Decided before anything reaches a server (the bridge below decides
    // again on its own path). A method no rule covers never does.
    if classify(&req.method).is_none() {
        return rpc_error(
            StatusCode::NOT_FOUND,
            id,
            jsonrpc::METHOD_NOT_FOUND,
            format!("Method not found: {}", req.method),
        );
    }
    let started = std::time::Instant::now();
    if let Some(audit) = &gw.audit
        && !audit.admits()
    {
        tracing::warn!(user = %principal.user, method = %req.method, "refused: the audit queue is full");
        proxy::count_audit_full(&gw, &req, started);
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"jsonrpc": "2.0", "id": req.id, "error": proxy::audit_full()}),
        );
    }
    let decision = proxy::authorize(&gw, &principal, &scope, &req);
    let authorized = match crate::telemetry::authorizing(&req.method, decision).await {
        Ok(a) => a,
        Err(refusal) => {
            let notes = proxy::Notes { policy: refusal.policy, ..Default::default() };
            return refused(&gw, &principal, &scope, &req, refusal.error, notes, started).await;
        }
    };
    // After the decision: checking the headers reads the tool's definition,
    // which may start the caller's own instance of the server.
    if let Err(resp) = check_param_headers(&gw, &scope, &principal.user, &req, headers).await {
        return resp;
    }
    // A single server that speaks this version itself gets the request as it
    // is, and its answer — status, body, stream — comes back as it is; lists
    // excepted, which show each caller only what it may use, and what the
    // data guard reads.
    if let Scope::Server(_) = &scope
        && classify(&req.method) != Some(MethodClass::List)
        && !crate::inspect::inspects(&gw, &scope, &req)
        && let Some(server) = gw.servers_in(&scope).into_iter().next()
    {
        let server = server.for_user(&principal.user);
        // The limit phase, as on the request path; what it admits is held
        // until the answer has been relayed.
        let admission = match proxy::limit(&gw, &authorized.access, &req, authorized.item.as_ref()).await {
            Ok(a) => a,
            Err(refusal) => {
                let notes = proxy::Notes { policy: refusal.policy, ..Default::default() };
                return refused(&gw, &principal, &scope, &req, refusal.error, notes, started).await;
            }
        };
        // Pinned tools and prompts are decided here too: what is not
        // served never reaches the server.
        if let Err(refusal) = admit_pinned(&gw, &server, &req).await {
            return refused(&gw, &principal, &scope, &req, refusal, Default::default(), started).await;
        }
        // In flight until the server's answer has been relayed to the end.
        let call = gw.drain.call();
        let answer = tokio::select! {
            a = server.stateless_passthrough(raw, headers) => a,
            () = gw.drain.expired() => return super::shutting_down(id),
        };
        // Audited as the server answered: the outcome by its status (a
        // streamed answer's own errors are the server's to report), the
        // size by its length when it says it.
        let audit_answer = |outcome: Result<Value, Value>, size: Option<u64>| {
            let gw = gw.clone();
            let (principal, scope, req) = (principal.clone(), scope.clone(), req.clone());
            async move {
                proxy::count_request(&gw, &principal, &scope, &req, &outcome, started);
                if let Some(audit) = &gw.audit {
                    crate::audit::record_request(
                        audit,
                        &principal,
                        &scope,
                        None,
                        &req,
                        &outcome,
                        Default::default(),
                        started,
                        size,
                    )
                    .await;
                }
            }
        };
        match answer {
            Some(Ok(resp)) => {
                let outcome = if resp.status().is_success() {
                    Ok(Value::Null)
                } else {
                    Err(json!({"code": jsonrpc::INTERNAL_ERROR, "message": format!("HTTP {}", resp.status().as_u16())}))
                };
                audit_answer(outcome, resp.content_length()).await;
                let held = Held { _slot: slot, watch, _call: call, _admission: admission };
                return relay(&gw, &req.id, resp, held, server.spec().max_message_bytes);
            }
            Some(Err(e)) => {
                let err = crate::proxy::log_call_error(server.name(), &req.method, e);
                audit_answer(Err(err.clone()), None).await;
                return json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": req.id, "error": err}));
            }
            None => {}
        }
    }
    if req.method == "server/discover" {
        return json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": req.id, "result": discover(&gw, &scope, &principal.user).await}),
        );
    }
    if req.method == "initialize" || REMOVED.contains(&req.method.as_str()) {
        return rpc_error(
            StatusCode::NOT_FOUND,
            id,
            jsonrpc::METHOD_NOT_FOUND,
            format!("Method not found: {}", req.method),
        );
    }
    if req.method == "subscriptions/listen" {
        drop(slot);
        return listen(gw, scope, principal, req).await;
    }
    let client_capabilities = jsonrpc::params_meta(req.params.as_ref())
        .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let log_level = jsonrpc::params_meta(req.params.as_ref())
        .and_then(|m| m.get(meta::LOG_LEVEL))
        .and_then(Value::as_str)
        .and_then(log_rank);
    let req = strip_stateless_meta(req);
    bridge(gw, scope, principal, req, client_capabilities, log_level, (slot, watch)).await
}

/// The pin check of a request passed through: a tool call, a prompt get,
/// or a completion of a prompt's argument.
async fn admit_pinned(gw: &Gateway, server: &crate::upstream::UpstreamHandle, req: &Request) -> Result<(), Value> {
    let params = req.params.as_ref();
    let name = |v: Option<&Value>| v.and_then(|p| p.get("name")).and_then(Value::as_str).map(str::to_string);
    let (kind, name) = match req.method.as_str() {
        "tools/call" => (crate::pins::ItemKind::Tool, name(params)),
        "prompts/get" => (crate::pins::ItemKind::Prompt, name(params)),
        "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            if r.and_then(|r| r.get("type")).and_then(Value::as_str) != Some("ref/prompt") {
                return Ok(());
            }
            (crate::pins::ItemKind::Prompt, name(r))
        }
        _ => return Ok(()),
    };
    // A missing name is the server's to answer.
    let Some(name) = name else { return Ok(()) };
    crate::pins::admit(gw, server, kind, &name).await
}

/// `subscriptions/listen` on servers reached through a session-based
/// connection: Bastion keeps the subscription itself, fed by the servers'
/// notifications, and subscribes upstream to the resources asked for.
async fn listen(gw: Arc<Gateway>, scope: Scope, principal: Principal, req: Request) -> Response {
    let id = Some(&req.id);
    let slots = match (gw.acquire(&principal, Kind::Stream), gw.acquire(&principal, Kind::ListenStream)) {
        (Ok(a), Ok(b)) => vec![a, b],
        (Err(e), _) | (_, Err(e)) => return limit_response(id, &e),
    };
    let filter = req.params.as_ref().and_then(|p| p.get("notifications")).cloned().unwrap_or_else(|| json!({}));
    let flag = |k: &str| filter.get(k).and_then(Value::as_bool).unwrap_or(false);
    let uris: Vec<String> = filter
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let f = crate::session::ListenFilter {
        subscription_id: req.id.clone(),
        tools: flag("toolsListChanged"),
        prompts: flag("promptsListChanged"),
        resources: flag("resourcesListChanged"),
    };
    // The stream is an internal session: it owns its subscriptions, which
    // end with it.
    let session = match gw.open_session(crate::session::NewSession {
        principal,
        scope: scope.clone(),
        protocol_version: STATELESS_VERSION.into(),
        client_capabilities: json!({}),
        legacy: false,
        listen: Some(f.clone()),
    }) {
        Ok(s) => s,
        Err(e) => return limit_response(id, &e),
    };
    let mut subscribed = Vec::new();
    for uri in &uris {
        let sub = Request { id: json!(0), method: "resources/subscribe".into(), params: Some(json!({"uri": uri})) };
        // The stream cannot receive what a server sends about this call.
        let ctx = proxy::RequestCtx {
            principal: &session.principal,
            scope: &scope,
            caller: Caller::Quiet(session.principal.user.clone()),
            session: Some(&session),
        };
        if proxy::handle_request(&gw, &ctx, &sub).await.is_ok() {
            subscribed.push(uri.clone());
        }
    }
    let mut acknowledged = serde_json::Map::new();
    for (key, on) in
        [("toolsListChanged", f.tools), ("promptsListChanged", f.prompts), ("resourcesListChanged", f.resources)]
    {
        if on {
            acknowledged.insert(key.into(), Value::Bool(true));
        }
    }
    if !uris.is_empty() {
        acknowledged.insert("resourceSubscriptions".into(), json!(subscribed));
    }
    let ack = json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"_meta": {meta::SUBSCRIPTION_ID: req.id}, "notifications": acknowledged}
    });
    super::session_stream(gw, session, super::sse_frame(&ack), slots)
}

/// What the producer of an answer sends: messages about the request, then
/// the final JSON-RPC response.
enum Frame {
    Message(Value),
    Final(Value),
}

/// A stateless client of a session-based server: the call runs in a task;
/// server requests become an `InputRequiredResult`, and a retry carrying
/// the `requestState` resumes the same call (see [`crate::mrtr`]).
async fn bridge(
    gw: Arc<Gateway>,
    scope: Scope,
    principal: Principal,
    mut req: Request,
    caps: Value,
    log_level: Option<u8>,
    (slot, watch): (Slot, CredentialWatch),
) -> Response {
    let (state, responses) = mrtr::take_retry_fields(&mut req);
    let fingerprint = mrtr::fingerprint(&req);
    let running = match state {
        Some(token) => match gw.continuations.resume(&token, &principal.user, &fingerprint, responses) {
            Ok(r) => r,
            Err(e) => return json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": req.id, "error": e})),
        },
        None => start(gw.clone(), scope, req.clone(), principal.clone()),
    };
    let (tx, rx) = mpsc::channel::<Frame>(64);
    let id = req.id.clone();
    let call = Call { principal, fingerprint, req, caps, log_level };
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _slot = slot;
        let ended = tx.clone();
        tokio::select! {
            _ = drive(gw, call, running, tx) => {}
            // Dropping the call cancels it upstream.
            _ = watch.token.cancelled() => {
                let err = error_object(jsonrpc::FORBIDDEN, "the key that made this request was revoked or has expired");
                let _ = ended.send(Frame::Final(response_value(&id, Err(err)))).await;
            }
        }
    }));
    frames_response(rx).await
}

/// A request refused before any server is called: counted, audited and
/// answered with its error.
async fn refused(
    gw: &Gateway,
    principal: &Principal,
    scope: &Scope,
    req: &Request,
    error: Value,
    notes: proxy::Notes,
    started: std::time::Instant,
) -> Response {
    let outcome = Err(error);
    proxy::count_request(gw, principal, scope, req, &outcome, started);
    if let Some(audit) = &gw.audit {
        crate::audit::record_request(audit, principal, scope, None, req, &outcome, notes, started, None).await;
    }
    let error = outcome.err().unwrap_or_default();
    super::answer_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": req.id, "error": error}))
}

fn start(gw: Arc<Gateway>, scope: Scope, req: Request, principal: Principal) -> mrtr::Running {
    let (sink, events) = EventSink::new(principal.user.clone());
    let own_sink = sink.clone();
    let (otx, orx) = oneshot::channel();
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let ctx =
            proxy::RequestCtx { principal: &principal, scope: &scope, caller: Caller::Client(sink), session: None };
        let mut outcome = proxy::handle_request(&gw, &ctx, &req).await;
        if let Ok(result) = outcome.as_mut() {
            decorate_result(&req.method, result);
        }
        let _ = otx.send(outcome);
    }));
    mrtr::Running { sink: own_sink, events, outcome: orx, task: mrtr::AbortOnDrop(task.abort_handle()) }
}

fn notification_value(method: String, params: Option<Value>) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "method": method});
    if let Some(p) = params {
        m["params"] = p;
    }
    m
}

/// The capability a server request needs that the client did not declare.
fn lacking(caps: &Value, method: &str) -> Option<&'static str> {
    mrtr::required_capability(method).filter(|c| caps.get(*c).is_none_or(Value::is_null))
}

/// Follows a running call until it ends or needs input from the client.
/// How long the bridge waits for more server requests after the first, so
/// that requests a server sends together reach the client in one round.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// A stateless call being followed.
struct Call {
    principal: Principal,
    fingerprint: String,
    req: Request,
    caps: Value,
    /// The `_meta` log level; without one the client gets no log messages.
    log_level: Option<u8>,
}

impl Call {
    /// Whether a notification may reach this client.
    fn admits(&self, method: &str, params: Option<&Value>) -> bool {
        if method != "notifications/message" {
            return true;
        }
        let level = params.and_then(|p| p.get("level")).and_then(Value::as_str).and_then(log_rank).unwrap_or(0);
        self.log_level.is_some_and(|min| level >= min)
    }
}

async fn drive(gw: Arc<Gateway>, call: Call, mut running: mrtr::Running, tx: mpsc::Sender<Frame>) {
    let Call { ref req, ref caps, .. } = call;
    let mut events_open = true;
    // A capability the server needed and the client lacks, if any.
    let mut missing: Option<&'static str> = None;
    let can_ask = mrtr::SUPPORTED.contains(&req.method.as_str());
    loop {
        tokio::select! {
            biased;
            outcome = &mut running.outcome => {
                // What came before the result, in order; a server request
                // behind it is moot now and refused.
                while let Ok(ev) = running.events.try_recv() {
                    match ev {
                        UpstreamEvent::Notification { method, params } => {
                            if call.admits(&method, params.as_ref()) {
                                let _ = tx.send(Frame::Message(notification_value(method, params))).await;
                            }
                        }
                        UpstreamEvent::Request { reply, .. } => {
                            let _ = reply.send(Err(error_object(jsonrpc::INTERNAL_ERROR, "the call has ended")));
                        }
                    }
                }
                let mut outcome = outcome.unwrap_or_else(|_| Err(error_object(jsonrpc::INTERNAL_ERROR, "the call ended unexpectedly")));
                // The server asked for something the client cannot do and
                // could not finish without it: say which capability.
                let failed = match &outcome {
                    Err(_) => true,
                    Ok(r) => r.get("isError").and_then(Value::as_bool).unwrap_or(false),
                };
                if let (Some(cap), true) = (missing, failed) {
                    let mut err = error_object(
                        jsonrpc::MISSING_CLIENT_CAPABILITY,
                        format!("Missing required client capability: {cap}"),
                    );
                    err["data"] = json!({"requiredCapabilities": {cap: {}}});
                    outcome = Err(err);
                }
                let _ = tx.send(Frame::Final(response_value(&req.id, outcome))).await;
                return;
            }
            ev = running.events.recv(), if events_open => match ev {
                None => events_open = false,
                Some(UpstreamEvent::Notification { method, params }) => {
                    if call.admits(&method, params.as_ref())
                        && tx.send(Frame::Message(notification_value(method, params))).await.is_err()
                    {
                        return;
                    }
                }
                Some(UpstreamEvent::Request { method, params, reply }) => {
                    if !can_ask {
                        let _ = reply.send(Err(error_object(jsonrpc::METHOD_NOT_FOUND, "the client cannot receive requests")));
                        continue;
                    }
                    if let Some(cap) = lacking(caps, &method) {
                        // Refused to the server; whether that fails the call
                        // is the server's decision, reported as -32021 below.
                        let _ = reply.send(Err(error_object(jsonrpc::METHOD_NOT_FOUND, format!("the client does not support {method}"))));
                        missing = Some(cap);
                        continue;
                    }
                    let mut requests = vec![("input-1".to_string(), method, params)];
                    let mut pending = vec![("input-1".to_string(), reply)];
                    // Requests the server sent together are asked together:
                    // gather what arrives within a short window.
                    let window = tokio::time::sleep(GATHER_WINDOW);
                    tokio::pin!(window);
                    loop {
                        let ev = tokio::select! {
                            biased;
                            ev = running.events.recv() => match ev { Some(ev) => ev, None => break },
                            _ = &mut window => break,
                        };
                        match ev {
                            UpstreamEvent::Request { method, params, reply } => {
                                if lacking(caps, &method).is_some() {
                                    let _ = reply.send(Err(error_object(
                                        jsonrpc::METHOD_NOT_FOUND,
                                        format!("the client does not support {method}"),
                                    )));
                                    continue;
                                }
                                let key = format!("input-{}", requests.len() + 1);
                                requests.push((key.clone(), method, params));
                                pending.push((key, reply));
                            }
                            UpstreamEvent::Notification { method, params } => {
                                if call.admits(&method, params.as_ref()) {
                                    let _ = tx.send(Frame::Message(notification_value(method, params))).await;
                                }
                            }
                        }
                    }
                    let parked = match gw.acquire(&call.principal, Kind::Parked) {
                        Ok(slot) => slot,
                        Err(e) => {
                            // No room to wait for the client: the server's
                            // requests are refused and the call ends.
                            for (_, reply) in pending {
                                let _ = reply.send(Err(error_object(jsonrpc::INTERNAL_ERROR, "the client cannot answer now")));
                            }
                            let err = error_object(jsonrpc::LIMIT_REACHED, e.to_string());
                            let _ = tx.send(Frame::Final(response_value(&req.id, Err(err)))).await;
                            return;
                        }
                    };
                    let token = gw.continuations.park(&call.principal, parked, call.fingerprint.clone(), pending, running);
                    let result = mrtr::input_required(&requests, &token);
                    let _ = tx.send(Frame::Final(response_value(&req.id, Ok(result)))).await;
                    return;
                }
            },
            _ = tx.closed() => return,
        }
    }
}

/// JSON when the final answer comes first, else an SSE stream.
async fn frames_response(mut rx: mpsc::Receiver<Frame>) -> Response {
    let first = match rx.recv().await {
        Some(f) => f,
        None => return super::accepted(),
    };
    let first = match first {
        Frame::Final(v) => {
            let status =
                v.pointer("/error/code").and_then(Value::as_i64).map(status_for_error).unwrap_or(StatusCode::OK);
            let mut resp = super::answer_response(status, &v);
            if resp.status() == StatusCode::TOO_MANY_REQUESTS && !resp.headers().contains_key(http::header::RETRY_AFTER)
            {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(super::RETRY_AFTER_SECONDS));
            }
            return resp;
        }
        Frame::Message(m) => m,
    };
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx).map(|f| match f {
        Frame::Message(m) | Frame::Final(m) => m,
    });
    let stream = futures::stream::once(async move { first })
        .chain(rest)
        .map(|m| Ok::<_, std::convert::Infallible>(super::sse_frame(&m)));
    super::sse_response(axum::body::Body::from_stream(stream))
}

/// Streams an upstream answer back unchanged (status, type, body), within
/// `upstream.max_message_bytes` per event (or in all, for JSON); the
/// request's in-flight slot is held until the body ends, which it does at
/// once if the request's key is revoked or expires.
/// What a relayed answer holds until it has been sent to the end.
struct Held {
    _slot: Slot,
    watch: CredentialWatch,
    _call: tokio_util::task::task_tracker::TaskTrackerToken,
    _admission: crate::limit::Admission,
}

/// Relays a server's own answer. A streamed answer still running when the
/// gateway's shutdown grace period ends gets the shutdown error as its
/// last event.
fn relay(gw: &Gateway, id: &Value, resp: reqwest::Response, held: Held, max: usize) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
    let is_sse =
        content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    let bytes: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> = if is_sse {
        bounded_events(resp.bytes_stream(), max).boxed()
    } else {
        bounded_body(resp.bytes_stream(), max).boxed()
    };
    let ended = held.watch.token.clone().cancelled_owned();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let expired = {
        let (cut, expired) = (cut.clone(), gw.drain.expired());
        async move {
            expired.await;
            cut.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let last = {
        let error = json!({"jsonrpc": "2.0", "id": id, "error": crate::drain::shutting_down()});
        futures::stream::once(async move {
            (is_sse && cut.load(std::sync::atomic::Ordering::Relaxed)).then(|| Ok(super::sse_frame(&error)))
        })
        .filter_map(futures::future::ready)
    };
    let body = bytes.take_until(ended).take_until(expired).chain(last);
    let body = axum::body::Body::from_stream(body.map(move |chunk| {
        let _held = &held;
        chunk
    }));
    let mut out = if is_sse { super::sse_response(body) } else { Response::new(body) };
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    out
}

/// The HTTP status a stateless error answer carries (2026-07-28 transport rules).
pub(crate) fn status_for_error(code: i64) -> StatusCode {
    match code {
        jsonrpc::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        jsonrpc::HEADER_MISMATCH | jsonrpc::MISSING_CLIENT_CAPABILITY | jsonrpc::UNSUPPORTED_PROTOCOL_VERSION => {
            StatusCode::BAD_REQUEST
        }
        jsonrpc::LIMIT_REACHED => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    }
}

fn unreachable_version() -> String {
    // `is_stateless` guarantees one of the two; treat a missing one as the
    // oldest header-less version, which has no stateless form.
    "2025-03-26".into()
}

/// `Mcp-Param-*` headers mirror tool arguments the tool's schema marks with
/// `x-mcp-header`; whatever routes or limits by header must see the same
/// values the server executes, so they are checked against the body.
async fn check_param_headers(
    gw: &Gateway,
    scope: &Scope,
    user: &str,
    req: &Request,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let id = Some(&req.id);
    for (name, value) in headers {
        if name.as_str().starts_with("mcp-param-") && value.to_str().is_err() {
            return Err(mismatch(id, &format!("{name} contains characters not allowed in a header")));
        }
    }
    if req.method != "tools/call" {
        return Ok(());
    }
    let Some(name) = req.params.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str) else { return Ok(()) };
    // Unknown tools fail in the call itself. When the tool list cannot be
    // had, the headers cannot be checked: the request is refused (fail
    // closed) with the error the call would have met.
    let tool = match crate::proxy::tool_definition(gw, scope, user, name).await {
        Ok(Some(tool)) => tool,
        Ok(None) => return Ok(()),
        Err(error) => {
            let status = status_for_error(error.get("code").and_then(Value::as_i64).unwrap_or(0));
            return Err(json_response(status, &json!({"jsonrpc": "2.0", "id": req.id, "error": error})));
        }
    };
    let Some(props) = tool.pointer("/inputSchema/properties").and_then(Value::as_object) else { return Ok(()) };
    let args = req.params.as_ref().and_then(|p| p.get("arguments"));
    for (prop, schema) in props {
        let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) else { continue };
        let header_name = format!("mcp-param-{}", header.to_ascii_lowercase());
        let arg = args.and_then(|a| a.get(prop)).filter(|v| !v.is_null());
        let sent = headers.get(header_name.as_str()).and_then(|v| v.to_str().ok()).and_then(decode_header_value);
        match (arg, sent) {
            (Some(_), None) => return Err(mismatch(id, &format!("the Mcp-Param-{header} header is required"))),
            (Some(a), Some(v)) if !param_matches(a, &v) => {
                return Err(mismatch(id, &format!("Mcp-Param-{header} differs from the body")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Compares a header value with the argument it mirrors: strings exactly,
/// booleans as `true`/`false`, numbers numerically.
fn param_matches(arg: &Value, header: &str) -> bool {
    match arg {
        Value::String(s) => s == header,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) => header.trim().parse::<f64>().ok().zip(n.as_f64()).is_some_and(|(h, a)| h == a),
        _ => false,
    }
}

/// Every stateless request says, in `_meta`, which version it speaks and
/// what the client can do.
fn check_meta(req: &Request) -> Result<(), &'static str> {
    let Some(meta) = jsonrpc::params_meta(req.params.as_ref()) else {
        return Err("Invalid params: _meta with the protocol version and client capabilities is required");
    };
    if !meta.get(meta::PROTOCOL_VERSION).is_some_and(Value::is_string) {
        return Err("Invalid params: _meta is missing io.modelcontextprotocol/protocolVersion");
    }
    if !meta.get(meta::CLIENT_CAPABILITIES).is_some_and(Value::is_object) {
        return Err("Invalid params: _meta is missing io.modelcontextprotocol/clientCapabilities");
    }
    Ok(())
}

fn name_field(req: &Request) -> Option<&str> {
    let p = req.params.as_ref()?;
    match req.method.as_str() {
        "tools/call" | "prompts/get" => p.get("name")?.as_str(),
        "resources/read" => p.get("uri")?.as_str(),
        _ => None,
    }
}

/// The upstream connection has its own protocol version and capabilities;
/// the per-request ones of the stateless client stay at the gateway.
fn strip_stateless_meta(mut req: Request) -> Request {
    if let Some(meta) = req.params.as_mut().and_then(|p| p.get_mut("_meta")).and_then(Value::as_object_mut) {
        meta.remove(meta::PROTOCOL_VERSION);
        meta.remove(meta::CLIENT_CAPABILITIES);
        meta.remove(meta::CLIENT_INFO);
        meta.remove(meta::LOG_LEVEL);
    }
    if let Some(p) = req.params.as_mut().and_then(Value::as_object_mut)
        && p.get("_meta").and_then(Value::as_object).is_some_and(|m| m.is_empty())
    {
        p.remove("_meta");
    }
    req
}

async fn discover(gw: &Gateway, scope: &Scope, user: &str) -> Value {
    let (capabilities, server_info, instructions) = match scope {
        Scope::Server(_) => match gw.servers_in(scope).into_iter().next() {
            Some(s) => match s.for_user(user).info().await {
                Ok(info) => (info.capabilities, info.server_info, info.instructions),
                Err(_) => (json!({}), bastion_info(), None),
            },
            None => (json!({}), bastion_info(), None),
        },
        _ => (aggregate_capabilities(), bastion_info(), None),
    };
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": [STATELESS_VERSION],
        "capabilities": strip_removed_capabilities(capabilities),
        "_meta": {meta::SERVER_INFO: server_info},
        "ttlMs": 0,
        "cacheScope": "private"
    });
    if let Some(i) = instructions {
        result["instructions"] = i;
    }
    let _ = protocol::ALL_VERSIONS;
    result
}

fn strip_removed_capabilities(mut caps: Value) -> Value {
    if let Some(r) = caps.get_mut("resources").and_then(Value::as_object_mut) {
        r.remove("subscribe");
    }
    caps
}

fn bastion_info() -> Value {
    json!({"name": "bastion", "version": env!("CARGO_PKG_VERSION")})
}

/// Adds what stateless results must carry when the upstream (a
/// session-based server) did not: `resultType`, and caching hints on lists.
pub(crate) fn decorate_result(method: &str, result: &mut Value) {
    let Some(obj) = result.as_object_mut() else { return };
    obj.entry("resultType").or_insert_with(|| Value::from("complete"));
    if matches!(
        method,
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" | "resources/read"
    ) {
        obj.entry("ttlMs").or_insert_with(|| Value::from(0));
        obj.entry("cacheScope").or_insert_with(|| Value::from("private"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_values_compare_by_type() {
        assert!(param_matches(&json!("us-west1"), "us-west1"));
        assert!(!param_matches(&json!("a"), "b"));
        assert!(param_matches(&json!(42), "42.0"));
        assert!(param_matches(&json!(true), "true"));
        assert!(!param_matches(&json!(true), "True"));
        assert!(!param_matches(&json!({"x": 1}), "x"));
    }

    #[test]
    fn base64_sentinel() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        let enc = format!("=?base64?{}?=", STANDARD.encode("héllo"));
        assert_eq!(decode_header_value(&enc).as_deref(), Some("héllo"));
        assert_eq!(decode_header_value("=?base64?!!!?="), None);
    }

    #[test]
    fn results_get_stateless_fields() {
        let mut r = json!({"tools": []});
        decorate_result("tools/list", &mut r);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        let mut r = json!({"content": [], "resultType": "input_required"});
        decorate_result("tools/call", &mut r);
        assert_eq!(r["resultType"], "input_required");
        assert!(r.get("ttlMs").is_none());
    }

    #[test]
    fn stateless_meta_is_not_forwarded() {
        let req = Request {
            id: json!(1),
            method: "tools/call".into(),
            params: Some(json!({"name": "x", "_meta": {meta::PROTOCOL_VERSION: "2026-07-28", "progressToken": 1}})),
        };
        let out = strip_stateless_meta(req);
        assert_eq!(out.params.unwrap()["_meta"], json!({"progressToken": 1}));
    }
}
