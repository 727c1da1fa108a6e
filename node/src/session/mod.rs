//! The session server of a hop and the pure logic it is built on.
//!
//! - [`machine`]: the per-stream state machine, which message is legal when (pure);
//! - [`server`]: what the hop serves and its limits; `accept`: the accept loop;
//! - [`stream`]: one stream's loop: open here and on the next hop, steps, close, expiry;
//! - [`queue`]: the node's compute queue (work in arrival order, as many at once as kernel
//!   pools fit in the cores, the steps waiting together run as one batch);
//! - [`batch`]: which waiting steps form a batch (pure);
//! - [`compute`]: one step's work, alone or stacked with others';
//! - [`next_hop`]: the client to the next hop, with depth-scaled deadlines;
//! - [`reporter`]: the hop's signed failure reports;
//! - [`faults`]: faults a server can be told to inject (the churn harness), one branch
//!   on the hot path when none are armed.

mod accept;
pub mod batch;
pub mod compute;
pub mod faults;
pub mod machine;
mod next_hop;
pub mod queue;
pub mod reporter;
pub mod server;
mod stream;

pub use accept::CLOSE_OVER_LIMIT;
pub use reporter::Reporter;
pub use server::{Served, ServerError, ServerOptions, SessionServer};
