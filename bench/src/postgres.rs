//! Throwaway PostgreSQL servers for the scenarios that need one: the store
//! of the audit contestant on PostgreSQL, and the shared store of the
//! replicas. Each is started with `scripts/pg-throwaway` and stopped by
//! its directory, so no other server on the machine is ever touched.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, ChildStdin, Command};

use crate::contestant;

/// The script that starts and stops the servers.
pub const SCRIPT: &str = "scripts/pg-throwaway";

/// `scripts/pg-throwaway`, when PostgreSQL's server programs it runs
/// (`initdb`, `pg_ctl`) are installed too; else what is missing.
pub fn find_server() -> Result<PathBuf, String> {
    let missing: Vec<&str> = ["initdb", "pg_ctl"].into_iter().filter(|b| postgres_bin(b).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "PostgreSQL's server not installed: {} not found on PATH or under /usr/lib/postgresql/*/bin \
             (scripts/provision installs it)",
            missing.join(" and ")
        ));
    }
    repo_file(SCRIPT)
}

/// One of PostgreSQL's programs, on PATH or under /usr/lib/postgresql/*/bin
/// (the newest version), as `scripts/pg-throwaway` finds them.
pub fn postgres_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = contestant::on_path(name) {
        return Some(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// A file of this repository: under the working directory (scripts/bench
/// runs from the root), else beside the bench crate's sources.
pub fn repo_file(rel: &str) -> Result<PathBuf, String> {
    let here = Path::new(rel);
    if here.is_file() {
        return std::path::absolute(here).map_err(|e| e.to_string());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    if built.is_file() {
        return Ok(built);
    }
    Err(format!("{rel} not found: run from the repository's root (scripts/bench does)"))
}

/// `bytes` random bytes as hex characters (32 bytes: a key as
/// `vault.master_key`, `audit.key` and `auth.key_pepper` take it).
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A server started with `scripts/pg-throwaway start`. It runs detached
/// from this process, so a watchdog of its own (in a process group of its
/// own, out of reach of a terminal's Ctrl-C) stops it with
/// `scripts/pg-throwaway stop DIR` as soon as its stdin closes: when
/// [`Postgres::stop`] closes it, when the value is dropped without being
/// stopped (then in the background), or when this process ends in any way.
pub struct Postgres {
    url: String,
    dir: PathBuf,
    watchdog: Child,
    stdin: Option<ChildStdin>,
}

impl Postgres {
    /// Starts a server with `script` (`scripts/pg-throwaway`); its
    /// watchdog's log goes to `log_dir`.
    pub async fn start(script: &Path, log_dir: &Path) -> anyhow::Result<Postgres> {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            Command::new(script).arg("start").stdin(Stdio::null()).kill_on_drop(true).output(),
        )
        .await
        .context("scripts/pg-throwaway start did not finish within 120 s")?
        .context("running scripts/pg-throwaway start")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let (Some(url), Some(dir)) = (lines.next(), lines.next()) else {
            bail!(
                "scripts/pg-throwaway start failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        let (url, dir) = (url.trim().to_string(), PathBuf::from(dir.trim()));
        let (_, log) = contestant::log_file(log_dir, "pg-throwaway-stop")?;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(r#"read _ignored; exec "$0" stop "$1""#)
            .arg(script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn();
        let mut watchdog = match spawned {
            Ok(w) => w,
            Err(e) => {
                let _ = Command::new(script).arg("stop").arg(&dir).status().await;
                return Err(anyhow::Error::new(e).context("starting the PostgreSQL server's watchdog"));
            }
        };
        let stdin = watchdog.stdin.take();
        Ok(Postgres { url, dir, watchdog, stdin })
    }

    /// The server's URL (`postgres://postgres@127.0.0.1:PORT/postgres`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The postmaster's process id (the first line of `postmaster.pid`):
    /// the root of the server's process tree, its backends among it.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `CREATE DATABASE` with a name of this run's own, `PREFIX_…`; its URL.
    pub async fn create_database(&self, psql: &Path, prefix: &str) -> anyhow::Result<String> {
        let name = format!("{prefix}_{}", &random_hex(8)?);
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(psql)
                .arg(&self.url)
                .args(["-qAtc", &format!("CREATE DATABASE {name}")])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("psql did not finish within 30 s")??;
        if !out.status.success() {
            bail!("CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let (base, query) = match self.url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.url.as_str(), String::new()),
        };
        let (server, _) = base.rsplit_once('/').context("no database in the server's URL")?;
        Ok(format!("{server}/{name}{query}"))
    }

    /// Stops the server (by its directory) and removes it.
    pub async fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
        if tokio::time::timeout(Duration::from_secs(90), self.watchdog.wait()).await.is_err() {
            eprintln!("bench: the throwaway PostgreSQL in {} did not stop within 90 s", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_characters() {
        let k = random_hex(32).unwrap();
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_script_is_found() {
        assert!(repo_file(SCRIPT).unwrap().is_file());
    }
}
