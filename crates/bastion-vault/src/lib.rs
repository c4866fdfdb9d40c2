//! Bastion's secrets vault: envelope encryption of per-user and per-server
//! secrets under a master key. This crate is the cryptographic core only; it
//! knows nothing of HTTP, of the store or of the gateway.
//!
//! # Scheme
//!
//! [`Keyring::seal`] draws a fresh random 256-bit data key for every secret
//! and encrypts the secret with it (AES-256-GCM, random 96-bit nonce). The
//! data key is then wrapped by the current master key (AES-256-GCM, random
//! 96-bit nonce). Both layers authenticate associated data naming the row
//! the secret belongs to, under a different label per layer:
//!
//! ```text
//! u64 length | label          "bastion-vault secret" or "bastion-vault data key"
//! u8         | format version 1
//! u8         | owner kind     1 user, 2 server
//! u64 length | owner
//! u64 length | secret name
//! ```
//!
//! Lengths are big-endian, so no two bindings encode alike.
//!
//! # Byte format, version 1
//!
//! ```text
//! offset  length   field
//!      0       1   format version (1)
//!      1       8   master key id
//!      9      60   wrapped data key: nonce (12), encrypted key (32), tag (16)
//!     69      12   nonce of the secret
//!     81   n + 16  encrypted secret (n bytes) and its tag
//! ```
//!
//! The master key id is the first 8 bytes of SHA-256 over a label and the
//! key; it names the key without revealing it.
//!
//! # Threat model
//!
//! - A stolen database or backup gives nothing without the master key, which
//!   is never stored with it: only the length of each secret and the id of
//!   the master key that wrapped it.
//! - Someone who can write rows but lacks the master key cannot make one row
//!   open to another row's secret: a ciphertext, nonce or wrapped key moved
//!   to another user, server or name fails to open, as does any altered
//!   byte. Replaying an older value of the *same* row is not detected.
//! - Rotation: a new master key becomes current and the old one stays in the
//!   [`Keyring`] for opening; [`Keyring::rewrap`] moves each row to the new
//!   key one at a time, without touching the secret's ciphertext. Once no row
//!   names the old key id, the old key can be dropped.
//! - Plaintext secrets and keys live in buffers zeroed when dropped; no
//!   error, `Debug` or `Display` output contains key material or a secret.
//! - Each data key encrypts one secret. A master key encrypts one data key
//!   per seal or rewrap, under random nonces: keep it below 2^32 of those
//!   (AES-GCM's limit for random nonces), then rotate.
#![forbid(unsafe_code)]

mod envelope;
mod error;
mod key;
mod source;

pub use envelope::{Binding, FORMAT_VERSION, Keyring, NONCE_LEN, Owner, Sealed, TAG_LEN, WRAPPED_KEY_LEN};
pub use error::{Error, KeyError};
pub use key::{KEY_ID_LEN, KEY_LEN, KeyId, MasterKey};
pub use source::{
    DEFAULT_COMMAND_TIMEOUT, KeySource, create_key_file, load_key_command, load_key_env, load_key_file,
    load_or_create_key_file, parse_keyring, write_keyring_file,
};
