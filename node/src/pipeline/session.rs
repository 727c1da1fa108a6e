//! One session through a chain, from the entry's side: it talks only to the first hop; each
//! hop forwards to the next itself and the last hop's `StepResult` comes back along the
//! chain. Every failure is typed ([`Failure`]): what the entry saw on its own link, or the
//! verified report of the hop that failed.

use std::time::Duration;

use lamina_protocol::{
    digest_input, Close, Digest, EndsAt, Forward, ForwardInput, Hello, LinkFailure, Message,
    ModelId, OpenSession, SessionId, StepOutput, StepProduct,
};
use libp2p::PeerId;

use super::ends::EntryEnds;
use super::recv::{progress_cap, recv_answer, verified_report, RecvFailure};
use super::{ChainHop, PipelineError, PipelineOptions, StepProof, StepReply};
use crate::dataplane::{Dialer, FramedRecv, FramedSend};
use crate::failure::Failure;

/// Rows of one `Forward` the entry sends: a longer prompt is split into chunks of this
/// many (every node accepts them: `--max-step-rows` cannot go below it).
pub const STEP_CHUNK_ROWS: usize = crate::limits::DEFAULT_MAX_STEP_ROWS as usize;

/// `tokens` in chunks of at most [`STEP_CHUNK_ROWS`]; one empty chunk for no tokens (the
/// hop then refuses the empty step with a typed error, as before chunking).
fn step_chunks(tokens: &[u32]) -> Vec<&[u32]> {
    if tokens.is_empty() {
        return vec![tokens];
    }
    tokens.chunks(STEP_CHUNK_ROWS).collect()
}

/// One open session through a chain.
pub struct PipelineSession {
    session_id: SessionId,
    /// The chain's peers, in order: the reports the entry believes are signed by one.
    peers: Vec<PeerId>,
    tx: FramedSend,
    rx: FramedRecv,
    step: u64,
    position: u32,
    timeout: Duration,
    closed: bool,
    /// Set when this side runs the model's ends (the hops see hidden states only).
    ends: Option<EntryEnds>,
}

impl PipelineSession {
    /// Opens a session on every hop of `chain` (the first hop opens the rest), within
    /// `opts.open_timeout` for the connection and for each answer.
    pub async fn open(
        dialer: &Dialer,
        chain: &[ChainHop],
        model_id: ModelId,
        opts: &PipelineOptions,
    ) -> Result<Self, PipelineError> {
        let (first, rest) = chain
            .split_first()
            .ok_or_else(|| PipelineError::InvalidChain("the chain is empty".into()))?;
        let session_id = crate::ids::new_session_id();
        let link =
            |l: LinkFailure, detail: String| PipelineError::hop(Failure::FirstHop(l), detail);
        let (mut tx, rx) = tokio::time::timeout(
            opts.open_timeout,
            dialer.open_stream(&first.addr, first.peer),
        )
        .await
        .map_err(|_| {
            link(
                LinkFailure::Connect,
                format!("no connection within {:?}", opts.open_timeout),
            )
        })?
        .map_err(|e| link(LinkFailure::Connect, e.to_string()))?;
        let open = OpenSession {
            session_id,
            model_id,
            layers: first.layers,
            max_length: opts.max_length,
            activation_dtype: opts.activation_dtype,
            sampling: opts.ends.is_none().then_some(opts.sampling),
            return_logits: opts.ends.is_none() && opts.return_logits,
            next_hops: rest.iter().map(ChainHop::wire).collect(),
            ends: if opts.ends.is_some() {
                EndsAt::Entry
            } else {
                EndsAt::Hops
            },
            trace_id: opts.trace_id,
        };
        for m in [
            Message::Hello(
                Hello::new(model_id, opts.client_name.clone())
                    .with_member(dialer.member().cloned()),
            ),
            Message::OpenSession(open),
        ] {
            tx.send(&m)
                .await
                .map_err(|e| link(LinkFailure::Stream, e.to_string()))?;
        }
        let mut s = Self {
            session_id,
            peers: chain.iter().map(|h| h.peer).collect(),
            tx,
            rx,
            step: 0,
            position: 0,
            timeout: opts.open_timeout,
            closed: false,
            ends: opts.ends.clone(),
        };
        match s.recv().await? {
            Message::HelloAck(_) => {}
            m => return Err(s.unexpected("Hello", m)),
        }
        match s.recv().await? {
            Message::SessionOpened(_) => {}
            m => return Err(s.unexpected("OpenSession", m)),
        }
        s.timeout = opts.step_timeout;
        tracing::debug!(session = %session_id, hops = chain.len(), "opened");
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

    /// Bounds every answer from now on (silence; progress reports extend it up to
    /// [`progress_cap`]).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    async fn forward(&mut self, tokens: &[u32]) -> Result<Forward, PipelineError> {
        let input = match &self.ends {
            None => ForwardInput::Tokens(tokens.to_vec()),
            Some(ends) => ends.input(tokens).await?,
        };
        let f = Forward {
            session_id: self.session_id,
            step: self.step,
            start_pos: self.position,
            input,
        };
        self.step += 1;
        self.position = self.position.saturating_add(f.rows());
        Ok(f)
    }

    async fn send(&mut self, m: &Message) -> Result<(), PipelineError> {
        self.tx
            .send(m)
            .await
            .map_err(|e| PipelineError::hop(Failure::FirstHop(LinkFailure::Stream), e.to_string()))
    }

