//! One data-plane stream, one session: the loop that reads a message, lets the state
//! machine check it, does what it asks (open the session here and on the next hop, run a
//! step, close), and answers. Every error it sends is signed (see [`super::reporter`]).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use lamina_protocol::{
    Closed, EndsAt, ErrorCode, ErrorMessage, Forward, ForwardInput, LayerRange, Message,
    OpenSession, Progress, SessionId, SessionOpened, StepOutput, StepProduct, StepResult,
    WireDType, PROGRESS_INTERVAL_MS,
};
use lamina_sharding::executor::Shard;
use lamina_sharding::sampling::Sampler;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::compute::{SessionCompute, Step, StepError, StepOut};
use super::machine::{Role, StreamMachine};
use super::next_hop::{NextHop, Upstream};
use super::server::{Served, SessionServer};
use crate::dataplane::{FramedRecv, FramedSend, RecvError};
use crate::limits::{kv_bytes, Bound, KvReservation};
use libp2p::PeerId;

/// How long a refused stream is still read (and what arrives dropped), so that the peer
/// reads the refusal before its stream is stopped.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The session a stream carries, once it is open.
struct Live {
    session_id: SessionId,
    /// The layers this session runs: the node's shard, or a part of it.
    shard: Arc<Shard>,
    /// Moved to the compute thread for each step and back; `None` after a step was lost.
    compute: Option<SessionCompute>,
    next: Option<NextHop>,
    dtype: WireDType,
    _permit: OwnedSemaphorePermit,
    /// The session's share of the node's KV budget.
    _kv: KvReservation,
}

/// The state of one stream.
struct Stream {
    server: Arc<SessionServer>,
    served: Arc<Served>,
    machine: StreamMachine,
    live: Option<Live>,
    /// The session named by the last message about one (what reports are bound to).
    session: Option<SessionId>,
    /// The layers reports name: the session's, once asked for.
    layers: LayerRange,
    /// The peer the data plane's handshake proved, which the gate judges at `Hello`.
    peer: Option<PeerId>,
    /// The gate refused the peer: the stream ends after the refusal is sent.
    refused: bool,
}

