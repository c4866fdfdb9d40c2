//! The `vault` key: where the master key of the secrets vault comes from.
//!
//! ```yaml
//! vault:
//!   master_key:
//!     file: /etc/bastion/master.key      # mode 0600 or 0400, owned by Bastion's user
//!   # or  env: BASTION_MASTER_KEY
//!   # or  command: [secret-tool, lookup, service, bastion]
//!   #     timeout: 10s
//! ```
//!
//! Absent: the file `master.key` in the data directory, created with a new
//! random key (mode 0600) the first time it is needed. A source may hold
//! several keys, one per line: the first seals, the others still open what
//! they sealed (a rotation in progress).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::opt_duration;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Where the master key comes from. Default: `master.key` in `data_dir`.
    #[serde(default)]
    pub master_key: Option<MasterKeyConfig>,
}

/// Exactly one of `file`, `env` and `command`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyConfig {
    /// A file; relative to the config file's directory.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable of the gateway, by name. It is never passed
    /// on to a server.
    #[serde(default)]
    pub env: Option<String>,
    /// A program and its arguments, run without a shell; the key is what
    /// it prints.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// How long the command may run. Default 10s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
}

impl MasterKeyConfig {
    /// What is wrong with the entry: the key and a message.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let given = [self.file.is_some(), self.env.is_some(), self.command.is_some()].iter().filter(|g| **g).count();
        if given != 1 {
            return Err(("master_key", "give exactly one of `file`, `env` and `command`".into()));
        }
        if let Some(name) = &self.env
            && !crate::template::valid_name(name)
        {
            return Err(("master_key.env", "must be the name of an environment variable".into()));
        }
        if let Some(cmd) = &self.command
            && cmd.first().is_none_or(|p| p.trim().is_empty())
        {
            return Err(("master_key.command", "must name a program".into()));
        }
        if self.timeout.is_some() && self.command.is_none() {
            return Err(("master_key.timeout", "applies to `command` only".into()));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(("master_key.timeout", "must be more than 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("bastion.yaml"), text)
    }

    fn refused(text: &str) -> (String, String) {
        match yaml(text) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn master_key_sources() {
        assert_eq!(yaml("mcpServers: {}\n").unwrap().vault.master_key, None);
        let c = yaml("vault: {master_key: {file: keys/master.key}}\n").unwrap();
        assert_eq!(c.vault.master_key.unwrap().file.unwrap(), Path::new("keys/master.key"));
        let c = yaml("vault: {master_key: {command: [secret-tool, lookup, a, b], timeout: 3s}}\n").unwrap();
        let k = c.vault.master_key.unwrap();
        assert_eq!(k.command.unwrap().len(), 4);
        assert_eq!(k.timeout, Some(std::time::Duration::from_secs(3)));
        assert_eq!(
            yaml("vault: {master_key: {env: BASTION_MASTER_KEY}}\n").unwrap().vault.master_key.unwrap().env.unwrap(),
            "BASTION_MASTER_KEY"
        );
        for bad in [
            "vault: {master_key: {}}\n",
            "vault: {master_key: {file: a, env: B}}\n",
            "vault: {master_key: {env: 'A=B'}}\n",
            "vault: {master_key: {command: []}}\n",
            "vault: {master_key: {env: A, timeout: 3s}}\n",
        ] {
            assert!(refused(bad).0.starts_with("vault.master_key"), "{bad}");
        }
        assert!(yaml("vault: {master: x}\n").is_err());
    }

    #[test]
    fn references_only_in_env_and_headers() {
        let c = yaml(
            "mcpServers:\n  gh: {command: gh-mcp, env: {TOKEN: '${server.GITHUB_TOKEN}', PROXY: '${env.HTTPS_PROXY}', PRICE: '$5'}}\n  api: {url: 'https://api.example.com/mcp', headers: {Authorization: 'Bearer ${server.API_KEY}'}}\n",
        )
        .unwrap();
        assert_eq!(c.servers["gh"].env["PRICE"], "$5");
        for (text, key) in [
            ("mcpServers:\n  a: {command: x, args: ['--token=${server.T}']}\n", "mcpServers.a.args[0]"),
            ("mcpServers:\n  a: {command: 'x${env.A}'}\n", "mcpServers.a.command"),
            ("mcpServers:\n  a: {url: 'https://h/${server.T}'}\n", "mcpServers.a.url"),
            ("mcpServers:\n  a: {command: x, cwd: '/srv/${env.A}'}\n", "mcpServers.a.cwd"),
            ("mcpServers:\n  a: {command: x, env: {T: '${TOKEN}'}}\n", "mcpServers.a.env.T"),
            ("mcpServers:\n  a: {command: x, env: {T: '${vault.TOKEN}'}}\n", "mcpServers.a.env.T"),
            ("mcpServers:\n  a: {command: x, env: {T: '${server.A'}}\n", "mcpServers.a.env.T"),
            ("mcpServers:\n  a: {url: 'https://h/mcp', headers: {X: '${server.1}'}}\n", "mcpServers.a.headers.X"),
        ] {
            let (k, message) = refused(text);
            assert_eq!(k, key, "{text}: {message}");
        }
        let (_, message) = refused("mcpServers:\n  a: {command: x, args: ['${server.T}']}\n");
        assert!(message.contains("env"), "{message}");
        let c = yaml(
            "mcpServers:\n  a: {command: x, env: {T: '${user.T}'}}\n  b: {url: 'https://h/mcp', headers: {Authorization: 'Bearer ${user.T}'}}\n",
        )
        .unwrap();
        assert_eq!(c.servers["a"].env["T"], "${user.T}");
        assert_eq!(refused("mcpServers:\n  a: {command: x, args: ['${user.T}']}\n").0, "mcpServers.a.args[0]");
    }
}
