//! The gateway's Prometheus metrics, served as OpenMetrics text at
//! `/metrics` (see `crate::http` for who may read them).
//!
//! The request path only increments atomics: every series whose labels are
//! small enums (endpoint, status class, method class, outcome, denial
//! reason) is a handle resolved once and kept in an array, and each
//! server's handles (its upstream timing, restarts, tool calls) live on its
//! [`crate::upstream::UpstreamHandle`]. Durations go into [`Timing`], a
//! histogram of fixed buckets made of atomics. What other parts of the
//! gateway already count or hold (sessions, calls in flight, stream queues,
//! the audit queue, connections refused) is read when a scrape comes, from
//! a [`Snapshot`].
//!
//! No label carries a user, a session, a credential or an argument. Server
//! names come from the configuration; tool names come from servers (and,
//! in a call, from the client), so each server has at most
//! [`MAX_TOOLS_PER_SERVER`] tool labels, given only to names the server
//! lists or answered a call to, in a plain character set; every other call
//! is counted under the tool `other`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bastion_core::jsonrpc;
use bastion_core::protocol::MethodClass;
use dashmap::DashMap;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, as prometheus-client encodes it: what
    /// Prometheus asks for.
    OpenMetrics,
    /// Prometheus's text format 0.0.4: for a scraper (or `curl`) that does
    /// not ask for OpenMetrics, and what `promtool check metrics` reads.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let wants = accept.is_some_and(|a| {
            a.split(',').any(|item| {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse() == Ok(0.0)));
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants { Format::OpenMetrics } else { Format::Text }
    }

    /// The response's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Tool labels one server may have; calls to further tools count as `other`.
pub const MAX_TOOLS_PER_SERVER: usize = 100;

/// The tool label of calls no label of their own was given to.
pub const OTHER_TOOL: &str = "other";

/// Longest tool name kept as a label.
const MAX_TOOL_LABEL: usize = 128;

// ---------------------------------------------------------------------------
// Label values
// ---------------------------------------------------------------------------

/// What an HTTP request was for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/mcp`, `/mcp/{name}`.
    Mcp,
    /// `/sse`, `/sse/{name}` (legacy HTTP+SSE).
    Sse,
    /// `/messages` (legacy HTTP+SSE).
    Messages,
    /// `/healthz`, `/readyz`.
    Health,
    /// `/.well-known/…` (OAuth metadata).
    OAuth,
    /// `/metrics`.
    Metrics,
    /// Anything else.
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 7] = [
        Endpoint::Mcp,
        Endpoint::Sse,
        Endpoint::Messages,
        Endpoint::Health,
        Endpoint::OAuth,
        Endpoint::Metrics,
        Endpoint::Other,
    ];

    /// The endpoint a request path belongs to.
    pub fn of_path(path: &str) -> Endpoint {
        let under = |root: &str| path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'));
        if under("/mcp") {
            Endpoint::Mcp
        } else if under("/sse") {
            Endpoint::Sse
        } else if path == "/messages" {
            Endpoint::Messages
        } else if path == "/healthz" || path == "/readyz" {
            Endpoint::Health
        } else if under("/.well-known") {
            Endpoint::OAuth
        } else if path == "/metrics" {
            Endpoint::Metrics
        } else {
            Endpoint::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Mcp => "mcp",
            Endpoint::Sse => "sse",
            Endpoint::Messages => "messages",
            Endpoint::Health => "health",
            Endpoint::OAuth => "oauth",
            Endpoint::Metrics => "metrics",
            Endpoint::Other => "other",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a status's class in [`STATUS_CLASSES`].
fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// The method classes of the request path, `other` for a method no class
/// knows.
const CLASSES: [&str; 6] = ["list", "call", "read", "get", "notification", "other"];

fn class_index(class: Option<MethodClass>) -> usize {
    match class {
        Some(MethodClass::List) => 0,
        Some(MethodClass::Call) => 1,
        Some(MethodClass::Read) => 2,
        Some(MethodClass::Get) => 3,
        Some(MethodClass::Notification) => 4,
        Some(MethodClass::Other) | None => 5,
    }
}

/// How an MCP request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// Refused by the gateway's rules (access, limits).
    Denied,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::Denied];

    /// The outcome of a request's result, by the rule the audit trail
    /// uses: an error is a denial when its code says access was refused or
    /// a limit was reached.
    pub fn of(outcome: &Result<Value, Value>) -> Outcome {
        match outcome {
            Ok(_) => Outcome::Ok,
            Err(e) => match e.get("code").and_then(Value::as_i64) {
                Some(jsonrpc::FORBIDDEN | jsonrpc::LIMIT_REACHED) => Outcome::Denied,
                _ => Outcome::Error,
            },
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
        }
    }
}

