//! The protocol's vocabulary of kinds and codes: which message a frame carries
//! ([`MessageKind`], its tag byte) and why a request failed ([`ErrorCode`], its
//! [`CodeClass`]). Plain enums with their wire values; every other module uses them.

use std::fmt;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// The kind of a message, i.e. its tag byte in a frame.
///
/// Tags 0 (`Hello`), 1 (`HelloAck`) and 2 (`Error`) and the leading `protocol_version` field
/// of `Hello`/`HelloAck` are frozen for all future versions, so that peers of different
/// versions can always tell each other so.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum MessageKind {
    /// See [`Hello`].
    Hello = 0,
    /// See [`HelloAck`].
    HelloAck = 1,
    /// See [`ErrorMessage`].
    Error = 2,
    /// See [`OpenSession`].
    OpenSession = 3,
    /// See [`SessionOpened`].
    SessionOpened = 4,
    /// See [`Forward`].
    Forward = 5,
    /// See [`StepResult`].
    StepResult = 6,
    /// See [`Close`].
    Close = 7,
    /// See [`Closed`].
    Closed = 8,
    /// See [`Progress`] (since version 2).
    Progress = 9,
}

impl MessageKind {
    /// Every kind, in tag order.
    pub const ALL: [MessageKind; 10] = [
        MessageKind::Hello,
        MessageKind::HelloAck,
        MessageKind::Error,
        MessageKind::OpenSession,
        MessageKind::SessionOpened,
        MessageKind::Forward,
        MessageKind::StepResult,
        MessageKind::Close,
        MessageKind::Closed,
        MessageKind::Progress,
    ];

    /// The tag byte.
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// The kind with this tag byte, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.get(usize::from(tag)).copied()
    }

    /// The kind's name, as in the enum.
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "Hello",
            MessageKind::HelloAck => "HelloAck",
            MessageKind::Error => "Error",
            MessageKind::OpenSession => "OpenSession",
            MessageKind::SessionOpened => "SessionOpened",
            MessageKind::Forward => "Forward",
            MessageKind::StepResult => "StepResult",
            MessageKind::Close => "Close",
            MessageKind::Closed => "Closed",
            MessageKind::Progress => "Progress",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The three kinds of error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeClass {
    /// The hop is fine but will not run this session now or here (full, busy, shutting
    /// down, moved to other layers, another model, the session expired): go elsewhere,
    /// blame no one.
    Refusal,
    /// What reached the hop breaks the protocol or the session's own limits: it would fail
    /// on any chain when the entry sent it, and is the sender's doing otherwise.
    Request,
    /// The hop (or its link to the next hop) failed.
    Failure,
}

