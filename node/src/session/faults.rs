//! Faults a session server can be told to inject into its own sessions.
//!
//! Why a hook in the real server rather than a fake one: the churn harness
//! (`tests/churn_harness.rs`) must exercise the very code that runs in production (framing,
//! relaying, deadlines, failover) with peers that crash, hang or talk garbage. Faults are
//! keyed on step numbers, not on times, so a seeded scenario fails at the same point of the
//! generation on any machine. A server without a plan (`ServerOptions::faults` is `None`,
//! the only setting the daemon uses) pays one branch per step.
//!
//! Every armed fault fires once: on the first `Forward` of that step number this server
//! receives, in whichever session, and is then gone (a replayed step on a new chain does
//! not fail again).
//!
//! A plan may also hold a standing [`Adversary`] (`lamina node --adversary MODE`, hidden,
//! for drills only): a misbehaviour on every step or a fraction of them, so that the
//! defences (signed step evidence, spot-check verification, bans, limits) can be watched
//! at work on a testnet. The honest path still pays one branch per step: the daemon's plan
//! is `None` unless a drill asked for one.

use std::ops::ControlFlow;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use lamina_protocol::{ErrorCode, Message, WireTensor};

use super::compute::StepOut;
use crate::dataplane::{FramedRecv, FramedSend};
use crate::ids::SplitMix;

/// A standing misbehaviour of a node, for drills (`--adversary MODE[:fraction]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Adversary {
    /// Perturbs its output activations (a last hop: draws another in-range token) on
    /// `fraction` of its steps, chosen by a seeded generator.
    Corrupt { fraction: f64 },
    /// As a last hop, answers a token id outside the vocabulary on `fraction` of steps.
    HugeToken { fraction: f64 },
    /// Accepts sessions and never answers a step (holds the stream until the upstream
    /// gives up on it).
    Stall,
    /// Announces [`INFLATE_FACTOR`] times the tokens/s it measured.
    Inflate,
    /// Opens data-plane streams to the other nodes and sends half frames, up to
    /// [`FLOOD_STREAMS_PER_PEER`] per peer, for [`FLOOD_DURATION`], then stops.
    Flood,
}

/// The default fraction of steps `corrupt` tampers with.
pub const DEFAULT_CORRUPT_FRACTION: f64 = 0.5;
/// How much an `inflate` node exaggerates its speed.
pub const INFLATE_FACTOR: f32 = 100.0;
/// Streams a `flood` node holds open per peer (above the per-connection limits a node
/// should enforce, so the drill shows the limit at work).
pub const FLOOD_STREAMS_PER_PEER: usize = 2048;
/// How long a `flood` node floods before it lets go of everything.
pub const FLOOD_DURATION: Duration = Duration::from_secs(60);

impl FromStr for Adversary {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mode, fraction) = match s.split_once(':') {
            Some((m, f)) => {
                let f: f64 = f
                    .parse()
                    .map_err(|_| format!("`{f}` is not a fraction (0..=1)"))?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(format!("fraction {f} is outside 0..=1"));
                }
                (m, Some(f))
            }
            None => (s, None),
        };
        let fixed = |a: Adversary| match fraction {
            Some(_) => Err(format!("`{mode}` takes no fraction")),
            None => Ok(a),
        };
        match mode {
            "corrupt" => Ok(Adversary::Corrupt {
                fraction: fraction.unwrap_or(DEFAULT_CORRUPT_FRACTION),
            }),
            "huge-token" => Ok(Adversary::HugeToken {
                fraction: fraction.unwrap_or(1.0),
            }),
            "stall" => fixed(Adversary::Stall),
            "inflate" => fixed(Adversary::Inflate),
            "flood" => fixed(Adversary::Flood),
            m => Err(format!(
                "unknown adversary `{m}` (corrupt[:f], huge-token[:f], stall, inflate, flood)"
            )),
        }
    }
}

/// One injected failure, at a step number (0 is the prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Closes the connection the step arrived on, as a crashed process would: the
    /// upstream sees its stream fail.
    DropConnectionAtStep(u64),
    /// Never answers the step and holds the stream open, as a hung process would, until
    /// the upstream gives up on it.
    StallAtStep(u64),
    /// Answers the step with bytes that are no frame.
    GarbageAtStep(u64),
    /// Answers the step with an `Internal` error reply.
    ErrorAtStep(u64),
}

impl Fault {
    /// The step the fault fires at.
    pub fn step(&self) -> u64 {
        match *self {
            Fault::DropConnectionAtStep(s)
            | Fault::StallAtStep(s)
            | Fault::GarbageAtStep(s)
            | Fault::ErrorAtStep(s) => s,
        }
    }
}

/// The faults armed on one server. Shared (`Arc`) between the server and whoever arms it.
#[derive(Debug, Default)]
pub struct FaultPlan {
    armed: Mutex<Vec<Fault>>,
    adversary: Option<Adversary>,
    rng: Mutex<Option<SplitMix>>,
}