/// Why the gateway refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A missing or refused credential.
    Auth,
    /// The caller's role, groups or a policy.
    Policy,
    /// A per-caller limit (`limits.per_principal`).
    Limit,
    /// The audit queue was full (`audit.on_full: refuse`).
    AuditFull,
    /// A rate limit (`limits.rules`), or rate limits that could not be
    /// checked.
    RateLimit,
    /// A call quota (`limits.quotas`).
    Quota,
    /// A server's calls in flight (`limits.rules` with `concurrency`).
    Concurrency,
    /// An emergency lockdown (`bastion lockdown on`).
    Lockdown,
}

impl Denial {
    const ALL: [Denial; 8] = [
        Denial::Auth,
        Denial::Policy,
        Denial::Limit,
        Denial::AuditFull,
        Denial::RateLimit,
        Denial::Quota,
        Denial::Concurrency,
        Denial::Lockdown,
    ];

    fn label(self) -> &'static str {
        match self {
            Denial::Auth => "auth",
            Denial::Policy => "policy",
            Denial::Limit => "limit",
            Denial::AuditFull => "audit_full",
            Denial::RateLimit => "rate_limit",
            Denial::Quota => "quota",
            Denial::Concurrency => "concurrency",
            Denial::Lockdown => "lockdown",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    endpoint: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct McpLabels {
    class: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    server: Arc<str>,
    tool: Arc<str>,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

// ---------------------------------------------------------------------------
// Timing: a histogram of atomics
// ---------------------------------------------------------------------------

/// Upper bounds of the duration buckets, in microseconds (1 ms to 5 min).
const BOUNDS_US: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
];

/// A histogram of durations in seconds with fixed buckets (`BOUNDS_US`),
/// observed with two relaxed atomic additions and no lock.
#[derive(Debug, Clone, Default)]
pub struct Timing(Arc<TimingCells>);

#[derive(Debug, Default)]
struct TimingCells {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Timing {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Timing {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Timing {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); BOUNDS_US.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = BOUNDS_US.get(i).map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            *slot = (bound, self.0.buckets[i].load(Ordering::Relaxed));
        }
        // The count is the buckets' total, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

// ---------------------------------------------------------------------------
// The metrics
// ---------------------------------------------------------------------------

/// What other parts of the gateway hold, read when a scrape comes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sessions: u64,
    pub calls_in_flight: u64,
    pub stream_queue_bytes: u64,
    /// `None` with auditing off.
    pub audit_queue_depth: Option<u64>,
    /// Audit records written to the store, and written to the spool while
    /// the store was away; `None` with auditing off.
    pub audit_written: Option<u64>,
    pub audit_spooled: Option<u64>,
    /// Anomaly signals raised, by kind; `None` when none are watched for.
    pub anomalies: Option<[(crate::anomaly::Signal, u64); 3]>,
    pub notifications_dropped: u64,
    pub streams_disconnected: u64,
    pub connections_refused: u64,
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
    http_family: Family<HttpLabels, Counter>,
    /// By endpoint and status class, made on first use.
    http: [[OnceLock<Counter>; 5]; 7],
    /// By method class and outcome.
    mcp: [[Counter; 3]; 6],
    /// By method class.
    mcp_duration: [Timing; 6],
    denials: [Counter; 8],
    limit_backend_errors: Counter,
    tool_calls: Family<ToolLabels, Counter>,
    upstream_duration: Family<ServerLabel, Timing>,
    upstream_restarts: Family<ServerLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bastion");
        // A gauge at 1 rather than an OpenMetrics info: Prometheus's own text
        // format, which many tools still read, has no info type.
        let build = Family::<VersionLabel, Gauge>::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The running version of Bastion", build);
        let http_family = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by endpoint and status class", http_family.clone());
        let mcp_family = Family::<McpLabels, Counter>::default();
        registry.register(
            "mcp_requests",
            "MCP requests that reached the request path (the ones the audit trail records), by method class and outcome",
            mcp_family.clone(),
        );
        let mcp = CLASSES.map(|class| {
            Outcome::ALL.map(|o| mcp_family.get_or_create_owned(&McpLabels { class, outcome: o.label() }))
        });
        let duration_family = Family::<ClassLabel, Timing>::default();
        registry.register_with_unit(
            "mcp_request_duration",
            "Time from an MCP request entering the request path to its outcome, by method class",
            Unit::Seconds,
            duration_family.clone(),
        );
        let mcp_duration = CLASSES.map(|class| duration_family.get_or_create_owned(&ClassLabel { class }));
        let denial_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "denials",
            "Requests refused: a credential (auth), access rules (policy), a per-caller limit (limit), a full audit queue (audit_full), a rate limit (rate_limit), a quota (quota), a server's calls in flight (concurrency), a lockdown (lockdown)",
            denial_family.clone(),
        );
        let denials = Denial::ALL.map(|d| denial_family.get_or_create_owned(&ReasonLabel { reason: d.label() }));
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "tools/call requests by server, tool (at most 100 per server, then `other`) and outcome",
            tool_calls.clone(),
        );
        let upstream_duration = Family::<ServerLabel, Timing>::default();
        registry.register_with_unit(
            "upstream_call_duration",
            "Time a server took to answer a request sent to it, by server",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_restarts = Family::<ServerLabel, Counter>::default();
        registry.register(
            "upstream_restarts",
            "Starts of a server after its connection was lost or its previous start failed, by server",
            upstream_restarts.clone(),
        );
        let limit_backend_errors = Counter::default();
        registry.register(
            "limit_backend_errors",
            "Rate-limit checks Redis could not answer (refused, or checked in this process, as limits.on_redis_error says)",
            limit_backend_errors.clone(),
        );
        Metrics {
            limit_backend_errors,
            registry,
            http_family,
            http: Default::default(),
            mcp,
            mcp_duration,
            denials,
            tool_calls,
            upstream_duration,
            upstream_restarts,
        }
    }

    /// One HTTP request answered with `status`.
    pub fn http_request(&self, endpoint: Endpoint, status: u16) {
        let (e, s) = (endpoint as usize, status_class(status));
        self.http[e][s]
            .get_or_init(|| {
                self.http_family
                    .get_or_create_owned(&HttpLabels { endpoint: Endpoint::ALL[e].label(), status: STATUS_CLASSES[s] })
            })
            .inc();
    }

    /// One MCP request's outcome, and how long it took.
    pub fn mcp_request(&self, class: Option<MethodClass>, outcome: Outcome, took: Duration) {
        let c = class_index(class);
        self.mcp[c][outcome.index()].inc();
        self.mcp_duration[c].observe(took);
    }

    /// Something refused.
    /// A rate-limit check Redis could not answer.
    pub fn limit_backend_error(&self) {
        self.limit_backend_errors.inc();
    }

    pub fn denied(&self, why: Denial) {
        self.denials[why as usize].inc();
    }

    /// The handles of one server, its series made (at zero) now.
    pub fn server(&self, name: &str) -> ServerMetrics {
        let server: Arc<str> = Arc::from(name);
        let label = ServerLabel { server: server.clone() };
        ServerMetrics {
            upstream: self.upstream_duration.get_or_create_owned(&label),
            restarts: self.upstream_restarts.get_or_create_owned(&label),
            tools: Arc::new(ToolCounters::new(server, self.tool_calls.clone())),
        }
    }

    /// The whole exposition in `format`: every metric, then what `now`
    /// says.
    pub fn render(&self, now: &Snapshot, format: Format) -> String {
        let open = self.render_openmetrics(now);
        match format {
            Format::OpenMetrics => open,
            Format::Text => to_text_format(&open),
        }
    }

    /// Every metric, then what `now` says, then the end marker.
    fn render_openmetrics(&self, now: &Snapshot) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut scraped = Registry::with_prefix("bastion");
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        scraped.register(
            "sessions",
            "Live sessions (every era, subscriptions/listen streams included)",
            gauge(now.sessions),
        );
        scraped.register("calls_in_flight", "Requests being worked on by the request path", gauge(now.calls_in_flight));
        scraped.register_with_unit(
            "stream_queue",
            "Bytes waiting on all event streams together",
            Unit::Bytes,
            gauge(now.stream_queue_bytes),
        );
        if let Some(depth) = now.audit_queue_depth {
            scraped.register("audit_queue_depth", "Audit records waiting to be written", gauge(depth));
        }
        if let Some(n) = now.audit_written {
            scraped.register("audit_records_written", "Audit records written to the store", ConstCounter::new(n));
        }
        if let Some(n) = now.audit_spooled {
            scraped.register(
                "audit_records_spooled",
                "Audit records written to the local spool while the store could not be written",
                ConstCounter::new(n),
            );
        }
        if let Some(raised) = now.anomalies {
            let family = Family::<SignalLabels, Counter>::default();
            for (signal, n) in raised {
                family.get_or_create(&SignalLabels { kind: signal.name() }).inc_by(n);
            }
            scraped.register("anomalies", "Anomaly signals raised, by kind (audit.anomaly)", family);
        }
        scraped.register(
            "notifications_dropped",
            "Notifications dropped because a stream's queue was full or the fan-out fell behind",
            ConstCounter::new(now.notifications_dropped),
        );
        scraped.register(
            "streams_disconnected",
            "Event streams ended because they held the most when the stream queues were over their total",
            ConstCounter::new(now.streams_disconnected),
        );
        scraped.register(
            "connections_refused",
            "Connections refused because the open-file limit was near",
            ConstCounter::new(now.connections_refused),
        );
        // Writing to a String cannot fail, nor can these encoders.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &scraped);
        let _ = encode_eof(&mut out);
        out
    }
}

