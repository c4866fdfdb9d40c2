//! The downstream HTTP edge: routes, transport rules of both protocol
//! eras, and the mapping of every failure to an HTTP status and a JSON-RPC
//! error a client understands.
//!
//! - `POST /mcp[/{name}]`: JSON-RPC messages. Session-based versions
//!   (`initialize` → `Mcp-Session-Id`) and the stateless 2026-07-28 version
//!   share the endpoint; the era is decided per request.
//! - `GET /mcp[/{name}]`: the session's stream of unsolicited messages.
//! - `DELETE /mcp[/{name}]`: ends a session.
//! - `GET /sse[/{name}]` + `POST /messages?sessionId=…`: legacy HTTP+SSE.
//! - `GET /healthz`, `GET /readyz`.
//! - `GET /metrics`: Prometheus metrics, to the addresses `metrics.allow`
//!   admits only (everyone else gets the 404 of a path that does not
//!   exist), unless `metrics.listen` serves them on a listener of their own
//!   ([`metrics_router`]).
//!
//! A request is answered with plain JSON when the server's answer comes
//! alone, and switches to an SSE stream as soon as the server sends
//! anything about the request first (progress, logging, sampling…).

mod edge;
mod legacy;
mod oauth;
mod stateless;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bastion_core::jsonrpc::{self, Message, Request, error_object, error_response, id_key};
use bastion_core::protocol;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{AuthError, ClientCert, Origin, Principal};
use crate::gateway::Gateway;
use crate::load::{Kind, LimitReached, Slot};
use crate::proxy;
use crate::session::{NewSession, Scope, Session};
use crate::upstream::{Caller, EventSink, UpstreamEvent};

pub use edge::HostPolicy;

pub(crate) const SESSION_HEADER: &str = "mcp-session-id";
pub(crate) const VERSION_HEADER: &str = "mcp-protocol-version";
/// Interval of SSE keep-alive comments on long-lived streams.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The gateway's HTTP application. `/metrics` is among its routes when
/// metrics are on and have no listener of their own (as the configuration
/// said at start).
pub fn router(gw: Arc<Gateway>, hosts: HostPolicy) -> Router {
    let metrics = {
        let m = &gw.runtime().config.metrics;
        m.enabled && m.listen.is_none()
    };
    // Every MCP endpoint is behind authentication; health checks and the
    // OAuth metadata are not.
    let mcp = Router::new()
        .route("/mcp", get(get_all).post(post_all).delete(delete_all))
        .route("/mcp/{name}", get(get_named).post(post_named).delete(delete_named))
        .route("/sse", get(legacy::sse_all))
        .route("/sse/{name}", get(legacy::sse_named))
        .route("/messages", axum::routing::post(legacy::message))
        .route_layer(axum::middleware::from_fn_with_state(gw.clone(), authenticate));
    let mut app =
        Router::new().merge(mcp).merge(oauth::routes()).route("/healthz", get(healthz)).route("/readyz", get(readyz));
    if metrics {
        app = app.route("/metrics", axum::routing::any(metrics_endpoint));
    }
    let app = app.fallback(not_found).layer(axum::middleware::from_fn_with_state(Arc::new(hosts), edge::guard));
    // Outermost, so that the edge's own line is within the request's span.
    let app = if crate::telemetry::enabled() {
        app.layer(axum::middleware::from_fn_with_state(gw.clone(), crate::telemetry::trace))
    } else {
        app
    };
    app.with_state(gw)
}

/// The application of the listener `metrics.listen`: `/metrics` alone.
pub fn metrics_router(gw: Arc<Gateway>, hosts: HostPolicy) -> Router {
    Router::new()
        .route("/metrics", axum::routing::any(metrics_endpoint))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::new(hosts), edge::guard))
        .with_state(gw)
}

/// `/metrics`: no credential is asked for, so only a client whose address
/// (the connection's peer, as for the audit trail; never a forwarded
/// header) is in `metrics.allow` is answered. Anyone else gets the 404 of
/// a path that does not exist, whatever the method. The list is read live.
async fn metrics_endpoint(State(gw): State<Arc<Gateway>>, req: axum::extract::Request) -> Response {
    let peer = crate::auth::peer_ip(&req);
    if !peer.is_some_and(|ip| gw.runtime().config.metrics.allows(ip)) {
        return not_found().await;
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method_not_allowed"}));
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let body = gw.metrics.render(&gw.metrics_snapshot(), format);
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    resp
}

async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.drain.is_stopping() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "shutting down"}));
    }
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// 503 with JSON-RPC error `SHUTTING_DOWN`: no request is started once
/// shutdown has begun.
pub(crate) fn shutting_down(id: Option<&Value>) -> Response {
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"jsonrpc": "2.0", "id": id, "error": crate::drain::shutting_down()}),
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    resp
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.ready().await {
        Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Err(reason) => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "not ready", "reason": reason}))
        }
    }
}

