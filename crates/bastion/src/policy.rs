//! `bastion policy`: check and try the access policies.

use std::path::Path;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate the policies of the configuration.
    Check,
}

pub async fn run(_config: &Path, _cmd: PolicyCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
