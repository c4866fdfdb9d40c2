//! The file a stdio server runs: found the way a shell finds a command, and
//! checked against the server's `sha256` pin before every start.
//!
//! The pin is the SHA-256 digest of the file's bytes, read through the
//! path that is then started, symbolic links followed. What it covers and
//! what it does not:
//!
//! - a script (`#!…`) is pinned, its interpreter is not: `npx` is a
//!   JavaScript file run by `node`, and `node` is not checked;
//! - what a launcher downloads is not covered by pinning the launcher (that
//!   is the exact version in its arguments, see
//!   [`bastion_core::supply_chain`]);
//! - the file is hashed, then started by the same path a moment later:
//!   whoever can write the file, or a directory or link on its path, in
//!   that moment can put another file there. The pin detects a replaced or
//!   upgraded file; it is not a defence against someone with write access
//!   racing the gateway. Keep pinned executables where only their owner
//!   (not the gateway's user) can write.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Finds `command` the way a shell would, on Bastion's own PATH; a command
/// with a `/` is a path, relative to the server's working directory `cwd`
/// (made absolute, so that the child started in `cwd` runs the same file).
pub fn resolve(command: &str, cwd: &Path) -> Option<PathBuf> {
    if command.contains('/') {
        return std::path::absolute(cwd.join(command)).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(command)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why an executable was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read the executable to check its sha256 pin: {0}")]
    Unreadable(std::io::Error),
    #[error("the executable does not match its sha256 pin (its digest is {actual})")]
    Mismatch { actual: String },
}

/// The SHA-256 digest (lower-case hex) of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Whether the file at `path` has the digest `expected` (hex, any case).
pub fn verify(path: &Path, expected: &str) -> Result<(), PinError> {
    let actual = sha256_file(path).map_err(PinError::Unreadable)?;
    if actual.eq_ignore_ascii_case(expected) { Ok(()) } else { Err(PinError::Mismatch { actual }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_on_path_and_against_the_working_directory() {
        let cwd = Path::new("/srv");
        assert_eq!(resolve("/bin/sh", cwd), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("bin/run.sh", cwd), Some(PathBuf::from("/srv/bin/run.sh")));
        let here = std::env::current_dir().unwrap();
        assert_eq!(resolve("bin/run.sh", Path::new("sub")), Some(here.join("sub/bin/run.sh")));
        assert!(resolve("sh", cwd).is_some());
        assert!(resolve("definitely-not-a-command-xyz", cwd).is_none());
    }

    #[test]
    fn a_file_matches_its_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server");
        std::fs::write(&file, b"abc").unwrap();
        // SHA-256("abc").
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&file).unwrap(), abc);
        assert!(verify(&file, abc).is_ok());
        assert!(verify(&file, &abc.to_ascii_uppercase()).is_ok());
        std::fs::write(&file, b"abd").unwrap();
        assert!(matches!(verify(&file, abc), Err(PinError::Mismatch { .. })));
        assert!(matches!(verify(&dir.path().join("gone"), abc), Err(PinError::Unreadable(_))));
        assert!(matches!(verify(dir.path(), abc), Err(PinError::Unreadable(_))));
    }
}