async fn not_found() -> Response {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An HTTP error carrying a JSON-RPC error body.
pub(crate) fn rpc_error(status: StatusCode, id: Option<&Value>, code: i64, message: impl Into<String>) -> Response {
    json_response(status, &error_response(id, code, message))
}

/// The authentication phase, in front of every MCP endpoint: the caller's
/// [`Principal`] goes on the request for the handlers, or the request is
/// answered with a challenge. Unauthenticated callers learn nothing about
/// which endpoints exist.
async fn authenticate(
    State(gw): State<Arc<Gateway>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let cert = req.extensions().get::<ClientCert>().cloned();
    let client_ip = crate::auth::client_ip(&req, &gw.runtime().config.http.trusted_proxies);
    let mut origin = Origin::from_request(client_ip, req.headers());
    // With tracing on, the audit trail names the trace the request's spans are in.
    if let Some(t) = req.extensions().get::<crate::telemetry::RequestTraceId>() {
        origin.trace_id = Some(t.0.clone());
    }
    match crate::telemetry::authenticating(gw.authenticate(req.headers(), cert.as_ref())).await {
        Ok(mut principal) => {
            principal.origin = origin;
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            if e != AuthError::Unavailable {
                gw.metrics.denied(crate::metrics::Denial::Auth);
            }
            // A refused credential is audited; a request that carried none
            // (how every OAuth client begins) is not.
            if e != AuthError::Missing
                && let Some(audit) = &gw.audit
            {
                let mut event = crate::audit::origin_event("auth.failure", bastion_audit::Outcome::Denied, &origin);
                event.reason = Some(e.to_string());
                event.detail = Some(json!({"path": req.uri().path()}));
                audit.record(event).await;
            }
            auth_failure(&gw, &e)
        }
    }
}

/// 401 (403 for a missing scope, 503 when the store cannot decide) with a
/// `WWW-Authenticate` challenge naming the protected resource metadata,
/// and a JSON body.
pub(crate) fn auth_failure(gw: &Gateway, e: &AuthError) -> Response {
    if *e == AuthError::Unavailable {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "temporarily_unavailable", "error_description": e.to_string()}),
        );
    }
    tracing::debug!(error = %e, "authentication failed");
    let status =
        if matches!(e, AuthError::InsufficientScope { .. }) { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
    let mut resp = json_response(
        status,
        &json!({"error": e.challenge_error().unwrap_or("unauthorized"), "error_description": e.to_string()}),
    );
    if let Some(challenge) = oauth::challenge(gw, e) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    resp
}

async fn post_all(
    State(gw): State<Arc<Gateway>>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post(gw, Scope::All, p, headers, body).await
}

async fn post_named(
    State(gw): State<Arc<Gateway>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match gw.resolve_scope(&name) {
        Some(scope) => post(gw, scope, p, headers, body).await,
        None => unknown_endpoint(),
    }
}

async fn get_all(State(gw): State<Arc<Gateway>>, Extension(p): Extension<Principal>, headers: HeaderMap) -> Response {
    open_stream(gw, Scope::All, p, headers).await
}

async fn get_named(
    State(gw): State<Arc<Gateway>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match gw.resolve_scope(&name) {
        Some(scope) => open_stream(gw, scope, p, headers).await,
        None => unknown_endpoint(),
    }
}

async fn delete_all(
    State(gw): State<Arc<Gateway>>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    delete(gw, Scope::All, p, headers).await
}

async fn delete_named(
    State(gw): State<Arc<Gateway>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match gw.resolve_scope(&name) {
        Some(scope) => delete(gw, scope, p, headers).await,
        None => unknown_endpoint(),
    }
}

/// An endpoint name that is neither a group nor a server (the caller is
/// authenticated by then).
pub(crate) fn unknown_endpoint() -> Response {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found", "error_description": "no such server or group"}))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_json_content(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the Accept header admits a media type.
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let m = item.split(';').next().unwrap_or("").trim();
        let wildcard_of_kind = m.strip_suffix("/*").is_some_and(|k| k.eq_ignore_ascii_case(kind));
        m.eq_ignore_ascii_case(media) || m == "*/*" || wildcard_of_kind
    })
}

