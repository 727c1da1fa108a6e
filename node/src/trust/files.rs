//! The files of a private mesh.
//!
//! - The authority (`lamina mesh create --out DIR`): `DIR/mesh.key`, the Ed25519 key pair
//!   (hex, mode 0600, kept by the operator and never copied to nodes), `DIR/mesh.pub` (its
//!   public half, hex) and `DIR/revoked.jsonl` (one line per revocation signed, so the
//!   operator has a record of them).
//! - A member file (`lamina mesh admit ... --out FILE`): JSON `{"mesh", "cert"}`, the mesh's
//!   public key and the node's certificate. It holds nothing secret.
//!
//! A key file that others may read is refused rather than used: whoever reads it can admit
//! anyone. Key files are created with mode 0600 in the `open` call itself (a temporary file,
//! synced, renamed into place, its directory synced), never created wider and narrowed after.

use std::io::Write;
use std::path::{Path, PathBuf};

use lamina_protocol::{MemberCert, MeshKey, Revocation, Role, SignedMemberCert, SignedRevocation};
use libp2p::identity::ed25519;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::TrustError;

pub const KEY_FILE: &str = "mesh.key";
pub const PUB_FILE: &str = "mesh.pub";
pub const REVOKED_FILE: &str = "revoked.jsonl";

/// A mesh authority: its key pair, loaded from its folder.
pub struct Authority {
    dir: PathBuf,
    key: ed25519::Keypair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("mesh", &self.mesh())
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(path: &Path, text: &str) -> Result<Vec<u8>, TrustError> {
    let t = text.trim();
    if !t.len().is_multiple_of(2) {
        return Err(TrustError::malformed(path, "not hex"));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| t.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| TrustError::malformed(path, "not hex"))
}

/// The permission bits of an open key file if group or others may access it (`None`:
/// private). On other platforms than Unix, always `None`.
pub(crate) fn exposed_mode(file: &std::fs::File) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(None)
    }
}

