//! The `audit` key: the audit trail.
//!
//! ```yaml
//! audit:
//!   key: {file: /etc/bastion/audit.key}   # or env / command, as vault.master_key
//!   chain: main                # replicas sharing a store share this chain
//!   queue: 10000               # records waiting to be written
//!   on_full: refuse            # or wait: what a request meets when the queue is full
//!   stream: stdout             # or a file: every record also as a JSON line
//!   retention: 90d             # older records are pruned
//!   checkpoint_interval: 10m   # how often the chain's head is logged (and written to checkpoint_file)
//!   checkpoint_file: /var/lib/bastion/checkpoints.jsonl
//! ```
//!
//! Absent: auditing on, its key the file `audit.key` in the data directory
//! (created, mode 0600, the first time it is needed).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{MasterKeyConfig, humantime_serde_compat};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether anything is audited. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the key that seals the chain and digests arguments comes
    /// from: exactly one of `file`, `env`, `command`. Replicas sharing a
    /// chain need the same key. Default: `audit.key` in `data_dir`.
    #[serde(default)]
    pub key: Option<MasterKeyConfig>,
    /// The chain records are appended to. Default `main`.
    #[serde(default = "default_chain")]
    pub chain: String,
    /// Records waiting to be written, at most. Default 10000.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// When the queue is full: `refuse` new requests (fail closed, the
    /// default) or `wait` for room. Records are never dropped.
    #[serde(default)]
    pub on_full: OnFull,
    /// Records written to the store in one transaction, at most. Default 500.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Also write every record as a JSON line to `stdout` or to this file.
    #[serde(default)]
    pub stream: Option<String>,
    /// Records older than this are pruned. Default 90d.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// How often the chain's head is logged as a checkpoint. Default 10m.
    #[serde(default = "default_checkpoint", with = "humantime_serde_compat")]
    pub checkpoint_interval: Duration,
    /// A file each checkpoint is appended to, as a JSON line (keep a copy
    /// elsewhere: `bastion audit verify --checkpoints FILE`).
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            key: None,
            chain: default_chain(),
            queue: default_queue(),
            on_full: OnFull::default(),
            batch: default_batch(),
            stream: None,
            retention: default_retention(),
            checkpoint_interval: default_checkpoint(),
            checkpoint_file: None,
        }
    }
}

/// What a request meets when the audit queue is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Refused (HTTP 503, JSON-RPC error): nothing happens unaudited.
    #[default]
    Refuse,
    /// Waits for room.
    Wait,
}

impl AuditConfig {
    /// What is wrong with the section: the key and a message.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        if let Some(k) = &self.key {
            k.check().map_err(|(key, m)| (key.replacen("master_key", "key", 1), m))?;
        }
        let chain_ok = !self.chain.is_empty()
            && self.chain.len() <= 64
            && self.chain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !chain_ok {
            return Err(("chain".into(), "1 to 64 letters, digits, `-`, `_` or `.`".into()));
        }
        if self.queue == 0 {
            return Err(("queue".into(), "must be at least 1".into()));
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(("batch".into(), "must be from 1 to 10000".into()));
        }
        if self.retention < Duration::from_secs(3600) {
            return Err(("retention".into(), "must be at least 1h".into()));
        }
        if self.checkpoint_interval < Duration::from_secs(1) {
            return Err(("checkpoint_interval".into(), "must be at least 1s".into()));
        }
        if self.stream.as_deref().is_some_and(str::is_empty) {
            return Err(("stream".into(), "`stdout` or a file".into()));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn default_chain() -> String {
    "main".into()
}
fn default_queue() -> usize {
    10_000
}
fn default_batch() -> usize {
    500
}
fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_checkpoint() -> Duration {
    Duration::from_secs(600)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.yaml"), text)
    }

    #[test]
    fn defaults_and_refusals() {
        let c = yaml("mcpServers: {}\n").unwrap();
        assert_eq!(c.audit, AuditConfig::default());
        assert!(c.audit.enabled && c.audit.on_full == OnFull::Refuse);
        let c = yaml("audit: {on_full: wait, retention: 30d, stream: stdout, key: {env: AUDIT_KEY}}\n").unwrap();
        assert_eq!(c.audit.on_full, OnFull::Wait);
        assert_eq!(c.audit.retention, Duration::from_secs(30 * 24 * 3600));
        for (bad, key) in [
            ("audit: {chain: 'a b'}\n", "audit.chain"),
            ("audit: {queue: 0}\n", "audit.queue"),
            ("audit: {retention: 5m}\n", "audit.retention"),
            ("audit: {key: {}}\n", "audit.key"),
            ("audit: {on_full: drop}\n", "audit.on_full"),
        ] {
            let err = yaml(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
