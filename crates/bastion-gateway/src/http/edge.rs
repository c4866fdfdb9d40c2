//! What every request passes first: a request id, the size of its head,
//! the Host and Origin checks against DNS rebinding, credentials marked so
//! that no rendering of the request shows them, and one log line when it
//! ends. The Host and Origin lists and the head limit are read from the
//! live configuration on every request, so a reload applies them at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bastion_core::jsonrpc;
use http::{HeaderValue, StatusCode, header};

use super::rpc_error;
use crate::gateway::Gateway;

const REQUEST_ID: &str = "x-request-id";

/// Which requests pass the edge: the `Host` and `Origin` lists and the head
/// limit of the gateway's current configuration, and the loopback rule of
/// the address the listener is bound to (which only a restart changes).
pub struct HostPolicy {
    gw: Arc<Gateway>,
    loopback_only: bool,
    /// Whether `http.allowed_hosts` and `http.allowed_origins` apply (not
    /// on the metrics listener, which only the loopback rule guards).
    lists: bool,
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, gw: Arc<Gateway>) -> Self {
        HostPolicy { gw, loopback_only: listen.ip().is_loopback(), lists: true }
    }

    /// For the listener of `metrics.listen`: on a loopback address, only
    /// loopback host names and origins (against DNS rebinding); elsewhere
    /// any host. The main listener's lists are about the main listener.
    pub fn for_metrics(listen: SocketAddr, gw: Arc<Gateway>) -> Self {
        HostPolicy { gw, loopback_only: listen.ip().is_loopback(), lists: false }
    }
}

/// The Host and Origin rules at one moment.
#[derive(Debug, Clone, Copy)]
struct Rules<'a> {
    /// Accepted hosts (with or without port). Empty with `loopback_only`
    /// means: loopback names only; empty without it: any.
    hosts: &'a [String],
    loopback_only: bool,
    /// Accepted origins; without a match, only loopback origins.
    origins: &'a [String],
}

impl Rules<'_> {
    fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            // HTTP/1.1 requires Host; HTTP/2 carries :authority instead.
            return self.hosts.is_empty() && !self.loopback_only;
        };
        if !self.hosts.is_empty() {
            let bare = strip_port(host);
            return self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(bare));
        }
        !self.loopback_only || is_loopback_name(strip_port(host))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        if self.origins.iter().any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
            return true;
        }
        // Without a list entry, only pages served from this machine may call.
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
            && is_loopback_name(strip_port(rest))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h).unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// The size of a request's head as HTTP/1.1 would carry it: the request
/// line and every header line. HTTP/2 requests are measured the same way,
/// so one limit means the same in both protocols.
fn head_bytes(req: &Request) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    // "METHOD SP target SP HTTP/1.1 CRLF", then "name: value CRLF" each.
    let line = req.method().as_str().len() + 1 + target + authority + 1 + 8 + 2;
    line + req.headers().iter().map(|(n, v)| n.as_str().len() + 2 + v.len() + 2).sum::<usize>()
}

/// Marks the values of credential headers (and of those the operator
/// listed) sensitive: a debug rendering of the headers, or of the request,
/// then shows `Sensitive` instead of the value, whoever logs it.
fn mark_credentials(headers: &mut http::HeaderMap, extra: &[String]) {
    for (name, value) in headers.iter_mut() {
        if bastion_core::redact::is_masked_header(name.as_str(), extra) {
            value.set_sensitive(true);
        }
    }
}