/// Reads the body, refusing more than `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    jsonrpc::INVALID_REQUEST,
                    format!("request body larger than {limit} bytes"),
                ))
            } else {
                Err(rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::PARSE_ERROR, "could not read the request body"))
            }
        }
    }
}

async fn post(gw: Arc<Gateway>, scope: Scope, principal: Principal, headers: HeaderMap, body: Body) -> Response {
    if !is_json_content(&headers) {
        audit_refused(
            &gw,
            &principal,
            None,
            jsonrpc::INVALID_REQUEST,
            Refused::Error("request body is not application/json"),
        )
        .await;
        return rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            jsonrpc::INVALID_REQUEST,
            "Content-Type must be application/json",
        );
    }
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        audit_refused(
            &gw,
            &principal,
            None,
            jsonrpc::INVALID_REQUEST,
            Refused::Error("the client accepts no event stream"),
        )
        .await;
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            None,
            jsonrpc::INVALID_REQUEST,
            "Accept must list both application/json and text/event-stream",
        );
    }
    let limit = gw.runtime().config.http.max_body_bytes;
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(resp) => {
            audit_refused(
                &gw,
                &principal,
                None,
                jsonrpc::INVALID_REQUEST,
                Refused::Error("request body too large or unreadable"),
            )
            .await;
            return resp;
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            audit_refused(&gw, &principal, None, jsonrpc::PARSE_ERROR, Refused::Error("request body is not JSON"))
                .await;
            return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::PARSE_ERROR, "Parse error: invalid JSON");
        }
    };
    let session_id = header_str(&headers, SESSION_HEADER).map(str::to_string);

    if let Value::Array(items) = value {
        if gw.drain.is_stopping() && items.iter().any(|i| i.get("method").is_some() && i.get("id").is_some()) {
            return shutting_down(None);
        }
        return batch(gw, scope, principal, session_id, items).await;
    }
    // Kept for the error answer only: the message itself is moved, not copied.
    let id = value.get("id").filter(|i| i.is_string() || i.is_number()).cloned();
    let msg = match Message::from_value(value) {
        Ok(m) => m,
        Err(e) => {
            audit_refused(&gw, &principal, None, jsonrpc::INVALID_REQUEST, Refused::Error("not a JSON-RPC message"))
                .await;
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id.as_ref(),
                jsonrpc::INVALID_REQUEST,
                format!("Invalid request: {e}"),
            );
        }
    };

    if let Message::Request(req) = &msg
        && gw.drain.is_stopping()
    {
        return shutting_down(Some(&req.id));
    }
    if session_id.is_none() && stateless::is_stateless(&headers, &msg) {
        return stateless::handle(gw, scope, principal, &headers, msg, bytes).await;
    }
    if let Message::Request(req) = &msg
        && req.method == "initialize"
    {
        return initialize(&gw, scope, principal, req).await;
    }
    match session_id {
        Some(sid) => {
            let Some(session) = gw.sessions.get(&sid, &principal).filter(|s| s.scope == scope && s.is_client_session())
            else {
                return session_not_found(&gw, &principal, &sid, message_method(&msg)).await;
            };
            if let Some(v) = header_str(&headers, VERSION_HEADER)
                && !protocol::is_session_version(v)
            {
                audit_refused(
                    &gw,
                    &principal,
                    message_method(&msg),
                    jsonrpc::INVALID_REQUEST,
                    Refused::Error("unsupported protocol version"),
                )
                .await;
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    None,
                    jsonrpc::INVALID_REQUEST,
                    format!("Unsupported protocol version: {v}"),
                );
            }
            session_message(gw, principal, session, msg).await
        }
        None => {
            audit_refused(
                &gw,
                &principal,
                message_method(&msg),
                jsonrpc::INVALID_REQUEST,
                Refused::Error("no session id"),
            )
            .await;
            rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                jsonrpc::INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            )
        }
    }
}

/// The method a message names, when it is a request or a notification.
fn message_method(msg: &Message) -> Option<&str> {
    match msg {
        Message::Request(req) => Some(req.method.as_str()),
        Message::Notification(n) => Some(n.method.as_str()),
        Message::Response(_) => None,
    }
}

