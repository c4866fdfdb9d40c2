//! The inspect phases of the request path: the data guard
//! (`bastion-guard`) on what a request carries to a server, and on what the
//! server answers.
//!
//! - **inspect request** reads a `tools/call`'s arguments before anything
//!   reaches the server: values whose action is `mask` are masked in the
//!   copy sent on, a value whose action is `block` refuses the call (the
//!   server never hears of it);
//! - **inspect response** reads a `tools/call` result, a `resources/read`
//!   result and a `prompts/get` result: masked in place, or refused whole.
//!
//! What the guard reads, and what it does per detector, server and tool,
//! is the guard's business; here it is only given the message and told
//! where it belongs: the server and the tool as the server names them. A
//! request naming no server in scope is not inspected — the route refuses
//! it before any server is called.
//!
//! Every value found is a [`Hit`] (never the value itself) for the audit
//! record of the request.

use bastion_core::jsonrpc::{self, Request, error_object};
use bastion_core::naming;
use bastion_guard::{Direction, Guard, Hit, Scope as GuardScope, Shape, Verdict};
use serde_json::Value;

use crate::gateway::Gateway;
use crate::proxy::Outcome;
use crate::session::Scope;

/// Where a request belongs, for the guard: the server and, for a tool
/// call, the tool, both as the server names them.
pub(crate) struct Target {
    server: String,
    tool: Option<String>,
}

impl Target {
    fn scope(&self) -> GuardScope<'_> {
        GuardScope { server: &self.server, tool: self.tool.as_deref() }
    }
}

/// The target of a request whose params or result the guard reads.
pub(crate) fn target(gw: &Gateway, scope: &Scope, req: &Request) -> Option<Target> {
    let (key, is_uri) = match req.method.as_str() {
        "tools/call" | "prompts/get" => ("name", false),
        "resources/read" => ("uri", true),
        _ => return None,
    };
    let named = req.params.as_ref()?.get(key)?.as_str()?;
    let (server, inner) = if scope.prefixed() {
        let (server, inner) = if is_uri { naming::split_uri(named)? } else { naming::split_name(named)? };
        if !gw.scope_includes(scope, server) {
            return None;
        }
        (server.to_string(), inner)
    } else {
        match scope {
            Scope::Server(s) => (s.clone(), named),
            _ => return None,
        }
    };
    let tool = (req.method == "tools/call").then(|| inner.to_string());
    Some(Target { server, tool })
}

/// Inspect request: `Ok(Some(request))` carries the arguments as masked,
/// `Ok(None)` lets the request go on as it is, `Err` refuses it.
pub(crate) fn request(
    guard: &Guard,
    target: Option<&Target>,
    req: &Request,
    hits: &mut Vec<Hit>,
) -> Result<Option<Request>, Value> {
    let (Some(target), Some(shape)) = (target, Shape::of(&req.method, false)) else { return Ok(None) };
    let Some(params) = &req.params else { return Ok(None) };
    if !guard.watches(target.scope(), Direction::Inbound) {
        return Ok(None);
    }
    let mut params = params.clone();
    match guard.inspect_message(shape, &mut params, target.scope()) {
        Verdict::Block { hit } => Err(refuse(hit, hits)),
        Verdict::Pass { hits: found } => {
            let masked = found.iter().any(|h| h.action == bastion_guard::GuardAction::Mask);
            hits.extend(found);
            Ok(masked.then(|| Request { id: req.id.clone(), method: req.method.clone(), params: Some(params) }))
        }
    }
}

/// Inspect response: masks the result in place, or turns it into a
/// refusal.
pub(crate) fn response(
    guard: &Guard,
    target: Option<&Target>,
    method: &str,
    outcome: &mut Outcome,
    hits: &mut Vec<Hit>,
) {
    let (Some(target), Some(shape), Ok(result)) = (target, Shape::of(method, true), outcome.as_mut()) else {
        return;
    };
    if !guard.watches(target.scope(), Direction::Outbound) {
        return;
    }
    match guard.inspect_message(shape, result, target.scope()) {
        Verdict::Block { hit } => *outcome = Err(refuse(hit, hits)),
        Verdict::Pass { hits: found } => hits.extend(found),
    }
}

