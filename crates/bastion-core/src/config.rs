//! The configuration file.
//!
//! YAML or JSON (chosen by extension; content sniffed when there is none).
//! Unknown top-level keys are errors, so a typo never silently weakens the
//! gateway. The `mcpServers` section takes the map Claude Desktop, Cursor
//! and MCPHub users already have, unchanged: `command`, `args`, `env`, `cwd`
//! for stdio servers and `url`, `headers` for remote ones; keys those tools
//! add for themselves (`disabled`, `autoApprove`, `timeout`, …) are accepted
//! and ignored unless Bastion gives them a meaning.
//!
//! Every default is written on its field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::access::Role;
use crate::naming::{NAME_RULE, is_valid_server_name};
use crate::redact;

/// Why a configuration could not be used. Messages name the offending key
/// and never quote the file: it holds secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid YAML or JSON, or does not have the expected
    /// shape. `message` is the kind of problem, without values from the file.
    #[error("{path}: {}{message}", where_(.key, .position))]
    Syntax {
        path: PathBuf,
        /// Dotted key path, e.g. `mcpServers.github.env`; `None` at the top.
        key: Option<String>,
        /// 1-based line and column.
        position: Option<(u64, u64)>,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

fn where_(key: &Option<String>, position: &Option<(u64, u64)>) -> String {
    match (key, position) {
        (Some(k), Some((l, c))) => format!("{k} (line {l}, column {c}): "),
        (Some(k), None) => format!("{k}: "),
        (None, Some((l, c))) => format!("line {l}, column {c}: "),
        (None, None) => String::new(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`: loopback only.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the embedded store and the API key pepper live. Default `./data`,
    /// relative to the config file's directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The database of the store: a URL (`postgres://user@host:5432/db`,
    /// `sqlite:PATH`) or a mapping with `url` and pool settings. Default:
    /// SQLite, `bastion.db` in `data_dir`.
    #[serde(default)]
    pub store: StoreConfig,
    /// The secrets vault: where its master key comes from.
    #[serde(default)]
    pub vault: VaultConfig,
    /// The audit trail: its key, queue, stream and retention.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The Prometheus endpoint: whether it is served, to whom, and where.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The MCP servers, by name.
    #[serde(default, rename = "mcpServers")]
    pub servers: BTreeMap<String, ServerConfig>,
    /// Named sets of servers, each served at `/mcp/{group}`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub upstream: UpstreamDefaults,
    #[serde(default)]
    pub log: LogConfig,
    /// OpenTelemetry traces. Default: none (no spans, nothing exported).
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Users by name: their role and the groups whose servers they may use.
    /// The same name links API keys (`keys create --user`), token subjects
    /// and client certificates. Users can also be kept in the store
    /// (`bastion users add`); an entry here wins over the store's.
    #[serde(default)]
    pub users: BTreeMap<String, UserConfig>,
    /// Extra Cedar policies beside the built-in role and group rules.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Serve HTTPS on `listen`, optionally verifying client certificates.
    /// Default: plain HTTP (meant for loopback or behind a TLS proxy).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// On SIGTERM/SIGINT, how long calls in flight may run to their end.
    /// Past it they are answered with an error, the upstream processes are
    /// killed, and the gateway exits. Default 10s.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// The data guard: sensitive values looked for in messages, and what is
    /// done with them. Default: the built-in detectors with their default
    /// actions (see [`guard`](GuardConfig)).
    #[serde(default)]
    pub guard: GuardConfig,
    /// How the tools servers list are checked: pinning and the poisoning
    /// scan. Default `{pinning: auto, poisoning: warn}`.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// A stdio server launched through `npx`, `uvx`, `pipx run`, `docker
    /// run`… without an exact version: `warn` (logged, reported by `config
    /// check`) or `strict` (not started). Default `warn`.
    #[serde(default)]
    pub supply_chain: SupplyChain,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// One MCP server, in the Claude Desktop / Cursor shape.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// stdio: the program to run.
    #[serde(default)]
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// stdio: environment granted to the child. The child gets nothing else
    /// of Bastion's environment but a minimal PATH, HOME and LANG.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// stdio: working directory. Default: the config file's directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// remote: the server's URL (Streamable HTTP, or legacy HTTP+SSE).
    #[serde(default)]
    pub url: Option<String>,
    /// remote: headers sent with every request to the server.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `stdio`, `http`/`streamable-http`, or `sse`. Default: `stdio` with a
    /// `command`; with a `url`, Streamable HTTP falling back to legacy SSE.
    #[serde(default, rename = "type", alias = "transport")]
    pub transport: Option<TransportKind>,
    /// A disabled server is not served. Default false.
    #[serde(default)]
    pub disabled: bool,
    /// Per-call timeout for this server. Default: `upstream.call_timeout`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub call_timeout: Option<Duration>,
    /// The roots (`file://` URIs) Bastion answers a server's `roots/list`
    /// with. A process shared by several clients never sees a client's own
    /// roots: one user must not widen what another's server may touch.
    /// Default none.
    #[serde(default)]
    pub roots: Vec<RootConfig>,
    /// The data guard for this server, over the global `guard`. Default:
    /// the global settings.
    #[serde(default)]
    pub guard: GuardOverride,
    /// Settings of single tools, by the name the server gives them.
    /// Default none.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolConfig>,
    /// Tool pinning for this server. Default: `tools.pinning`.
    #[serde(default)]
    pub pinning: Option<Pinning>,
    /// What a poisoned description of this server leads to. Default:
    /// `tools.poisoning`.
    #[serde(default)]
    pub poisoning: Option<Poisoning>,
    /// stdio: the SHA-256 digest (hex) the command's executable must have,
    /// checked before every start; a server whose file differs is not
    /// started. Default: not checked.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Keys other tools keep in the same map; accepted, not used.
    #[serde(flatten)]
    pub ignored: BTreeMap<String, serde_json::Value>,
}

/// One root offered to a server, in the MCP `Root` shape.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RootConfig {
    /// A `file://` URI.
    pub uri: String,
    /// An optional human-readable name.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    Stdio,
    #[serde(alias = "http")]
    StreamableHttp,
    Sse,
}

/// One user's access.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub role: Role,
    /// Groups (of `groups`) whose servers the user may use. An `admin`
    /// needs none.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Policies added to the built-in ones.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Cedar policy files (`permit`/`forbid`), relative to the config
    /// file's directory. Validated at load; a file that fails on reload
    /// keeps the running policies.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

/// HTTPS on the listener, and client certificates (mTLS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    /// Without it no client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `optional` (a client may present a certificate; without one it
    /// authenticates with a bearer token) or `required` (the handshake
    /// fails without a valid certificate). Default `optional`; ignored
    /// without `client_ca`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Which name of a client certificate is the user name: `cn` (the
    /// subject's common name), `email`, `dns` or `uri` (the first subject
    /// alternative name of that kind). Default `cn`.
    #[serde(default)]
    pub client_user: CertName,
    /// Oldest TLS version accepted: `1.2` or `1.3`. Default `1.2`.
    #[serde(default = "default_tls_min")]
    pub min_version: String,
}

fn default_tls_min() -> String {
    "1.2".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CertName {
    #[default]
    Cn,
    Email,
    Dns,
    Uri,
}

/// One OpenID Connect provider whose access tokens (JWTs) are accepted.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// The issuer URL; tokens must carry it in `iss`, exactly. Its keys
    /// are found by discovery (`{issuer}/.well-known/openid-configuration`)
    /// unless `jwks_uri` is given.
    pub issuer: String,
    /// Where the issuer's signing keys (JWKS) are, without discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted from this issuer: `RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`.
    /// `none` and the HMAC algorithms are refused. Default `[RS256]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Which claims name the user, role and groups.
    #[serde(default)]
    pub claims: ClaimNames,
    /// Scopes a token must carry (in `scope` or `scp`); advertised in the
    /// protected resource metadata. Default none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 60s, at most 60s.
    #[serde(default = "default_leeway", with = "humantime_serde_compat")]
    pub leeway: Duration,
    /// Fewest seconds between two fetches of the keys when a token names a
    /// key id not seen yet. Default 30s.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde_compat")]
    pub jwks_min_refresh: Duration,
    /// How long fetched keys are used before they are fetched again.
    /// Default 1h.
    #[serde(default = "default_jwks_ttl", with = "humantime_serde_compat")]
    pub jwks_cache_ttl: Duration,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// The signature algorithms a token may use.
pub const TOKEN_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// Claim names. Role and groups are read from tokens only when named:
/// otherwise they come from `users` and the store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimNames {
    /// The claim holding the user name. Default `sub`.
    #[serde(default = "default_user_claim")]
    pub user: String,
    /// The claim holding the role (a string). Default: not read.
    #[serde(default)]
    pub role: Option<String>,
    /// The claim holding the groups (an array of strings, or one string).
    /// Default: not read.
    #[serde(default)]
    pub groups: Option<String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames { user: default_user_claim(), role: None, groups: None }
    }
}