impl FaultPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// A plan whose server behaves as `adversary` on every session; `seed` chooses the
    /// steps a fractional mode picks.
    pub fn adversary(adversary: Adversary, seed: u64) -> Self {
        Self {
            armed: Mutex::default(),
            adversary: Some(adversary),
            rng: Mutex::new(Some(SplitMix(seed))),
        }
    }

    /// The standing misbehaviour, if any.
    pub fn adversary_mode(&self) -> Option<Adversary> {
        self.adversary
    }

    /// Whether this step is one of the `fraction` the adversary picks.
    fn pick(&self, fraction: f64) -> bool {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rng.as_mut().is_some_and(|r| r.unit() < fraction)
    }

    /// The tokens/s to announce for a measured `tps` (an `inflate` node exaggerates).
    pub fn announced_tps(plan: Option<&Self>, tps: f64) -> f32 {
        let f = match plan.and_then(|p| p.adversary) {
            Some(Adversary::Inflate) => INFLATE_FACTOR,
            _ => 1.0,
        };
        tps as f32 * f
    }

    /// Tampers with a step's output as the adversary says (`corrupt`, `huge-token`);
    /// `vocab` is the model's vocabulary size. Runs before the hop signs its evidence, so
    /// the adversary's records are consistent with what it sends: only re-execution (or
    /// a range check) can catch it.
    pub fn tamper(&self, out: &mut StepOut, vocab: u32) {
        match (self.adversary, out) {
            (Some(Adversary::Corrupt { fraction }), StepOut::Hidden(h)) if self.pick(fraction) => {
                if let Some(t) = perturbed(h) {
                    tracing::warn!("adversary: corrupting this step's activations");
                    *h = t;
                }
            }
            (Some(Adversary::Corrupt { fraction }), StepOut::Token { id, .. })
                if vocab > 1 && self.pick(fraction) =>
            {
                tracing::warn!("adversary: drawing a wrong token");
                *id = id.wrapping_add(1) % vocab;
            }
            (Some(Adversary::HugeToken { fraction }), StepOut::Token { id, .. })
                if self.pick(fraction) =>
            {
                tracing::warn!("adversary: drawing an out-of-range token");
                *id = u32::MAX - (*id % 1024);
            }
            _ => {}
        }
    }
}

/// `h` with every element moved by up to the tensor's largest magnitude (a change no
/// rounding explains, large enough to change what the next layers compute).
fn perturbed(h: &WireTensor) -> Option<WireTensor> {
    let mut v = h.to_f32().ok()?;
    let scale = v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    for (i, x) in v.iter_mut().enumerate() {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        *x += sign * scale * 0.5;
    }
    WireTensor::from_f32(h.shape(), &v, h.dtype()).ok()
}

impl FaultPlan {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Arms `fault` (once).
    pub fn arm(&self, fault: Fault) {
        self.lock().push(fault);
    }

    /// Removes and returns the first fault armed for `step`, if any.
    pub fn take(&self, step: u64) -> Option<Fault> {
        let mut armed = self.lock();
        let i = armed.iter().position(|f| f.step() == step)?;
        Some(armed.remove(i))
    }

