//! The session server: accepts data-plane connections, runs one task per stream (= per
//! session), keeps the session's KV cache, runs forward steps on blocking threads, forwards
//! hidden states to the next hop itself and relays the result back upstream.
//!
//! Results travel back along the chain (each hop relays the `StepResult` of its next hop on
//! the same stream) rather than from the last hop straight to the client: the client needs
//! no listening socket (it may sit behind NAT), each session is exactly one stream per
//! neighbour, and a failed hop is reported by the hop before it with `NextHopFailed`.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use lamina_protocol::{
    Close, Closed, ErrorCode, ErrorMessage, Forward, ForwardInput, FrameLimits, Message, ModelId,
    OpenSession, Progress, SessionId, SessionOpened, StepOutput, StepResult, WireDType, WireTensor,
    PROGRESS_INTERVAL_MS,
};
use lamina_sharding::executor::{LogitRows, Shard, ShardInput, ShardOutput};
use lamina_sharding::kv_cache::KvCache;
use lamina_sharding::sampling::{Sampler, SamplingParams};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::faults::{Fault, FaultPlan};
use super::machine::{HostInfo, Role, StreamMachine};
use super::replay::ReplayLog;
use crate::dataplane::{Dialer, FramedRecv, FramedSend, RecvError};

/// Limits and policies of a session server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Name for logs and `HelloAck`.
    pub node_name: String,
    /// Sessions served at once; the next `OpenSession` gets `SessionLimit`.
    pub max_sessions: usize,
    /// A stream silent this long is closed (its session freed, an unasked `Closed` sent).
    pub idle_timeout: Duration,
    /// Frame limits of every stream.
    pub limits: FrameLimits,
    /// Faults to inject (churn tests only; `None` in the daemon).
    pub faults: Option<Arc<FaultPlan>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            node_name: "lamina".into(),
            max_sessions: 64,
            idle_timeout: Duration::from_secs(300),
            limits: FrameLimits::default(),
            faults: None,
        }
    }
}

/// The shard a server hosts and what it tells peers about it. Swapped whole when the
/// node moves to other layers; a session keeps the `Served` it opened with until it ends,
/// so sessions in flight finish on the old layers while new ones get the new.
pub struct Served {
    pub shard: Arc<Shard>,
    pub host: HostInfo,
}

/// Per hop below, the least a hop waits for a measured one-row step of its next hop.
pub const HOP_FLOOR: Duration = Duration::from_secs(1);

/// Bound on a next hop's answers to Hello and OpenSession.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one shard to data-plane peers.
pub struct SessionServer {
    served: std::sync::RwLock<Arc<Served>>,
    /// Set on shutdown: new sessions are refused with `ShuttingDown`, open ones go on.
    draining: std::sync::atomic::AtomicBool,
    model_id: ModelId,
    slots: Arc<Semaphore>,
    dialer: Dialer,
    opts: ServerOptions,
}

/// Converts sampling settings from the wire to the sampler's.
pub fn sampling_params(s: &lamina_protocol::SamplingSettings) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        repetition_window: s.repetition_window as usize,
        seed: s.seed,
    }
}

/// Converts the sampler's settings to the wire's.
pub fn sampling_settings(p: &SamplingParams) -> lamina_protocol::SamplingSettings {
    lamina_protocol::SamplingSettings {
        temperature: p.temperature,
        top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        repetition_window: u32::try_from(p.repetition_window).unwrap_or(u32::MAX),
        seed: p.seed,
    }
}

/// What runs on the blocking thread: the cache and the sampler move there and back.
struct Compute {
    cache: KvCache,
    sampler: Option<Sampler>,
    history: Vec<u32>,
}

enum ComputeOut {
    Hidden(WireTensor),
    Token { id: u32, logits: Option<WireTensor> },
}

