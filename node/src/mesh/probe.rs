//! Measuring hops: the probing task behind the speed book ([`super::speed`]).
//!
//! Why probe sessions rather than attributing the entry's real step times to hops (least
//! squares over the chains it ran): attribution needs many distinct chains before it can
//! separate two hops that always run together, and a hop that lies about its speed gets
//! the routes (and so the chains) that would expose it only after it has had them. A probe
//! measures a candidate before it gets traffic, alone, with nothing else to blame.
//!
//! A probe is an ordinary data-plane session, as a `--private-ends` entry opens one: the
//! same `Hello`, hidden states in (f32), the last row of hidden states back
//! ([`EndsAt::Entry`]), over the hop's whole announced range: a short prefill, then a few
//! one-row decode steps, each timed end to end. The median decode step minus the RTT ping
//! measured is the hop's time per token; its inverse, the measured tokens/s the book
//! weighs against the claim. A hop cannot tell a probe from a private-ends client's
//! session, so it cannot serve probes fast and clients slowly.
//!
//! Bounded: only route candidates ([`MeshHandle::route_candidates`]) are probed, each at
//! most once per [`ProbeOptions::every`] (a failed one again after
//! [`ProbeOptions::retry_after`]), at most [`ProbeOptions::max_concurrent`] at a time,
//! each within [`ProbeOptions::timeout`], and every probe stops with the node. A probe
//! that fails records nothing: failures are the blame rules' business (bans), the book
//! measures speed only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lamina_protocol::{
    Close, EndsAt, Forward, ForwardInput, Hello, LayerRange, Message, ModelId, OpenSession,
    StepOutput, WireDType, WireTensor,
};
use libp2p::PeerId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{MeshError, MeshHandle};
use crate::dataplane::{Dialer, FramedRecv};
use crate::pipeline::recv::recv_answer;

/// How the probing task runs.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The model's hidden size (the width of the rows a probe sends).
    pub dim: usize,
    /// One probe per peer at most this often. Default 60 s.
    pub every: Duration,
    /// How often the candidates are reviewed. Default 2 s.
    pub tick: Duration,
    /// Probes running at once. Default 2.
    pub max_concurrent: usize,
    /// Bound on one whole probe. Default 15 s.
    pub timeout: Duration,
    /// A probe that failed is tried again this soon (default 5 s), not a whole
    /// [`every`](Self::every) later: a transient failure (a hop still starting, a lost
    /// connection) must not leave routing on the hop's unchecked claim for a minute.
    pub retry_after: Duration,
    /// Rows of the probe's prefill, at least (each probe picks up to four times this).
    /// Default 8.
    pub prefill_rows: u32,
    /// Timed decode steps. Default 5 (the median is taken).
    pub decode_steps: u32,
    /// The name in `Hello`: the one the entry's own sessions use.
    pub client_name: String,
}

impl ProbeOptions {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            every: Duration::from_secs(60),
            tick: Duration::from_secs(2),
            max_concurrent: 2,
            timeout: Duration::from_secs(15),
            retry_after: Duration::from_secs(5),
            prefill_rows: 8,
            decode_steps: 5,
            client_name: crate::pipeline::PipelineOptions::default().client_name,
        }
    }
}

