//! The secrets vault as the gateway and the command line use it: sealed
//! secrets kept in the store, opened with the master keyring.
//!
//! The keyring is read from its source (`vault.master_key`; by default the
//! file `master.key` in the data directory, created with a new key the first
//! time). A secret sealed under a key this process does not hold — another
//! process rotated the master key — makes it read the source again, at most
//! once a second, so a rotation reaches a running gateway without a restart.
//!
//! Rotation ([`Vault::rotate`]): for a key file, a new key is put first in
//! the file with the previous one after it, every secret is re-wrapped under
//! the new key (the data keys only; values are never decrypted to disk),
//! and the file is left with the new key and the one before it, so that a
//! value sealed by a process that still held the old key stays readable
//! until the next rotation re-wraps it. For an environment variable or a
//! command, the operator puts the new key first in what the source gives;
//! rotation then re-wraps under it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bastion_core::config::{Config, MasterKeyConfig};
use bastion_store::{OwnerKind, SecretInfo, Store, StoreError};
use bastion_vault::{Binding, KeyError, KeyId, KeySource, Keyring, MasterKey, Sealed};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// How often a sealed value under an unknown key may make the keyring be
/// read again.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why the vault could not answer. Messages name secrets and sources,
/// never a value or a key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("secret {name} of {kind} {owner} cannot be opened: {reason}")]
    Open { kind: OwnerKind, owner: String, name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// The master key's source for a configuration.
pub fn key_source(config: &Config, config_path: &Path) -> KeySource {
    match &config.vault.master_key {
        Some(k) => source_of(k, config, config_path),
        None => KeySource::File(default_key_file(config, config_path)),
    }
}

/// The source a key entry (`file`, `env` or `command`) names; a relative
/// file is taken from the config file's directory.
pub fn source_of(k: &MasterKeyConfig, config: &Config, config_path: &Path) -> KeySource {
    if let Some(file) = &k.file {
        KeySource::File(config.resolve_path(config_path, file))
    } else if let Some(env) = &k.env {
        KeySource::Env(env.clone())
    } else {
        let cmd = k.command.clone().unwrap_or_default();
        let (program, args) = cmd.split_first().map(|(p, a)| (p.clone(), a.to_vec())).unwrap_or_default();
        KeySource::Command { program, args, timeout: k.timeout.unwrap_or(bastion_vault::DEFAULT_COMMAND_TIMEOUT) }
    }
}

/// `master.key` in the data directory.
pub fn default_key_file(config: &Config, config_path: &Path) -> PathBuf {
    config.data_dir(config_path).join("master.key")
}

/// The vault: the store's sealed secrets and the keyring that opens them.
pub struct Vault {
    store: Store,
    source: KeySource,
    keyring: ArcSwap<Keyring>,
    /// When the keyring was last read again.
    reloaded: tokio::sync::Mutex<Option<Instant>>,
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// The id of the key every secret is now wrapped by.
    pub key_id: String,
    /// Secrets re-wrapped.
    pub rewrapped: usize,
    /// Secrets that changed while being re-wrapped and were done again.
    pub retried: usize,
}

fn binding(kind: OwnerKind, owner: &str, name: &str) -> Binding {
    match kind {
        OwnerKind::User => Binding::user(owner, name),
        OwnerKind::Server => Binding::server(owner, name),
    }
}

impl Vault {
    /// Reads the keyring from `source`. With `create_default`, a missing
    /// default key file is created with a new key; the path is returned so
    /// the caller can say so.
    pub fn open(store: Store, source: KeySource, create: bool) -> Result<(Vault, Option<PathBuf>), VaultError> {
        let mut created = None;
        if let KeySource::File(path) = &source
            && create
            && std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            match bastion_vault::create_key_file(path) {
                Ok(_) => created = Some(path.clone()),
                // another process made it first
                Err(KeyError::Exists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let keyring = source.load_keyring()?;
        let vault =
            Vault { store, source, keyring: ArcSwap::from_pointee(keyring), reloaded: tokio::sync::Mutex::new(None) };
        Ok((vault, created))
    }

    /// Where the master key comes from (for messages).
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The id of the key new secrets are sealed under.
    pub fn current_key_id(&self) -> String {
        self.keyring.load().current_id().to_string()
    }

    /// Reads the keyring again to find key `wanted` (another process
    /// rotated the master key), at most once a second: a caller that comes
    /// sooner waits for its turn, so a rotation does not fail calls. The
    /// source is read off the runtime (a key command may take a while).
    /// Returns whether the keyring now holds the key.
    async fn reload_for(&self, wanted: &KeyId) -> bool {
        let mut last = self.reloaded.lock().await;
        if self.keyring.load().ids().any(|id| id == wanted) {
            return true;
        }
        if let Some(t) = *last {
            let wait = RELOAD_INTERVAL.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        *last = Some(Instant::now());
        let source = self.source.clone();
        match tokio::task::spawn_blocking(move || source.load_keyring()).await {
            Ok(Ok(ring)) => {
                self.keyring.store(Arc::new(ring));
                self.keyring.load().ids().any(|id| id == wanted)
            }
            Ok(Err(e)) => {
                tracing::warn!(source = %self.source, error = %e, "the master key could not be read again");
                false
            }
            Err(_) => false,
        }
    }

    /// Seals and stores a secret, replacing any value it had.
    pub async fn set(&self, kind: OwnerKind, owner: &str, name: &str, value: &SecretString) -> Result<(), VaultError> {
        if !bastion_store::secrets::is_valid_secret_name(name) {
            return Err(VaultError::Invalid(format!(
                "{name:?} is not a valid secret name: letters, digits and `_`, not starting with a digit"
            )));
        }
        let keyring = self.keyring.load_full();
        let sealed = keyring
            .seal(&binding(kind, owner, name), value)
            .map_err(|e| VaultError::Invalid(format!("sealing failed: {e}")))?;
        self.store.put_secret(kind, owner, name, &sealed.key_id().to_string(), &sealed.to_bytes()).await?;
        Ok(())
    }

    /// A secret's value, `None` when it is not set.
    pub async fn get(&self, kind: OwnerKind, owner: &str, name: &str) -> Result<Option<SecretString>, VaultError> {
        let Some(record) = self.store.get_secret(kind, owner, name).await? else { return Ok(None) };
        let failed =
            |reason: String| VaultError::Open { kind, owner: owner.to_string(), name: name.to_string(), reason };
        let sealed = Sealed::from_bytes(&record.sealed).map_err(|e| failed(e.to_string()))?;
        let b = binding(kind, owner, name);
        let opened = match self.keyring.load().open(&sealed, &b) {
            Err(bastion_vault::Error::UnknownKey(id)) if self.reload_for(&id).await => {
                self.keyring.load().open(&sealed, &b)
            }
            other => other,
        };
        let bytes: SecretSlice<u8> = opened.map_err(|e| failed(e.to_string()))?;
        let text = std::str::from_utf8(bytes.expose_secret()).map_err(|_| failed("the value is not text".into()))?;
        Ok(Some(SecretString::from(text.to_string())))
    }

    /// Removes a secret. Returns whether it was set.
    pub async fn remove(&self, kind: OwnerKind, owner: &str, name: &str) -> Result<bool, VaultError> {
        Ok(self.store.delete_secret(kind, owner, name).await?)
    }

    /// Secrets by owner kind and owner (`None`: all), names only.
    pub async fn list(&self, kind: Option<OwnerKind>, owner: Option<&str>) -> Result<Vec<SecretInfo>, VaultError> {
        Ok(self.store.list_secrets(kind, owner).await?)
    }

    /// Re-wraps every secret not wrapped by the current key. Rows changed
    /// meanwhile are read again; the loop ends when none is left.
    pub async fn rewrap_all(&self) -> Result<Rotation, VaultError> {
        let keyring = self.keyring.load_full();
        let current = keyring.current_id().to_string();
        let mut done = Rotation { key_id: current.clone(), ..Rotation::default() };
        for _pass in 0..100 {
            let rows = self.store.secrets_not_wrapped_by(&current).await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for row in rows {
                let failed = |reason: String| VaultError::Open {
                    kind: row.owner_kind,
                    owner: row.owner.clone(),
                    name: row.name.clone(),
                    reason,
                };
                let sealed = Sealed::from_bytes(&row.sealed).map_err(|e| failed(e.to_string()))?;
                let b = binding(row.owner_kind, &row.owner, &row.name);
                let new = keyring.rewrap(&sealed, &b).map_err(|e| failed(e.to_string()))?;
                if self.store.rewrap_secret(&row, &current, &new.to_bytes()).await? {
                    done.rewrapped += 1;
                } else {
                    done.retried += 1;
                }
            }
        }
        Err(VaultError::Invalid("secrets kept changing during the rotation; run it again".into()))
    }

    /// Rotates the master key. For a key file: a new key is made and put
    /// first, every secret re-wrapped, and the file left with the new key
    /// and the previous one. For
    /// another source, the key it gives first must be new: every secret is
    /// re-wrapped under it.
    pub async fn rotate(&self) -> Result<Rotation, VaultError> {
        match &self.source {
            KeySource::File(path) => {
                let old = self.source.load_keyring()?;
                let new = MasterKey::generate();
                let mut keys: Vec<&MasterKey> = vec![&new, old.current()];
                keys.extend(old.previous());
                bastion_vault::write_keyring_file(path, &keys)?;
                self.keyring.store(Arc::new(self.source.load_keyring()?));
                let done = self.rewrap_all().await?;
                bastion_vault::write_keyring_file(path, &[&new, old.current()])?;
                self.keyring.store(Arc::new(self.source.load_keyring()?));
                Ok(done)
            }
            _ => {
                self.keyring.store(Arc::new(self.source.load_keyring()?));
                self.rewrap_all().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn vault(dir: &Path) -> Vault {
        let store = Store::open_sqlite(&dir.join("b.db")).await.unwrap();
        Vault::open(store, KeySource::File(dir.join("master.key")), true).unwrap().0
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[tokio::test]
    async fn set_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path()).await;
        v.set(OwnerKind::User, "alice", "GITHUB_TOKEN", &secret("ghp_alice")).await.unwrap();
        v.set(OwnerKind::Server, "github", "GITHUB_TOKEN", &secret("ghp_shared")).await.unwrap();
        let got = v.get(OwnerKind::User, "alice", "GITHUB_TOKEN").await.unwrap().unwrap();
        assert_eq!(got.expose_secret(), "ghp_alice");
        let got = v.get(OwnerKind::Server, "github", "GITHUB_TOKEN").await.unwrap().unwrap();
        assert_eq!(got.expose_secret(), "ghp_shared");
        assert!(v.get(OwnerKind::User, "bob", "GITHUB_TOKEN").await.unwrap().is_none());
        assert_eq!(v.list(None, None).await.unwrap().len(), 2);
        assert!(v.remove(OwnerKind::User, "alice", "GITHUB_TOKEN").await.unwrap());
        assert!(!v.remove(OwnerKind::User, "alice", "GITHUB_TOKEN").await.unwrap());
        assert!(v.set(OwnerKind::User, "alice", "1BAD", &secret("x")).await.is_err());
    }

    #[tokio::test]
    async fn the_database_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path()).await;
        let canary = "canary-4f1e9b2c7d";
        v.set(OwnerKind::User, "alice", "TOKEN", &secret(canary)).await.unwrap();
        v.store.close().await;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(canary.len()).any(|w| w == canary.as_bytes()));
        }
    }

    #[tokio::test]
    async fn rotation_keeps_every_secret_readable() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path()).await;
        for i in 0..20 {
            v.set(OwnerKind::User, &format!("u{i}"), "TOKEN", &secret(&format!("value-{i}"))).await.unwrap();
        }
        // another process that opened the vault before the rotation
        let store = Store::open_sqlite(&dir.path().join("b.db")).await.unwrap();
        let (reader, _) = Vault::open(store, KeySource::File(dir.path().join("master.key")), false).unwrap();
        let before = v.current_key_id();
        let done = v.rotate().await.unwrap();
        assert_eq!(done.rewrapped, 20);
        assert_ne!(done.key_id, before);
        assert_eq!(v.current_key_id(), done.key_id);
        for info in v.list(None, None).await.unwrap() {
            assert_eq!(info.key_id, done.key_id);
        }
        // the reader reads the new key from the file when it meets it
        for i in 0..20 {
            let got = reader.get(OwnerKind::User, &format!("u{i}"), "TOKEN").await.unwrap().unwrap();
            assert_eq!(got.expose_secret(), format!("value-{i}"));
        }
        // a process started after the rotation opens the two-key file
        let store = Store::open_sqlite(&dir.path().join("b.db")).await.unwrap();
        let (late, created) = Vault::open(store, KeySource::File(dir.path().join("master.key")), true).unwrap();
        assert!(created.is_none());
        assert_eq!(late.current_key_id(), done.key_id);
        // a second rotation drops the first key: the file holds two
        v.rotate().await.unwrap();
        let ring = KeySource::File(dir.path().join("master.key")).load_keyring().unwrap();
        assert_eq!(ring.ids().count(), 2);
        assert!(ring.ids().all(|id| id.to_string() != before));
    }

    #[tokio::test]
    async fn a_loose_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        bastion_vault::create_key_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open_sqlite(&dir.path().join("b.db")).await.unwrap();
        let err = Vault::open(store, KeySource::File(path), true).err().unwrap().to_string();
        assert!(err.contains("644") && err.contains("chmod 600"), "{err}");
    }
}