fn default_user_claim() -> String {
    "sub".into()
}

/// How callers authenticate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// This gateway's resource identifier (RFC 8707), e.g.
    /// `https://gw.example.com/mcp`: tokens must carry it in `aud`, and the
    /// protected resource metadata names it. Required with `oidc`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Identity providers whose tokens are accepted, beside API keys.
    #[serde(default)]
    pub oidc: Vec<OidcIssuer>,
    /// How long a validated API key, and a user kept in the store, is
    /// trusted without asking the store again. Default 2s: revocation and
    /// role changes take effect within this time.
    #[serde(default = "default_key_cache_ttl", with = "humantime_serde_compat")]
    pub key_cache_ttl: Duration,
    /// Expiry of new API keys when `--expires` is not given. Default 30 days.
    #[serde(default = "default_key_expiry", with = "humantime_serde_compat")]
    pub default_key_expiry: Duration,
    /// Where the secret API keys are hashed with comes from, as
    /// `vault.master_key` (`file`, `env` or `command`, giving 32 bytes in
    /// base64). Replicas sharing a store must share it. Default: the file
    /// `api-key.pepper` in the data directory, made the first time.
    #[serde(default)]
    pub key_pepper: Option<MasterKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            resource: None,
            oidc: Vec::new(),
            key_cache_ttl: default_key_cache_ttl(),
            default_key_expiry: default_key_expiry(),
            key_pepper: None,
        }
    }
}

