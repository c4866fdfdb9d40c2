//! `bastion admin`: local administrator accounts.

use std::path::Path;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// List administrator accounts.
    List,
}

pub async fn run(_config: &Path, _cmd: AdminCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
