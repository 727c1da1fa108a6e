//! Framing: how a [`Message`] becomes bytes on a stream and back, with hard size limits.
//!
//! # Frame layout
//! ```text
//! offset     size  field
//! 0          4     body_len    u32 LE: bytes after this field; 5 <= body_len <= max_frame_bytes
//! 4          1     tag         u8: MessageKind (0 Hello, 1 HelloAck, 2 Error, 3 OpenSession,
//!                              4 SessionOpened, 5 Forward, 6 StepResult, 7 Close, 8 Closed,
//!                              9 Progress)
//! 5          4     header_len  u32 LE: H <= max_header_bytes and 9 + H <= 4 + body_len
//! 9          H     header      bincode 2, config::standard() (varint integers, little endian)
//! 9 + H      P     payload     raw tensor bytes, concatenated in header order;
//!                              P = body_len - 5 - H = sum of the tensors' byte_len
//! ```
//! A tensor appears in the header as `(shape: Vec<u32>, dtype: WireDType, byte_len: u64)` and
//! its elements in the payload, so a sender writes the header and hands each tensor's bytes
//! to the transport as its own chunk ([`FrameParts`]), and a receiver slices each tensor out
//! of the received frame ([`bytes::Bytes`]) instead of copying it through bincode.
//!
//! The tag lives outside bincode so that an unknown message is reported as such
//! ([`ProtocolError::UnknownMessageTag`]) rather than as generic garbage, and the explicit
//! `header_len` lets the decoder tell header garbage from payload and reject trailing bytes
//! in either.
//!
//! # Limits, and why
//! * `max_frame_bytes` (default 64 MiB) bounds what one peer can make us buffer. It is checked
//!   as soon as the 4 length bytes arrive, before the body is read; the decoder never
//!   reserves memory from a length the peer sent, it only grows as bytes actually arrive.
//!   64 MiB holds a 2048-row f16 prefill chunk of an 8192-wide model (32 MiB) with room to
//!   spare; larger prefills are split into chunks ([`FrameLimits::max_hidden_rows`]).
//! * `max_header_bytes` (default and ceiling 1 MiB) bounds the bincode part, which is where
//!   the variable-length fields are (token ids, names, next hops).
//! * bincode itself decodes with a 4 MiB allocation limit, so a length field inside the
//!   header (a `Vec` or `String` claiming 2^60 elements) fails before allocating instead of
//!   aborting the process. Tensor shapes longer than [`MAX_TENSOR_RANK`] are skipped without
//!   allocating at all.
//! * Tensor shapes are checked for rank and element count with overflow checks
//!   ([`checked_byte_len`]) before any payload byte is interpreted.

use bincode::de::{BorrowDecoder, Decoder};
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::evidence::SignedStepRecord;
use crate::ids::{SessionId, TraceId};
use crate::message::{
    check_version, Close, Closed, ErrorMessage, Forward, ForwardInput, Hello, HelloAck, Message,
    MessageKind, OpenSession, Progress, SessionOpened, StepOutput, StepResult,
};
use crate::report::SignedReport;
use crate::tensor::{checked_byte_len, WireDType, WireTensor, MAX_TENSOR_RANK};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of the fixed fields after the length prefix: tag (1) and header length (4).
pub const BODY_FIXED_BYTES: usize = 5;
/// Default [`FrameLimits::max_frame_bytes`]: 64 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 << 20;
/// Default and ceiling of [`FrameLimits::max_header_bytes`]: 1 MiB.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Memory bincode may allocate while decoding one header (it counts `len * size_of::<T>()`
/// for every container before allocating it). 4x the header ceiling, because a `u32` token
/// takes as little as one byte on the wire and four in memory.
const HEADER_ALLOC_LIMIT: usize = 4 << 20;
/// Bytes reserved for everything but tensor data when sizing chunks, far above any real
/// `Forward`/`StepResult` header.
const TENSOR_FRAME_OVERHEAD: u64 = 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HEADER_ALLOC_LIMIT>()
}

/// Size limits of a stream, agreed by configuration (both ends should use the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body (everything after the length prefix) sent or accepted.
    pub max_frame_bytes: u32,
    /// Largest bincode header sent or accepted; values above [`MAX_HEADER_BYTES`] act as it.
    pub max_header_bytes: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

