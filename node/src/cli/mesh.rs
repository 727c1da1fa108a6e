//! `lamina mesh`: make a private mesh, admit peers, revoke them.

use clap::Subcommand;
use std::path::PathBuf;

use super::parse::{parse_duration, parse_role};

#[derive(Subcommand, Debug)]
pub enum MeshCommand {
    /// Make a private mesh: its authority key DIR/mesh.key (mode 0600; keep it, never copy
    /// it to nodes) and DIR/mesh.pub.
    Create {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a member certificate for a peer (`lamina node --print-peer-id --data-dir D`
    /// prints a node's) and write its member file, for `lamina node --member FILE`.
    Admit {
        /// The mesh folder (`lamina mesh create --out DIR`).
        #[arg(long, value_name = "DIR")]
        mesh: PathBuf,
        #[arg(long, value_name = "PEER_ID")]
        peer: libp2p::PeerId,
        #[arg(long, default_value = "serve", value_parser = parse_role)]
        role: lamina_protocol::Role,
        /// How long the certificate is valid: 30d, 12h, 90m, 3600s.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        expires: std::time::Duration,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke a member: the revocation is handed to the member at --bootstrap and spreads
    /// through the mesh; the revoked peer is cut off without restarting anyone.
    Revoke {
        #[arg(long, value_name = "DIR")]
        mesh: PathBuf,
        #[arg(long, value_name = "PEER_ID")]
        peer: libp2p::PeerId,
        /// A member's p2p address, with its /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: libp2p::Multiaddr,
    },
}
