//! `bastion migrate`: brings the store's schema up to this version, on
//! whichever backend the config's `store` names, and says what it did;
//! `--check` only reports. `serve` and the other commands apply pending
//! migrations themselves when they open the store: this command is for
//! doing it ahead of a rollout, or checking.
//!
//! Also how every command opens the store.

use std::path::Path;

use anyhow::{Context, bail};
use bastion_core::config::{Config, StoreLocation};
use bastion_store::{MigrationState, Store, StoreSettings, pepper};
use clap::Args;

#[derive(Args)]
pub struct MigrateArgs {
    /// Only report: list each migration and its state, change nothing, and
    /// fail when one is pending (or the database's differ from this
    /// version's).
    #[arg(long)]
    check: bool,
}

/// Where the config's store is. For the default SQLite store, the data
/// directory is created (private) if missing.
pub fn settings(config: &Config, config_path: &Path) -> anyhow::Result<StoreSettings> {
    match &config.store.location {
        StoreLocation::DataDir => pepper::ensure_private_dir(&config.data_dir(config_path))?,
        StoreLocation::Sqlite(_) => {
            if let Some(dir) = config.sqlite_path(config_path).as_deref().and_then(Path::parent)
                && !dir.as_os_str().is_empty()
                && !dir.exists()
            {
                pepper::ensure_private_dir(dir)?;
            }
        }
        StoreLocation::Postgres(_) => {}
    }
    Ok(StoreSettings::from_config(config, config_path)?)
}

/// A warning when the store URL holds a password.
pub fn password_warning(config: &Config) -> Option<&'static str> {
    match &config.store.location {
        StoreLocation::Postgres(url) if url.has_password() => {
            Some("the store URL in the config holds a password: keep it in PGPASSWORD or a .pgpass file instead")
        }
        _ => None,
    }
}

/// Opens the config's store and applies pending migrations.
pub async fn open_store(config: &Config, config_path: &Path) -> anyhow::Result<Store> {
    let settings = settings(config, config_path)?;
    Store::open(&settings).await.with_context(|| format!("opening the store at {settings}"))
}

pub async fn run(config_path: &Path, args: MigrateArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if let Some(w) = password_warning(&config) {
        eprintln!("warning: {w}");
    }
    let settings = settings(&config, config_path)?;
    let store = Store::connect(&settings).await.with_context(|| format!("opening the store at {settings}"))?;
    let outcome = if args.check { check(&store, &settings).await } else { apply(&store, &settings).await };
    store.close().await;
    outcome
}

async fn apply(store: &Store, settings: &StoreSettings) -> anyhow::Result<()> {
    let applied = store.migrate().await.with_context(|| format!("migrating the store at {settings}"))?;
    for m in &applied {
        println!("applied {:04} {}", m.version, m.description);
    }
    match applied.len() {
        0 => eprintln!("{settings} ({}): up to date, nothing to apply", store.backend()),
        n => eprintln!(
            "{settings} ({}): {n} migration{} applied; up to date",
            store.backend(),
            if n == 1 { "" } else { "s" }
        ),
    }
    Ok(())
}

async fn check(store: &Store, settings: &StoreSettings) -> anyhow::Result<()> {
    let status = store.migration_status().await.with_context(|| format!("reading the store at {settings}"))?;
    for m in &status {
        let state = match m.state {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Modified => "modified",
            MigrationState::Failed => "failed",
            MigrationState::Unknown => "unknown",
        };
        println!("{:04} {:<8} {}", m.version, state, m.description);
    }
    let count = |s: MigrationState| status.iter().filter(|m| m.state == s).count();
    if count(MigrationState::Unknown) > 0 {
        bail!("{settings}: the store was migrated by a newer version of bastion");
    }
    if count(MigrationState::Modified) + count(MigrationState::Failed) > 0 {
        bail!("{settings}: applied migrations differ from this version's or did not complete");
    }
    match count(MigrationState::Pending) {
        0 => {
            eprintln!("{settings} ({}): up to date", store.backend());
            Ok(())
        }
        n => bail!("{settings}: {n} migration{} pending: run `bastion migrate`", if n == 1 { "" } else { "s" }),
    }
}
