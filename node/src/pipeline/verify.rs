//! Spot-check verification: the entry re-runs a seeded random fraction of a generation's
//! steps on other servers of the same layers and compares what each hop signed.
//!
//! How: a *shadow* session on a second chain (as many hops as the routes allow on other
//! peers) replays the generation's confirmed steps in their original chunks, lazily, up
//! to the sampled step, so its KV caches are computed exactly as the primary's should be.
//! Every hop of both chains signed, per step, the digest of its input and of its output
//! (`lamina_protocol::evidence`). With f32 activations an honest computation is bit-exact
//! whoever runs it (same kernels, whatever the split), so at every layer boundary the two
//! chains share, the digests must be equal. The first step and the lowest boundary where
//! they differ, above a boundary where they agree, localize the disagreement to the hops
//! covering those layers on each side ([`first_disagreement`]). A *third* chain that
//! avoids both sides' suspects replays up to that step and decides: the side it agrees
//! with is right, and the other side's single suspect is banned by its peer id. If both
//! sides name the same peer (no other server of those layers), it contradicted itself:
//! banned without a third opinion. Without a majority nobody is banned; both sides'
//! suspects are avoided.
//!
//! What the client sees: a sampled step is checked before its token is handed to the
//! generation, and when the primary chain loses, the step's token is the majority's, the
//! primary session is dropped, and the generation continues on a chain without the
//! culprit (its history replayed there, checked against the majority's tokens). Tokens of
//! steps *between* two checks are streamed unchecked: a hop that lies on such a step is
//! caught at the next sampled step (its corrupted caches disagree from then on), but the
//! text already streamed is not taken back. With `--verify-rate 1` every step is checked
//! before it is streamed.
//!
//! Comparison is bit-exact, with f16 activations (the default) too, but over fewer
//! boundaries ([`Agreement`]): every hop rounds its output to f16 for the wire, so two
//! honest chains agree bit for bit only where they cut the layers below at the same
//! places (the same rounding history); a boundary above a cut only one of them made is
//! not compared. The tolerance at compared boundaries is zero: measured, not assumed,
//! by `node/tests/it/verify.rs` (f16 replays of honest hops agree on every step; a hop
//! that corrupts is caught). An f16 check whose second chain is cut elsewhere than the
//! primary is skipped (`skipped`), as are sessions with the ends at the entry (the
//! first hop's input is then the entry's own embedding). Across CPUs with different
//! kernels (AVX2 against AVX-512) no dtype is bit-exact: a mesh of mixed CPUs needs the
//! kernels' reduction order pinned before spot checks can span it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use lamina_protocol::{
    check_chain, ExpectedHop, HopEvidence, LinkFailure, StepProduct, TraceId, WireDType,
};
use libp2p::PeerId;

use super::{
    open_timeout, ChainClient, ChainHop, PipelineError, PipelineOptions, PipelineSession, StepReply,
};
use crate::failure::{judge, Failure, Hop, Verdict};
use crate::ids::SplitMix;
use crate::routes::RouteSource;

/// How much to verify.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerifyPolicy {
    /// The fraction of steps checked (0: none, 1: every step).
    pub rate: f64,
    /// Seed of the sampler (mixed with each generation's trace id); a daemon draws it at
    /// start, a test fixes it.
    pub seed: u64,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self::off()
    }
}

impl VerifyPolicy {
    /// No verification.
    pub const fn off() -> Self {
        Self { rate: 0.0, seed: 0 }
    }
}

/// Steps checked, by result (`lamina_verify_steps_total{result}`), process-wide.
pub struct VerifyCounts {
    /// Both chains agreed.
    pub agreed: AtomicU64,
    /// A hop of the primary chain was caught.
    pub caught: AtomicU64,
    /// The shadow chain lost to the primary (one of its hops was caught).
    pub shadow_caught: AtomicU64,
    /// The chains disagreed and no majority could be had: nobody banned.
    pub undecided: AtomicU64,
    /// Sampled but not checkable (no other servers, a shadow failure, an f16 second chain
    /// cut elsewhere, the ends at the entry).
    pub skipped: AtomicU64,
}

/// The process's counts.
pub static COUNTS: VerifyCounts = VerifyCounts {
    agreed: AtomicU64::new(0),
    caught: AtomicU64::new(0),
    shadow_caught: AtomicU64::new(0),
    undecided: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
};

