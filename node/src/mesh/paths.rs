//! How this node reaches each peer: its connections to it and what kind each is. Pure:
//! the event loop feeds it connection events.
//!
//! Why per connection: a peer behind a NAT is first reached through a relay (a circuit),
//! then, where the NATs allow, DCUtR punches a direct connection beside it; both exist for
//! a while, and `/status`, routing and the RTTs want the best one. Ranked `hole-punched`
//! (made by DCUtR) and `direct` (dialed or accepted normally) over `relayed` (a circuit);
//! a peer with a punched connection shows as `hole-punched` even when a plain dial got
//! through beside it (that dial passed through the punched mapping).

use std::collections::{HashMap, HashSet};

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;

/// What kind of connection reaches a peer, worst first (so `max` is the best).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// Through a relay's circuit: it costs the relay's bandwidth and a detour.
    Relayed,
    /// Direct, dialed or accepted at an address that was reachable.
    Direct,
    /// Direct, made by DCUtR's simultaneous dial through the NATs.
    HolePunched,
}

impl Path {
    /// The name `/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relayed => "relayed",
            Self::HolePunched => "hole-punched",
            Self::Direct => "direct",
        }
    }
}

/// The connections to every connected peer.
#[derive(Clone, Debug, Default)]
pub struct Paths {
    conns: HashMap<PeerId, HashMap<ConnectionId, Path>>,
    /// Connections DCUtR reported before the swarm reported them established (the two
    /// events come in either order).
    punched_early: HashSet<ConnectionId>,
}

/// Connections DCUtR may report ahead of their establishment, at most (each is taken
/// out again when it is established; the cap only bounds reports of connections that
/// never were).
const MAX_PUNCHED_EARLY: usize = 64;

impl Paths {
    /// A connection opened (`relayed`: its address goes through a circuit). Returns its
    /// path.
    pub fn established(&mut self, peer: PeerId, conn: ConnectionId, relayed: bool) -> Path {
        let path = if relayed {
            Path::Relayed
        } else if self.punched_early.remove(&conn) {
            Path::HolePunched
        } else {
            Path::Direct
        };
        self.conns.entry(peer).or_default().insert(conn, path);
        path
    }

    /// DCUtR made `conn` to `peer`: a direct connection through the NATs.
    pub fn hole_punched(&mut self, peer: PeerId, conn: ConnectionId) {
        match self.conns.get_mut(&peer).and_then(|c| c.get_mut(&conn)) {
            Some(p) => {
                if *p == Path::Direct {
                    *p = Path::HolePunched;
                }
            }
            None => {
                if self.punched_early.len() >= MAX_PUNCHED_EARLY {
                    self.punched_early.clear();
                }
                self.punched_early.insert(conn);
            }
        }
    }

    /// A connection closed.
    pub fn closed(&mut self, peer: PeerId, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(&peer) {
            c.remove(&conn);
            if c.is_empty() {
                self.conns.remove(&peer);
            }
        }
    }

    /// The best way this node reaches `peer` now, if it is connected.
    pub fn best(&self, peer: &PeerId) -> Option<Path> {
        self.conns.get(peer)?.values().copied().max()
    }

    /// The kind of connection `conn` to `peer`, if known.
    pub fn of(&self, peer: &PeerId, conn: ConnectionId) -> Option<Path> {
        self.conns.get(peer)?.get(&conn).copied()
    }

    /// `peer`'s relayed connections, while it has a better one too (they only cost the
    /// relay now, and a session stream could land on one).
    pub fn redundant_relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        let Some(c) = self.conns.get(peer) else {
            return Vec::new();
        };
        if !c.values().any(|p| *p > Path::Relayed) {
            return Vec::new();
        }
        c.iter()
            .filter(|(_, p)| **p == Path::Relayed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The best path to every connected peer.
    pub fn summary(&self) -> HashMap<PeerId, Path> {
        self.conns
            .keys()
            .filter_map(|p| Some((*p, self.best(p)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_connection_names_the_path_and_closes_are_tracked() {
        let mut p = Paths::default();
        let peer = PeerId::random();
        let (relay, punched, other) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        assert_eq!(p.best(&peer), None);
        p.established(peer, relay, true);
        assert_eq!(p.best(&peer), Some(Path::Relayed));
        assert!(p.redundant_relayed(&peer).is_empty(), "the only way there");
        p.established(peer, punched, false);
        p.hole_punched(peer, punched);
        assert_eq!(p.best(&peer), Some(Path::HolePunched));
        assert_eq!(p.redundant_relayed(&peer), vec![relay]);
        // A relayed connection never becomes "hole-punched".
        p.hole_punched(peer, relay);
        assert_eq!(p.of(&peer, relay), Some(Path::Relayed));
        p.established(peer, other, false);
        assert_eq!(
            p.best(&peer),
            Some(Path::HolePunched),
            "a dial through the hole"
        );
        p.closed(peer, other);
        p.closed(peer, relay);
        assert_eq!(p.best(&peer), Some(Path::HolePunched));
        p.closed(peer, punched);
        assert_eq!(p.best(&peer), None);
        assert!(p.summary().is_empty());
        // DCUtR's report may come before the swarm's.
        let early = ConnectionId::new_unchecked(4);
        p.hole_punched(peer, early);
        assert_eq!(p.established(peer, early, false), Path::HolePunched);
        assert_eq!(p.best(&peer), Some(Path::HolePunched));
    }
}
