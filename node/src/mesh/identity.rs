//! The node's persistent libp2p identity: an ed25519 key in `DATA_DIR/p2p.key`, mode
//! 0600. The peer id must survive restarts, or every restart would look like a new node
//! and its old record would linger as a ghost until it expired.
//!
//! Whoever reads the key can impersonate the node, so, as ssh does, a key file that group
//! or others may read is refused ([`MeshError::KeyExposed`]) rather than used. A new key is
//! written to a temporary file created with mode 0600 (never a wider mode narrowed later),
//! synced, renamed into place and its directory synced, so a crash leaves either no key or
//! a whole one.

use std::path::Path;

use libp2p::identity::Keypair;

use super::MeshError;
use crate::trust::files::{exposed_mode, read_small, write_private_atomic};

/// The file name of the identity key in the data directory.
pub const KEY_FILE: &str = "p2p.key";
/// An encoded ed25519 key pair takes under a hundred bytes; anything much longer is not one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Loads the identity from `dir/p2p.key`, or creates it there (mode 0600).
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair, MeshError> {
    let path = dir.join(KEY_FILE);
    let err = |message: String| MeshError::Identity {
        path: path.display().to_string(),
        message,
    };
    match std::fs::File::open(&path) {
        Ok(file) => {
            // The mode of the file opened, not of the path looked up earlier.
            if let Some(mode) = exposed_mode(&file).map_err(|e| err(e.to_string()))? {
                return Err(MeshError::KeyExposed {
                    path: path.display().to_string(),
                    mode,
                });
            }
            let bytes = read_small(file, MAX_KEY_FILE_BYTES).map_err(|e| err(e.to_string()))?;
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            write_private_atomic(&path, &bytes).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_0600_reloaded_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create_identity(&data).unwrap();
        let key = data.join(KEY_FILE);
        assert_eq!(mode(&key), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
        let b = load_or_create_identity(&data).unwrap();
        assert_eq!(a.public(), b.public());
        for exposed in [0o640, 0o604, 0o644, 0o666] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(exposed)).unwrap();
            match load_or_create_identity(&data) {
                Err(MeshError::KeyExposed { path, mode }) => {
                    assert_eq!(mode, exposed);
                    assert_eq!(path, key.display().to_string());
                }
                other => panic!("mode {exposed:o}: {:?}", other.map(|k| k.public())),
            }
            // Refusing changes nothing: the key is neither rewritten nor chmodded.
            assert_eq!(mode(&key), exposed);
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create_identity(&data).unwrap().public(), a.public());
    }

    #[test]
    fn a_stale_wide_temporary_file_does_not_widen_the_key() {
        let dir = tempfile::tempdir().unwrap();
        // A temporary file left by a crash, with a wide mode: the new key must not inherit it.
        let tmp = dir.path().join(format!("{KEY_FILE}.tmp"));
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        load_or_create_identity(dir.path()).unwrap();
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn an_oversized_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::write(&key, vec![0u8; 10_000]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(MeshError::Identity { .. })
        ));
    }
}
