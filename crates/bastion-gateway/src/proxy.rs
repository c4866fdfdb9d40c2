//! The request path, top to bottom: what Bastion does with one MCP request
//! from a caller the HTTP edge has authenticated. The phases, over one
//! [`RequestCtx`]:
//!
//! 1. **classify** the method (list, call, read, get, notification, other);
//!    a method Bastion does not know is refused, never passed through;
//! 2. **authorize**: the caller's current access (`crate::access`) and the
//!    policy engine's decision on the exact item — the tool, prompt or
//!    resource, resolved to its server and the server's own name;
//! 3. **limit**: the emergency lockdown, the rate limits the request falls
//!    under, its caller's quotas and its server's calls in flight
//!    (`crate::limit`); a refusal never reaches the server;
//! 4. **inspect request**: the data guard reads a call's arguments, masking
//!    what it is told to mask in the copy sent on, or refusing the call
//!    (`crate::inspect`);
//! 5. **upstream**: call the server, relaying its progress, logging,
//!    sampling and elicitation to the caller through the event sink, and
//!    return the result, or the server's error, unchanged. List methods fan
//!    out to every server in scope, keep what the caller may use, prefix,
//!    and page the merged list with Bastion's own cursors;
//! 6. **inspect response**: the data guard reads a call's result, a read
//!    resource or a prompt, masking or refusing it;
//! 7. **audit**, on every outcome (result, error or denial): one record
//!    of who asked what, how it ended, what decided a denial, a keyed
//!    digest of the arguments (never their values), what the data guard
//!    found (kind and place, never the value), sizes and duration,
//!    handed to the audit writer (`crate::audit`). With `audit.on_full:
//!    refuse`, a request is refused before the first phase while the
//!    audit queue is full. The same outcome is counted in the metrics
//!    (`count_request`), once.
//!
//! What each caller holds at once (sessions, streams, calls in flight) is
//! counted at the edge (`crate::load`) before a request reaches this path.
//!
//! Upstream connections are shared by every client, so what one client
//! changes on a server must not change what another receives:
//! `resources/subscribe` and `resources/unsubscribe` are counted per server
//! and URI (the server hears the first subscription and the last
//! unsubscription), and `logging/setLevel` is kept per session (Bastion
//! filters; the server is only ever made more verbose).

use std::sync::Arc;

use bastion_core::cursor::{self, CursorKey};
use bastion_core::jsonrpc::{self, Request, error_object};
use bastion_core::naming;
use serde_json::{Map, Value, json};

use bastion_core::protocol::{self, MethodClass};
use bastion_policy::{Action, Kind, Target};

use crate::access::{Access, list_kind};
use crate::auth::Principal;
use crate::gateway::Gateway;
use crate::metrics;
use crate::session::{Scope, Session};
use crate::upstream::{CallError, Caller, UpstreamHandle, log_rank};

/// One request on its way through the request path.
pub struct RequestCtx<'a> {
    /// Who is asking, as authenticated for this very request.
    pub principal: &'a Principal,
    /// What the endpoint exposes.
    pub scope: &'a Scope,
    /// On whose behalf upstream calls are made; where the server's messages
    /// about the request go.
    pub caller: Caller,
    /// The session the request came in (subscriptions, log level); `None`
    /// for stateless requests.
    pub session: Option<&'a Session>,
}

/// A list method: its result field and the field of each item that names it.
struct ListKind {
    method: &'static str,
    field: &'static str,
    capability: &'static str,
    key: ItemKey,
}