impl VerifyCounts {
    /// (result label, count) pairs, for the metrics page.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("agreed", l(&self.agreed)),
            ("caught", l(&self.caught)),
            ("shadow_caught", l(&self.shadow_caught)),
            ("undecided", l(&self.undecided)),
            ("skipped", l(&self.skipped)),
        ]
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Which boundaries two honest accounts of a step must agree on, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// f32 on the wire: every boundary both state (an honest computation is bit-exact
    /// whoever runs it, whatever the split).
    EveryBoundary,
    /// f16 on the wire: each hop rounds its output, so only boundaries below which both
    /// chains cut the layers at the same places (the input of layer 0 always).
    SameCuts,
}

impl Agreement {
    /// The rule for sessions with `dtype` activations.
    pub fn of(dtype: WireDType) -> Self {
        match dtype {
            WireDType::F32 => Self::EveryBoundary,
            _ => Self::SameCuts,
        }
    }
}

/// The layers at which a chain cuts the model (its boundaries, ascending).
fn cuts(a: &[HopEvidence]) -> Vec<u32> {
    boundaries(a).into_iter().map(|(l, _)| l).collect()
}

/// Where two accounts of one step first disagree: layers `lo..hi`, between the highest
/// boundary both state and agree on and the lowest one both state and differ on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub lo: u32,
    pub hi: u32,
}

/// What an account states at each layer boundary: a hop's input at its first layer, its
/// output (digest or token) at its end. Ascending.
fn boundaries(a: &[HopEvidence]) -> Vec<(u32, StepProduct)> {
    let mut v = Vec::with_capacity(a.len() + 1);
    for (i, h) in a.iter().enumerate() {
        if i == 0 {
            v.push((h.layers.start, StepProduct::Hidden(h.input)));
        }
        v.push((h.layers.end, h.output));
    }
    v
}

/// The first disagreement of two chains' accounts of the same step, if any, over the
/// boundaries `rule` compares (pure).
pub fn first_disagreement(
    a: &[HopEvidence],
    b: &[HopEvidence],
    rule: Agreement,
) -> Option<Disagreement> {
    let ba = boundaries(a);
    let bb = boundaries(b);
    let mut lo = 0;
    for (i, (layer, pa)) in ba.iter().enumerate() {
        let Some(j) = bb.iter().position(|(l, _)| l == layer) else {
            continue;
        };
        let same_history = ba[..i].iter().map(|x| x.0).eq(bb[..j].iter().map(|x| x.0));
        if rule == Agreement::SameCuts && !same_history {
            // Every boundary above a cut only one chain made has another rounding
            // history: nothing more is comparable.
            break;
        }
        let (layer, pb) = (*layer, bb[j].1);
        if *pa == pb {
            lo = layer;
        } else {
            return Some(Disagreement { lo, hi: layer });
        }
    }
    None
}

/// The hops of `a` that run any of `d`'s layers.
pub fn suspects(a: &[HopEvidence], d: Disagreement) -> Vec<PeerId> {
    a.iter()
        .filter(|h| h.layers.start < d.hi && h.layers.end > d.lo)
        .map(|h| h.peer)
        .collect()
}

/// The first step (of those both accounts hold) where they disagree, and where.
pub fn first_disagreeing_step(
    a: &[Vec<HopEvidence>],
    b: &[Vec<HopEvidence>],
    rule: Agreement,
) -> Option<(usize, Disagreement)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find_map(|(i, (x, y))| first_disagreement(x, y, rule).map(|d| (i, d)))
}

/// Who is wrong, given a third opinion (pure): `None` when the third sides with neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The primary chain is wrong; its single suspect, if there is exactly one.
    Primary(Option<PeerId>),
    /// The shadow chain is wrong; its single suspect, if there is exactly one.
    Shadow(Option<PeerId>),
    Undecided,
}

fn single(v: Vec<PeerId>) -> Option<PeerId> {
    match v.as_slice() {
        [p] => Some(*p),
        _ => None,
    }
}

