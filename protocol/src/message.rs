//! The wire messages: one [`Message`] enum for both directions of a data-plane stream.
//!
//! # Why one enum, not Request/Response enums
//! A hop is a server to its upstream and a client to its downstream (it forwards its output
//! to the next hop itself), and errors flow both ways. A single tag space means any frame can
//! be identified without knowing which side sent it, one [`FrameDecoder`](crate::FrameDecoder)
//! serves every stream, and the fuzzer covers every message through one entry point. Which
//! message is legal when is the session state machine's business (in `lamina-node`), which
//! answers an out-of-place message with [`ErrorCode::UnexpectedMessage`].
//!
//! Every message here is plain data with public fields. [`Message::validate`] holds the rules
//! that the types alone cannot (non-empty token lists, contiguous hop chains, ...); the frame
//! encoder refuses to send and the decoder refuses to accept a message that breaks them.

use std::ops::Range;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

pub use crate::codes::{CodeClass, ErrorCode, MessageKind};
use crate::error::ProtocolError;
use crate::evidence::{SignedStepRecord, MAX_EVIDENCE_RECORDS};
use crate::ids::{ModelId, SessionId, TraceId};
use crate::layers::LayerRange;
use crate::member::SignedMemberCert;
use crate::report::SignedReport;
use crate::tensor::{WireDType, WireTensor};

/// The version of this protocol. A `Hello` or `HelloAck` carrying another version is refused
/// with [`ProtocolError::UnsupportedVersion`] (and an [`ErrorCode::UnsupportedVersion`]
/// reply) before the rest of it is read.
pub const PROTOCOL_VERSION: u32 = 5;

/// Bytes of an error message kept by [`ErrorMessage::new`]: enough for a useful sentence,
/// small enough that an error reply never competes with real traffic.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Checks a peer's announced protocol version against [`PROTOCOL_VERSION`].
pub fn check_version(peer: u32) -> Result<(), ProtocolError> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion {
            peer,
            ours: PROTOCOL_VERSION,
        })
    }
}

/// Every message of the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// First frame a dialer sends on a new stream.
    Hello(Hello),
    /// The answer to a compatible `Hello`.
    HelloAck(HelloAck),
    /// A typed failure; may answer any message.
    Error(ErrorMessage),
    /// Asks a hop to run a range of layers for one session.
    OpenSession(OpenSession),
    /// The answer to an accepted `OpenSession`.
    SessionOpened(SessionOpened),
    /// Input rows for one step of a session.
    Forward(Forward),
    /// Output of one step of a session.
    StepResult(StepResult),
    /// Ends a session and frees its KV cache.
    Close(Close),
    /// The answer to `Close`.
    Closed(Closed),
    /// Sent upstream while a step is queued or computing (here or further down), so the
    /// caller can tell a busy chain from a stalled one.
    Progress(Progress),
}

impl Message {
    /// The message's kind (its tag byte).
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::HelloAck(_) => MessageKind::HelloAck,
            Message::Error(_) => MessageKind::Error,
            Message::OpenSession(_) => MessageKind::OpenSession,
            Message::SessionOpened(_) => MessageKind::SessionOpened,
            Message::Forward(_) => MessageKind::Forward,
            Message::StepResult(_) => MessageKind::StepResult,
            Message::Close(_) => MessageKind::Close,
            Message::Closed(_) => MessageKind::Closed,
            Message::Progress(_) => MessageKind::Progress,
        }
    }

    /// Checks the rules the types cannot express. Run by the frame encoder and decoder.
    ///
    /// The protocol version of `Hello`/`HelloAck` is not checked here (the decoder does it
    /// before reading the rest), so a test can still build and send a foreign version.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Message::Hello(_)
            | Message::SessionOpened(_)
            | Message::Close(_)
            | Message::Closed(_)
            | Message::Progress(_) => Ok(()),
            Message::HelloAck(m) => m.validate(),
            Message::Error(m) => m.validate(),
            Message::OpenSession(m) => m.validate(),
            Message::Forward(m) => m.validate(),
            Message::StepResult(m) => m.validate(),
        }
    }

    /// The session a message is about, if it is about one.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            Message::OpenSession(m) => Some(m.session_id),
            Message::SessionOpened(m) => Some(m.session_id),
            Message::Forward(m) => Some(m.session_id),
            Message::StepResult(m) => Some(m.session_id),
            Message::Close(m) => Some(m.session_id),
            Message::Closed(m) => Some(m.session_id),
            Message::Progress(m) => Some(m.session_id),
            Message::Hello(_) | Message::HelloAck(_) | Message::Error(_) => None,
        }
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Message::Error(ErrorMessage::new(code, message))
    }
}