#[derive(Clone, Copy)]
enum ItemKey {
    Name(&'static str),
    Uri(&'static str),
}

const LISTS: &[ListKind] = &[
    ListKind { method: "tools/list", field: "tools", capability: "tools", key: ItemKey::Name("name") },
    ListKind { method: "prompts/list", field: "prompts", capability: "prompts", key: ItemKey::Name("name") },
    ListKind { method: "resources/list", field: "resources", capability: "resources", key: ItemKey::Uri("uri") },
    ListKind {
        method: "resources/templates/list",
        field: "resourceTemplates",
        capability: "resources",
        key: ItemKey::Uri("uriTemplate"),
    },
];

/// Each list method with the field naming its items and the kind of item.
pub(crate) const LIST_METHODS: [(&str, &str, Kind); 4] = [
    ("tools/list", "name", Kind::Tool),
    ("prompts/list", "name", Kind::Prompt),
    ("resources/list", "uri", Kind::Resource),
    ("resources/templates/list", "uriTemplate", Kind::Resource),
];

/// The result of handling one request: a result value or an error object.
pub type Outcome = Result<Value, Value>;

fn invalid_params(msg: impl Into<String>) -> Value {
    error_object(jsonrpc::INVALID_PARAMS, msg)
}

/// What the phases learned about a request, for its audit record.
#[derive(Debug, Default)]
pub struct Notes {
    /// What decided a denial (a built-in rule, a policy, a guard detector).
    pub policy: Option<String>,
    /// The values the data guard found, in either direction.
    pub guard: Vec<bastion_guard::Hit>,
}

/// Handles one request.
pub async fn handle_request(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let started = std::time::Instant::now();
    if let Some(audit) = &gw.audit
        && !audit.admits()
    {
        tracing::warn!(user = %ctx.principal.user, method = %req.method, "refused: the audit queue is full");
        count_audit_full(gw, req, started);
        return Err(audit_full());
    }
    let mut notes = Notes::default();
    // In flight until its outcome is known; failed if shutdown's grace
    // period runs out first. Pinned where it is made: a future awaited as
    // a temporary is kept twice in this one's state, and copied whole.
    let outcome = {
        let phases = std::pin::pin!(gw.drain.run(phases(gw, ctx, req, &mut notes)));
        phases.await
    };
    count_request(gw, ctx.principal, ctx.scope, req, &outcome, started);
    if let Some(audit) = &gw.audit {
        crate::audit::record_request(audit, ctx.principal, ctx.scope, ctx.session, req, &outcome, notes, started, None)
            .await;
    }
    outcome
}

/// Counts one request's outcome in the metrics, where the audit trail
/// records it: by method class and outcome, and a `tools/call` by its
/// server and tool. A call naming no configured server is counted by class
/// only, so that no label comes from the client alone.
pub(crate) fn count_request(
    gw: &Gateway,
    principal: &Principal,
    scope: &Scope,
    req: &Request,
    outcome: &Outcome,
    started: std::time::Instant,
) {
    let result = metrics::Outcome::of(outcome);
    gw.metrics.mcp_request(protocol::classify(&req.method), result, started.elapsed());
    if req.method != "tools/call" {
        return;
    }
    let Some(name) = req.params.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str) else { return };
    let (server, tool) = match scope {
        Scope::Server(server) => (server.as_str(), name),
        _ => match naming::split_name(name) {
            Some(parts) => parts,
            None => return,
        },
    };
    let rt = gw.runtime();
    if let Some(handle) = rt.upstreams.get(server) {
        handle.metrics().tool_call(tool, result, || handle.lists_tool(&principal.user, tool));
    }
}

/// Counts a request refused because the audit queue is full.
pub(crate) fn count_audit_full(gw: &Gateway, req: &Request, started: std::time::Instant) {
    gw.metrics.denied(metrics::Denial::AuditFull);
    gw.metrics.mcp_request(protocol::classify(&req.method), metrics::Outcome::Denied, started.elapsed());
}

/// The error of a request refused because the audit queue is full.
pub(crate) fn audit_full() -> Value {
    error_object(jsonrpc::UPSTREAM_UNAVAILABLE, "the audit trail cannot take more records right now; try again shortly")
}

/// The phases of one request, in order; `notes` gathers what the audit
/// record says beyond the outcome.
async fn phases(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request, notes: &mut Notes) -> Outcome {
    let decision = authorize(gw, ctx.principal, ctx.scope, req);
    let Authorized { access, item } = crate::telemetry::authorizing(&req.method, decision).await.map_err(|r| {
        notes.policy = r.policy;
        r.error
    })?;
    let _admission = limit(gw, &access, req, item.as_ref()).await.map_err(|r| {
        notes.policy = r.policy;
        r.error
    })?;
    let guard = gw.guard.load_full();
    let target = crate::inspect::target(gw, ctx.scope, req);
    let masked = crate::inspect::request(&guard, target.as_ref(), req, &mut notes.guard).inspect_err(|_| {
        notes.policy = crate::inspect::deciding(&notes.guard);
    })?;
    let req = masked.as_ref().unwrap_or(req);
    // Pinned where it is made, like the phases (see handle_request).
    let mut outcome = {
        let dispatch = std::pin::pin!(dispatch(gw, ctx, req, &access));
        dispatch.await
    };
    crate::inspect::response(&guard, target.as_ref(), &req.method, &mut outcome, &mut notes.guard);
    if outcome.is_err() && notes.policy.is_none() {
        notes.policy = crate::inspect::deciding(&notes.guard);
    }
    outcome
}

/// A request the authorize phase refused: the error for the caller, and
/// what decided (for the audit trail, never for the caller).
pub struct Refusal {
    pub error: Value,
    pub policy: Option<String>,
}

impl From<Value> for Refusal {
    fn from(error: Value) -> Refusal {
        Refusal { error, policy: None }
    }
}

/// What the authorize phase found: the caller's access, and the item the
/// request names — its server and its name as the gateway's aggregate
/// endpoint shows it (`server__tool`, `server+uri`) — when it names one.
pub(crate) struct Authorized {
    pub access: Access,
    pub item: Option<(String, String)>,
}

/// The limit phase: see `crate::limit`. Lists, calls, reads and gets
/// are limited; every other method is only held to the lockdown, and
/// `ping` not even that.
pub(crate) async fn limit(
    gw: &Gateway,
    access: &Access,
    req: &Request,
    item: Option<&(String, String)>,
) -> Result<crate::limit::Admission, Refusal> {
    use bastion_core::config::LimitedClass;
    let class = match protocol::classify(&req.method) {
        Some(MethodClass::Call) if req.method == "tools/call" => Some(LimitedClass::Call),
        Some(MethodClass::Read) => Some(LimitedClass::Read),
        Some(MethodClass::Get) => Some(LimitedClass::Get),
        Some(MethodClass::List) => Some(LimitedClass::List),
        Some(MethodClass::Notification) => return Ok(crate::limit::Admission::none()),
        _ if req.method == "ping" => return Ok(crate::limit::Admission::none()),
        _ => None,
    };
    let subject = crate::limit::Subject {
        user: &access.user,
        groups: &access.groups,
        class,
        item: item.map(|(server, name)| (server.as_str(), name.as_str())),
    };
    let rt = gw.runtime();
    gw.limits.admit(&rt.config.limits, &gw.store, &gw.metrics, &subject).await
}

/// Classifies the request and decides whether the caller may make it; for
/// a list, the items are decided one by one in [`list`]. The caller's
/// access is read afresh for every request.
pub(crate) async fn authorize(
    gw: &Gateway,
    principal: &Principal,
    scope: &Scope,
    req: &Request,
) -> Result<Authorized, Refusal> {
    let method = req.method.as_str();
    let class = protocol::classify(method).ok_or_else(|| not_offered(method))?;
    let access = gw.authorizer.access(&gw.runtime().config, principal).await.map_err(|e| {
        tracing::warn!(user = %principal.user, error = %e, "authorization cannot be decided: refusing");
        // `retryAfter` makes it a 503 with Retry-After where the answer
        // stands on its own, as when authentication cannot decide.
        Refusal::from(json!({
            "code": jsonrpc::UPSTREAM_UNAVAILABLE,
            "message": "authorization is temporarily unavailable",
            "data": {"retryAfter": 1},
        }))
    })?;
    if access.role.is_none() {
        tracing::info!(user = %access.user, method, "denied: the user has no role");
        gw.metrics.denied(metrics::Denial::Policy);
        return Err(Refusal {
            error: error_object(jsonrpc::FORBIDDEN, "access denied: this user has no role on this gateway"),
            policy: Some("no role".into()),
        });
    }
    let params = req.params.as_ref();
    let str_param =
        |v: Option<&Value>, key: &str| v.and_then(|p| p.get(key)).and_then(Value::as_str).map(str::to_string);
    let (kind, action, shown) = match class {
        MethodClass::List | MethodClass::Notification => return Ok(Authorized { access, item: None }),
        MethodClass::Call => (Kind::Tool, Action::Call, str_param(params, "name")),
        MethodClass::Get => (Kind::Prompt, Action::Get, str_param(params, "name")),
        MethodClass::Read => (Kind::Resource, Action::Read, str_param(params, "uri")),
        MethodClass::Other if method == "completion/complete" => {
            let r = params.and_then(|p| p.get("ref"));
            match r.and_then(|r| r.get("type")).and_then(Value::as_str) {
                Some("ref/prompt") => (Kind::Prompt, Action::Get, str_param(r, "name")),
                Some("ref/resource") => (Kind::Resource, Action::Read, str_param(r, "uri")),
                // The route answers what is malformed.
                _ => return Ok(Authorized { access, item: None }),
            }
        }
        MethodClass::Other => return Ok(Authorized { access, item: None }),
    };
    // A missing name is answered by the route as invalid params.
    let Some(shown) = shown else { return Ok(Authorized { access, item: None }) };
    let (server, inner) = match kind {
        Kind::Resource => resolve_uri(gw, scope, &shown)?,
        _ => resolve_name(gw, scope, &shown)?,
    };
    // A call's or a prompt get's arguments; a completion's are not the
    // item's arguments, and a read has none.
    let arguments = match class {
        MethodClass::Call | MethodClass::Get => params.and_then(|p| p.get("arguments")),
        _ => None,
    };
    let target = Target { kind, server: server.name(), name: inner };
    let decision = gw.authorizer.decide(&access, action, &target, arguments);
    if !decision.allowed {
        tracing::info!(user = %access.user, method, server = server.name(), item = inner, decision = %decision, "denied");
        gw.metrics.denied(metrics::Denial::Policy);
        return Err(Refusal {
            error: error_object(jsonrpc::FORBIDDEN, format!("access denied: you may not {} {shown}", verb(action))),
            policy: Some(decision.to_string()),
        });
    }
    let item = match kind {
        Kind::Resource => naming::prefix_uri(server.name(), inner),
        // A tool the server does not list shares one budget: names a client
        // makes up must not make rate buckets without bound.
        Kind::Tool if gw.limits.budgets_each_item() && server.leaves_out_tool(&access.user, inner) => {
            naming::prefix_name(server.name(), crate::limit::UNLISTED)
        }
        _ => naming::prefix_name(server.name(), inner),
    };
    Ok(Authorized { access, item: Some((server.name().to_string(), item)) })
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::List => "list",
        Action::Call => "call",
        Action::Read => "read",
        Action::Get => "get",
    }
}

