//! Bastion's pure core: everything that needs neither a network nor a
//! database, so it builds and tests fast.
//!
//! - [`access`]: the roles users are given.
//! - [`config`]: the declarative configuration file (YAML or JSON), with the
//!   `mcpServers` map that Claude Desktop, Cursor and MCPHub users already have.
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope and MCP error codes.
//! - [`protocol`]: MCP protocol versions and eras.
//! - [`naming`]: how tool, prompt and resource names from many servers share
//!   one namespace.
//! - [`apikey`]: API key generation and keyed hashing.
//! - [`cursor`]: pagination cursors bound to a list and authenticated.
//! - [`redact`]: URLs and other values made safe for errors and logs.
//! - [`supply_chain`]: whether a server's launcher (`npx`, `uvx`, `docker run`…)
//!   fetches what it runs at an exact version.
//! - [`template`]: `${user.NAME}`, `${server.NAME}` and `${env.NAME}` in a
//!   server's `env` and `headers`.
#![forbid(unsafe_code)]

pub mod access;
pub mod apikey;
pub mod config;
pub mod cursor;
pub mod jsonrpc;
pub mod naming;
pub mod protocol;
pub mod redact;
pub mod supply_chain;
pub mod template;
