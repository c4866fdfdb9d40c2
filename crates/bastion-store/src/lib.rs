//! Bastion's dynamic state: what changes at run time, as opposed to the
//! configuration file. That is API keys, users, administrator accounts and
//! the vault's sealed secrets and the audit trail, kept in SQLite in the data directory (the
//! default: zero set-up) or in PostgreSQL (`store: postgres://…`), with
//! the same behaviour on both.
//!
//! - [`Store`]: the connection pool and its queries; [`db`] says how the
//!   two backends are kept apart and how an outage is handled.
//! - [`StoreSettings`]: where the store is, from the config's `store`.
//! - [`pepper`]: the server-side secret that keys API key hashes.
//! - [`users`]: users kept in the store (role and groups).
//! - [`admins`]: local administrator accounts (Argon2id password, TOTP).
//! - [`secrets`]: the vault's rows, opaque sealed blobs.
//! - [`audit`]: the audit trail's hash-chained records, kept in batches.
//! - [`pins`]: pins of the tools and prompts servers list.
//! - [`limits`]: call quota usage and lockdowns.
//! - [`changes`]: the change feed, how gateways sharing a store follow
//!   each other's writes.
#![forbid(unsafe_code)]

pub mod admins;
pub mod audit;
pub mod changes;
pub mod db;
pub mod limits;
pub mod pepper;
pub mod pins;
pub mod secrets;
mod store;
#[cfg(test)]
mod testdb;
pub mod users;

pub use admins::{AdminRecord, LoginError};
pub use audit::{AuditBatch, AuditFilter, AuditRow};
pub use db::{Backend, MigrationInfo, MigrationState, MigrationStatus, StoreSettings};
pub use limits::{ALL_SERVERS, Lockdown};
pub use pins::PinRecord;
pub use secrets::{OwnerKind, SecretInfo, SecretRecord};
pub use store::{ApiKeyRecord, KeyState, NewApiKey, Store, StoreError};
pub use users::{NewUser, UserRecord};