/// A method Bastion does not know: refused, not passed through.
fn not_offered(method: &str) -> Value {
    error_object(jsonrpc::METHOD_NOT_FOUND, format!("Method not found: {method}"))
}

async fn dispatch(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request, access: &Access) -> Outcome {
    let method = req.method.as_str();
    let scope = ctx.scope;
    if let Some(kind) = LISTS.iter().find(|k| k.method == method) {
        return list(gw, scope, kind, req.params.as_ref(), access).await;
    }
    match method {
        "ping" => Ok(json!({})),
        "tools/call" | "prompts/get" => route_by_name(gw, ctx, req).await,
        "resources/read" => route_by_uri(gw, ctx, req).await,
        "resources/subscribe" => subscribe(gw, ctx, req).await,
        "resources/unsubscribe" => unsubscribe(gw, ctx, req).await,
        "completion/complete" => complete(gw, ctx, req).await,
        "logging/setLevel" => set_level(gw, ctx, req).await,
        _ => Err(not_offered(method)),
    }
}

fn single(gw: &Gateway, scope: &Scope) -> Result<Arc<UpstreamHandle>, Value> {
    gw.servers_in(scope)
        .into_iter()
        .next()
        .ok_or_else(|| error_object(jsonrpc::UPSTREAM_UNAVAILABLE, "the server is no longer configured"))
}