impl FrameLimits {
    /// Limits with the given frame size and the default header size.
    pub fn with_max_frame_bytes(max_frame_bytes: u32) -> Self {
        Self {
            max_frame_bytes,
            ..Self::default()
        }
    }

    fn header_limit(&self) -> u32 {
        self.max_header_bytes.min(MAX_HEADER_BYTES)
    }

    /// Most rows of `[rows, hidden_dim]` activations of `dtype` that fit in one frame (at
    /// least 1 even if a single row does not fit: the encoder then reports the error). Used
    /// to split a long prefill into chunks.
    pub fn max_hidden_rows(&self, hidden_dim: u32, dtype: WireDType) -> u32 {
        let row = u64::from(hidden_dim.max(1)) * dtype.size() as u64;
        let room = u64::from(self.max_frame_bytes).saturating_sub(TENSOR_FRAME_OVERHEAD);
        u32::try_from(room / row).unwrap_or(u32::MAX).max(1)
    }
}

// ---------------------------------------------------------------------------------------
// Header shapes of the tensor-carrying messages. Encoding borrows from the message (no copy
// of token ids or shapes); decoding builds owned descriptors that are then matched against
// the payload. The derives make field order the wire order, and both sides list the same
// fields in the same order; the round-trip tests hold them together.

/// Encode-side tensor descriptor.
#[derive(Encode)]
struct TensorDescRef<'a> {
    shape: &'a [u32],
    dtype: WireDType,
    byte_len: u64,
}

impl<'a> TensorDescRef<'a> {
    fn of(t: &'a WireTensor) -> Self {
        Self {
            shape: t.shape(),
            dtype: t.dtype(),
            byte_len: t.data().len() as u64,
        }
    }
}

/// A decoded shape. A shape longer than [`MAX_TENSOR_RANK`] is read past element by element
/// without being stored, so a peer cannot make us allocate for it, and is reported with its
/// real rank afterwards.
enum ShapeWire {
    Dims(Vec<u32>),
    RankTooLarge(u64),
}

impl<Context> Decode<Context> for ShapeWire {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let rank = u64::decode(decoder)?;
        if rank > MAX_TENSOR_RANK as u64 {
            for _ in 0..rank {
                // Every u32 takes at least one byte, so this loop ends within the header.
                u32::decode(decoder)?;
            }
            return Ok(ShapeWire::RankTooLarge(rank));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            dims.push(u32::decode(decoder)?);
        }
        Ok(ShapeWire::Dims(dims))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ShapeWire {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        <Self as Decode<Context>>::decode(decoder)
    }
}

/// Decode-side tensor descriptor.
#[derive(Decode)]
struct TensorDesc {
    shape: ShapeWire,
    dtype: WireDType,
    byte_len: u64,
}

#[derive(Encode)]
enum ForwardInputRef<'a> {
    Tokens(&'a [u32]),
    Hidden(TensorDescRef<'a>),
}

#[derive(Decode)]
enum ForwardInputWire {
    Tokens(Vec<u32>),
    Hidden(TensorDesc),
}

#[derive(Encode)]
struct ForwardHeadRef<'a> {
    session_id: SessionId,
    step: u64,
    start_pos: u32,
    input: ForwardInputRef<'a>,
}

#[derive(Decode)]
struct ForwardHead {
    session_id: SessionId,
    step: u64,
    start_pos: u32,
    input: ForwardInputWire,
}

#[derive(Encode)]
enum StepOutputRef<'a> {
    Token {
        id: u32,
        logits: Option<TensorDescRef<'a>>,
    },
    Hidden(TensorDescRef<'a>),
}

#[derive(Decode)]
enum StepOutputWire {
    Token { id: u32, logits: Option<TensorDesc> },
    Hidden(TensorDesc),
}

#[derive(Encode)]
struct StepResultHeadRef<'a> {
    session_id: SessionId,
    step: u64,
    output: StepOutputRef<'a>,
}

#[derive(Decode)]
struct StepResultHead {
    session_id: SessionId,
    step: u64,
    output: StepOutputWire,
}

// ---------------------------------------------------------------------------------------
// Encoding

