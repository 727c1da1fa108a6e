//! The node's persistent libp2p identity: an ed25519 key in `DATA_DIR/p2p.key`, mode
//! 0600. The peer id must survive restarts, or every restart would look like a new node
//! and its old record would linger as a ghost until it expired.

use std::path::Path;

use libp2p::identity::Keypair;

use super::MeshError;

/// Loads the identity from `dir/p2p.key`, or creates it there (mode 0600).
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair, MeshError> {
    let path = dir.join("p2p.key");
    let err = |message: String| MeshError::Identity {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            write_private(&tmp, &bytes).map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(bytes)
}
