//! Upstream MCP servers: how Bastion reaches them and keeps them healthy.
//!
//! Each configured server has one [`UpstreamHandle`]. It connects lazily —
//! a stdio server is spawned on first use, never at start-up — under a
//! gateway-wide cap on concurrent spawns, restarts a crashed server with
//! exponential backoff, and stops a stdio server that has been idle. Calls
//! from every downstream session share one connection: request ids are
//! remapped so many concurrent calls multiplex on one process.
//!
//! - `mux`: JSON-RPC over one ordered message channel (stdio, legacy SSE).
//! - `stdio`: child processes with a clean environment.
//! - `executable`: the file a stdio server runs, and its `sha256` pin.
//! - `http`: Streamable HTTP servers.
//! - `sse`: legacy HTTP+SSE servers.

pub mod executable;
pub mod guard;
mod http;
mod inject;
mod lines;

pub(crate) use http::{bounded_body, bounded_events};
mod mux;
mod reader;
mod sse;
mod stdio;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bastion_core::config::{Config, SupplyChain, Transport};
use bastion_core::jsonrpc::{self, error_object};
use bastion_core::protocol::LATEST_SESSION_VERSION;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

/// A message from an upstream server that belongs to one call: a
/// notification (progress, logging) or a request (sampling, elicitation,
/// roots) that the downstream client must answer through `reply`.
#[derive(Debug)]
pub enum UpstreamEvent {
    Notification { method: String, params: Option<Value> },
    Request { method: String, params: Option<Value>, reply: oneshot::Sender<Result<Value, Value>> },
}

/// Where a call's related messages go, tagged with who made the call.
/// Bounded: a downstream that does not read is not allowed to make the
/// gateway buffer without limit.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<UpstreamEvent>,
    /// The principal (user) the call belongs to: the boundary no message
    /// may cross.
    owner: Arc<str>,
    /// Set while the call waits for its client to come back with input (a
    /// multi round-trip request); the call still owns what its server sends.
    parked: Arc<AtomicBool>,
    /// The log level the client's session asked for (`logging/setLevel`).
    log_level: Option<u8>,
}

impl EventSink {
    pub fn new(owner: impl Into<Arc<str>>) -> (EventSink, mpsc::Receiver<UpstreamEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        (EventSink { tx, owner: owner.into(), parked: Arc::new(AtomicBool::new(false)), log_level: None }, rx)
    }

    /// Log messages below `level` (a [`log_rank`]) are not delivered.
    pub fn with_log_level(mut self, level: Option<u8>) -> EventSink {
        self.log_level = level;
        self
    }

    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }

    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    pub fn try_send(&self, ev: UpstreamEvent) -> Result<(), mpsc::error::TrySendError<UpstreamEvent>> {
        self.tx.try_send(ev)
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether a log message may reach this call's client: at or above the
    /// level its session asked for; a session that never asked gets `info`
    /// and above once Bastion changed the server's level for another one
    /// (`conn_level`, [`NO_LEVEL`] while Bastion never set one).
    pub(crate) fn admits_log(&self, params: Option<&Value>, conn_level: u8) -> bool {
        let level = params.and_then(|p| p.get("level")).and_then(Value::as_str).and_then(log_rank).unwrap_or(0);
        let floor = match self.log_level {
            Some(l) => Some(l),
            None if conn_level != NO_LEVEL => Some(INFO),
            None => None,
        };
        floor.is_none_or(|f| level >= f)
    }
}

/// On whose behalf a call is made. On a connection shared by several
/// clients, what the server sends that no id or token ties to one call
/// (server requests, log messages) goes to a call only when every call
/// pending on the connection — of whatever kind — has the same owner, the
/// principal ([`owning_sink`]).
#[derive(Clone, Debug)]
pub enum Caller {
    /// A client's call; what the server sends about it goes to the sink.
    Client(EventSink),
    /// A client's call that cannot receive messages (a batch item, a
    /// subscription made for a stateless stream), by its principal: it
    /// counts as an owner, and cannot be the one a message goes to.
    Quiet(Arc<str>),
    /// Bastion's own call on behalf of every client (list fetches).
    Gateway,
}

impl Caller {
    /// Who the call belongs to; Bastion's own calls have an owner no client has.
    pub fn owner(&self) -> &str {
        match self {
            Caller::Client(s) => s.owner(),
            Caller::Quiet(o) => o,
            Caller::Gateway => "",
        }
    }

    pub fn sink(&self) -> Option<&EventSink> {
        match self {
            Caller::Client(s) => Some(s),
            _ => None,
        }
    }
}

/// Of the calls pending on a shared connection, where a message that names
/// no call goes: only when every call belongs to one principal, to the
/// newest of its calls that can receive — calls running before calls
/// parked while their client answers a multi round-trip request (a parked
/// call's server is waiting for those answers; alone, it gets what its
/// server asks next). `None` when the owner is not unique or none of its
/// calls can receive: the request is then refused, the log line dropped.
pub(crate) fn owning_sink<'a>(calls: impl IntoIterator<Item = (u64, &'a Caller)>) -> Option<EventSink> {
    let mut owner: Option<&str> = None;
    // (parked, id): running calls sort after parked ones, newer after older.
    let mut best: Option<((bool, u64), &EventSink)> = None;
    for (id, caller) in calls {
        match owner {
            None => owner = Some(caller.owner()),
            Some(o) if o != caller.owner() => return None,
            Some(_) => {}
        }
        if let Some(sink) = caller.sink() {
            let rank = (!sink.is_parked(), id);
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, sink));
            }
        }
    }
    best.map(|(_, s)| s.clone())
}

/// Severity rank of an MCP log level (RFC 5424 order): `debug` is 0.
pub fn log_rank(level: &str) -> Option<u8> {
    LOG_LEVELS.iter().position(|l| *l == level).map(|p| p as u8)
}

/// The MCP log levels, least severe first.
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];
const INFO: u8 = 1;
/// No log level was set.
pub(crate) const NO_LEVEL: u8 = u8::MAX;

/// Server notifications that belong to no call and may be fanned out to
/// every session that can see the server. Everything else (log messages,
/// progress) reaches the call it belongs to or nobody.
pub(crate) fn is_broadcast(method: &str) -> bool {
    matches!(
        method,
        "notifications/tools/list_changed"
            | "notifications/prompts/list_changed"
            | "notifications/resources/list_changed"
            | "notifications/resources/updated"
    )
}

/// How long after its answer a call still receives what its server sends
/// about it where no stream ties the two (a Streamable HTTP server's GET
/// stream): a log line may come just after the answer.
pub const LINGER: Duration = Duration::from_millis(500);