    /// Runs several steps back to back: all are sent before the first answer is read,
    /// so a failover's replay costs one pipeline fill, not one round trip per step. Each
    /// step is split into chunks as [`step`](Self::step) splits it, so a replay feeds
    /// the hops exactly the inputs the lost chain had.
    pub async fn replay(&mut self, steps: &[Vec<u32>]) -> Result<Vec<StepReply>, PipelineError> {
        let mut sent = Vec::with_capacity(steps.len());
        for tokens in steps {
            sent.push(self.send_chunks(tokens).await?);
        }
        let mut out = Vec::with_capacity(steps.len());
        for chunks in sent {
            out.push(self.answers(chunks).await?);
        }
        Ok(out)
    }

    /// Runs `tokens` (the prompt, then one token per decode step) through the chain. A
    /// prompt longer than a step may be ([`STEP_CHUNK_ROWS`]) goes as several `Forward`s
    /// sent back to back, so the hops work on its chunks as a pipeline (hop 2 on chunk 1
    /// while hop 1 runs chunk 2); the answer is the last chunk's.
    pub async fn step(&mut self, tokens: &[u32]) -> Result<StepReply, PipelineError> {
        let chunks = self.send_chunks(tokens).await?;
        self.answers(chunks).await
    }

    /// Sends `tokens` as `Forward`s of at most [`STEP_CHUNK_ROWS`] rows each (one, empty,
    /// for no tokens); each one's step number and the digest of its input (what the first
    /// hop's signed record must name).
    async fn send_chunks(&mut self, tokens: &[u32]) -> Result<Vec<(u64, Digest)>, PipelineError> {
        let mut sent = Vec::new();
        for part in step_chunks(tokens) {
            let f = self.forward(part).await?;
            sent.push((f.step, digest_input(&f.input)));
            self.send(&Message::Forward(f)).await?;
        }
        Ok(sent)
    }

    /// The answers to the chunks `sent`, each checked; the last one's reply.
    async fn answers(&mut self, sent: Vec<(u64, Digest)>) -> Result<StepReply, PipelineError> {
        let mut last = None;
        for (step, digest) in sent {
            let m = self.recv().await?;
            last = Some(self.step_reply(step, m, digest).await?);
        }
        last.ok_or_else(|| PipelineError::InvalidChain("a step of no chunks".into()))
    }

    async fn step_reply(
        &self,
        step: u64,
        m: Message,
        sent: Digest,
    ) -> Result<StepReply, PipelineError> {
        match m {
            Message::StepResult(r) if r.step == step && r.session_id == self.session_id => {
                let proof = StepProof {
                    session: self.session_id,
                    step,
                    answered: Some(StepProduct::of(&r.output)),
                    records: r.evidence,
                    sent,
                };
                let reply = match (r.output, &self.ends) {
                    (StepOutput::Hidden(h), Some(ends)) => ends.reply(h).await,
                    (StepOutput::Token { .. }, Some(_)) => Err(PipelineError::hop(
                        Failure::BadAnswer,
                        "the chain returned a token where this side runs the head".into(),
                    )),
                    (StepOutput::Token { id, logits }, None) => Ok(StepReply {
                        token: id,
                        logits: logits
                            .map(|l| l.to_f32())
                            .transpose()
                            .map_err(|e| PipelineError::hop(Failure::BadAnswer, e.to_string()))?,
                        proof: StepProof::default(),
                    }),
                    (StepOutput::Hidden(_), None) => Err(PipelineError::hop(
                        Failure::BadAnswer,
                        "the chain returned hidden states, not a token".into(),
                    )),
                };
                reply.map(|r| StepReply { proof, ..r })
            }
            m => Err(self.unexpected("Forward", m)),
        }
    }

    /// Closes the session on every hop.
    pub async fn close(mut self) -> Result<(), PipelineError> {
        self.closed = true;
        let close = Message::Close(Close {
            session_id: self.session_id,
        });
        self.send(&close).await?;
        let r = self.recv().await;
        self.tx.finish();
        match r? {
            Message::Closed(_) => Ok(()),
            m => Err(self.unexpected("Close", m)),
        }
    }

    /// The next answer from the first hop, errors turned into typed failures.
    async fn recv(&mut self) -> Result<Message, PipelineError> {
        match recv_answer(&mut self.rx, self.timeout, progress_cap(self.timeout)).await {
            Ok(Message::Error(e)) => {
                let report = verified_report(&e, self.session_id, &self.peers).map(Box::new);
                let failure = Failure::Reply {
                    code: e.code,
                    report,
                };
                Err(PipelineError::hop(failure, e.message))
            }
            Ok(m) => Ok(m),
            Err(RecvFailure::Silent(t)) => Err(PipelineError::hop(
                Failure::Deadline,
                format!("no answer from the chain within {t:?}"),
            )),
            Err(RecvFailure::ProgressCap(t)) => Err(PipelineError::hop(
                Failure::Deadline,
                format!("the chain reported progress for {t:?} without answering"),
            )),
            Err(e) => Err(PipelineError::hop(
                Failure::FirstHop(e.link()),
                e.to_string(),
            )),
        }
    }

    fn unexpected(&self, after: &str, m: Message) -> PipelineError {
        PipelineError::hop(
            Failure::FirstHop(LinkFailure::BadReply),
            format!("{after} was answered with {}", m.kind()),
        )
    }
}

impl Drop for PipelineSession {
    fn drop(&mut self) {
        if !self.closed {
            // Ending the stream makes the first hop free the session down the chain.
            self.tx.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_split_into_chunks_that_fit_a_step() {
        let t: Vec<u32> = (0..1100).collect();
        let c = step_chunks(&t);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [STEP_CHUNK_ROWS, STEP_CHUNK_ROWS, 1100 - 2 * STEP_CHUNK_ROWS]
        );
        assert_eq!(c.concat(), t);
        assert_eq!(step_chunks(&t[..3]).len(), 1);
        assert_eq!(step_chunks(&[]), vec![&[] as &[u32]]);
    }
}