struct Downstream {
    /// The slowest one-row step the next hop has answered so far: its deadline's base.
    slowest: Option<Duration>,
    /// Hops from the next hop to the end of the chain (1: the next hop is the last).
    depth: u32,
    addr: String,
    cert: lamina_protocol::CertFingerprint,
    tx: FramedSend,
    rx: FramedRecv,
}

struct Live {
    session_id: SessionId,
    /// The layers this session runs: the node's shard, or a part of it.
    shard: Arc<Shard>,
    compute: Option<Compute>,
    downstream: Option<Downstream>,
    replay: ReplayLog,
    dtype: WireDType,
    _permit: OwnedSemaphorePermit,
}

fn internal(e: impl std::fmt::Display) -> ErrorMessage {
    ErrorMessage::new(ErrorCode::Internal, e.to_string())
}

impl SessionServer {
    /// A server for `shard` of model `model_id`; `dialer` opens streams to next hops.
    pub fn new(
        shard: Arc<Shard>,
        model_id: ModelId,
        dialer: Dialer,
        opts: ServerOptions,
    ) -> Result<Arc<Self>, lamina_protocol::ProtocolError> {
        let served = Self::served(shard, model_id, &opts.node_name)?;
        Ok(Arc::new(Self {
            served: std::sync::RwLock::new(Arc::new(served)),
            draining: std::sync::atomic::AtomicBool::new(false),
            model_id,
            slots: Arc::new(Semaphore::new(opts.max_sessions)),
            dialer,
            opts,
        }))
    }

    fn served(
        shard: Arc<Shard>,
        model_id: ModelId,
        node_name: &str,
    ) -> Result<Served, lamina_protocol::ProtocolError> {
        let cfg = shard.config();
        let r = shard.range();
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let host = HostInfo {
            node_name: node_name.to_string(),
            model_id,
            layers: lamina_protocol::LayerRange::new(u(r.start), u(r.end))?,
            n_layers: u(cfg.n_layers),
            hidden_dim: u(cfg.dim),
            vocab_size: u(cfg.vocab_size),
            context_length: u(cfg.context_length),
        };
        Ok(Served { shard, host })
    }

    /// What this server hosts now.
    pub fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What this server hosts now.
    pub fn host(&self) -> HostInfo {
        self.current().host.clone()
    }

    /// Serves `shard` to sessions opened from now on; open sessions keep the old one.
    pub fn replace(&self, shard: Arc<Shard>) -> Result<(), lamina_protocol::ProtocolError> {
        let served = Arc::new(Self::served(shard, self.model_id, &self.opts.node_name)?);
        *self
            .served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = served;
        Ok(())
    }

