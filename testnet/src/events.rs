//! What `up` tells its caller while it works, and how the caller stops it half way. The
//! library draws nothing itself: the `lamina` binary turns the events into progress bars
//! (hidden when stderr is not a terminal) and tests ignore them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::NodeState;

/// A step of one node's start, in the order they happen.
#[derive(Debug)]
pub enum UpEvent<'a> {
    /// The node's process was started (again, after a port clash) and loads its layers.
    Started {
        index: usize,
        id: &'a str,
        layers: &'a str,
        log: &'a Path,
    },
    /// The node loaded its layers and listens; the mesh may not cover the model yet.
    Ready { index: usize, node: &'a NodeState },
    /// The node sees the model covered: it answers requests.
    Serving { index: usize, node: &'a NodeState },
}

/// Receives [`UpEvent`]s; called on the thread that runs `up`, so it must be quick.
#[derive(Clone)]
pub struct Observer(Arc<dyn Fn(&UpEvent<'_>) + Send + Sync>);

impl Observer {
    pub fn new(f: impl Fn(&UpEvent<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn emit(&self, e: &UpEvent<'_>) {
        (self.0)(e)
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Set from another thread (a signal handler's) to make a running `up` give up: it then
/// stops the nodes it started and returns an error (the caller knows why: it set the flag).
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
