//! Failover of a generation in flight: when a hop fails, the entry peer blames it, plans a
//! new chain without it, opens a session on that chain, replays every step the old one had
//! confirmed, and retries the step that failed. The caller (and the client behind it) sees
//! neither an error nor a repeated or missing token.
//!
//! Why replay whole steps, in their original chunks, through the whole new chain: the KV
//! caches it rebuilds are then computed exactly as the lost ones were (same rows per step,
//! same kernels), so greedy and seeded sampling continue with the very tokens an
//! undisturbed run draws. Every replayed step's token is checked against the token the
//! step drew the first time; a mismatch is an error, never a silent change of output.
//! Replaying only the replaced hop from its upstream's replay log (Petals' way) is cheaper
//! for long contexts; it is the next step (see the session server's `ReplayLog`).
//!
//! Detection: a step fails on a transport error, on an error reply that names a failed hop
//! (`NextHopFailed` carries the hop's address), or on a deadline derived from the steps
//! measured so far ([`StepDeadline`]), so a peer that stalls is detected in a few step
//! times, not after a fixed five minutes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lamina_protocol::{CertFingerprint, ErrorCode};
use lamina_sharding::generate::Stepper;

use crate::pipeline::{ChainHop, PipelineError, PipelineOptions, PipelineSession, StepReply};

/// Plans a chain over the whole model that avoids the given peers (by certificate).
pub type Replan<'a> =
    dyn Fn(&HashSet<CertFingerprint>) -> Result<Vec<ChainHop>, PipelineError> + Sync + 'a;

/// How hard to try.
#[derive(Clone, Debug)]
pub struct FailoverPolicy {
    /// Recoveries per step before the step's error is returned.
    pub max_attempts: usize,
    /// First backoff before re-planning; doubles per attempt (announcements of a fresh
    /// replacement may need a moment to arrive).
    pub backoff: Duration,
    /// How long a failure that names no hop (a timeout) waits for the routes to change
    /// before the first hop is blamed ([`NOTICE_WAIT`]; a route source without pings,
    /// such as a test's, has nothing to wait for).
    pub notice_wait: Duration,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Duration::from_millis(200),
            notice_wait: NOTICE_WAIT,
        }
    }
}

/// Per-step deadlines from what the chain has shown it can do: a generous multiple of the
/// slowest decode step so far, never below a floor (scheduling noise on a loaded machine)
/// and, before any decode step was measured, a multiple of the prefill.
#[derive(Clone, Debug)]
pub struct StepDeadline {
    slowest: Option<Duration>,
    prefill: Option<Duration>,
    pub floor: Duration,
    pub factor: u32,
    pub first: Duration,
}

impl Default for StepDeadline {
    fn default() -> Self {
        Self {
            slowest: None,
            prefill: None,
            floor: Duration::from_secs(2),
            factor: 20,
            first: Duration::from_secs(300),
        }
    }
}

impl StepDeadline {
    /// The deadline for the next step.
    pub fn next(&self) -> Duration {
        self.next_for(1)
    }

    /// The deadline for a step of `rows` rows. Before anything was measured: a base plus
    /// a per-row allowance (a slow CPU node prefills ~20 rows/s of a 7B model), capped at
    /// `first`, so a dead hop on the first step costs seconds, not minutes.
    pub fn next_for(&self, rows: usize) -> Duration {
        match (self.slowest, self.prefill) {
            (Some(s), _) if rows <= 1 => (s * self.factor).max(self.floor),
            (_, Some(p)) => (p * 4).max(self.floor * 2),
            (Some(s), None) => (s * self.factor * rows as u32).max(self.floor),
            (None, None) => (Duration::from_secs(10)
                + Duration::from_millis(50) * u32::try_from(rows).unwrap_or(u32::MAX))
            .min(self.first),
        }
    }

    /// Records a completed step (`rows` input rows).
    pub fn observe(&mut self, rows: usize, took: Duration) {
        if rows > 1 || self.prefill.is_none() {
            self.prefill = Some(self.prefill.map_or(took, |p| p.max(took)));
        } else {
            self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
        }
    }
}