fn default_key_cache_ttl() -> Duration {
    Duration::from_secs(2)
}
fn default_key_expiry() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// The downstream HTTP side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Accepted `Host` header values (host, or host:port). Default: when
    /// listening on loopback, `localhost`, `127.0.0.1` and `[::1]` on any
    /// port; otherwise any host (authentication still applies).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Accepted `Origin` values (e.g. `https://app.example.com`). Default:
    /// loopback origins only. A request with any other Origin gets 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body. Default 4 MiB; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Items per page in list results. Default 100.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// A session unused this long is closed. Default 1h.
    #[serde(default = "default_session_idle", with = "humantime_serde_compat")]
    pub session_idle_timeout: Duration,
    /// A session ends this long after it was created, however active.
    /// Default 24h.
    #[serde(default = "default_session_lifetime", with = "humantime_serde_compat")]
    pub session_max_lifetime: Duration,
    /// Time a client has to send a request's headers; a slower client is
    /// cut off before authentication. Default 10s.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    /// Default 60s.
    #[serde(default = "default_idle_connection", with = "humantime_serde_compat")]
    pub idle_connection_timeout: Duration,
    /// Most client connections served at once; further ones wait in the
    /// listen backlog. Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2: streams one connection may have open at once. Default 128.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Largest request head (request line and headers). Default 64 KiB;
    /// larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest `capabilities` plus `clientInfo` a client may declare, as
    /// JSON text; a session keeps them. Default 16 KiB.
    #[serde(default = "default_max_client_info")]
    pub max_client_info_bytes: usize,
    /// Bytes of messages waiting to be written on one session's stream (GET,
    /// legacy SSE, `subscriptions/listen`). Past it, notifications for that
    /// session are dropped; answers wait for room. Default 1 MiB.
    #[serde(default = "default_stream_queue")]
    pub stream_queue_bytes: usize,
    /// Bytes waiting on all streams together. Past it, the streams with the
    /// most waiting are disconnected, slowest first. Default 64 MiB.
    #[serde(default = "default_stream_queue_total")]
    pub stream_queue_total_bytes: usize,
    /// File descriptors kept free for the store, upstream processes and
    /// connections to remote servers: new client connections are refused
    /// with 503 once fewer than this many remain under the open-file limit.
    /// Default 256.
    #[serde(default = "default_descriptor_headroom")]
    pub descriptor_headroom: usize,
    /// Reverse proxies in front of the gateway (addresses or CIDR blocks).
    /// A request whose TCP peer is one of them is taken to come from the
    /// address its `X-Forwarded-For` names (the last hop not itself a
    /// trusted proxy): that is the client address the audit trail, the
    /// anomaly signals and traces record. Default none: the peer's
    /// address, whatever a client sends. `/metrics` always answers by the
    /// peer's address.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: default_max_body(),
            page_size: default_page_size(),
            session_idle_timeout: default_session_idle(),
            session_max_lifetime: default_session_lifetime(),
            header_read_timeout: default_header_read_timeout(),
            idle_connection_timeout: default_idle_connection(),
            max_connections: default_max_connections(),
            http2_max_concurrent_streams: default_h2_streams(),
            max_header_bytes: default_max_header_bytes(),
            max_client_info_bytes: default_max_client_info(),
            stream_queue_bytes: default_stream_queue(),
            stream_queue_total_bytes: default_stream_queue_total(),
            descriptor_headroom: default_descriptor_headroom(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_stream_queue() -> usize {
    1024 * 1024
}
fn default_stream_queue_total() -> usize {
    64 * 1024 * 1024
}
fn default_descriptor_headroom() -> usize {
    256
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_page_size() -> usize {
    100
}
fn default_session_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_connection() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    4096
}
fn default_h2_streams() -> u32 {
    128
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_client_info() -> usize {
    16 * 1024
}

/// What one principal (a user) may hold at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalCaps {
    /// Live sessions (Streamable HTTP and legacy SSE). Default 64.
    #[serde(default = "default_cap_sessions")]
    pub sessions: usize,
    /// Open long-lived streams: GET streams, legacy SSE streams and
    /// `subscriptions/listen` streams together. Default 32.
    #[serde(default = "default_cap_streams")]
    pub streams: usize,
    /// Of those, `subscriptions/listen` streams. Default 16.
    #[serde(default = "default_cap_listen")]
    pub listen_streams: usize,
    /// Stateless calls parked while their client answers a multi
    /// round-trip request. Default 32.
    #[serde(default = "default_cap_parked")]
    pub parked_calls: usize,
    /// Requests being worked on at once, in every era. Default 64.
    #[serde(default = "default_cap_in_flight")]
    pub calls_in_flight: usize,
}

impl Default for PrincipalCaps {
    fn default() -> Self {
        PrincipalCaps {
            sessions: default_cap_sessions(),
            streams: default_cap_streams(),
            listen_streams: default_cap_listen(),
            parked_calls: default_cap_parked(),
            calls_in_flight: default_cap_in_flight(),
        }
    }
}

fn default_cap_sessions() -> usize {
    64
}
fn default_cap_streams() -> usize {
    32
}
fn default_cap_listen() -> usize {
    16
}
fn default_cap_parked() -> usize {
    32
}
fn default_cap_in_flight() -> usize {
    64
}

/// How upstream servers are run and called.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDefaults {
    /// At most this many stdio servers start at the same time. Default 4.
    #[serde(default = "default_spawns")]
    pub max_concurrent_spawns: usize,
    /// Time allowed for a server to start and answer `initialize`. Default 30s.
    #[serde(default = "default_start_timeout", with = "humantime_serde_compat")]
    pub start_timeout: Duration,
    /// Time allowed for one call. Default 60s.
    #[serde(default = "default_call_timeout", with = "humantime_serde_compat")]
    pub call_timeout: Duration,
    /// Time allowed to open a connection to a remote server. Default 10s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// A stdio server with no call for this long is stopped. Default 10m.
    #[serde(default = "default_idle", with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// First delay before restarting a crashed server; doubles each time.
    /// Default 500ms.
    #[serde(default = "default_backoff_initial", with = "humantime_serde_compat")]
    pub restart_backoff: Duration,
    /// Longest delay between restarts. Default 30s.
    #[serde(default = "default_backoff_max", with = "humantime_serde_compat")]
    pub restart_backoff_max: Duration,
    /// Longest line a stdio server may write. Default 16 MiB.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// A server run once per user (its `env` or `headers` name a user's
    /// secret) runs at most this many users' instances at once — processes
    /// for stdio, connections for remote servers. Past it, the least
    /// recently used idle instance is stopped to make room; when every one
    /// is busy, the call is refused until one is free. Default 50.
    #[serde(default = "default_user_instances")]
    pub max_user_instances: usize,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            max_concurrent_spawns: default_spawns(),
            start_timeout: default_start_timeout(),
            call_timeout: default_call_timeout(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle(),
            restart_backoff: default_backoff_initial(),
            restart_backoff_max: default_backoff_max(),
            max_message_bytes: default_max_message(),
            max_user_instances: default_user_instances(),
        }
    }
}