/// The refusal of a blocked message: the detector and where, never the
/// value.
fn refuse(hit: Hit, hits: &mut Vec<Hit>) -> Value {
    tracing::info!(
        server = %hit.server,
        tool = hit.tool.as_deref().unwrap_or(""),
        detector = %hit.detector,
        direction = hit.direction.as_str(),
        path = %hit.path,
        "refused by the data guard"
    );
    let error = error_object(jsonrpc::FORBIDDEN, hit.refusal());
    hits.push(hit);
    error
}

/// What decided a refusal by the guard, for the audit record's `policy`.
pub(crate) fn deciding(hits: &[Hit]) -> Option<String> {
    hits.iter().find(|h| h.action == bastion_guard::GuardAction::Block).map(|h| format!("guard:{}", h.detector))
}

/// Whether the guard reads this request or its answer: such a request is
/// never passed through to a server unread.
pub(crate) fn inspects(gw: &Gateway, scope: &Scope, req: &Request) -> bool {
    let Some(target) = target(gw, scope, req) else { return false };
    let guard = gw.guard.load_full();
    [Direction::Inbound, Direction::Outbound].into_iter().any(|d| guard.watches(target.scope(), d))
}

/// A server's request on its way to a client (`sampling/createMessage`,
/// `elicitation/create`): masked in place, or refused — the error goes
/// back to the server and the client never sees the request. What is
/// found is logged, and audited as a `guard.relayed` record of `owner`,
/// the user whose call the request belongs to.
pub(crate) fn server_request(
    ctx: &crate::upstream::ConnContext,
    owner: Option<&str>,
    method: &str,
    params: &mut Option<Value>,
) -> Result<(), Value> {
    match params.as_mut() {
        Some(value) => relayed(ctx, owner, method, false, value),
        None => Ok(()),
    }
}

/// A client's answer to a server's request, on its way back to the
/// server: masked in place, or turned into a refusal; what is found is
/// logged and audited as for [`server_request`].
pub(crate) fn client_answer(
    ctx: &crate::upstream::ConnContext,
    owner: Option<&str>,
    method: &str,
    outcome: &mut Outcome,
) {
    if let Ok(value) = outcome.as_mut()
        && let Err(refusal) = relayed(ctx, owner, method, true, value)
    {
        *outcome = Err(refusal);
    }
}

/// Reads a relayed message (a server's request, or with `answer` the
/// client's answer to it) with the connection's guard: masked in place, or
/// the refusal to send instead.
fn relayed(
    ctx: &crate::upstream::ConnContext,
    owner: Option<&str>,
    method: &str,
    answer: bool,
    value: &mut Value,
) -> Result<(), Value> {
    let (Some(guard), Some(shape)) = (ctx.guard.as_ref(), Shape::of(method, answer)) else { return Ok(()) };
    let guard = guard.load();
    let scope = GuardScope::server(&ctx.server);
    if !guard.watches(scope, shape.direction()) {
        return Ok(());
    }
    let verdict = guard.inspect_message(shape, value, scope);
    relayed_hits(ctx, owner, method, verdict.hits());
    match verdict {
        Verdict::Block { hit } => Err(error_object(jsonrpc::FORBIDDEN, hit.refusal())),
        Verdict::Pass { .. } => Ok(()),
    }
}

/// Logs and audits what the guard found in a relayed message: one record
/// for the message, denied when a detector refused it, with the hits (never
/// the values) as its detail.
fn relayed_hits(ctx: &crate::upstream::ConnContext, owner: Option<&str>, method: &str, hits: &[Hit]) {
    if hits.is_empty() {
        return;
    }
    log_hits(method, hits);
    let Some(audit) = &ctx.audit else { return };
    let policy = deciding(hits);
    let outcome = if policy.is_some() { bastion_audit::Outcome::Denied } else { bastion_audit::Outcome::Ok };
    let mut event = bastion_audit::Event::new("guard.relayed", outcome);
    event.user = owner.or(ctx.user.as_deref()).map(str::to_owned);
    event.server = Some(ctx.server.to_string());
    event.method = Some(method.to_owned());
    event.policy = policy;
    event.detail = Some(serde_json::json!({ "guard": hits }));
    let audit = audit.clone();
    tokio::spawn(async move { audit.record(event).await });
}

fn log_hits(method: &str, hits: &[Hit]) {
    for h in hits {
        tracing::info!(
            server = %h.server,
            method,
            detector = %h.detector,
            direction = h.direction.as_str(),
            path = %h.path,
            action = ?h.action,
            "the data guard found a value in a relayed message"
        );
    }
}