    /// The faults that have not fired yet (a test checks its fault really happened).
    pub fn pending(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Disarms everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl FaultPlan {
    /// The fault armed for `msg`, if it is a `Forward` of an armed step (taken: it fires
    /// once); a `stall` adversary stalls every step.
    pub fn take_for(&self, msg: &Message) -> Option<Fault> {
        match msg {
            Message::Forward(f) if self.adversary == Some(Adversary::Stall) => {
                Some(Fault::StallAtStep(f.step))
            }
            Message::Forward(f) => self.take(f.step),
            _ => None,
        }
    }
}

/// Fails the step as `fault` says; whether the stream goes on. `conn` is the connection
/// the stream rides on (a dropped connection closes it); `hold` bounds a stall.
pub async fn inject(
    fault: Fault,
    conn: Option<&quinn::Connection>,
    tx: &mut FramedSend,
    rx: &mut FramedRecv,
    hold: Duration,
) -> ControlFlow<()> {
    tracing::warn!(?fault, "injecting a fault");
    match fault {
        Fault::DropConnectionAtStep(_) => {
            if let Some(c) = conn {
                c.close(0u32.into(), b"injected fault");
            }
            ControlFlow::Break(())
        }
        Fault::StallAtStep(_) => {
            // Hold the stream without answering until the upstream drops it.
            let _ =
                tokio::time::timeout(hold, async { while let Ok(Some(_)) = rx.recv().await {} })
                    .await;
            ControlFlow::Break(())
        }
        Fault::GarbageAtStep(_) => {
            // A length prefix far over any limit: the reader's decoder fails at once.
            let _ = tx.send_raw(&[0xff; 16]).await;
            ControlFlow::Continue(())
        }
        Fault::ErrorAtStep(s) => {
            let e = Message::error(ErrorCode::Internal, format!("injected fault at step {s}"));
            let _ = tx.send(&e).await;
            ControlFlow::Continue(())
        }
    }
}

/// How long a `flood` node waits for one stream to open (a peer that grants no more
/// streams on the connection makes it stop flooding that peer).
const FLOOD_OPEN_WAIT: Duration = Duration::from_secs(1);

/// The `flood` drill: opens streams to every peer `targets` names (data-plane address,
/// peer id) and on each sends the first bytes of a frame that announces a large body and
/// never completes, holding them until [`FLOOD_DURATION`] is over or `stop` fires. Bounded:
/// at most [`FLOOD_STREAMS_PER_PEER`] per peer, one round, then it lets go by itself.
pub async fn flood(
    dialer: crate::dataplane::Dialer,
    targets: Vec<(String, libp2p::PeerId)>,
    stop: tokio_util::sync::CancellationToken,
) {
    // A length prefix of 60 MiB (under the default 64 MiB limit), a tag, and a little of
    // the header: a receiver waits for the rest.
    let mut half = (60u32 << 20).to_le_bytes().to_vec();
    half.extend_from_slice(&[5u8, 0, 0, 0, 0]);
    half.extend_from_slice(&[0u8; 1024]);
    let mut held = Vec::new();
    let started = tokio::time::Instant::now();
    tracing::warn!(peers = targets.len(), "adversary: flooding");
    'peers: for (addr, peer) in targets {
        for _ in 0..FLOOD_STREAMS_PER_PEER {
            if stop.is_cancelled() || started.elapsed() >= FLOOD_DURATION {
                break 'peers;
            }
            let opened = tokio::time::timeout(FLOOD_OPEN_WAIT, dialer.open_stream(&addr, peer));
            match opened.await {
                Ok(Ok((mut tx, rx))) => {
                    if tx.send_raw(&half).await.is_err() {
                        continue 'peers;
                    }
                    held.push((tx, rx));
                }
                _ => continue 'peers,
            }
        }
    }
    tracing::warn!(streams = held.len(), "adversary: flood holding its streams");
    let left = FLOOD_DURATION.saturating_sub(started.elapsed());
    tokio::select! {
        _ = tokio::time::sleep(left) => {}
        _ = stop.cancelled() => {}
    }
    tracing::warn!("adversary: flood over");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_once_at_its_step() {
        let p = FaultPlan::new();
        p.arm(Fault::StallAtStep(3));
        p.arm(Fault::ErrorAtStep(1));
        assert_eq!(p.take(0), None);
        assert_eq!(p.take(3), Some(Fault::StallAtStep(3)));
        assert_eq!(p.take(3), None, "fired already");
        assert_eq!(p.pending(), vec![Fault::ErrorAtStep(1)]);
        p.clear();
        assert_eq!(p.take(1), None);
    }

    #[test]
    fn adversary_modes_parse_with_their_fractions() {
        assert_eq!(
            "corrupt".parse(),
            Ok(Adversary::Corrupt {
                fraction: DEFAULT_CORRUPT_FRACTION
            })
        );
        assert_eq!(
            "corrupt:0.25".parse(),
            Ok(Adversary::Corrupt { fraction: 0.25 })
        );
        assert_eq!(
            "huge-token".parse(),
            Ok(Adversary::HugeToken { fraction: 1.0 })
        );
        assert_eq!("stall".parse(), Ok(Adversary::Stall));
        assert_eq!("inflate".parse(), Ok(Adversary::Inflate));
        assert_eq!("flood".parse(), Ok(Adversary::Flood));
        assert!("corrupt:2".parse::<Adversary>().is_err());
        assert!("stall:0.5".parse::<Adversary>().is_err());
        assert!("lie".parse::<Adversary>().is_err());
    }

    #[test]
    fn tampering_is_seeded_and_changes_what_it_picks() {
        let out = || StepOut::Token {
            id: 7,
            logits: None,
        };
        let run = |seed| {
            let p = FaultPlan::adversary(Adversary::Corrupt { fraction: 0.5 }, seed);
            (0..64)
                .map(|_| {
                    let mut o = out();
                    p.tamper(&mut o, 512);
                    matches!(o, StepOut::Token { id: 8, .. })
                })
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1), "the same seed picks the same steps");
        let picked = a.iter().filter(|x| **x).count();
        assert!((16..=48).contains(&picked), "{picked} of 64");
        let huge = FaultPlan::adversary(Adversary::HugeToken { fraction: 1.0 }, 0);
        let mut o = out();
        huge.tamper(&mut o, 512);
        assert!(matches!(o, StepOut::Token { id, .. } if id >= 512));
        let h = WireTensor::from_f32(
            &[1, 4],
            &[0.5, -1.0, 2.0, 0.0],
            lamina_protocol::WireDType::F32,
        )
        .unwrap();
        let mut o = StepOut::Hidden(h.clone());
        FaultPlan::adversary(Adversary::Corrupt { fraction: 1.0 }, 0).tamper(&mut o, 512);
        assert!(matches!(o, StepOut::Hidden(t) if t != h));
        let inflate = FaultPlan::adversary(Adversary::Inflate, 0);
        assert_eq!(FaultPlan::announced_tps(Some(&inflate), 2.0), 200.0);
        assert_eq!(FaultPlan::announced_tps(None, 2.0), 2.0);
    }
}
