//! The API key pepper lives in `<data_dir>/api-key.pepper`, created with mode
//! 0600 on first use. A pepper file that other users can read is refused:
//! with it and a copy of the database, keys could be tested offline.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bastion_core::apikey::Pepper;

use crate::StoreError;

pub const FILE_NAME: &str = "api-key.pepper";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Loads the pepper, creating the data directory (0700) and the file (0600)
/// if they do not exist.
pub fn load_or_create(data_dir: &Path) -> Result<Pepper, StoreError> {
    ensure_private_dir(data_dir)?;
    let p = path(data_dir);
    match fs::metadata(&p) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(StoreError::LoosePermissions { path: p, mode });
            }
            let bytes = fs::read(&p).map_err(|e| StoreError::Io(p.clone(), e))?;
            Pepper::new(bytes).map_err(|m| StoreError::Corrupt(format!("{}: {m}", p.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pepper = Pepper::generate();
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| StoreError::Io(p.clone(), e))?;
            f.write_all(pepper.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| StoreError::Io(p.clone(), e))?;
            Ok(pepper)
        }
        Err(e) => Err(StoreError::Io(p, e)),
    }
}

/// Creates a directory readable by its owner only, or checks that an
/// existing one is not writable by others.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| StoreError::Io(dir.into(), e))?;
    }
    let mode = fs::metadata(dir).map_err(|e| StoreError::Io(dir.into(), e))?.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(StoreError::LoosePermissions { path: dir.into(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create(&data).unwrap();
        let b = load_or_create(&data).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        let mode = fs::metadata(path(&data)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        load_or_create(&data).unwrap();
        fs::set_permissions(path(&data), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create(&data), Err(StoreError::LoosePermissions { .. })));
    }

    #[test]
    fn world_writable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(load_or_create(&data), Err(StoreError::LoosePermissions { .. })));
    }
}