/// An encoded frame in two parts: `head` (length prefix, tag, header length and header) and
/// the tensor payload chunks, which share memory with the message's tensors. Send them in
/// order, e.g. with a vectored write (`quinn::SendStream::write_chunks`), to avoid copying
/// tensor bytes; or call [`into_vec`](Self::into_vec) for one contiguous buffer.
#[derive(Clone, Debug)]
pub struct FrameParts {
    /// Length prefix, tag, header length and bincode header.
    pub head: Vec<u8>,
    /// Raw tensor bytes, in header order.
    pub payload: Vec<Bytes>,
}

impl FrameParts {
    /// Total frame length, length prefix included.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.iter().map(Bytes::len).sum::<usize>()
    }

    /// Never true: a frame has at least its fixed fields.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one contiguous buffer (copies the tensor bytes once).
    pub fn into_vec(self) -> Vec<u8> {
        let mut out = self.head;
        out.reserve_exact(self.payload.iter().map(Bytes::len).sum());
        for chunk in &self.payload {
            out.extend_from_slice(chunk);
        }
        out
    }

    /// All chunks as [`Bytes`], ready for a vectored write.
    pub fn into_chunks(self) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(1 + self.payload.len());
        chunks.push(Bytes::from(self.head));
        chunks.extend(self.payload);
        chunks
    }
}

/// Encodes `msg` as one frame with the default [`FrameLimits`].
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, ProtocolError> {
    encode_frame_with(msg, &FrameLimits::default())
}

/// Encodes `msg` as one frame, refusing (like the receiver would) a frame over `limits`.
pub fn encode_frame_with(msg: &Message, limits: &FrameLimits) -> Result<Vec<u8>, ProtocolError> {
    encode_frame_parts(msg, limits).map(FrameParts::into_vec)
}

/// Encodes `msg` as a frame head plus tensor chunks, without copying tensor bytes.
///
/// The message is validated first ([`Message::validate`]): sending something the peer must
/// reject would only turn a local bug into a remote error.
pub fn encode_frame_parts(
    msg: &Message,
    limits: &FrameLimits,
) -> Result<FrameParts, ProtocolError> {
    msg.validate()?;
    let kind = msg.kind();
    let mut payload = Vec::new();
    let header = match msg {
        Message::Hello(m) => encode_header(kind, m),
        Message::HelloAck(m) => encode_header(kind, m),
        Message::Error(m) => encode_header(kind, m),
        Message::OpenSession(m) => encode_header(kind, m),
        Message::SessionOpened(m) => encode_header(kind, m),
        Message::Close(m) => encode_header(kind, m),
        Message::Closed(m) => encode_header(kind, m),
        Message::Progress(m) => encode_header(kind, m),
        Message::Forward(m) => {
            let input = match &m.input {
                ForwardInput::Tokens(t) => ForwardInputRef::Tokens(t),
                ForwardInput::Hidden(h) => {
                    payload.push(h.bytes().clone());
                    ForwardInputRef::Hidden(TensorDescRef::of(h))
                }
            };
            encode_header(
                kind,
                ForwardHeadRef {
                    session_id: m.session_id,
                    step: m.step,
                    start_pos: m.start_pos,
                    input,
                },
            )
        }
        Message::StepResult(m) => {
            let output = match &m.output {
                StepOutput::Token { id, logits } => StepOutputRef::Token {
                    id: *id,
                    logits: logits.as_ref().map(|l| {
                        payload.push(l.bytes().clone());
                        TensorDescRef::of(l)
                    }),
                },
                StepOutput::Hidden(h) => {
                    payload.push(h.bytes().clone());
                    StepOutputRef::Hidden(TensorDescRef::of(h))
                }
            };
            encode_header(
                kind,
                StepResultHeadRef {
                    session_id: m.session_id,
                    step: m.step,
                    output,
                },
            )
            .and_then(|mut h| {
                // The evidence is an optional tail (absent when empty).
                if !m.evidence.is_empty() {
                    h.extend(encode_header(kind, &m.evidence)?);
                }
                Ok(h)
            })
        }
    }?;

    let header_len = header.len() as u64;
    if header_len > u64::from(limits.header_limit()) {
        return Err(ProtocolError::HeaderTooLarge {
            len: header_len,
            max: u64::from(limits.header_limit()),
        });
    }
    let payload_len: u64 = payload.iter().map(|b| b.len() as u64).sum();
    let body_len = BODY_FIXED_BYTES as u64 + header_len + payload_len;
    if body_len > u64::from(limits.max_frame_bytes) {
        return Err(ProtocolError::FrameTooLarge {
            len: body_len,
            max: u64::from(limits.max_frame_bytes),
        });
    }
    // Both fit in u32: bounded by the limits, which are u32.
    let mut head = Vec::with_capacity(LENGTH_PREFIX_BYTES + BODY_FIXED_BYTES + header.len());
    head.extend_from_slice(&(body_len as u32).to_le_bytes());
    head.push(kind.tag());
    head.extend_from_slice(&(header_len as u32).to_le_bytes());
    head.extend_from_slice(&header);
    Ok(FrameParts { head, payload })
}