/// How a message refused before any phase ran is recorded: an error with
/// Bastion's reason, or a denial with what decided it.
enum Refused {
    Error(&'static str),
    Denied(&'static str),
}

/// Records a message refused before any phase ran — not JSON, not a
/// JSON-RPC message, too large, without a session or with an unsupported
/// version, another principal's session — as an `mcp.request` with its
/// JSON-RPC code and Bastion's words (never what was sent): what an
/// authenticated caller sends is part of what it did, malformed or not.
async fn audit_refused(gw: &Gateway, principal: &Principal, method: Option<&str>, code: i64, why: Refused) {
    let Some(audit) = &gw.audit else { return };
    let outcome = match why {
        Refused::Error(_) => bastion_audit::Outcome::Error,
        Refused::Denied(_) => bastion_audit::Outcome::Denied,
    };
    let mut event = crate::audit::principal_event("mcp.request", outcome, principal);
    event.method = method.map(str::to_string);
    event.error_code = Some(code);
    match why {
        Refused::Error(reason) => event.reason = Some(reason.into()),
        Refused::Denied(policy) => event.policy = Some(policy.into()),
    }
    audit.record(event).await;
}

/// `initialize`: a new session bound to the caller.
async fn initialize(gw: &Gateway, scope: Scope, principal: Principal, req: &Request) -> Response {
    match gw.authorizer.access(&gw.runtime().config, &principal).await {
        Err(e) => return auth_failure(gw, &e),
        Ok(access) if !gw.may_enter(&access, &scope).await => {
            tracing::info!(user = %principal.user, "session refused: the user may use nothing behind this endpoint");
            gw.metrics.denied(crate::metrics::Denial::Policy);
            if let Some(audit) = &gw.audit {
                let mut event =
                    crate::audit::principal_event("mcp.request", bastion_audit::Outcome::Denied, &principal);
                event.method = Some(req.method.clone());
                if let Scope::Server(server) = &scope {
                    event.server = Some(server.clone());
                }
                event.policy = Some("no access behind this endpoint".into());
                event.error_code = Some(jsonrpc::FORBIDDEN);
                audit.record(event).await;
            }
            return rpc_error(
                StatusCode::FORBIDDEN,
                Some(&req.id),
                jsonrpc::FORBIDDEN,
                "access denied: this user may use nothing behind this endpoint",
            );
        }
        Ok(_) => {}
    }
    let params = req.params.as_ref();
    if let Some(problem) = client_info_too_large(gw, params) {
        return rpc_error(StatusCode::BAD_REQUEST, Some(&req.id), jsonrpc::INVALID_PARAMS, problem);
    }
    let requested = params.and_then(|p| p.get("protocolVersion")).and_then(Value::as_str);
    let version = protocol::negotiate_session_version(requested);
    let client_capabilities = params.and_then(|p| p.get("capabilities")).cloned().unwrap_or_else(|| json!({}));
    let mut result = match &scope {
        Scope::Server(name) => {
            let Some(server) = gw.servers_in(&scope).into_iter().next() else {
                return rpc_error(StatusCode::NOT_FOUND, Some(&req.id), jsonrpc::INVALID_REQUEST, "no such server");
            };
            match server.for_user(&principal.user).info().await {
                Ok(info) => {
                    let mut r = json!({
                        "protocolVersion": version,
                        "capabilities": info.capabilities,
                        "serverInfo": info.server_info,
                    });
                    if let Some(i) = info.instructions {
                        r["instructions"] = i;
                    }
                    r
                }
                Err(e) => {
                    let err = e.to_error_object(name);
                    return json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": req.id, "error": err}));
                }
            }
        }
        _ => aggregate_initialize_result(version),
    };
    result["protocolVersion"] = Value::from(version);
    let session = match gw.open_session(NewSession {
        principal,
        scope,
        protocol_version: version.to_string(),
        client_capabilities,
        legacy: false,
        listen: None,
    }) {
        Ok(s) => s,
        Err(e) => return limit_response(Some(&req.id), &e),
    };
    tracing::info!(session = %short(&session.id), user = %session.principal.user, version, "session created");
    let mut resp = json_response(StatusCode::OK, &json!({"jsonrpc": "2.0", "id": req.id, "result": result}));
    resp.headers_mut().insert(SESSION_HEADER, HeaderValue::from_str(&session.id).expect("base64url"));
    resp
}

/// What Bastion says about itself on an endpoint that spans servers.
pub(crate) fn aggregate_capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "prompts": {"listChanged": true},
        "resources": {"subscribe": true, "listChanged": true},
        "logging": {},
        "completions": {}
    })
}

