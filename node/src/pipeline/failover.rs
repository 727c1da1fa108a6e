//! Failover of a generation in flight: when a hop fails, the entry applies the blame rules
//! ([`crate::failure::judge`]), plans a new chain without the peers they name, opens a
//! session on it, replays every step the old one had confirmed, and retries the step that
//! failed. The caller (and the client behind it) sees neither an error nor a repeated or
//! missing token.
//!
//! Why replay whole steps, in their original chunks, through the whole new chain: the KV
//! caches it rebuilds are then computed exactly as the lost ones were (same rows per step,
//! same kernels), so greedy and seeded sampling continue with the very tokens an
//! undisturbed run draws. Every replayed step's token is checked against the token the
//! step drew the first time; a mismatch is an error, never a silent change of output.
//! Replaying only the replaced hop (Petals' way) is cheaper for long contexts; see
//! `docs/ARCHITECTURE.md` for what it needs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::deadline::{StepDeadline, HOP_FLOOR};
use super::verify::{Context as VerifyContext, Outcome, Verifier};
use super::{
    open_timeout, ChainClient, ChainHop, PipelineError, PipelineOptions, PipelineSession, StepReply,
};
use crate::failure::{judge, Failure, Hop, Misdeed, Verdict};
use crate::routes::{RouteError, RouteSource};
use lamina_protocol::{check_chain, ExpectedHop, HopEvidence, LinkFailure, StepProduct};

/// How hard to try.
#[derive(Clone, Debug)]
pub struct FailoverPolicy {
    /// Recoveries per step before the step's error is returned (0: never fail over, for
    /// a fixed chain). Refusals that name a peer not avoided before cost no attempt: each
    /// excludes one more peer, so they are bounded by the peers there are.
    pub max_attempts: usize,
    /// First backoff before re-planning after a failure; doubles per attempt
    /// (announcements of a fresh replacement may need a moment to arrive).
    pub backoff: Duration,
    /// How long a failure that names no hop (a deadline) waits for the routes to change,
    /// and how long a re-plan that finds a range uncovered waits for it to be covered
    /// again (a restarted peer's record or first ping may be on its way).
    pub notice_wait: Duration,
}

/// How long an unattributed failure waits for the mesh to route around the culprit
/// (ping marks a dead peer unreachable within about a ping interval plus timeout).
pub const NOTICE_WAIT: Duration = Duration::from_secs(6);

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Duration::from_millis(200),
            notice_wait: NOTICE_WAIT,
        }
    }
}

impl FailoverPolicy {
    /// No failover: the first failure is the answer.
    pub fn none() -> Self {
        Self {
            max_attempts: 0,
            ..Self::default()
        }
    }
}

/// A re-plan's chain; when there is no other chain for a reason other than uncovered
/// layers (a fixed chain, a chain file), the failure that asked for it is the answer.
fn or_original(
    replanned: Result<Vec<ChainHop>, PipelineError>,
    failure: PipelineError,
) -> Result<Vec<ChainHop>, PipelineError> {
    match replanned {
        Err(PipelineError::NoRoute(_)) => Err(failure),
        r => r,
    }
}

/// A session that survives hop failures (see the module doc).
pub struct FailoverSession<'a> {
    client: &'a ChainClient,
    routes: &'a dyn RouteSource,
    opts: PipelineOptions,
    policy: FailoverPolicy,
    chain: Vec<ChainHop>,
    session: Option<PipelineSession>,
    /// Inputs of the confirmed steps, in order, and the token each drew.
    history: Vec<(Vec<u32>, u32)>,
    /// The chain's checked step records of each confirmed step (spot checks compare them).
    accounts: Vec<Vec<HopEvidence>>,
    verifier: Verifier,
    exclude: HashSet<PeerId>,
    deadline: StepDeadline,
    vocab_size: usize,
    /// Time each recovery took, from the failure to the retried step's answer.
    pub recoveries: Vec<Duration>,
}

