//! Shared helpers of the node's integration tests.
#![allow(dead_code)]

pub mod api;
pub mod hops;
pub mod pipeline;

use tokio::sync::{Mutex, MutexGuard};

/// One heavy test at a time: meshes, testnets and model runs share two cores, and
/// deadlines measured under a competing test's load only get noisy. A tokio mutex, so
/// async tests can hold it across awaits, and a failed test does not poison it.
static HEAVY: Mutex<()> = Mutex::const_new(());

/// Holds the machine for one heavy test (released on drop, also when it panics); for
/// tests outside a runtime.
pub fn serial() -> MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// [`serial`] for async tests.
pub async fn serial_async() -> MutexGuard<'static, ()> {
    HEAVY.lock().await
}