/// Capacity of an [`EventSink`].
pub const EVENT_BUFFER: usize = 256;

/// A message from an upstream server that belongs to no call
/// (`notifications/tools/list_changed`, `notifications/resources/updated`,
/// unsolicited logging), tagged with the server's name.
#[derive(Debug, Clone)]
pub struct ServerNotification {
    pub server: Arc<str>,
    /// For a server run once per user: the user whose process sent it, and
    /// the only one whose sessions hear it.
    pub user: Option<Arc<str>>,
    pub method: String,
    pub params: Option<Value>,
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The server answered with a JSON-RPC error; passed through unchanged.
    #[error("the server returned an error")]
    Rpc(Value),
    /// The server could not be started or reached.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The connection broke while the call was in flight (crash, EOF).
    #[error("the server closed the connection during the call")]
    Closed,
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server sent something that is not MCP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A secret its configuration refers to is not set (the message names
    /// it and how to set it, nothing else).
    #[error("{0}")]
    MissingSecret(String),
    /// Not started by the supply-chain policy: a launcher without an exact
    /// version under `supply_chain: strict`, or an executable that does not
    /// match its `sha256` pin. The reason names no path or digest.
    #[error("refused by the supply-chain policy: {0}")]
    Refused(String),
}

impl crate::telemetry::CallFailure for CallError {
    fn kind(&self) -> &'static str {
        match self {
            CallError::Rpc(_) => "jsonrpc_error",
            CallError::Unavailable(_) => "unavailable",
            CallError::Closed => "closed",
            CallError::Timeout(_) => "timeout",
            CallError::Protocol(_) => "protocol",
            CallError::MissingSecret(_) => "missing_secret",
            CallError::Refused(_) => "refused",
        }
    }
}

impl CallError {
    /// The JSON-RPC error object a client receives. Upstream errors pass
    /// through; Bastion's own never carry internal details beyond a short
    /// reason.
    pub fn to_error_object(&self, server: &str) -> Value {
        match self {
            CallError::Rpc(e) => e.clone(),
            CallError::Timeout(_) => error_object(jsonrpc::REQUEST_TIMEOUT, format!("server {server:?} timed out")),
            other => error_object(jsonrpc::UPSTREAM_UNAVAILABLE, format!("server {server:?}: {other}")),
        }
    }
}

/// What an upstream said about itself when it was initialized.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub protocol_version: String,
    pub capabilities: Value,
    pub server_info: Value,
    pub instructions: Option<Value>,
}

impl ServerInfo {
    fn from_initialize_result(result: &Value) -> Result<ServerInfo, CallError> {
        let Some(obj) = result.as_object() else {
            return Err(CallError::Protocol("initialize result is not an object".into()));
        };
        Ok(ServerInfo {
            protocol_version: obj
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(LATEST_SESSION_VERSION)
                .into(),
            capabilities: obj.get("capabilities").cloned().unwrap_or_else(|| json!({})),
            server_info: obj.get("serverInfo").cloned().unwrap_or_else(|| json!({})),
            instructions: obj.get("instructions").cloned(),
        })
    }

    /// Whether the server advertised a capability (`tools`, `prompts`, …).
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.get(capability).is_some_and(|c| !c.is_null())
    }
}

/// The `initialize` request Bastion sends upstream, as an MCP client.
/// Sampling, elicitation and roots are offered because Bastion relays them
/// to whichever downstream client the request belongs to.
fn initialize_params() -> Value {
    json!({
        "protocolVersion": LATEST_SESSION_VERSION,
        "capabilities": {
            "sampling": {},
            "elicitation": {},
            "roots": {"listChanged": true}
        },
        "clientInfo": {"name": "bastion", "version": env!("CARGO_PKG_VERSION")}
    })
}

/// Everything a connection needs from the gateway.
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub server: Arc<str>,
    pub notifications: mpsc::UnboundedSender<ServerNotification>,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_message_bytes: usize,
    /// The configured roots, Bastion's answer to `roots/list`: the
    /// connection is shared, so no client's own roots reach it.
    pub roots: Arc<Value>,
    /// The log level Bastion set on this connection ([`NO_LEVEL`] if none).
    pub log_level: Arc<AtomicU8>,
    /// The user this connection serves alone (a server run once per user).
    pub user: Option<Arc<str>>,
    /// The data guard, for the server's requests relayed to a client
    /// (sampling, elicitation) and the client's answers.
    pub guard: Option<crate::gateway::GuardCell>,
    /// The audit trail, for what the guard finds in relayed messages.
    pub audit: Option<Arc<crate::audit::Auditor>>,
}

impl ConnContext {
    /// Server requests Bastion answers itself, whoever has calls in flight.
    pub fn answer_locally(&self, method: &str) -> Option<Result<Value, Value>> {
        match method {
            "ping" => Some(Ok(json!({}))),
            "roots/list" => Some(Ok(json!({"roots": &*self.roots}))),
            _ => None,
        }
    }

    pub fn log_level(&self) -> u8 {
        self.log_level.load(Ordering::Relaxed)
    }
}

/// A live connection to one server.
pub(crate) enum Conn {
    Stdio(Box<stdio::StdioConn>),
    Http(http::HttpConn),
    Sse(sse::SseConn),
}

impl Conn {
    async fn call(&self, method: &str, params: Option<Value>, caller: Caller) -> Result<Value, CallError> {
        match self {
            Conn::Stdio(c) => c.mux.call(method, params, caller).await,
            Conn::Http(c) => c.call(method, params, caller).await,
            Conn::Sse(c) => c.mux.call(method, params, caller).await,
        }
    }

    async fn notify(&self, method: &str, params: Option<Value>) {
        match self {
            Conn::Stdio(c) => c.mux.notify(method, params).await,
            Conn::Http(c) => c.notify(method, params).await,
            Conn::Sse(c) => c.mux.notify(method, params).await,
        }
    }

    fn is_alive(&self) -> bool {
        match self {
            Conn::Stdio(c) => c.mux.is_alive(),
            Conn::Http(c) => c.is_alive(),
            Conn::Sse(c) => c.mux.is_alive(),
        }
    }

    fn info(&self) -> &ServerInfo {
        match self {
            Conn::Stdio(c) => &c.info,
            Conn::Http(c) => &c.info,
            Conn::Sse(c) => &c.info,
        }
    }

    async fn shutdown(&self) {
        match self {
            Conn::Stdio(c) => c.shutdown().await,
            Conn::Http(c) => c.shutdown().await,
            Conn::Sse(c) => c.shutdown(),
        }
    }

    fn is_stdio(&self) -> bool {
        matches!(self, Conn::Stdio(_))
    }
}