fn aggregate_initialize_result(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": aggregate_capabilities(),
        "serverInfo": {"name": "bastion", "title": "Bastion MCP gateway", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Tools, prompts and resources of several servers. Names are prefixed with the server's name and two underscores (server__tool); resource URIs with the server's name and '+'."
    })
}

/// The answer to a session id the caller has no session of: 404, whether
/// the session does not exist or is another principal's (the answer tells
/// nothing of which). Presenting another principal's session id is a
/// denial, audited (`policy`: "session of another principal") and counted
/// with the refusals the anomaly signals watch: a session id is no
/// credential, and whoever sends someone else's is probing. An unknown or
/// ended session is audited as an error.
async fn session_not_found(gw: &Gateway, principal: &Principal, sid: &str, method: Option<&str>) -> Response {
    let why = if gw.sessions.is_foreign(sid, principal) {
        gw.metrics.denied(crate::metrics::Denial::Policy);
        Refused::Denied("session of another principal")
    } else {
        Refused::Error("unknown or ended session")
    };
    audit_refused(gw, principal, method, jsonrpc::INVALID_REQUEST, why).await;
    rpc_error(StatusCode::NOT_FOUND, None, jsonrpc::INVALID_REQUEST, "Session not found")
}

/// A short, non-secret form of a session id for logs.
pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// One message in a session.
async fn session_message(gw: Arc<Gateway>, principal: Principal, session: Arc<Session>, msg: Message) -> Response {
    // A caller that lost access to everything behind the endpoint (a role
    // or group taken away, in the store, the config or its token's claims)
    // loses the session and its streams at its next message.
    if let Ok(access) = gw.authorizer.access(&gw.runtime().config, &principal).await
        && !gw.can_reach(&access, &session.scope)
    {
        gw.close_session(&session.id, &principal);
        tracing::info!(session = %short(&session.id), user = %principal.user, "session closed: its user lost access");
        return rpc_error(
            StatusCode::FORBIDDEN,
            None,
            jsonrpc::FORBIDDEN,
            "access denied: this user may no longer use this endpoint; the session is closed",
        );
    }
    match msg {
        Message::Request(req) => respond(gw, principal, session, req).await,
        Message::Notification(n) => {
            on_client_notification(&session, &n.method, n.params.as_ref());
            accepted()
        }
        Message::Response(r) => {
            if !session.answer_server_request(&id_key(&r.id), r.outcome) {
                tracing::debug!(session = %short(&session.id), "answer to an unknown request dropped");
            }
            accepted()
        }
    }
}

pub(crate) fn accepted() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

pub(crate) fn on_client_notification(session: &Session, method: &str, params: Option<&Value>) {
    match method {
        "notifications/initialized" => session.initialized.store(true, std::sync::atomic::Ordering::Relaxed),
        "notifications/cancelled" => {
            if let Some(id) = params.and_then(|p| p.get("requestId")) {
                session.cancel_request(&id_key(id));
            }
        }
        // Upstream processes are shared: their roots come from the config,
        // and no client may change them for the others.
        "notifications/roots/list_changed" => {
            tracing::debug!(session = %short(&session.id), "client roots change not forwarded to shared servers");
        }
        _ => {}
    }
}

