//! Bastion's gateway: everything between a client's HTTP request and an
//! upstream MCP server.
//!
//! - [`gateway`]: shared state, config reload, background tasks.
//! - [`http`]: the downstream edge — routes, both protocol eras, legacy SSE.
//! - [`proxy`]: the request path, top to bottom.
//! - [`mrtr`]: multi round-trip requests for stateless clients.
//! - [`session`]: downstream sessions bound to their principal.
//! - [`outbox`]: the bounded queues behind long-lived streams.
//! - [`auth`]: who is calling — API keys, access tokens, client certificates.
//! - [`access`]: what a caller may use — its user's role and groups, and
//!   the policy engine's decisions.
//! - [`limit`]: the limit phase — lockdown, rate limits, quotas, calls in
//!   flight per server.
//! - [`load`]: what each principal holds at once, against its caps.
//! - [`pins`]: tool pinning and the poisoning scan: which listed tools
//!   and prompts are served.
//! - [`subscriptions`]: resource subscriptions of a server, counted per URI.
//! - [`upstream`]: stdio, Streamable HTTP and legacy SSE servers.
//! - [`server`]: the accept loop and graceful shutdown.
//! - [`tls`]: HTTPS on the listener, client certificates as credentials.
//! - [`descriptors`]: the open-file limit and refusing connections before it.
//! - [`drain`]: the request path's side of graceful shutdown.
//! - [`vault`]: secrets sealed in the store, opened with the master keyring.
//! - [`audit`]: the audit trail's queue, writer, spool and housekeeping.
//! - [`anomaly`]: anomaly signals read off the audit trail.
//! - [`metrics`]: the Prometheus metrics and their exposition.
//! - [`telemetry`]: OpenTelemetry spans, trace context in and out, trace
//!   ids in the log.
#![forbid(unsafe_code)]

pub mod access;
pub mod anomaly;
pub mod audit;
pub mod auth;
pub mod descriptors;
pub mod drain;
pub mod gateway;
pub mod http;
mod inspect;
pub mod limit;
pub mod load;
pub mod metrics;
pub mod mrtr;
pub mod outbox;
pub mod pins;
pub mod proxy;
pub mod server;
pub mod session;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod vault;