fn default_user_instances() -> usize {
    50
}

fn default_spawns() -> usize {
    4
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_message() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `text`. Default text; `--log-format` overrides.
    #[serde(default)]
    pub format: Option<String>,
    /// A tracing filter such as `info` or `bastion=debug`. Default `info`.
    #[serde(default)]
    pub level: Option<String>,
    /// Headers whose values are masked in every log line and span
    /// attribute, beside the built-in ones (`Authorization`,
    /// `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-API-Key`,
    /// `Api-Key`, `X-Auth-Token`, `X-Access-Token`). Names, any case.
    /// Default none.
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

/// Durations written as `30s`, `10m`, `500ms`, `30d`.
mod humantime_serde_compat {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        // The error names the kind of value expected, not the text found.
        humantime::parse_duration(&s).map_err(|_| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&s), &"a duration such as 30s, 10m or 500ms")
        })
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    humantime_serde_compat::deserialize(d).map(Some)
}

/// The transport a server is reached by, after defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP; `fallback_sse` when the type was not given.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
        fallback_sse: bool,
    },
    Sse {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

impl ServerConfig {
    /// The transport, or a message saying what is wrong with the entry.
    pub fn transport(&self) -> Result<Transport, (&'static str, String)> {
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => Err(("url", "a server has either `command` or `url`, not both".into())),
            (None, None) => Err(("command", "a server needs `command` (stdio) or `url` (remote)".into())),
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err(("command", "must not be empty".into()));
                }
                if matches!(self.transport, Some(TransportKind::StreamableHttp | TransportKind::Sse)) {
                    return Err(("type", "a server with `command` is a stdio server".into()));
                }
                Ok(Transport::Stdio {
                    command: command.clone(),
                    args: self.args.clone(),
                    env: self.env.clone(),
                    cwd: self.cwd.clone(),
                })
            }
            (None, Some(url)) => {
                let lower = url.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                    return Err(("url", format!("must be an http:// or https:// URL, got {:?}", redact::url(url))));
                }
                for (k, v) in &self.headers {
                    if http_header_invalid(k, v) {
                        return Err(("headers", format!("invalid header {k:?}")));
                    }
                }
                match self.transport {
                    Some(TransportKind::Stdio) => Err(("type", "a server with `url` is not a stdio server".into())),
                    Some(TransportKind::Sse) => Ok(Transport::Sse { url: url.clone(), headers: self.headers.clone() }),
                    Some(TransportKind::StreamableHttp) => {
                        Ok(Transport::Http { url: url.clone(), headers: self.headers.clone(), fallback_sse: false })
                    }
                    None => Ok(Transport::Http { url: url.clone(), headers: self.headers.clone(), fallback_sse: true }),
                }
            }
        }
    }
}

