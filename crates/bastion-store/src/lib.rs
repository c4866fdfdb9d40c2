//! Bastion's dynamic state: what changes at run time, as opposed to the
//! configuration file. Today that is API keys; the embedded backend is
//! SQLite in the data directory (zero set-up).
//!
//! - [`Store`]: the connection pool and its queries.
//! - [`pepper`]: the server-side secret that keys API key hashes.
#![forbid(unsafe_code)]

pub mod pepper;
mod store;

pub use store::{ApiKeyRecord, KeyState, NewApiKey, Store, StoreError};
