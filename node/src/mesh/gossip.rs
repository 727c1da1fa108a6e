//! What a gossiped record costs before it reaches the table, bounded. Pure: "now" is an
//! argument, so every budget is tested without waiting.
//!
//! Every peer sends its whole table every second, so almost every record a node receives
//! is one it verified already. Verifying it again (an ed25519 check and a decode) for
//! every copy from every peer would cost peers x records signature checks a second, so a
//! record verified once is remembered by the hash of its signed bytes ([`VerifiedCache`])
//! and a copy costs one blake3 hash. What is new costs a verification, and each sending
//! peer has a budget of those ([`TokenBucket`]): a peer that floods fresh (or forged)
//! records gets its excess refused, cheaply, while the same records reach this node from
//! honest relays at their own budgets. Sync requests have a budget of their own, since each
//! answer carries the whole table.

use std::collections::{HashMap, HashSet};

use lamina_protocol::{
    AnnounceError, Announcement, MemberError, SignedAnnouncement, SignedRevocation,
};
use libp2p::PeerId;

use super::limits::MeshLimits;

/// The identity of a signed record: blake3 over its body, key and signature, each
/// length-prefixed (so no two different records hash the same bytes).
pub type RecordHash = [u8; 32];

pub fn record_hash(s: &SignedAnnouncement) -> RecordHash {
    let mut h = blake3::Hasher::new();
    for part in [&s.body, &s.public_key, &s.signature] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

/// The identity of a signed revocation: blake3 of its encoding.
pub fn revocation_hash(r: &SignedRevocation) -> RecordHash {
    *blake3::hash(&r.to_bytes()).as_bytes()
}

/// Revocations remembered as handled, at most: twice what a gate keeps
/// ([`crate::trust::gate::MAX_REVOCATIONS`]); past it the memory starts over.
const MAX_SEEN_REVOCATIONS: usize = 2 * crate::trust::gate::MAX_REVOCATIONS;

/// Why a gossiped record (or a sync request) was not taken. Each has a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender spent its verification budget: the record is dropped unverified (it
    /// comes again next round, from this peer or another).
    #[error("the sender is over its verification budget")]
    RateLimited,
    /// The sender asked for the table more often than its sync budget allows.
    #[error("the sender asks for the table too often")]
    SyncRateLimited,
    /// The record does not verify (signature, signer, fields, time).
    #[error(transparent)]
    Invalid(#[from] AnnounceError),
    /// Its signer is not a member of this node's mesh.
    #[error("its signer is not a member: {0}")]
    Gate(MemberError),
    /// The sender spent its budget of revocation checks (or of membership messages).
    #[error("the sender is over its revocation budget")]
    RevocationRateLimited,
    /// A new peer while the table holds [`super::table::MAX_RECORDS`] records.
    #[error("the table is full")]
    TableFull,
}

impl Refusal {
    /// The `reason` label of `lamina_gossip_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate",
            Refusal::SyncRateLimited => "sync_rate",
            Refusal::Gate(_) => "gate",
            Refusal::TableFull => "table_full",
            Refusal::RevocationRateLimited => "revocation_rate",
            Refusal::Invalid(e) => match e {
                AnnounceError::BadSignature | AnnounceError::BadKey(_) => "signature",
                AnnounceError::WrongSigner { .. } => "signer",
                AnnounceError::Expired { .. } => "expired",
                AnnounceError::FromTheFuture { .. } | AnnounceError::TtlTooLong { .. } => "time",
                _ => "malformed",
            },
        }
    }
}

