//! The pipeline client: drives one generation through a chain of hops that covers every
//! layer. It talks only to the first hop; each hop forwards to the next itself and the
//! last hop's `StepResult` is relayed back along the chain.
//!
//! Two ways to use it:
//! * [`PipelineSession::step`]: the last hop samples with the session's settings and seed and
//!   returns the token id (plus the logits when `return_logits` was asked for). This is what
//!   the HTTP API and `lamina generate --chain` use.
//! * [`BlockingStepper`]: implements [`Stepper`] for [`lamina_sharding::generate::generate`];
//!   it asks for logits on every step and the caller samples. Used when sampling needs the
//!   prompt (repetition penalty: the last hop only sees the tokens it drew itself) and for
//!   logit comparisons.
//!
//! The client keeps the token ids it sent (its replay log, bounded by `max_length`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lamina_protocol::{
    CertFingerprint, Close, ErrorMessage, Forward, ForwardInput, Hello, HopAddr, LayerRange,
    Message, ModelId, OpenSession, SamplingSettings, SessionId, StepOutput, WireDType,
};
use lamina_sharding::generate::Stepper;
use serde::{Deserialize, Serialize};

use crate::dataplane::{DataPlaneError, Dialer, FramedRecv, FramedSend};
use crate::session::replay::ReplayLog;

/// One hop of a chain file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHop {
    /// Layers it runs, `"a..b"`.
    #[serde(with = "layers_text")]
    pub layers: LayerRange,
    /// Data-plane address, `host:port`.
    pub addr: String,
    /// blake3 fingerprint of its certificate (hex).
    pub fingerprint: CertFingerprint,
}

/// `LayerRange` as `"a..b"` text in chain files.
mod layers_text {
    use lamina_protocol::LayerRange;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &LayerRange, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LayerRange, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl From<&ChainHop> for HopAddr {
    fn from(h: &ChainHop) -> Self {
        HopAddr {
            layers: h.layers,
            addr: h.addr.clone(),
            cert: h.fingerprint,
        }
    }
}

/// Reads a chain file: a JSON list of `{"layers", "addr", "fingerprint"}`.
pub fn read_chain_file(path: &Path) -> Result<Vec<ChainHop>, PipelineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Chain(format!("cannot read {}: {e}", path.display())))?;
    let chain: Vec<ChainHop> = serde_json::from_str(&text)
        .map_err(|e| PipelineError::Chain(format!("{}: {e}", path.display())))?;
    Ok(chain)
}

/// Checks that `chain` is contiguous from layer 0 to `n_layers`.
pub fn check_chain(chain: &[ChainHop], n_layers: u32) -> Result<(), PipelineError> {
    let mut end = 0;
    for (i, h) in chain.iter().enumerate() {
        if h.layers.start != end {
            return Err(PipelineError::Chain(format!(
                "hop {i} starts at layer {} but the chain so far ends at {end}",
                h.layers.start
            )));
        }
        end = h.layers.end;
    }
    if end != n_layers || chain.is_empty() {
        return Err(PipelineError::Chain(format!(
            "the chain covers layers 0..{end}, the model has {n_layers}"
        )));
    }
    Ok(())
}

/// Errors of the pipeline client.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("chain: {0}")]
    Chain(String),
    #[error("data plane: {0}")]
    DataPlane(#[from] DataPlaneError),
    #[error("hop answered {}: {}", .0.code, .0.message)]
    Remote(ErrorMessage),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// No live peer serves these layers (after leaving out the ones that failed): no
    /// chain can be planned, so waiting or retrying here would only hang the request.
    #[error("layers {layers} are not served by any peer")]
    Uncovered { layers: String },
}

/// Settings of one pipeline session.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Positions the session may hold (prompt + generated).
    pub max_length: u32,
    /// Activations on the wire (f16 by default; f32 for bit-exact runs).
    pub activation_dtype: WireDType,
    /// How the last hop picks tokens.
    pub sampling: SamplingSettings,
    /// Whether each step also returns the logits.
    pub return_logits: bool,
    /// Name in `Hello`.
    pub client_name: String,
    /// Bound on every answer (a prefill through every hop included).
    pub step_timeout: std::time::Duration,
    /// The request this session serves, told to every hop for its logs.
    pub trace_id: Option<lamina_protocol::TraceId>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            max_length: 256,
            activation_dtype: WireDType::F16,
            sampling: SamplingSettings::greedy(),
            return_logits: false,
            client_name: "lamina-client".into(),
            step_timeout: std::time::Duration::from_secs(300),
            trace_id: None,
        }
    }
}