    /// Stops accepting sessions: from now on every `OpenSession` is answered
    /// `ShuttingDown` (the entry opens it elsewhere), while the sessions already open run
    /// to their end. Why not just withdraw the announcement: peers route from tables that
    /// lag by up to a record's lifetime, and a session opened here now would be cut off
    /// when the drain ends.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("draining: refusing new sessions");
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.opts
            .max_sessions
            .saturating_sub(self.slots.available_permits())
    }

    /// Accepts connections on `endpoint` until it is closed.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => server.connection(conn).await,
                    Err(e) => tracing::debug!("incoming connection failed: {e}"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: quinn::Connection) {
        let peer = conn.remote_address();
        let span = tracing::info_span!("peer", %peer);
        async move {
            tracing::debug!("connected");
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let server = self.clone();
                        let tx = FramedSend::new(send, server.opts.limits);
                        let rx = FramedRecv::new(recv, server.opts.limits);
                        tokio::spawn(
                            server
                                .stream_on(Some(conn.clone()), tx, rx)
                                .in_current_span(),
                        );
                    }
                    Err(e) => {
                        tracing::debug!("connection ended: {e}");
                        break;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Serves one stream (one session) until it ends, is closed or expires.
    pub async fn stream(self: Arc<Self>, tx: FramedSend, rx: FramedRecv) {
        self.stream_on(None, tx, rx).await
    }

    /// [`stream`](Self::stream) on a stream of `conn` (which an injected fault may close).
    async fn stream_on(
        self: Arc<Self>,
        conn: Option<quinn::Connection>,
        mut tx: FramedSend,
        mut rx: FramedRecv,
    ) {
        let served = self.current();
        let mut machine = StreamMachine::new(served.host.clone());
        let mut live: Option<Live> = None;
        let span = tracing::info_span!("session", layers = %served.host.layers, session = tracing::field::Empty, trace = tracing::field::Empty);
        async {
            loop {
                let next = tokio::time::timeout(self.opts.idle_timeout, rx.recv()).await;
                let msg = match next {
                    Err(_) => {
                        tracing::info!("idle timeout");
                        if let Some(l) = &live {
                            let _ = tx
                                .send(&Message::Closed(Closed {
                                    session_id: l.session_id,
                                }))
                                .await;
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
                        let _ = tx.send(&Message::Error(ErrorMessage::from(&e))).await;
                        if e.is_fatal() {
                            break;
                        }
                        continue;
                    }
                };
                if let Some(fault) = self.fault_for(&msg) {
                    match self.inject(fault, conn.as_ref(), &mut tx, &mut rx).await {
                        std::ops::ControlFlow::Continue(()) => continue,
                        std::ops::ControlFlow::Break(()) => break,
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
                let work = self.handle(&served, &mut machine, &mut live, msg);
                let reply = match &progress {
                    Some(p) => with_progress(work, &mut tx, p).await,
                    None => work.await,
                };
                let done = machine.is_closed();
                if let Some(reply) = reply {
                    if let Err(e) = tx.send(&reply).await {
                        tracing::debug!("cannot reply: {e}");
                        break;
                    }
                }
                if done {
                    break;
                }
            }
            if let Some(mut l) = live.take() {
                if let Some(d) = &mut l.downstream {
                    if !machine.is_closed() {
                        let _ =
                            d.tx.send(&Message::Close(Close {
                                session_id: l.session_id,
                            }))
                            .await;
                    }
                    d.tx.finish();
                }
            }
            tx.finish();
        }
        .instrument(span)
        .await
    }

    fn fault_for(&self, msg: &Message) -> Option<Fault> {
        match (msg, &self.opts.faults) {
            (Message::Forward(f), Some(plan)) => plan.take(f.step),
            _ => None,
        }
    }

    /// Fails the step as `fault` says; whether the stream goes on.
    async fn inject(
        &self,
        fault: Fault,
        conn: Option<&quinn::Connection>,
        tx: &mut FramedSend,
        rx: &mut FramedRecv,
    ) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        tracing::warn!(?fault, "injecting a fault");
        match fault {
            Fault::DropConnectionAtStep(_) => {
                if let Some(c) = conn {
                    c.close(0u32.into(), b"injected fault");
                }
                Break(())
            }
            Fault::StallAtStep(_) => {
                // Hold the stream without answering until the upstream drops it.
                let _ = tokio::time::timeout(self.opts.idle_timeout, async {
                    while let Ok(Some(_)) = rx.recv().await {}
                })
                .await;
                Break(())
            }
            Fault::GarbageAtStep(_) => {
                // A length prefix far over any limit: the reader's decoder fails at once.
                let _ = tx.send_raw(&[0xff; 16]).await;
                Continue(())
            }
            Fault::ErrorAtStep(s) => {
                let e = Message::error(ErrorCode::Internal, format!("injected fault at step {s}"));
                let _ = tx.send(&e).await;
                Continue(())
            }
        }
    }

    async fn handle(
        &self,
        served: &Served,
        machine: &mut StreamMachine,
        live: &mut Option<Live>,
        msg: Message,
    ) -> Option<Message> {
        match msg {
            Message::Hello(h) => Some(match machine.on_hello(&h) {
                Ok(ack) => Message::HelloAck(ack),
                Err(e) => Message::Error(e),
            }),
            Message::OpenSession(o) => Some(match self.open(served, machine, live, o).await {
                Ok(m) => m,
                Err(e) => Message::Error(e),
            }),
            Message::Forward(f) => Some(match self.forward(served, machine, live, f).await {
                Ok(m) => m,
                Err(e) => Message::Error(e),
            }),
            Message::Close(c) => Some(match machine.check_close(c.session_id) {
                Ok(()) => {
                    if let Some(l) = live.as_mut() {
                        if let Some(d) = &mut l.downstream {
                            close_downstream(d, c.session_id, self.opts.idle_timeout).await;
                        }
                    }
                    machine.closed();
                    *live = None;
                    tracing::info!("closed");
                    Message::Closed(Closed {
                        session_id: c.session_id,
                    })
                }
                Err(e) => Message::Error(e),
            }),
            Message::Error(e) => {
                tracing::debug!("peer reported {}: {}", e.code, e.message);
                None
            }
            other => Some(Message::error(
                ErrorCode::UnexpectedMessage,
                format!("{} is not a request", other.kind()),
            )),
        }
    }

    async fn open(
        &self,
        served: &Served,
        machine: &mut StreamMachine,
        live: &mut Option<Live>,
        o: OpenSession,
    ) -> Result<Message, ErrorMessage> {
        if self.is_draining() {
            return Err(ErrorMessage::new(
                ErrorCode::ShuttingDown,
                format!(
                    "{} is shutting down: open the session elsewhere",
                    self.opts.node_name
                ),
            ));
        }
        let permit = self.slots.clone().try_acquire_owned().ok();
        let role = machine.check_open(&o, permit.is_some())?;
        let Some(permit) = permit else {
            return Err(ErrorMessage::new(
                ErrorCode::SessionLimit,
                "no free session slot",
            ));
        };
        tracing::Span::current().record("session", tracing::field::display(o.session_id));
        if let Some(t) = o.trace_id {
            tracing::Span::current().record("trace", tracing::field::display(t));
        }
        let shard = if o.layers == served.host.layers {
            served.shard.clone()
        } else {
            let sub = lamina_sharding::layers::LayerRange {
                start: o.layers.start as usize,
                end: o.layers.end as usize,
            };
            Arc::new(
                served
                    .shard
                    .sub_shard(sub)
                    .map_err(|e| ErrorMessage::new(ErrorCode::LayerMismatch, e.to_string()))?,
            )
        };
        let cache = shard
            .new_cache(o.max_length as usize)
            .map_err(|e| ErrorMessage::new(ErrorCode::ContextOverflow, e.to_string()))?;
        let sampler = match (role, &o.sampling) {
            (Role::Sample { .. }, Some(s)) => Some(
                Sampler::new(sampling_params(s))
                    .map_err(|e| ErrorMessage::new(ErrorCode::InvalidMessage, e.to_string()))?,
            ),
            _ => None,
        };
        let downstream = match o.for_next_hop() {
            Some((hop, next_open)) => {
                match self.open_downstream(&served.host, hop, next_open).await {
                    Ok(d) => Some(d),
                    Err(f) => {
                        if f.broken {
                            self.dialer.evict(&hop.addr, hop.cert).await;
                        }
                        return Err(f.reply);
                    }
                }
            }
            None => None,
        };
        machine.opened(&o, role);
        *live = Some(Live {
            session_id: o.session_id,
            shard,
            compute: Some(Compute {
                cache,
                sampler,
                history: Vec::new(),
            }),
            downstream,
            replay: ReplayLog::new(o.max_length),
            dtype: o.activation_dtype,
            _permit: permit,
        });
        tracing::info!(max_length = o.max_length, dtype = %o.activation_dtype, ?role, "opened");
        Ok(Message::SessionOpened(SessionOpened {
            session_id: o.session_id,
        }))
    }

    async fn open_downstream(
        &self,
        host: &HostInfo,
        hop: &lamina_protocol::HopAddr,
        open: OpenSession,
    ) -> Result<Downstream, DownstreamFailure> {
        let depth = u32::try_from(open.next_hops.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let fail = |what: String| {
            DownstreamFailure::broken(ErrorMessage::new(
                ErrorCode::NextHopFailed,
                format!("next hop {} ({}): {what}", hop.addr, hop.layers),
            ))
        };
        let (mut tx, mut rx) = self
            .dialer
            .open_stream(&hop.addr, hop.cert)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Opening is a handshake, not compute: a hop that does not answer within this is
        // dead or stalled, and saying so (naming it) lets the entry route around it.
        let t = self.opts.idle_timeout.min(OPEN_TIMEOUT);
        let hello = lamina_protocol::Hello::new(host.model_id, host.node_name.clone());
        tx.send(&Message::Hello(hello))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tx.send(&Message::OpenSession(open))
            .await
            .map_err(|e| fail(e.to_string()))?;
        match recv_timeout(&mut rx, t).await.map_err(fail)? {
            Message::HelloAck(_) => {}
            Message::Error(e) => return Err(DownstreamFailure::answered(&hop.addr, e)),
            m => return Err(fail(format!("answered Hello with {}", m.kind()))),
        }
        match recv_timeout(&mut rx, t).await.map_err(fail)? {
            Message::SessionOpened(_) => {}
            Message::Error(e) => return Err(DownstreamFailure::answered(&hop.addr, e)),
            m => return Err(fail(format!("answered OpenSession with {}", m.kind()))),
        }
        Ok(Downstream {
            slowest: None,
            depth,
            addr: hop.addr.clone(),
            cert: hop.cert,
            tx,
            rx,
        })
    }

    async fn forward(
        &self,
        served: &Served,
        machine: &mut StreamMachine,
        live: &mut Option<Live>,
        f: Forward,
    ) -> Result<Message, ErrorMessage> {
        let rows = machine.check_forward(&f)?;
        let role = machine
            .session()
            .map(|s| s.role)
            .ok_or_else(|| internal("session state lost"))?;
        let l = live
            .as_mut()
            .ok_or_else(|| internal("session state lost"))?;
        let span = tracing::debug_span!("step", step = f.step, rows);
        async {
            let compute = l
                .compute
                .take()
                .ok_or_else(|| internal("the session's cache was lost in an earlier step"))?;
            let shard = l.shard.clone();
            let dtype = l.dtype;
            let dim = served.host.hidden_dim as usize;
            let input = f.input.clone();
            let (compute, out) = tokio::task::spawn_blocking(move || {
                let mut c = compute;
                let out = run_compute(&shard, &mut c, input, rows as usize, dim, dtype, role);
                (c, out)
            })
            .await
            .map_err(internal)?;
            l.compute = Some(compute);
            let out = out?;
            machine.forwarded(&f);
            match (out, role) {
                (ComputeOut::Hidden(h), Role::Forward) => {
                    let d = l.downstream.as_mut().ok_or_else(|| {
                        ErrorMessage::new(ErrorCode::NextHopFailed, "the next hop is gone")
                    })?;
                    let next = Forward {
                        session_id: f.session_id,
                        step: f.step,
                        start_pos: f.start_pos,
                        input: ForwardInput::Hidden(h),
                    };
                    // Bounded by what the next hop has shown it needs, and tighter than
                    // every deadline above (the entry's: 20x, at least a floor per hop),
                    // so that when a hop further down dies it is the hop just above it
                    // that names it, not a timeout further up that could be anyone's.
                    let deadline =
                        downstream_deadline(d.slowest, rows, d.depth).min(self.opts.idle_timeout);
                    let t0 = std::time::Instant::now();
                    let r = forward_downstream(d, &next, deadline, self.opts.idle_timeout).await;
                    if r.is_ok() && rows == 1 {
                        let took = t0.elapsed();
                        d.slowest = Some(d.slowest.map_or(took, |s| s.max(took)));
                    }
                    if let Err(failure) = &r {
                        // The session downstream is out of step with this hop now: later
                        // steps fail fast. A connection that failed is evicted, so the
                        // next session dials afresh; one that carried a typed answer
                        // works, and other sessions on it go on.
                        if let Some(mut d) = l.downstream.take() {
                            if failure.broken {
                                self.dialer.evict(&d.addr, d.cert).await;
                            } else {
                                d.tx.finish();
                            }
                        }
                    }
                    let _ = l.replay.push(next);
                    r.map_err(|f| f.reply)
                }
                (ComputeOut::Hidden(h), _) => Ok(Message::StepResult(StepResult {
                    session_id: f.session_id,
                    step: f.step,
                    output: StepOutput::Hidden(h),
                })),
                (ComputeOut::Token { id, logits }, _) => Ok(Message::StepResult(StepResult {
                    session_id: f.session_id,
                    step: f.step,
                    output: StepOutput::Token { id, logits },
                })),
            }
        }
        .instrument(span)
        .await
    }
}

fn run_compute(
    shard: &Shard,
    c: &mut Compute,
    input: ForwardInput,
    rows: usize,
    dim: usize,
    dtype: WireDType,
    role: Role,
) -> Result<ComputeOut, ErrorMessage> {
    let bad = |e: lamina_sharding::Error| ErrorMessage::new(ErrorCode::BadTensor, e.to_string());
    let input = match input {
        ForwardInput::Tokens(t) => ShardInput::Tokens(t),
        ForwardInput::Hidden(h) => {
            let v = h
                .to_f32()
                .map_err(|e| ErrorMessage::new(ErrorCode::BadTensor, e.to_string()))?;
            ShardInput::Hidden(Tensor::from_vec(v, (rows, dim), &Device::Cpu).map_err(internal)?)
        }
    };
    let out = shard
        .forward(&mut c.cache, input, LogitRows::Last)
        .map_err(bad)?;
    match (out, role) {
        (ShardOutput::Hidden(h), _) => {
            let v = h
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(internal)?;
            let shape = [rows as u32, dim as u32];
            Ok(ComputeOut::Hidden(
                WireTensor::from_f32(&shape, &v, dtype).map_err(internal)?,
            ))
        }
        (ShardOutput::Logits(l), Role::Sample { return_logits }) => {
            let v = l
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(internal)?;
            let sampler = c
                .sampler
                .as_mut()
                .ok_or_else(|| internal("no sampler on the last hop"))?;
            let id = sampler.sample(&v, &c.history).map_err(internal)?;
            c.history.push(id);
            let logits = if return_logits {
                let n = u32::try_from(v.len()).map_err(internal)?;
                Some(WireTensor::from_f32(&[n], &v, WireDType::F32).map_err(internal)?)
            } else {
                None
            };
            Ok(ComputeOut::Token { id, logits })
        }
        (ShardOutput::Logits(_), _) => Err(internal("logits on a hop that does not sample")),
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

/// Receives the answer to a step: [`Progress`] frames restart the silence deadline `t`,
/// within `cap` in all (a peer that reports progress forever is stalled too).
async fn recv_step(rx: &mut FramedRecv, t: Duration, cap: Duration) -> Result<Message, String> {
    let end = tokio::time::Instant::now() + cap.max(t);
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!("still no answer after {cap:?} of progress reports"));
        }
        match recv_timeout(rx, t.min(left)).await? {
            Message::Progress(_) => continue,
            m => return Ok(m),
        }
    }
}

async fn recv_timeout(rx: &mut FramedRecv, t: Duration) -> Result<Message, String> {
    match tokio::time::timeout(t, rx.recv()).await {
        Err(_) => Err(format!("no answer within {t:?}")),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err("closed the stream".into()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

fn relay_error(addr: &str, e: ErrorMessage) -> ErrorMessage {
    ErrorMessage::new(e.code, format!("{addr}: {}", e.message))
}

/// Why a next hop did not do what was asked, and the reply that says so upstream.
struct DownstreamFailure {
    reply: ErrorMessage,
    /// The stream or connection failed (or the hop answered nonsense), so the pooled
    /// connection is suspect. `false` when the hop answered with a typed error: the
    /// connection works, and closing it would cut off every other session on it (a
    /// draining hop refuses new sessions while it finishes those).
    broken: bool,
}

impl DownstreamFailure {
    fn broken(reply: ErrorMessage) -> Self {
        Self {
            reply,
            broken: true,
        }
    }

    fn answered(addr: &str, e: ErrorMessage) -> Self {
        Self {
            reply: relay_error(addr, e),
            broken: false,
        }
    }
}

/// A next hop's deadline for a step of `rows` rows: 10x its slowest one-row step (at
/// least [`HOP_FLOOR`] per hop from it to the end, `depth`), or, for a prefill or before
/// anything was measured, 8 s plus 40 ms a row.
///
/// Why the floor grows with the depth: when a hop further down stalls, the hop just
/// above it must be the first to give up, so that it names the stalled hop. With one
/// floor for all, every hop above a fast stalled one would time out at the same instant
/// and the outermost would blame its own next hop, an innocent one.
fn downstream_deadline(slowest: Option<Duration>, rows: u32, depth: u32) -> Duration {
    match slowest {
        Some(s) if rows <= 1 => (s * 10).max(HOP_FLOOR * depth.max(1)),
        _ => Duration::from_secs(8) + Duration::from_millis(40) * rows,
    }
}

/// Sends `f` to the next hop and waits for its answer: silent for `t` at most, `cap` in
/// all (see [`recv_step`]).
async fn forward_downstream(
    d: &mut Downstream,
    f: &Forward,
    t: Duration,
    cap: Duration,
) -> Result<Message, DownstreamFailure> {
    let fail = |what: String| {
        DownstreamFailure::broken(ErrorMessage::new(
            ErrorCode::NextHopFailed,
            format!("next hop {}: {what}", d.addr),
        ))
    };
    d.tx.send(&Message::Forward(f.clone()))
        .await
        .map_err(|e| fail(e.to_string()))?;
    match recv_step(&mut d.rx, t, cap).await.map_err(fail)? {
        Message::StepResult(r) if r.session_id == f.session_id && r.step == f.step => {
            Ok(Message::StepResult(r))
        }
        Message::Error(e) => Err(DownstreamFailure::answered(&d.addr, e)),
        m => Err(fail(format!("answered Forward with {}", m.kind()))),
    }
}

async fn close_downstream(d: &mut Downstream, id: SessionId, t: Duration) {
    if d.tx
        .send(&Message::Close(Close { session_id: id }))
        .await
        .is_ok()
    {
        let _ = recv_timeout(&mut d.rx, t.min(Duration::from_secs(5))).await;
    }
    d.tx.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeper_hops_are_given_up_on_sooner() {
        let fast = Some(Duration::from_millis(5));
        let d = |depth| downstream_deadline(fast, 1, depth);
        assert_eq!(d(1), Duration::from_secs(1));
        assert_eq!(d(2), Duration::from_secs(2));
        assert!(
            d(1) < d(2) && d(2) < d(3),
            "each hop waits longer than the one below"
        );
        // A measured slow next hop: its own pace, whatever the depth.
        let slow = Some(Duration::from_millis(500));
        assert_eq!(downstream_deadline(slow, 1, 2), Duration::from_secs(5));
        // Nothing measured, or a prefill: the allowance.
        assert_eq!(
            downstream_deadline(None, 10, 3),
            Duration::from_secs(8) + Duration::from_millis(400)
        );
    }
}