/// Why a request failed. Encoded as a `u16`; codes this version does not know (from a newer
/// peer) decode to [`ErrorCode::Unknown`] instead of failing, so new codes can be added
/// without a version bump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded (truncated, trailing bytes, garbage, unknown tag).
    BadFrame,
    /// The frame (or its header) is over the size limit; the stream is closed after this.
    FrameTooLarge,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The node does not serve the requested model.
    WrongModel,
    /// No open session has this id (never opened, closed, or expired).
    UnknownSession,
    /// The node has no free session slot.
    SessionLimit,
    /// A tensor's shape or dtype does not fit the session (or its bytes their shape).
    BadTensor,
    /// The requested layers are not (all) loaded on this node.
    LayerMismatch,
    /// The step would go past the session's `max_length`.
    ContextOverflow,
    /// A bug or resource failure on the answering node.
    Internal,
    /// Temporarily overloaded; retry later or elsewhere.
    Busy,
    /// A well-formed message that breaks a protocol rule.
    InvalidMessage,
    /// A step number that is not above the last one seen, or positions that do not continue
    /// the KV cache.
    StepOutOfOrder,
    /// `OpenSession` with the id of a session that is already open.
    SessionExists,
    /// A message that is not valid in the stream's current state.
    UnexpectedMessage,
    /// The hop could not reach (or lost) its next hop; the client re-plans the route.
    NextHopFailed,
    /// The node is shutting down; move the session elsewhere.
    ShuttingDown,
    /// The dialer did not prove membership of the node's private mesh (no certificate, of
    /// another mesh, expired, revoked, or for another peer id). A refusal: the node is
    /// fine, and routes of a member never pick a node of another mesh.
    NotAMember,
    /// The request is over one of the hop's explicit limits (rows in one step, time to
    /// open the session): the sender's doing, since the limits are the protocol's defaults
    /// unless an operator lowered them.
    OverLimit,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// What kind of failure this code names, which decides what the entry does about it
    /// (see [`CodeClass`]).
    pub fn class(self) -> CodeClass {
        match self {
            ErrorCode::SessionLimit
            | ErrorCode::Busy
            | ErrorCode::ShuttingDown
            | ErrorCode::LayerMismatch
            | ErrorCode::WrongModel
            | ErrorCode::UnknownSession
            | ErrorCode::NotAMember => CodeClass::Refusal,
            ErrorCode::BadFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::UnsupportedVersion
            | ErrorCode::BadTensor
            | ErrorCode::ContextOverflow
            | ErrorCode::InvalidMessage
            | ErrorCode::StepOutOfOrder
            | ErrorCode::SessionExists
            | ErrorCode::UnexpectedMessage
            | ErrorCode::OverLimit => CodeClass::Request,
            ErrorCode::Internal | ErrorCode::NextHopFailed | ErrorCode::Unknown(_) => {
                CodeClass::Failure
            }
        }
    }

    /// Every known code, in wire order.
    pub const KNOWN: [ErrorCode; 19] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::WrongModel,
        ErrorCode::UnknownSession,
        ErrorCode::SessionLimit,
        ErrorCode::BadTensor,
        ErrorCode::LayerMismatch,
        ErrorCode::ContextOverflow,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::InvalidMessage,
        ErrorCode::StepOutOfOrder,
        ErrorCode::SessionExists,
        ErrorCode::UnexpectedMessage,
        ErrorCode::NextHopFailed,
        ErrorCode::ShuttingDown,
        ErrorCode::NotAMember,
        ErrorCode::OverLimit,
    ];

    /// The wire value: 1-based position in [`KNOWN`](Self::KNOWN); 0 is never assigned.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::Unknown(v) => v,
            known => Self::KNOWN
                .iter()
                .position(|&c| c == known)
                .map_or(0, |i| i as u16 + 1),
        }
    }

    /// The code for a wire value. A value that names a known code always decodes to it, so
    /// `Unknown(v)` only ever holds unassigned values after decoding.
    pub fn from_u16(v: u16) -> Self {
        usize::from(v)
            .checked_sub(1)
            .and_then(|i| Self::KNOWN.get(i).copied())
            .unwrap_or(ErrorCode::Unknown(v))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(v) => write!(f, "Unknown({v})"),
            known => write!(f, "{known:?}"),
        }
    }
}

impl Encode for ErrorCode {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_u16().encode(encoder)
    }
}

impl<Context> Decode<Context> for ErrorCode {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self::from_u16(u16::decode(decoder)?))
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for ErrorCode {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(Self::from_u16(u16::decode(decoder)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_survives() {
        for (i, c) in ErrorCode::KNOWN.iter().enumerate() {
            assert_eq!(c.as_u16(), i as u16 + 1);
            assert_eq!(ErrorCode::from_u16(c.as_u16()), *c);
        }
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Unknown(0));
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        let bytes =
            bincode::encode_to_vec(ErrorCode::Unknown(999), bincode::config::standard()).unwrap();
        let (back, _): (ErrorCode, usize) =
            bincode::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, ErrorCode::Unknown(999));
    }

    #[test]
    fn message_kind_tags() {
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(k.tag() as usize, i);
            assert_eq!(MessageKind::from_tag(k.tag()), Some(*k));
        }
        assert_eq!(MessageKind::from_tag(10), None);
        assert_eq!(MessageKind::from_tag(255), None);
    }
}
