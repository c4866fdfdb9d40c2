//! `bastion secrets`: secrets sealed in the vault, for one user or one
//! server. Values are read from standard input or a prompt that does not
//! echo, never from the command line (where `ps` and shell history would
//! show them), and are never printed.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, bail};
use bastion_core::config::{Config, is_valid_user_name};
use bastion_gateway::vault::{Vault, key_source};
use bastion_store::OwnerKind;
use clap::{Args, Subcommand};
use secrecy::SecretString;
use zeroize::Zeroizing;

/// The largest secret value read, in bytes.
const MAX_VALUE: usize = 64 * 1024;

#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct Owner {
    /// The user whose secret it is (injected into that user's calls only).
    #[arg(long, value_name = "USER", allow_hyphen_values = true)]
    user: Option<String>,
    /// The server whose secret it is (the same for every user).
    #[arg(long, value_name = "SERVER")]
    server: Option<String>,
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set a secret. The value is read from standard input (all of it, one
    /// final newline dropped) or typed at a prompt that does not echo.
    Set {
        #[command(flatten)]
        owner: Owner,
        /// The secret's name, as templates refer to it (`${user.NAME}`).
        name: String,
    },
    /// List secrets: owners and names, never values.
    List {
        /// Only this user's.
        #[arg(long, value_name = "USER", conflicts_with = "server", allow_hyphen_values = true)]
        user: Option<String>,
        /// Only this server's.
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    Rm {
        #[command(flatten)]
        owner: Owner,
        name: String,
    },
    /// Rotate the master key: re-wrap every secret's data key under a new
    /// one, while gateways keep serving. For a key file, the new key is
    /// made here; for an environment variable or a command, put the new key
    /// first in what it gives (the old one on the next line) before running
    /// this.
    RotateMaster,
}

impl Owner {
    fn resolve(&self, config: &Config) -> anyhow::Result<(OwnerKind, String)> {
        match (&self.user, &self.server) {
            (Some(u), None) => {
                if !is_valid_user_name(u) {
                    bail!("--user: {}", bastion_core::config::USER_NAME_RULE);
                }
                Ok((OwnerKind::User, u.clone()))
            }
            (None, Some(s)) => {
                if !config.servers.contains_key(s) {
                    bail!("--server: no server named {s:?} in the config file");
                }
                Ok((OwnerKind::Server, s.clone()))
            }
            _ => bail!("give --user or --server"),
        }
    }
}

/// The value: a prompt without echo on a terminal, else all of standard
/// input with one final newline dropped.
fn read_value(name: &str) -> anyhow::Result<SecretString> {
    let value = if std::io::stdin().is_terminal() {
        Zeroizing::new(rpassword::prompt_password(format!("Value of {name}: ")).context("reading the value")?)
    } else {
        let mut buf = Zeroizing::new(Vec::with_capacity(1024));
        std::io::stdin().lock().take(MAX_VALUE as u64 + 1).read_to_end(&mut buf).context("reading the value")?;
        if buf.len() > MAX_VALUE {
            bail!("the value is larger than {MAX_VALUE} bytes");
        }
        if buf.ends_with(b"\n") {
            buf.pop();
            if buf.ends_with(b"\r") {
                buf.pop();
            }
        }
        let text = std::str::from_utf8(&buf).map_err(|_| anyhow::anyhow!("the value is not UTF-8 text"))?;
        Zeroizing::new(text.to_string())
    };
    if value.is_empty() {
        bail!("the value is empty");
    }
    if value.contains('\0') {
        bail!("the value contains a NUL byte");
    }
    Ok(SecretString::from(value.as_str().to_string()))
}

pub async fn run(config_path: &Path, cmd: SecretsCommand) -> anyhow::Result<()> {
    let (config, store, _pepper) = crate::keys::open_store(config_path).await?;
    let (vault, created) =
        Vault::open(store.clone(), key_source(&config, config_path), true).context("opening the vault")?;
    if let Some(path) = created {
        eprintln!(
            "created a new master key in {} (mode 0600); back it up: without it no secret can be read",
            path.display()
        );
    }
    let outcome = run_with(&config, config_path, &store, &vault, cmd).await;
    store.close().await;
    outcome
}

async fn run_with(
    config: &Config,
    config_path: &Path,
    store: &bastion_store::Store,
    vault: &Vault,
    cmd: SecretsCommand,
) -> anyhow::Result<()> {
    // What an administration change says of a secret: whose and which, never its value.
    let record = async |kind: &str, owner_kind: OwnerKind, owner: &str, name: &str| {
        let detail = serde_json::json!({"owner_kind": owner_kind.as_str(), "owner": owner, "name": name});
        crate::audit::record_change(config, config_path, store, kind, detail).await
    };
    match cmd {
        SecretsCommand::Set { owner, name } => {
            let (kind, owner) = owner.resolve(config)?;
            if !bastion_store::secrets::is_valid_secret_name(&name) {
                bail!("{name:?} is not a valid secret name: letters, digits and `_`, not starting with a digit");
            }
            let value = read_value(&name)?;
            vault.set(kind, &owner, &name, &value).await?;
            record("secret.set", kind, &owner, &name).await?;
            eprintln!("set {name} for {kind} {owner}");
        }
        SecretsCommand::List { user, server, json } => {
            let (kind, owner) = match (user.as_deref(), server.as_deref()) {
                (Some(u), _) => (Some(OwnerKind::User), Some(u)),
                (_, Some(s)) => (Some(OwnerKind::Server), Some(s)),
                _ => (None, None),
            };
            let rows = vault.list(kind, owner).await?;
            if json {
                for r in &rows {
                    let line = serde_json::json!({
                        "owner_kind": r.owner_kind.as_str(),
                        "owner": r.owner,
                        "name": r.name,
                        "key_id": r.key_id,
                        "created_at": r.created_at,
                        "updated_at": r.updated_at,
                    });
                    println!("{line}");
                }
            } else if rows.is_empty() {
                eprintln!("no secrets");
            } else {
                println!("{:<8} {:<24} {:<32} {:<20}", "KIND", "OWNER", "NAME", "UPDATED");
                for r in &rows {
                    let updated = r.updated_at.format("%Y-%m-%d %H:%M:%S");
                    println!("{:<8} {:<24} {:<32} {updated}", r.owner_kind.as_str(), r.owner, r.name);
                }
            }
        }
        SecretsCommand::Rm { owner, name } => {
            let (kind, owner) = owner.resolve(config)?;
            if !vault.remove(kind, &owner, &name).await? {
                bail!("{kind} {owner} has no secret {name:?}");
            }
            record("secret.rm", kind, &owner, &name).await?;
            eprintln!("removed {name} of {kind} {owner}");
        }
        SecretsCommand::RotateMaster => {
            let done = vault.rotate().await?;
            let detail = serde_json::json!({"key_id": done.key_id.to_string(), "rewrapped": done.rewrapped});
            crate::audit::record_change(config, config_path, store, "secret.rotate_master", detail).await?;
            eprintln!(
                "every secret is now wrapped by master key {} ({} re-wrapped{})",
                done.key_id,
                done.rewrapped,
                if done.retried > 0 {
                    format!(", {} changed meanwhile and done again", done.retried)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}