fn encode_header<T: Encode>(kind: MessageKind, value: T) -> Result<Vec<u8>, ProtocolError> {
    bincode::encode_to_vec(value, bincode::config::standard()).map_err(|e: EncodeError| {
        ProtocolError::Encode {
            kind,
            reason: e.to_string(),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Decodes exactly one complete frame from `bytes` (length prefix included). Bytes after the
/// frame are an error, so this suits datagram-like uses, tests and fuzzing; streams use
/// [`FrameDecoder`]. Copies `bytes` once.
pub fn decode_frame(bytes: &[u8], limits: &FrameLimits) -> Result<Message, ProtocolError> {
    let body_len = match read_length_prefix(bytes, limits)? {
        Some(len) => len,
        None => {
            return Err(ProtocolError::Truncated {
                expected: LENGTH_PREFIX_BYTES as u64,
                found: bytes.len() as u64,
            })
        }
    };
    let frame_len = LENGTH_PREFIX_BYTES + body_len;
    if bytes.len() < frame_len {
        return Err(ProtocolError::Truncated {
            expected: frame_len as u64,
            found: bytes.len() as u64,
        });
    }
    if bytes.len() > frame_len {
        return Err(ProtocolError::TrailingBytes {
            count: (bytes.len() - frame_len) as u64,
            section: "frame",
        });
    }
    decode_body(
        Bytes::copy_from_slice(&bytes[LENGTH_PREFIX_BYTES..]),
        limits,
    )
}

/// Reads and checks the length prefix: `None` if fewer than 4 bytes are available.
fn read_length_prefix(bytes: &[u8], limits: &FrameLimits) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if len > limits.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(limits.max_frame_bytes),
        });
    }
    // u32 always fits in usize on the 32/64-bit targets lamina supports.
    Ok(Some(len as usize))
}