/// First frame on a new stream: who is calling, for which model, in which version.
///
/// `protocol_version` must stay the first field forever (see [`MessageKind`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// The dialer's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The model the dialer wants to run; a node hosting another answers `WrongModel`.
    pub model_id: ModelId,
    /// Human-readable name for logs (not an identity: the TLS certificate is).
    pub node_name: String,
    /// The dialer's membership certificate of a private mesh (since version 4). The server
    /// checks it against the peer id the TLS handshake proved, and refuses a stream without
    /// a valid one with [`ErrorCode::NotAMember`].
    pub member: Option<SignedMemberCert>,
}

impl Hello {
    /// A `Hello` in this crate's [`PROTOCOL_VERSION`], without a membership certificate.
    pub fn new(model_id: ModelId, node_name: impl Into<String>) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            model_id,
            node_name: node_name.into(),
            member: None,
        }
    }

    /// This `Hello` carrying `member`.
    pub fn with_member(mut self, member: Option<SignedMemberCert>) -> Self {
        self.member = member;
        self
    }
}

/// The answer to a compatible `Hello`.
///
/// `protocol_version` must stay the first field forever (see [`MessageKind`]).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct HelloAck {
    /// The answering node's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Human-readable name for logs.
    pub node_name: String,
    /// The layers the node has loaded right now (`None` while it loads none), which may be
    /// fresher than its last announcement.
    pub layers: Option<LayerRange>,
}

impl HelloAck {
    /// A `HelloAck` in this crate's [`PROTOCOL_VERSION`].
    pub fn new(node_name: impl Into<String>, layers: Option<LayerRange>) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            node_name: node_name.into(),
            layers,
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        match &self.layers {
            Some(l) => l.validate(),
            None => Ok(()),
        }
    }
}