/// The middleware.
pub async fn guard(State(policy): State<Arc<HostPolicy>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match req.headers().get(REQUEST_ID).filter(|v| valid_request_id(v)) {
        Some(v) => v.clone(),
        // A fresh id from the thread-local generator: no system call per request.
        None => HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())).expect("hex is ascii"),
    };
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();

    let verdict = {
        let rt = policy.gw.runtime();
        mark_credentials(req.headers_mut(), &rt.config.log.redact_headers);
        let http = &rt.config.http;
        let (hosts, origins): (&[String], &[String]) =
            if policy.lists { (&http.allowed_hosts, &http.allowed_origins) } else { (&[], &[]) };
        let rules = Rules { hosts, loopback_only: policy.loopback_only, origins };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if head_bytes(&req) > http.max_header_bytes {
            Err((
                "request head too large",
                rpc_error(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    None,
                    jsonrpc::INVALID_REQUEST,
                    format!("request head larger than {} bytes", http.max_header_bytes),
                ),
            ))
        } else if !rules.host_allowed(host) {
            Err((
                "Host not allowed",
                rpc_error(StatusCode::FORBIDDEN, None, jsonrpc::INVALID_REQUEST, "Forbidden: Host not allowed"),
            ))
        } else {
            match req.headers().get(header::ORIGIN).map(|o| o.to_str().is_ok_and(|o| rules.origin_allowed(o))) {
                Some(false) => Err((
                    "Origin not allowed",
                    rpc_error(StatusCode::FORBIDDEN, None, jsonrpc::INVALID_REQUEST, "Forbidden: Origin not allowed"),
                )),
                _ => Ok(()),
            }
        }
    };
    let mut resp = match verdict {
        Ok(()) => next.run(req).await,
        Err((reason, refused)) => {
            if let Some(audit) = &policy.gw.audit {
                let event = refused_event(&req, &path, reason, &policy.gw.runtime().config.http.trusted_proxies);
                audit.record(event).await;
            }
            refused
        }
    };
    let status = resp.status();
    policy.gw.metrics.http_request(crate::metrics::Endpoint::of_path(&path), status.as_u16());
    let headers = resp.headers_mut();
    headers.insert(REQUEST_ID, id.clone());
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers
        .insert("cache-control", headers.get("cache-control").cloned().unwrap_or(HeaderValue::from_static("no-store")));
    let request_id = id.to_str().unwrap_or("");
    let elapsed_us = started.elapsed().as_micros() as u64;
    if path == "/healthz" || path == "/readyz" || path == "/metrics" {
        tracing::debug!(request_id, %method, path, status = status.as_u16(), elapsed_us, "request");
    } else {
        tracing::info!(request_id, %method, path, status = status.as_u16(), elapsed_us, "request");
    }
    resp
}