/// Decides between `primary` and `shadow` (accounts of steps `0..=upto`) with `third`.
pub fn judge_with_third(
    primary: &[Vec<HopEvidence>],
    shadow: &[Vec<HopEvidence>],
    third: &[Vec<HopEvidence>],
    rule: Agreement,
) -> Judgement {
    let vs_primary = first_disagreeing_step(primary, third, rule);
    let vs_shadow = first_disagreeing_step(shadow, third, rule);
    match (vs_primary, vs_shadow) {
        (Some((t, d)), None) => Judgement::Primary(single(suspects(&primary[t], d))),
        (None, Some((t, d))) => Judgement::Shadow(single(suspects(&shadow[t], d))),
        _ => Judgement::Undecided,
    }
}

/// A second (or third) chain that replays the primary's confirmed steps.
struct Replica {
    chain: Vec<ChainHop>,
    session: PipelineSession,
    /// Its checked account of each step it ran, and its answers.
    accounts: Vec<Vec<HopEvidence>>,
    replies: Vec<StepReply>,
}

/// What a check found.
pub enum Outcome {
    /// Nothing to act on (agreement, an undecided or skipped check, a caught shadow).
    Keep,
    /// The primary chain is wrong from step `from` on: `honest` are the majority's
    /// answers of steps `from..=sampled` (empty when no majority says which answer is
    /// honest); `ban` the culprit (if one was named) and `avoid` the primary's suspects.
    PrimaryWrong {
        from: usize,
        honest: Vec<StepReply>,
        ban: Option<PeerId>,
        avoid: Vec<PeerId>,
    },
}

/// What the verifier needs of the session it checks.
pub struct Context<'a> {
    pub client: &'a ChainClient,
    pub routes: &'a dyn RouteSource,
    pub opts: &'a PipelineOptions,
    pub chain: &'a [ChainHop],
    /// The confirmed steps' inputs and drawn tokens, in order (the last is the sampled
    /// step).
    pub history: &'a [(Vec<u32>, u32)],
    /// Bound on each answer of a second chain (the primary's own step deadline: a
    /// stalling replica costs no more than a stalling primary).
    pub timeout: std::time::Duration,
    /// The primary chain's checked account of each confirmed step.
    pub accounts: &'a [Vec<HopEvidence>],
    /// Peers the generation avoids already.
    pub exclude: &'a HashSet<PeerId>,
}

/// The per-generation verifier.
pub struct Verifier {
    rate: f64,
    rng: SplitMix,
    shadow: Option<Replica>,
    /// Peers of second chains that failed this generation's checks without a culprit
    /// named (a stalling replica): later checks of this generation pick others.
    avoid: HashSet<PeerId>,
}

impl Verifier {
    /// A verifier for one generation (`trace` mixes into the seed).
    pub fn new(policy: VerifyPolicy, trace: Option<TraceId>) -> Self {
        let t = trace.map_or(0u64, |t| {
            let h = blake3::hash(t.to_string().as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.as_bytes()[..8]);
            u64::from_le_bytes(b)
        });
        Self {
            rate: policy.rate,
            rng: SplitMix(policy.seed ^ t),
            shadow: None,
            avoid: HashSet::new(),
        }
    }

    /// Whether verification is on at all.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Whether to check the step just confirmed.
    pub fn sample(&mut self) -> bool {
        self.rate > 0.0 && self.rng.unit() < self.rate
    }

    /// Forgets the shadow (the primary chain changed its history's meaning: after a
    /// caught primary, the next check starts a fresh shadow).
    pub fn reset(&mut self) {
        self.shadow = None;
    }

