//! One test per way a frame can be wrong, each expecting its own `ProtocolError` variant,
//! plus the frame layout pinned byte by byte.

use crate::common::*;
use lamina_protocol::*;

const SID: [u8; 16] = [7; 16];

fn close_frame() -> Vec<u8> {
    encode_frame(&Message::Close(Close {
        session_id: SessionId(SID),
    }))
    .unwrap()
}

/// A `Forward` header with a hidden-state tensor, written field by field the way the frame
/// module's derives lay it out: session id, step, start_pos, input variant (1 = Hidden),
/// shape, dtype variant (0 F32, 1 F16, 2 BF16), byte_len.
fn forward_hidden_header(shape: &[u32], dtype_variant: u32, byte_len: u64) -> Vec<u8> {
    bincode_bytes((
        SID,
        3u64,
        10u32,
        1u32,
        shape.to_vec(),
        dtype_variant,
        byte_len,
    ))
}

fn tensor(shape: &[u32]) -> WireTensor {
    let n: u32 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    WireTensor::from_f32(shape, &values, WireDType::F16).unwrap()
}

#[test]
fn close_frame_layout_byte_by_byte() {
    let f = close_frame();
    let mut expected = vec![21, 0, 0, 0, 7, 16, 0, 0, 0];
    expected.extend_from_slice(&SID);
    assert_eq!(f, expected);
}

#[test]
fn forward_frame_layout_byte_by_byte() {
    let t = tensor(&[1, 2]);
    let msg = Message::Forward(Forward {
        session_id: SessionId(SID),
        step: 3,
        start_pos: 10,
        input: ForwardInput::Hidden(t.clone()),
    });
    let f = encode_frame(&msg).unwrap();
    let header = forward_hidden_header(&[1, 2], 1, 4);
    // 16 id + step 1 + pos 1 + variant 1 + shape (1 + 2) + dtype 1 + byte_len 1
    assert_eq!(header.len(), 24);
    assert_eq!(f, raw_frame(5, &header, t.data()));
    assert_eq!(&f[..4], &(5u32 + 24 + 4).to_le_bytes());
    assert_eq!(&f[f.len() - 4..], t.data());
    assert_eq!(decode_frame(&f, &FrameLimits::default()).unwrap(), msg);
}

#[test]
fn oversized_length_prefix_is_rejected_at_once() {
    let mut dec = FrameDecoder::default();
    dec.push(&(u32::MAX).to_le_bytes()); // 4 GiB - 1, and no body at all
    let err = dec.next_frame().unwrap_err();
    assert_eq!(
        err,
        ProtocolError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: u64::from(DEFAULT_MAX_FRAME_BYTES)
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    // Fatal: buffer dropped, later input ignored, the error repeats.
    assert_eq!(dec.buffered(), 0);
    dec.push(&close_frame());
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.next_frame().unwrap_err(), err);
    assert_eq!(dec.finish().unwrap_err(), err);
    // One-shot decoding says the same from the prefix alone.
    assert_eq!(
        decode_frame(&u32::MAX.to_le_bytes(), &FrameLimits::default()).unwrap_err(),
        err
    );
}

#[test]
fn configured_frame_limit_applies_both_ways() {
    let limits = FrameLimits::with_max_frame_bytes(100);
    let big = Message::Forward(Forward {
        session_id: SessionId(SID),
        step: 0,
        start_pos: 0,
        input: ForwardInput::Hidden(tensor(&[2, 32])), // 128 bytes of f16
    });
    assert!(matches!(
        encode_frame_with(&big, &limits),
        Err(ProtocolError::FrameTooLarge { max: 100, .. })
    ));
    let frame = encode_frame(&big).unwrap();
    let mut dec = FrameDecoder::new(limits);
    dec.push(&frame[..4]);
    assert!(matches!(
        dec.next_frame(),
        Err(ProtocolError::FrameTooLarge { max: 100, .. })
    ));
    // Exactly at the limit is fine.
    let exact = FrameLimits::with_max_frame_bytes((frame.len() - 4) as u32);
    assert_eq!(decode_frame(&frame, &exact).unwrap(), big);
}

