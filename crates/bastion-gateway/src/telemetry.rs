//! OpenTelemetry traces: the spans of a request, W3C trace context in and
//! out, and trace ids in the log.
//!
//! Nothing here runs unless the configuration has a `tracing` section:
//! without it no span is made, no layer is installed, and each hook below
//! costs one relaxed atomic load. With it, every request to the gateway
//! (health checks aside) gets
//!
//! - a `request` span (server kind), a child of the client's span when the
//!   request carries a valid `traceparent` (and `tracestate`), else the
//!   root of a new trace; its trace id is also the request's trace id in
//!   the audit trail;
//! - an `authenticate` span around checking the credential;
//! - an `authorize` span around each JSON-RPC request's access decision;
//! - an `upstream` span (client kind) around each call to a server; the
//!   HTTP requests it makes (Streamable HTTP and legacy SSE) carry a
//!   `traceparent` naming that span as their parent.
//!
//! Span attributes never carry a header's value but those of an allow-list
//! (`User-Agent`, the request id), and those only when no mask covers them
//! ([`bastion_core::redact::is_masked_header`]). Credentials never reach a
//! span or a log line: the edge marks their values sensitive, so even a
//! debug rendering of a request shows no value.
//!
//! The export itself ([`export`]) is batched in a bounded queue, off the
//! request path; the log side ([`logs`]) puts `trace_id` and `span_id` on
//! every line written within a request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{AuthError, Method, Principal};
use crate::gateway::Gateway;

pub mod export;
pub mod logs;

pub use export::Pipeline;

/// The target of the gateway's own spans, and of nothing else: the
/// OpenTelemetry layer takes exactly these spans, the log layer none of them.
pub const TARGET: &str = "bastion::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are made: set once, at start-up, when the `tracing`
/// section is present and the layer is installed ([`logs::install`]).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The trace id of a request (32 lowercase hex digits), put on the request
/// by [`trace`] for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTraceId(pub Arc<str>);

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Whether a header is W3C trace context (which the gateway replaces with
/// its own on the requests it makes, when tracing is on).
pub(crate) fn is_trace_context(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

struct FromHeaders<'a>(&'a HeaderMap);

impl Extractor for FromHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Sent twice, a trace context is ambiguous: none is taken.
        let mut values = self.0.get_all(key).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let value = first.to_str().ok()?;
        (key != TRACEPARENT || well_formed_traceparent(value)).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Whether a `traceparent` has the W3C form: `version-traceid-parentid-flags`
/// in lowercase hex of 2, 32, 16 and 2 digits (more fields only after a
/// version other than `00`). Zero ids are left to the propagator, which
/// refuses them.
fn well_formed_traceparent(v: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut parts = v.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let more = parts.next().is_some();
    hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
}

/// The client's trace context, if its `traceparent` is valid.
fn client_context(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&FromHeaders(headers))
}

/// The W3C trace context to send on a request made now: the current
/// span's, when tracing is on and a span is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: HeaderValue,
    pub tracestate: Option<HeaderValue>,
}

impl TraceHeaders {
    /// Sets the headers on a request being built.
    pub(crate) fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = req.header(TRACEPARENT, self.traceparent.clone());
        match &self.tracestate {
            Some(s) => req.header(TRACESTATE, s.clone()),
            None => req,
        }
    }
}

#[derive(Default)]
struct Collected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// The trace context of the span being run, for an outgoing request;
/// `None` when tracing is off or no span of a request is current.
pub fn outgoing() -> Option<TraceHeaders> {
    if !enabled() {
        return None;
    }
    headers_of(&opentelemetry::Context::current())
}

fn headers_of(cx: &opentelemetry::Context) -> Option<TraceHeaders> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Collected::default();
    TraceContextPropagator::new().inject_context(cx, &mut out);
    let traceparent = HeaderValue::from_str(&out.traceparent?).ok()?;
    let tracestate = out.tracestate.and_then(|s| HeaderValue::from_str(&s).ok());
    Some(TraceHeaders { traceparent, tracestate })
}

/// The route of a path, for span names: low cardinality, never a name
/// the client made up.
fn route(path: &str) -> Option<&'static str> {
    Some(match path {
        "/mcp" => "/mcp",
        "/sse" => "/sse",
        "/messages" => "/messages",
        p if p.starts_with("/mcp/") && !p[5..].contains('/') => "/mcp/{name}",
        p if p.starts_with("/sse/") && !p[5..].contains('/') => "/sse/{name}",
        p if p.starts_with("/.well-known/oauth-protected-resource") => "/.well-known/oauth-protected-resource",
        _ => return None,
    })
}

/// The middleware that opens a request's span, outermost of all: whatever
/// is logged about the request (the edge's line included) is logged
/// within it. Installed only when tracing is on.
pub async fn trace(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    let route = route(path);
    let name = match route {
        Some(r) => format!("{method} {r}"),
        None => method.clone(),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = route.map(|_| path),
        client.address = Empty,
        user_agent.original = Empty,
        http.response.status_code = Empty,
        bastion.request_id = Empty,
    );
    let _ = span.set_parent(client_context(req.headers()));
    let rt = arc_swap::Guard::into_inner(gw.runtime());
    if let Some(ip) = crate::auth::client_ip(&req, &rt.config.http.trusted_proxies) {
        span.record("client.address", tracing::field::display(ip));
    }
    let masked = &rt.config.log.redact_headers;
    if let Some(ua) = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        let shown = bastion_core::redact::header_value("user-agent", ua, masked);
        span.record("user_agent.original", truncate(shown, 256));
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        req.extensions_mut().insert(RequestTraceId(Arc::from(trace_id.to_string())));
    }
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(id) = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        span.record("bastion.request_id", bastion_core::redact::header_value("x-request-id", id, masked));
    }
    resp
}

