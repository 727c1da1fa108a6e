//! Which peers routes avoid because they failed generations, and for how long. Pure: every
//! call takes the time (`now_ms`, the clock announcements are judged by) from the caller.
//!
//! Why the ban grows and decays instead of a fixed time: one failure of a peer is most
//! likely churn (it died, it restarted, a link hiccuped), so a short ban lets a recovered
//! peer back soon; a peer that keeps failing is broken or overloaded, and retrying it
//! every 30 s costs every request that lands on it a failover. So each failure within
//! the memory of the last doubles the ban ([`BanPolicy::base`], 2x, 4x, ... up to
//! [`BanPolicy::cap`]), and each quiet period without one forgets a failure.
//!
//! A ban is lifted at once when the peer announces a newer incarnation (`started_at_ms`
//! after the ban): a restarted node did not fail anyone yet. Its failure count is kept
//! (and decays as usual), so a node in a crash loop is not welcomed back at full trust
//! on every restart.
//!
//! Only the peer's own signed record can say it restarted: bans are keyed by [`PeerId`],
//! and the caller takes `started_at` from the newest verified record of that very peer
//! ([`super::state::MeshSnapshot::started_at`]), which the table keys by its signer.
//! Since a hostile peer can sign a fresh `started_at` whenever it likes, a restart
//! forgives only while few failures are remembered ([`BanPolicy::restart_forgives`]):
//! past that, a ban runs its full term whatever the peer announces.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;

/// How bans grow and decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    /// The ban after a first failure.
    pub base: Duration,
    /// The longest ban, however many failures.
    pub cap: Duration,
    /// Each period this long without a failure forgets one.
    pub quiet: Duration,
    /// A restart lifts a ban early only while the peer's remembered failures are at most
    /// this many: an honest node restarts after a crash or two, a peer that keeps failing
    /// and keeps "restarting" serves its bans.
    pub restart_forgives: u32,
}

impl Default for BanPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(300),
            quiet: Duration::from_secs(120),
            restart_forgives: 3,
        }
    }
}

impl BanPolicy {
    /// The ban after the `failures`-th failure in a row (1-based).
    pub fn ban_for(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Failures remembered (after decay up to `last_ms`).
    failures: u32,
    /// When the last failure was recorded (decay counts from here).
    last_ms: u64,
    /// The ban ends here (or earlier, on a restart).
    until_ms: u64,
}

impl Entry {
    /// Failures still remembered at `now_ms`.
    fn failures_at(&self, now_ms: u64, quiet: Duration) -> u32 {
        let quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX).max(1);
        let forgotten = now_ms.saturating_sub(self.last_ms) / quiet_ms;
        self.failures
            .saturating_sub(u32::try_from(forgotten).unwrap_or(u32::MAX))
    }
}

/// The peers that failed, and their bans. Keyed by peer id: what the blame rules name,
/// and what only the peer itself can sign a restart for.
#[derive(Clone, Debug, Default)]
pub struct Bans {
    policy: BanPolicy,
    entries: HashMap<PeerId, Entry>,
}

