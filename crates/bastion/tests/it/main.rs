//! Integration tests of the `bastion` binary: the real gateway process,
//! real upstream MCP servers (the workspace's fixture, the official
//! server-everything and mcp-server-time) and real MCP clients (the Python
//! SDK scripts in `tests/clients`).
#![forbid(unsafe_code)]

mod access;
mod audit;
mod auth;
mod bad_input;
mod caps;
mod claims;
mod conformance_gate;
mod descriptors;
mod edge_limits;
mod faults;
mod guard;
mod harness;
mod idp;
mod isolation;
mod keys_cli;
mod lifecycle;
mod limits;
mod metrics;
mod mock_upstream;
mod mtls;
mod oidc;
mod pins;
mod real_clients;
mod reload;
mod replicas;
mod secrets;
mod shutdown;
mod stateless_negative;
mod stdio_faults;
mod store_postgres;
mod stream_bounds;
mod supply_chain;
mod traces;
mod upstream_transports;
mod users_cli;