/// What determines a server's connection: when this changes on reload, the
/// connection is replaced; when it does not, sessions and processes carry on.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub transport: Transport,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub start_timeout: Duration,
    pub idle_timeout: Duration,
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    pub max_message_bytes: usize,
    /// For a server run once per user: how many users' instances may run
    /// at once.
    pub max_user_instances: usize,
    /// The directory relative `cwd`s are resolved against.
    pub base_dir: std::path::PathBuf,
    /// The roots offered to the server (a JSON array of `Root`s).
    pub roots: Value,
    /// stdio: the digest (lower-case hex) its executable must have before
    /// every start.
    pub sha256: Option<String>,
    /// stdio: what its launcher fetches without an exact version, and
    /// whether it is refused for it (`supply_chain: strict`). `None` for
    /// every other server, so that changing the policy restarts only these.
    pub unpinned: Option<UnpinnedLaunch>,
}

/// A launcher that fetches what it runs without an exact version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpinnedLaunch {
    /// What is unpinned and how to pin it.
    pub problem: String,
    /// Not started (`supply_chain: strict`), rather than logged.
    pub refused: bool,
}

impl UpstreamSpec {
    /// Whether the server's `env` (stdio) or `headers` (remote) name a
    /// user's secret (`${user.NAME}`): it then runs once per user.
    pub fn per_user(&self) -> bool {
        let map = match &self.transport {
            Transport::Stdio { env, .. } => env,
            Transport::Http { headers, .. } | Transport::Sse { headers, .. } => headers,
        };
        map.values().any(|v| bastion_core::template::Template::parse(v).is_ok_and(|t| t.per_user()))
    }
}

/// A server's lists by method (`tools/list`…), each with every page.
type Lists = BTreeMap<&'static str, Arc<Vec<Value>>>;

/// One configured server and its (lazily made) connection.
pub struct UpstreamHandle {
    name: Arc<str>,
    spec: UpstreamSpec,
    current: arc_swap::ArcSwapOption<Conn>,
    connect_lock: Mutex<()>,
    spawn_permits: Arc<Semaphore>,
    notifications: mpsc::UnboundedSender<ServerNotification>,
    failures: AtomicU32,
    retry_at: std::sync::Mutex<Option<Instant>>,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last call.
    last_used_ms: AtomicU64,
    /// The same instant for every handle, so that users' instances compare
    /// by when they were last used.
    epoch: Instant,
    lists: std::sync::Mutex<Lists>,
    /// While a server replaced by a reload starts, the lists of the
    /// definition it replaced, so lists spanning servers need not wait.
    stale_lists: std::sync::Mutex<Option<Lists>>,
    /// The log level Bastion set on the current connection ([`NO_LEVEL`]).
    log_level: Arc<AtomicU8>,
    /// The most verbose level sessions asked for, applied again when the
    /// server restarts.
    wanted_log_level: AtomicU8,
    /// Which sessions are subscribed to which of the server's resources;
    /// a restarted server is subscribed again.
    subscriptions: crate::subscriptions::Subscriptions,
    /// Where `${server.NAME}` and `${user.NAME}` references are read from.
    vault: Option<Arc<crate::vault::Vault>>,
    /// For one user's own instance of a server run once per user: the user.
    user: Option<Arc<str>>,
    /// For a server whose `env` or `headers` name a user's secret: each
    /// user's own instance, made on first use. Such a handle never connects
    /// itself; every use goes through [`UpstreamHandle::for_user`].
    tenants: Option<Arc<Tenants>>,
    /// For one user's instance: the instances beside it, which share the
    /// server's `max_user_instances`. Weak: the server's handle owns them.
    siblings: Option<std::sync::Weak<Tenants>>,
    /// The server's metrics, shared with its users' instances.
    metrics: crate::metrics::ServerMetrics,
    /// The data guard its connections apply to what they relay between
    /// server and client; `None` reads nothing.
    guard: Option<crate::gateway::GuardCell>,
    /// Where a start refused by the supply-chain policy is recorded.
    audit: Option<Arc<crate::audit::Auditor>>,
}

/// The users' instances of a server run once per user.
#[derive(Default)]
struct Tenants {
    by_user: DashMap<Arc<str>, Arc<UpstreamHandle>>,
    /// Instances starting now: counted against the cap until connected.
    /// The lock also makes each admission one decision.
    starting: std::sync::Mutex<usize>,
}

impl Tenants {
    /// Lets `me` start when fewer than its spec's `max_user_instances` run
    /// or start; otherwise stops the least recently used idle instance to
    /// make room, or refuses when every one is busy.
    fn admit(self: &Arc<Self>, me: &UpstreamHandle) -> Result<Admission, CallError> {
        let max = me.spec.max_user_instances;
        let mut starting = self.starting.lock().expect("poisoned");
        let running: Vec<Arc<UpstreamHandle>> = self
            .by_user
            .iter()
            .filter(|e| !std::ptr::eq(Arc::as_ptr(e.value()), me))
            .filter(|e| e.value().current.load().as_ref().is_some_and(|c| c.is_alive()))
            .map(|e| e.value().clone())
            .collect();
        if running.len() + *starting >= max {
            let mut idle: Vec<&Arc<UpstreamHandle>> =
                running.iter().filter(|h| h.in_flight.load(Ordering::Relaxed) == 0).collect();
            idle.sort_by_key(|h| h.last_used_ms.load(Ordering::Relaxed));
            if !idle.into_iter().any(|h| h.evict()) {
                tracing::warn!(server = %me.name, user = me.user.as_deref(), max, "every user's instance is busy; call refused");
                return Err(CallError::Unavailable(format!(
                    "this server already runs for {max} users at once (upstream.max_user_instances) and all are busy; \
                     retry shortly"
                )));
            }
        }
        *starting += 1;
        Ok(Admission(self.clone()))
    }
}

/// A place among a server's running user instances, held while one starts.
struct Admission(Arc<Tenants>);

impl Drop for Admission {
    fn drop(&mut self) {
        *self.0.starting.lock().expect("poisoned") -= 1;
    }
}

/// The instant last-use times are counted from, shared by every handle.
fn process_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Decrements the in-flight count when a call ends, however it ends.
struct InFlight<'a>(&'a UpstreamHandle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl UpstreamHandle {
    pub fn new(
        name: &str,
        spec: UpstreamSpec,
        spawn_permits: Arc<Semaphore>,
        notifications: mpsc::UnboundedSender<ServerNotification>,
        vault: Option<Arc<crate::vault::Vault>>,
        metrics: crate::metrics::ServerMetrics,
    ) -> Self {
        let tenants = spec.per_user().then(Arc::default);
        Self::with_user(name, spec, spawn_permits, notifications, vault, None, tenants, metrics)
    }