/// Runs one request of a session and answers it: JSON if the result comes
/// first, an SSE stream if the server sends anything about the request
/// before it. The request holds one of its principal's in-flight slots
/// until it ends.
pub(crate) async fn respond(gw: Arc<Gateway>, principal: Principal, session: Arc<Session>, req: Request) -> Response {
    let slot = match gw.acquire(&session.principal, Kind::InFlight) {
        Ok(slot) => slot,
        Err(e) => return limit_response(Some(&req.id), &e),
    };
    let (sink, mut events) = EventSink::new(session.principal.user.clone());
    let sink = sink.with_log_level(session.log_level());
    let key = id_key(&req.id);
    let token = session.start_request(key.clone());
    // The call is made where it is awaited, inside the box: a future
    // made first and then moved in would be held twice and copied whole.
    let mut work = {
        let gw = gw.clone();
        let session = session.clone();
        Box::pin(async move {
            tokio::select! {
                outcome = run_request(&gw, &principal, &session, &req, Caller::Client(sink)) => {
                    Some(response_value(&req.id, outcome))
                }
                _ = token.cancelled() => None,
            }
        })
    };

    let first = tokio::select! {
        biased;
        done = &mut work => Err(done),
        ev = events.recv() => Ok(ev),
    };
    let first_event = match first {
        Err(done) => {
            session.finish_request(&key);
            // What the server sent about the request just before its result
            // is still delivered, ahead of it, on a stream.
            let mut frames = Vec::new();
            while let Ok(ev) = events.try_recv() {
                if let Some(msg) = event_to_message(Some(&session), ev) {
                    frames.push(Ok::<_, Infallible>(sse_frame(&msg)));
                }
            }
            linger(session.clone(), events);
            return match done {
                Some(v) if frames.is_empty() => answer_response(StatusCode::OK, &v),
                Some(v) => {
                    frames.push(Ok(sse_frame(&v)));
                    sse_response(Body::from_stream(futures::stream::iter(frames)))
                }
                // Cancelled by the client: it expects no answer.
                None => accepted(),
            };
        }
        Ok(ev) => ev,
    };

    // Switch to a stream scoped to this request.
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _slot = slot;
        let mut pending = first_event;
        loop {
            if let Some(ev) = pending.take()
                && let Some(msg) = event_to_message(Some(&session), ev)
                && tx.send(Ok(sse_frame(&msg))).await.is_err()
            {
                break;
            }
            tokio::select! {
                biased;
                done = &mut work => {
                    // Drain what arrived before the result, in order.
                    while let Ok(ev) = events.try_recv() {
                        if let Some(msg) = event_to_message(Some(&session), ev) {
                            let _ = tx.send(Ok(sse_frame(&msg))).await;
                        }
                    }
                    if let Some(v) = done {
                        let _ = tx.send(Ok(sse_frame(&v))).await;
                    }
                    break;
                }
                ev = events.recv() => pending = ev,
                _ = tx.closed() => break, // the client went away: dropping `work` cancels upstream
            }
        }
        session.finish_request(&key);
        linger(session, events);
    }));
    sse_response(Body::from_stream(ReceiverStream::new(rx)))
}

/// What a server sends about a request just after its answer (where no
/// stream ties the two, see [`crate::upstream::LINGER`]) goes on the
/// session's own stream, if one is open.
pub(crate) fn linger(session: Arc<Session>, mut events: mpsc::Receiver<UpstreamEvent>) {
    tokio::spawn(async move {
        let until = tokio::time::sleep(crate::upstream::LINGER);
        tokio::pin!(until);
        loop {
            let ev = tokio::select! {
                _ = &mut until => return,
                ev = events.recv() => match ev { Some(ev) => ev, None => return },
            };
            match ev {
                UpstreamEvent::Notification { .. } => {
                    if let Some(msg) = event_to_message(Some(&session), ev) {
                        session.push(msg);
                    }
                }
                UpstreamEvent::Request { reply, .. } => {
                    let _ = reply.send(Err(error_object(jsonrpc::INTERNAL_ERROR, "the call has ended")));
                }
            }
        }
    });
}

/// Handles a request in its session.
pub(crate) async fn run_request(
    gw: &Gateway,
    principal: &Principal,
    session: &Session,
    req: &Request,
    caller: Caller,
) -> proxy::Outcome {
    let ctx = proxy::RequestCtx { principal, scope: &session.scope, caller, session: Some(session) };
    proxy::handle_request(gw, &ctx, req).await
}

/// 429 with `Retry-After` and a JSON-RPC error: a per-principal cap was reached.
pub(crate) fn limit_response(id: Option<&Value>, e: &LimitReached) -> Response {
    tracing::info!(limit = e.kind.describe(), cap = e.cap, "caller limit reached");
    let mut resp = rpc_error(StatusCode::TOO_MANY_REQUESTS, id, jsonrpc::LIMIT_REACHED, e.to_string());
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    resp
}

