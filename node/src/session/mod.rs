//! The session server of a hop and the pure logic it is built on.
//!
//! * [`faults`]: faults a server can be told to inject at given steps (the churn harness);
//! * [`machine`]: the per-stream state machine (pure, unit-tested);
//! * [`replay`]: the bounded replay log of what was sent downstream (pure);
//! * [`server`]: the quinn-driven server (KV caches per session, compute on blocking threads,
//!   forwarding to the next hop, idle expiry, session limit, typed error replies).

pub mod faults;
pub mod machine;
pub mod replay;
pub mod server;

pub use server::{ServerOptions, SessionServer};
