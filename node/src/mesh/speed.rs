//! The speed book: what this node measured of each hop's speed, and what routing should
//! believe of it. Pure: "now" is an argument.
//!
//! A hop's announced tokens/s is its own word, and a hop that inflates it would attract
//! every route. So the announced figure is a prior only: once this node measured a hop
//! (see [`super::probe`]), routing uses the measurement, and the prior counts again only
//! as the measurement ages (its weight halves every [`SpeedPolicy::half_life_ms`], and
//! probes renew it every minute while the hop is a route candidate). A hop measured far
//! below its claim ([`SpeedPolicy::demote_below`]) is *demoted*: its claim is ignored from
//! then on, however old its measurement, for as long as this node remembers the peer.
//!
//! What "measured" means: one decode step through the hop's whole announced range, end to
//! end as this node sees it, minus the RTT ping measured: the same quantity the claim
//! names, plus the hop's per-step overhead (framing, the wire). On a model so small that
//! the overhead outweighs the compute, honest hops measure well below their compute-only
//! claims too and are demoted as well; they are then ranked by measurement, which is what
//! routing should use anyway.

use std::collections::HashMap;

use libp2p::PeerId;

/// How measurements and claims are weighed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeedPolicy {
    /// A hop whose measured speed is below its claim times this is demoted. Default 1/4.
    pub demote_below: f64,
    /// Weight of a new measurement in the running estimate. Default 0.5: a hop that slowed
    /// down is believed slower after one probe, half of it.
    pub alpha: f64,
    /// A measurement's weight against the claim halves this often (hops not demoted).
    /// Default 10 min: ten probe intervals.
    pub half_life_ms: u64,
}

impl Default for SpeedPolicy {
    fn default() -> Self {
        Self {
            demote_below: 0.25,
            alpha: 0.5,
            half_life_ms: 600_000,
        }
    }
}

/// What the book holds of one hop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Running estimate of its tokens/s (over the probes so far).
    pub tokens_per_sec: f64,
    /// When the last measurement was taken.
    pub at_ms: u64,
    /// Probes that measured it.
    pub probes: u32,
    /// Measured far below its claim: the claim is ignored from then on.
    pub demoted: bool,
}

/// The speed book of one node.
#[derive(Clone, Debug, Default)]
pub struct SpeedBook {
    policy: SpeedPolicy,
    entries: HashMap<PeerId, Measured>,
}

impl SpeedBook {
    pub fn new(policy: SpeedPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// Records a measurement of `peer` (`tokens_per_sec`) at `now_ms`, against its
    /// current claim; returns the hop's state afterwards. A figure that is not a
    /// positive finite number is ignored.
    pub fn record(
        &mut self,
        peer: PeerId,
        tokens_per_sec: f64,
        claimed: f64,
        now_ms: u64,
    ) -> Option<Measured> {
        if !(tokens_per_sec.is_finite() && tokens_per_sec > 0.0) {
            return self.entries.get(&peer).copied();
        }
        let alpha = self.policy.alpha;
        let e = self
            .entries
            .entry(peer)
            .and_modify(|m| {
                m.tokens_per_sec = alpha * tokens_per_sec + (1.0 - alpha) * m.tokens_per_sec;
                m.at_ms = now_ms;
                m.probes = m.probes.saturating_add(1);
            })
            .or_insert(Measured {
                tokens_per_sec,
                at_ms: now_ms,
                probes: 1,
                demoted: false,
            });
        if claimed.is_finite() && e.tokens_per_sec < claimed * self.policy.demote_below {
            e.demoted = true;
        }
        Some(*e)
    }

    /// What routing should take `peer`'s tokens/s to be at `now_ms`, given its current
    /// claim: the claim when unmeasured; the measurement when demoted; otherwise the
    /// measurement, giving way to the claim as it ages.
    pub fn effective(&self, peer: &PeerId, claimed: f64, now_ms: u64) -> f64 {
        let Some(m) = self.entries.get(peer) else {
            return claimed;
        };
        if m.demoted || !claimed.is_finite() || claimed <= 0.0 {
            return m.tokens_per_sec;
        }
        let age = now_ms.saturating_sub(m.at_ms) as f64;
        let w = 0.5f64.powf(age / self.policy.half_life_ms.max(1) as f64);
        // Blend the costs (seconds per token), not the speeds: a route adds costs.
        let secs = w / m.tokens_per_sec + (1.0 - w) / claimed;
        1.0 / secs
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Measured> {
        self.entries.get(peer)
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    /// The peers with an entry.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.entries.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_is_a_prior_until_measured() {
        let mut b = SpeedBook::default();
        let p = PeerId::random();
        assert_eq!(b.effective(&p, 100.0, 0), 100.0);
        let m = b.record(p, 80.0, 100.0, 1000).unwrap();
        assert!(!m.demoted);
        assert_eq!(b.effective(&p, 100.0, 1000), 80.0);
        // A later measurement moves the estimate halfway.
        b.record(p, 40.0, 100.0, 2000);
        assert_eq!(b.effective(&p, 100.0, 2000), 60.0);
    }

    #[test]
    fn a_measurement_decays_back_to_the_claim() {
        let mut b = SpeedBook::default();
        let p = PeerId::random();
        b.record(p, 50.0, 100.0, 0);
        let half = SpeedPolicy::default().half_life_ms;
        // One half-life: half the weight on each cost: 1 / (0.5/50 + 0.5/100).
        let e = b.effective(&p, 100.0, half);
        assert!((e - 1.0 / (0.5 / 50.0 + 0.5 / 100.0)).abs() < 1e-9, "{e}");
        assert!((b.effective(&p, 100.0, 100 * half) - 100.0).abs() < 1e-6);
    }

    #[test]
    fn a_hop_measured_far_below_its_claim_loses_the_claim_for_good() {
        let mut b = SpeedBook::default();
        let p = PeerId::random();
        let m = b.record(p, 10.0, 1000.0, 0).unwrap();
        assert!(m.demoted);
        // However old the measurement, and whatever it claims now.
        assert_eq!(b.effective(&p, 1000.0, u64::MAX / 2), 10.0);
        assert_eq!(b.effective(&p, 1e9, 0), 10.0);
        // Measuring it faster later raises its figure but keeps it demoted.
        let m = b.record(p, 30.0, 1000.0, 10).unwrap();
        assert!(m.demoted);
        assert_eq!(b.effective(&p, 1000.0, 10), 20.0);
        b.forget(&p);
        assert!(b.is_empty());
    }

    #[test]
    fn nonsense_measurements_are_ignored() {
        let mut b = SpeedBook::default();
        let p = PeerId::random();
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(b.record(p, bad, 100.0, 0), None);
        }
        assert_eq!(b.effective(&p, 100.0, 0), 100.0);
    }
}
