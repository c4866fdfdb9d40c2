//! Bastion's dynamic state: what changes at run time, as opposed to the
//! configuration file. Today that is API keys, users and administrator
//! accounts; the embedded backend is SQLite in the data directory (zero
//! set-up).
//!
//! - [`Store`]: the connection pool and its queries.
//! - [`pepper`]: the server-side secret that keys API key hashes.
//! - [`users`]: users kept in the store (role and groups).
//! - [`admins`]: local administrator accounts (Argon2id password, TOTP).
#![forbid(unsafe_code)]

pub mod admins;
pub mod pepper;
mod store;
pub mod users;

pub use admins::{AdminRecord, LoginError};
pub use store::{ApiKeyRecord, KeyState, NewApiKey, Store, StoreError};
pub use users::{NewUser, UserRecord};