/// The record of a request refused at the edge: before authentication, so with
/// where it came from but no principal; the reason is Bastion's, never
/// the header's value (a DNS-rebinding page's host name is the attacker's
/// text). Repeated refusals from one address feed the anomaly signal of
/// repeated denials.
fn refused_event(
    req: &Request,
    path: &str,
    reason: &'static str,
    trusted: &[bastion_core::config::IpNet],
) -> bastion_audit::Event {
    let client_ip = crate::auth::client_ip(req, trusted);
    let origin = crate::auth::Origin::from_request(client_ip, req.headers());
    let mut event = crate::audit::origin_event("http.refused", bastion_audit::Outcome::Denied, &origin);
    event.reason = Some(reason.into());
    event.detail = Some(serde_json::json!({ "path": path }));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rules<'a>(hosts: &'a [String], loopback_only: bool, origins: &'a [String]) -> Rules<'a> {
        Rules { hosts, loopback_only, origins }
    }

    #[test]
    fn credentials_are_never_rendered() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer canary-1"),
            ("cookie", "sid=canary-2"),
            ("x-internal-token", "canary-3"),
            ("proxy-authorization", "Basic canary-4"),
            ("x-api-key", "canary-5"),
            ("user-agent", "client/1.0"),
        ] {
            h.insert(http::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        mark_credentials(&mut h, &strings(&["X-Internal-Token"]));
        let shown = format!("{h:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("client/1.0"), "{shown}");
        // The values themselves are unchanged for the gateway's own use.
        assert_eq!(h["authorization"], "Bearer canary-1");
    }

    #[test]
    fn loopback_hosts_only_by_default() {
        let p = rules(&[], true, &[]);
        for ok in ["localhost", "LocalHost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.5"] {
            assert!(p.host_allowed(Some(ok)), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "0.0.0.0", "localhost.evil"] {
            assert!(!p.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!p.host_allowed(None));
    }

    #[test]
    fn explicit_hosts() {
        let hosts = strings(&["mcp.example.com"]);
        let p = rules(&hosts, false, &[]);
        assert!(p.host_allowed(Some("mcp.example.com")));
        assert!(p.host_allowed(Some("MCP.example.com:443")));
        assert!(!p.host_allowed(Some("localhost")));
        assert!(!p.host_allowed(Some("mcp.example.com.evil.example")));
        // An explicit list replaces the loopback default, also on loopback.
        let p = rules(&hosts, true, &[]);
        assert!(!p.host_allowed(Some("127.0.0.1:8080")));
        assert!(p.host_allowed(Some("mcp.example.com:8080")));
        let with_port = strings(&["mcp.example.com:8443"]);
        let p = rules(&with_port, false, &[]);
        assert!(p.host_allowed(Some("mcp.example.com:8443")));
        assert!(!p.host_allowed(Some("mcp.example.com:9999")));
        let any = rules(&[], false, &[]);
        assert!(any.host_allowed(Some("whatever")));
        assert!(any.host_allowed(None));
    }

    #[test]
    fn origins() {
        let p = rules(&[], true, &[]);
        assert!(p.origin_allowed("http://localhost:6274"));
        assert!(p.origin_allowed("HTTP://LOCALHOST"));
        assert!(p.origin_allowed("http://127.0.0.1"));
        assert!(p.origin_allowed("https://[::1]:3000"));
        assert!(!p.origin_allowed("https://evil.example"));
        assert!(!p.origin_allowed("file://localhost"));
        assert!(!p.origin_allowed("null"));
        let listed = strings(&["https://app.example.com/"]);
        let p = rules(&[], true, &listed);
        assert!(p.origin_allowed("https://app.example.com"));
        assert!(p.origin_allowed("https://APP.example.com/"));
        assert!(!p.origin_allowed("https://app.example.com.evil.example"));
        assert!(!p.origin_allowed("http://app.example.com"));
    }

    #[test]
    fn head_size_counts_the_request_line_and_every_header() {
        let req = Request::builder()
            .method("POST")
            .uri("/mcp?x=1")
            .header("host", "localhost")
            .header("x-a", "b")
            .body(axum::body::Body::empty())
            .unwrap();
        // "POST /mcp?x=1 HTTP/1.1\r\n" "host: localhost\r\n" "x-a: b\r\n"
        assert_eq!(head_bytes(&req), 24 + 17 + 8);
        let big =
            Request::builder().uri("/").header("x-big", "v".repeat(10_000)).body(axum::body::Body::empty()).unwrap();
        assert!(head_bytes(&big) > 10_000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary Host and Origin values never panic, and on loopback
        /// defaults nothing but a loopback name passes.
        #[test]
        fn only_loopback_names_pass_the_default_rules(host in "\\PC{0,40}", origin in "\\PC{0,60}") {
            let p = rules(&[], true, &[]);
            if p.host_allowed(Some(&host)) {
                proptest::prop_assert!(is_loopback_name(strip_port(&host)), "{host}");
            }
            if p.origin_allowed(&origin) {
                let rest = origin.split_once("://").map(|(_, r)| r.trim_end_matches('/')).unwrap_or("");
                proptest::prop_assert!(is_loopback_name(strip_port(rest)), "{origin}");
            }
        }

        /// A name that merely starts like an allowed one never passes:
        /// `localhost.evil`, `127.0.0.1.evil`, `mcp.example.com.evil`.
        #[test]
        fn look_alike_hosts_are_refused(
            suffix in "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,6})?",
            port in proptest::option::of(1u16..),
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let listed = strings(&["mcp.example.com"]);
            for (allowed, hosts) in [("localhost", &[][..]), ("127.0.0.1", &[][..]), ("mcp.example.com", &listed[..])] {
                let p = rules(hosts, true, &[]);
                let host = format!("{allowed}.{suffix}{port}");
                proptest::prop_assert!(!p.host_allowed(Some(&host)), "{host}");
                proptest::prop_assert!(p.host_allowed(Some(&format!("{allowed}{port}"))), "{allowed}{port}");
                let origin = format!("https://{allowed}.{suffix}{port}");
                proptest::prop_assert!(!p.origin_allowed(&origin), "{origin}");
            }
        }

        /// Request ids are kept only when short and printable.
        #[test]
        fn request_ids_are_short_and_printable(id in "[ -~]{0,200}") {
            let Ok(v) = HeaderValue::from_str(&id) else { return Ok(()) };
            let kept = valid_request_id(&v);
            let ok = !id.is_empty() && id.len() <= 128 && !id.contains(' ');
            proptest::prop_assert_eq!(kept, ok, "{}", id);
        }
    }
}