impl ServerConfig {
    /// What the server's launcher fetches without an exact version, in a
    /// sentence that says how to pin it; `None` for a remote server, a
    /// program that is not a launcher, or one whose packages are pinned.
    pub fn unpinned(&self) -> Option<String> {
        crate::supply_chain::check(self.command.as_deref()?, &self.args)?.problem()
    }

    /// Checks the data guard settings of the server and its tools against
    /// the known detectors, and the executable's pin.
    fn check_guard(&self, detectors: &std::collections::BTreeSet<&str>) -> Result<(), (String, String)> {
        guard::check_detectors(&self.guard.detectors, detectors)
            .map_err(|(key, m)| (format!("guard.detectors.{key}"), m))?;
        for (tool, t) in &self.tools {
            if tool.is_empty() {
                return Err(("tools".into(), "a tool name must not be empty".into()));
            }
            guard::check_detectors(&t.guard.detectors, detectors)
                .map_err(|(key, m)| (format!("tools.{}.guard.detectors.{key}", syntax::printable(tool)), m))?;
        }
        if let Some(digest) = &self.sha256 {
            if self.command.is_none() {
                return Err(("sha256".into(), "pins the executable of a stdio server: needs `command`".into()));
            }
            guard::check_sha256(digest).map_err(|m| ("sha256".to_string(), m))?;
        }
        Ok(())
    }