/// A JSON-RPC response sent on its own with `status`; a refusal by the
/// limit phase gets its own status (429, or 503 when limits cannot be
/// checked) with `Retry-After`, `RateLimit` and `RateLimit-Policy`.
pub(crate) fn answer_response(status: StatusCode, v: &Value) -> Response {
    let limited = v.get("error").and_then(crate::limit::http_headers);
    let Some((status, headers)) = limited else { return json_response(status, v) };
    let mut resp = json_response(status, v);
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// What `Retry-After` says when a per-principal cap is reached: holdings
/// are released as calls finish, so a short wait is enough.
pub(crate) const RETRY_AFTER_SECONDS: &str = "1";

/// The size of what a client declares about itself and a session keeps.
fn client_info_too_large(gw: &Gateway, params: Option<&Value>) -> Option<String> {
    let max = gw.runtime().config.http.max_client_info_bytes;
    let size = |k: &str| params.and_then(|p| p.get(k)).map_or(0, |v| v.to_string().len());
    let total = size("capabilities") + size("clientInfo");
    (total > max).then(|| format!("capabilities and clientInfo take {total} bytes; at most {max} are accepted"))
}

pub(crate) fn response_value(id: &Value, outcome: proxy::Outcome) -> Value {
    match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    }
}

/// Turns an upstream event into the message the client sees. Server
/// requests are registered in the session so the client's answer finds its
/// way back; without a session (stateless) or without the client's
/// capability they are refused on the spot.
pub(crate) fn event_to_message(session: Option<&Session>, ev: UpstreamEvent) -> Option<Value> {
    match ev {
        UpstreamEvent::Notification { method, params } => {
            let mut m = json!({"jsonrpc": "2.0", "method": method});
            if let Some(p) = params {
                m["params"] = p;
            }
            Some(m)
        }
        UpstreamEvent::Request { method, params, reply } => {
            let capability = match method.as_str() {
                "sampling/createMessage" => Some("sampling"),
                "elicitation/create" => Some("elicitation"),
                "roots/list" => Some("roots"),
                _ => None,
            };
            let Some(session) = session else {
                let _ = reply.send(Err(error_object(jsonrpc::METHOD_NOT_FOUND, "the client cannot receive requests")));
                return None;
            };
            if capability.is_some_and(|c| !session.client_supports(c)) {
                let _ = reply.send(Err(error_object(
                    jsonrpc::METHOD_NOT_FOUND,
                    format!("the client does not support {method}"),
                )));
                return None;
            }
            let id = session.register_server_request(reply);
            let mut m = json!({"jsonrpc": "2.0", "id": id, "method": method});
            if let Some(p) = params {
                m["params"] = p;
            }
            Some(m)
        }
    }
}

pub(crate) use crate::outbox::sse_frame;

pub(crate) fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// JSON-RPC batches: only in 2025-03-26 sessions.
async fn batch(
    gw: Arc<Gateway>,
    scope: Scope,
    principal: Principal,
    sid: Option<String>,
    items: Vec<Value>,
) -> Response {
    let session =
        sid.and_then(|sid| gw.sessions.get(&sid, &principal)).filter(|s| s.scope == scope && s.is_client_session());
    let Some(session) = session else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            "JSON-RPC batches are not supported here (only in 2025-03-26 sessions)",
        );
    };
    if !protocol::allows_batches(&session.protocol_version) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            jsonrpc::INVALID_REQUEST,
            format!("JSON-RPC batches are not allowed in protocol version {}", session.protocol_version),
        );
    }
    if items.is_empty() {
        return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::INVALID_REQUEST, "empty batch");
    }
    // A batch is one request in flight, its items run one after another.
    let _slot = match gw.acquire(&session.principal, Kind::InFlight) {
        Ok(slot) => slot,
        Err(e) => return limit_response(None, &e),
    };
    let mut answers = Vec::new();
    for item in items {
        let fallback_id = item.get("id").cloned();
        match Message::from_value(item) {
            Ok(Message::Request(req)) if req.method == "initialize" => {
                answers.push(error_response(Some(&req.id), jsonrpc::INVALID_REQUEST, "initialize may not be batched"))
            }
            Ok(Message::Request(req)) => {
                // A batch answers with one JSON array: nothing can reach
                // the client before it, so its calls receive no messages.
                let caller = Caller::Quiet(session.principal.user.clone());
                let outcome = run_request(&gw, &principal, &session, &req, caller).await;
                answers.push(response_value(&req.id, outcome));
            }
            Ok(Message::Notification(n)) => on_client_notification(&session, &n.method, n.params.as_ref()),
            Ok(Message::Response(r)) => {
                session.answer_server_request(&id_key(&r.id), r.outcome);
            }
            Err(e) => answers.push(error_response(fallback_id.as_ref(), jsonrpc::INVALID_REQUEST, e.to_string())),
        }
    }
    if answers.is_empty() { accepted() } else { json_response(StatusCode::OK, &Value::Array(answers)) }
}