async fn call(server: &UpstreamHandle, method: &str, params: Option<Value>, caller: Caller) -> Outcome {
    server.call(method, params, caller).await.map_err(|e| log_call_error(server.name(), method, e))
}

pub(crate) fn log_call_error(server: &str, method: &str, e: CallError) -> Value {
    if !matches!(e, CallError::Rpc(_)) {
        tracing::warn!(server, method, error = %e, "upstream call failed");
    }
    e.to_error_object(server)
}

/// Finds the server for a prefixed name (or the endpoint's one server) and
/// returns it with the server's own name.
pub(crate) fn resolve_name<'a>(
    gw: &Gateway,
    scope: &Scope,
    name: &'a str,
) -> Result<(Arc<UpstreamHandle>, &'a str), Value> {
    if !scope.prefixed() {
        return Ok((single(gw, scope)?, name));
    }
    let unknown = || invalid_params(format!("Unknown tool or prompt: {}", shown(name)));
    let (server, inner) = naming::split_name(name).ok_or_else(unknown)?;
    let handle = gw.servers_in(scope).into_iter().find(|h| h.name() == server).ok_or_else(unknown)?;
    Ok((handle, inner))
}

/// A client's name as an error message repeats it: whole up to 128 bytes,
/// else its first 128 (at a character's boundary) and `…`, so that a
/// megabyte of name is not sent back.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 128;
    if name.len() <= MAX {
        return name.into();
    }
    format!("{}…", crate::telemetry::truncate(name, MAX)).into()
}

