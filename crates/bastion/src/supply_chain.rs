//! `bastion config check`'s supply-chain findings: launchers that fetch
//! what they run without an exact version, and executables that do not
//! match their `sha256` pin (hashed here as the gateway would before a
//! start, on this machine's PATH).

use std::path::Path;

use bastion_core::config::{Config, SupplyChain};
use bastion_gateway::upstream::executable;

/// What was found, as lines for the terminal.
#[derive(Debug, Default)]
pub struct Findings {
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Checks every enabled server. With `strict` (the `--strict` flag or
/// `supply_chain: strict`), an unpinned launcher and a pin that cannot be
/// checked here are errors; a pin that does not match always is.
pub fn check(config: &Config, config_path: &Path, strict: bool) -> Findings {
    let why = if config.supply_chain == SupplyChain::Strict { "supply_chain: strict" } else { "--strict" };
    let strict = strict || config.supply_chain == SupplyChain::Strict;
    let mut found = Findings::default();
    for (name, server) in config.enabled_servers() {
        if let Some(problem) = server.unpinned() {
            let line = format!("mcpServers.{name}: {problem}");
            if strict {
                found.errors.push(format!("{line} (refused: {why})"));
            } else {
                found.warnings.push(line);
            }
        }
        let (Some(command), Some(expected)) = (&server.command, &server.sha256) else { continue };
        let cwd = match &server.cwd {
            Some(c) => config.resolve_path(config_path, c),
            None => config.resolve_path(config_path, Path::new("")),
        };
        let cannot = |why: String| {
            let line = format!("mcpServers.{name}.sha256: cannot be checked here: {why}");
            if strict { (None, Some(line)) } else { (Some(line), None) }
        };
        let (warning, error) = match executable::resolve(command, &cwd) {
            None => cannot(format!("{command:?} is not found on PATH")),
            Some(path) => match executable::verify(&path, expected) {
                Ok(()) => (None, None),
                Err(executable::PinError::Unreadable(e)) => cannot(format!("{}: {e}", path.display())),
                Err(e @ executable::PinError::Mismatch { .. }) => (
                    None,
                    Some(format!(
                        "mcpServers.{name}.sha256: {} is refused: {e}; if the change is expected, pin the new digest",
                        path.display()
                    )),
                ),
            },
        };
        found.warnings.extend(warning);
        found.errors.extend(error);
    }
    found
}