    /// Checks the last confirmed step of `cx` (and every unchecked one before it).
    pub async fn check(&mut self, cx: Context<'_>) -> Outcome {
        if cx.opts.ends.is_some() {
            // With the ends at the entry the first hop's input is the entry's own
            // embedding, and the records are not checked here (see the module doc).
            bump(&COUNTS.skipped);
            return Outcome::Keep;
        }
        let rule = Agreement::of(cx.opts.activation_dtype);
        let Some(upto) = cx.history.len().checked_sub(1) else {
            return Outcome::Keep;
        };
        if self.shadow.is_none() {
            let avoid: HashSet<PeerId> = cx.exclude.union(&self.avoid).copied().collect();
            match open_replica(&cx, &avoid, cx.chain).await {
                Some(r) => self.shadow = Some(r),
                None => {
                    bump(&COUNTS.skipped);
                    return Outcome::Keep;
                }
            }
        }
        let Some(shadow) = self.shadow.as_mut() else {
            return Outcome::Keep;
        };
        if let Err(e) = catch_up(shadow, &cx, upto).await {
            tracing::warn!("verify: the shadow chain failed ({e}); skipping this check");
            blame_replica(&cx, &shadow.chain, &e);
            let primary: HashSet<PeerId> = cx.chain.iter().map(|h| h.peer).collect();
            self.avoid.extend(
                shadow
                    .chain
                    .iter()
                    .map(|h| h.peer)
                    .filter(|p| !primary.contains(p)),
            );
            self.shadow = None;
            bump(&COUNTS.skipped);
            return Outcome::Keep;
        }
        if rule == Agreement::SameCuts {
            let (Some(p), Some(q)) = (cx.accounts.last(), shadow.accounts.get(upto)) else {
                return Outcome::Keep;
            };
            if cuts(p) != cuts(q) {
                // f16 rounded at other boundaries: the token is not comparable. A later
                // check opens another second chain.
                tracing::debug!("verify: the second chain cuts the layers elsewhere (f16)");
                self.shadow = None;
                bump(&COUNTS.skipped);
                return Outcome::Keep;
            }
        }
        let Some((t, d)) = first_disagreeing_step(cx.accounts, &shadow.accounts[..=upto], rule)
        else {
            bump(&COUNTS.agreed);
            return Outcome::Keep;
        };
        let primary_suspects = suspects(&cx.accounts[t], d);
        let shadow_suspects = suspects(&shadow.accounts[t], d);
        tracing::warn!(
            step = t,
            layers = %format!("{}..{}", d.lo, d.hi),
            primary = ?primary_suspects,
            shadow = ?shadow_suspects,
            "verify: the chains disagree"
        );
        if let (Some(p), true) = (
            single(primary_suspects.clone()),
            primary_suspects == shadow_suspects,
        ) {
            // The same peer signed two outputs for the same input and history: it lied
            // at least once, and which output is honest is unknown (the primary's token
            // stands; a replay elsewhere checks it).
            bump(&COUNTS.caught);
            tracing::warn!(culprit = %p, "verify: a hop contradicted itself");
            self.shadow = None;
            return Outcome::PrimaryWrong {
                from: t,
                honest: Vec::new(),
                ban: Some(p),
                avoid: primary_suspects,
            };
        }
        let judgement = {
            let mut hard: HashSet<PeerId> = cx.exclude.union(&self.avoid).copied().collect();
            hard.extend(primary_suspects.iter().copied());
            hard.extend(shadow_suspects.iter().copied());
            let prefer_off: Vec<ChainHop> = cx
                .chain
                .iter()
                .chain(shadow.chain.iter())
                .cloned()
                .collect();
            match open_replica(&cx, &hard, &prefer_off).await {
                Some(mut third) => match catch_up(&mut third, &cx, t).await {
                    Ok(()) => judge_with_third(
                        &cx.accounts[..=t],
                        &shadow.accounts[..=t],
                        &third.accounts[..=t],
                        rule,
                    ),
                    Err(e) => {
                        tracing::warn!("verify: the third chain failed ({e})");
                        blame_replica(&cx, &third.chain, &e);
                        Judgement::Undecided
                    }
                },
                None => Judgement::Undecided,
            }
        };
        match judgement {
            Judgement::Primary(ban) => {
                bump(&COUNTS.caught);
                tracing::warn!(culprit = ?ban, "verify: the primary chain lied");
                let honest = shadow.replies[t..=upto].to_vec();
                self.shadow = None;
                Outcome::PrimaryWrong {
                    from: t,
                    honest,
                    ban,
                    avoid: primary_suspects,
                }
            }
            Judgement::Shadow(ban) => {
                bump(&COUNTS.shadow_caught);
                tracing::warn!(culprit = ?ban, "verify: the shadow chain lied");
                if let Some(p) = ban {
                    cx.routes.report_failure(p);
                }
                self.shadow = None;
                Outcome::Keep
            }
            Judgement::Undecided => {
                bump(&COUNTS.undecided);
                tracing::warn!("verify: no majority; nobody banned");
                self.shadow = None;
                Outcome::Keep
            }
        }
    }
}