pub(crate) fn resolve_uri<'a>(
    gw: &Gateway,
    scope: &Scope,
    uri: &'a str,
) -> Result<(Arc<UpstreamHandle>, &'a str), Value> {
    if !scope.prefixed() {
        return Ok((single(gw, scope)?, uri));
    }
    let unknown = || invalid_params(format!("Unknown resource: {}", shown(uri)));
    let (server, inner) = naming::split_uri(uri).ok_or_else(unknown)?;
    let handle = gw.servers_in(scope).into_iter().find(|h| h.name() == server).ok_or_else(unknown)?;
    Ok((handle, inner))
}

/// A tool's definition as its server lists it (name unprefixed); `None`
/// for a name no server in scope has. When the server cannot list its
/// tools, the error a call would get.
pub async fn tool_definition(gw: &Gateway, scope: &Scope, user: &str, name: &str) -> Result<Option<Value>, Value> {
    let Ok((server, inner)) = resolve_name(gw, scope, name) else { return Ok(None) };
    let server = server.for_user(user);
    let tools =
        server.list_all("tools/list", "tools").await.map_err(|e| log_call_error(server.name(), "tools/list", e))?;
    Ok(tools.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(inner)).cloned())
}

fn params_object(req: &Request) -> Result<Map<String, Value>, Value> {
    match &req.params {
        Some(Value::Object(m)) => Ok(m.clone()),
        _ => Err(invalid_params(format!("{} needs params", req.method))),
    }
}

async fn route_by_name(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let mut params = params_object(req)?;
    let name = params.get("name").and_then(Value::as_str).ok_or_else(|| invalid_params("missing \"name\""))?;
    let (server, inner) = resolve_name(gw, ctx.scope, name)?;
    let server = server.for_user(&ctx.principal.user);
    let pinned = if req.method == "tools/call" { crate::pins::ItemKind::Tool } else { crate::pins::ItemKind::Prompt };
    crate::pins::admit(gw, &server, pinned, inner).await?;
    let inner = inner.to_string();
    params.insert("name".into(), Value::from(inner));
    call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await
}

/// A URI-addressed request resolved: its server (the caller's own
/// instance, for a server run once per user), the server's own URI, and
/// the params carrying it.
struct UriTarget {
    server: Arc<UpstreamHandle>,
    uri: String,
    params: Map<String, Value>,
}

