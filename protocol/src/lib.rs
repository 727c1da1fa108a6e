//! # lamina-protocol
//!
//! Every type that crosses lamina's network, and the code that turns them into bytes and
//! back. Pure code: no sockets, no clocks, no tokio, no candle, no libp2p networking (only
//! `libp2p-identity`, whose keys sign announcements). The node moves
//! bytes between QUIC streams and a [`FrameDecoder`]; everything that can be wrong with
//! those bytes is decided here, as a typed [`ProtocolError`], never as a panic.
//!
//! ## Modules
//! * [`ids`] holds [`ModelId`], [`MeshKey`], [`SessionId`], [`TraceId`] (hex text, raw bytes on the wire).
//! * [`layers`] holds [`LayerRange`] (`"a..b"`).
//! * [`tensor`] holds [`WireTensor`] and [`WireDType`]: activations and logits as raw LE bytes.
//! * [`message`] holds [`Message`] and the structs it carries; [`ErrorCode`]; [`PROTOCOL_VERSION`].
//! * [`frame`] holds the frame layout, [`encode_frame`], [`FrameDecoder`], [`FrameLimits`].
//! * [`codes`] holds [`MessageKind`], [`ErrorCode`] and [`CodeClass`]: the vocabulary every
//!   other module uses.
//! * [`dtype`] holds [`WireDType`].
//! * [`error`] holds [`ProtocolError`].
//! * [`report`] holds [`FailureReport`] and [`SignedReport`]: the signed, typed statement
//!   of which hop failed and whose fault it is, attached to error replies (version 3).
//! * [`announce`] holds [`Announcement`] and [`SignedAnnouncement`]: what a node says about
//!   itself to the mesh, signed with its libp2p identity key.
//! * [`member`] holds [`MemberCert`], [`Revocation`] and [`Signed`]: membership of a private
//!   mesh, signed by the mesh authority's key.
//!
//! ## One generation on the wire
//! The client (the entry peer) has planned a chain of hops `h0 .. hn` whose layer ranges
//! are contiguous and cover the model. Each data-plane stream carries one session:
//!
//! 1. **Handshake.** The dialer sends [`Hello`] (protocol version, model id, name); the hop
//!    answers [`HelloAck`] with the layers it has loaded, or [`Message::Error`] with
//!    `UnsupportedVersion` / `WrongModel`. The version is read before anything else, so
//!    peers of different versions can always say so to each other.
//! 2. **Open.** The client sends [`OpenSession`] to `h0`: session id, layers, `max_length`,
//!    activation dtype, and `next_hops` = the rest of the chain (each hop's layers, address
//!    and peer id, which the dialer expects in the TLS handshake), the [`SamplingSettings`] and optionally the request's
//!    [`TraceId`] (which every hop puts in its logs). `h0` opens the same
//!    session on `h1` with `next_hops[1..]` ([`OpenSession::for_next_hop`]), and so on; the
//!    hop that runs the model's last layer uses the sampling settings. Each hop answers
//!    [`SessionOpened`] (or an `Error` such as `SessionLimit` or `LayerMismatch`). The client
//!    may pipeline the first `Forward` behind `OpenSession`.
//! 3. **Prefill.** The client sends [`Forward`] with the prompt's token ids
//!    ([`ForwardInput::Tokens`]) at `start_pos = 0`, split into chunks if the hidden states
//!    would not fit in one frame ([`FrameLimits::max_hidden_rows`]). `h0` embeds and runs its
//!    layers and sends `Forward` with [`ForwardInput::Hidden`] (`[rows, hidden_dim]`, f16 by
//!    default) to `h1`, which does the same. The last hop applies the final norm and the
//!    output head, samples, and the [`StepResult`] with [`StepOutput::Token`] travels back
//!    up the chain to the client.
//! 4. **Decode.** Every new token is one more `Forward` of one row with the next `step` and
//!    `start_pos`; every hop appends to its KV cache. `step` increases strictly, so a replay
//!    after failover and the hop's own checks agree on which step is which.
//! 5. **Close.** [`Close`] travels down the chain, each hop frees its cache and answers
//!    [`Closed`]. Idle sessions also expire on their own (node policy, announced by an
//!    unasked `Closed`).
//!
//! Any frame that fails to decode is answered with `Message::Error` whose code comes from
//! [`ProtocolError::code`]; the stream stays usable unless the error
//! [`is_fatal`](ProtocolError::is_fatal).
//!
//! ## Limits, and why each exists
//! * **Frame size** ([`FrameLimits::max_frame_bytes`], 64 MiB by default): a peer must not
//!   be able to make a node buffer without bound. Checked on the 4-byte length prefix,
//!   before the body is read or any memory is set aside for it.
//! * **Header size** ([`FrameLimits::max_header_bytes`], at most 1 MiB): bounds the
//!   variable-length fields (token ids, names, hop lists); tensors live outside the header.
//! * **bincode allocation limit** (4 MiB per header): a length field inside the header
//!   cannot make bincode reserve memory it will never fill.
//! * **Tensor rank** ([`MAX_TENSOR_RANK`] = 8) and **element count**
//!   ([`MAX_TENSOR_ELEMENTS`] = 2^31), checked with overflow checks: the byte length of a
//!   tensor is computed from its shape, so an absurd shape must be refused before that
//!   arithmetic can wrap.
//! * **Error message length** ([`MAX_ERROR_MESSAGE_BYTES`]): an error reply is never large.
//!
//! See [`frame`] for the byte-by-byte frame layout.

pub mod announce;
pub mod codes;
pub mod dtype;
pub mod error;
pub mod evidence;
pub mod frame;
pub mod ids;
pub mod layers;
pub mod member;
pub mod message;
pub mod report;
pub mod tensor;

pub use announce::{
    AnnounceError, Announcement, NodeState, SignedAnnouncement, ANNOUNCEMENT_VERSION,
};
pub use error::{ProtocolError, Result};
pub use evidence::{
    check_chain, digest_input, digest_tensor, Digest, EvidenceError, ExpectedHop, HopEvidence,
    SignedStepRecord, StepProduct, StepRecord, MAX_EVIDENCE_RECORDS,
};
pub use frame::{
    decode_frame, encode_frame, encode_frame_parts, encode_frame_with, FrameDecoder, FrameLimits,
    FrameParts, DEFAULT_MAX_FRAME_BYTES, MAX_HEADER_BYTES,
};
pub use ids::{MeshKey, ModelId, SessionId, TraceId};
pub use layers::LayerRange;
pub use member::{
    AuthorityBody, MemberCert, MemberError, Revocation, Role, Signed, SignedMemberCert,
    SignedRevocation,
};
pub use message::{
    check_version, Close, Closed, CodeClass, EndsAt, ErrorCode, ErrorMessage, Forward,
    ForwardInput, Hello, HelloAck, HopAddr, Message, MessageKind, OpenSession, Progress,
    SamplingSettings, SessionOpened, StepOutput, StepResult, MAX_ERROR_MESSAGE_BYTES,
    MAX_PEER_ID_BYTES, PROGRESS_INTERVAL_MS, PROTOCOL_VERSION,
};
pub use report::{
    FailureReport, Fault, LinkFailure, ReportError, SignedReport, MAX_REPORT_BODY_BYTES,
    MAX_REPORT_KEY_BYTES, MAX_REPORT_SIGNATURE_BYTES,
};
pub use tensor::{
    checked_byte_len, checked_element_count, WireDType, WireTensor, MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK,
};
