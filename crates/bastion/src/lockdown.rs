//! `bastion lockdown`: refuse calls to every server, or to one, until
//! lifted; for an incident, without editing the configuration or
//! restarting. Lockdowns are kept in the store, so that every gateway
//! sharing it follows them, and setting or lifting one is recorded in the
//! audit trail (`lockdown.on`, `lockdown.off`).
//!
//! - `on [--server NAME] [--reason TEXT]`: every server without
//!   `--server`; a server must be one of the configuration's. Setting it
//!   again replaces its reason.
//! - `off [--server NAME]`: lifts the lockdown of every server (without
//!   `--server`) or of that server; fails when there is none. A server
//!   since removed from the configuration can still be lifted.
//! - `status [--json]`: the lockdowns in force.

use std::path::Path;

use anyhow::bail;
use bastion_core::config::Config;
use bastion_store::{ALL_SERVERS, Lockdown, Store};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum LockdownCommand {
    /// Refuse calls to every server, or with --server to one.
    On {
        /// Only this server (as the configuration names it).
        #[arg(long)]
        server: Option<String>,
        /// Why, for the status and the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the lockdown of every server, or with --server of one.
    Off {
        /// The server whose lockdown to lift.
        #[arg(long)]
        server: Option<String>,
    },
    /// The lockdowns in force.
    Status {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config_path: &Path, cmd: LockdownCommand) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let store = crate::migrate::open_store(&config, config_path).await?;
    let outcome = run_with(&config, config_path, &store, cmd).await;
    store.close().await;
    outcome
}

/// What a scope is, in messages.
fn describe(scope: &str) -> String {
    if scope == ALL_SERVERS { "every server".into() } else { format!("server {scope:?}") }
}

async fn run_with(config: &Config, config_path: &Path, store: &Store, cmd: LockdownCommand) -> anyhow::Result<()> {
    match cmd {
        LockdownCommand::On { server, reason } => {
            let scope = match server {
                Some(s) => {
                    check_server(config, &s)?;
                    s
                }
                None => ALL_SERVERS.to_string(),
            };
            let current = store.lockdowns().await?;
            let again = current.iter().any(|l| l.scope == scope);
            store.set_lockdown(&scope, reason.as_deref(), Some(&crate::audit::operator())).await?;
            let detail = json!({"scope": scope, "reason": reason});
            crate::audit::record_change(config, config_path, store, "lockdown.on", detail).await?;
            if again {
                eprintln!("{} was locked down already: its reason is replaced", describe(&scope));
            } else {
                let off = if scope == ALL_SERVERS { String::new() } else { format!(" --server {scope}") };
                eprintln!("locked down {}: calls are refused until `bastion lockdown off{off}`", describe(&scope));
            }
            if scope != ALL_SERVERS && current.iter().any(|l| l.scope == ALL_SERVERS) {
                eprintln!("note: every server is locked down too (lift that with `bastion lockdown off`)");
            }
        }
        LockdownCommand::Off { server } => {
            let scope = server.unwrap_or_else(|| ALL_SERVERS.to_string());
            let lifted = store.lockdowns().await?.into_iter().find(|l| l.scope == scope);
            if !store.clear_lockdown(&scope).await? {
                let rest = store.lockdowns().await?;
                if rest.is_empty() {
                    bail!("no lockdown on {}: there is none in force", describe(&scope));
                }
                let scopes: Vec<String> = rest.iter().map(|l| describe(&l.scope)).collect();
                bail!("no lockdown on {} (in force: {})", describe(&scope), scopes.join(", "));
            }
            let detail = json!({"scope": scope, "reason": lifted.and_then(|l| l.reason)});
            crate::audit::record_change(config, config_path, store, "lockdown.off", detail).await?;
            eprintln!("lifted the lockdown of {}", describe(&scope));
            let left = store.lockdowns().await?;
            if !left.is_empty() {
                let scopes: Vec<String> = left.iter().map(|l| describe(&l.scope)).collect();
                eprintln!("still locked down: {}", scopes.join(", "));
            }
        }
        LockdownCommand::Status { json } => status(&store.lockdowns().await?, json)?,
    }
    Ok(())
}

/// A server of the configuration (disabled ones included: a lockdown
/// holds when it is enabled again).
fn check_server(config: &Config, server: &str) -> anyhow::Result<()> {
    if config.servers.contains_key(server) {
        return Ok(());
    }
    let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
    if known.is_empty() {
        bail!("unknown server {server:?}: the configuration has no servers");
    }
    bail!("unknown server {server:?}: the configuration's servers are {}", known.join(", "));
}

fn status(lockdowns: &[Lockdown], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(lockdowns)?);
        return Ok(());
    }
    if lockdowns.is_empty() {
        println!("no lockdown");
        return Ok(());
    }
    println!("{:<24} {:<20} {:<16} REASON", "SCOPE", "SINCE", "BY");
    for l in lockdowns {
        println!(
            "{:<24} {:<20} {:<16} {}",
            if l.scope == ALL_SERVERS { "* (every server)" } else { &l.scope },
            l.since.format("%Y-%m-%d %H:%M:%S"),
            l.set_by.as_deref().unwrap_or("-"),
            l.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bastion_store::AuditFilter;

    use super::*;

    #[tokio::test]
    async fn lockdowns_are_set_lifted_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bastion.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:0\nmcpServers:\n  files:\n    command: \"true\"\n").unwrap();
        let on = |server: Option<&str>, reason: Option<&str>| LockdownCommand::On {
            server: server.map(String::from),
            reason: reason.map(String::from),
        };
        let off = |server: Option<&str>| LockdownCommand::Off { server: server.map(String::from) };

        run(&path, on(None, Some("incident 42"))).await.unwrap();
        run(&path, on(Some("files"), None)).await.unwrap();
        let e = run(&path, on(Some("nope"), None)).await.unwrap_err().to_string();
        assert!(e.contains("unknown server \"nope\"") && e.contains("files"), "{e}");
        run(&path, LockdownCommand::Status { json: true }).await.unwrap();

        let config = Config::load(&path).unwrap();
        let store = crate::migrate::open_store(&config, &path).await.unwrap();
        let scopes: Vec<String> = store.lockdowns().await.unwrap().into_iter().map(|l| l.scope).collect();
        assert_eq!(scopes, ["*", "files"]);

        run(&path, off(None)).await.unwrap();
        let e = run(&path, off(None)).await.unwrap_err().to_string();
        assert!(e.contains("no lockdown on every server") && e.contains("\"files\""), "{e}");
        run(&path, off(Some("files"))).await.unwrap();
        let e = run(&path, off(Some("files"))).await.unwrap_err().to_string();
        assert!(e.contains("no lockdown on server \"files\": there is none in force"), "{e}");
        assert!(store.lockdowns().await.unwrap().is_empty());

        let records = store.search_audit(&AuditFilter::default(), 100, false).await.unwrap();
        let kinds: Vec<&str> = records.iter().map(|r| r.record.kind.as_str()).collect();
        assert_eq!(kinds, ["lockdown.on", "lockdown.on", "lockdown.off", "lockdown.off"]);
        let first: serde_json::Value = serde_json::from_str(&records[0].record.body).unwrap();
        assert_eq!(first["detail"], json!({"scope": "*", "reason": "incident 42"}));
        let last: serde_json::Value = serde_json::from_str(&records[3].record.body).unwrap();
        assert_eq!(last["detail"], json!({"scope": "files", "reason": null}));
        store.close().await;
    }
}