fn uri_params(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Result<UriTarget, Value> {
    let mut params = params_object(req)?;
    let uri = params.get("uri").and_then(Value::as_str).ok_or_else(|| invalid_params("missing \"uri\""))?;
    let (server, inner) = resolve_uri(gw, ctx.scope, uri)?;
    let server = server.for_user(&ctx.principal.user);
    let uri = inner.to_string();
    params.insert("uri".into(), Value::from(uri.clone()));
    Ok(UriTarget { server, uri, params })
}

async fn route_by_uri(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let UriTarget { server, params, .. } = uri_params(gw, ctx, req)?;
    let result = call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await?;
    Ok(if ctx.scope.prefixed() { prefix_contents(server.name(), result) } else { result })
}

/// The URI as the session's client sees it.
fn client_uri(req: &Request) -> Option<String> {
    req.params.as_ref()?.get("uri")?.as_str().map(str::to_string)
}

/// `resources/subscribe`: the server hears only the first subscriber of a URI.
/// Subscription changes of one server are made one at a time, so a second
/// subscriber learns whether the first one's subscription really holds.
async fn subscribe(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let UriTarget { server, uri: inner, params } = uri_params(gw, ctx, req)?;
    let Some(session) = ctx.session else {
        return call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await;
    };
    let subs = server.subscriptions();
    let _one_at_a_time = subs.changing().await;
    if subs.add(&inner, &session.id)
        && let Err(e) = call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await
    {
        subs.remove(&inner, &session.id);
        return Err(e);
    }
    if let Some(uri) = client_uri(req) {
        session.subscriptions.lock().expect("poisoned").insert(uri);
    }
    Ok(json!({}))
}

/// `resources/unsubscribe`: the server hears it when the last subscriber leaves.
async fn unsubscribe(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let UriTarget { server, uri: inner, params } = uri_params(gw, ctx, req)?;
    let Some(session) = ctx.session else {
        return call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await;
    };
    if let Some(uri) = client_uri(req) {
        session.subscriptions.lock().expect("poisoned").remove(&uri);
    }
    let subs = server.subscriptions();
    let _one_at_a_time = subs.changing().await;
    if subs.remove(&inner, &session.id) {
        call(&server, &req.method, Some(Value::Object(params)), ctx.caller.clone()).await?;
    }
    Ok(json!({}))
}

/// `resources/read` contents carry their URI: show it prefixed too.
fn prefix_contents(server: &str, mut result: Value) -> Value {
    if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
        for c in contents {
            if let Some(uri) = c.get("uri").and_then(Value::as_str) {
                let p = naming::prefix_uri(server, uri);
                c["uri"] = Value::from(p);
            }
        }
    }
    result
}

async fn complete(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let scope = ctx.scope;
    let mut params = params_object(req)?;
    let reference =
        params.get("ref").and_then(Value::as_object).cloned().ok_or_else(|| invalid_params("missing \"ref\""))?;
    let (server, reference) = match reference.get("type").and_then(Value::as_str) {
        Some("ref/prompt") => {
            let name =
                reference.get("name").and_then(Value::as_str).ok_or_else(|| invalid_params("missing ref.name"))?;
            let (server, inner) = resolve_name(gw, scope, name)?;
            crate::pins::admit(gw, &server.for_user(&ctx.principal.user), crate::pins::ItemKind::Prompt, inner).await?;
            let mut r = reference.clone();
            r.insert("name".into(), Value::from(inner));
            (server, r)
        }
        Some("ref/resource") => {
            let uri = reference.get("uri").and_then(Value::as_str).ok_or_else(|| invalid_params("missing ref.uri"))?;
            let (server, inner) = resolve_uri(gw, scope, uri)?;
            let mut r = reference.clone();
            r.insert("uri".into(), Value::from(inner));
            (server, r)
        }
        _ => return Err(invalid_params("ref.type must be ref/prompt or ref/resource")),
    };
    params.insert("ref".into(), Value::Object(reference));
    let server = server.for_user(&ctx.principal.user);
    call(&server, "completion/complete", Some(Value::Object(params)), ctx.caller.clone()).await
}

