//! Faults a session server can be told to inject into its own sessions.
//!
//! Why a hook in the real server rather than a fake one: the churn harness
//! (`tests/churn_harness.rs`) must exercise the very code that runs in production (framing,
//! relaying, deadlines, failover) with peers that crash, hang or talk garbage. Faults are
//! keyed on step numbers, not on times, so a seeded scenario fails at the same point of the
//! generation on any machine. A server without a plan (`ServerOptions::faults` is `None`,
//! the only setting the daemon uses) pays one branch per step.
//!
//! Every armed fault fires once: on the first `Forward` of that step number this server
//! receives, in whichever session, and is then gone (a replayed step on a new chain does
//! not fail again).

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::Duration;

use lamina_protocol::{ErrorCode, Message};

use crate::dataplane::{FramedRecv, FramedSend};

/// One injected failure, at a step number (0 is the prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Closes the connection the step arrived on, as a crashed process would: the
    /// upstream sees its stream fail.
    DropConnectionAtStep(u64),
    /// Never answers the step and holds the stream open, as a hung process would, until
    /// the upstream gives up on it.
    StallAtStep(u64),
    /// Answers the step with bytes that are no frame.
    GarbageAtStep(u64),
    /// Answers the step with an `Internal` error reply.
    ErrorAtStep(u64),
}

impl Fault {
    /// The step the fault fires at.
    pub fn step(&self) -> u64 {
        match *self {
            Fault::DropConnectionAtStep(s)
            | Fault::StallAtStep(s)
            | Fault::GarbageAtStep(s)
            | Fault::ErrorAtStep(s) => s,
        }
    }
}

/// The faults armed on one server. Shared (`Arc`) between the server and whoever arms it.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Vec<Fault>>,
}

impl FaultPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Arms `fault` (once).
    pub fn arm(&self, fault: Fault) {
        self.lock().push(fault);
    }

    /// Removes and returns the first fault armed for `step`, if any.
    pub fn take(&self, step: u64) -> Option<Fault> {
        let mut armed = self.lock();
        let i = armed.iter().position(|f| f.step() == step)?;
        Some(armed.remove(i))
    }

    /// The faults that have not fired yet (a test checks its fault really happened).
    pub fn pending(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Disarms everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl FaultPlan {
    /// The fault armed for `msg`, if it is a `Forward` of an armed step (taken: it fires
    /// once).
    pub fn take_for(&self, msg: &Message) -> Option<Fault> {
        match msg {
            Message::Forward(f) => self.take(f.step),
            _ => None,
        }
    }
}

/// Fails the step as `fault` says; whether the stream goes on. `conn` is the connection
/// the stream rides on (a dropped connection closes it); `hold` bounds a stall.
pub async fn inject(
    fault: Fault,
    conn: Option<&quinn::Connection>,
    tx: &mut FramedSend,
    rx: &mut FramedRecv,
    hold: Duration,
) -> ControlFlow<()> {
    tracing::warn!(?fault, "injecting a fault");
    match fault {
        Fault::DropConnectionAtStep(_) => {
            if let Some(c) = conn {
                c.close(0u32.into(), b"injected fault");
            }
            ControlFlow::Break(())
        }
        Fault::StallAtStep(_) => {
            // Hold the stream without answering until the upstream drops it.
            let _ =
                tokio::time::timeout(hold, async { while let Ok(Some(_)) = rx.recv().await {} })
                    .await;
            ControlFlow::Break(())
        }
        Fault::GarbageAtStep(_) => {
            // A length prefix far over any limit: the reader's decoder fails at once.
            let _ = tx.send_raw(&[0xff; 16]).await;
            ControlFlow::Continue(())
        }
        Fault::ErrorAtStep(s) => {
            let e = Message::error(ErrorCode::Internal, format!("injected fault at step {s}"));
            let _ = tx.send(&e).await;
            ControlFlow::Continue(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_once_at_its_step() {
        let p = FaultPlan::new();
        p.arm(Fault::StallAtStep(3));
        p.arm(Fault::ErrorAtStep(1));
        assert_eq!(p.take(0), None);
        assert_eq!(p.take(3), Some(Fault::StallAtStep(3)));
        assert_eq!(p.take(3), None, "fired already");
        assert_eq!(p.pending(), vec![Fault::ErrorAtStep(1)]);
        p.clear();
        assert_eq!(p.take(1), None);
    }
}