/// A chain without the peers of `hard`, avoiding as many of `prefer_off`'s peers as the
/// routes allow (greedily, in order), opened; `None` when no chain differs from
/// `prefer_off` in a single hop, or it cannot open.
async fn open_replica(
    cx: &Context<'_>,
    hard: &HashSet<PeerId>,
    prefer_off: &[ChainHop],
) -> Option<Replica> {
    let mut exclude = hard.clone();
    cx.routes.route(&exclude).ok()?;
    for h in prefer_off {
        if exclude.contains(&h.peer) {
            continue;
        }
        exclude.insert(h.peer);
        if cx.routes.route(&exclude).is_err() {
            exclude.remove(&h.peer);
        }
    }
    let chain = cx.routes.route(&exclude).ok()?;
    let same = chain
        .iter()
        .map(|h| h.peer)
        .eq(cx.chain.iter().map(|h| h.peer));
    if same {
        return None;
    }
    let mut opts = cx.opts.clone();
    opts.open_timeout = open_timeout(chain.len());
    match PipelineSession::open(&cx.client.dialer, &chain, cx.client.model_id, &opts).await {
        Ok(session) => Some(Replica {
            chain,
            session,
            accounts: Vec::new(),
            replies: Vec::new(),
        }),
        Err(e) => {
            tracing::warn!("verify: cannot open a second chain: {e}");
            None
        }
    }
}

/// A second chain's failure is judged like the primary's (its culprit banned), but
/// changes nothing for the generation: the check is skipped. Silence is held against its
/// first hop at once (the rule failover applies after waiting for the mesh to notice a
/// dead peer: a replica that stalls answers its pings, and the generation waits while it
/// is checked); a stall further down is named by the hop above it before the entry's
/// deadline (depth-scaled deadlines).
fn blame_replica(cx: &Context<'_>, chain: &[ChainHop], e: &PipelineError) {
    let Some(f) = e.failure() else { return };
    let hops: Vec<Hop> = chain.iter().map(ChainHop::hop).collect();
    match judge(&hops, f) {
        Verdict::Reroute { ban: Some(p), .. } => cx.routes.report_failure(p),
        Verdict::Unattributed => {
            if let Some(first) = chain.first() {
                cx.routes.report_failure(first.peer);
            }
        }
        _ => {}
    }
}

