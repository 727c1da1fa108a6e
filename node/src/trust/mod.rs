//! Trust: who may take part in this node's mesh.
//!
//! - [`gate`]: the pure judgement "is this peer a member?" over a peer id, the certificate
//!   it presented and "now" ([`Gate`]), shared by the mesh (every libp2p connection) and
//!   the session server (every data-plane `Hello`) as a [`SharedGate`];
//! - [`files`]: the files an operator handles: the mesh authority's key pair
//!   ([`Authority`]: `mesh.key`, `mesh.pub`, `revoked.jsonl`) and a node's member file
//!   ([`MemberFile`]: the mesh's public key and the node's certificate).
//!
//! A private mesh is an application-level gate rather than libp2p's `pnet`, which only
//! protects TCP: the gate holds on QUIC as well, and on the data plane, whose TLS
//! handshake proves the peer id the gate judges.

pub mod files;
pub mod gate;

pub use files::{Authority, MemberFile};
pub use gate::{Admitted, Gate, SharedGate};

/// Errors of the trust room's files.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} already holds a mesh key; refusing to overwrite it")]
    Exists { path: String },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    KeyExposed { path: String, mode: u32 },
    #[error("{path}: {message}")]
    Malformed { path: String, message: String },
    #[error("membership: {0}")]
    Member(#[from] lamina_protocol::MemberError),
}

impl TrustError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TrustError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn malformed(path: &std::path::Path, message: impl Into<String>) -> Self {
        TrustError::Malformed {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}