#[test]
fn header_over_limit() {
    let limits = FrameLimits {
        max_frame_bytes: 1 << 20,
        max_header_bytes: 64,
    };
    let msg = Message::Forward(Forward {
        session_id: SessionId(SID),
        step: 0,
        start_pos: 0,
        input: ForwardInput::Tokens(vec![100_000; 40]),
    });
    assert!(matches!(
        encode_frame_with(&msg, &limits),
        Err(ProtocolError::HeaderTooLarge { max: 64, .. })
    ));
    let frame = encode_frame(&msg).unwrap();
    assert!(matches!(
        decode_frame(&frame, &limits),
        Err(ProtocolError::HeaderTooLarge { max: 64, .. })
    ));
}

#[test]
fn truncated_frames() {
    let f = close_frame();
    // The stream ends inside a frame: not an error until the end of the stream.
    let mut dec = FrameDecoder::default();
    dec.push(&f[..f.len() - 1]);
    assert_eq!(dec.next_frame().unwrap(), None);
    assert_eq!(
        dec.finish().unwrap_err(),
        ProtocolError::Truncated {
            expected: f.len() as u64,
            found: f.len() as u64 - 1
        }
    );
    // Inside the length prefix.
    let mut dec = FrameDecoder::default();
    dec.push(&f[..2]);
    assert_eq!(dec.next_frame().unwrap(), None);
    assert!(matches!(
        dec.finish(),
        Err(ProtocolError::Truncated {
            expected: 4,
            found: 2
        })
    ));
    // One-shot, at every cut.
    for cut in 0..f.len() {
        assert!(
            matches!(
                decode_frame(&f[..cut], &FrameLimits::default()),
                Err(ProtocolError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
    // A body shorter than its fixed fields.
    let short = [2, 0, 0, 0, 7, 16];
    assert!(matches!(
        decode_frame(&short, &FrameLimits::default()),
        Err(ProtocolError::Truncated { .. })
    ));
    // A header length pointing past the end of the frame.
    let mut bad = close_frame();
    bad[5] = 17;
    assert!(matches!(
        decode_frame(&bad, &FrameLimits::default()),
        Err(ProtocolError::Truncated {
            expected: 26,
            found: 25
        })
    ));
    // Tensor bytes missing from the payload.
    let header = forward_hidden_header(&[1, 4], 1, 8);
    let frame = raw_frame(5, &header, &[0; 6]);
    assert!(matches!(
        decode_frame(&frame, &FrameLimits::default()),
        Err(ProtocolError::Truncated {
            expected: 8,
            found: 6
        })
    ));
}

#[test]
fn trailing_bytes() {
    // After the frame (one-shot decoding only: on a stream it is the next frame).
    let mut f = close_frame();
    f.push(0);
    assert!(matches!(
        decode_frame(&f, &FrameLimits::default()),
        Err(ProtocolError::TrailingBytes {
            count: 1,
            section: "frame"
        })
    ));
    // Inside the header.
    let mut header = SID.to_vec();
    header.push(0);
    let f = raw_frame(7, &header, &[]);
    assert!(matches!(
        decode_frame(&f, &FrameLimits::default()),
        Err(ProtocolError::TrailingBytes {
            count: 1,
            section: "header"
        })
    ));
    // In the payload, beyond the declared tensor...
    let header = forward_hidden_header(&[1, 4], 1, 8);
    let f = raw_frame(5, &header, &[0; 11]);
    assert!(matches!(
        decode_frame(&f, &FrameLimits::default()),
        Err(ProtocolError::TrailingBytes {
            count: 3,
            section: "payload"
        })
    ));
    // ... or on a message that carries no tensor.
    let f = raw_frame(7, &SID, &[1, 2]);
    assert!(matches!(
        decode_frame(&f, &FrameLimits::default()),
        Err(ProtocolError::TrailingBytes {
            count: 2,
            section: "payload"
        })
    ));
}

#[test]
fn garbage() {
    // Plain text as a stream: its first four bytes make an absurd length.
    let text = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(matches!(
        decode_frame(text, &FrameLimits::default()),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    // Garbage inside a well-delimited frame: an OpenSession header of 0xff bytes.
    let f = raw_frame(3, &[0xff; 40], &[]);
    let err = decode_frame(&f, &FrameLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Malformed {
                kind: MessageKind::OpenSession,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::BadFrame);
    // A container length far beyond the decode limit fails without allocating it.
    let mut header = SID.to_vec();
    header.extend_from_slice(&[0, 0, 0]); // step, start_pos, variant 0 = Tokens
    header.push(253); // u64 varint marker
    header.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = decode_frame(&raw_frame(5, &header, &[]), &FrameLimits::default()).unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Malformed { reason, .. } if reason.contains("limit")),
        "{err:?}"
    );
    // Invalid UTF-8 in a name.
    let mut header = bincode_bytes(PROTOCOL_VERSION);
    header.extend_from_slice(&[0; 32]);
    header.extend_from_slice(&[2, 0xc3, 0x28]);
    assert!(matches!(
        decode_frame(&raw_frame(0, &header, &[]), &FrameLimits::default()),
        Err(ProtocolError::Malformed {
            kind: MessageKind::Hello,
            ..
        })
    ));
    // An invalid dtype variant.
    let header = forward_hidden_header(&[1, 1], 9, 2);
    assert!(matches!(
        decode_frame(&raw_frame(5, &header, &[0, 0]), &FrameLimits::default()),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn unknown_tag_is_its_own_error_and_the_stream_goes_on() {
    let mut stream = raw_frame(200, &SID, &[]);
    stream.extend_from_slice(&close_frame());
    let results = drain(&stream, &[3], FrameLimits::default());
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], Err(ProtocolError::UnknownMessageTag(200)));
    assert!(!results[0].as_ref().unwrap_err().is_fatal());
    assert!(matches!(results[1], Ok(Message::Close(_))));
    assert!(matches!(
        decode_frame(&raw_frame(10, &[], &[]), &FrameLimits::default()),
        Err(ProtocolError::UnknownMessageTag(10))
    ));
}

#[test]
fn other_versions_get_unsupported_version() {
    let mut hello = Hello::new(ModelId([1; 32]), "future-node");
    hello.protocol_version = PROTOCOL_VERSION + 1;
    let f = encode_frame(&Message::Hello(hello)).unwrap();
    let err = decode_frame(&f, &FrameLimits::default()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::UnsupportedVersion {
            peer: PROTOCOL_VERSION + 1,
            ours: PROTOCOL_VERSION
        }
    );
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    // A future Hello may carry other fields after the version: still reported as a version
    // problem, not as garbage.
    let mut header = bincode_bytes(7u32);
    header.extend_from_slice(b"\x01\x02 whatever version 7 puts here");
    let err = decode_frame(&raw_frame(0, &header, &[]), &FrameLimits::default()).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::UnsupportedVersion { peer: 7, .. }
    ));
    // The same for HelloAck.
    let mut ack = HelloAck::new("n", None);
    ack.protocol_version = 0;
    let f = encode_frame(&Message::HelloAck(ack)).unwrap();
    assert!(matches!(
        decode_frame(&f, &FrameLimits::default()),
        Err(ProtocolError::UnsupportedVersion { peer: 0, .. })
    ));
    // The reply a node sends round-trips, and a code from a newer peer survives.
    let reply = Message::Error(ErrorMessage::from(&err));
    let back = decode_frame(&encode_frame(&reply).unwrap(), &FrameLimits::default()).unwrap();
    assert_eq!(back, reply);
    let newer = raw_frame(2, &bincode_bytes((999u16, String::from("new"))), &[]);
    assert_eq!(
        decode_frame(&newer, &FrameLimits::default()).unwrap(),
        Message::Error(ErrorMessage {
            code: ErrorCode::Unknown(999),
            message: "new".into(),
            report: None,
        })
    );
}

#[test]
fn tensor_byte_count_mismatch() {
    // The header's byte_len disagrees with shape x dtype.
    let header = forward_hidden_header(&[1, 4], 1, 9);
    let err = decode_frame(&raw_frame(5, &header, &[0; 9]), &FrameLimits::default()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::TensorSizeMismatch {
            shape: vec![1, 4],
            dtype: WireDType::F16,
            expected: 8,
            actual: 9
        }
    );
    assert_eq!(err.code(), ErrorCode::BadTensor);
    // The constructors refuse the same.
    assert!(matches!(
        WireTensor::new(vec![1, 4], WireDType::F32, vec![0u8; 15]),
        Err(ProtocolError::TensorSizeMismatch { .. })
    ));
    assert!(matches!(
        WireTensor::from_f32(&[2, 2], &[0.0; 3], WireDType::BF16),
        Err(ProtocolError::TensorSizeMismatch { .. })
    ));
}

#[test]
fn tensor_rank_over_limit() {
    let shape = vec![1u32; MAX_TENSOR_RANK + 1];
    let header = forward_hidden_header(&shape, 1, 2);
    let err = decode_frame(&raw_frame(5, &header, &[0; 2]), &FrameLimits::default()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::TensorRankTooLarge {
            rank: MAX_TENSOR_RANK + 1,
            max: MAX_TENSOR_RANK
        }
    );
    // A rank claim in the billions is skipped without allocating and fails on the header.
    let mut header = SID.to_vec();
    header.extend_from_slice(&[0, 0, 1]);
    header.push(252); // u32 varint marker
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_frame(&raw_frame(5, &header, &[]), &FrameLimits::default()),
        Err(ProtocolError::Malformed { .. })
    ));
    assert!(WireTensor::new(shape, WireDType::F32, vec![0u8; 4]).is_err());
}

#[test]
fn absurd_shapes() {
    for shape in [
        vec![u32::MAX; MAX_TENSOR_RANK],
        vec![u32::MAX, u32::MAX],
        vec![1 << 16, 1 << 16],
    ] {
        let header = forward_hidden_header(&shape, 0, 0);
        let err = decode_frame(&raw_frame(5, &header, &[]), &FrameLimits::default()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TensorTooLarge { .. }),
            "{shape:?}: {err:?}"
        );
    }
    // A hidden state must be [rows >= 1, width >= 1].
    for shape in [vec![4u32], vec![0, 4], vec![1, 2, 2]] {
        let n: u32 = shape.iter().product();
        let header = forward_hidden_header(&shape, 1, u64::from(n) * 2);
        let f = raw_frame(5, &header, &vec![0; n as usize * 2]);
        assert!(
            matches!(
                decode_frame(&f, &FrameLimits::default()),
                Err(ProtocolError::BadTensor { .. })
            ),
            "{shape:?}"
        );
    }
}

#[test]
fn invalid_messages_are_refused_both_ways() {
    let ok = OpenSession {
        session_id: SessionId(SID),
        model_id: ModelId([2; 32]),
        layers: LayerRange::new(0, 4).unwrap(),
        max_length: 128,
        activation_dtype: WireDType::F16,
        sampling: None,
        return_logits: false,
        next_hops: vec![HopAddr {
            layers: LayerRange::new(4, 8).unwrap(),
            addr: "127.0.0.1:4433".into(),
            peer_id: peer_bytes([7; 32]),
        }],
        ends: EndsAt::Hops,
        trace_id: None,
    };
    assert!(encode_frame(&Message::OpenSession(ok.clone())).is_ok());
    let mut gap = ok.clone();
    gap.next_hops[0].layers.start = 5;
    let mut logits_without_sampling = ok.clone();
    logits_without_sampling.return_logits = true;
    let mut bad_sampling = ok.clone();
    bad_sampling.sampling = Some(SamplingSettings {
        top_p: 1.5,
        ..SamplingSettings::greedy()
    });
    let mut bad_range = ok.clone();
    bad_range.layers = LayerRange { start: 4, end: 4 };
    let mut zero_len = ok.clone();
    zero_len.max_length = 0;
    let mut ends_with_sampling = ok.clone();
    ends_with_sampling.ends = EndsAt::Entry;
    ends_with_sampling.sampling = Some(SamplingSettings::greedy());
    for bad in [
        gap,
        logits_without_sampling,
        bad_sampling,
        bad_range,
        zero_len,
        ends_with_sampling,
    ] {
        let err = encode_frame(&Message::OpenSession(bad.clone())).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidMessage, "{err:?}");
        // Bypass the encoder's check: the decoder refuses it too.
        let f = raw_frame(3, &bincode_bytes(&bad), &[]);
        let err2 = decode_frame(&f, &FrameLimits::default()).unwrap_err();
        assert_eq!(err, err2);
    }
    // A Forward with no tokens.
    let header = bincode_bytes((SID, 0u64, 0u32, 0u32, Vec::<u32>::new()));
    assert!(matches!(
        decode_frame(&raw_frame(5, &header, &[]), &FrameLimits::default()),
        Err(ProtocolError::InvalidMessage {
            kind: MessageKind::Forward,
            ..
        })
    ));
    // Positions that overflow u32.
    let header = bincode_bytes((SID, 0u64, u32::MAX, 0u32, vec![1u32, 2]));
    assert!(matches!(
        decode_frame(&raw_frame(5, &header, &[]), &FrameLimits::default()),
        Err(ProtocolError::InvalidMessage { .. })
    ));
}

