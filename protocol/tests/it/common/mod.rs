//! Shared proptest strategies and helpers for the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use lamina_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

pub fn model_id() -> impl Strategy<Value = ModelId> {
    any::<[u8; 32]>().prop_map(ModelId)
}

pub fn mesh_key() -> impl Strategy<Value = MeshKey> {
    any::<[u8; 32]>().prop_map(MeshKey)
}

/// The bytes of a valid peer id: the identity multihash of an ed25519 public key (in
/// libp2p's protobuf encoding), as ed25519 peer ids are.
pub fn peer_bytes(key: [u8; 32]) -> Vec<u8> {
    let mut v = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    v.extend_from_slice(&key);
    v
}

pub fn peer_id_bytes() -> impl Strategy<Value = Vec<u8>> {
    any::<[u8; 32]>().prop_map(peer_bytes)
}

/// A signed membership certificate with arbitrary bytes within the bounds (the frame
/// layer only checks sizes; the node's gate verifies signatures).
pub fn signed_member() -> impl Strategy<Value = SignedMemberCert> {
    (
        vec(
            any::<u8>(),
            0..=lamina_protocol::member::MAX_MEMBER_BODY_BYTES,
        ),
        vec(any::<u8>(), 64..=64),
    )
        .prop_map(|(body, sig)| {
            let bytes = bincode_pair(&body, &sig);
            SignedMemberCert::from_bytes(&bytes).expect("within bounds")
        })
}

/// bincode (standard config) of `(body, sig)`: varint lengths, then the bytes.
fn bincode_pair(body: &[u8], sig: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, n: usize) {
        if n < 251 {
            out.push(n as u8);
        } else {
            out.push(251);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
    }
    let mut v = Vec::new();
    varint(&mut v, body.len());
    v.extend_from_slice(body);
    varint(&mut v, sig.len());
    v.extend_from_slice(sig);
    v
}

pub fn dtype() -> impl Strategy<Value = WireDType> {
    prop_oneof![
        Just(WireDType::F32),
        Just(WireDType::F16),
        Just(WireDType::BF16)
    ]
}

pub fn name() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

pub fn layer_range() -> impl Strategy<Value = LayerRange> {
    (0u32..200, 1u32..40).prop_map(|(start, len)| LayerRange {
        start,
        end: start + len,
    })
}

/// A valid tensor of the given shape strategy with random raw bytes (any bit pattern,
/// NaNs included), so equality after a round trip means byte equality.
pub fn tensor_with(shape: impl Strategy<Value = Vec<u32>>) -> impl Strategy<Value = WireTensor> {
    (shape, dtype()).prop_flat_map(|(shape, dtype)| {
        let n = shape.iter().map(|&d| d as usize).product::<usize>() * dtype.size();
        vec(any::<u8>(), n).prop_map(move |data| {
            WireTensor::new(shape.clone(), dtype, data).expect("strategy builds valid tensors")
        })
    })
}

pub fn rows_tensor() -> impl Strategy<Value = WireTensor> {
    tensor_with((1u32..6, 1u32..48).prop_map(|(r, w)| vec![r, w]))
}

pub fn logits_tensor() -> impl Strategy<Value = WireTensor> {
    prop_oneof![
        tensor_with((1u32..64).prop_map(|v| vec![v])),
        tensor_with((1u32..3, 1u32..32).prop_map(|(r, v)| vec![r, v])),
    ]
}

pub fn sampling() -> impl Strategy<Value = SamplingSettings> {
    (
        0.0f32..4.0,
        any::<u32>(),
        0.01f32..=1.0,
        0.0f32..=1.0,
        0.1f32..3.0,
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(temperature, top_k, top_p, min_p, repetition_penalty, repetition_window, seed)| {
                SamplingSettings {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repetition_penalty,
                    repetition_window,
                    seed,
                }
            },
        )
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (model_id(), name(), proptest::option::of(signed_member()))
        .prop_map(|(m, n, member)| Hello::new(m, n).with_member(member))
}

pub fn hello_ack() -> impl Strategy<Value = HelloAck> {
    (name(), proptest::option::of(layer_range())).prop_map(|(n, l)| HelloAck::new(n, l))
}

/// Reports with arbitrary bytes within the bounds (the frame layer only checks sizes; the
/// node verifies signatures).
pub fn signed_report() -> impl Strategy<Value = SignedReport> {
    (
        vec(any::<u8>(), 0..=MAX_REPORT_BODY_BYTES),
        vec(any::<u8>(), 0..=64),
        vec(any::<u8>(), 0..=64),
    )
        .prop_map(|(body, public_key, signature)| SignedReport {
            body,
            public_key,
            signature,
        })
}

