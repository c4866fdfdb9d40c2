//! Errors. None of them carries key material or a secret value: a message
//! names what failed and where, never the bytes involved.

use std::path::PathBuf;

use crate::key::KeyId;

/// An error sealing, opening, rewrapping or decoding a sealed secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Authentication failed: the master key is not the one that sealed the
    /// value, or the value was altered, or it belongs to another owner or
    /// name. The cases are deliberately not told apart.
    #[error(
        "cannot open the secret: the master key does not match, or the sealed value was altered or belongs to another owner or name"
    )]
    Decrypt,
    /// The value was sealed under a master key the keyring does not hold.
    #[error("the secret was sealed under master key {0}, which is not in the keyring")]
    UnknownKey(KeyId),
    /// The bytes are not a sealed value of a known format version.
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// The format version is not one this build can read.
    #[error("sealed value has format version {0}, which this version of Bastion cannot read")]
    UnsupportedVersion(u8),
    /// The secret is too large for AES-GCM (more than 64 GiB).
    #[error("the secret is too large to seal")]
    TooLarge,
}

/// An error reading, parsing or creating a master key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key text is not 32 bytes as base64 or as 64 hex characters. The
    /// text itself is never included.
    #[error(
        "the master key from {origin} is not valid: {reason} (expected 32 bytes as base64, or as 64 hex characters)"
    )]
    Invalid {
        /// Where the text came from, e.g. `file /etc/bastion/master.key`.
        origin: String,
        /// What is wrong with it, without quoting it.
        reason: &'static str,
    },
    /// The key file grants access to its group or to other users.
    #[error(
        "master key file {path} has mode {mode:04o}, which gives its group or other users access; make it readable by its owner only: chmod 600 {path}",
        path = .path.display()
    )]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user than the one running this process.
    #[error(
        "master key file {path} is owned by uid {owner}, not by the user running Bastion (uid {euid}); give it to that user: chown {euid} {path}",
        path = .path.display()
    )]
    NotOwned {
        /// The key file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// The key file path is a symbolic link.
    #[error("master key file {} is a symbolic link; name the file itself", .0.display())]
    Symlink(PathBuf),
    /// The key file path is not a regular file.
    #[error("master key file {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// A new key file was not created because the path already exists.
    #[error("master key file {} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// Reading or writing the key file failed.
    #[error("master key file {}: {source}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The environment variable is not set, or its name is not valid.
    #[error("environment variable {0} for the master key is not set")]
    EnvMissing(String),
    /// The key command could not run, failed, or timed out.
    #[error("master key command {program}: {problem}")]
    Command {
        /// The program that was run.
        program: String,
        /// What went wrong, with the command's standard error if it failed.
        /// Its standard output is never included.
        problem: String,
    },
}
