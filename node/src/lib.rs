//! `lamina-node`: the node daemon, the `lamina` command line and the Rust client API.
//!
//! Modules, each with one job (see `../shared/DESIGN.md`):
//! - [`mesh`]: the libp2p event loop (identity, QUIC/TCP, mDNS, Kademlia under lamina's own
//!   protocol names, identify, ping) behind the cloneable [`mesh::MeshHandle`]; signed
//!   announcements, refreshed, expired and withdrawn; placement and routing over them;
//! - [`dataplane`]: the quinn endpoint, pinned self-signed certificates, framed streams;
//! - [`session`]: the session server (KV caches per session, forwarding to the next hop,
//!   idle expiry, limits, sub-range hops, shard swaps when a node moves);
//! - [`pipeline`]: the pipeline client (prefill, decode, replay log); [`failover`]: keeping
//!   a generation going when a hop dies;
//! - [`api`]: the OpenAI-compatible HTTP API, `/status`, `/metrics`;
//! - [`client`]: joining a mesh from a Rust program; [`models`]: the local model cache;
//! - [`cli`] and [`cmd`]: the command line.

pub mod api;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod dataplane;
pub mod failover;
pub mod mesh;
pub mod models;
pub mod pipeline;
pub mod session;
pub mod trace;