/// Serves one stream (one session) until it ends, is closed or expires. `conn` is the
/// connection it rides on, which an injected fault may close.
pub(super) async fn serve(
    server: Arc<SessionServer>,
    conn: Option<quinn::Connection>,
    peer: Option<PeerId>,
    mut tx: FramedSend,
    mut rx: FramedRecv,
) {
    let served = server.current();
    let layers = served.host.layers;
    let span = tracing::info_span!(
        "session",
        layers = %layers,
        session = tracing::field::Empty,
        trace = tracing::field::Empty
    );
    let mut s = Stream {
        machine: StreamMachine::new(served.host.clone()),
        server: server.clone(),
        served,
        live: None,
        session: None,
        layers,
        peer,
        refused: false,
    };
    let idle = server.options().idle_timeout;
    let open_within = server.options().peers.open_within;
    let open_limits = server.options().limits;
    // Until the session opens, the stream has `open_within` in all; after, each accepted
    // request buys `idle` more. Refused requests buy nothing, so a peer cannot hold a
    // slot by sending garbage.
    let mut deadline = tokio::time::Instant::now() + open_within.min(idle);
    let mut widened = false;
    async move {
        loop {
            let msg = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    if let Some(l) = &s.live {
                        tracing::info!("idle timeout");
                        let closed = Message::Closed(Closed {
                            session_id: l.session_id,
                        });
                        let _ = tx.send(&closed).await;
                    } else if !s.machine.is_closed() {
                        tracing::info!("no session opened within {open_within:?}");
                        s.server.refusals().count(Bound::OpenDeadline);
                        let e = s.own(
                            ErrorCode::OverLimit,
                            format!("no session opened within {open_within:?}"),
                        );
                        let _ = tx.send(&Message::Error(e)).await;
                    }
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
                Ok(Err(RecvError::Stream(e))) => {
                    tracing::debug!("stream failed: {e}");
                    break;
                }
                Ok(Err(RecvError::Protocol(e))) => {
                    tracing::debug!("bad frame: {e}");
                    if e.code() == ErrorCode::FrameTooLarge {
                        s.server.refusals().count(Bound::FrameSize);
                    }
                    let reply = s.sign(ErrorMessage::from(&e));
                    let _ = tx.send(&Message::Error(reply)).await;
                    if e.is_fatal() {
                        break;
                    }
                    continue;
                }
            };
            if let Some(plan) = &server.options().faults {
                if let Some(fault) = plan.take_for(&msg) {
                    match super::faults::inject(fault, conn.as_ref(), &mut tx, &mut rx, idle).await
                    {
                        ControlFlow::Continue(()) => continue,
                        ControlFlow::Break(()) => break,
                    }
                }
            }
            // A step may wait for compute behind other sessions, compute, and wait for
            // the next hop: say "still working" meanwhile, so the caller's silence
            // deadline measures stalls, not queues.
            let progress = match &msg {
                Message::Forward(f) => Some(Message::Progress(Progress {
                    session_id: f.session_id,
                    step: f.step,
                })),
                _ => None,
            };
            let work = s.handle(msg);
            let reply = match &progress {
                Some(p) => with_progress(work, &mut tx, p).await,
                None => work.await,
            };
            let done = s.machine.is_closed();
            let accepted = matches!(&reply, Some(m) if !matches!(m, Message::Error(_)));
            if s.live.is_some() {
                if !widened {
                    // Open: the session's frames (a prefill chunk's activations) may come.
                    rx.set_limits(open_limits);
                    widened = true;
                }
                if accepted {
                    deadline = tokio::time::Instant::now() + idle;
                }
            }
            if let Some(reply) = reply {
                if let Err(e) = tx.send(&reply).await {
                    if matches!(e, crate::dataplane::DataPlaneError::SendTimeout(_)) {
                        s.server.refusals().count(Bound::SendDeadline);
                    }
                    tracing::debug!("cannot reply: {e}");
                    break;
                }
            }
            if done || s.refused {
                break;
            }
        }
        if let Some(mut l) = s.live.take() {
            if let Some(next) = &mut l.next {
                next.abandon(!s.machine.is_closed()).await;
            }
        }
        tx.finish();
        if s.refused {
            // Read (and drop) what the peer pipelined behind its `Hello` for a moment:
            // dropping the stream at once would stop its sends, and it would see a broken
            // stream (a link failure, blamed) instead of the refusal.
            let drain = async { while let Ok(Some(_)) = rx.recv().await {} };
            let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
        }
    }
    .instrument(span)
    .await
}

impl Stream {
    /// `e` as this hop's own signed error about the stream's session.
    fn sign(&self, e: ErrorMessage) -> ErrorMessage {
        self.server
            .reporter()
            .own(self.session, self.layers, e.code, e.message)
    }

    fn own(&self, code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
        self.server
            .reporter()
            .own(self.session, self.layers, code, message)
    }

    /// The gate's judgement of the peer at `Hello`, before anything else it asks for: the
    /// state machine accepts nothing but `Hello` first, so a refused peer opens nothing.
    fn admit(&mut self, h: &lamina_protocol::Hello) -> Result<(), ErrorMessage> {
        let now = crate::ids::now_ms() / 1000;
        let verdict = match &self.peer {
            Some(p) => self
                .server
                .options()
                .gate
                .read(|g| g.judge(p, h.member.as_ref(), now).map(|_| ())),
            None => self.server.options().gate.read(|g| {
                if g.is_open() {
                    Ok(())
                } else {
                    Err(lamina_protocol::MemberError::Missing)
                }
            }),
        };
        verdict.map_err(|reason| {
            let peer = self
                .peer
                .map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(%peer, %reason, "gate: refused a peer");
            self.refused = true;
            ErrorMessage::new(ErrorCode::NotAMember, format!("not a member: {reason}"))
        })
    }