    /// Checks the references in `env` and `headers` (see
    /// [`crate::template`]), and that nothing else holds one: a process's
    /// command line is visible to every user of the machine, and a URL ends
    /// up in logs.
    fn check_templates(&self) -> Result<(), (String, String)> {
        use crate::template::{Template, mentions_reference};
        let nowhere = |key: String| {
            (
                key,
                "may not hold `${…}`: secrets and other references go in `env` (stdio) or `headers` (remote), \
                 never where `ps` or a log would show them"
                    .to_string(),
            )
        };
        if self.command.as_deref().is_some_and(mentions_reference) {
            return Err(nowhere("command".into()));
        }
        if let Some(i) = self.args.iter().position(|a| mentions_reference(a)) {
            return Err(nowhere(format!("args[{i}]")));
        }
        if self.url.as_deref().is_some_and(mentions_reference) {
            return Err(nowhere("url".into()));
        }
        if self.cwd.as_ref().is_some_and(|c| c.to_str().is_none_or(mentions_reference)) {
            return Err(nowhere("cwd".into()));
        }
        for (field, map) in [("env", &self.env), ("headers", &self.headers)] {
            for (k, v) in map {
                if mentions_reference(k) {
                    return Err(nowhere(format!("{field}.{k}")));
                }
                Template::parse(v).map_err(|e| (format!("{field}.{k}"), e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Whether a configured header cannot be sent: the name must be an HTTP
/// token, the value free of control characters other than tab (the rules of
/// the `http` crate the gateway sends it with, so no header that passes here
/// fails at call time).
pub(crate) fn http_header_invalid(name: &str, value: &str) -> bool {
    name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// The rule [`is_valid_user_name`] checks, in words.
pub const USER_NAME_RULE: &str =
    "invalid user name: 1 to 256 characters, no control characters, no leading or trailing space";

/// Whether a user name is acceptable. Names are compared exactly, byte for
/// byte, everywhere (keys, tokens, certificates, policies).
pub fn is_valid_user_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control) && name.trim() == name
}

/// An absolute http(s) URL without a fragment (`https` unless `http_ok`
/// or the host is loopback).
fn check_http_url(url: &str, http_ok: bool) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("https://") {
        r
    } else if let Some(r) = lower.strip_prefix("http://") {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let loopback = host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
        if !(http_ok || loopback) {
            return Err("must be an https:// URL (http:// only on loopback)".into());
        }
        r
    } else {
        return Err("must be an http:// or https:// URL".into());
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    if url.contains('#') {
        return Err("must not have a fragment".into());
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// Which syntax a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    fn detect(path: &Path, text: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ if text.trim_start().starts_with('{') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and validates text; `path` is used for the format and messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let syntax = |p: syntax::Problem| ConfigError::Syntax {
            path: path.into(),
            key: p.key,
            position: p.position,
            message: p.message,
        };
        let config: Config = match Format::detect(path, text) {
            Format::Json => syntax::json(text).map_err(syntax)?,
            Format::Yaml => {
                if text.trim().is_empty() {
                    let empty = syntax::Problem { key: None, position: None, message: "the file is empty".into() };
                    return Err(syntax(empty));
                }
                syntax::yaml(text).map_err(syntax)?
            }
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.into(), key, message };
        self.guard.check().map_err(|(key, m)| invalid(format!("guard.{key}"), m))?;
        let detector_names = self.guard.detector_names();
        for (name, server) in &self.servers {
            if !is_valid_server_name(name) {
                return Err(invalid(
                    format!("mcpServers.{}", syntax::printable(name)),
                    format!("invalid server name: {NAME_RULE}"),
                ));
            }
            server.transport().map_err(|(key, msg)| invalid(format!("mcpServers.{name}.{key}"), msg))?;
            server.check_templates().map_err(|(key, msg)| invalid(format!("mcpServers.{name}.{key}"), msg))?;
            for (i, root) in server.roots.iter().enumerate() {
                if !root.uri.starts_with("file://") {
                    return Err(invalid(format!("mcpServers.{name}.roots[{i}].uri"), "must be a file:// URI".into()));
                }
            }
            server
                .check_guard(&detector_names)
                .map_err(|(key, msg)| invalid(format!("mcpServers.{name}.{key}"), msg))?;
        }
        for (group, members) in &self.groups {
            if !is_valid_server_name(group) {
                return Err(invalid(
                    format!("groups.{}", syntax::printable(group)),
                    format!("invalid group name: {NAME_RULE}"),
                ));
            }
            if self.servers.contains_key(group) {
                return Err(invalid(format!("groups.{group}"), "a group may not have the name of a server".into()));
            }
            for (i, m) in members.iter().enumerate() {
                if !self.servers.contains_key(m) {
                    return Err(invalid(format!("groups.{group}[{i}]"), format!("no server named {m:?}")));
                }
            }
        }
        self.validate_access(path)?;
        if self.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes".into(), "must be at least 1024".into()));
        }
        if self.http.page_size == 0 {
            return Err(invalid("http.page_size".into(), "must be at least 1".into()));
        }
        self.limits
            .validate(|server| self.servers.contains_key(server), |group| self.groups.contains_key(group))
            .map_err(|(key, msg)| invalid(key, msg))?;
        if self.http.max_connections == 0 || self.http.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "http.max_connections".into(),
                "connection and stream limits must be at least 1".into(),
            ));
        }
        if self.http.max_header_bytes < 4096 {
            return Err(invalid("http.max_header_bytes".into(), "must be at least 4096".into()));
        }
        if self.http.stream_queue_bytes < 64 * 1024 {
            return Err(invalid("http.stream_queue_bytes".into(), "must be at least 65536".into()));
        }
        if self.http.stream_queue_total_bytes < self.http.stream_queue_bytes {
            return Err(invalid(
                "http.stream_queue_total_bytes".into(),
                "must be at least http.stream_queue_bytes".into(),
            ));
        }
        if self.shutdown_grace < Duration::from_millis(100) {
            return Err(invalid("shutdown_grace".into(), "must be at least 100ms".into()));
        }
        if self.upstream.max_concurrent_spawns == 0 {
            return Err(invalid("upstream.max_concurrent_spawns".into(), "must be at least 1".into()));
        }
        if self.upstream.max_user_instances == 0 {
            return Err(invalid("upstream.max_user_instances".into(), "must be at least 1".into()));
        }
        if let Some(f) = &self.log.format
            && f != "json"
            && f != "text"
        {
            return Err(invalid("log.format".into(), "must be `json` or `text`".into()));
        }
        for (i, name) in self.log.redact_headers.iter().enumerate() {
            if http_header_invalid(name, "") {
                return Err(invalid(format!("log.redact_headers[{i}]"), "must be the name of an HTTP header".into()));
            }
        }
        if let Some(t) = &self.tracing {
            t.check().map_err(|(key, m)| invalid(format!("tracing.{key}"), m))?;
        }
        self.store.pool.check().map_err(|(key, m)| invalid(format!("store.{key}"), m))?;
        if let Some(k) = &self.vault.master_key {
            k.check().map_err(|(key, m)| invalid(format!("vault.{key}"), m))?;
        }
        if let Some(k) = &self.auth.key_pepper {
            k.check()
                .map_err(|(key, m)| invalid(format!("auth.{}", key.replacen("master_key", "key_pepper", 1)), m))?;
        }
        self.audit.check().map_err(|(key, m)| invalid(format!("audit.{key}"), m))?;
        self.metrics.check(self.listen).map_err(|(key, m)| invalid(format!("metrics.{key}"), m))?;
        Ok(())
    }

