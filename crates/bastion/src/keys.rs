//! `bastion keys`: create, list and revoke API keys. A new key is printed
//! once, alone on stdout, so it can be captured by a script; everything
//! else goes to stderr.

use std::path::Path;

use anyhow::{Context, bail};
use bastion_core::apikey;
use bastion_core::config::Config;
use bastion_store::{NewApiKey, Store};
use chrono::Utc;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key for a user and print it (shown only this once).
    Create {
        /// The user the key belongs to.
        #[arg(long)]
        user: String,
        /// Lifetime such as 30d, 12h, or `never`. Default: the config's
        /// `auth.default_key_expiry` (30 days).
        #[arg(long)]
        expires: Option<String>,
        /// Stop accepting the key after this many requests.
        #[arg(long)]
        max_uses: Option<i64>,
        /// A note shown in listings.
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (never their values).
    List {
        #[arg(long)]
        user: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// The id `keys list` shows (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

pub async fn open_store(config_path: &Path) -> anyhow::Result<(Config, Store, apikey::Pepper)> {
    let config = Config::load(config_path)?;
    let pepper = bastion_gateway::auth::load_pepper(&config, config_path)?;
    let store = crate::migrate::open_store(&config, config_path).await?;
    Ok((config, store, pepper))
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub async fn run(config_path: &Path, cmd: KeysCommand) -> anyhow::Result<()> {
    let (config, store, pepper) = open_store(config_path).await?;
    match cmd {
        KeysCommand::Create { user, expires, max_uses, description } => {
            if !valid_user(&user) {
                bail!("--user: letters, digits and - _ . @ only (at most 128)");
            }
            let expires_at = match expires.as_deref() {
                Some("never") => None,
                Some(s) => {
                    let d = humantime::parse_duration(s).with_context(|| format!("--expires {s:?}"))?;
                    Some(Utc::now() + chrono::Duration::from_std(d).context("--expires is too long")?)
                }
                None => Some(Utc::now() + chrono::Duration::from_std(config.auth.default_key_expiry)?),
            };
            if max_uses.is_some_and(|m| m < 1) {
                bail!("--max-uses must be at least 1");
            }
            let key = apikey::generate(&pepper);
            let id = apikey::random_token(9);
            store
                .insert_key(&NewApiKey {
                    id: id.clone(),
                    user: user.clone(),
                    display_prefix: key.display_prefix.clone(),
                    hash: key.hash.clone(),
                    expires_at,
                    max_uses,
                    description,
                })
                .await?;
            println!("{}", &*key.plaintext);
            crate::audit::record_change(
                &config,
                config_path,
                &store,
                "key.create",
                serde_json::json!({"key_id": id, "for_user": user, "expires_at": expires_at, "max_uses": max_uses}),
            )
            .await?;
            eprintln!(
                "created key {id} for {user}{}; it is shown only once",
                expires_at.map(|e| format!(", expires {}", e.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default()
            );
        }
        KeysCommand::List { user, json } => {
            let keys = store.list_keys(user.as_deref()).await?;
            let now = Utc::now();
            if json {
                for k in keys {
                    let mut v = serde_json::to_value(&k)?;
                    v["state"] = serde_json::to_value(k.state(now))?;
                    println!("{v}");
                }
            } else {
                println!("{:<14} {:<16} {:<10} {:<9} {:<17} {:>6}", "ID", "USER", "PREFIX", "STATE", "EXPIRES", "USES");
                for k in keys {
                    println!(
                        "{:<14} {:<16} {:<10} {:<9} {:<17} {:>6}",
                        k.id,
                        k.user,
                        format!("{}…", k.display_prefix),
                        format!("{:?}", k.state(now)).to_lowercase(),
                        k.expires_at.map(|e| e.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()),
                        k.use_count
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if store.revoke_key(&id).await? {
                crate::audit::record_change(
                    &config,
                    config_path,
                    &store,
                    "key.revoke",
                    serde_json::json!({"key_id": id}),
                )
                .await?;
                eprintln!("revoked key {id}");
            } else {
                bail!("no active key with id {id:?}");
            }
        }
    }
    store.close().await;
    Ok(())
}