#[test]
fn open_session_walks_down_the_chain() {
    let hop = |start, end, port: u16| HopAddr {
        layers: LayerRange::new(start, end).unwrap(),
        addr: format!("127.0.0.1:{port}"),
        peer_id: peer_bytes([port as u8; 32]),
    };
    let first = OpenSession {
        session_id: SessionId(SID),
        model_id: ModelId([2; 32]),
        layers: LayerRange::new(0, 4).unwrap(),
        max_length: 64,
        activation_dtype: WireDType::F32,
        sampling: Some(SamplingSettings::greedy()),
        return_logits: true,
        next_hops: vec![hop(4, 10, 1), hop(10, 22, 2)],
        ends: EndsAt::Hops,
        trace_id: Some(TraceId([9; 16])),
    };
    let (addr1, second) = first.for_next_hop().unwrap();
    assert_eq!(addr1, &first.next_hops[0]);
    assert_eq!(second.layers, LayerRange::new(4, 10).unwrap());
    assert_eq!(second.next_hops, vec![hop(10, 22, 2)]);
    let (addr2, third) = second.for_next_hop().unwrap();
    assert_eq!(addr2.addr, "127.0.0.1:2");
    assert_eq!(third.layers, LayerRange::new(10, 22).unwrap());
    assert!(third.next_hops.is_empty());
    assert!(third.for_next_hop().is_none());
    for m in [&first, &second, &third] {
        assert_eq!(
            (m.session_id, m.sampling, m.return_logits, m.trace_id),
            (first.session_id, first.sampling, true, first.trace_id)
        );
        assert!(encode_frame(&Message::OpenSession(m.clone())).is_ok());
    }
}

