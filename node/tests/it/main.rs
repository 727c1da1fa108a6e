//! The node's integration tests, one binary (one link of the whole stack instead of one
//! per file). Modules by what they exercise. Tests run side by side (the default two
//! threads): the heavy ones spend most of their time waiting on sockets and deadlines,
//! not on the cores (the suite's CPU time is about a third of its wall time), and their
//! deadlines are generous enough for a loaded machine.
//!
//! - in-process, through the library: `pipeline_stories`, `pipeline_smollm2` (chains of
//!   session servers), `dataplane_bad_input`, `progress`, `blame`, `churn_harness`,
//!   `verify` (hops that lie, caught by peer id), `nodes` (whole `Node`s in one process:
//!   mesh, placement, API);
//! - processes, where the process is the point: `cli`, `mesh` (kill -9, restart),
//!   `churn`, `failover`, `api_*` and `openai_python` (the daemon's HTTP API as users run
//!   it), `testnet_*`, `nat` (NAT namespaces), `model_pull`, `trust` (private meshes: strangers refused, revocation,
//!   the data plane's peer-id handshake, the README's commands).

mod common;

mod api_keys;
mod api_smollm2;
mod api_stories;
mod blame;
mod churn;
mod churn_harness;
mod cli;
mod dataplane_bad_input;
mod failover;
mod limits;
mod mesh;
mod mesh_bounds;
mod model_pull;
mod nat;
mod openai_python;
mod pipeline_smollm2;
mod pipeline_stories;
mod private_ends;
mod progress;
mod testnet_control;
mod testnet_updown;
mod trust;
mod verify;
