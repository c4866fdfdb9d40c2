//! `bastion users`: users kept in the store (role and groups).

use std::path::Path;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// List users.
    List,
}

pub async fn run(_config: &Path, _cmd: UsersCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