    async fn handle(&mut self, msg: Message) -> Option<Message> {
        if let Some(id) = msg.session_id() {
            self.session.get_or_insert(id);
        }
        let reply = match msg {
            Message::Hello(h) => match self.admit(&h) {
                Ok(()) => self.machine.on_hello(&h).map(Message::HelloAck),
                Err(e) => Err(e),
            },
            Message::OpenSession(o) => self.open(o).await,
            Message::Forward(f) => self.forward(f).await,
            Message::Close(c) => match self.machine.check_close(c.session_id) {
                Ok(()) => {
                    let idle = self.server.options().idle_timeout;
                    if let Some(next) = self.live.as_mut().and_then(|l| l.next.as_mut()) {
                        next.close(idle).await;
                    }
                    self.machine.closed();
                    self.live = None;
                    tracing::info!("closed");
                    Ok(Message::Closed(Closed {
                        session_id: c.session_id,
                    }))
                }
                Err(e) => Err(e),
            },
            Message::Error(e) => {
                tracing::debug!("peer reported {}: {}", e.code, e.message);
                return None;
            }
            other => Err(ErrorMessage::new(
                ErrorCode::UnexpectedMessage,
                format!("{} is not a request", other.kind()),
            )),
        };
        Some(match reply {
            Ok(m) => m,
            // Errors already signed (relayed from below, or this hop's own report about
            // its next hop) go up as they are; the state machine's are signed here.
            Err(e) if e.report.is_some() => Message::Error(e),
            Err(e) => Message::Error(self.sign(e)),
        })
    }

    async fn open(&mut self, o: OpenSession) -> Result<Message, ErrorMessage> {
        self.layers = o.layers;
        let server = self.server.clone();
        if server.is_draining() {
            return Err(self.own(
                ErrorCode::ShuttingDown,
                format!(
                    "{} is shutting down: open the session elsewhere",
                    server.options().node_name
                ),
            ));
        }
        let permit = server.try_slot();
        let role = self.machine.check_open(&o, permit.is_some())?;
        let Some(permit) = permit else {
            server.refusals().count(Bound::Sessions);
            return Err(self.own(ErrorCode::SessionLimit, "no free session slot"));
        };
        let span = tracing::Span::current();
        span.record("session", tracing::field::display(o.session_id));
        if let Some(t) = o.trace_id {
            span.record("trace", tracing::field::display(t));
        }
        let shard = if o.layers == self.served.host.layers {
            self.served.shard.clone()
        } else {
            Arc::new(
                self.served
                    .shard
                    .sub_shard(o.layers)
                    .map_err(|e| self.own(ErrorCode::LayerMismatch, e.to_string()))?,
            )
        };
        // The entry runs the ends: this hop takes and gives hidden states only.
        let shard = if o.ends == EndsAt::Entry && (shard.has_embedding() || shard.has_head()) {
            Arc::new(shard.without_ends())
        } else {
            shard
        };
        let cfg = shard.config();
        let want = kv_bytes(
            shard.range().len() as usize,
            cfg.kv_floats_per_position(),
            o.max_length,
        );
        let Some(kv) = server.kv_budget().reserve(want) else {
            server.refusals().count(Bound::KvBudget);
            let b = server.kv_budget();
            return Err(self.own(
                ErrorCode::Busy,
                format!(
                    "the KV budget is taken: {want} bytes asked, {} of {} held",
                    b.used(),
                    b.total()
                ),
            ));
        };
        let cache = shard
            .new_cache(o.max_length as usize)
            .map_err(|e| self.own(ErrorCode::ContextOverflow, e.to_string()))?;
        let sampler = match (role, &o.sampling) {
            (Role::Sample { .. }, Some(s)) => Some(
                Sampler::new(s.into())
                    .map_err(|e| self.own(ErrorCode::InvalidMessage, e.to_string()))?,
            ),
            _ => None,
        };
        let next = match o.for_next_hop() {
            Some((hop, next_open)) => {
                let me = Upstream {
                    reporter: server.reporter().clone(),
                    session_id: o.session_id,
                    layers: o.layers,
                };
                let name = &server.options().node_name;
                match NextHop::open(server.dialer(), me, name, hop, next_open).await {
                    Ok(n) => Some(n),
                    Err(f) => {
                        if let (true, Some(peer)) = (f.broken, hop.peer()) {
                            server.dialer().evict(&hop.addr, peer).await;
                        }
                        return Err(f.reply);
                    }
                }
            }
            None => None,
        };
        self.machine.opened(&o, role);
        self.live = Some(Live {
            session_id: o.session_id,
            shard,
            compute: Some(SessionCompute {
                cache,
                sampler,
                history: Vec::new(),
            }),
            next,
            dtype: o.activation_dtype,
            _permit: permit,
            _kv: kv,
        });
        tracing::info!(max_length = o.max_length, dtype = %o.activation_dtype, ?role, "opened");
        Ok(Message::SessionOpened(SessionOpened {
            session_id: o.session_id,
        }))
    }