/// Which hop a failure is the fault of, when the failure says: the hop a `NextHopFailed`
/// names, else the hop that answered the error (each hop that relays an error reply puts
/// the address of the hop it came from in front, so the innermost address is its origin),
/// else the first hop, which is the one this side talks to. A timeout names nobody (any
/// hop of the chain may have stalled): `None`, and the caller waits for the mesh to notice
/// which peer stopped answering its pings.
pub fn blame(chain: &[ChainHop], e: &PipelineError) -> Option<CertFingerprint> {
    let first = chain.first().map(|h| h.fingerprint);
    match e {
        PipelineError::Remote(m) => {
            let named = m
                .message
                .rmatch_indices("next hop ")
                .next()
                .map(|(i, _)| &m.message[i + "next hop ".len()..])
                .map(|rest| {
                    let end = [rest.find(" ("), rest.find(": ")]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(rest.len());
                    &rest[..end]
                });
            let hop_at = |addr: &str| chain.iter().find(|h| h.addr == addr);
            match named.and_then(hop_at) {
                Some(h) => Some(h.fingerprint),
                None => relay_origin(chain, &m.message).or(first),
            }
        }
        // Every hop bounds its next hop more tightly than this side bounds the chain
        // (see the session server), so a stall further down is reported by name before
        // this side's deadline; a plain timeout here is most likely the first hop's. It
        // is still only likely, so the caller also waits for the mesh's own verdict.
        PipelineError::Timeout(_) => None,
        _ => first,
    }
}

/// The innermost hop of the `"addr: addr: ..."` prefix relaying hops put on an error.
fn relay_origin(chain: &[ChainHop], message: &str) -> Option<CertFingerprint> {
    let mut rest = message;
    let mut origin = None;
    while let Some(h) = chain.iter().find(|h| {
        rest.strip_prefix(h.addr.as_str())
            .is_some_and(|r| r.starts_with(": "))
    }) {
        origin = Some(h.fingerprint);
        rest = &rest[h.addr.len() + 2..];
    }
    origin
}

/// How long an unattributed failure waits for the mesh to route around the culprit
/// (ping marks a dead peer unreachable within about a ping interval plus timeout).
pub const NOTICE_WAIT: Duration = Duration::from_secs(6);

/// Whether another chain could succeed where this one failed. Errors about the request
/// itself (a context overflow, a bad tensor, a protocol violation by this side) would fail
/// the same way anywhere.
pub fn is_retriable(e: &PipelineError) -> bool {
    match e {
        PipelineError::DataPlane(_) | PipelineError::Timeout(_) => true,
        PipelineError::Protocol(m) => {
            m.contains("closed the stream") || m.contains("stream failed")
        }
        PipelineError::Remote(m) => matches!(
            m.code,
            ErrorCode::NextHopFailed
                | ErrorCode::ShuttingDown
                | ErrorCode::SessionLimit
                | ErrorCode::UnknownSession
                | ErrorCode::Busy
                | ErrorCode::Internal
                | ErrorCode::LayerMismatch
                | ErrorCode::WrongModel
        ),
        PipelineError::Chain(_) | PipelineError::Uncovered { .. } => false,
    }
}

/// Whether `e` is a hop refusing a new session because it is shutting down: a reason to
/// go elsewhere, not a failure of the hop (it is not banned, and the refusal costs no
/// attempt and no backoff).
pub fn is_draining_refusal(e: &PipelineError) -> bool {
    matches!(e, PipelineError::Remote(m) if m.code == ErrorCode::ShuttingDown)
}

/// A [`Stepper`] that survives hop failures (see the module doc). Synchronous, like
/// [`crate::pipeline::BlockingStepper`]: call it on a blocking thread; `handle` runs I/O.
pub struct FailoverStepper<'a> {
    handle: tokio::runtime::Handle,
    client: &'a crate::pipeline::ChainClient,
    opts: PipelineOptions,
    replan: &'a Replan<'a>,
    policy: FailoverPolicy,
    chain: Vec<ChainHop>,
    session: Option<PipelineSession>,
    /// Inputs of the confirmed steps, in order, and the token each drew.
    history: Vec<(Vec<u32>, u32)>,
    exclude: HashSet<CertFingerprint>,
    deadline: StepDeadline,
    /// Called with each peer blamed for a failure (the mesh bans it for a while).
    on_failure: &'a (dyn Fn(CertFingerprint) + Sync + 'a),
    /// Time each recovery took, from the failure to the retried step's answer.
    pub recoveries: Vec<Duration>,
    /// The typed error behind a failed step (the `Stepper` trait carries only text).
    pub last_error: Option<PipelineError>,
    position: usize,
}