/// The answer to one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReply {
    pub token: u32,
    /// The last position's logits, when asked for.
    pub logits: Option<Vec<f32>>,
}

/// A fresh session id: time, process and a counter, hashed.
pub fn new_session_id() -> SessionId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&n.to_le_bytes());
    let b = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&b.as_bytes()[..16]);
    SessionId::from(u128::from_le_bytes(id))
}

/// One open session through a chain.
pub struct PipelineSession {
    session_id: SessionId,
    tx: FramedSend,
    rx: FramedRecv,
    step: u64,
    position: u32,
    replay: ReplayLog,
    timeout: std::time::Duration,
    closed: bool,
}

impl PipelineSession {
    /// Opens a session on every hop of `chain` (the first hop opens the rest).
    pub async fn open(
        dialer: &Dialer,
        chain: &[ChainHop],
        model_id: ModelId,
        opts: &PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let (first, rest) = chain
            .split_first()
            .ok_or_else(|| PipelineError::Chain("the chain is empty".into()))?;
        let session_id = new_session_id();
        let span = tracing::info_span!("pipeline", session = %session_id, hops = chain.len());
        let _g = span.enter();
        drop(_g);
        let (mut tx, rx) = dialer.open_stream(&first.addr, first.fingerprint).await?;
        tx.send(&Message::Hello(Hello::new(
            model_id,
            opts.client_name.clone(),
        )))
        .await?;
        let open = OpenSession {
            session_id,
            model_id,
            layers: first.layers,
            max_length: opts.max_length,
            activation_dtype: opts.activation_dtype,
            sampling: Some(opts.sampling),
            return_logits: opts.return_logits,
            next_hops: rest.iter().map(HopAddr::from).collect(),
            trace_id: opts.trace_id,
        };
        tx.send(&Message::OpenSession(open)).await?;
        let mut s = Self {
            session_id,
            tx,
            rx,
            step: 0,
            position: 0,
            replay: ReplayLog::new(opts.max_length),
            timeout: opts.step_timeout,
            closed: false,
        };
        match s.recv().await? {
            Message::HelloAck(_) => {}
            m => return Err(unexpected("Hello", m)),
        }
        match s.recv().await? {
            Message::SessionOpened(_) => {}
            m => return Err(unexpected("OpenSession", m)),
        }
        tracing::debug!(parent: &span, "opened");
        Ok(s)
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.session_id
    }

    /// Positions in the hops' caches.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// Token ids sent so far.
    pub fn replay_log(&self) -> &ReplayLog {
        &self.replay
    }

    /// Bounds every answer from now on.
    pub fn set_timeout(&mut self, t: std::time::Duration) {
        self.timeout = t;
    }

    /// Runs several steps back to back: all are sent before the first answer is read,
    /// so a failover's replay costs one pipeline fill, not one round trip per step.
    pub async fn replay(&mut self, steps: &[Vec<u32>]) -> Result<Vec<StepReply>, PipelineError> {
        let first_step = self.step;
        for tokens in steps {
            let f = Forward {
                session_id: self.session_id,
                step: self.step,
                start_pos: self.position,
                input: ForwardInput::Tokens(tokens.clone()),
            };
            let rows = f.rows();
            self.replay
                .push(f.clone())
                .map_err(|e| PipelineError::Protocol(e.to_string()))?;
            self.tx.send(&Message::Forward(f)).await?;
            self.step += 1;
            self.position += rows;
        }
        let mut out = Vec::with_capacity(steps.len());
        for i in 0..steps.len() as u64 {
            match self.recv().await? {
                Message::StepResult(r) if r.step == first_step + i => match r.output {
                    StepOutput::Token { id, .. } => out.push(StepReply {
                        token: id,
                        logits: None,
                    }),
                    StepOutput::Hidden(_) => {
                        return Err(PipelineError::Protocol(
                            "the chain returned hidden states, not a token".into(),
                        ))
                    }
                },
                m => return Err(unexpected("Forward", m)),
            }
        }
        Ok(out)
    }