impl Bans {
    /// No bans yet, under `policy`.
    pub fn new(policy: BanPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// Records a failure of `peer` at `now_ms`; returns the ban it earns.
    pub fn fail(&mut self, peer: PeerId, now_ms: u64) -> Duration {
        let remembered = self
            .entries
            .get(&peer)
            .map_or(0, |e| e.failures_at(now_ms, self.policy.quiet));
        let failures = remembered.saturating_add(1);
        let ban = self.policy.ban_for(failures);
        let until_ms = now_ms.saturating_add(u64::try_from(ban.as_millis()).unwrap_or(u64::MAX));
        self.entries.insert(
            peer,
            Entry {
                failures,
                last_ms: now_ms,
                until_ms,
            },
        );
        ban
    }

    /// How much longer `peer` is banned at `now_ms` (`None`: not banned). `started_at_ms`
    /// is the start time of the peer's newest incarnation, when known: one that started
    /// after the last failure is not banned.
    pub fn remaining(
        &self,
        peer: &PeerId,
        now_ms: u64,
        started_at_ms: Option<u64>,
    ) -> Option<Duration> {
        let e = self.entries.get(peer)?;
        let forgivable = e.failures_at(now_ms, self.policy.quiet) <= self.policy.restart_forgives;
        let restarted = forgivable && started_at_ms.is_some_and(|s| s > e.last_ms);
        (e.until_ms > now_ms && !restarted).then(|| Duration::from_millis(e.until_ms - now_ms))
    }

    /// The peers banned at `now_ms`; `started_at` gives a peer's newest incarnation. Also
    /// forgets the peers whose failures have all decayed.
    pub fn active(
        &mut self,
        now_ms: u64,
        started_at: impl Fn(&PeerId) -> Option<u64>,
    ) -> Vec<PeerId> {
        self.prune(now_ms);
        self.banned(now_ms, started_at)
    }

    /// Forgets the peers whose bans ran out and whose failures have all decayed.
    pub fn prune(&mut self, now_ms: u64) {
        let quiet = self.policy.quiet;
        self.entries
            .retain(|_, e| e.until_ms > now_ms || e.failures_at(now_ms, quiet) > 0);
    }

    /// The peers banned at `now_ms`, sorted; `started_at` gives a peer's newest
    /// incarnation.
    pub fn banned(&self, now_ms: u64, started_at: impl Fn(&PeerId) -> Option<u64>) -> Vec<PeerId> {
        let mut banned: Vec<PeerId> = self
            .entries
            .keys()
            .filter(|c| self.remaining(c, now_ms, started_at(c)).is_some())
            .copied()
            .collect();
        banned.sort();
        banned
    }

    /// Peers with an entry (banned now, or failures still remembered).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Failures of `peer` still remembered at `now_ms`.
    pub fn failures(&self, peer: &PeerId, now_ms: u64) -> u32 {
        self.entries
            .get(peer)
            .map_or(0, |e| e.failures_at(now_ms, self.policy.quiet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn peer(b: u8) -> PeerId {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([b; 32]).unwrap();
        key.public().to_peer_id()
    }

    fn sorted(mut v: Vec<PeerId>) -> Vec<PeerId> {
        v.sort();
        v
    }

    #[test]
    fn bans_double_per_failure_up_to_the_cap() {
        let p = BanPolicy::default();
        let secs: Vec<u64> = (1..=9).map(|n| p.ban_for(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(p.ban_for(u32::MAX), p.cap);
        let mut b = Bans::default();
        let t = 1_000_000;
        assert_eq!(b.fail(peer(1), t), Duration::from_secs(5));
        // Failing again (after the first ban ran out, within the quiet period).
        assert_eq!(b.fail(peer(1), t + 6 * S), Duration::from_secs(10));
        assert_eq!(b.fail(peer(1), t + 20 * S), Duration::from_secs(20));
        assert_eq!(b.failures(&peer(1), t + 20 * S), 3);
    }

    #[test]
    fn a_ban_runs_out() {
        let mut b = Bans::default();
        let t = 1_000_000;
        b.fail(peer(1), t);
        assert_eq!(b.active(t + 4_999, |_| None), vec![peer(1)]);
        assert_eq!(
            b.remaining(&peer(1), t + 4_000, None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.active(t + 5 * S, |_| None), vec![]);
        assert_eq!(b.remaining(&peer(1), t + 5 * S, None), None);
        assert_eq!(b.active(t, |_| None), vec![peer(1)], "time is the caller's");
    }

    #[test]
    fn quiet_periods_forget_failures() {
        let mut b = Bans::default();
        let t = 1_000_000;
        for i in 0..4 {
            b.fail(peer(1), t + i * S);
        }
        assert_eq!(b.failures(&peer(1), t + 3 * S), 4);
        // Two quiet periods after the last failure: two forgotten; the next ban is the
        // third failure's, not the fifth's.
        let later = t + 3 * S + 2 * 120 * S;
        assert_eq!(b.failures(&peer(1), later), 2);
        assert_eq!(b.fail(peer(1), later), Duration::from_secs(20));
        // Long quiet: everything forgotten, and the entry dropped.
        let much_later = later + 10 * 120 * S;
        assert_eq!(b.active(much_later, |_| None), vec![]);
        assert!(b.entries.is_empty());
        assert_eq!(b.fail(peer(1), much_later), Duration::from_secs(5));
    }

    #[test]
    fn a_restart_lifts_the_ban_but_not_the_memory() {
        let mut b = Bans::default();
        let t = 1_000_000;
        b.fail(peer(1), t);
        b.fail(peer(2), t);
        // Peer 1 announces an incarnation started after its failure; peer 2 the old one.
        let started = |c: &PeerId| {
            if *c == peer(1) {
                Some(t + 1)
            } else {
                Some(t - 60 * S)
            }
        };
        assert_eq!(b.active(t + S, started), vec![peer(2)]);
        assert_eq!(b.remaining(&peer(1), t + S, started(&peer(1))), None);
        // Failing again soon after the restart: the second failure's ban.
        assert_eq!(b.fail(peer(1), t + 2 * S), Duration::from_secs(10));
        assert_eq!(b.active(t + 3 * S, started), sorted(vec![peer(1), peer(2)]));
    }

    #[test]
    fn only_the_banned_peers_own_restart_lifts_its_ban() {
        let mut b = Bans::default();
        let t = 1_000_000;
        b.fail(peer(1), t);
        // Another peer restarting says nothing about peer 1.
        let others_restart = |c: &PeerId| (*c == peer(2)).then_some(t + S);
        assert_eq!(b.active(t + 2 * S, others_restart), vec![peer(1)]);
        // Peer 1's own incarnation from before the failure does not lift it either.
        assert_eq!(b.active(t + 2 * S, |_| Some(t - 1)), vec![peer(1)]);
        assert_eq!(b.active(t + 2 * S, |_| Some(t + S)), vec![]);
    }

    #[test]
    fn a_peer_that_keeps_restarting_serves_its_bans() {
        let mut b = Bans::default();
        let t = 1_000_000;
        // It signs a fresh incarnation after every failure.
        let restarts = |c: &PeerId| (*c == peer(1)).then_some(u64::MAX);
        for i in 0..3 {
            b.fail(peer(1), t + i * S);
            assert_eq!(
                b.active(t + i * S, restarts),
                vec![],
                "failure {i} forgiven"
            );
        }
        let ban = b.fail(peer(1), t + 3 * S);
        assert_eq!(ban, Duration::from_secs(40));
        assert_eq!(b.active(t + 4 * S, restarts), vec![peer(1)]);
        assert!(b.remaining(&peer(1), t + 4 * S, Some(u64::MAX)).is_some());
    }
}
