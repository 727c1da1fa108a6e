//! Connections counted in all and per peer (a data-plane peer id, an HTTP client's IP
//! address): the accept loop takes a [`ConnGuard`] for each connection it keeps, and the
//! count drops with the guard.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefused {
    #[error("the node holds its limit of {0} connections")]
    Total(usize),
    #[error("the peer holds its limit of {0} connections")]
    PerPeer(usize),
}

impl ConnRefused {
    /// The bound this refusal counts against (`lamina_refused{bound}`).
    pub fn bound(&self) -> super::Bound {
        match self {
            Self::Total(_) => super::Bound::Connections,
            Self::PerPeer(_) => super::Bound::PeerConnections,
        }
    }
}

/// The connections a node holds, by peer (`K`: a data-plane peer id, `None` for one that
/// proved none; an HTTP client's IP address).
#[derive(Debug)]
pub struct Connections<K = Option<PeerId>> {
    inner: Arc<Mutex<Counts<K>>>,
    max_total: usize,
    max_per_peer: usize,
}

impl<K> Clone for Connections<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_total: self.max_total,
            max_per_peer: self.max_per_peer,
        }
    }
}

#[derive(Debug)]
struct Counts<K> {
    total: usize,
    /// Only peers with at least one connection: a departed peer leaves no entry.
    by_peer: HashMap<K, usize>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct ConnGuard<K: Hash + Eq = Option<PeerId>> {
    inner: Arc<Mutex<Counts<K>>>,
    peer: K,
}

impl<K: Hash + Eq + Clone> Connections<K> {
    pub fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Counts {
                total: 0,
                by_peer: HashMap::new(),
            })),
            max_total,
            max_per_peer,
        }
    }

    /// Counts a connection from `peer` if both limits allow it.
    pub fn admit(&self, peer: K) -> Result<ConnGuard<K>, ConnRefused> {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.max_total {
            return Err(ConnRefused::Total(self.max_total));
        }
        let n = c.by_peer.entry(peer.clone()).or_insert(0);
        if *n >= self.max_per_peer {
            return Err(ConnRefused::PerPeer(self.max_per_peer));
        }
        *n += 1;
        c.total += 1;
        Ok(ConnGuard {
            inner: self.inner.clone(),
            peer,
        })
    }

    /// Connections held now: in all, and the number of peers they come from.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (c.total, c.by_peer.len())
    }
}

impl<K: Hash + Eq> Drop for ConnGuard<K> {
    fn drop(&mut self) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_peer_and_departed_peers_leave_no_entry() {
        let c = Connections::new(3, 2);
        let (a, b) = (Some(PeerId::random()), Some(PeerId::random()));
        let a1 = c.admit(a).unwrap();
        let a2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).unwrap_err(), ConnRefused::PerPeer(2));
        let b1 = c.admit(b).unwrap();
        assert_eq!(c.admit(None).unwrap_err(), ConnRefused::Total(3));
        assert_eq!(c.counts(), (3, 2));
        drop(a1);
        let _a3 = c.admit(a).unwrap();
        drop((a2, b1));
        assert_eq!(c.counts(), (1, 1), "b left no entry");
    }
}