/// Sampling settings for the last hop, which applies the final norm and output head and
/// picks the next token. Sampling is deterministic given `seed`, so a replayed session
/// (failover) produces the same tokens.
///
/// Defaults are greedy decoding with every filter off.
#[derive(Clone, Copy, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingSettings {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables the filter.
    pub top_k: u32,
    /// Nucleus sampling: keep the smallest set whose probability reaches `top_p`; `1` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the best one's; `0` disables.
    pub min_p: f32,
    /// Divide (positive) or multiply (negative) logits of recently seen tokens; `1` disables.
    pub repetition_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub repetition_window: u32,
    /// Seed of the session's random number generator.
    pub seed: u64,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingSettings {
    /// Greedy decoding, all filters off.
    pub const fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }

    /// Whether these settings pick the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks ranges: every float finite, `temperature >= 0`, `0 < top_p <= 1`,
    /// `0 <= min_p <= 1`, `repetition_penalty > 0`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |reason: String| Err(ProtocolError::invalid(MessageKind::OpenSession, reason));
        let floats = [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("repetition_penalty", self.repetition_penalty),
        ];
        if let Some((name, v)) = floats.iter().find(|(_, v)| !v.is_finite()) {
            return bad(format!("sampling {name} is not finite ({v})"));
        }
        if self.temperature < 0.0 {
            return bad(format!("temperature {} is negative", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p {} is outside [0, 1]", self.min_p));
        }
        if self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty {} is not positive",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// One later hop of a session's chain, as told to the hop before it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct HopAddr {
    /// The layers that hop runs for this session.
    pub layers: LayerRange,
    /// Its data-plane address (e.g. `"203.0.113.7:4433"`), as announced.
    pub addr: String,
    /// Its libp2p peer id (multihash bytes). The hop before it expects this peer id in the
    /// TLS handshake (since version 4; the certificate is signed by the peer's identity
    /// key), and checks that the failure reports it relays from below are signed by a hop
    /// of this chain (since version 3).
    pub peer_id: Vec<u8>,
}

impl HopAddr {
    /// The hop's peer id; `None` if the bytes are not one (never after a decode, which
    /// refuses such a hop).
    pub fn peer(&self) -> Option<libp2p_identity::PeerId> {
        libp2p_identity::PeerId::from_bytes(&self.peer_id).ok()
    }
}

/// Bytes of a peer id in a [`HopAddr`] (a libp2p multihash of an ed25519 key is 38).
pub const MAX_PEER_ID_BYTES: usize = 64;

/// Asks a hop to run `layers` for a new session.
///
/// With `next_hops` non-empty the hop forwards its output to `next_hops[0]` itself, opening
/// the session there with [`OpenSession::for_next_hop`] (the same settings, that hop's
/// layers and `next_hops[1..]`). This saves a round trip through the client per hop and
/// token. With `next_hops` empty the hop returns its output in a `StepResult`.
///
/// On the wire the fields of version 1 come first and `trace_id`, when set, follows them in
/// the header (a header without it is byte for byte the version-1 layout, so opens of nodes
/// without trace ids decode unchanged; see the frame decoder).
#[derive(Clone, Debug, PartialEq)]
pub struct OpenSession {
    /// Chosen by the client, the same on every hop.
    pub session_id: SessionId,
    /// Must be the model the hop serves, else `WrongModel`.
    pub model_id: ModelId,
    /// The layers to run; must lie within the hop's loaded range, else `LayerMismatch`.
    pub layers: LayerRange,
    /// Positions the KV cache must hold (prompt + generated tokens), at least 1; a `Forward`
    /// past it gets `ContextOverflow`. Lets the hop size (and refuse) the cache up front.
    pub max_length: u32,
    /// Element type of the hidden states this hop sends on (f16 by default; f32 for
    /// bit-exact tests).
    pub activation_dtype: WireDType,
    /// How the hop that runs the model's last layer picks tokens. Every hop carries it so
    /// that it travels down the chain with `for_next_hop`; the other hops ignore it. `None`
    /// means the chain ends in hidden states (`StepOutput::Hidden`), e.g. for a client that
    /// runs a partial range.
    pub sampling: Option<SamplingSettings>,
    /// Whether the last hop returns the logits with each token (bit-exactness tests only:
    /// a vocabulary of f32 per token is far bigger than the token itself). Needs `sampling`.
    pub return_logits: bool,
    /// The rest of the chain, in order; layer ranges must be contiguous from `layers.end`.
    pub next_hops: Vec<HopAddr>,
    /// Who runs the model's ends (embedding, final norm and head): the hops (default), or
    /// the entry, which then sends hidden states to the first hop and gets hidden states
    /// back from the last, so no hop sees a token id or a logit.
    pub ends: EndsAt,
    /// The request this session serves, for logs; travels down the chain unchanged.
    pub trace_id: Option<TraceId>,
}

/// Who runs the model's embedding and head in a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndsAt {
    /// The first hop embeds token ids, the last hop runs the head and samples.
    #[default]
    Hops,
    /// The entry embeds and samples: the first hop takes f32 hidden states (even where
    /// its range starts at layer 0), and the last hop returns the hidden states of the
    /// step's last row in f32, so the entry's head sees exactly what the last hop's would
    /// have. `sampling` must be `None` then.
    Entry,
}

/// `return_logits` and `ends` share one byte on the wire (bit 0 and bit 1): the byte where
/// version 3 put the `return_logits` bool, which decodes as before when only bit 0 is set.
const FLAG_RETURN_LOGITS: u8 = 1;
const FLAG_ENDS_AT_ENTRY: u8 = 2;

impl Encode for OpenSession {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.session_id.encode(e)?;
        self.model_id.encode(e)?;
        self.layers.encode(e)?;
        self.max_length.encode(e)?;
        self.activation_dtype.encode(e)?;
        self.sampling.encode(e)?;
        let mut flags = 0u8;
        if self.return_logits {
            flags |= FLAG_RETURN_LOGITS;
        }
        if self.ends == EndsAt::Entry {
            flags |= FLAG_ENDS_AT_ENTRY;
        }
        flags.encode(e)?;
        self.next_hops.encode(e)?;
        // An optional tail rather than an `Option` (which would add a byte even when unset).
        if let Some(t) = &self.trace_id {
            t.encode(e)?;
        }
        Ok(())
    }
}