impl<'a> FailoverStepper<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        handle: tokio::runtime::Handle,
        client: &'a crate::pipeline::ChainClient,
        opts: PipelineOptions,
        chain: Vec<ChainHop>,
        replan: &'a Replan<'a>,
        on_failure: &'a (dyn Fn(CertFingerprint) + Sync + 'a),
        policy: FailoverPolicy,
    ) -> Self {
        Self {
            handle,
            client,
            opts,
            replan,
            policy,
            chain,
            session: None,
            history: Vec::new(),
            exclude: HashSet::new(),
            deadline: StepDeadline::default(),
            on_failure,
            recoveries: Vec::new(),
            last_error: None,
            position: 0,
        }
    }

    /// Opens the first session now, so that a chain that cannot open fails with its own
    /// error before any generation starts.
    /// A hop that fails the open is routed around like one that fails a step.
    pub fn start(&mut self) -> Result<(), PipelineError> {
        let mut attempt = 0;
        let mut result = self.open();
        loop {
            match result {
                Ok(()) => return Ok(()),
                Err(e) if is_retriable(&e) && attempt < self.policy.max_attempts => {
                    let (attributed, moved) = self.blame_and_exclude(&e);
                    tracing::warn!(attempt, attributed, "opening failed: {e}; failing over");
                    if !moved {
                        attempt += 1;
                    }
                    result = self.recover(attempt, attributed, !moved);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open(&mut self) -> Result<(), PipelineError> {
        let mut opts = self.opts.clone();
        // Opening is handshakes only; each hop bounds its next hop's answer itself.
        opts.step_timeout = Duration::from_secs(15);
        let s = self.handle.block_on(PipelineSession::open(
            &self.client.dialer,
            &self.chain,
            self.client.model_id,
            &opts,
        ))?;
        self.session = Some(s);
        Ok(())
    }

    /// Replays the confirmed steps on the fresh session, checking each drawn token.
    fn replay(&mut self) -> Result<(), PipelineError> {
        let Some(s) = self.session.as_mut() else {
            return Err(PipelineError::Chain("no session to replay into".into()));
        };
        let widest = self.history.iter().map(|(i, _)| i.len()).max().unwrap_or(1);
        s.set_timeout(self.deadline.next_for(widest));
        let inputs: Vec<Vec<u32>> = self.history.iter().map(|(i, _)| i.clone()).collect();
        let replies = self.handle.block_on(s.replay(&inputs))?;
        for (i, (r, (_, drawn))) in replies.iter().zip(&self.history).enumerate() {
            if r.token != *drawn {
                return Err(PipelineError::Protocol(format!(
                    "replayed step {i} drew token {} where the lost chain drew {drawn}",
                    r.token
                )));
            }
        }
        Ok(())
    }

    fn try_step(&mut self, tokens: &[u32]) -> Result<StepReply, PipelineError> {
        if self.session.is_none() {
            self.open()?;
        }
        // Above the first hop's own bound on the rest of the chain (see the session
        // server's `downstream_deadline`), so a stall further down is named by a hop.
        let chain_floor =
            crate::session::server::HOP_FLOOR * u32::try_from(self.chain.len()).unwrap_or(u32::MAX);
        let timeout = self.deadline.next_for(tokens.len()).max(chain_floor);
        let s = self
            .session
            .as_mut()
            .ok_or_else(|| PipelineError::Chain("no session".into()))?;
        s.set_timeout(timeout);
        let t = Instant::now();
        let r = self.handle.block_on(s.step(tokens))?;
        self.deadline.observe(tokens.len(), t.elapsed());
        Ok(r)
    }

    /// Drops the broken session, re-plans without the blamed peers, reopens and replays.
    /// After a failure nobody could be blamed for, it waits (bounded) for a plan that
    /// differs from the failed chain, then blames the first hop if none comes.
    /// `backoff`: whether to wait first (not after a draining hop's refusal: it is not
    /// broken, and the rest of the mesh is ready now).
    fn recover(
        &mut self,
        attempt: usize,
        attributed: bool,
        backoff: bool,
    ) -> Result<(), PipelineError> {
        // Dropping the session ends its stream; the surviving hops free their caches.
        self.session = None;
        if backoff {
            std::thread::sleep(self.policy.backoff * (1u32 << attempt.min(6)));
        }
        let failed: Vec<CertFingerprint> = self.chain.iter().map(|h| h.fingerprint).collect();
        let mut next = (self.replan)(&self.exclude);
        if !attributed {
            let deadline = Instant::now() + self.policy.notice_wait;
            while matches!(&next, Ok(c) if c.iter().map(|h| h.fingerprint).eq(failed.iter().copied()))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
                next = (self.replan)(&self.exclude);
            }
            if matches!(&next, Ok(c) if c.iter().map(|h| h.fingerprint).eq(failed.iter().copied()))
            {
                if let Some(first) = failed.first() {
                    self.exclude.insert(*first);
                    (self.on_failure)(*first);
                }
                next = (self.replan)(&self.exclude);
            }
        }
        // No chain at all may be a moment's view (a restarted peer's fresh announcement
        // or first ping still on its way): wait for coverage, bounded, before the error
        // that names the uncovered layers.
        let deadline = Instant::now() + self.policy.notice_wait;
        while matches!(next, Err(PipelineError::Uncovered { .. })) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            next = (self.replan)(&self.exclude);
        }
        self.chain = next?;
        tracing::info!(
            hops = self.chain.len(),
            replay_steps = self.history.len(),
            "failover: re-planned"
        );
        self.open()?;
        self.replay()
    }

    /// Excludes (and reports) the hop `e` names. Returns whether one was named, and
    /// whether it merely refused because it is draining and was not excluded before
    /// (then it is not reported, and the retry is free: each such refusal excludes one
    /// more peer, so free retries are bounded by the peers there are).
    fn blame_and_exclude(&mut self, e: &PipelineError) -> (bool, bool) {
        match blame(&self.chain, e) {
            Some(peer) if is_draining_refusal(e) => {
                let new = self.exclude.insert(peer);
                (true, new)
            }
            Some(peer) => {
                self.exclude.insert(peer);
                (self.on_failure)(peer);
                (true, false)
            }
            None => (false, false),
        }
    }

    fn step_reply(&mut self, tokens: &[u32]) -> Result<StepReply, PipelineError> {
        let mut failed_at: Option<Instant> = None;
        let mut attempt = 0;
        loop {
            match self.try_step(tokens) {
                Ok(r) => {
                    if let Some(t) = failed_at {
                        self.recoveries.push(t.elapsed());
                    }
                    self.history.push((tokens.to_vec(), r.token));
                    self.position += tokens.len();
                    return Ok(r);
                }
                Err(e) if is_retriable(&e) && attempt < self.policy.max_attempts => {
                    failed_at.get_or_insert_with(Instant::now);
                    let (mut attributed, mut moved) = self.blame_and_exclude(&e);
                    tracing::warn!(attempt, attributed, "hop failed: {e}; failing over");
                    if !moved {
                        attempt += 1;
                    }
                    // A failed recovery is one more failure of the same step.
                    loop {
                        match self.recover(attempt, attributed, !moved) {
                            Ok(()) => break,
                            Err(e) if is_retriable(&e) && attempt < self.policy.max_attempts => {
                                (attributed, moved) = self.blame_and_exclude(&e);
                                tracing::warn!(attempt, attributed, "recovery failed: {e}");
                                if !moved {
                                    attempt += 1;
                                }
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the session.
    pub fn close(mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = self.handle.block_on(s.close()) {
                tracing::debug!("close: {e}");
            }
        }
    }
}

impl Stepper for FailoverStepper<'_> {
    fn step(&mut self, tokens: &[u32]) -> lamina_sharding::Result<Vec<f32>> {
        let r = match self.step_reply(tokens) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("pipeline: {e}");
                self.last_error = Some(e);
                return Err(lamina_sharding::Error::InvalidInput(msg));
            }
        };
        Ok(match r.logits {
            Some(l) => l,
            None => {
                let mut v =
                    vec![f32::NEG_INFINITY; self.client.vocab_size.max(r.token as usize + 1)];
                v[r.token as usize] = 0.0;
                v
            }
        })
    }

    fn position(&self) -> usize {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_protocol::{ErrorMessage, LayerRange};

    fn hop(addr: &str, fp: u8) -> ChainHop {
        ChainHop {
            layers: LayerRange::new(0, 1).unwrap(),
            addr: addr.into(),
            fingerprint: CertFingerprint::from_bytes([fp; 32]),
        }
    }

    #[test]
    fn blame_names_the_deepest_failed_hop() {
        let chain = vec![
            hop("127.0.0.1:1", 1),
            hop("127.0.0.1:2", 2),
            hop("127.0.0.1:3", 3),
        ];
        let e = PipelineError::Remote(ErrorMessage::new(
            ErrorCode::NextHopFailed,
            "127.0.0.1:2: next hop 127.0.0.1:3: stream closed",
        ));
        assert_eq!(
            blame(&chain, &e),
            Some(CertFingerprint::from_bytes([3; 32]))
        );
        let e = PipelineError::Remote(ErrorMessage::new(
            ErrorCode::NextHopFailed,
            "next hop 127.0.0.1:2 (1..2): connection refused",
        ));
        assert_eq!(
            blame(&chain, &e),
            Some(CertFingerprint::from_bytes([2; 32]))
        );
        let e = PipelineError::Timeout("x".into());
        assert_eq!(blame(&chain, &e), None, "a timeout names nobody");
        // An error reply relayed by hops 1 and 2 came from hop 3.
        let e = PipelineError::Remote(ErrorMessage::new(
            ErrorCode::Internal,
            "127.0.0.1:2: 127.0.0.1:3: out of memory",
        ));
        assert_eq!(
            blame(&chain, &e),
            Some(CertFingerprint::from_bytes([3; 32]))
        );
        // The first hop's own error.
        let e = PipelineError::Remote(ErrorMessage::new(ErrorCode::Internal, "out of memory"));
        assert_eq!(
            blame(&chain, &e),
            Some(CertFingerprint::from_bytes([1; 32]))
        );
    }

    #[test]
    fn only_failures_another_chain_could_fix_are_retried() {
        assert!(is_retriable(&PipelineError::Timeout("t".into())));
        assert!(is_retriable(&PipelineError::DataPlane(
            crate::dataplane::DataPlaneError::Stream("connection lost".into())
        )));
        assert!(!is_retriable(&PipelineError::Chain("uncovered".into())));
        assert!(!is_retriable(&PipelineError::Uncovered {
            layers: "2..4".into()
        }));
        let draining = PipelineError::Remote(ErrorMessage::new(
            ErrorCode::ShuttingDown,
            "127.0.0.1:2: node2 is shutting down",
        ));
        assert!(is_retriable(&draining) && is_draining_refusal(&draining));
        assert!(!is_draining_refusal(&PipelineError::Timeout("t".into())));
        assert!(!is_retriable(&PipelineError::Remote(ErrorMessage::new(
            ErrorCode::ContextOverflow,
            "too long"
        ))));
    }

    #[test]
    fn deadlines_follow_the_measured_steps() {
        let mut d = StepDeadline::default();
        assert_eq!(d.next_for(100), Duration::from_secs(15));
        assert_eq!(d.next_for(100_000), Duration::from_secs(300));
        d.observe(40, Duration::from_millis(900));
        assert_eq!(
            d.next(),
            Duration::from_millis(3600).max(Duration::from_secs(4))
        );
        d.observe(1, Duration::from_millis(20));
        assert_eq!(d.next(), Duration::from_secs(2));
        d.observe(1, Duration::from_millis(300));
        assert_eq!(d.next(), Duration::from_secs(6));
    }
}