impl<'a> FailoverSession<'a> {
    pub fn new(
        client: &'a ChainClient,
        routes: &'a dyn RouteSource,
        opts: PipelineOptions,
        chain: Vec<ChainHop>,
        policy: FailoverPolicy,
    ) -> Self {
        let verifier = Verifier::new(client.verify, opts.trace_id);
        Self {
            client,
            routes,
            opts,
            policy,
            chain,
            session: None,
            history: Vec::new(),
            accounts: Vec::new(),
            verifier,
            exclude: HashSet::new(),
            deadline: StepDeadline::default(),
            vocab_size: client.tokenizer.vocab_size(),
            recoveries: Vec::new(),
        }
    }

    /// The chain in use.
    pub fn chain(&self) -> &[ChainHop] {
        &self.chain
    }

    /// Opens the first session now, so that a chain that cannot open fails with its own
    /// error before any generation starts. A hop that fails the open is routed around
    /// like one that fails a step.
    pub async fn start(&mut self) -> Result<(), PipelineError> {
        let mut attempt = 0;
        loop {
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(e) => self.decide(e, &mut attempt).await?,
            }
        }
    }

    /// Runs `tokens` through the chain, failing over as often as the policy allows.
    pub async fn step(&mut self, tokens: &[u32]) -> Result<StepReply, PipelineError> {
        let mut failed_at: Option<Instant> = None;
        let mut attempt = 0;
        loop {
            match self.attempt(tokens).await {
                Ok((r, account)) => {
                    if let Some(t) = failed_at {
                        self.recoveries.push(t.elapsed());
                    }
                    self.history.push((tokens.to_vec(), r.token));
                    self.accounts.push(account);
                    return Ok(self.spot_check(r).await);
                }
                Err(e) => {
                    failed_at.get_or_insert_with(Instant::now);
                    self.decide(e, &mut attempt).await?;
                }
            }
        }
    }

    /// Closes the session (a failed close only leaves the hops to expire it).
    pub async fn close(mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.close().await {
                tracing::debug!("close: {e}");
            }
        }
    }

    async fn open(&mut self) -> Result<(), PipelineError> {
        let mut opts = self.opts.clone();
        opts.open_timeout = open_timeout(self.chain.len());
        let s = PipelineSession::open(
            &self.client.dialer,
            &self.chain,
            self.client.model_id,
            &opts,
        )
        .await?;
        self.session = Some(s);
        Ok(())
    }

    /// With the verifier's sampled probability, checks the step just confirmed (and the
    /// unchecked ones before it) on other servers (see [`super::verify`]); when the chain
    /// is caught, the culprit is banned, the majority's answers replace the chain's, and
    /// the session is dropped so the next step runs on a chain without the culprit.
    async fn spot_check(&mut self, r: StepReply) -> StepReply {
        if !self.verifier.sample() {
            return r;
        }
        let widest = self.history.iter().map(|(i, _)| i.len()).max().unwrap_or(1);
        let chain_floor = HOP_FLOOR * u32::try_from(self.chain.len()).unwrap_or(u32::MAX);
        let cx = VerifyContext {
            client: self.client,
            routes: self.routes,
            opts: &self.opts,
            chain: &self.chain,
            history: &self.history,
            timeout: self.deadline.next_for(widest).max(chain_floor),
            accounts: &self.accounts,
            exclude: &self.exclude,
        };
        match self.verifier.check(cx).await {
            Outcome::Keep => r,
            Outcome::PrimaryWrong {
                from,
                honest,
                ban,
                avoid,
            } => {
                let hops: Vec<Hop> = self.chain.iter().map(ChainHop::hop).collect();
                if let Some(peer) = ban {
                    let f = Failure::Proven {
                        peer,
                        misdeed: Misdeed::WrongOutput,
                    };
                    tracing::warn!(verdict = ?judge(&hops, &f), "{f}; failing over");
                    self.routes.report_failure(peer);
                    self.exclude.insert(peer);
                }
                self.exclude.extend(avoid);
                for (i, h) in honest.iter().enumerate() {
                    if let Some(entry) = self.history.get_mut(from + i) {
                        entry.1 = h.token;
                    }
                }
                // The next step re-plans and replays on a chain without the culprit.
                self.session = None;
                self.verifier.reset();
                match self.replan().await {
                    Ok(c) => self.chain = c,
                    Err(e) => tracing::warn!("verify: no chain without the culprit yet: {e}"),
                }
                honest.last().cloned().unwrap_or(r)
            }
        }
    }

    /// One try at a step: on a fresh chain, the open and the replay of the confirmed
    /// steps first.
    async fn attempt(
        &mut self,
        tokens: &[u32],
    ) -> Result<(StepReply, Vec<HopEvidence>), PipelineError> {
        if self.session.is_none() {
            self.open().await?;
            self.replay().await?;
        }
        // Above the first hop's own bound on the rest of the chain (see
        // `deadline::downstream_deadline`), so a stall further down is named by a hop.
        let chain_floor = HOP_FLOOR * u32::try_from(self.chain.len()).unwrap_or(u32::MAX);
        let timeout = self.deadline.next_for(tokens.len()).max(chain_floor);
        let s = self
            .session
            .as_mut()
            .ok_or_else(|| PipelineError::InvalidChain("no session".into()))?;
        s.set_timeout(timeout);
        let t = Instant::now();
        let r = s.step(tokens).await?;
        let evidence = self.check(&r)?;
        self.deadline.observe(tokens.len(), t.elapsed());
        Ok((r, evidence))
    }

    /// Checks an answer: its step records must chain up from what this side sent to what
    /// it got (else the first hop relayed a broken chain: see `lamina_protocol::evidence`),
    /// and a token outside the vocabulary is blamed on the last hop, whose signed record
    /// says it drew it. Returns the checked records, in chain order.
    fn check(&self, r: &StepReply) -> Result<Vec<HopEvidence>, PipelineError> {
        let evidence = match r.proof.answered {
            Some(answered) => {
                let below: Vec<ExpectedHop> = self
                    .chain
                    .iter()
                    .map(|h| ExpectedHop {
                        peer: h.peer,
                        layers: h.layers,
                    })
                    .collect();
                let p = &r.proof;
                check_chain(&p.records, &below, p.session, p.step, p.sent, answered).map_err(
                    |e| {
                        PipelineError::hop(
                            Failure::FirstHop(LinkFailure::BadReply),
                            format!("step records that do not hold: {e}"),
                        )
                    },
                )?
            }
            None => Vec::new(),
        };
        if r.token as usize >= self.vocab_size {
            let detail = format!(
                "the chain drew token {}, outside the vocabulary of {}",
                r.token, self.vocab_size
            );
            let failure = match evidence.last() {
                Some(last) if last.output == StepProduct::Token(r.token) => Failure::Proven {
                    peer: last.peer,
                    misdeed: Misdeed::TokenOutOfRange,
                },
                _ => Failure::BadAnswer,
            };
            return Err(PipelineError::hop(failure, detail));
        }
        Ok(evidence)
    }

    /// Replays the confirmed steps on the fresh session, checking each drawn token.
    async fn replay(&mut self) -> Result<(), PipelineError> {
        if self.history.is_empty() {
            return Ok(());
        }
        let Some(s) = self.session.as_mut() else {
            return Err(PipelineError::InvalidChain(
                "no session to replay into".into(),
            ));
        };
        let widest = self.history.iter().map(|(i, _)| i.len()).max().unwrap_or(1);
        s.set_timeout(self.deadline.next_for(widest));
        let inputs: Vec<Vec<u32>> = self.history.iter().map(|(i, _)| i.clone()).collect();
        let replies = s.replay(&inputs).await?;
        let mut accounts = Vec::with_capacity(replies.len());
        for (i, (r, (_, drawn))) in replies.iter().zip(&self.history).enumerate() {
            accounts.push(self.check(r)?);
            if r.token != *drawn {
                return Err(PipelineError::ReplayMismatch {
                    step: i,
                    drawn: r.token,
                    expected: *drawn,
                });
            }
        }
        self.accounts = accounts;
        Ok(())
    }

    /// What to do about `e`: `Err(e)` when the generation must fail; else the blamed peers
    /// are banned and excluded, and a new chain is planned (after a backoff where the
    /// failure cost an attempt).
    async fn decide(&mut self, e: PipelineError, attempt: &mut usize) -> Result<(), PipelineError> {
        // Dropping the session ends its stream; the surviving hops free their caches.
        self.session = None;
        let Some(failure) = e.failure().cloned() else {
            return Err(e);
        };
        if self.policy.max_attempts == 0 {
            return Err(e);
        }
        let hops: Vec<Hop> = self.chain.iter().map(ChainHop::hop).collect();
        let verdict = judge(&hops, &failure);
        tracing::warn!(
            attempt = *attempt,
            ?verdict,
            "hop failed: {e}; failing over"
        );
        match verdict {
            Verdict::Fatal => Err(e),
            Verdict::Reroute { ban, avoid } => {
                let mut fresh = false;
                for p in avoid {
                    fresh |= self.exclude.insert(p);
                }
                if let Some(peer) = ban {
                    self.exclude.insert(peer);
                    self.routes.report_failure(peer);
                }
                if (ban.is_some() || !fresh) && !self.count(attempt).await {
                    return Err(e);
                }
                self.chain = or_original(self.replan().await, e)?;
                Ok(())
            }
            Verdict::Unattributed => {
                if !self.count(attempt).await {
                    return Err(e);
                }
                self.chain = or_original(self.replan_after_silence().await, e)?;
                Ok(())
            }
        }
    }

    /// Counts one attempt and backs off; `false` when the policy's attempts are used up.
    async fn count(&self, attempt: &mut usize) -> bool {
        if *attempt >= self.policy.max_attempts {
            return false;
        }
        *attempt += 1;
        tokio::time::sleep(self.policy.backoff * (1u32 << (*attempt - 1).min(6))).await;
        true
    }

    /// A chain without the excluded peers. No chain at all may be a moment's view (a
    /// restarted peer's record or first ping still on its way): wait for coverage,
    /// bounded, before the error that names the uncovered layers.
    async fn replan(&self) -> Result<Vec<ChainHop>, PipelineError> {
        let deadline = Instant::now() + self.policy.notice_wait;
        loop {
            match self.routes.route(&self.exclude) {
                Err(RouteError::Uncovered { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => {
                    let chain = r?;
                    tracing::info!(
                        hops = chain.len(),
                        replay_steps = self.history.len(),
                        "failover: re-planned"
                    );
                    return Ok(chain);
                }
            }
        }
    }

    /// After a failure nobody could be named for: wait (bounded) for the mesh to plan a
    /// chain that differs from the failed one (it stops routing through a peer that no
    /// longer answers its pings), else hold the first hop to account.
    async fn replan_after_silence(&mut self) -> Result<Vec<ChainHop>, PipelineError> {
        let failed: Vec<PeerId> = self.chain.iter().map(|h| h.peer).collect();
        let same = |c: &[ChainHop]| c.iter().map(|h| h.peer).eq(failed.iter().copied());
        let deadline = Instant::now() + self.policy.notice_wait;
        loop {
            match self.routes.route(&self.exclude) {
                Ok(c) if !same(&c) => return Ok(c),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => break,
            }
        }
        if let Some(first) = failed.first() {
            self.exclude.insert(*first);
            self.routes.report_failure(*first);
        }
        self.replan().await
    }
}
