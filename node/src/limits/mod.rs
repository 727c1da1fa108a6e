//! Every bound a node keeps on what a peer or a client can make it spend, in one place.
//!
//! Why one place: a bound that lives next to the code it guards is easy to forget when
//! the next path to the same resource is added, and an operator cannot see them all. Each
//! field here has its default documented, the ones operators tune have a flag
//! (`lamina node --help`), and each refusal is typed (an [`ErrorCode`], a QUIC close code
//! or an HTTP status) and counted ([`Refusals`], `lamina_refused_total{bound}`).
//!
//! Enforcement is at the point of entry:
//! - the data plane's accept loop: handshakes in flight, connections in all and per peer,
//!   streams per connection (QUIC flow control);
//! - each stream before its session opens: a small frame cap and a deadline;
//! - `OpenSession`: session slots and the node-wide KV budget ([`KvBudget`]);
//! - each `Forward`: rows per step (the entry chunks long prefills to fit);
//! - every send and dial: a deadline;
//! - the HTTP API: connections, header and body deadlines, admission before tokenizing.
//!
//! The mesh's own bounds (gossip verification and sync per peer, libp2p connections) are
//! [`MeshLimits`](crate::mesh::MeshLimits), a part of [`Limits`], enforced in
//! [`crate::mesh`].
//!
//! [`ErrorCode`]: lamina_protocol::ErrorCode

mod budget;
mod conns;
mod refusals;

use std::time::Duration;

use lamina_protocol::FrameLimits;

pub use budget::{kv_bytes, KvBudget, KvReservation};
pub use conns::{ConnGuard, ConnRefused, Connections};
pub use refusals::{Bound, Refusals};

/// Rows of one `Forward` a node accepts by default, and the size of the chunks an entry
/// splits a longer prefill into. Why 512: attention's scores take `heads x rows x
/// context x 4` bytes in one step (32 heads at 8k context: 512 MiB at 512 rows, 4 GiB at
/// 4096), and 512 rows already keep the matmuls at full speed.
pub const DEFAULT_MAX_STEP_ROWS: u32 = 512;

/// What a node bounds, with the defaults of `lamina node`.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Sessions served at once; the next `OpenSession` gets `SessionLimit`.
    pub max_sessions: usize,
    /// A session with no accepted request for this long is closed.
    pub idle_timeout: Duration,
    /// Frame limits of every data-plane stream once its session is open.
    pub frame: FrameLimits,
    /// What one data-plane peer can make this node spend.
    pub peers: PeerBounds,
    /// What HTTP clients can make this node spend.
    pub http: HttpBounds,
    /// What mesh peers can make this node spend (gossip, libp2p connections).
    pub mesh: crate::mesh::MeshLimits,
    /// Rows one forward may stack from waiting sessions' steps (1: no batching).
    pub batch_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            idle_timeout: Duration::from_secs(300),
            frame: FrameLimits::default(),
            peers: PeerBounds::default(),
            http: HttpBounds::default(),
            mesh: crate::mesh::MeshLimits::default(),
            batch_rows: crate::session::queue::DEFAULT_BATCH_ROWS,
        }
    }
}

/// Bounds on the data plane, per stream, per connection and per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerBounds {
    /// Bytes of KV cache all open sessions may reserve together (each reserves its whole
    /// `max_length` at open, so a node never runs out of memory mid-generation).
    /// Default: 4 GiB.
    pub kv_budget_bytes: u64,
    /// Rows of one `Forward` (default [`DEFAULT_MAX_STEP_ROWS`]).
    pub max_step_rows: u32,
    /// A stream must have its session open this soon after it was accepted (default
    /// 10 s): a stream that never opens holds no slot, but it holds a task and a buffer.
    pub open_within: Duration,
    /// Largest frame accepted before the session is open (default 256 KiB): `Hello` and
    /// `OpenSession` are headers only, so nobody needs the 64 MiB of a prefill for them.
    pub pre_open_frame_bytes: u32,
    /// Every frame sent must be taken by the peer's flow control this soon (default
    /// 30 s): a peer that stops reading does not pin a task forever.
    pub send_within: Duration,
    /// Dialing a peer (QUIC handshake included) and opening a stream on the connection
    /// must succeed this soon (default 10 s).
    pub connect_within: Duration,
    /// Data-plane connections at once, from all peers (default 256).
    pub max_connections: usize,
    /// Data-plane connections at once from one peer id (default 4: one per neighbour is
    /// the rule, a few more cover restarts and races).
    pub max_connections_per_peer: usize,
    /// Streams (sessions) a peer may have open on one connection (default 128).
    pub max_streams_per_connection: u32,
    /// QUIC handshakes in flight (default 64); more incoming connections are refused
    /// before any cryptography is done for them.
    pub max_handshakes: usize,
}

impl Default for PeerBounds {
    fn default() -> Self {
        Self {
            kv_budget_bytes: 4 << 30,
            max_step_rows: DEFAULT_MAX_STEP_ROWS,
            open_within: Duration::from_secs(10),
            pre_open_frame_bytes: 256 << 10,
            send_within: Duration::from_secs(30),
            connect_within: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_peer: 4,
            max_streams_per_connection: 128,
            max_handshakes: 64,
        }
    }
}

/// Bounds of the HTTP API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpBounds {
    /// Connections at once (default 256); more are closed at accept.
    pub max_connections: usize,
    /// Connections at once from one IP address (default 32), so that one client cannot
    /// take every connection slot from the others.
    pub max_connections_per_ip: usize,
    /// A request's headers must arrive this soon after the connection or the previous
    /// request (default 10 s; slowloris).
    pub header_within: Duration,
    /// A request's body must arrive this soon after its headers (default 30 s).
    pub body_within: Duration,
    /// Largest request body (default 4 MiB).
    pub max_body_bytes: usize,
}

impl Default for HttpBounds {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_ip: 32,
            header_within: Duration::from_secs(10),
            body_within: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
        }
    }
}

impl PeerBounds {
    /// The frame limits of a stream whose session is not open yet.
    pub fn pre_open_frame(&self, open: FrameLimits) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: self.pre_open_frame_bytes.min(open.max_frame_bytes),
            max_header_bytes: open.max_header_bytes,
        }
    }
}
