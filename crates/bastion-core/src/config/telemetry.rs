//! The `tracing` key: OpenTelemetry traces.
//!
//! ```yaml
//! tracing:
//!   otlp: http://127.0.0.1:4318        # OTLP/HTTP collector (absent: nothing is exported)
//!   service_name: bastion              # the service.name of every span
//!   sample_ratio: 1.0                  # new traces sampled; a client's decision is followed
//!   headers:                           # sent to the collector with every export
//!     x-api-key: ${env.OTLP_API_KEY}   # `${env.NAME}`: from the gateway's environment
//!   queue: 2048                        # spans waiting to be exported; more are dropped and counted
//!   timeout: 10s                       # time allowed for one export
//! ```
//!
//! Absent: no spans at all (nothing is added to the request path). Present,
//! even as `tracing: {}`: every MCP request gets its spans, a trace id that
//! continues the client's `traceparent`, log lines that carry it, and a
//! `traceparent` on the requests made to HTTP servers; with `otlp` they are
//! also exported.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{check_http_url, http_header_invalid, humantime_serde_compat};
use crate::template::{Source, Template};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`;
    /// spans are posted to `/v1/traces` under it (a URL that already ends
    /// with `/v1/traces` is used as it is). Default: none, nothing is
    /// exported.
    #[serde(default)]
    pub otlp: Option<String>,
    /// The `service.name` resource attribute. Default `bastion`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces that are sampled, from 0 to 1. A request that
    /// continues a client's trace follows the client's decision. Default 1.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Headers sent to the collector (an API key, a tenant). Values may
    /// take `${env.NAME}` from the gateway's environment. Never logged; sent
    /// only over https, or http to loopback. Default none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Finished spans waiting to be exported, at most. Past it, spans are
    /// dropped (and counted in the log), never waited for. Default 2048.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Time allowed for one export, retries included. Default 10s.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
            headers: BTreeMap::new(),
            queue: default_queue(),
            timeout: default_timeout(),
        }
    }
}

fn default_service_name() -> String {
    "bastion".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_queue() -> usize {
    2048
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The path spans are posted to under a collector's base URL.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

impl TracingConfig {
    /// Where spans are posted: `otlp` with [`OTLP_TRACES_PATH`] appended
    /// unless it already ends with it.
    pub fn traces_endpoint(&self) -> Option<String> {
        let base = self.otlp.as_deref()?;
        let (before_query, query) = match base.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (base, None),
        };
        let path = if before_query.trim_end_matches('/').ends_with(OTLP_TRACES_PATH) {
            before_query.to_string()
        } else {
            format!("{}{OTLP_TRACES_PATH}", before_query.trim_end_matches('/'))
        };
        Some(match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        })
    }

    /// What is wrong with the section: the key and a message.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        if let Some(url) = &self.otlp {
            check_http_url(url, true).map_err(|m| ("otlp".to_string(), m))?;
            if crate::template::mentions_reference(url) {
                return Err(("otlp".into(), "may not hold `${…}`: credentials go in `headers`".into()));
            }
        }
        let name_ok = !self.service_name.trim().is_empty()
            && self.service_name.len() <= 255
            && !self.service_name.chars().any(char::is_control);
        if !name_ok {
            return Err(("service_name".into(), "1 to 255 characters, no control characters".into()));
        }
        if !(self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio)) {
            return Err(("sample_ratio".into(), "must be a number from 0 to 1".into()));
        }
        if self.queue == 0 || self.queue > 1_000_000 {
            return Err(("queue".into(), "must be from 1 to 1000000".into()));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(("timeout".into(), "must be at least 100ms".into()));
        }
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            let template = Template::parse(value).map_err(|e| (key.clone(), e.to_string()))?;
            if template.refs().any(|r| r.source != Source::Env) {
                return Err((key, "only `${env.NAME}` may be used here: the collector is not a server".into()));
            }
            // The literal parts must make a valid header; a reference's value
            // is checked when it is read.
            if http_header_invalid(name, &template.as_literal().unwrap_or_default()) {
                return Err((key, "not a valid HTTP header".into()));
            }
        }
        if !self.headers.is_empty()
            && let Some(url) = &self.otlp
            && !url.to_ascii_lowercase().starts_with("https://")
            && !is_loopback_url(url)
        {
            return Err((
                "headers".into(),
                "credentials for the collector are sent only over https:// (or http:// to loopback)".into(),
            ));
        }
        Ok(())
    }
}

fn is_loopback_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.yaml"), text)
    }

    fn refused_key(text: &str) -> String {
        match yaml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(ConfigError::Syntax { key, .. }) => key.unwrap_or_default(),
            other => panic!("expected a refusal of {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn absent_means_off_and_empty_means_defaults() {
        assert_eq!(yaml("mcpServers: {}\n").unwrap().tracing, None);
        let c = yaml("tracing: {}\n").unwrap();
        assert_eq!(c.tracing, Some(TracingConfig::default()));
        let t = TracingConfig::default();
        assert_eq!((t.service_name.as_str(), t.sample_ratio, t.queue), ("bastion", 1.0, 2048));
        assert_eq!(t.traces_endpoint(), None);
    }

    #[test]
    fn a_full_section() {
        let c = yaml(
            "tracing:\n  otlp: https://otel.example.com:4318\n  service_name: gw-eu\n  sample_ratio: 0.25\n  headers: {x-api-key: '${env.OTLP_KEY}', x-tenant: blue}\n  queue: 100\n  timeout: 3s\n",
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.traces_endpoint().as_deref(), Some("https://otel.example.com:4318/v1/traces"));
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.headers["x-api-key"], "${env.OTLP_KEY}");
        assert_eq!(t.timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_traces_path_is_added_once() {
        let endpoint = |url: &str| TracingConfig { otlp: Some(url.into()), ..Default::default() }.traces_endpoint();
        assert_eq!(endpoint("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(endpoint("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(endpoint("http://h:4318/v1/traces").unwrap(), "http://h:4318/v1/traces");
        assert_eq!(endpoint("https://h/otlp").unwrap(), "https://h/otlp/v1/traces");
        assert_eq!(endpoint("https://h/otlp?tenant=a").unwrap(), "https://h/otlp/v1/traces?tenant=a");
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, key) in [
            ("tracing: {otlp: 'ftp://h'}\n", "tracing.otlp"),
            ("tracing: {otlp: 'http://h:4318/${env.X}'}\n", "tracing.otlp"),
            ("tracing: {sample_ratio: 1.5}\n", "tracing.sample_ratio"),
            ("tracing: {sample_ratio: -0.1}\n", "tracing.sample_ratio"),
            ("tracing: {sample_ratio: .nan}\n", "tracing.sample_ratio"),
            ("tracing: {service_name: ''}\n", "tracing.service_name"),
            ("tracing: {queue: 0}\n", "tracing.queue"),
            ("tracing: {timeout: 1ms}\n", "tracing.timeout"),
            ("tracing: {headers: {'bad name': x}}\n", "tracing.headers.bad name"),
            ("tracing: {headers: {x-key: '${server.KEY}'}}\n", "tracing.headers.x-key"),
            ("tracing: {headers: {x-key: '${env.KEY'}}\n", "tracing.headers.x-key"),
            ("tracing: {otlp: 'http://otel.example.com:4318', headers: {x-key: a}}\n", "tracing.headers"),
        ] {
            assert_eq!(refused_key(text), key, "{text}");
        }
        assert!(yaml("tracing: {endpoint: 'http://h'}\n").is_err());
        // Credentials over plain http only to loopback.
        assert!(yaml("tracing: {otlp: 'http://127.0.0.1:4318', headers: {x-key: a}}\n").is_ok());
        assert!(yaml("tracing: {otlp: 'http://[::1]:4318', headers: {x-key: a}}\n").is_ok());
        assert!(yaml("tracing: {otlp: 'http://localhost:4318', headers: {x-key: a}}\n").is_ok());
        assert!(yaml("tracing: {otlp: 'http://otel.example.com:4318'}\n").is_ok());
    }

    #[test]
    fn redacted_headers_are_header_names() {
        let c = yaml("log: {redact_headers: [X-Internal-Token, x-session]}\n").unwrap();
        assert_eq!(c.log.redact_headers, ["X-Internal-Token", "x-session"]);
        assert_eq!(yaml("mcpServers: {}\n").unwrap().log.redact_headers, Vec::<String>::new());
        assert_eq!(refused_key("log: {redact_headers: [ok, 'not ok']}\n"), "log.redact_headers[1]");
        assert_eq!(refused_key("log: {redact_headers: ['']}\n"), "log.redact_headers[0]");
    }
}
