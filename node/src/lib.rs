//! `lamina-node`: the node daemon, the `lamina` command line and the Rust client API.
//!
//! The rooms, and which way a generation's data flows through them (the whole picture,
//! with where each next capability plugs in, is `docs/ARCHITECTURE.md`):
//!
//! - [`daemon`]: the composition root. [`Node::start`] takes a [`NodeConfig`]
//!   ([`config`]) and wires the rooms below together; [`NodeHandle`] is a running node.
//! - [`api`]: the OpenAI-compatible HTTP API. A request is tokenized, admitted, and
//!   handed to the pipeline as a task of its own; text comes back through a bounded channel.
//!   Every `/v1` route passes the access layer first (API keys, quotas, usage, audit).
//! - [`pipeline`]: the entry's side of a generation. It drives sharding's generation
//!   machine, asking a [`routes::RouteSource`] for a chain and running a
//!   failover session on it: open on the first hop, one `Forward` per step, replay on a
//!   new chain when a hop fails.
//! - [`failure`]: typed failures and the blame rules (pure): whom a failure bans, whom
//!   it only avoids, what is fatal.
//! - [`routes`]: where chains come from: the mesh, a chain file, a fixed chain.
//! - [`mesh`]: the libp2p event loop that alone owns the swarm and the announcement table,
//!   behind the cloneable [`mesh::MeshHandle`]; placement and routing over its snapshots.
//! - [`session`]: a hop's session server: the per-stream loop and state machine, the
//!   compute queue, the client to the next hop, signed failure reports.
//! - [`dataplane`]: the QUIC endpoint, TLS bound to the libp2p identity (both ends prove
//!   their peer id), framed streams.
//! - [`trust`]: who may take part: the membership gate (pure) the mesh and the session
//!   server share, and the files of a private mesh (authority key, member files).
//! - [`limits`]: every bound on what a peer or a client can make the node spend, with
//!   its default, and the refusal counters.
//! - [`client`]: joining a mesh from a Rust program; [`models`]: the local model cache;
//!   [`ids`]: fresh ids and clocks.
//! - [`cli`] and [`cmd`]: the command line, thin over the rest.
//!
//! Data path of one token: `api` -> `pipeline::generate` -> `pipeline::session` (QUIC
//! stream to the first hop) -> `session::stream` -> `session::compute` -> `session::next_hop`
//! -> ... -> the last hop samples -> `StepResult` back up the streams -> `pipeline` ->
//! `api`'s channel -> the HTTP client.

pub mod api;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod failure;
pub mod ids;
pub mod info;
pub mod limits;
pub mod mesh;
pub mod models;
pub mod pipeline;
pub mod routes;
pub mod session;
pub mod trust;

pub use config::{LayersChoice, MeshChoice, NodeConfig};
pub use daemon::{model_id_of, Node, NodeError, NodeHandle};