    /// Runs `tokens` (the prompt, then one token per decode step) through the chain.
    pub async fn step(&mut self, tokens: &[u32]) -> Result<StepReply, PipelineError> {
        let f = Forward {
            session_id: self.session_id,
            step: self.step,
            start_pos: self.position,
            input: ForwardInput::Tokens(tokens.to_vec()),
        };
        let rows = f.rows();
        self.replay
            .push(f.clone())
            .map_err(|e| PipelineError::Protocol(e.to_string()))?;
        self.tx.send(&Message::Forward(f)).await?;
        let reply = self.recv().await?;
        let step = self.step;
        self.step += 1;
        self.position += rows;
        match reply {
            Message::StepResult(r) if r.step == step => match r.output {
                StepOutput::Token { id, logits } => Ok(StepReply {
                    token: id,
                    logits: logits
                        .map(|l| l.to_f32())
                        .transpose()
                        .map_err(|e| PipelineError::Protocol(e.to_string()))?,
                }),
                StepOutput::Hidden(_) => Err(PipelineError::Protocol(
                    "the chain returned hidden states, not a token".into(),
                )),
            },
            m => Err(unexpected("Forward", m)),
        }
    }

    /// Closes the session on every hop.
    pub async fn close(mut self) -> Result<(), PipelineError> {
        self.closed = true;
        self.tx
            .send(&Message::Close(Close {
                session_id: self.session_id,
            }))
            .await?;
        let r = self.recv().await;
        self.tx.finish();
        match r? {
            Message::Closed(_) => Ok(()),
            m => Err(unexpected("Close", m)),
        }
    }

    /// The next message from the first hop. [`Message::Progress`] ("still working on
    /// the step") restarts the silence deadline, within [`progress_cap`] in all.
    async fn recv(&mut self) -> Result<Message, PipelineError> {
        let cap = progress_cap(self.timeout);
        let end = tokio::time::Instant::now() + cap;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(PipelineError::Timeout(format!(
                    "the chain reported progress for {cap:?} without answering"
                )));
            }
            match tokio::time::timeout(self.timeout.min(left), self.rx.recv()).await {
                Err(_) if left <= self.timeout => {
                    return Err(PipelineError::Timeout(format!(
                        "the chain reported progress for {cap:?} without answering"
                    )))
                }
                Err(_) => {
                    return Err(PipelineError::Timeout(format!(
                        "no answer from the first hop within {:?}",
                        self.timeout
                    )))
                }
                Ok(Ok(Some(Message::Progress(_)))) => continue,
                Ok(Ok(Some(Message::Error(e)))) => return Err(PipelineError::Remote(e)),
                Ok(Ok(Some(m))) => return Ok(m),
                Ok(Ok(None)) => {
                    return Err(PipelineError::Protocol(
                        "the first hop closed the stream".into(),
                    ))
                }
                // The first hop's stream or connection died: a transport failure
                // (retriable on another chain), not a protocol violation.
                Ok(Err(crate::dataplane::RecvError::Stream(e))) => {
                    return Err(PipelineError::DataPlane(DataPlaneError::Stream(e)))
                }
                // Bytes from the first hop that are no frame: that peer is broken, and
                // another chain can do what it could not.
                Ok(Err(crate::dataplane::RecvError::Protocol(e))) => {
                    return Err(PipelineError::DataPlane(DataPlaneError::Protocol(e)))
                }
            }
        }
    }
}

/// How long a step may take in all while the chain keeps reporting progress: ten silence
/// deadlines, at least two minutes (sixteen prompts queued on a one-thread node serving a
/// 1B model take about a minute).
pub fn progress_cap(silence: std::time::Duration) -> std::time::Duration {
    (silence * 10).max(std::time::Duration::from_secs(120))
}

impl Drop for PipelineSession {
    fn drop(&mut self) {
        if !self.closed {
            // Ending the stream makes the first hop free the session down the chain.
            self.tx.finish();
        }
    }
}