/// `logging/setLevel`: the level is the session's; servers are made only
/// more verbose, and Bastion filters each session's log messages.
async fn set_level(gw: &Gateway, ctx: &RequestCtx<'_>, req: &Request) -> Outcome {
    let level = req.params.as_ref().and_then(|p| p.get("level")).and_then(Value::as_str);
    let rank = level.and_then(log_rank).ok_or_else(|| invalid_params("level must be an MCP log level"))?;
    if let Some(session) = ctx.session {
        session.set_log_level(rank);
    }
    let user = &ctx.principal.user;
    if let Scope::Server(_) = ctx.scope {
        let server = single(gw, ctx.scope)?.for_user(user);
        let info = server.info().await.map_err(|e| log_call_error(server.name(), "logging/setLevel", e))?;
        if !info.has("logging") {
            return Err(error_object(jsonrpc::METHOD_NOT_FOUND, "Method not found: logging/setLevel"));
        }
        return match server.request_log_level(rank, ctx.caller.clone()).await {
            Some(Err(e)) => Err(log_call_error(server.name(), "logging/setLevel", e)),
            _ => Ok(json!({})),
        };
    }
    for s in gw.servers_in(ctx.scope) {
        let s = s.for_user(user);
        if !s.is_connected() {
            s.want_log_level(rank);
        } else if s.info().await.is_ok_and(|i| i.has("logging")) {
            let _ = s.request_log_level(rank, ctx.caller.clone()).await;
        }
    }
    Ok(json!({}))
}

/// Items of a list from every server in scope that the caller may use,
/// merged and paged.
async fn list(gw: &Gateway, scope: &Scope, kind: &ListKind, params: Option<&Value>, access: &Access) -> Outcome {
    let offset = match params.and_then(|p| p.get("cursor")) {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => {
            decode_cursor(c, kind.method, scope).ok_or_else(|| invalid_params("invalid cursor"))?
        }
        Some(_) => return Err(invalid_params("invalid cursor")),
    };
    let servers: Vec<_> = gw.servers_in(scope).iter().map(|s| s.for_user(&access.user)).collect();
    let fetches = servers.iter().map(|s| async move {
        // Across servers, one that is restarting after a reload does not
        // hold the others up: its previous list stands in.
        if scope.prefixed()
            && let Some(stale) = s.stale_list(kind.method)
        {
            return Ok(stale);
        }
        let info = s.info().await?;
        if !info.has(kind.capability) {
            return Ok(None);
        }
        s.list_all(kind.method, kind.field).await.map(Some)
    });
    let results = futures::future::join_all(fetches).await;
    // Pinning and the poisoning scan (`crate::pins`): tools and prompts
    // not served are left out; every server's tools are known first, for
    // the checks across servers.
    let pinned = crate::pins::ItemKind::of_list(kind.method);
    if pinned == Some(crate::pins::ItemKind::Tool) {
        for (server, result) in servers.iter().zip(&results) {
            if let Ok(Some(list)) = result {
                gw.pins.note_tools(server.name(), list);
            }
        }
    }
    let visible = gw.authorizer.list_filter(access);
    let item_kind = list_kind(kind.method).unwrap_or(Kind::Tool);
    let may_use = |server: &str, item: &Value| {
        let field = match kind.key {
            ItemKey::Name(f) | ItemKey::Uri(f) => f,
        };
        // An item without its name cannot be decided on: left out.
        item.get(field).and_then(Value::as_str).is_some_and(|name| visible(&Target { kind: item_kind, server, name }))
    };
    let mut items: Vec<Value> = Vec::new();
    for (server, result) in servers.iter().zip(results) {
        match result {
            Ok(Some(list)) => {
                let verdict = match pinned {
                    Some(k) => {
                        let modes = crate::pins::modes(&gw.runtime().config, server.name());
                        Some(gw.pins.screen(server.name(), k, &list, modes).await)
                    }
                    None => None,
                };
                let served = |item: &Value| verdict.as_ref().is_none_or(|v| v.serves(item));
                let mine = list.iter().filter(|item| may_use(server.name(), item) && served(item));
                if scope.prefixed() {
                    items.extend(mine.map(|item| prefix_item(server.name(), item.clone(), kind.key)));
                } else {
                    items.extend(mine.cloned());
                }
            }
            Ok(None) => {}
            // One server: its failure is the answer. Several: the others carry on.
            Err(e) if !scope.prefixed() => return Err(log_call_error(server.name(), kind.method, e)),
            Err(e) => {
                tracing::warn!(server = server.name(), method = kind.method, error = %e, "server left out of the list");
            }
        }
    }
    let page_size = gw.runtime().config.http.page_size;
    let total = items.len();
    if offset > total {
        return Err(invalid_params("invalid cursor"));
    }
    let end = (offset + page_size).min(total);
    let page: Vec<Value> = items.drain(offset..end).collect();
    let mut result = Map::new();
    result.insert(kind.field.into(), Value::Array(page));
    if end < total {
        result.insert("nextCursor".into(), Value::from(encode_cursor(end, kind.method, scope)));
    }
    Ok(Value::Object(result))
}