    /// Users, policies, identity providers and TLS.
    fn validate_access(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { path: path.into(), key, message };
        for (name, user) in &self.users {
            if !is_valid_user_name(name) {
                return Err(invalid(format!("users.{}", syntax::printable(name)), USER_NAME_RULE.into()));
            }
            for (i, g) in user.groups.iter().enumerate() {
                if !self.groups.contains_key(g) {
                    return Err(invalid(format!("users.{name}.groups[{i}]"), format!("no group named {g:?}")));
                }
            }
        }
        for (i, f) in self.policy.files.iter().enumerate() {
            if f.as_os_str().is_empty() {
                return Err(invalid(format!("policy.files[{i}]"), "must not be empty".into()));
            }
        }
        if let Some(r) = &self.auth.resource
            && let Err(m) = check_http_url(r, true)
        {
            return Err(invalid("auth.resource".into(), m));
        }
        if !self.auth.oidc.is_empty() && self.auth.resource.is_none() {
            return Err(invalid(
                "auth.resource".into(),
                "is required with auth.oidc: tokens must be issued for this gateway".into(),
            ));
        }
        let mut issuers = std::collections::BTreeSet::new();
        for (i, o) in self.auth.oidc.iter().enumerate() {
            let key = |k: &str| format!("auth.oidc[{i}].{k}");
            check_http_url(&o.issuer, false).map_err(|m| invalid(key("issuer"), m))?;
            if !issuers.insert(o.issuer.as_str()) {
                return Err(invalid(key("issuer"), "the same issuer is listed twice".into()));
            }
            if let Some(j) = &o.jwks_uri {
                check_http_url(j, false).map_err(|m| invalid(key("jwks_uri"), m))?;
            }
            if o.algorithms.is_empty() {
                return Err(invalid(key("algorithms"), "must name at least one algorithm".into()));
            }
            for a in &o.algorithms {
                if !TOKEN_ALGORITHMS.contains(&a.as_str()) {
                    let name = if a.len() <= 16 { syntax::printable(a) } else { "(long value)".into() };
                    return Err(invalid(
                        key("algorithms"),
                        format!("{name:?} is not accepted; use {}", TOKEN_ALGORITHMS.join(", ")),
                    ));
                }
            }
            if o.claims.user.is_empty() {
                return Err(invalid(key("claims.user"), "must name a claim".into()));
            }
            if o.leeway > Duration::from_secs(60) {
                return Err(invalid(key("leeway"), "must be at most 60s".into()));
            }
            if o.jwks_min_refresh < Duration::from_secs(1) {
                return Err(invalid(key("jwks_min_refresh"), "must be at least 1s".into()));
            }
        }
        if let Some(t) = &self.tls
            && t.min_version != "1.2"
            && t.min_version != "1.3"
        {
            return Err(invalid("tls.min_version".into(), "must be \"1.2\" or \"1.3\"".into()));
        }
        Ok(())
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve_path(&self, config_path: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        config_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join(p)
    }

    /// The data directory, resolved against the config file's directory.
    pub fn data_dir(&self, config_path: &Path) -> PathBuf {
        let base = config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match &self.data_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base.join(d),
            None => base.join("data"),
        }
    }

