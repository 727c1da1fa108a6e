//! Counts of refusals by the bound that refused, for `/metrics`
//! (`lamina_refused_total{bound}`): an operator sees which limit peers and clients hit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A bound that refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bound {
    /// `OpenSession` with every session slot taken.
    Sessions,
    /// `OpenSession` whose KV reservation does not fit the budget.
    KvBudget,
    /// A `Forward` of more rows than a step may have.
    StepRows,
    /// A stream that did not open its session in time.
    OpenDeadline,
    /// A frame over the stream's size limit.
    FrameSize,
    /// A send the peer did not take in time.
    SendDeadline,
    /// An incoming connection over the total.
    Connections,
    /// An incoming connection over the per-peer limit.
    PeerConnections,
    /// An incoming connection while too many handshakes were in flight.
    Handshakes,
    /// An HTTP connection over the cap.
    HttpConnections,
    /// An HTTP connection over the cap of its IP address.
    HttpIpConnections,
    /// An HTTP request whose headers or body came too slowly.
    HttpDeadline,
    /// An HTTP request body over the size limit.
    HttpBody,
}

impl Bound {
    /// Every bound, in the order [`Refusals::snapshot`] lists them.
    pub const ALL: [Bound; 13] = [
        Bound::Sessions,
        Bound::KvBudget,
        Bound::StepRows,
        Bound::OpenDeadline,
        Bound::FrameSize,
        Bound::SendDeadline,
        Bound::Connections,
        Bound::PeerConnections,
        Bound::Handshakes,
        Bound::HttpConnections,
        Bound::HttpIpConnections,
        Bound::HttpDeadline,
        Bound::HttpBody,
    ];

    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Bound::Sessions => "sessions",
            Bound::KvBudget => "kv_budget",
            Bound::StepRows => "step_rows",
            Bound::OpenDeadline => "open_deadline",
            Bound::FrameSize => "frame_size",
            Bound::SendDeadline => "send_deadline",
            Bound::Connections => "connections",
            Bound::PeerConnections => "peer_connections",
            Bound::Handshakes => "handshakes",
            Bound::HttpConnections => "http_connections",
            Bound::HttpIpConnections => "http_ip_connections",
            Bound::HttpDeadline => "http_deadline",
            Bound::HttpBody => "http_body",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&b| b == self).unwrap_or(0)
    }
}

/// Refusal counters, shared (cloning shares them).
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    counts: Arc<[AtomicU64; 13]>,
}

impl Refusals {
    /// Counts one refusal by `bound`.
    pub fn count(&self, bound: Bound) {
        if let Some(c) = self.counts.get(bound.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals by `bound` so far.
    pub fn get(&self, bound: Bound) -> u64 {
        self.counts
            .get(bound.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every bound with its count.
    pub fn snapshot(&self) -> Vec<(Bound, u64)> {
        Bound::ALL.iter().map(|&b| (b, self.get(b))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_bound() {
        let r = Refusals::default();
        r.count(Bound::KvBudget);
        r.clone().count(Bound::KvBudget);
        r.count(Bound::HttpBody);
        assert_eq!(r.get(Bound::KvBudget), 2);
        assert_eq!(r.get(Bound::Sessions), 0);
        assert_eq!(r.snapshot().len(), Bound::ALL.len());
        let labels: std::collections::HashSet<_> = Bound::ALL.iter().map(|b| b.label()).collect();
        assert_eq!(labels.len(), Bound::ALL.len());
    }
}