/// Decodes a frame body (everything after the length prefix).
fn decode_body(body: Bytes, limits: &FrameLimits) -> Result<Message, ProtocolError> {
    let Some((&tag, rest)) = body.split_first() else {
        return Err(truncated_body(&body));
    };
    let Some(header_len) = rest.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
        return Err(truncated_body(&body));
    };
    let kind = MessageKind::from_tag(tag).ok_or(ProtocolError::UnknownMessageTag(tag))?;
    if header_len > limits.header_limit() {
        return Err(ProtocolError::HeaderTooLarge {
            len: u64::from(header_len),
            max: u64::from(limits.header_limit()),
        });
    }
    let header_end = BODY_FIXED_BYTES + header_len as usize;
    if header_end > body.len() {
        return Err(ProtocolError::Truncated {
            expected: (LENGTH_PREFIX_BYTES + header_end) as u64,
            found: (LENGTH_PREFIX_BYTES + body.len()) as u64,
        });
    }
    let header = &body[BODY_FIXED_BYTES..header_end];
    let mut payload = Payload {
        bytes: body.slice(header_end..),
        offset: 0,
    };

    let msg = match kind {
        MessageKind::Hello | MessageKind::HelloAck => {
            // The version comes first in both, and is read alone: a peer of another version
            // may have changed everything after it.
            let version: u32 = decode_header_prefix(kind, header)?;
            check_version(version)?;
            if kind == MessageKind::Hello {
                Message::Hello(decode_header::<Hello>(kind, header)?)
            } else {
                Message::HelloAck(decode_header::<HelloAck>(kind, header)?)
            }
        }
        MessageKind::Error => {
            let (mut e, used) = decode_header_prefix_len::<ErrorMessage>(kind, header)?;
            // Anything after the frozen fields is the failure report, exactly.
            if let Some(tail) = header.get(used..).filter(|t| !t.is_empty()) {
                e.report = Some(decode_header::<SignedReport>(kind, tail)?);
            }
            Message::Error(e)
        }
        MessageKind::OpenSession => {
            let (mut open, used) = decode_header_prefix_len::<OpenSession>(kind, header)?;
            // Anything after the version-1 fields is the trace id, exactly.
            if let Some(tail) = header.get(used..).filter(|t| !t.is_empty()) {
                open.trace_id = Some(decode_header::<TraceId>(kind, tail)?);
            }
            Message::OpenSession(open)
        }
        MessageKind::SessionOpened => {
            Message::SessionOpened(decode_header::<SessionOpened>(kind, header)?)
        }
        MessageKind::Close => Message::Close(decode_header::<Close>(kind, header)?),
        MessageKind::Closed => Message::Closed(decode_header::<Closed>(kind, header)?),
        MessageKind::Progress => Message::Progress(decode_header::<Progress>(kind, header)?),
        MessageKind::Forward => {
            let head = decode_header::<ForwardHead>(kind, header)?;
            let input = match head.input {
                ForwardInputWire::Tokens(t) => ForwardInput::Tokens(t),
                ForwardInputWire::Hidden(desc) => ForwardInput::Hidden(payload.take(desc)?),
            };
            Message::Forward(Forward {
                session_id: head.session_id,
                step: head.step,
                start_pos: head.start_pos,
                input,
            })
        }
        MessageKind::StepResult => {
            let (head, used) = decode_header_prefix_len::<StepResultHead>(kind, header)?;
            // Anything after the head is the step evidence, exactly.
            let evidence = match header.get(used..).filter(|t| !t.is_empty()) {
                Some(tail) => decode_header::<Vec<SignedStepRecord>>(kind, tail)?,
                None => Vec::new(),
            };
            let output = match head.output {
                StepOutputWire::Token { id, logits } => StepOutput::Token {
                    id,
                    logits: logits.map(|d| payload.take(d)).transpose()?,
                },
                StepOutputWire::Hidden(desc) => StepOutput::Hidden(payload.take(desc)?),
            };
            Message::StepResult(StepResult {
                session_id: head.session_id,
                step: head.step,
                output,
                evidence,
            })
        }
    };
    payload.finish()?;
    msg.validate()?;
    Ok(msg)
}

fn truncated_body(body: &[u8]) -> ProtocolError {
    ProtocolError::Truncated {
        expected: (LENGTH_PREFIX_BYTES + BODY_FIXED_BYTES) as u64,
        found: (LENGTH_PREFIX_BYTES + body.len()) as u64,
    }
}

/// Decodes a whole header: every header byte must be consumed.
fn decode_header<T: Decode<()>>(kind: MessageKind, header: &[u8]) -> Result<T, ProtocolError> {
    let (value, used) = decode_header_prefix_len::<T>(kind, header)?;
    if used != header.len() {
        return Err(ProtocolError::TrailingBytes {
            count: (header.len() - used) as u64,
            section: "header",
        });
    }
    Ok(value)
}

/// Decodes a value from the start of a header, ignoring what follows.
fn decode_header_prefix<T: Decode<()>>(
    kind: MessageKind,
    header: &[u8],
) -> Result<T, ProtocolError> {
    decode_header_prefix_len(kind, header).map(|(v, _)| v)
}

fn decode_header_prefix_len<T: Decode<()>>(
    kind: MessageKind,
    header: &[u8],
) -> Result<(T, usize), ProtocolError> {
    bincode::decode_from_slice(header, config()).map_err(|e| ProtocolError::Malformed {
        kind,
        reason: describe_decode_error(&e),
    })
}