/// The trace id is an optional tail of the `OpenSession` header: without it the header is
/// the version-1 layout (what nodes without trace ids send, and still decode), with it the
/// 16 bytes follow, and anything else after the version-1 fields is refused.
#[test]
fn open_session_trace_id_is_an_optional_exact_tail() {
    let v1 = (
        SessionId(SID),
        ModelId([2; 32]),
        LayerRange::new(0, 4).unwrap(),
        64u32,
        WireDType::F16,
        Option::<SamplingSettings>::None,
        false,
        Vec::<HopAddr>::new(),
    );
    let header = bincode_bytes(v1);
    let untraced = match decode_frame(&raw_frame(3, &header, &[]), &FrameLimits::default()) {
        Ok(Message::OpenSession(o)) => o,
        other => panic!("a version-1 open decodes: {other:?}"),
    };
    assert_eq!(untraced.trace_id, None);
    assert_eq!(
        encode_frame(&Message::OpenSession(untraced.clone())).unwrap(),
        raw_frame(3, &header, &[]),
        "an open without a trace id is sent in the version-1 layout"
    );

    let mut traced = untraced.clone();
    traced.trace_id = Some(TraceId([0xab; 16]));
    let frame = encode_frame(&Message::OpenSession(traced.clone())).unwrap();
    assert_eq!(frame.len(), raw_frame(3, &header, &[]).len() + 16);
    assert_eq!(
        decode_frame(&frame, &FrameLimits::default()).unwrap(),
        Message::OpenSession(traced)
    );

    // The flags byte: bit 1 says the entry runs the ends; unknown bits are refused.
    let mut entry = untraced.clone();
    entry.ends = EndsAt::Entry;
    let frame = encode_frame(&Message::OpenSession(entry.clone())).unwrap();
    assert_eq!(
        decode_frame(&frame, &FrameLimits::default()).unwrap(),
        Message::OpenSession(entry)
    );
    let mut h = header.clone();
    let flags_at = h.len() - 2; // the flags byte, then the empty next_hops' length
    assert_eq!(h[flags_at], 0);
    h[flags_at] = 4;
    assert!(
        decode_frame(&raw_frame(3, &h, &[]), &FrameLimits::default()).is_err(),
        "unknown OpenSession flags are refused"
    );

    for tail in [&[0xab; 3][..], &[0xab; 17][..]] {
        let mut h = header.clone();
        h.extend_from_slice(tail);
        assert!(
            decode_frame(&raw_frame(3, &h, &[]), &FrameLimits::default()).is_err(),
            "a {}-byte tail is refused",
            tail.len()
        );
    }
}