/// Runs the confirmed steps `r` has not run yet, up to `upto`, checking each answer's
/// records against `r`'s chain.
async fn catch_up(r: &mut Replica, cx: &Context<'_>, upto: usize) -> Result<(), PipelineError> {
    let from = r.accounts.len();
    if from > upto {
        return Ok(());
    }
    let below: Vec<ExpectedHop> = r
        .chain
        .iter()
        .map(|h| ExpectedHop {
            peer: h.peer,
            layers: h.layers,
        })
        .collect();
    r.session.set_timeout(cx.timeout);
    let inputs: Vec<Vec<u32>> = cx.history[from..=upto]
        .iter()
        .map(|(i, _)| i.clone())
        .collect();
    let replies = r.session.replay(&inputs).await?;
    for reply in replies {
        let p = &reply.proof;
        let answered = p.answered.ok_or_else(|| {
            PipelineError::InvalidChain("a replica's answer carries no step records".into())
        })?;
        let account = check_chain(&p.records, &below, p.session, p.step, p.sent, answered)
            .map_err(|e| {
                PipelineError::hop(
                    Failure::FirstHop(LinkFailure::BadReply),
                    format!("a replica's step records that do not hold: {e}"),
                )
            })?;
        r.accounts.push(account);
        r.replies.push(reply);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_protocol::LayerRange;
    use Agreement::SameCuts;

    const EXACT: Agreement = Agreement::EveryBoundary;

    fn hop(peer: PeerId, a: u32, b: u32, input: u8, output: StepProduct) -> HopEvidence {
        HopEvidence {
            peer,
            layers: LayerRange::new(a, b).unwrap(),
            input: [input; 32],
            output,
        }
    }

    fn h(x: u8) -> StepProduct {
        StepProduct::Hidden([x; 32])
    }

    #[test]
    fn a_disagreement_is_localized_between_agreeing_and_differing_boundaries() {
        let (a0, a1, a2, b1) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let primary = vec![
            hop(a0, 0, 2, 0, h(1)),
            hop(a1, 2, 4, 1, h(9)),
            hop(a2, 4, 5, 9, StepProduct::Token(7)),
        ];
        let shadow = vec![
            hop(a0, 0, 2, 0, h(1)),
            hop(b1, 2, 4, 1, h(2)),
            hop(a2, 4, 5, 2, StepProduct::Token(8)),
        ];
        let d = first_disagreement(&primary, &shadow, EXACT).unwrap();
        assert_eq!(d, Disagreement { lo: 2, hi: 4 });
        assert_eq!(suspects(&primary, d), vec![a1]);
        assert_eq!(suspects(&shadow, d), vec![b1]);
        assert_eq!(first_disagreement(&primary, &primary, EXACT), None);
        // Coarser boundaries on one side widen the range to the common ones.
        let coarse = vec![
            hop(b1, 0, 4, 0, h(2)),
            hop(a2, 4, 5, 2, StepProduct::Token(8)),
        ];
        let d = first_disagreement(&primary, &coarse, EXACT).unwrap();
        assert_eq!(d, Disagreement { lo: 0, hi: 4 });
        assert_eq!(suspects(&primary, d), vec![a0, a1]);
    }

    #[test]
    fn with_f16_only_boundaries_with_the_same_cuts_below_are_compared() {
        let (a0, a1, a2, b0) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let primary = vec![
            hop(a0, 0, 2, 0, h(1)),
            hop(a1, 2, 4, 1, h(9)),
            hop(a2, 4, 5, 9, StepProduct::Token(7)),
        ];
        // Cut at 4 only: layer 4's state was rounded once, not twice. The honest f16
        // states differ there and the tokens may too; neither is compared.
        let coarse = vec![
            hop(b0, 0, 4, 0, h(3)),
            hop(a2, 4, 5, 3, StepProduct::Token(8)),
        ];
        assert_eq!(first_disagreement(&primary, &coarse, SameCuts), None);
        assert!(first_disagreement(&primary, &coarse, EXACT).is_some());
        // The same cuts: compared everywhere, as with f32.
        let mut liar = primary.clone();
        liar[1].output = h(5);
        liar[2].input = [5; 32];
        assert_eq!(
            first_disagreement(&primary, &liar, SameCuts),
            Some(Disagreement { lo: 2, hi: 4 })
        );
        // A disagreement below the first differing cut is still found.
        let mut early = coarse.clone();
        early[0].input = [4; 32];
        assert_eq!(
            first_disagreement(&primary, &early, SameCuts),
            Some(Disagreement { lo: 0, hi: 0 })
        );
        assert_eq!(Agreement::of(WireDType::F16), SameCuts);
        assert_eq!(Agreement::of(WireDType::F32), EXACT);
    }

    #[test]
    fn the_third_opinion_names_the_side_that_lies() {
        let (a0, a1, b1, c1) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let step = |p1: PeerId, out: u8| {
            vec![
                hop(a0, 0, 2, 0, h(1)),
                hop(p1, 2, 5, 1, StepProduct::Token(u32::from(out))),
            ]
        };
        let primary = vec![step(a1, 5), step(a1, 6)];
        let shadow = vec![step(b1, 5), step(b1, 7)];
        let third = vec![step(c1, 5), step(c1, 7)];
        assert_eq!(
            first_disagreeing_step(&primary, &shadow, EXACT).map(|(t, _)| t),
            Some(1)
        );
        assert_eq!(
            judge_with_third(&primary, &shadow, &third, EXACT),
            Judgement::Primary(Some(a1))
        );
        assert_eq!(
            judge_with_third(&shadow, &primary, &third, EXACT),
            Judgement::Shadow(Some(a1))
        );
        let odd = vec![step(c1, 5), step(c1, 8)];
        assert_eq!(
            judge_with_third(&primary, &shadow, &odd, EXACT),
            Judgement::Undecided
        );
    }

    #[test]
    fn sampling_is_seeded() {
        let run = |seed| {
            let mut v = Verifier::new(VerifyPolicy { rate: 0.3, seed }, None);
            (0..100).map(|_| v.sample()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        let n = run(5).iter().filter(|x| **x).count();
        assert!((15..=45).contains(&n), "{n}");
        let mut all = Verifier::new(VerifyPolicy { rate: 1.0, seed: 0 }, None);
        assert!((0..50).all(|_| all.sample()));
        let mut none = Verifier::new(VerifyPolicy::off(), None);
        assert!(!none.sample());
    }
}