fn unexpected(after: &str, m: Message) -> PipelineError {
    match m {
        Message::Error(e) => PipelineError::Remote(e),
        m => PipelineError::Protocol(format!("{after} was answered with {}", m.kind())),
    }
}

/// A [`Stepper`] over a [`PipelineSession`] for synchronous code (not on a tokio worker).
///
/// In logits mode (the session was opened with `return_logits`) `step` returns the real
/// logits. In token mode it returns a one-hot vector of `vocab_size` (0 at the token the
/// last hop drew, -inf elsewhere), so [`lamina_sharding::generate::generate`] with greedy
/// client-side settings reproduces the remote choice while keeping its stop/EOS logic.
pub struct BlockingStepper {
    handle: tokio::runtime::Handle,
    session: Option<PipelineSession>,
    vocab_size: usize,
    /// The tokens the chain drew, in order.
    pub drawn: Vec<u32>,
}

impl BlockingStepper {
    /// Wraps `session`; `handle` runs its I/O.
    pub fn new(
        handle: tokio::runtime::Handle,
        session: PipelineSession,
        vocab_size: usize,
    ) -> Self {
        Self {
            handle,
            session: Some(session),
            vocab_size,
            drawn: Vec::new(),
        }
    }

    /// Closes the session.
    pub fn close(mut self) -> Result<(), PipelineError> {
        match self.session.take() {
            Some(s) => self.handle.block_on(s.close()),
            None => Ok(()),
        }
    }
}

impl Stepper for BlockingStepper {
    fn step(&mut self, tokens: &[u32]) -> lamina_sharding::Result<Vec<f32>> {
        let s = self.session.as_mut().ok_or_else(|| {
            lamina_sharding::Error::InvalidInput("the pipeline session is closed".into())
        })?;
        let r = self
            .handle
            .block_on(s.step(tokens))
            .map_err(|e| lamina_sharding::Error::InvalidInput(format!("pipeline: {e}")))?;
        self.drawn.push(r.token);
        Ok(match r.logits {
            Some(l) => l,
            None => {
                let mut v = vec![f32::NEG_INFINITY; self.vocab_size.max(r.token as usize + 1)];
                v[r.token as usize] = 0.0;
                v
            }
        })
    }

    fn position(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.position as usize)
    }
}