/// Decodes the version-1 fields only (`trace_id` is `None`): whether a trace id follows is
/// known from the header length, which the frame decoder has and this trait does not.
impl<Context> Decode<Context> for OpenSession {
    fn decode<D: Decoder<Context = Context>>(d: &mut D) -> Result<Self, DecodeError> {
        let session_id = Decode::decode(d)?;
        let model_id = Decode::decode(d)?;
        let layers = Decode::decode(d)?;
        let max_length = Decode::decode(d)?;
        let activation_dtype = Decode::decode(d)?;
        let sampling = Decode::decode(d)?;
        let flags: u8 = Decode::decode(d)?;
        if flags & !(FLAG_RETURN_LOGITS | FLAG_ENDS_AT_ENTRY) != 0 {
            return Err(DecodeError::OtherString(format!(
                "unknown OpenSession flags {flags:#04x}"
            )));
        }
        Ok(Self {
            session_id,
            model_id,
            layers,
            max_length,
            activation_dtype,
            sampling,
            return_logits: flags & FLAG_RETURN_LOGITS != 0,
            next_hops: Decode::decode(d)?,
            ends: if flags & FLAG_ENDS_AT_ENTRY != 0 {
                EndsAt::Entry
            } else {
                EndsAt::Hops
            },
            trace_id: None,
        })
    }
}

impl OpenSession {
    /// What this hop sends down the chain: the address of the next hop and the
    /// `OpenSession` for it (same session, model, length, dtype and sampling; the next hop's
    /// layers; the chain after it). `None` on the last hop.
    pub fn for_next_hop(&self) -> Option<(&HopAddr, OpenSession)> {
        let (next, rest) = self.next_hops.split_first()?;
        Some((
            next,
            OpenSession {
                layers: next.layers,
                next_hops: rest.to_vec(),
                ..self.clone()
            },
        ))
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        let kind = MessageKind::OpenSession;
        self.layers.validate()?;
        if self.max_length == 0 {
            return Err(ProtocolError::invalid(kind, "max_length is 0"));
        }
        let mut end = self.layers.end;
        for (i, hop) in self.next_hops.iter().enumerate() {
            hop.layers.validate()?;
            if hop.peer_id.is_empty()
                || hop.peer_id.len() > MAX_PEER_ID_BYTES
                || hop.peer().is_none()
            {
                return Err(ProtocolError::invalid(
                    kind,
                    format!(
                        "next_hops[{i}] has no valid peer id ({} bytes, 1..={MAX_PEER_ID_BYTES})",
                        hop.peer_id.len()
                    ),
                ));
            }
            if hop.layers.start != end {
                return Err(ProtocolError::invalid(
                    kind,
                    format!(
                        "next_hops[{i}] starts at layer {} but the previous hop ends at {end}",
                        hop.layers.start
                    ),
                ));
            }
            end = hop.layers.end;
        }
        if self.ends == EndsAt::Entry && (self.sampling.is_some() || self.return_logits) {
            return Err(ProtocolError::invalid(
                kind,
                "sampling settings or return_logits in a session whose entry runs the ends",
            ));
        }
        if let Some(s) = &self.sampling {
            s.validate()?;
        } else if self.return_logits {
            return Err(ProtocolError::invalid(
                kind,
                "return_logits without sampling settings (logits come with sampled tokens)",
            ));
        }
        Ok(())
    }
}

/// The answer to an accepted `OpenSession`. A client may pipeline its first `Forward`
/// without waiting for it; a refusal arrives as an `Error` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SessionOpened {
    /// The session that was opened.
    pub session_id: SessionId,
}

/// What one `Forward` carries: token ids for the first hop, hidden states for the others.
/// An enum, so a message cannot carry both or neither.
#[derive(Clone, Debug, PartialEq)]
pub enum ForwardInput {
    /// Token ids, one per row (first hop: it owns the embedding).
    Tokens(Vec<u32>),
    /// Hidden states of shape `[rows, hidden_dim]`.
    Hidden(WireTensor),
}