/// Reads an open file of at most `limit` bytes; a longer one is an error, not read whole.
pub(crate) fn read_small(file: std::fs::File, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes: not a key file"),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` as `path`, readable by its owner only, atomically: a temporary file
/// `path.tmp` created with mode 0600 (a stale one is removed first, so its mode is never
/// inherited), synced, renamed to `path`, and the directory synced so the rename survives
/// a crash. Overwrites `path` if it exists; callers that must not check first.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let written = (|| {
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Syncs a directory, so a rename or creation in it is durable (a no-op off Unix).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A mesh key is 64 bytes, 128 hex digits and a newline.
const MAX_MESH_KEY_FILE_BYTES: u64 = 1024;

impl Authority {
    /// Makes a new mesh in `dir` (created if needed); refuses to overwrite a key.
    pub fn create(dir: &Path) -> Result<Self, TrustError> {
        std::fs::create_dir_all(dir).map_err(|e| TrustError::io(dir, e))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() {
            return Err(TrustError::Exists {
                path: key_path.display().to_string(),
            });
        }
        let key = ed25519::Keypair::generate();
        write_private_atomic(&key_path, format!("{}\n", hex(&key.to_bytes())).as_bytes())
            .map_err(|e| TrustError::io(&key_path, e))?;
        let pub_path = dir.join(PUB_FILE);
        std::fs::write(
            &pub_path,
            format!("{}\n", hex(&key.public().to_bytes())).as_bytes(),
        )
        .map_err(|e| TrustError::io(&pub_path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// Opens the mesh in `dir`; refuses a key file that group or others may read.
    pub fn open(dir: &Path) -> Result<Self, TrustError> {
        let key_path = dir.join(KEY_FILE);
        let file = std::fs::File::open(&key_path).map_err(|e| TrustError::io(&key_path, e))?;
        // The mode of the file opened, not of the path looked up earlier.
        if let Some(mode) = exposed_mode(&file).map_err(|e| TrustError::io(&key_path, e))? {
            return Err(TrustError::KeyExposed {
                path: key_path.display().to_string(),
                mode,
            });
        }
        let raw =
            read_small(file, MAX_MESH_KEY_FILE_BYTES).map_err(|e| TrustError::io(&key_path, e))?;
        let text =
            String::from_utf8(raw).map_err(|_| TrustError::malformed(&key_path, "not hex"))?;
        let mut bytes = unhex(&key_path, &text)?;
        let key = ed25519::Keypair::try_from_bytes(&mut bytes)
            .map_err(|e| TrustError::malformed(&key_path, e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The mesh this authority signs for.
    pub fn mesh(&self) -> MeshKey {
        MeshKey::from_bytes(self.key.public().to_bytes())
    }

    /// A certificate admitting `peer` with `role` until `expires_unix`.
    pub fn admit(
        &self,
        peer: &PeerId,
        role: Role,
        expires_unix: u64,
    ) -> Result<SignedMemberCert, TrustError> {
        let c = MemberCert {
            mesh: self.mesh(),
            peer: peer.to_bytes(),
            role,
            expires_unix,
        };
        Ok(SignedMemberCert::sign(&c, &self.key)?)
    }

    /// The member file of `peer` (see [`admit`](Self::admit)).
    pub fn member_file(
        &self,
        peer: &PeerId,
        role: Role,
        expires_unix: u64,
    ) -> Result<MemberFile, TrustError> {
        Ok(MemberFile {
            mesh: self.mesh(),
            cert: self.admit(peer, role, expires_unix)?,
        })
    }

    /// Signs the revocation of `peer` and appends it to `revoked.jsonl`.
    pub fn revoke(&self, peer: &PeerId, now_unix: u64) -> Result<SignedRevocation, TrustError> {
        let r = Revocation {
            mesh: self.mesh(),
            peer: peer.to_bytes(),
            issued_unix: now_unix,
        };
        let signed = SignedRevocation::sign(&r, &self.key)?;
        let path = self.dir.join(REVOKED_FILE);
        let line = serde_json::json!({
            "peer": peer.to_string(),
            "issued_unix": now_unix,
            "revocation": signed,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrustError::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| TrustError::io(&path, e))?;
        f.sync_all().map_err(|e| TrustError::io(&path, e))?;
        Ok(signed)
    }

    /// The revocations recorded in `revoked.jsonl` (lines that do not parse are skipped).
    pub fn revocations(&self) -> Vec<SignedRevocation> {
        #[derive(Deserialize)]
        struct Line {
            revocation: SignedRevocation,
        }
        let path = self.dir.join(REVOKED_FILE);
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .map(|l| l.revocation)
            .collect()
    }
}

/// What a node of a private mesh holds: the mesh and its own certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFile {
    pub mesh: MeshKey,
    pub cert: SignedMemberCert,
}

impl MemberFile {
    /// Writes the file (JSON).
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| TrustError::malformed(path, e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| TrustError::io(path, e))
    }

    /// Reads a member file; the certificate must be signed by the mesh it names (whether
    /// it is this node's and still valid is checked against the node's peer id at start).
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrustError::io(path, e))?;
        let f: MemberFile =
            serde_json::from_str(&text).map_err(|e| TrustError::malformed(path, e.to_string()))?;
        f.cert.verify_with(&f.mesh)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_admit_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let mesh_dir = dir.path().join("mesh");
        let a = Authority::create(&mesh_dir).unwrap();
        assert!(Authority::create(&mesh_dir).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = mesh_dir.join(KEY_FILE);
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let b = Authority::open(&mesh_dir).unwrap();
            assert_eq!(a.mesh(), b.mesh());
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Authority::open(&mesh_dir),
                Err(TrustError::KeyExposed { .. })
            ));
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let peer = PeerId::random();
        let f = a.member_file(&peer, Role::Client, 100).unwrap();
        let path = dir.path().join("m.json");
        f.save(&path).unwrap();
        assert_eq!(MemberFile::load(&path).unwrap(), f);
        assert!(f.cert.verify(&a.mesh(), &peer, 50).is_ok());
        let r = a.revoke(&peer, 60).unwrap();
        assert_eq!(r.verify(&a.mesh()).unwrap().1, peer);
        assert_eq!(a.revocations(), vec![r]);
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_from_creation_and_exposed_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // A stale temporary file with a wide mode is not reused.
        let tmp = dir.path().join(format!("{KEY_FILE}.tmp"));
        std::fs::write(&tmp, b"x").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        let a = Authority::create(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        assert_eq!(mode(&key), 0o600);
        assert!(!tmp.exists());
        for exposed in [0o640, 0o604, 0o660, 0o606] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(exposed)).unwrap();
            match Authority::open(dir.path()) {
                Err(TrustError::KeyExposed { path, mode: m }) => {
                    assert_eq!(m, exposed);
                    assert_eq!(path, key.display().to_string());
                }
                other => panic!("mode {exposed:o}: {:?}", other.map(|a| a.mesh())),
            }
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Authority::open(dir.path()).unwrap().mesh(), a.mesh());
        // An oversized key file is refused, not read whole.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key, vec![b'a'; 100_000]).unwrap();
        assert!(matches!(
            Authority::open(dir.path()),
            Err(TrustError::Io { .. })
        ));
    }
}