fn describe_decode_error(e: &DecodeError) -> String {
    match e {
        DecodeError::UnexpectedEnd { .. } => "header ends inside a field".to_owned(),
        DecodeError::LimitExceeded => {
            format!("a length field claims more than the {HEADER_ALLOC_LIMIT}-byte decode limit")
        }
        DecodeError::UnexpectedVariant {
            type_name, found, ..
        } => format!("invalid {type_name} variant {found}"),
        DecodeError::Utf8 { .. } => "string is not valid UTF-8".to_owned(),
        DecodeError::InvalidBooleanValue(v) => format!("invalid bool byte {v}"),
        other => other.to_string(),
    }
}

/// The payload of a frame being matched against the tensor descriptors of its header.
struct Payload {
    bytes: Bytes,
    offset: usize,
}

impl Payload {
    /// Checks `desc` and slices its bytes out of the payload (no copy).
    fn take(&mut self, desc: TensorDesc) -> Result<WireTensor, ProtocolError> {
        let shape = match desc.shape {
            ShapeWire::Dims(dims) => dims,
            ShapeWire::RankTooLarge(rank) => {
                return Err(ProtocolError::TensorRankTooLarge {
                    rank: usize::try_from(rank).unwrap_or(usize::MAX),
                    max: MAX_TENSOR_RANK,
                })
            }
        };
        let expected = checked_byte_len(&shape, desc.dtype)?;
        if desc.byte_len != expected {
            return Err(ProtocolError::TensorSizeMismatch {
                shape,
                dtype: desc.dtype,
                expected,
                actual: desc.byte_len,
            });
        }
        let available = (self.bytes.len() - self.offset) as u64;
        if expected > available {
            return Err(ProtocolError::Truncated {
                expected: (self.offset as u64) + expected,
                found: self.bytes.len() as u64,
            });
        }
        // expected <= available <= usize::MAX, so the cast is exact.
        let end = self.offset + expected as usize;
        let data = self.bytes.slice(self.offset..end);
        self.offset = end;
        WireTensor::new(shape, desc.dtype, data)
    }

    /// Every payload byte must belong to a declared tensor.
    fn finish(&self) -> Result<(), ProtocolError> {
        let left = self.bytes.len() - self.offset;
        if left > 0 {
            return Err(ProtocolError::TrailingBytes {
                count: left as u64,
                section: "payload",
            });
        }
        Ok(())
    }
}

/// Incremental frame decoder: feed it bytes as they arrive, in chunks of any size, and take
/// messages out. No I/O and no clock, so it is tested (and fuzzed) with arbitrary chunking;
/// the node's stream task just moves bytes from the QUIC stream into it.
///
/// After each [`push`](Self::push), call [`next_frame`](Self::next_frame) until it returns
/// `Ok(None)`; then the buffer holds less than one frame plus the last chunk. A decode error
/// for one frame consumes that frame and the decoder continues with the next; only
/// [`ProtocolError::FrameTooLarge`] is fatal ([`ProtocolError::is_fatal`]): the decoder drops
/// its buffer, ignores further input and repeats that error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: FrameLimits,
    failed: Option<ProtocolError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FrameLimits::default())
    }
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: BytesMut::new(),
            limits,
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Enforces `limits` from the next check on: a stream's frames may grow once its
    /// session is open (before, only small control frames are needed).
    pub fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// Appends received bytes. Only real bytes grow the buffer; nothing is reserved from a
    /// length the peer announced.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the error of the
    /// next frame.
    pub fn next_frame(&mut self) -> Result<Option<Message>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let body_len = match read_length_prefix(&self.buf, &self.limits) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.buf = BytesMut::new();
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        if self.buf.len() < LENGTH_PREFIX_BYTES + body_len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(LENGTH_PREFIX_BYTES + body_len);
        frame.advance(LENGTH_PREFIX_BYTES);
        decode_body(frame.freeze(), &self.limits).map(Some)
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Call at end of stream: `Err(Truncated)` if the stream stopped inside a frame (or the
    /// fatal error, if one happened), `Ok(())` if it ended on a frame boundary.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let expected = match read_length_prefix(&self.buf, &self.limits) {
            Ok(Some(len)) => LENGTH_PREFIX_BYTES + len,
            _ => LENGTH_PREFIX_BYTES,
        };
        Err(ProtocolError::Truncated {
            expected: expected as u64,
            found: self.buf.len() as u64,
        })
    }
}
