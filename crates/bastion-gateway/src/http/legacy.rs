//! Legacy HTTP+SSE (protocol 2024-11-05) for old clients: `GET /sse` opens
//! a stream whose first event names the message endpoint; every answer
//! travels on the stream, and each POST is answered `202 Accepted`. Each
//! request POSTed holds one of the principal's in-flight slots while it
//! runs: past the cap the POST gets 429, so one session cannot start
//! unbounded work.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use bastion_core::jsonrpc::{self, Message, id_key};
use bastion_core::protocol;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{
    accepted, client_info_too_large, event_to_message, limit_response, on_client_notification, read_body,
    refuse_non_stream, response_value, rpc_error, session_stream, shutting_down,
};
use crate::auth::Principal;
use crate::gateway::Gateway;
use crate::load::Kind;
use crate::proxy;
use crate::session::{NewSession, Scope, Session};
use crate::upstream::{Caller, EventSink};

pub(crate) async fn sse_all(
    State(gw): State<Arc<Gateway>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    open(gw, Scope::All, principal, headers).await
}

pub(crate) async fn sse_named(
    State(gw): State<Arc<Gateway>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match gw.resolve_scope(&name) {
        Some(scope) => open(gw, scope, principal, headers).await,
        None => rpc_error(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, "no such server or group"),
    }
}

async fn open(gw: Arc<Gateway>, scope: Scope, principal: Principal, headers: HeaderMap) -> Response {
    if let Some(resp) = refuse_non_stream(&headers) {
        return resp;
    }
    if gw.drain.is_stopping() {
        return shutting_down(None);
    }
    let stream_slot = match gw.acquire(&principal, Kind::Stream) {
        Ok(slot) => slot,
        Err(e) => return limit_response(None, &e),
    };
    let session = match gw.open_session(NewSession {
        principal,
        scope,
        protocol_version: "2024-11-05".into(),
        client_capabilities: json!({}),
        legacy: true,
        listen: None,
    }) {
        Ok(s) => s,
        Err(e) => return limit_response(None, &e),
    };
    // The first event names the message endpoint; it is not JSON-RPC.
    let endpoint = format!("event: endpoint\ndata: /messages?sessionId={}\n\n", session.id);
    session_stream(gw, session, axum::body::Bytes::from(endpoint), vec![stream_slot])
}

/// `POST /messages?sessionId=…`.
pub(crate) async fn message(
    State(gw): State<Arc<Gateway>>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let Some(session) = query.get("sessionId").and_then(|id| gw.sessions.get(id, &principal)).filter(|s| s.legacy)
    else {
        return rpc_error(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, "Session not found");
    };
    let limit = gw.runtime().config.http.max_body_bytes;
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::PARSE_ERROR, "Parse error: invalid JSON");
    };
    let msg = match Message::from_value(value) {
        Ok(m) => m,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::INVALID_REQUEST, e.to_string()),
    };
    if let Message::Request(req) = &msg {
        if gw.drain.is_stopping() {
            return shutting_down(Some(&req.id));
        }
        // Every answer travels on the stream: while the client does not
        // read it, it may not start more work.
        if let Err(resp) = wait_for_room(&gw, &session, &req.id).await {
            return resp;
        }
    }
    match msg {
        Message::Request(req) if req.method == "initialize" => {
            if let Some(problem) = client_info_too_large(&gw, req.params.as_ref()) {
                return rpc_error(StatusCode::BAD_REQUEST, Some(&req.id), jsonrpc::INVALID_PARAMS, problem);
            }
            let result = legacy_initialize(&gw, &session, req.params.as_ref()).await;
            session.send(&response_value(&req.id, result)).await;
        }
        Message::Request(req) => {
            let slot = match gw.acquire(&principal, Kind::InFlight) {
                Ok(slot) => slot,
                Err(e) => return limit_response(Some(&req.id), &e),
            };
            let gw = gw.clone();
            let session = session.clone();
            // In flight until its answer is queued, so shutdown waits for it.
            let call = gw.drain.call();
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let _slot = slot;
                let _call = call;
                let (sink, mut events) = EventSink::new(session.principal.user.clone());
                let sink = sink.with_log_level(session.log_level());
                let key = id_key(&req.id);
                let token = session.start_request(key.clone());
                let work = super::run_request(&gw, &principal, &session, &req, Caller::Client(sink));
                tokio::pin!(work);
                let outcome = loop {
                    tokio::select! {
                        biased;
                        o = &mut work => break Some(o),
                        Some(ev) = events.recv() => {
                            if let Some(m) = event_to_message(Some(&session), ev) {
                                relay(&session, m).await;
                            }
                        }
                        _ = token.cancelled() => break None,
                    }
                };
                while let Ok(ev) = events.try_recv() {
                    if let Some(m) = event_to_message(Some(&session), ev) {
                        relay(&session, m).await;
                    }
                }
                session.finish_request(&key);
                if let Some(o) = outcome
                    && !session.send(&response_value(&req.id, o)).await
                {
                    tracing::info!(session = %super::short(&session.id), "answer not delivered: the legacy stream has ended");
                }
                super::linger(session.clone(), events);
            }));
        }
        Message::Notification(n) => on_client_notification(&session, &n.method, n.params.as_ref()),
        Message::Response(r) => {
            session.answer_server_request(&id_key(&r.id), r.outcome);
        }
    }
    accepted()
}