#[test]
fn a_bad_frame_does_not_poison_the_stream() {
    let good = close_frame();
    let mut stream = good.clone();
    stream.extend_from_slice(&raw_frame(3, &[0xff; 8], &[])); // garbage header
    stream.extend_from_slice(&raw_frame(7, &SID, &[9])); // trailing payload
    stream.extend_from_slice(&good);
    let results = drain(&stream, &[5, 11], FrameLimits::default());
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[3].is_ok());
    assert!(matches!(results[1], Err(ProtocolError::Malformed { .. })));
    assert!(matches!(
        results[2],
        Err(ProtocolError::TrailingBytes { .. })
    ));
}

#[test]
fn decoded_tensors_share_the_frame_buffer() {
    let t = tensor(&[4, 64]);
    let msg = Message::Forward(Forward {
        session_id: SessionId(SID),
        step: 1,
        start_pos: 0,
        input: ForwardInput::Hidden(t.clone()),
    });
    let parts = encode_frame_parts(&msg, &FrameLimits::default()).unwrap();
    // The encoder did not copy the tensor bytes...
    assert_eq!(parts.payload.len(), 1);
    assert_eq!(parts.payload[0].as_ptr(), t.data().as_ptr());
    // ... and the decoder slices them out of the frame it buffered.
    let mut dec = FrameDecoder::default();
    dec.push(&parts.into_vec());
    let Some(Message::Forward(Forward {
        input: ForwardInput::Hidden(got),
        ..
    })) = dec.next_frame().unwrap()
    else {
        panic!("expected a hidden-state Forward");
    };
    assert_eq!(got, t);
}