    async fn forward(&mut self, f: Forward) -> Result<Message, ErrorMessage> {
        let rows = self.machine.check_forward(&f).inspect_err(|e| {
            if e.code == ErrorCode::OverLimit {
                self.server.refusals().count(Bound::StepRows);
            }
        })?;
        self.server.inputs().count(&f.input);
        let lost = || ErrorMessage::new(ErrorCode::Internal, "session state lost");
        let role = self.machine.session().map(|s| s.role).ok_or_else(lost)?;
        let l = self.live.as_mut().ok_or_else(lost)?;
        let Forward {
            session_id,
            step,
            start_pos,
            input,
        } = f;
        let input_digest = lamina_protocol::digest_input(&input);
        let span = tracing::debug_span!("step", step, rows);
        let compute = l.compute.take().ok_or_else(|| {
            ErrorMessage::new(
                ErrorCode::Internal,
                "the session's cache was lost in an earlier step",
            )
        })?;
        let work = Step {
            compute,
            input,
            rows: rows as usize,
            dtype: l.dtype,
            role,
        };
        let ran = self
            .server
            .compute()
            .step(l.shard.clone(), work)
            .instrument(span.clone())
            .await
            .map_err(|e| ErrorMessage::new(ErrorCode::Internal, e.to_string()))?;
        let (compute, out) = ran;
        l.compute = Some(compute);
        let mut out = out.map_err(|e| match e {
            StepError::BadInput(m) => ErrorMessage::new(ErrorCode::BadTensor, m),
            StepError::Internal(m) => ErrorMessage::new(ErrorCode::Internal, m),
        })?;
        if let Some(plan) = &self.server.options().faults {
            plan.tamper(&mut out, self.served.host.vocab_size);
        }
        self.machine.forwarded(step, rows);
        let output = match (out, role) {
            (StepOut::Hidden(h), Role::Forward) => {
                let next = l.next.as_mut().ok_or_else(|| {
                    ErrorMessage::new(ErrorCode::NextHopFailed, "the next hop is gone")
                })?;
                let sent = lamina_protocol::digest_tensor(&h);
                let f = Forward {
                    session_id,
                    step,
                    start_pos,
                    input: ForwardInput::Hidden(h),
                };
                let cap = self.server.options().idle_timeout;
                return match next.forward(f, sent, cap).instrument(span).await {
                    Ok(m) => Ok(self.server.reporter().seal(
                        m,
                        self.layers,
                        input_digest,
                        StepProduct::Hidden(sent),
                    )),
                    Err(failure) => {
                        // The session downstream is out of step with this hop now: later
                        // steps fail fast. A connection that failed is evicted, so the
                        // next session dials afresh; one that carried a typed answer
                        // works, and other sessions on it go on.
                        if let Some(mut next) = l.next.take() {
                            if failure.broken {
                                let hop = next.hop().clone();
                                if let Some(peer) = hop.peer() {
                                    self.server.dialer().evict(&hop.addr, peer).await;
                                }
                            } else {
                                next.abandon(false).await;
                            }
                        }
                        Err(failure.reply)
                    }
                };
            }
            (StepOut::Hidden(h), _) => StepOutput::Hidden(h),
            (StepOut::Token { id, logits }, _) => StepOutput::Token { id, logits },
        };
        let made = StepProduct::of(&output);
        let result = Message::StepResult(StepResult {
            session_id,
            step,
            output,
            evidence: Vec::new(),
        });
        Ok(self
            .server
            .reporter()
            .seal(result, self.layers, input_digest, made))
    }
}

/// Runs `work`, sending `progress` on `tx` every [`PROGRESS_INTERVAL_MS`] until it is
/// done. A failed send is ignored: the reply's own send reports a dead stream.
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    tx: &mut FramedSend,
    progress: &Message,
) -> T {
    let every = Duration::from_millis(PROGRESS_INTERVAL_MS);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = tick.tick() => {
                let _ = tx.send(progress).await;
            }
        }
    }
}
