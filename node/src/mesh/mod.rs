//! The mesh: how nodes find each other, say what they serve, place themselves and route.
//!
//! - [`behaviour`]: the libp2p swarm (QUIC, TCP + noise + yamux, mDNS, Kademlia under
//!   `/lamina/kad/1.0.0`, identify, ping, the announcement exchange);
//! - [`event_loop`]: the one task that owns the swarm and the mesh state, and publishes
//!   snapshots of it;
//! - [`handle`]: [`MeshHandle`], the cloneable handle the rest of the node uses (commands
//!   in, snapshots out, routes planned from them);
//! - [`state`]: the loop's state, this node's own record, the published [`MeshSnapshot`];
//! - [`status`]: the typed view `/status` shows;
//! - [`table`]: verified announcements, newest per peer (pure);
//! - [`plan`]: table -> the planners' view -> a chain of hops (spread over servers of
//!   about the same measured speed), or this node's range (pure);
//! - [`bans`]: which peers failed generations and how long routes avoid them (pure);
//! - [`gossip`]: what a gossiped record costs, bounded: verified once by hash, a budget
//!   of verifications and of sync requests per sending peer (pure);
//! - [`limits`]: [`MeshLimits`], every bound of the mesh side with its default;
//! - [`paths`]: how each peer is reached: direct, hole-punched or relayed (pure);
//! - [`speed`]: the speed book: measured speed over announced, demotion of liars (pure);
//! - [`probe`]: the task that measures route candidates with probe sessions;
//! - [`identity`]: the persistent ed25519 identity;
//! - [`handover`]: hands a revocation to one member (`lamina mesh revoke`).
//!
//! Every connection is gated ([`crate::trust::Gate`]): until a peer proved membership
//! (the `/lamina/member/1.0.0` exchange, within [`behaviour::ADMISSION_TIMEOUT`]) it is
//! pending: no record is sent to it or taken from it, and it is in no status. A peer
//! refused, or silent past the timeout, is disconnected. Kademlia, identify and ping run
//! below the gate (they carry addresses, not records).

pub mod bans;
pub mod behaviour;
pub mod event_loop;
pub mod gossip;
pub mod handle;
pub mod handover;
pub mod identity;
pub mod limits;
pub mod paths;
pub mod plan;
pub mod probe;
pub mod speed;
pub mod state;
pub mod status;
pub mod table;

use std::time::Duration;

pub use behaviour::{RelayLimits, SwarmOptions};
pub use handle::MeshHandle;
pub use identity::load_or_create_identity;
pub use limits::MeshLimits;
pub use plan::Spread;
pub use state::MeshSnapshot;
pub use status::{MeshStatus, PeerStatus, RouteSummary};

/// How long a record lives. Short, because expiry is how a node that died without a word
/// (kill -9, a cut cable) leaves everyone's view: at most this long after its last refresh.
pub const RECORD_TTL: Duration = Duration::from_secs(9);
/// How often a node re-signs its record: three refreshes per TTL, so one lost sync round
/// never lets a live node expire.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3);

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("identity key {path}: {message}")]
    Identity { path: String, message: String },
    /// The identity key file may be read by group or others (as ssh refuses such keys).
    #[error(
        "identity key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyExposed { path: String, mode: u32 },
    #[error("swarm: {0}")]
    Swarm(String),
    #[error("announcement: {0}")]
    Announce(#[from] lamina_protocol::AnnounceError),
    #[error("record: {0}")]
    Rejected(#[from] table::Rejected),
    #[error("revocation: {0}")]
    Revocation(#[from] lamina_protocol::MemberError),
    #[error("the mesh event loop has stopped")]
    Stopped,
    /// A probe session failed (see [`probe`]); it records nothing.
    #[error("probe: {0}")]
    Probe(String),
}