/// `s`, or its first `max` bytes cut back to a character's boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn auth_method(m: Method) -> &'static str {
    match m {
        Method::ApiKey => "api_key",
        Method::Token => "token",
        Method::Certificate => "certificate",
        Method::None => "none",
    }
}

/// A short, stable name of why authentication failed (`error.type`).
fn auth_error_type(e: &AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Malformed => "malformed",
        AuthError::Invalid => "invalid",
        AuthError::Expired => "expired",
        AuthError::Revoked => "revoked",
        AuthError::Exhausted => "exhausted",
        AuthError::InvalidToken(_) => "invalid_token",
        AuthError::InsufficientScope { .. } => "insufficient_scope",
        AuthError::Mismatch => "mismatch",
        AuthError::Unavailable => "unavailable",
    }
}

/// `work`, in `span` when there is one, `note` told its outcome on the
/// span. Futures combined, not an `async fn`: an `async fn` would keep
/// `work` twice in its state (the argument, and the copy being awaited),
/// and the request path's futures are large.
fn traced<F: Future>(
    span: Option<Span>,
    work: F,
    note: impl FnOnce(&Span, &F::Output),
) -> impl Future<Output = F::Output> {
    use futures::FutureExt as _;
    use futures::future::Either;
    match span {
        None => Either::Left(work),
        Some(span) => Either::Right(work.instrument(span.clone()).map(move |outcome| {
            note(&span, &outcome);
            outcome
        })),
    }
}

/// Authentication, in its span when tracing is on.
pub fn authenticating(
    check: impl Future<Output = Result<Principal, AuthError>>,
) -> impl Future<Output = Result<Principal, AuthError>> {
    let span = enabled().then(|| {
        tracing::info_span!(
            target: TARGET,
            "authenticate",
            otel.status_code = Empty,
            error.type = Empty,
            bastion.auth.method = Empty,
            enduser.id = Empty,
        )
    });
    traced(span, check, |span, outcome| match outcome {
        Ok(p) => {
            span.record("bastion.auth.method", auth_method(p.method));
            span.record("enduser.id", &*p.user);
        }
        Err(e) => {
            span.record("error.type", auth_error_type(e));
            span.record("otel.status_code", "ERROR");
        }
    })
}

/// An access decision on one JSON-RPC request, in its span when tracing
/// is on.
pub fn authorizing<T, E>(
    method: &str,
    decide: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, E>> {
    let span = enabled().then(|| {
        tracing::info_span!(
            target: TARGET,
            "authorize",
            mcp.method.name = truncate(method, 128),
            bastion.decision = Empty,
        )
    });
    traced(span, decide, |span, outcome| {
        span.record("bastion.decision", if outcome.is_ok() { "allow" } else { "deny" });
    })
}

/// The span of one call to a server, when tracing is on and the call is
/// made for a request (the gateway's own calls outside any request, such
/// as restoring a subscription, make none).
pub fn upstream_span(server: &str, method: &str) -> Option<Span> {
    if !enabled() || Span::current().is_none() {
        return None;
    }
    let method = truncate(method, 128);
    Some(tracing::info_span!(
        target: TARGET,
        "upstream",
        otel.name = %format_args!("{method} {server}"),
        otel.kind = "client",
        otel.status_code = Empty,
        error.type = Empty,
        mcp.method.name = method,
        bastion.server = server,
    ))
}

/// Runs a call to a server in its span (see [`upstream_span`]), noting a
/// failure on it.
pub fn calling<T, E: CallFailure>(
    span: Option<Span>,
    call: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, E>> {
    traced(span, call, |span, outcome| {
        if let Err(e) = outcome {
            span.record("error.type", e.kind());
            span.record("otel.status_code", "ERROR");
        }
    })
}

/// What a failed call is called in a span's `error.type`.
pub trait CallFailure {
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_the_parent() {
        let cx = client_context(&headers(&[("traceparent", PARENT), ("tracestate", "vendor=a")]));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "vendor=a");
        // What would be sent on with that context.
        let out = headers_of(&cx).unwrap();
        assert_eq!(out.traceparent, PARENT);
        assert_eq!(out.tracestate.unwrap(), "vendor=a");
    }

    #[test]
    fn a_bad_or_doubled_traceparent_is_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
            "",
        ] {
            let cx = client_context(&headers(&[("traceparent", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
        }
        let cx = client_context(&headers(&[("traceparent", PARENT), ("traceparent", PARENT)]));
        assert!(!cx.span().span_context().is_valid());
        assert!(headers_of(&cx).is_none());
    }

    #[test]
    fn nothing_is_sent_while_tracing_is_off() {
        // No layer is installed in unit tests: the hooks are inert.
        assert!(!enabled());
        assert!(outgoing().is_none());
        assert!(upstream_span("s", "tools/call").is_none());
    }

    #[test]
    fn routes_are_templates() {
        assert_eq!(route("/mcp"), Some("/mcp"));
        assert_eq!(route("/mcp/github"), Some("/mcp/{name}"));
        assert_eq!(route("/sse/github"), Some("/sse/{name}"));
        assert_eq!(route("/messages"), Some("/messages"));
        assert_eq!(route("/mcp/a/b"), None);
        assert_eq!(route("/random/path"), None);
        assert_eq!(route("/.well-known/oauth-protected-resource/mcp"), Some("/.well-known/oauth-protected-resource"));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn trace_context_headers_are_known() {
        assert!(is_trace_context("Traceparent") && is_trace_context("tracestate"));
        assert!(!is_trace_context("baggage"));
    }
}