/// Everything a generation through a chain needs besides the request.
#[derive(Clone)]
pub struct ChainClient {
    pub dialer: Dialer,
    pub model_id: ModelId,
    pub tokenizer: std::sync::Arc<lamina_sharding::tokenizer::Tokenizer>,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl ChainClient {
    /// Runs one generation through `chain` (synchronously: call it on a blocking thread,
    /// never on a tokio worker; `handle` runs the I/O). The last hop samples, except when
    /// the settings penalize repetitions: then the logits come back and this side samples,
    /// because the penalty must see the prompt, which only the client knows.
    pub fn generate(
        &self,
        handle: &tokio::runtime::Handle,
        chain: &[ChainHop],
        req: &lamina_sharding::generate::GenerateRequest,
        activation_dtype: WireDType,
        mut on_text: impl FnMut(&str),
    ) -> Result<lamina_sharding::generate::GenerationOutput, PipelineError> {
        self.generate_with(
            handle,
            chain,
            req,
            activation_dtype,
            |_, _| {},
            |t| {
                on_text(t);
                std::ops::ControlFlow::Continue(())
            },
        )
    }

    /// [`ChainClient::generate`] for servers: `on_step(i, elapsed)` sees every step's
    /// round trip as the entry measures it (0 is the prefill), so metrics need no clock of
    /// their own, and `on_text` returning `Break` ends the session early (a client that
    /// went away should not keep every hop busy).
    pub fn generate_with(
        &self,
        handle: &tokio::runtime::Handle,
        chain: &[ChainHop],
        req: &lamina_sharding::generate::GenerateRequest,
        activation_dtype: WireDType,
        on_step: impl FnMut(usize, std::time::Duration),
        on_text: impl FnMut(&str) -> std::ops::ControlFlow<()>,
    ) -> Result<lamina_sharding::generate::GenerationOutput, PipelineError> {
        // A fixed chain has nowhere to fail over to.
        let fixed = chain.to_vec();
        let replan = move |_: &std::collections::HashSet<CertFingerprint>| {
            Ok::<_, PipelineError>(fixed.clone())
        };
        let policy = crate::failover::FailoverPolicy {
            max_attempts: 0,
            ..Default::default()
        };
        self.generate_resilient(
            handle,
            chain,
            &replan,
            &|_| {},
            policy,
            req,
            activation_dtype,
            on_step,
            on_text,
        )
        .map(|(out, _)| out)
    }

    /// As [`generate_with`](Self::generate_with), failing over to chains from `replan`
    /// when a hop fails (see [`crate::failover`]). Also returns how long each recovery took.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_resilient(
        &self,
        handle: &tokio::runtime::Handle,
        chain: &[ChainHop],
        replan: &crate::failover::Replan<'_>,
        on_failure: &(dyn Fn(CertFingerprint) + Sync),
        policy: crate::failover::FailoverPolicy,
        req: &lamina_sharding::generate::GenerateRequest,
        activation_dtype: WireDType,
        on_step: impl FnMut(usize, std::time::Duration),
        on_text: impl FnMut(&str) -> std::ops::ControlFlow<()>,
    ) -> Result<
        (
            lamina_sharding::generate::GenerationOutput,
            Vec<std::time::Duration>,
        ),
        PipelineError,
    > {
        use lamina_sharding::generate::{generate_until, session_length};
        use lamina_sharding::sampling::SamplingParams;
        // The entry's id if it set one (the API's request id), else a new one: every hop
        // logs it (see `crate::trace`).
        let trace_id = crate::trace::current().unwrap_or_else(crate::trace::new_trace_id);
        let span = tracing::info_span!(
            "generate",
            trace = %trace_id,
            prompt_tokens = req.prompt_ids.len(),
            max_tokens = req.max_tokens
        );
        let _g = span.enter();
        let len = session_length(req, self.context_length)
            .map_err(|e| PipelineError::Chain(e.to_string()))?;
        let remote_samples = req.sampling.repetition_penalty == 1.0;
        let opts = PipelineOptions {
            max_length: u32::try_from(len).unwrap_or(u32::MAX),
            activation_dtype,
            sampling: if remote_samples {
                crate::session::server::sampling_settings(&req.sampling)
            } else {
                SamplingSettings::greedy()
            },
            return_logits: !remote_samples,
            trace_id: Some(trace_id),
            ..PipelineOptions::default()
        };
        let mut stepper = crate::failover::FailoverStepper::new(
            handle.clone(),
            self,
            opts,
            chain.to_vec(),
            replan,
            on_failure,
            policy,
        );
        stepper.start()?;
        let mut local_req = req.clone();
        if remote_samples {
            local_req.sampling = SamplingParams::greedy();
        }
        let mut timed = TimedStepper {
            inner: &mut stepper,
            on_step,
            steps: 0,
        };
        let out = generate_until(
            &mut timed,
            &self.tokenizer,
            &local_req,
            self.context_length,
            on_text,
        );
        let recoveries = std::mem::take(&mut stepper.recoveries);
        let typed = stepper.last_error.take();
        // A failed close only leaves the hops to expire the session on their own.
        stepper.close();
        let out =
            out.map_err(|e| typed.unwrap_or_else(|| PipelineError::Protocol(e.to_string())))?;
        Ok((out, recoveries))
    }
}

/// Reports each successful step's duration to a callback.
struct TimedStepper<'a, S, F> {
    inner: &'a mut S,
    on_step: F,
    steps: usize,
}

impl<S: Stepper, F: FnMut(usize, std::time::Duration)> Stepper for TimedStepper<'_, S, F> {
    fn step(&mut self, tokens: &[u32]) -> lamina_sharding::Result<Vec<f32>> {
        let t = std::time::Instant::now();
        let r = self.inner.step(tokens)?;
        (self.on_step)(self.steps, t.elapsed());
        self.steps += 1;
        Ok(r)
    }

    fn position(&self) -> usize {
        self.inner.position()
    }
}