    #[allow(clippy::too_many_arguments)]
    fn with_user(
        name: &str,
        spec: UpstreamSpec,
        spawn_permits: Arc<Semaphore>,
        notifications: mpsc::UnboundedSender<ServerNotification>,
        vault: Option<Arc<crate::vault::Vault>>,
        user: Option<Arc<str>>,
        tenants: Option<Arc<Tenants>>,
        metrics: crate::metrics::ServerMetrics,
    ) -> Self {
        let siblings = None;
        UpstreamHandle {
            name: name.into(),
            spec,
            current: arc_swap::ArcSwapOption::empty(),
            connect_lock: Mutex::new(()),
            spawn_permits,
            notifications,
            failures: AtomicU32::new(0),
            retry_at: std::sync::Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: process_epoch(),
            lists: std::sync::Mutex::new(BTreeMap::new()),
            stale_lists: std::sync::Mutex::new(None),
            log_level: Arc::new(AtomicU8::new(NO_LEVEL)),
            wanted_log_level: AtomicU8::new(NO_LEVEL),
            subscriptions: Default::default(),
            vault,
            user,
            tenants,
            siblings,
            metrics,
            guard: None,
            audit: None,
        }
    }

    /// Records starts refused by the supply-chain policy in `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<crate::audit::Auditor>>) -> Self {
        self.audit = audit;
        self
    }

    /// Records that the server was not started, and why (`policy` names the
    /// rule), as a `server.refused` event.
    fn audit_refusal(&self, policy: &str, reason: &str) {
        if let Some(audit) = &self.audit {
            let mut event = bastion_audit::Event::new("server.refused", bastion_audit::Outcome::Denied);
            event.server = Some(self.name.to_string());
            event.user = self.user.as_deref().map(str::to_string);
            event.policy = Some(policy.to_string());
            event.reason = Some(reason.to_string());
            let audit = audit.clone();
            tokio::spawn(async move { audit.record(event).await });
        }
    }

    /// The handle with the data guard its connections apply to what they
    /// relay between server and client.
    pub fn guarded(mut self, guard: crate::gateway::GuardCell) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.metrics
    }

    /// Whether the tools list cached for `user` (this server's, or that
    /// user's own instance's) names `tool`. Never connects, and never
    /// makes an instance.
    pub fn lists_tool(&self, user: &str, tool: &str) -> bool {
        let named = |h: &UpstreamHandle| {
            h.cached_list("tools/list")
                .is_some_and(|tools| tools.iter().any(|t| t.get("name").and_then(Value::as_str) == Some(tool)))
        };
        match &self.tenants {
            Some(t) => t.by_user.get(user).is_some_and(|h| named(&h)),
            None => named(self),
        }
    }

    /// Whether the server's tools list, as last fetched for `user`, leaves
    /// `tool` out; `false` while no list has been fetched.
    pub fn leaves_out_tool(&self, user: &str, tool: &str) -> bool {
        let leaves_out = |h: &UpstreamHandle| {
            h.cached_list("tools/list")
                .is_some_and(|tools| !tools.iter().any(|t| t.get("name").and_then(Value::as_str) == Some(tool)))
        };
        match &self.tenants {
            Some(t) => t.by_user.get(user).is_some_and(|h| leaves_out(&h)),
            None => leaves_out(self),
        }
    }

    /// Whether the server runs once per user (its `env` or `headers` name a
    /// user's secret).
    pub fn is_per_user(&self) -> bool {
        self.tenants.is_some()
    }

    /// The handle that serves `user`: this one for a shared server; for a
    /// server run once per user, that user's own instance (made, not
    /// started, on first use), with its own process or connection, lists,
    /// subscriptions and restart backoff.
    pub fn for_user(self: &Arc<Self>, user: &str) -> Arc<UpstreamHandle> {
        let Some(tenants) = &self.tenants else { return self.clone() };
        if let Some(t) = tenants.by_user.get(user) {
            return t.clone();
        }
        tenants
            .by_user
            .entry(Arc::from(user))
            .or_insert_with(|| {
                let mut instance = UpstreamHandle::with_user(
                    &self.name,
                    self.spec.clone(),
                    self.spawn_permits.clone(),
                    self.notifications.clone(),
                    self.vault.clone(),
                    Some(Arc::from(user)),
                    None,
                    self.metrics.clone(),
                );
                instance.siblings = Some(Arc::downgrade(tenants));
                instance.guard = self.guard.clone();
                instance.audit = self.audit.clone();
                Arc::new(instance)
            })
            .clone()
    }

    /// The users' instances of a server run once per user (none for a
    /// shared server).
    fn instances(&self) -> Vec<Arc<UpstreamHandle>> {
        self.tenants.as_ref().map(|t| t.by_user.iter().map(|e| e.value().clone()).collect()).unwrap_or_default()
    }

    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    fn touch(&self) {
        self.last_used_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether a connection is up right now (for status pages; never
    /// connects).
    pub fn is_connected(&self) -> bool {
        self.current.load().as_ref().is_some_and(|c| c.is_alive()) || self.instances().iter().any(|t| t.is_connected())
    }

    /// The live connection, connecting (or restarting, after the backoff
    /// delay) if there is none.
    async fn conn(&self) -> Result<Arc<Conn>, CallError> {
        match self.live() {
            Some(c) => Ok(c),
            // Boxed: connecting is a large future, and without the box
            // every call's future would hold room for it (and be copied
            // with it) although nearly every call finds the connection up.
            None => Box::pin(self.connect_when_down()).await,
        }
    }

    /// The connection, if one is up.
    fn live(&self) -> Option<Arc<Conn>> {
        self.current.load_full().filter(|c| c.is_alive())
    }

    /// Connects, or restarts after the backoff delay; what another caller
    /// connected meanwhile is used instead.
    async fn connect_when_down(&self) -> Result<Arc<Conn>, CallError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        if let Some(u) = self.spec.unpinned.as_ref().filter(|u| u.refused) {
            // Reported when the configuration was applied; never started.
            return Err(CallError::Refused(format!("{} (supply_chain: strict)", u.problem)));
        }
        let _guard = self.connect_lock.lock().await;
        if let Some(c) = self.current.load_full() {
            if c.is_alive() {
                return Ok(c);
            }
            // It died: count it, and let in-flight work see the failure.
            self.current.store(None);
            self.note_failure();
            tracing::warn!(server = %self.name, "upstream connection lost; will restart");
        }
        let wait = self.retry_at.lock().expect("poisoned").map(|t| t.saturating_duration_since(Instant::now()));
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            if wait > self.spec.start_timeout {
                return Err(CallError::Unavailable(format!("restarting after failures; retry in {}s", wait.as_secs())));
            }
            tokio::time::sleep(wait).await;
        }
        // A user's instance starts only within the server's cap.
        let _admission = match self.siblings.as_ref().and_then(std::sync::Weak::upgrade) {
            Some(tenants) => Some(tenants.admit(self)?),
            None => None,
        };
        let _permit = self.spawn_permits.acquire().await.map_err(|_| CallError::Unavailable("shutting down".into()))?;
        if self.failures.load(Ordering::Relaxed) > 0 {
            self.metrics.restarted();
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.spec.start_timeout, self.connect()).await;
        let conn = match result {
            Ok(Ok(c)) => c,
            Ok(Err(e @ CallError::MissingSecret(_))) => {
                // Not a failure of the server: no backoff, so it starts as
                // soon as the secret is set.
                tracing::warn!(server = %self.name, user = self.user.as_deref(), error = %e, "upstream not started");
                return Err(e);
            }
            Ok(Err(e @ CallError::Refused(_))) => {
                // Logged with the details where it was found; recorded here.
                self.note_failure();
                self.audit_refusal("supply_chain:sha256", &e.to_string());
                return Err(e);
            }
            Ok(Err(e)) => {
                self.note_failure();
                tracing::warn!(server = %self.name, error = %e, "upstream failed to start");
                return Err(e);
            }
            Err(_) => {
                self.note_failure();
                tracing::warn!(server = %self.name, "upstream did not start within {:?}", self.spec.start_timeout);
                return Err(CallError::Unavailable(format!("did not start within {:?}", self.spec.start_timeout)));
            }
        };
        tracing::info!(
            server = %self.name,
            user = self.user.as_deref(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            protocol = %conn.info().protocol_version,
            "upstream connected"
        );
        let conn = Arc::new(conn);
        self.lists.lock().expect("poisoned").clear();
        self.log_level.store(NO_LEVEL, Ordering::Relaxed);
        let wanted = self.wanted_log_level.load(Ordering::Relaxed);
        if wanted != NO_LEVEL && conn.info().has("logging") {
            let params = json!({"level": LOG_LEVELS[wanted as usize]});
            match conn.call("logging/setLevel", Some(params), Caller::Gateway).await {
                Ok(_) => self.log_level.store(wanted, Ordering::Relaxed),
                Err(e) => tracing::warn!(server = %self.name, error = %e, "could not restore the log level"),
            }
        }
        for uri in self.subscriptions.uris() {
            if let Err(e) = conn.call("resources/subscribe", Some(json!({"uri": uri})), Caller::Gateway).await {
                tracing::warn!(server = %self.name, error = %e, "could not restore a resource subscription");
            }
        }
        self.current.store(Some(conn.clone()));
        self.touch();
        Ok(conn)
    }

    fn note_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let factor = 1u32 << (n - 1).min(16);
        let delay = self.spec.restart_backoff.saturating_mul(factor).min(self.spec.restart_backoff_max);
        *self.retry_at.lock().expect("poisoned") = Some(Instant::now() + delay);
    }

    async fn connect(&self) -> Result<Conn, CallError> {
        if self.tenants.is_some() {
            // Each user's instance connects; this one serves nobody.
            return Err(CallError::Unavailable("this server runs once per user and no user was named".into()));
        }
        let user = self.user.as_deref();
        let ctx = ConnContext {
            server: self.name.clone(),
            notifications: self.notifications.clone(),
            call_timeout: self.spec.call_timeout,
            connect_timeout: self.spec.connect_timeout,
            max_message_bytes: self.spec.max_message_bytes,
            roots: Arc::new(self.spec.roots.clone()),
            log_level: self.log_level.clone(),
            user: self.user.clone(),
            guard: self.guard.clone(),
            audit: self.audit.clone(),
        };
        match &self.spec.transport {
            Transport::Stdio { command, args, env, cwd } => {
                let cwd = match cwd {
                    Some(c) if c.is_absolute() => c.clone(),
                    Some(c) => self.spec.base_dir.join(c),
                    None => self.spec.base_dir.clone(),
                };
                let env = inject::render(&self.name, user, env, self.vault.as_deref()).await?;
                stdio::StdioConn::spawn(ctx, command, args, &env.0, &cwd, self.spec.sha256.as_deref())
                    .await
                    .map(|c| Conn::Stdio(Box::new(c)))
            }
            Transport::Http { url, headers, fallback_sse } => {
                let headers = &inject::render(&self.name, user, headers, self.vault.as_deref()).await?.0;
                match http::HttpConn::connect(ctx.clone(), url, headers).await {
                    Ok(c) => Ok(Conn::Http(c)),
                    Err(http::ConnectError::NotStreamable(reason)) if *fallback_sse => {
                        tracing::info!(server = %self.name, %reason, "not a Streamable HTTP server; trying legacy HTTP+SSE");
                        sse::SseConn::connect(ctx, url, headers).await.map(Conn::Sse)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Transport::Sse { url, headers } => {
                let headers = inject::render(&self.name, user, headers, self.vault.as_deref()).await?;
                sse::SseConn::connect(ctx, url, &headers.0).await.map(Conn::Sse)
            }
        }
    }

    /// The server's self-description, connecting if needed.
    pub async fn info(&self) -> Result<ServerInfo, CallError> {
        Ok(self.conn().await?.info().clone())
    }

    /// Sends one request and waits for its result, within the call timeout.
    /// Dropping the future cancels the call upstream. Made for a request,
    /// the call is in an `upstream` span when tracing is on.
    pub async fn call(&self, method: &str, params: Option<Value>, caller: Caller) -> Result<Value, CallError> {
        let span = crate::telemetry::upstream_span(&self.name, method);
        crate::telemetry::calling(span, self.call_now(method, params, caller)).await
    }

    async fn call_now(&self, method: &str, params: Option<Value>, caller: Caller) -> Result<Value, CallError> {
        // Counted from before the connection is had, so that a connection
        // made for this call is never taken as idle and stopped under it.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(self);
        let conn = self.conn().await?;
        let sent = Instant::now();
        let result = match tokio::time::timeout(self.spec.call_timeout, conn.call(method, params, caller)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(self.spec.call_timeout)),
        };
        self.metrics.upstream_call(sent.elapsed());
        // After failures, a success resets the backoff (the lock only then).
        if result.is_ok() && self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.retry_at.lock().expect("poisoned") = None;
        }
        result
    }

    /// For a server that speaks the stateless version itself: sends a
    /// stateless client's request unchanged and returns the raw answer.
    /// `None` when the server does not speak it (the caller bridges instead).
    pub async fn stateless_passthrough(
        &self,
        body: bytes::Bytes,
        headers: &::http::HeaderMap,
    ) -> Option<Result<reqwest::Response, CallError>> {
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        match &*conn {
            Conn::Http(h) if h.speaks_stateless() => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                let _in_flight = InFlight(self);
                // The method is the body's: the edge checked the header against it.
                let method = headers.get("mcp-method").and_then(|m| m.to_str().ok()).unwrap_or("request");
                let span = crate::telemetry::upstream_span(&self.name, method);
                Some(crate::telemetry::calling(span, h.passthrough(body, headers)).await)
            }
            _ => None,
        }
    }

    pub async fn notify(&self, method: &str, params: Option<Value>) {
        if let Some(c) = self.current.load_full() {
            c.notify(method, params).await;
        }
    }

    /// All items of a list method (`tools/list` → `tools`), following the
    /// server's cursors, cached until the server says the list changed.
    pub async fn list_all(&self, method: &'static str, field: &'static str) -> Result<Arc<Vec<Value>>, CallError> {
        // The list of a live connection is nearly always cached: that path
        // awaits nothing, and fetching is boxed so that the futures of the
        // calls that look at the list stay small.
        if self.live().is_some()
            && let Some(cached) = self.lists.lock().expect("poisoned").get(method)
        {
            return Ok(cached.clone());
        }
        Box::pin(self.fetch_list(method, field)).await
    }

    async fn fetch_list(&self, method: &'static str, field: &'static str) -> Result<Arc<Vec<Value>>, CallError> {
        let conn = self.conn().await?;
        if let Some(cached) = self.lists.lock().expect("poisoned").get(method) {
            return Ok(cached.clone());
        }
        let _ = conn;
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _page in 0..1000 {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let result = self.call(method, params, Caller::Gateway).await?;
            match result.get(field).and_then(Value::as_array) {
                Some(page) => items.extend(page.iter().cloned()),
                None => return Err(CallError::Protocol(format!("{method} result has no {field:?} array"))),
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        let items = Arc::new(items);
        self.lists.lock().expect("poisoned").insert(method, items.clone());
        Ok(items)
    }

    /// Makes the server send log messages at least as verbose as `rank`,
    /// and never less verbose than `info`, so that sessions which never
    /// chose a level keep receiving what they did. Each session's own level
    /// is applied by Bastion when it delivers ([`EventSink::admits_log`]).
    /// `None` when the server already sends enough and was not asked.
    pub async fn request_log_level(&self, rank: u8, caller: Caller) -> Option<Result<Value, CallError>> {
        let target = rank.min(INFO);
        self.want_log_level(target);
        let current = self.log_level.load(Ordering::Relaxed);
        if current != NO_LEVEL && current <= target {
            return None;
        }
        let params = json!({"level": LOG_LEVELS[target as usize]});
        let result = self.call("logging/setLevel", Some(params), caller).await;
        if result.is_ok() {
            self.log_level.fetch_min(target, Ordering::Relaxed);
        }
        Some(result)
    }

    /// Resource subscriptions held on this server.
    pub fn subscriptions(&self) -> &crate::subscriptions::Subscriptions {
        &self.subscriptions
    }

    /// Records a log level to apply when the server (re)starts.
    pub fn want_log_level(&self, rank: u8) {
        self.wanted_log_level.fetch_min(rank.min(INFO), Ordering::Relaxed);
    }

    /// The list cached for a method, if any (never asks the server).
    pub fn cached_list(&self, method: &str) -> Option<Arc<Vec<Value>>> {
        self.lists.lock().expect("poisoned").get(method).cloned()
    }

    /// Forgets a cached list after a `list_changed` notification.
    pub fn invalidate_list(&self, method: &str) {
        self.lists.lock().expect("poisoned").remove(method);
    }

    /// Takes over the cached lists of the handle this one replaces, to be
    /// served by [`UpstreamHandle::stale_list`] until [`UpstreamHandle::warm_up`] ends.
    pub fn inherit_lists(&self, previous: &UpstreamHandle) {
        let lists = previous.lists.lock().expect("poisoned").clone();
        *self.stale_lists.lock().expect("poisoned") = Some(lists);
    }

    /// While the server starts after a reload: the list of its previous
    /// definition (`Some(None)`: it had none cached, leave it out). `None`
    /// once the server is up.
    pub fn stale_list(&self, method: &str) -> Option<Option<Arc<Vec<Value>>>> {
        self.stale_lists.lock().expect("poisoned").as_ref().map(|l| l.get(method).cloned())
    }

    /// Starts the server and fills its list cache, then stops serving the
    /// previous definition's lists. Returns whether it started.
    pub async fn warm_up(&self) -> bool {
        if self.tenants.is_some() {
            // Each user's instance starts at that user's first use.
            self.stale_lists.lock().expect("poisoned").take();
            return true;
        }
        let started = match self.info().await {
            Ok(info) => {
                for (method, field, capability) in [
                    ("tools/list", "tools", "tools"),
                    ("prompts/list", "prompts", "prompts"),
                    ("resources/list", "resources", "resources"),
                ] {
                    if info.has(capability) {
                        let _ = self.list_all(method, field).await;
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(server = %self.name, error = %e, "server did not start after the reload");
                false
            }
        };
        self.stale_lists.lock().expect("poisoned").take();
        started
    }

    /// Stops an idle stdio server (each idle user's process, for a server
    /// run once per user). Returns true if one was stopped.
    pub async fn stop_if_idle(&self) -> bool {
        if self.tenants.is_some() {
            let mut stopped = false;
            for t in self.instances() {
                stopped |= Box::pin(t.stop_if_idle()).await;
            }
            return stopped;
        }
        let Some(conn) = self.current.load_full() else { return false };
        if !conn.is_stdio() || self.in_flight.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let idle_ms =
            (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.last_used_ms.load(Ordering::Relaxed));
        if Duration::from_millis(idle_ms) < self.spec.idle_timeout {
            return false;
        }
        let _guard = self.connect_lock.lock().await;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return false;
        }
        if let Some(conn) = self.current.swap(None) {
            tracing::info!(server = %self.name, user = self.user.as_deref(), idle_s = idle_ms / 1000, "stopping idle upstream");
            conn.shutdown().await;
            return true;
        }
        false
    }

    /// Stops an idle user's instance to make room for another, unless it is
    /// starting or busy. Returns whether it was stopped.
    fn evict(&self) -> bool {
        let Ok(_guard) = self.connect_lock.try_lock() else { return false };
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let Some(conn) = self.current.swap(None) else { return false };
        tracing::info!(server = %self.name, user = self.user.as_deref(), "stopping a user's idle instance to make room");
        tokio::spawn(async move { conn.shutdown().await });
        true
    }

    /// Stops the connection (shutdown, reload).
    pub async fn shutdown(&self) {
        for t in self.instances() {
            Box::pin(t.shutdown()).await;
        }
        if let Some(conn) = self.current.swap(None) {
            conn.shutdown().await;
        }
    }
}

/// The upstream specs a config describes, by server name.
pub fn specs_from_config(config: &Config, base_dir: &std::path::Path) -> BTreeMap<String, UpstreamSpec> {
    config
        .enabled_servers()
        .filter_map(|(name, s)| {
            let transport = s.transport().ok()?;
            Some((
                name.clone(),
                UpstreamSpec {
                    transport,
                    call_timeout: s.call_timeout.unwrap_or(config.upstream.call_timeout),
                    connect_timeout: config.upstream.connect_timeout,
                    start_timeout: config.upstream.start_timeout,
                    idle_timeout: config.upstream.idle_timeout,
                    restart_backoff: config.upstream.restart_backoff,
                    restart_backoff_max: config.upstream.restart_backoff_max,
                    max_message_bytes: config.upstream.max_message_bytes,
                    max_user_instances: config.upstream.max_user_instances,
                    base_dir: base_dir.to_path_buf(),
                    roots: Value::Array(
                        s.roots
                            .iter()
                            .map(|r| match &r.name {
                                Some(name) => json!({"uri": r.uri, "name": name}),
                                None => json!({"uri": r.uri}),
                            })
                            .collect(),
                    ),
                    sha256: s.sha256.as_ref().map(|d| d.to_ascii_lowercase()),
                    unpinned: s
                        .unpinned()
                        .map(|problem| UnpinnedLaunch { problem, refused: config.supply_chain == SupplyChain::Strict }),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &[(&str, &str)]) -> UpstreamSpec {
        UpstreamSpec {
            transport: Transport::Stdio {
                command: "sh".into(),
                args: vec!["-c".into(), "cat".into()],
                env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                cwd: None,
            },
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(1),
            max_message_bytes: 1 << 20,
            max_user_instances: 50,
            base_dir: std::env::temp_dir(),
            roots: json!([]),
            sha256: None,
            unpinned: None,
        }
    }

    fn handle(spec: UpstreamSpec) -> Arc<UpstreamHandle> {
        let (tx, _rx) = mpsc::unbounded_channel();
        Arc::new(UpstreamHandle::new("s", spec, Arc::new(Semaphore::new(4)), tx, None, Default::default()))
    }

    #[test]
    fn a_user_secret_makes_a_server_run_once_per_user() {
        assert!(!spec(&[]).per_user());
        assert!(!spec(&[("A", "${server.T}"), ("B", "${env.HOME}"), ("C", "$${user.T}")]).per_user());
        assert!(spec(&[("A", "x-${user.T}")]).per_user());
        let remote = |headers: &[(&str, &str)]| UpstreamSpec {
            transport: Transport::Http {
                url: "http://127.0.0.1:1/mcp".into(),
                headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                fallback_sse: false,
            },
            ..spec(&[])
        };
        assert!(remote(&[("Authorization", "Bearer ${user.TOKEN}")]).per_user());
        assert!(!remote(&[("Authorization", "Bearer ${server.TOKEN}")]).per_user());
    }

    #[test]
    fn each_user_has_an_instance_of_their_own() {
        let shared = handle(spec(&[("A", "${server.T}")]));
        assert!(!shared.is_per_user());
        assert!(Arc::ptr_eq(&shared.for_user("alice"), &shared));

        let per_user = handle(spec(&[("T", "${user.T}")]));
        assert!(per_user.is_per_user());
        let alice = per_user.for_user("alice");
        let bob = per_user.for_user("bob");
        assert!(!Arc::ptr_eq(&alice, &bob) && !Arc::ptr_eq(&alice, &per_user));
        assert!(Arc::ptr_eq(&alice, &per_user.for_user("alice")));
        // names are exact: no folding of case or space
        assert!(!Arc::ptr_eq(&alice, &per_user.for_user("Alice")));
        assert_eq!(alice.user.as_deref(), Some("alice"));
        assert!(!alice.is_per_user());
        assert_eq!(per_user.instances().len(), 3);
    }

    #[test]
    fn a_call_holds_no_room_for_connecting_or_fetching_a_list() {
        // Unboxed, connecting's future (and fetching a list's) would be
        // part of every call's, and copied with it on every call.
        let h = handle(spec(&[]));
        let call = std::mem::size_of_val(&h.call("tools/call", None, Caller::Gateway));
        let connect = std::mem::size_of_val(&h.connect_when_down());
        assert!(call < connect, "a call's future ({call} bytes) holds the connecting one ({connect})");
        let list = std::mem::size_of_val(&h.list_all("tools/list", "tools"));
        let fetch = std::mem::size_of_val(&h.fetch_list("tools/list", "tools"));
        assert!(list < fetch && list < call, "looking up a list ({list} bytes) holds fetching it ({fetch})");
    }

    #[tokio::test]
    async fn a_per_user_server_never_starts_without_a_user() {
        let per_user = handle(spec(&[("T", "${user.T}")]));
        let err = per_user.call("tools/list", None, Caller::Gateway).await.unwrap_err();
        assert!(matches!(err, CallError::Unavailable(_)), "{err:?}");
        assert!(!per_user.is_connected());
        // an instance without a vault cannot read the user's secret either
        let err = per_user.for_user("alice").info().await.unwrap_err();
        assert!(matches!(err, CallError::Unavailable(_)), "{err:?}");
        assert!(!per_user.is_connected());
    }

    /// A server run once per user whose instances answer every request,
    /// `slow` after two seconds, and hold at most `max` at once.
    fn capped(max: usize) -> Arc<UpstreamHandle> {
        let script = r#"id() { printf '%s' "$1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p'; }
while read -r l; do
  i=$(id "$l"); [ -z "$i" ] && continue
  case "$l" in *'"slow"'*) sleep 2;; esac
  printf '{"jsonrpc":"2.0","id":%s,"result":{"capabilities":{}}}\n' "$i"
done"#;
        let spec = UpstreamSpec {
            transport: Transport::Stdio {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: BTreeMap::new(),
                cwd: None,
            },
            max_user_instances: max,
            ..spec(&[])
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        Arc::new(UpstreamHandle::with_user(
            "s",
            spec,
            Arc::new(Semaphore::new(4)),
            tx,
            None,
            None,
            Some(Arc::default()),
            Default::default(),
        ))
    }

    fn running(server: &UpstreamHandle) -> Vec<String> {
        let mut users: Vec<String> = server
            .instances()
            .iter()
            .filter(|i| i.current.load().as_ref().is_some_and(|c| c.is_alive()))
            .filter_map(|i| i.user.as_deref().map(str::to_string))
            .collect();
        users.sort();
        users
    }

    #[tokio::test]
    async fn users_instances_are_capped_and_idle_ones_make_room() {
        let server = capped(2);
        for user in ["alice", "bob"] {
            server.for_user(user).call("x", None, Caller::Gateway).await.expect("starts");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(running(&server), ["alice", "bob"]);
        // A third user: the least recently used idle instance makes room.
        server.for_user("bob").call("x", None, Caller::Gateway).await.expect("bob again");
        server.for_user("carol").call("x", None, Caller::Gateway).await.expect("carol starts");
        assert_eq!(running(&server), ["bob", "carol"]);

        // Both busy: a fourth user is refused, and nobody's call is cut.
        let (bob, carol) = (server.for_user("bob"), server.for_user("carol"));
        let busy = tokio::spawn(async move {
            tokio::join!(bob.call("slow", None, Caller::Gateway), carol.call("slow", None, Caller::Gateway))
        });
        // Wait (bounded) until both calls are in flight.
        for _ in 0..500 {
            if server.instances().iter().filter(|i| i.in_flight.load(Ordering::Relaxed) > 0).count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = server.for_user("dave").call("x", None, Caller::Gateway).await.unwrap_err();
        assert!(matches!(&err, CallError::Unavailable(m) if m.contains("max_user_instances")), "{err:?}");
        let (b, c) = busy.await.expect("joined");
        assert!(b.is_ok() && c.is_ok(), "{b:?} {c:?}");
        // Free again: dave starts in the place of the older of the two.
        server.for_user("dave").call("x", None, Caller::Gateway).await.expect("dave starts");
        assert_eq!(running(&server).len(), 2, "{:?}", running(&server));
        assert!(running(&server).contains(&"dave".to_string()));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_refused_launcher_is_never_started() {
        let refused = handle(UpstreamSpec {
            unpinned: Some(UnpinnedLaunch { problem: "npx runs `pkg`, which names no version".into(), refused: true }),
            ..spec(&[])
        });
        for _ in 0..2 {
            let err = refused.call("tools/list", None, Caller::Gateway).await.unwrap_err();
            assert!(matches!(&err, CallError::Refused(m) if m.contains("names no version")), "{err:?}");
            let answer = err.to_error_object("s");
            assert!(answer["message"].as_str().unwrap().contains("refused by the supply-chain policy"), "{answer}");
        }
        assert!(!refused.is_connected());
        // Only logged: it is started (here a program that exits at once).
        let warned = handle(UpstreamSpec {
            transport: Transport::Stdio {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 1".into()],
                env: BTreeMap::new(),
                cwd: None,
            },
            unpinned: Some(UnpinnedLaunch { problem: "unpinned".into(), refused: false }),
            ..spec(&[])
        });
        let err = warned.info().await.unwrap_err();
        assert!(matches!(err, CallError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_executable_must_match_its_pin_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server.sh");
        let script = |marker: &str| {
            format!(
                "#!/bin/sh\n# {marker}\nwhile read -r l; do\n  i=$(printf '%s' \"$l\" | sed -n 's/.*\"id\":\\([0-9]*\\).*/\\1/p'); [ -z \"$i\" ] && continue\n  printf '{{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{{\"capabilities\":{{}}}}}}\\n' \"$i\"\ndone\n"
            )
        };
        let write = |text: String| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&server, text).unwrap();
            std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write(script("first"));
        let digest = executable::sha256_file(&server).unwrap();
        let pinned = |sha256: &str| UpstreamSpec {
            transport: Transport::Stdio {
                command: server.to_str().unwrap().into(),
                args: vec![],
                env: BTreeMap::new(),
                cwd: None,
            },
            restart_backoff: Duration::from_millis(1),
            restart_backoff_max: Duration::from_millis(1),
            sha256: Some(sha256.into()),
            ..spec(&[])
        };
        let good = handle(pinned(&digest));
        good.call("x", None, Caller::Gateway).await.expect("the pinned file starts");
        let wrong = handle(pinned(&"0".repeat(64)));
        let err = wrong.call("x", None, Caller::Gateway).await.unwrap_err();
        assert!(matches!(&err, CallError::Refused(m) if m.contains("does not match")), "{err:?}");
        assert!(!wrong.is_connected());
        // Changed between two starts: the restart is refused.
        good.shutdown().await;
        write(script("second"));
        let err = good.call("x", None, Caller::Gateway).await.unwrap_err();
        assert!(matches!(&err, CallError::Refused(_)), "{err:?}");
        assert!(!good.is_connected());
    }

    #[tokio::test]
    async fn restarts_and_answer_times_are_counted_per_server() {
        use crate::metrics::{Format, Metrics, Snapshot};
        let metrics = Metrics::new();
        let stdio = |script: &str| UpstreamSpec {
            transport: Transport::Stdio {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: BTreeMap::new(),
                cwd: None,
            },
            ..spec(&[])
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(4));
        let failing =
            UpstreamHandle::new("broken", stdio("exit 1"), permits.clone(), tx.clone(), None, metrics.server("broken"));
        // The first start is no restart; each start after a failure is one.
        assert!(failing.call("tools/list", None, Caller::Gateway).await.is_err());
        assert!(failing.call("tools/list", None, Caller::Gateway).await.is_err());
        assert!(failing.call("tools/list", None, Caller::Gateway).await.is_err());

        let answering = r#"while read -r l; do
  i=$(printf '%s' "$l" | sed -n 's/.*"id":\([0-9]*\).*/\1/p'); [ -z "$i" ] && continue
  printf '{"jsonrpc":"2.0","id":%s,"result":{"capabilities":{}}}\n' "$i"
done"#;
        let ok = UpstreamHandle::new("fine", stdio(answering), permits, tx, None, metrics.server("fine"));
        ok.call("x", None, Caller::Gateway).await.expect("answered");
        ok.call("x", None, Caller::Gateway).await.expect("answered");
        ok.shutdown().await;

        let text = metrics.render(&Snapshot::default(), Format::Text);
        let value =
            |series: &str| text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok());
        assert_eq!(value("bastion_upstream_restarts_total{server=\"broken\"}"), Some(2.0), "{text}");
        assert_eq!(value("bastion_upstream_restarts_total{server=\"fine\"}"), Some(0.0), "{text}");
        // The handshake is the gateway's own: only the two calls are timed.
        assert_eq!(value("bastion_upstream_call_duration_seconds_count{server=\"fine\"}"), Some(2.0), "{text}");
        assert_eq!(value("bastion_upstream_call_duration_seconds_count{server=\"broken\"}"), Some(0.0), "{text}");
    }
}