/// The refusal of a request for an event stream that does not accept one.
pub(crate) fn refuse_non_stream(headers: &HeaderMap) -> Option<Response> {
    (!accepts(headers, "text/event-stream")).then(|| {
        rpc_error(StatusCode::NOT_ACCEPTABLE, None, jsonrpc::INVALID_REQUEST, "Accept must include text/event-stream")
    })
}

/// An SSE response for a session that lives exactly as long as its stream:
/// the `first` frame, then the session's messages; the session ends with
/// the stream.
pub(crate) fn session_stream(gw: Arc<Gateway>, session: Arc<Session>, first: Bytes, slots: Vec<Slot>) -> Response {
    let outbox = session.open_stream().expect("a new session has no stream");
    let guard = (SessionEnd { gw, session }, slots);
    let head = futures::stream::once(async move { Ok::<_, Infallible>(first) });
    let body = head.chain(stream_body(outbox)).map(move |item| {
        let _keep = &guard;
        item
    });
    sse_response(Body::from_stream(body))
}

/// Ends a session when the stream it belongs to is dropped.
struct SessionEnd {
    gw: Arc<Gateway>,
    session: Arc<Session>,
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        self.gw.close_session(&self.session.id, &self.session.principal);
    }
}

/// `GET`: the session's stream of unsolicited messages.
async fn open_stream(gw: Arc<Gateway>, scope: Scope, principal: Principal, headers: HeaderMap) -> Response {
    if let Some(resp) = refuse_non_stream(&headers) {
        return resp;
    }
    if gw.drain.is_stopping() {
        return shutting_down(None);
    }
    let Some(sid) = header_str(&headers, SESSION_HEADER) else {
        if header_str(&headers, VERSION_HEADER) == Some(protocol::STATELESS_VERSION) {
            return rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                jsonrpc::INVALID_REQUEST,
                "no GET stream in 2026-07-28: use subscriptions/listen",
            );
        }
        return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::INVALID_REQUEST, "Mcp-Session-Id header is required");
    };
    let Some(session) = gw.sessions.get(sid, &principal).filter(|s| s.scope == scope && s.is_client_session()) else {
        return session_not_found(&gw, &principal, sid, None).await;
    };
    let slot = match gw.acquire(&principal, Kind::Stream) {
        Ok(slot) => slot,
        Err(e) => return limit_response(None, &e),
    };
    let Some(outbox) = session.open_stream() else {
        return rpc_error(
            StatusCode::CONFLICT,
            None,
            jsonrpc::INVALID_REQUEST,
            "a stream is already open for this session",
        );
    };
    let body = stream_body(outbox).map(move |item| {
        let _slot = &slot;
        item
    });
    sse_response(Body::from_stream(body))
}

/// A long-lived SSE body: the frames queued in `outbox`, keep-alive
/// comments, and an end when the queue ends (session closed, shutdown, or
/// a consumer too slow for the gateway's memory).
pub(crate) fn stream_body(
    outbox: Arc<crate::outbox::Outbox>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let ended = tokio_util::sync::CancellationToken::new();
    let on_end = ended.clone().drop_guard();
    let messages = futures::stream::unfold((outbox, on_end), |(outbox, on_end)| async move {
        let frame = outbox.recv().await?;
        Some((frame, (outbox, on_end)))
    });
    let keepalive = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + KEEP_ALIVE,
        KEEP_ALIVE,
    ))
    .map(|_| Bytes::from_static(b": keep-alive\n\n"))
    .take_until(ended.cancelled_owned());
    futures::stream::select(messages, keepalive).map(Ok)
}

async fn delete(gw: Arc<Gateway>, scope: Scope, principal: Principal, headers: HeaderMap) -> Response {
    let Some(sid) = header_str(&headers, SESSION_HEADER) else {
        return rpc_error(StatusCode::BAD_REQUEST, None, jsonrpc::INVALID_REQUEST, "Mcp-Session-Id header is required");
    };
    if gw.sessions.get(sid, &principal).is_none_or(|s| s.scope != scope || !s.is_client_session())
        || !gw.close_session(sid, &principal)
    {
        return session_not_found(&gw, &principal, sid, None).await;
    }
    tracing::info!(session = %short(sid), "session closed by the client");
    StatusCode::OK.into_response()
}