    /// The SQLite file of the store, when the store is SQLite: `store`'s
    /// path resolved against the config file's directory, or `bastion.db`
    /// in the data directory.
    pub fn sqlite_path(&self, config_path: &Path) -> Option<PathBuf> {
        match &self.store.location {
            StoreLocation::DataDir => Some(self.data_dir(config_path).join("bastion.db")),
            StoreLocation::Sqlite(p) => Some(self.resolve_path(config_path, p)),
            StoreLocation::Postgres(_) => None,
        }
    }

    /// The enabled servers.
    pub fn enabled_servers(&self) -> impl Iterator<Item = (&String, &ServerConfig)> {
        self.servers.iter().filter(|(_, s)| !s.disabled)
    }
}

mod audit;
mod guard;
mod limits;
mod metrics;
mod store;
mod syntax;
mod telemetry;
#[cfg(test)]
mod tests;
mod vault;

pub use audit::{AnomalyConfig, AuditConfig, DenialThreshold, OnFull, Threshold};
pub use guard::{
    BUILTIN_DETECTORS, CustomDetector, DetectorConfig, GuardAction, GuardConfig, GuardDirection, GuardOverride,
    MAX_CUSTOM_DETECTORS, MaskStyle, Pinning, Poisoning, SupplyChain, ToolConfig, ToolsConfig, Validator,
};
pub use limits::{
    DEFAULT_CONCURRENCY_WAIT, LimitRule, LimitScope, LimitedClass, LimitsConfig, OnRedisError, QuotaPeriod, QuotaRule,
    QuotaScope, RateSpec, RedisUrl,
};
pub use metrics::{IpNet, MetricsConfig};
pub use store::{PoolConfig, PostgresUrl, StoreConfig, StoreLocation, parse_location as parse_store_location};
pub use telemetry::{OTLP_TRACES_PATH, TracingConfig};
pub use vault::{MasterKeyConfig, VaultConfig};