/// Input rows for one step of a session: the whole prompt (or a chunk of it) at prefill, one
/// row per decode step.
///
/// The rows occupy positions `start_pos .. start_pos + rows`; the row count is not a separate
/// field but the token count or the tensor's first dimension, so it cannot disagree with
/// the data.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// The session.
    pub session_id: SessionId,
    /// Strictly increasing per session (the replay log and failover identify steps by it; a
    /// hop answers a step it has already seen with `StepOutOfOrder`).
    pub step: u64,
    /// Position of the first row in the sequence (the KV cache length before this step).
    pub start_pos: u32,
    /// Token ids or hidden states.
    pub input: ForwardInput,
}

impl Forward {
    /// Number of rows (tokens or hidden-state rows). Saturates at `u32::MAX` for a token
    /// vector too long to be valid.
    pub fn rows(&self) -> u32 {
        match &self.input {
            ForwardInput::Tokens(t) => u32::try_from(t.len()).unwrap_or(u32::MAX),
            ForwardInput::Hidden(h) => h.shape().first().copied().unwrap_or(0),
        }
    }

    /// The sequence positions this step fills. Saturates for an invalid message.
    pub fn positions(&self) -> Range<u32> {
        self.start_pos..self.start_pos.saturating_add(self.rows())
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        let kind = MessageKind::Forward;
        match &self.input {
            ForwardInput::Tokens(t) => {
                if t.is_empty() {
                    return Err(ProtocolError::invalid(kind, "no tokens"));
                }
                if u32::try_from(t.len()).is_err() {
                    return Err(ProtocolError::invalid(kind, "more than u32::MAX tokens"));
                }
            }
            ForwardInput::Hidden(h) => check_rows_tensor(h, "hidden state")?,
        }
        if self.start_pos.checked_add(self.rows()).is_none() {
            return Err(ProtocolError::invalid(
                kind,
                format!("positions {}+{} overflow u32", self.start_pos, self.rows()),
            ));
        }
        Ok(())
    }
}

/// A tensor of rows must be `[rows >= 1, width >= 1]`.
fn check_rows_tensor(t: &WireTensor, what: &str) -> Result<(), ProtocolError> {
    match t.shape() {
        [rows, width] if *rows > 0 && *width > 0 => Ok(()),
        shape => Err(ProtocolError::BadTensor {
            reason: format!("{what} must have shape [rows >= 1, width >= 1], got {shape:?}"),
        }),
    }
}

/// Output of one step.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutput {
    /// From the last hop: the sampled token, with the logits it was sampled from when the
    /// session asked for them (`return_logits`), shape `[vocab]` or `[rows, vocab]`.
    Token {
        /// The sampled token id.
        id: u32,
        /// Raw logits, only when asked.
        logits: Option<WireTensor>,
    },
    /// From a hop that is not last and has no next hop to forward to: its hidden states,
    /// `[rows, hidden_dim]`.
    Hidden(WireTensor),
}

/// The result of step `step` of a session.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// The session.
    pub session_id: SessionId,
    /// The step of the `Forward` this answers.
    pub step: u64,
    /// A token or hidden states.
    pub output: StepOutput,
    /// The signed records of the hops that produced it, last hop first (since version 5;
    /// see [`crate::evidence`]). On the wire an optional tail of the header, absent when
    /// empty.
    pub evidence: Vec<SignedStepRecord>,
}

impl StepResult {
    fn validate(&self) -> Result<(), ProtocolError> {
        if self.evidence.len() > MAX_EVIDENCE_RECORDS {
            return Err(ProtocolError::invalid(
                MessageKind::StepResult,
                format!(
                    "{} step records exceed {MAX_EVIDENCE_RECORDS}",
                    self.evidence.len()
                ),
            ));
        }
        for r in &self.evidence {
            r.check_bounds()
                .map_err(|e| ProtocolError::invalid(MessageKind::StepResult, e.to_string()))?;
        }
        match &self.output {
            StepOutput::Token { logits: None, .. } => Ok(()),
            StepOutput::Token {
                logits: Some(l), ..
            } => match l.shape() {
                [vocab] | [_, vocab] if l.element_count() > 0 && *vocab > 0 => Ok(()),
                shape => Err(ProtocolError::BadTensor {
                    reason: format!(
                        "logits must have shape [vocab] or [rows, vocab], got {shape:?}"
                    ),
                }),
            },
            StepOutput::Hidden(h) => check_rows_tensor(h, "hidden state"),
        }
    }
}

