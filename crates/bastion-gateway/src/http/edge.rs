//! What every request passes first: a request id, the Host and Origin
//! checks against DNS rebinding, and one log line when it ends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bastion_core::jsonrpc;
use http::{HeaderValue, StatusCode, header};

use super::rpc_error;

const REQUEST_ID: &str = "x-request-id";

/// Which `Host` and `Origin` values are accepted.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Accepted hosts (lower case, with or without port). Empty with
    /// `loopback_only` means: loopback names only; empty without it: any.
    hosts: Vec<String>,
    loopback_only: bool,
    origins: Vec<String>,
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        HostPolicy {
            hosts: allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            loopback_only: listen.ip().is_loopback(),
            origins: allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        }
    }

    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host.map(str::to_ascii_lowercase) else {
            // HTTP/1.1 requires Host; HTTP/2 carries :authority instead.
            return self.hosts.is_empty() && !self.loopback_only;
        };
        if !self.hosts.is_empty() {
            return self.hosts.iter().any(|h| *h == host || *h == strip_port(&host));
        }
        !self.loopback_only || is_loopback_name(strip_port(&host))
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        // Without a list, only pages served from this machine may call.
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        (scheme == "http" || scheme == "https") && is_loopback_name(strip_port(rest))
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
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
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
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));

    let mut resp = if !policy.host_allowed(host) {
        rpc_error(StatusCode::FORBIDDEN, None, jsonrpc::INVALID_REQUEST, "Forbidden: Host not allowed")
    } else if let Some(origin) = req.headers().get(header::ORIGIN) {
        match origin.to_str() {
            Ok(o) if policy.origin_allowed(o) => next.run(req).await,
            _ => rpc_error(StatusCode::FORBIDDEN, None, jsonrpc::INVALID_REQUEST, "Forbidden: Origin not allowed"),
        }
    } else {
        next.run(req).await
    };
    let status = resp.status();
    let headers = resp.headers_mut();
    headers.insert(REQUEST_ID, id.clone());
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers
        .insert("cache-control", headers.get("cache-control").cloned().unwrap_or(HeaderValue::from_static("no-store")));
    let request_id = id.to_str().unwrap_or("");
    let elapsed_us = started.elapsed().as_micros() as u64;
    if path == "/healthz" || path == "/readyz" {
        tracing::debug!(request_id, %method, path, status = status.as_u16(), elapsed_us, "request");
    } else {
        tracing::info!(request_id, %method, path, status = status.as_u16(), elapsed_us, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> HostPolicy {
        HostPolicy::new("127.0.0.1:8080".parse().unwrap(), &[], &[])
    }

    #[test]
    fn loopback_hosts_only_by_default() {
        let p = loopback();
        for ok in ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.5"] {
            assert!(p.host_allowed(Some(ok)), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "0.0.0.0"] {
            assert!(!p.host_allowed(Some(bad)), "{bad}");
        }
        assert!(!p.host_allowed(None));
    }

    #[test]
    fn explicit_hosts() {
        let p = HostPolicy::new("0.0.0.0:443".parse().unwrap(), &["mcp.example.com".into()], &[]);
        assert!(p.host_allowed(Some("mcp.example.com")));
        assert!(p.host_allowed(Some("MCP.example.com:443")));
        assert!(!p.host_allowed(Some("localhost")));
        let any = HostPolicy::new("0.0.0.0:443".parse().unwrap(), &[], &[]);
        assert!(any.host_allowed(Some("whatever")));
    }

    #[test]
    fn origins() {
        let p = loopback();
        assert!(p.origin_allowed("http://localhost:6274"));
        assert!(p.origin_allowed("http://127.0.0.1"));
        assert!(!p.origin_allowed("https://evil.example"));
        assert!(!p.origin_allowed("null"));
        let p = HostPolicy::new("127.0.0.1:1".parse().unwrap(), &[], &["https://app.example.com/".into()]);
        assert!(p.origin_allowed("https://app.example.com"));
        assert!(!p.origin_allowed("https://app.example.com.evil.example"));
    }
}