/// What the server sends about a call: its requests (sampling,
/// elicitation) wait for room on the stream; notifications are offered.
async fn relay(session: &Session, m: Value) {
    if m.get("id").is_some() {
        session.send(&m).await;
    } else {
        session.push(m);
    }
}

/// Holds a request back while the session's stream queue is full. Past
/// `upstream.call_timeout`, or when the stream ends, the request is refused.
async fn wait_for_room(gw: &Gateway, session: &Session, id: &Value) -> Result<(), Response> {
    let Some(outbox) = session.outbox() else {
        return Err(rpc_error(StatusCode::NOT_FOUND, Some(id), jsonrpc::INVALID_REQUEST, "Session not found"));
    };
    let limit = gw.runtime().config.upstream.call_timeout;
    let waited = tokio::select! {
        r = outbox.wait_room() => r.ok(),
        () = session.closed.cancelled() => None,
        () = tokio::time::sleep(limit) => {
            tracing::warn!(session = %super::short(&session.id), "legacy request refused: the client has not read its stream");
            let mut resp = rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(id),
                jsonrpc::LIMIT_REACHED,
                "the session's event stream is not being read; read it before sending more requests",
            );
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static(super::RETRY_AFTER_SECONDS));
            return Err(resp);
        }
    };
    waited.ok_or_else(|| rpc_error(StatusCode::NOT_FOUND, Some(id), jsonrpc::INVALID_REQUEST, "Session not found"))
}

async fn legacy_initialize(gw: &Gateway, session: &Session, params: Option<&Value>) -> proxy::Outcome {
    let requested = params.and_then(|p| p.get("protocolVersion")).and_then(Value::as_str);
    let version = protocol::negotiate_session_version(requested);
    // Legacy sessions learn the client's capabilities only now.
    if let Some(caps) = params.and_then(|p| p.get("capabilities")) {
        session.set_client_capabilities(caps.clone());
    }
    match &session.scope {
        Scope::Server(name) => {
            let server = gw.servers_in(&session.scope).into_iter().next();
            let Some(server) = server else {
                return Err(jsonrpc::error_object(jsonrpc::INVALID_REQUEST, "no such server"));
            };
            let info = server.for_user(&session.principal.user).info().await.map_err(|e| e.to_error_object(name))?;
            let mut r =
                json!({"protocolVersion": version, "capabilities": info.capabilities, "serverInfo": info.server_info});
            if let Some(i) = info.instructions {
                r["instructions"] = i;
            }
            Ok(r)
        }
        _ => Ok(json!({
            "protocolVersion": version,
            "capabilities": super::aggregate_capabilities(),
            "serverInfo": {"name": "bastion", "version": env!("CARGO_PKG_VERSION")}
        })),
    }
}
