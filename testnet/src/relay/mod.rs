//! Link emulation for testnets: a userspace UDP relay placed in front of a node's QUIC
//! endpoint that delays (latency ± jitter), drops (loss) and rate-limits (token bucket)
//! datagrams, per direction. No root and no `tc netem` needed.
//!
//! [`shaper`] is the pure core (no I/O, no clocks); [`Relay`] runs it on tokio sockets.

mod io;
pub mod shaper;

pub use io::{DirectionStats, Relay, RelayConfig, RelayHandle, RelayStats};
pub use shaper::{
    parse_bandwidth, parse_duration, parse_loss, LinkSpec, Shaper, Verdict, BUCKET_DEPTH,
};

/// Errors of link specs and relays.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("`{0}` is not a duration like 20ms, 500us or 1s")]
    Duration(String),
    #[error("`{0}` is not a loss like 0.1% or 0.001 (between 0 and 100%)")]
    Loss(String),
    #[error("`{0}` is not a bandwidth like 100mbit, 1gbit or 500kbit")]
    Bandwidth(String),
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
}
