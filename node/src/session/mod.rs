//! The session server of a hop and the pure logic it is built on.
//!
//! - [`machine`]: the per-stream state machine, which message is legal when (pure);
//! - [`server`]: what the hop serves and its limits; `accept`: the accept loop;
//! - [`stream`]: one stream's loop: open here and on the next hop, steps, close, expiry;
//! - [`compute`]: the node's compute queue (steps in arrival order, as many at once as kernel pools fit in the cores) and one step's work;
//! - [`next_hop`]: the client to the next hop, with depth-scaled deadlines;
//! - [`reporter`]: the hop's signed failure reports;
//! - [`faults`]: faults a server can be told to inject (the churn harness), one branch
//!   on the hot path when none are armed.

mod accept;
pub mod compute;
pub mod faults;
pub mod machine;
mod next_hop;
pub mod reporter;
pub mod server;
mod stream;

pub use accept::CLOSE_OVER_LIMIT;
pub use reporter::Reporter;
pub use server::{Served, ServerError, ServerOptions, SessionServer};