/// Probes route candidates until `stop`, recording each measurement in `mesh`.
pub async fn run(mesh: MeshHandle, dialer: Dialer, opts: ProbeOptions, stop: CancellationToken) {
    // When each peer may be probed next.
    let mut next: HashMap<PeerId, Instant> = HashMap::new();
    let mut running: JoinSet<(PeerId, Result<f64, MeshError>)> = JoinSet::new();
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok((peer, Ok(tps))) => {
                        tracing::debug!(%peer, tokens_per_sec = tps, "probe: measured");
                        mesh.record_speed(peer, tps);
                    }
                    Ok((peer, Err(e))) => {
                        tracing::info!(%peer, "probe failed (again in {:?}): {e}", opts.retry_after);
                        next.insert(peer, Instant::now() + opts.retry_after);
                    }
                    Err(e) => tracing::debug!("probe task: {e}"),
                }
            }
            _ = tick.tick() => {
                // Bounded by the peers probed within one interval.
                let now = Instant::now();
                next.retain(|_, t| *t > now);
                let mut cands = mesh.route_candidates();
                // Unmeasured peers first: their claims are unchecked.
                let snap = mesh.snapshot();
                cands.sort_by_key(|(p, _)| snap.speeds.get(p).is_some());
                for (peer, a) in cands {
                    if running.len() >= opts.max_concurrent {
                        break;
                    }
                    let Some(layers) = a.layers else { continue };
                    if next.contains_key(&peer) {
                        continue;
                    }
                    next.insert(peer, now + opts.every);
                    let rtt = snap.obs.rtt.get(&peer).copied().unwrap_or_default();
                    let target = Target {
                        peer,
                        addr: a.dataplane_addr.clone(),
                        layers,
                        model_id: a.model_id,
                    };
                    let (dialer, opts) = (dialer.clone(), opts.clone());
                    running.spawn(async move {
                        let r = tokio::time::timeout(opts.timeout, probe(&dialer, &target, &opts))
                            .await
                            .unwrap_or_else(|_| Err(MeshError::Probe(format!(
                                "no result within {:?}", opts.timeout
                            ))));
                        (peer, r.map(|step| tokens_per_sec(step, rtt)))
                    });
                }
            }
        }
    }
    running.abort_all();
}

/// The tokens/s a median decode step of `step` means once the network's share (`rtt`) is
/// taken out. The hop is never credited with more than ten times the raw figure, so a
/// step that took about one RTT does not become an infinite speed.
pub fn tokens_per_sec(step: Duration, rtt: Duration) -> f64 {
    let raw = step.as_secs_f64().max(1e-6);
    let compute = (raw - rtt.as_secs_f64()).max(raw / 10.0);
    1.0 / compute
}

/// The hop a probe measures.
struct Target {
    peer: PeerId,
    addr: String,
    layers: LayerRange,
    model_id: ModelId,
}

/// One probe session: the median decode step time.
async fn probe(dialer: &Dialer, t: &Target, opts: &ProbeOptions) -> Result<Duration, MeshError> {
    let err = |what: &str, e: &dyn std::fmt::Display| MeshError::Probe(format!("{what}: {e}"));
    let (mut tx, mut rx) = dialer
        .open_stream(&t.addr, t.peer)
        .await
        .map_err(|e| err("connect", &e))?;
    let session_id = crate::ids::new_session_id();
    // Sizes vary per probe (from the session id, itself random), so that a hop cannot
    // tell probes by a fixed prefill length or session length at open time.
    let mut seed = u64::from_le_bytes(session_id.as_bytes()[..8].try_into().unwrap_or([7; 8]));
    let base = opts.prefill_rows.max(1);
    let rows = base.saturating_add((seed % u64::from(base.saturating_mul(3))) as u32);
    let slack = 16 + ((seed >> 16) % 497) as u32;
    let open = OpenSession {
        session_id,
        model_id: t.model_id,
        layers: t.layers,
        max_length: rows.saturating_add(opts.decode_steps).saturating_add(slack),
        activation_dtype: crate::pipeline::PipelineOptions::default().activation_dtype,
        sampling: None,
        return_logits: false,
        next_hops: vec![],
        ends: EndsAt::Entry,
        trace_id: None,
    };
    let hello =
        Hello::new(t.model_id, opts.client_name.clone()).with_member(dialer.member().cloned());
    for m in [Message::Hello(hello), Message::OpenSession(open)] {
        tx.send(&m).await.map_err(|e| err("send", &e))?;
    }
    for want in ["HelloAck", "SessionOpened"] {
        let m = answer(&mut rx, opts.timeout).await?;
        let ok = matches!(
            (&m, want),
            (Message::HelloAck(_), "HelloAck") | (Message::SessionOpened(_), "SessionOpened")
        );
        if !ok {
            return Err(MeshError::Probe(format!(
                "{want} expected, got {}",
                m.kind()
            )));
        }
    }
    let mut position = 0u32;
    let mut times = Vec::with_capacity(opts.decode_steps as usize);
    for step in 0..=u64::from(opts.decode_steps) {
        let n = if step == 0 { rows } else { 1 };
        let input = hidden_rows(n, opts.dim, &mut seed)?;
        let f = Forward {
            session_id,
            step,
            start_pos: position,
            input,
        };
        position = position.saturating_add(n);
        let t0 = Instant::now();
        tx.send(&Message::Forward(f))
            .await
            .map_err(|e| err("send", &e))?;
        match answer(&mut rx, opts.timeout).await? {
            Message::StepResult(r)
                if r.step == step
                    && r.session_id == session_id
                    && matches!(r.output, StepOutput::Hidden(_)) => {}
            m => {
                return Err(MeshError::Probe(format!(
                    "step {step} answered with {}",
                    m.kind()
                )))
            }
        }
        if step > 0 {
            times.push(t0.elapsed());
        }
    }
    let _ = tx.send(&Message::Close(Close { session_id })).await;
    tx.finish();
    times.sort();
    times
        .get(times.len() / 2)
        .copied()
        .ok_or_else(|| MeshError::Probe("no decode step timed".into()))
}