/// Ends a session: the hop frees its KV cache and forwards the `Close` down the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Close {
    /// The session to close.
    pub session_id: SessionId,
}

/// The answer to `Close` (also sent unasked when a hop expires an idle session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Closed {
    /// The session that is gone.
    pub session_id: SessionId,
}

/// "Still working on step `step`": sent by a hop, about every
/// [`PROGRESS_INTERVAL_MS`], while a step it accepted waits for compute (other sessions
/// on the same node), computes, or waits for its next hop. A caller's silence deadline
/// restarts on each one, within a hard cap of its own, so sixteen clients queued on a
/// one-thread node are not mistaken for a stalled peer, while a peer that stops talking
/// is still found within one silence deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Progress {
    /// The session the step belongs to.
    pub session_id: SessionId,
    /// The step being worked on.
    pub step: u64,
}

/// How often a hop sends [`Progress`] while a step is pending.
pub const PROGRESS_INTERVAL_MS: u64 = 1000;

/// A typed failure. The stream stays usable unless the error says the frame boundary was
/// lost (`FrameTooLarge`), in which case the sender closes it after this message.
///
/// Its leading layout (code, then message) is frozen for all versions, like `Hello`'s, so
/// peers of different versions can read each other's `UnsupportedVersion`. Since version 3
/// a [`SignedReport`] may follow as an optional tail (absent: nothing, not a `None` byte),
/// saying which hop failed and whose fault it is; the message text is for humans only and
/// is never used to decide blame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// What went wrong, for the peer's logic.
    pub code: ErrorCode,
    /// Details, for humans.
    pub message: String,
    /// The failing hop's signed statement, when a hop of a session sent (or relays) it.
    pub report: Option<SignedReport>,
}

impl ErrorMessage {
    /// An error with `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] (at a char boundary).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code,
            message,
            report: None,
        }
    }

    /// The same error with `report` attached.
    pub fn with_report(mut self, report: SignedReport) -> Self {
        self.report = Some(report);
        self
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        if self.message.len() > MAX_ERROR_MESSAGE_BYTES {
            return Err(ProtocolError::invalid(
                MessageKind::Error,
                format!(
                    "message of {} bytes exceeds {MAX_ERROR_MESSAGE_BYTES}",
                    self.message.len()
                ),
            ));
        }
        if let Some(r) = &self.report {
            r.check_bounds()
                .map_err(|e| ProtocolError::invalid(MessageKind::Error, e.to_string()))?;
        }
        Ok(())
    }
}

impl Encode for ErrorMessage {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        self.code.encode(e)?;
        self.message.encode(e)?;
        if let Some(r) = &self.report {
            r.encode(e)?;
        }
        Ok(())
    }
}

/// Decodes the frozen fields only (`report` is `None`): whether a report follows is known
/// from the header length, which the frame decoder has and this trait does not.
impl<Context> Decode<Context> for ErrorMessage {
    fn decode<D: Decoder<Context = Context>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            code: Decode::decode(d)?,
            message: Decode::decode(d)?,
            report: None,
        })
    }
}

impl From<&ProtocolError> for ErrorMessage {
    /// The reply to a peer whose frame failed to decode.
    fn from(e: &ProtocolError) -> Self {
        ErrorMessage::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        assert_eq!(
            check_version(1),
            Err(ProtocolError::UnsupportedVersion { peer: 1, ours: 5 })
        );
    }

    #[test]
    fn error_message_is_cut_at_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let e = ErrorMessage::new(ErrorCode::Internal, long);
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(e.message.len() >= MAX_ERROR_MESSAGE_BYTES - 1);
    }

    #[test]
    fn sampling_validation() {
        assert!(SamplingSettings::greedy().validate().is_ok());
        let mut s = SamplingSettings::greedy();
        s.top_p = 0.0;
        assert!(s.validate().is_err());
        s = SamplingSettings {
            temperature: f32::NAN,
            ..SamplingSettings::greedy()
        };
        assert!(s.validate().is_err());
        let json = r#"{"temperature":0.7,"seed":42}"#;
        let s: SamplingSettings = serde_json::from_str(json).unwrap();
        assert_eq!(s.temperature, 0.7);
        assert_eq!(s.top_p, 1.0);
        assert!(s.validate().is_ok());
    }
}