/// A token bucket: `rate` tokens a second up to `burst`. Clock-free: the caller passes
/// the time, in milliseconds on any monotonic-enough clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: f64, now_ms: u64) -> Self {
        Self {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms` if there is one. Time going backwards refills nothing.
    pub fn take(&mut self, now_ms: u64, rate: f64, burst: f64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Records verified before, by [`record_hash`]. Two generations: lookups and inserts go
/// to the current one, and when it is full it becomes the previous one (dropping the
/// older). A record in use is seen every second, so it is promoted back before its
/// generation is dropped; what nobody sends any more falls out within two sweeps. Each
/// operation is O(1); there is no scan.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    cap: usize,
    current: HashMap<RecordHash, Announcement>,
    previous: HashMap<RecordHash, Announcement>,
}

impl VerifiedCache {
    /// At most `cap` records (two generations of `cap / 2`).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(2),
            ..Self::default()
        }
    }

    /// The record verified under `hash`, if remembered.
    pub fn get(&mut self, hash: &RecordHash) -> Option<Announcement> {
        if let Some(a) = self.current.get(hash) {
            return Some(a.clone());
        }
        let a = self.previous.remove(hash)?;
        self.insert(*hash, a.clone());
        Some(a)
    }

    pub fn insert(&mut self, hash: RecordHash, record: Announcement) {
        if self.current.len() >= self.cap / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(hash, record);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refusals so far, by reason label.
pub type RefusalCounts = std::collections::BTreeMap<&'static str, u64>;

/// The gossip intake: the verified cache and every peer's budgets.
#[derive(Debug)]
pub struct Intake {
    limits: MeshLimits,
    cache: VerifiedCache,
    verify: HashMap<PeerId, TokenBucket>,
    sync: HashMap<PeerId, TokenBucket>,
    /// Membership messages and revocation checks, per peer.
    member: HashMap<PeerId, TokenBucket>,
    revoke: HashMap<PeerId, TokenBucket>,
    /// Revocations already handled (learnt, or known), by hash: not checked again.
    revocations_seen: HashSet<RecordHash>,
    /// Records screened (every copy from every peer), for figures.
    pub received: u64,
    /// Records verified (cache misses that passed), for tests and figures.
    pub verified: u64,
    pub refused: RefusalCounts,
}

impl Intake {
    pub fn new(limits: MeshLimits) -> Self {
        Self {
            limits,
            cache: VerifiedCache::new(limits.verified_cache),
            verify: HashMap::new(),
            sync: HashMap::new(),
            member: HashMap::new(),
            revoke: HashMap::new(),
            revocations_seen: HashSet::new(),
            received: 0,
            verified: 0,
            refused: RefusalCounts::new(),
        }
    }

    /// Whether `from` may be answered a sync request at `now_ms`.
    pub fn admit_sync(&mut self, from: PeerId, now_ms: u64) -> Result<(), Refusal> {
        let (rate, burst) = (self.limits.sync_per_sec, self.limits.sync_burst);
        let b = self
            .sync
            .entry(from)
            .or_insert_with(|| TokenBucket::full(burst, now_ms));
        if b.take(now_ms, rate, burst) {
            Ok(())
        } else {
            Err(self.count(Refusal::SyncRateLimited))
        }
    }

    /// Whether `from`'s membership message may be read and answered at `now_ms` (each
    /// answer carries every revocation this node knows).
    pub fn admit_member(&mut self, from: PeerId, now_ms: u64) -> Result<(), Refusal> {
        let (rate, burst) = (self.limits.member_per_sec, self.limits.member_burst);
        let b = self
            .member
            .entry(from)
            .or_insert_with(|| TokenBucket::full(burst, now_ms));
        if b.take(now_ms, rate, burst) {
            Ok(())
        } else {
            Err(self.count(Refusal::RevocationRateLimited))
        }
    }

    /// Whether revocation `r` from `from` needs checking: `Ok(None)` when it was handled
    /// before (a hash, no signature check), `Ok(Some(hash))` when it is new and within
    /// `from`'s budget (pass the hash to [`revocation_handled`](Self::revocation_handled)
    /// once checked).
    pub fn screen_revocation(
        &mut self,
        from: PeerId,
        r: &SignedRevocation,
        now_ms: u64,
    ) -> Result<Option<RecordHash>, Refusal> {
        let hash = revocation_hash(r);
        if self.revocations_seen.contains(&hash) {
            return Ok(None);
        }
        let (rate, burst) = (
            self.limits.revocations_per_sec,
            self.limits.revocations_burst,
        );
        let b = self
            .revoke
            .entry(from)
            .or_insert_with(|| TokenBucket::full(burst, now_ms));
        if b.take(now_ms, rate, burst) {
            Ok(Some(hash))
        } else {
            Err(self.count(Refusal::RevocationRateLimited))
        }
    }

    /// Remembers a revocation as handled (a valid one, learnt or already known).
    pub fn revocation_handled(&mut self, hash: RecordHash) {
        if self.revocations_seen.len() >= MAX_SEEN_REVOCATIONS {
            self.revocations_seen.clear();
        }
        self.revocations_seen.insert(hash);
    }

    /// The record `signed` carries, verified at `now_ms`: from the cache when it was
    /// verified before (only its expiry is checked again: the rest of a verification does
    /// not depend on time, except a record from the future, which never got in), else
    /// verified on `from`'s budget.
    pub fn screen(
        &mut self,
        from: PeerId,
        signed: &SignedAnnouncement,
        now_ms: u64,
    ) -> Result<Announcement, Refusal> {
        self.received += 1;
        let hash = record_hash(signed);
        if let Some(a) = self.cache.get(&hash) {
            if !a.withdrawn && now_ms >= a.expires_at_ms {
                return Err(self.count(Refusal::Invalid(AnnounceError::Expired {
                    expires_at_ms: a.expires_at_ms,
                    now_ms,
                })));
            }
            return Ok(a);
        }
        let (rate, burst) = (self.limits.verify_per_sec, self.limits.verify_burst);
        let b = self
            .verify
            .entry(from)
            .or_insert_with(|| TokenBucket::full(burst, now_ms));
        if !b.take(now_ms, rate, burst) {
            return Err(self.count(Refusal::RateLimited));
        }
        match signed.verify(now_ms) {
            Ok(a) => {
                self.verified += 1;
                self.cache.insert(hash, a.clone());
                Ok(a)
            }
            Err(e) => Err(self.count(Refusal::Invalid(e))),
        }
    }

    /// Counts `r` and hands it back.
    pub fn count(&mut self, r: Refusal) -> Refusal {
        *self.refused.entry(r.reason()).or_insert(0) += 1;
        r
    }

    /// Keeps the budgets of the peers `keep` says yes to (the others departed).
    pub fn retain_peers(&mut self, keep: impl Fn(&PeerId) -> bool) {
        self.verify.retain(|p, _| keep(p));
        self.sync.retain(|p, _| keep(p));
        self.member.retain(|p, _| keep(p));
        self.revoke.retain(|p, _| keep(p));
    }

    /// The peers with a budget (some may appear twice).
    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.verify
            .keys()
            .chain(self.sync.keys())
            .chain(self.member.keys())
            .chain(self.revoke.keys())
            .copied()
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::tests::record;
    use libp2p::identity::Keypair;

    fn limits(rate: f64, burst: f64) -> MeshLimits {
        MeshLimits {
            verify_per_sec: rate,
            verify_burst: burst,
            verified_cache: 16,
            ..MeshLimits::default()
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = TokenBucket::full(3.0, 0);
        assert!((0..3).all(|_| b.take(0, 2.0, 3.0)));
        assert!(!b.take(0, 2.0, 3.0));
        assert!(!b.take(499, 2.0, 3.0));
        assert!(b.take(500, 2.0, 3.0));
        // A long pause refills the burst, no more.
        let got = (0..10).filter(|_| b.take(60_000, 2.0, 3.0)).count();
        assert_eq!(got, 3);
        // Time going backwards gives nothing.
        assert!(!b.take(1_000, 2.0, 3.0));
    }

    #[test]
    fn a_record_is_verified_once_then_served_from_the_cache() {
        let k = Keypair::generate_ed25519();
        let from = PeerId::random();
        let s = record(&k, 1, 1000, Some((0, 10))).sign(&k).unwrap();
        let mut i = Intake::new(limits(0.0, 1.0));
        assert_eq!(i.screen(from, &s, 1000).unwrap().seq, 1);
        // The budget (one verification, no refill) is spent; copies are free.
        for t in 0..100 {
            assert!(i.screen(from, &s, 1000 + t).is_ok());
        }
        assert_eq!(i.verified, 1);
        // Expiry is still checked on a cached record.
        assert_eq!(i.screen(from, &s, 10_000).unwrap_err().reason(), "expired");
        // Something new is over the budget.
        let s2 = record(&k, 2, 1000, Some((0, 10))).sign(&k).unwrap();
        assert_eq!(i.screen(from, &s2, 1000), Err(Refusal::RateLimited));
        assert_eq!(i.refused.get("rate"), Some(&1));
    }

    #[test]
    fn a_forged_copy_of_a_verified_record_is_not_a_cache_hit() {
        let k = Keypair::generate_ed25519();
        let from = PeerId::random();
        let s = record(&k, 1, 1000, None).sign(&k).unwrap();
        let mut i = Intake::new(limits(0.0, 10.0));
        i.screen(from, &s, 1000).unwrap();
        let mut forged = s.clone();
        forged.signature[3] ^= 1;
        assert_eq!(
            i.screen(from, &forged, 1000).unwrap_err().reason(),
            "signature"
        );
        let mut other_body = s;
        other_body.body[10] ^= 1;
        assert!(i.screen(from, &other_body, 1000).is_err());
        assert_eq!(i.verified, 1);
    }

    #[test]
    fn budgets_are_per_sending_peer() {
        let k = Keypair::generate_ed25519();
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let mut i = Intake::new(limits(1.0, 2.0));
        let recs: Vec<_> = (1..=4)
            .map(|n| record(&k, n, 1000, None).sign(&k).unwrap())
            .collect();
        assert!(i.screen(flooder, &recs[0], 1000).is_ok());
        assert!(i.screen(flooder, &recs[1], 1000).is_ok());
        assert_eq!(i.screen(flooder, &recs[2], 1000), Err(Refusal::RateLimited));
        // The same record from another peer is verified on that peer's budget.
        assert!(i.screen(honest, &recs[2], 1000).is_ok());
        // And a second later the flooder has one more.
        assert!(i.screen(flooder, &recs[3], 2000).is_ok());
        i.retain_peers(|p| *p == honest);
        assert_eq!(i.peer_ids().collect::<Vec<_>>(), vec![honest]);
    }

    #[test]
    fn sync_requests_have_their_own_budget() {
        let mut i = Intake::new(MeshLimits {
            sync_per_sec: 1.0,
            sync_burst: 2.0,
            ..MeshLimits::default()
        });
        let p = PeerId::random();
        assert!(i.admit_sync(p, 0).is_ok());
        assert!(i.admit_sync(p, 0).is_ok());
        assert_eq!(i.admit_sync(p, 10), Err(Refusal::SyncRateLimited));
        assert!(i.admit_sync(p, 1010).is_ok());
        assert_eq!(i.refused.get("sync_rate"), Some(&1));
    }

    #[test]
    fn a_revocation_is_checked_once_and_new_ones_are_budgeted() {
        use lamina_protocol::{MeshKey, Revocation};
        let k = libp2p::identity::ed25519::Keypair::generate();
        let mesh = MeshKey::from_bytes(k.public().to_bytes());
        let rev = || {
            let r = Revocation {
                mesh,
                peer: PeerId::random().to_bytes(),
                issued_unix: 1,
            };
            SignedRevocation::sign(&r, &k).unwrap()
        };
        let mut i = Intake::new(MeshLimits {
            revocations_per_sec: 0.0,
            revocations_burst: 2.0,
            member_per_sec: 0.0,
            member_burst: 1.0,
            ..MeshLimits::default()
        });
        let from = PeerId::random();
        let known = rev();
        let h = i.screen_revocation(from, &known, 0).unwrap().unwrap();
        i.revocation_handled(h);
        for _ in 0..10 {
            assert_eq!(i.screen_revocation(from, &known, 0), Ok(None));
        }
        assert!(i.screen_revocation(from, &rev(), 0).unwrap().is_some());
        assert_eq!(
            i.screen_revocation(from, &rev(), 0),
            Err(Refusal::RevocationRateLimited)
        );
        assert!(i.admit_member(from, 0).is_ok());
        assert!(i.admit_member(from, 0).is_err());
        assert_eq!(i.refused.get("revocation_rate"), Some(&2));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_in_use() {
        let mut c = VerifiedCache::new(4);
        let k = Keypair::generate_ed25519();
        let a = record(&k, 1, 0, None);
        let hot = [0u8; 32];
        c.insert(hot, a.clone());
        for n in 1..100u8 {
            c.insert([n; 32], a.clone());
            assert!(c.get(&hot).is_some(), "the record in use stays ({n})");
            assert!(c.len() <= 4);
        }
        assert!(c.get(&[1; 32]).is_none(), "an old one is gone");
    }
}
