//! Shared helpers of the node's integration tests.
#![allow(dead_code)]

pub mod api;
pub mod hops;
pub mod pipeline;