/// The hop's next answer that is not `Progress`; an error reply is a failed probe.
async fn answer(rx: &mut FramedRecv, silence: Duration) -> Result<Message, MeshError> {
    match recv_answer(rx, silence, silence).await {
        Ok(Message::Error(e)) => Err(MeshError::Probe(format!("refused: {:?}", e.code))),
        Ok(m) => Ok(m),
        Err(e) => Err(MeshError::Probe(format!("answer: {e}"))),
    }
}

/// `n` rows of plausible hidden states (small, varied values), f32 like an entry's own
/// embeddings.
fn hidden_rows(n: u32, dim: usize, seed: &mut u64) -> Result<ForwardInput, MeshError> {
    let len = (n as usize)
        .checked_mul(dim)
        .ok_or_else(|| MeshError::Probe("probe input too large".into()))?;
    let v: Vec<f32> = (0..len)
        .map(|_| {
            // xorshift64*: deterministic per session, no dependency.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let dim = u32::try_from(dim).map_err(|_| MeshError::Probe("model width over u32".into()))?;
    let t = WireTensor::from_f32(&[n, dim], &v, WireDType::F32)
        .map_err(|e| MeshError::Probe(e.to_string()))?;
    Ok(ForwardInput::Hidden(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtt_is_taken_out_but_never_makes_a_hop_infinitely_fast() {
        let ms = Duration::from_millis;
        assert!((tokens_per_sec(ms(20), ms(10)) - 100.0).abs() < 1e-9);
        assert!((tokens_per_sec(ms(10), Duration::ZERO) - 100.0).abs() < 1e-9);
        // A step no longer than the RTT: ten times the raw figure at most.
        assert!((tokens_per_sec(ms(10), ms(50)) - 1000.0).abs() < 1e-6);
        assert!(tokens_per_sec(Duration::ZERO, Duration::ZERO).is_finite());
    }

    #[test]
    fn probe_rows_are_shaped_and_small() {
        let mut seed = 42;
        let ForwardInput::Hidden(t) = hidden_rows(3, 16, &mut seed).unwrap() else {
            panic!("hidden");
        };
        assert_eq!(t.shape(), [3, 16]);
        let v = t.to_f32().unwrap();
        assert!(v.iter().all(|x| x.abs() <= 0.05 && x.is_finite()));
        assert!(v.windows(2).any(|w| w[0] != w[1]));
    }
}