pub fn error_message() -> impl Strategy<Value = ErrorMessage> {
    (any::<u16>(), name(), proptest::option::of(signed_report())).prop_map(|(c, m, r)| {
        let e = ErrorMessage::new(ErrorCode::from_u16(c), m);
        match r {
            Some(r) => e.with_report(r),
            None => e,
        }
    })
}

pub fn open_session() -> impl Strategy<Value = OpenSession> {
    (
        session_id(),
        model_id(),
        layer_range(),
        1u32..100_000,
        dtype(),
        vec((1u32..20, "[a-z0-9.:]{1,30}", peer_id_bytes()), 0..4),
        proptest::option::of(sampling()),
        any::<bool>(),
        proptest::option::of(any::<[u8; 16]>().prop_map(TraceId)),
    )
        .prop_map(
            |(session_id, model_id, layers, max_length, dt, hops, sampling, logits, trace_id)| {
                let mut end = layers.end;
                let next_hops: Vec<HopAddr> = hops
                    .into_iter()
                    .map(|(len, addr, peer_id)| {
                        let hop = HopAddr {
                            layers: LayerRange {
                                start: end,
                                end: end + len,
                            },
                            addr,
                            peer_id,
                        };
                        end += len;
                        hop
                    })
                    .collect();
                OpenSession {
                    session_id,
                    model_id,
                    layers,
                    max_length,
                    activation_dtype: dt,
                    return_logits: sampling.is_some() && logits,
                    // Without sampling the same coin picks who runs the ends.
                    ends: if sampling.is_none() && logits {
                        EndsAt::Entry
                    } else {
                        EndsAt::Hops
                    },
                    sampling,
                    next_hops,
                    trace_id,
                }
            },
        )
}

pub fn forward() -> impl Strategy<Value = Forward> {
    let input = prop_oneof![
        vec(any::<u32>(), 1..40).prop_map(ForwardInput::Tokens),
        rows_tensor().prop_map(ForwardInput::Hidden),
    ];
    (session_id(), any::<u64>(), 0u32..1_000_000, input).prop_map(
        |(session_id, step, start_pos, input)| Forward {
            session_id,
            step,
            start_pos,
            input,
        },
    )
}

pub fn step_result() -> impl Strategy<Value = StepResult> {
    let output = prop_oneof![
        (any::<u32>(), proptest::option::of(logits_tensor()))
            .prop_map(|(id, logits)| StepOutput::Token { id, logits }),
        rows_tensor().prop_map(StepOutput::Hidden),
    ];
    let record = (
        vec(any::<u8>(), 0..64),
        vec(any::<u8>(), 0..40),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(body, public_key, signature)| lamina_protocol::SignedStepRecord {
                body,
                public_key,
                signature,
            },
        );
    (session_id(), any::<u64>(), output, vec(record, 0..3)).prop_map(
        |(session_id, step, output, evidence)| StepResult {
            session_id,
            step,
            output,
            evidence,
        },
    )
}

/// Any valid message.
pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        hello_ack().prop_map(Message::HelloAck),
        error_message().prop_map(Message::Error),
        open_session().prop_map(Message::OpenSession),
        session_id().prop_map(|session_id| Message::SessionOpened(SessionOpened { session_id })),
        forward().prop_map(Message::Forward),
        step_result().prop_map(Message::StepResult),
        session_id().prop_map(|session_id| Message::Close(Close { session_id })),
        session_id().prop_map(|session_id| Message::Closed(Closed { session_id })),
        (session_id(), any::<u64>())
            .prop_map(|(session_id, step)| Message::Progress(Progress { session_id, step })),
    ]
}

/// Splits `bytes` into chunks whose sizes cycle through `sizes` (each at least 1).
pub fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

/// Builds a frame from raw parts: body length, tag, header length, header, payload.
pub fn raw_frame(tag: u8, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let body_len = 5 + header.len() + payload.len();
    let mut f = Vec::with_capacity(4 + body_len);
    f.extend_from_slice(&(body_len as u32).to_le_bytes());
    f.push(tag);
    f.extend_from_slice(&(header.len() as u32).to_le_bytes());
    f.extend_from_slice(header);
    f.extend_from_slice(payload);
    f
}

/// bincode with the protocol's configuration, for crafting headers by hand.
pub fn bincode_bytes<T: bincode::Encode>(value: T) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode::config::standard()).unwrap()
}

/// Feeds all of `bytes` to a fresh decoder in the given chunking and drains it after every
/// chunk. Returns every result, stopping after a fatal error. Never panics by itself.
pub fn drain(
    bytes: &[u8],
    sizes: &[usize],
    limits: FrameLimits,
) -> Vec<Result<Message, ProtocolError>> {
    let mut dec = FrameDecoder::new(limits);
    let mut out = Vec::new();
    for chunk in chunks(bytes, sizes) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
        }
    }
    if let Err(e) = dec.finish() {
        out.push(Err(e));
    }
    out
}