/// OpenMetrics text as Prometheus's text format 0.0.4: a counter's family
/// is named with its `_total` (as its samples are), and the `# UNIT` lines
/// and the end marker, which that format does not have, are left out.
fn to_text_format(open: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len() + 64 * counters.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let head = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match head {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One server's handles: its upstream timing and restarts, and its tool
/// calls. Cheap to clone; shared by a server's per-user instances.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    upstream: Timing,
    restarts: Counter,
    tools: Arc<ToolCounters>,
}

impl Default for ServerMetrics {
    /// Handles counted nowhere (for a server outside any gateway).
    fn default() -> Self {
        Metrics::new().server("detached")
    }
}

impl ServerMetrics {
    /// A request the server answered (or failed to) after `took`.
    pub fn upstream_call(&self, took: Duration) {
        self.upstream.observe(took);
    }

    /// The server is being started again after a failure.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// One `tools/call` of `tool` on this server. A tool without a label
    /// yet gets one if `outcome` is ok or `known()` says the server lists
    /// it, while the server has fewer than [`MAX_TOOLS_PER_SERVER`].
    pub fn tool_call(&self, tool: &str, outcome: Outcome, known: impl FnOnce() -> bool) {
        self.tools.count(tool, outcome, known);
    }
}

/// A server's tool-call counters by tool name, capped.
#[derive(Debug)]
struct ToolCounters {
    server: Arc<str>,
    family: Family<ToolLabels, Counter>,
    by_tool: DashMap<Box<str>, [Counter; 3]>,
    /// Tools given a label, at most [`MAX_TOOLS_PER_SERVER`].
    labelled: AtomicUsize,
    other: OnceLock<[Counter; 3]>,
}

impl ToolCounters {
    fn new(server: Arc<str>, family: Family<ToolLabels, Counter>) -> ToolCounters {
        ToolCounters { server, family, by_tool: DashMap::new(), labelled: AtomicUsize::new(0), other: OnceLock::new() }
    }

    fn counters(&self, tool: &str) -> [Counter; 3] {
        let tool: Arc<str> = Arc::from(tool);
        Outcome::ALL.map(|o| {
            self.family.get_or_create_owned(&ToolLabels {
                server: self.server.clone(),
                tool: tool.clone(),
                outcome: o.label(),
            })
        })
    }

    fn count(&self, tool: &str, outcome: Outcome, known: impl FnOnce() -> bool) {
        if let Some(c) = self.by_tool.get(tool) {
            c[outcome.index()].inc();
            return;
        }
        if labelable(tool) && (outcome == Outcome::Ok || known()) && self.reserve() {
            let mut fresh = false;
            let entry = self.by_tool.entry(Box::from(tool)).or_insert_with(|| {
                fresh = true;
                self.counters(tool)
            });
            entry[outcome.index()].inc();
            if !fresh {
                // Another call labelled it meanwhile.
                self.labelled.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        self.other.get_or_init(|| self.counters(OTHER_TOOL))[outcome.index()].inc();
    }

    /// Takes one of the labels left, if any.
    fn reserve(&self) -> bool {
        self.labelled
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < MAX_TOOLS_PER_SERVER).then_some(n + 1))
            .is_ok()
    }
}

/// Whether a tool name may be a label: 1 to 128 letters, digits, `_`, `-`,
/// `.` or `/` (what MCP recommends for tool names), and not `other`.
fn labelable(tool: &str) -> bool {
    !tool.is_empty()
        && tool.len() <= MAX_TOOL_LABEL
        && tool != OTHER_TOOL
        && tool.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The value of the sample `name{labels}` (labels in the order written).
    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn endpoints_by_path() {
        for (path, e) in [
            ("/mcp", Endpoint::Mcp),
            ("/mcp/github", Endpoint::Mcp),
            ("/mcpx", Endpoint::Other),
            ("/sse/x", Endpoint::Sse),
            ("/messages", Endpoint::Messages),
            ("/healthz", Endpoint::Health),
            ("/readyz", Endpoint::Health),
            ("/.well-known/oauth-protected-resource/mcp", Endpoint::OAuth),
            ("/metrics", Endpoint::Metrics),
            ("/metrics/x", Endpoint::Other),
            ("/", Endpoint::Other),
        ] {
            assert_eq!(Endpoint::of_path(path), e, "{path}");
        }
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(404)], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "1xx", "never out of range");
        assert_eq!(STATUS_CLASSES[status_class(u16::MAX)], "5xx");
    }

    #[test]
    fn outcomes_follow_the_audit_rule() {
        assert_eq!(Outcome::of(&Ok(json!({}))), Outcome::Ok);
        assert_eq!(Outcome::of(&Err(json!({"code": jsonrpc::FORBIDDEN}))), Outcome::Denied);
        assert_eq!(Outcome::of(&Err(json!({"code": jsonrpc::LIMIT_REACHED}))), Outcome::Denied);
        assert_eq!(Outcome::of(&Err(json!({"code": jsonrpc::INVALID_PARAMS}))), Outcome::Error);
        assert_eq!(Outcome::of(&Err(json!("no code"))), Outcome::Error);
    }

    #[test]
    fn timing_buckets_and_sum() {
        let t = Timing::default();
        t.observe(Duration::from_micros(500));
        t.observe(Duration::from_millis(1)); // on a bound: that bucket
        t.observe(Duration::from_millis(7));
        t.observe(Duration::from_secs(3600)); // past the last bound
        assert_eq!(t.count(), 4);
        let mut r = Registry::default();
        r.register_with_unit("t", "a timing", Unit::Seconds, t.clone());
        let mut text = String::new();
        encode_registry(&mut text, &r).unwrap();
        assert_eq!(sample(&text, "t_seconds_bucket{le=\"0.001\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "t_seconds_bucket{le=\"0.01\"}"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "t_seconds_bucket{le=\"300.0\"}"), Some(3.0), "{text}");
        assert_eq!(sample(&text, "t_seconds_bucket{le=\"+Inf\"}"), Some(4.0), "{text}");
        assert_eq!(sample(&text, "t_seconds_count"), Some(4.0), "{text}");
        assert_eq!(sample(&text, "t_seconds_sum"), Some(3600.0085), "{text}");
    }

    #[test]
    fn what_is_counted_is_rendered() {
        let m = Metrics::new();
        m.http_request(Endpoint::Mcp, 200);
        m.http_request(Endpoint::Mcp, 201);
        m.http_request(Endpoint::Metrics, 404);
        m.mcp_request(Some(MethodClass::Call), Outcome::Denied, Duration::from_millis(2));
        m.mcp_request(None, Outcome::Error, Duration::from_millis(2));
        m.denied(Denial::Policy);
        let s = m.server("echo");
        s.upstream_call(Duration::from_millis(3));
        s.restarted();
        s.tool_call("echo", Outcome::Ok, || false);
        let now = Snapshot {
            sessions: 3,
            audit_queue_depth: Some(7),
            audit_written: Some(40),
            audit_spooled: Some(2),
            anomalies: Some([
                (crate::anomaly::Signal::CallRate, 1),
                (crate::anomaly::Signal::Denials, 0),
                (crate::anomaly::Signal::LargeResponse, 4),
            ]),
            connections_refused: 2,
            ..Snapshot::default()
        };
        let text = m.render(&now, Format::OpenMetrics);
        for (series, want) in [
            ("bastion_http_requests_total{endpoint=\"mcp\",status=\"2xx\"}", 2.0),
            ("bastion_http_requests_total{endpoint=\"metrics\",status=\"4xx\"}", 1.0),
            ("bastion_mcp_requests_total{class=\"call\",outcome=\"denied\"}", 1.0),
            ("bastion_mcp_requests_total{class=\"other\",outcome=\"error\"}", 1.0),
            ("bastion_mcp_requests_total{class=\"list\",outcome=\"ok\"}", 0.0),
            ("bastion_mcp_request_duration_seconds_count{class=\"call\"}", 1.0),
            ("bastion_denials_total{reason=\"policy\"}", 1.0),
            ("bastion_denials_total{reason=\"audit_full\"}", 0.0),
            ("bastion_upstream_call_duration_seconds_count{server=\"echo\"}", 1.0),
            ("bastion_upstream_restarts_total{server=\"echo\"}", 1.0),
            ("bastion_tool_calls_total{server=\"echo\",tool=\"echo\",outcome=\"ok\"}", 1.0),
            ("bastion_tool_calls_total{server=\"echo\",tool=\"echo\",outcome=\"error\"}", 0.0),
            ("bastion_sessions", 3.0),
            ("bastion_audit_queue_depth", 7.0),
            ("bastion_audit_records_written_total", 40.0),
            ("bastion_audit_records_spooled_total", 2.0),
            ("bastion_anomalies_total{kind=\"call_rate\"}", 1.0),
            ("bastion_anomalies_total{kind=\"denials\"}", 0.0),
            ("bastion_anomalies_total{kind=\"large_response\"}", 4.0),
            ("bastion_connections_refused_total", 2.0),
            ("bastion_build_info{version=\"0.1.0\"}", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE bastion_mcp_request_duration_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        // Series not yet used are not shown; auditing off, no queue depth.
        assert!(!text.contains("endpoint=\"sse\""));
        assert!(!m.render(&Snapshot::default(), Format::OpenMetrics).contains("bastion_audit_queue_depth"));
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
        for text in [None, Some("*/*"), Some("text/plain"), Some("application/openmetrics-text;q=0"), Some("")] {
            assert_eq!(Format::from_accept(text), Format::Text, "{text:?}");
        }
        assert!(Format::Text.content_type().starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.denied(Denial::Auth);
        m.server("s").upstream_call(Duration::from_millis(1));
        let text = m.render(&Snapshot::default(), Format::Text);
        assert!(text.contains("# HELP bastion_denials_total "), "{text}");
        assert!(text.contains("# TYPE bastion_denials_total counter\n"), "{text}");
        assert!(text.contains("# TYPE bastion_upstream_call_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("# TYPE bastion_sessions gauge\n"), "{text}");
        assert!(!text.contains("# UNIT") && !text.contains("# EOF") && !text.contains("_total_total"), "{text}");
        // Only the comment lines differ.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
        let open = m.render(&Snapshot::default(), Format::OpenMetrics);
        assert_eq!(samples(&text).len(), samples(&open).len());
    }

    #[test]
    fn tool_labels_are_capped_per_server() {
        let m = Metrics::new();
        let s = m.server("big");
        for i in 0..MAX_TOOLS_PER_SERVER + 50 {
            s.tool_call(&format!("tool-{i}"), Outcome::Ok, || false);
        }
        // Errors of a tool the server lists get its label; of one it does
        // not, `other` (a client may name anything).
        s.tool_call("tool-0", Outcome::Error, || false);
        let other = m.server("small");
        other.tool_call("listed", Outcome::Error, || true);
        other.tool_call("made-up", Outcome::Error, || false);
        other.tool_call("bad\"name\n", Outcome::Ok, || true);
        other.tool_call(&"x".repeat(200), Outcome::Ok, || true);
        other.tool_call("other", Outcome::Ok, || true);

        let text = m.render(&Snapshot::default(), Format::OpenMetrics);
        let big: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("bastion_tool_calls_total{server=\"big\"") && l.contains("outcome=\"ok\""))
            .collect();
        assert_eq!(big.len(), MAX_TOOLS_PER_SERVER + 1, "100 tools and `other`");
        assert_eq!(sample(&text, "bastion_tool_calls_total{server=\"big\",tool=\"other\",outcome=\"ok\"}"), Some(50.0));
        assert_eq!(
            sample(&text, "bastion_tool_calls_total{server=\"big\",tool=\"tool-0\",outcome=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "bastion_tool_calls_total{server=\"big\",tool=\"tool-120\",outcome=\"ok\"}"), None);
        assert_eq!(
            sample(&text, "bastion_tool_calls_total{server=\"small\",tool=\"listed\",outcome=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "bastion_tool_calls_total{server=\"small\",tool=\"other\",outcome=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "bastion_tool_calls_total{server=\"small\",tool=\"other\",outcome=\"ok\"}"),
            Some(3.0)
        );
        assert!(!text.contains("made-up") && !text.contains("bad") && !text.contains("xxxxxxxx"), "{text}");
    }

    #[test]
    fn the_cap_holds_under_concurrent_calls() {
        let m = Metrics::new();
        let s = m.server("s");
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..100 {
                        s.tool_call(&format!("t{}", (i * 7 + t * 13) % 150), Outcome::Ok, || true);
                    }
                });
            }
        });
        let text = m.render(&Snapshot::default(), Format::OpenMetrics);
        let labels =
            text.lines().filter(|l| l.starts_with("bastion_tool_calls_total{") && l.contains("\"ok\"")).count();
        assert!(labels <= MAX_TOOLS_PER_SERVER + 1, "{labels}");
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("bastion_tool_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(total, 400.0, "every call counted once");
    }
}
