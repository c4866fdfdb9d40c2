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
//!   anomaly:                   # signals raised from what the trail records
//!     call_rate: {calls: 600, window: 1m}      # a principal's calls in a window
//!     denials: {count: 20, window: 5m}         # a principal's (or address's) refusals
//!     response_bytes: 5242880                  # one response larger than this
//!     cooldown: 5m                             # one signal per principal and kind per cooldown
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
    /// Records written to the store in one transaction, at most. Default 1000.
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
    /// Anomaly signals: thresholds on what the trail records.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
}

/// Thresholds of the anomaly signals. Each raises an audit event, a
/// metric and a warning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Whether signals are raised at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A principal making more MCP requests than this within the window.
    /// Default 600 a minute.
    #[serde(default = "default_call_rate")]
    pub call_rate: Threshold,
    /// A principal (or, for refused credentials, a client address) refused
    /// more often than this within the window: probing. Default 20 in 5
    /// minutes.
    #[serde(default = "default_denials")]
    pub denials: DenialThreshold,
    /// One response larger than this many bytes. Default 5 MiB.
    #[serde(default = "default_response_bytes")]
    pub response_bytes: u64,
    /// After a signal, the same kind is not raised again for the same
    /// principal for this long. Default 5m.
    #[serde(default = "default_cooldown", with = "humantime_serde_compat")]
    pub cooldown: Duration,
}

/// A count of calls in a sliding window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub calls: u64,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
}

/// A count of refusals in a sliding window.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DenialThreshold {
    pub count: u64,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            call_rate: default_call_rate(),
            denials: default_denials(),
            response_bytes: default_response_bytes(),
            cooldown: default_cooldown(),
        }
    }
}

impl AnomalyConfig {
    fn check(&self) -> Result<(), (String, String)> {
        for (key, count, window) in [
            ("call_rate", self.call_rate.calls, self.call_rate.window),
            ("denials", self.denials.count, self.denials.window),
        ] {
            if count == 0 {
                return Err((key.to_string(), "the count must be at least 1".into()));
            }
            if window < Duration::from_secs(1) || window > Duration::from_secs(24 * 3600) {
                return Err((format!("{key}.window"), "must be from 1s to 24h".into()));
            }
        }
        if self.response_bytes == 0 {
            return Err(("response_bytes".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

fn default_call_rate() -> Threshold {
    Threshold { calls: 600, window: Duration::from_secs(60) }
}
fn default_denials() -> DenialThreshold {
    DenialThreshold { count: 20, window: Duration::from_secs(300) }
}
fn default_response_bytes() -> u64 {
    5 * 1024 * 1024
}
fn default_cooldown() -> Duration {
    Duration::from_secs(300)
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
            anomaly: AnomalyConfig::default(),
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
        self.anomaly.check().map_err(|(key, m)| (format!("anomaly.{key}"), m))
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
    1000
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
        let c = yaml("audit: {anomaly: {call_rate: {calls: 50, window: 10s}, cooldown: 1m}}\n").unwrap();
        assert_eq!(c.audit.anomaly.call_rate, Threshold { calls: 50, window: Duration::from_secs(10) });
        assert_eq!(c.audit.anomaly.cooldown, Duration::from_secs(60));
        assert_eq!(c.audit.anomaly.denials, AnomalyConfig::default().denials);
        for (bad, key) in [
            ("audit: {chain: 'a b'}\n", "audit.chain"),
            ("audit: {queue: 0}\n", "audit.queue"),
            ("audit: {retention: 5m}\n", "audit.retention"),
            ("audit: {key: {}}\n", "audit.key"),
            ("audit: {on_full: drop}\n", "audit.on_full"),
            ("audit: {anomaly: {call_rate: {calls: 0, window: 1m}}}\n", "audit.anomaly.call_rate"),
            ("audit: {anomaly: {denials: {count: 5, window: 0s}}}\n", "audit.anomaly.denials.window"),
            ("audit: {anomaly: {response_bytes: 0}}\n", "audit.anomaly.response_bytes"),
            ("audit: {anomaly: {spikes: 1}}\n", "audit.anomaly"),
        ] {
            let err = yaml(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
