//! `lamina-node`: the node daemon and the `lamina` command line.
//!
//! What exists today: the command line over the sharding crate (`lamina generate` on one
//! machine, with an optional in-process layer split; `lamina model inspect|synth`).
//!
//! The plan for this crate (each a module with one job, see `../shared/DESIGN.md`):
//! - `swarm`: the libp2p event loop (identity, QUIC/TCP transports, mDNS, Kademlia under
//!   lamina's own protocol names, identify, ping) behind a cloneable `Client` handle;
//! - `announce`: signed announcements of (model id, layer range, data-plane address,
//!   certificate fingerprint, throughput, free slots), refreshed and expired;
//! - `placement` and `routing`: which layers to host; which chain to use for a request;
//! - `dataplane`: the quinn endpoint, pinned self-signed certificates, framed streams;
//! - `session`: the session server (KV caches per session, forwarding to the next hop,
//!   idle expiry, limits) and the pipeline client (prefill, decode, replay log, failover);
//! - `api`: the OpenAI-compatible HTTP API, `/status`, `/metrics`.

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