#[test]
fn max_hidden_rows_fit_in_a_frame() {
    let limits = FrameLimits::default();
    for (dim, dtype) in [
        (2048u32, WireDType::F16),
        (8192, WireDType::F32),
        (4096, WireDType::BF16),
    ] {
        let rows = limits.max_hidden_rows(dim, dtype);
        assert!(
            u64::from(rows) * u64::from(dim) * dtype.size() as u64
                <= u64::from(limits.max_frame_bytes)
        );
        assert!(
            u64::from(rows + 1) * u64::from(dim) * dtype.size() as u64 + 1024
                > u64::from(limits.max_frame_bytes)
        );
    }
    // A tiny limit still answers at least one row.
    assert_eq!(
        FrameLimits::with_max_frame_bytes(10).max_hidden_rows(4096, WireDType::F32),
        1
    );
}

/// Version 3: an error's failure report rides as an optional tail after the frozen
/// fields; it round-trips, a frame without it is the old layout byte for byte, and an
/// oversized one is refused like any other out-of-bounds field.
#[test]
fn error_reports_are_an_optional_bounded_tail() {
    let key = libp2p_identity::Keypair::generate_ed25519();
    let report = FailureReport {
        reporter: key.public().to_peer_id().to_bytes(),
        session_id: SessionId(SID),
        layers: LayerRange::new(2, 4).unwrap(),
        code: ErrorCode::NextHopFailed,
        fault: Fault::NextHop(LinkFailure::Deadline),
    }
    .sign(&key)
    .unwrap();
    let plain = ErrorMessage::new(ErrorCode::NextHopFailed, "next hop 10.0.0.9 stalled");
    let with = Message::Error(plain.clone().with_report(report.clone()));
    let back = decode_frame(&encode_frame(&with).unwrap(), &FrameLimits::default()).unwrap();
    assert_eq!(back, with);
    let Message::Error(e) = back else {
        unreachable!()
    };
    assert!(e.report.unwrap().verify(SessionId(SID)).is_ok());
    let old = raw_frame(2, &bincode_bytes((plain.code, plain.message.clone())), &[]);
    assert_eq!(
        encode_frame(&Message::Error(plain.clone())).unwrap(),
        old,
        "without a report the frame is the frozen layout"
    );
    let mut huge = report;
    huge.signature = vec![0; MAX_REPORT_SIGNATURE_BYTES + 1];
    assert!(matches!(
        encode_frame(&Message::Error(plain.with_report(huge))),
        Err(ProtocolError::InvalidMessage { .. })
    ));
}

#[test]
fn next_hops_must_name_their_peer() {
    let hop = HopAddr {
        layers: LayerRange::new(4, 8).unwrap(),
        addr: "127.0.0.1:4433".into(),
        peer_id: vec![],
    };
    let open = OpenSession {
        session_id: SessionId(SID),
        model_id: ModelId([2; 32]),
        layers: LayerRange::new(0, 4).unwrap(),
        max_length: 128,
        activation_dtype: WireDType::F16,
        sampling: None,
        return_logits: false,
        next_hops: vec![hop],
        ends: EndsAt::Hops,
        trace_id: None,
    };
    assert!(matches!(
        encode_frame(&Message::OpenSession(open.clone())),
        Err(ProtocolError::InvalidMessage { .. })
    ));
    let mut long = open.clone();
    long.next_hops[0].peer_id = vec![1; MAX_PEER_ID_BYTES + 1];
    assert!(encode_frame(&Message::OpenSession(long)).is_err());
    // Bytes of a plausible length that are no peer id.
    let mut garbage = open;
    garbage.next_hops[0].peer_id = vec![7; 38];
    assert!(encode_frame(&Message::OpenSession(garbage)).is_err());
}