/// Fills a server's list caches (what it offers of each list), starting
/// it if need be; failures leave the list out.
pub(crate) async fn fetch_lists(server: &UpstreamHandle) {
    let Ok(info) = server.info().await else { return };
    for kind in LISTS {
        if info.has(kind.capability) {
            let _ = server.list_all(kind.method, kind.field).await;
        }
    }
}

fn prefix_item(server: &str, mut item: Value, key: ItemKey) -> Value {
    match key {
        ItemKey::Name(field) => {
            if let Some(name) = item.get(field).and_then(Value::as_str) {
                let p = naming::prefix_name(server, name);
                item[field] = Value::from(p);
            }
        }
        ItemKey::Uri(field) => {
            if let Some(uri) = item.get(field).and_then(Value::as_str) {
                let p = naming::prefix_uri(server, uri);
                item[field] = Value::from(p);
            }
        }
    }
    item
}

/// Cursors are opaque to clients, bound to the list method and the endpoint,
/// and authenticated under this process's key (`bastion_core::cursor`).
fn encode_cursor(offset: usize, method: &str, scope: &Scope) -> String {
    cursor::encode(CursorKey::process(), method, &format!("{scope:?}"), offset)
}

fn decode_cursor(c: &str, method: &str, scope: &Scope) -> Option<usize> {
    cursor::decode(CursorKey::process(), c, method, &format!("{scope:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shown_cut_at_a_character() {
        assert_eq!(shown("gh__search"), "gh__search");
        let exact = "a".repeat(128);
        assert_eq!(shown(&exact), exact);
        assert_eq!(shown(&"a".repeat(5000)), format!("{}…", "a".repeat(128)));
        // 127 bytes, then a 2-byte character across the limit.
        let across = format!("{}é{}", "a".repeat(127), "b".repeat(10));
        assert_eq!(shown(&across), format!("{}…", "a".repeat(127)));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let all = Scope::All;
        let c = encode_cursor(42, "tools/list", &all);
        assert_eq!(decode_cursor(&c, "tools/list", &all), Some(42));
        assert_eq!(decode_cursor(&c, "prompts/list", &all), None);
        assert_eq!(decode_cursor(&c, "tools/list", &Scope::Server("a".into())), None);
        assert_eq!(decode_cursor("not-base64!", "tools/list", &all), None);
        assert_eq!(decode_cursor("eDox", "tools/list", &all), None);
    }

    #[test]
    fn items_are_prefixed() {
        let t = prefix_item("gh", json!({"name": "search", "inputSchema": {}}), ItemKey::Name("name"));
        assert_eq!(t["name"], "gh__search");
        let r = prefix_item("fs", json!({"uri": "file:///a"}), ItemKey::Uri("uri"));
        assert_eq!(r["uri"], "fs+file:///a");
    }
}
