//! [`ProtocolError`], the one error type of this crate.
//!
//! Every way a peer's bytes can be wrong has its own variant, so that tests (and the node's
//! metrics) can tell a truncated frame from garbage from an absurd tensor shape, and so that
//! [`ProtocolError::code`] can pick the [`ErrorCode`] the node sends back in its
//! [`Message::Error`](crate::Message::Error) reply.

use crate::codes::{ErrorCode, MessageKind};
use crate::dtype::WireDType;

/// Short alias used throughout the crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// Everything that can go wrong while building, encoding or decoding protocol values.
///
/// The variants are plain data (no boxed sources) so the error is `Clone + PartialEq`: the
/// [`FrameDecoder`](crate::FrameDecoder) repeats a fatal error on every later call, and
/// tests compare errors directly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length prefix (or the frame an encoder was asked to build) exceeds
    /// [`FrameLimits::max_frame_bytes`](crate::FrameLimits::max_frame_bytes). Raised as soon as
    /// the 4 prefix bytes are seen, before anything of that size is allocated. Fatal for the
    /// stream: the decoder cannot find the next frame boundary without reading the whole body.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared (or would-be) body length.
        len: u64,
        /// The limit in force.
        max: u64,
    },

    /// The header section of a frame is longer than
    /// [`FrameLimits::max_header_bytes`](crate::FrameLimits::max_header_bytes).
    #[error("frame header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Declared header length.
        len: u64,
        /// The limit in force.
        max: u64,
    },

    /// Fewer bytes than promised: the stream ended inside a frame, a frame body is shorter
    /// than its fixed fields, a header length points past the end of the frame, or the
    /// tensors declared in the header need more payload bytes than the frame carries.
    #[error("truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the length fields promise.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },

    /// More bytes than accounted for: header bytes left after the bincode header was decoded,
    /// payload bytes beyond the declared tensors, or (for [`decode_frame`](crate::decode_frame))
    /// bytes after the single expected frame.
    #[error("{count} trailing bytes after {section}")]
    TrailingBytes {
        /// How many bytes are left over.
        count: u64,
        /// Which part of the frame they follow: "header", "payload" or "frame".
        section: &'static str,
    },

    /// The frame's tag byte names no message this version knows.
    #[error("unknown message tag {0}")]
    UnknownMessageTag(u8),

    /// The bincode header could not be decoded: garbage, an invalid enum variant, invalid
    /// UTF-8, a container length over the decode limit, ...
    #[error("malformed {kind} header: {reason}")]
    Malformed {
        /// The message kind whose header failed to decode.
        kind: MessageKind,
        /// What bincode reported.
        reason: String,
    },

    /// A `Hello`/`HelloAck` from a peer speaking another protocol version. The rest of that
    /// message is not decoded, because its layout may differ.
    #[error("unsupported protocol version {peer} (this node speaks {ours})")]
    UnsupportedVersion {
        /// The version the peer announced.
        peer: u32,
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u32,
    },

    /// A tensor's byte count disagrees with `product(shape) * dtype.size()`.
    #[error("tensor {shape:?} of {dtype} needs {expected} bytes, got {actual}")]
    TensorSizeMismatch {
        /// The tensor's shape.
        shape: Vec<u32>,
        /// The tensor's element type.
        dtype: WireDType,
        /// Bytes implied by shape and dtype.
        expected: u64,
        /// Bytes declared or supplied.
        actual: u64,
    },

    /// A tensor has more dimensions than [`MAX_TENSOR_RANK`](crate::MAX_TENSOR_RANK).
    #[error("tensor rank {rank} exceeds the limit of {max}")]
    TensorRankTooLarge {
        /// Number of dimensions.
        rank: usize,
        /// The limit.
        max: usize,
    },

    /// A tensor's element count overflows or exceeds
    /// [`MAX_TENSOR_ELEMENTS`](crate::MAX_TENSOR_ELEMENTS).
    #[error("tensor shape {shape:?} exceeds the limit of {max} elements")]
    TensorTooLarge {
        /// The offending shape (bounded by the rank limit, so cheap to keep).
        shape: Vec<u32>,
        /// The limit.
        max: u64,
    },

    /// A tensor does not have the shape a message requires (e.g. a hidden state that is not
    /// `[rows, hidden_dim]`), or an f32 slice does not match the requested shape.
    #[error("bad tensor: {reason}")]
    BadTensor {
        /// What is wrong.
        reason: String,
    },

    /// A `LayerRange` with `start >= end`.
    #[error("invalid layer range {start}..{end}: start must be below end")]
    InvalidLayerRange {
        /// First layer.
        start: u32,
        /// One past the last layer.
        end: u32,
    },

    /// A well-formed message whose fields break a rule of the protocol (an empty token list,
    /// a non-contiguous chain of hops, sampling settings on a hop that is not last, ...).
    #[error("invalid {kind} message: {reason}")]
    InvalidMessage {
        /// The message kind.
        kind: MessageKind,
        /// The rule it breaks.
        reason: String,
    },

    /// Text that does not parse as the named type (ids, layer ranges, dtypes).
    #[error("cannot parse {what} from {input:?}: {reason}")]
    Parse {
        /// The type being parsed.
        what: &'static str,
        /// The input, cut to at most 80 characters.
        input: String,
        /// Why it failed.
        reason: &'static str,
    },

    /// bincode refused to encode a header (only possible for values no constructor makes).
    #[error("cannot encode {kind} header: {reason}")]
    Encode {
        /// The message kind.
        kind: MessageKind,
        /// What bincode reported.
        reason: String,
    },
}

impl ProtocolError {
    /// The code to put in the [`Message::Error`](crate::Message::Error) reply to a peer whose
    /// frame caused this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } | Self::HeaderTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::Truncated { .. }
            | Self::TrailingBytes { .. }
            | Self::UnknownMessageTag(_)
            | Self::Malformed { .. } => ErrorCode::BadFrame,
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::TensorSizeMismatch { .. }
            | Self::TensorRankTooLarge { .. }
            | Self::TensorTooLarge { .. }
            | Self::BadTensor { .. } => ErrorCode::BadTensor,
            Self::InvalidLayerRange { .. } | Self::InvalidMessage { .. } | Self::Parse { .. } => {
                ErrorCode::InvalidMessage
            }
            Self::Encode { .. } => ErrorCode::Internal,
        }
    }

    /// Whether the byte stream that produced this error can still be read.
    ///
    /// Only [`FrameTooLarge`](Self::FrameTooLarge) leaves the decoder without a frame
    /// boundary (skipping the body would mean reading up to 4 GiB from a misbehaving peer), so
    /// it is fatal: reply with the error and close the stream. Every other decode error
    /// consumed exactly one whole frame, so the node can answer with an error reply and keep
    /// reading the same stream. ([`Truncated`](Self::Truncated) from
    /// [`FrameDecoder::finish`](crate::FrameDecoder::finish) is reported when the stream has
    /// ended anyway.)
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::FrameTooLarge { .. })
    }

    pub(crate) fn parse(what: &'static str, input: &str, reason: &'static str) -> Self {
        Self::Parse {
            what,
            input: input.chars().take(80).collect(),
            reason,
        }
    }

    pub(crate) fn invalid(kind: MessageKind, reason: impl Into<String>) -> Self {
        Self::InvalidMessage {
            kind,
            reason: reason.into(),
        }
    }
}
