//! Property tests: round trips through the framing, tensor conversions, and robustness of
//! the decoder against arbitrary and mutated input.

use crate::common::*;
use lamina_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A stream of frames survives any chunking of the bytes, and `decode_frame` agrees with
    /// the streaming decoder frame by frame.
    #[test]
    fn messages_round_trip_under_any_chunking(
        msgs in vec(message(), 1..6),
        sizes in vec(1usize..64, 1..8),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            let frame = encode_frame(m).unwrap();
            prop_assert_eq!(&decode_frame(&frame, &FrameLimits::default()).unwrap(), m);
            stream.extend_from_slice(&frame);
        }
        let decoded: Vec<Message> = drain(&stream, &sizes, FrameLimits::default())
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(decoded, msgs);
    }

    /// One byte at a time, the decoder yields nothing until the last byte of a frame.
    #[test]
    fn message_appears_exactly_at_last_byte(msg in message()) {
        let frame = encode_frame(&msg).unwrap();
        let mut dec = FrameDecoder::default();
        for (i, b) in frame.iter().enumerate() {
            dec.push(std::slice::from_ref(b));
            let got = dec.next_frame().unwrap();
            if i + 1 < frame.len() {
                prop_assert!(got.is_none());
                prop_assert!(dec.finish().is_err());
            } else {
                prop_assert_eq!(got.as_ref(), Some(&msg));
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert!(dec.finish().is_ok());
    }

    /// The vectored form is the same bytes as the contiguous one.
    #[test]
    fn frame_parts_match_contiguous_frame(msg in message()) {
        let parts = encode_frame_parts(&msg, &FrameLimits::default()).unwrap();
        let joined: Vec<u8> = parts.clone().into_chunks().iter().flat_map(|c| c.to_vec()).collect();
        prop_assert_eq!(parts.len(), joined.len());
        prop_assert_eq!(&joined, &parts.into_vec());
        prop_assert_eq!(joined, encode_frame(&msg).unwrap());
    }

    /// f32 on the wire is bit-exact, NaN payloads and signed zeros included.
    #[test]
    fn f32_tensor_round_trip_is_bit_exact(bits in vec(any::<u32>(), 0..300)) {
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let t = WireTensor::from_f32(&[values.len() as u32], &values, WireDType::F32).unwrap();
        let back: Vec<u32> = t.to_f32().unwrap().iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(&back, &bits);
        // ... and through a frame.
        let msg = Message::StepResult(StepResult {
            session_id: SessionId::from(1u128),
            step: 0,
            output: StepOutput::Token { id: 0, logits: (!values.is_empty()).then_some(t) },
            evidence: vec![],
        });
        let decoded = decode_frame(&encode_frame(&msg).unwrap(), &FrameLimits::default()).unwrap();
        if let Message::StepResult(StepResult { output: StepOutput::Token { logits: Some(l), .. }, .. }) = decoded {
            let back: Vec<u32> = l.to_f32().unwrap().iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(back, bits);
        } else {
            prop_assert!(values.is_empty());
        }
    }

    /// f16 keeps values within half a unit in the last place (11 significant bits; absolute
    /// 2^-25 for subnormals); converting the result again changes nothing.
    #[test]
    fn f16_within_f16_precision(values in vec(-65504.0f32..=65504.0, 1..200)) {
        let t = WireTensor::from_f32(&[values.len() as u32], &values, WireDType::F16).unwrap();
        let back = t.to_f32().unwrap();
        for (v, b) in values.iter().zip(&back) {
            let tol = (v.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
            prop_assert!((v - b).abs() <= tol, "{} -> {} (tol {})", v, b, tol);
        }
        let again = WireTensor::from_f32(t.shape(), &back, WireDType::F16).unwrap();
        prop_assert_eq!(again.data(), t.data());
    }

    /// bf16 keeps 8 significant bits.
    #[test]
    fn bf16_within_bf16_precision(values in vec(-1e30f32..1e30, 1..200)) {
        let t = WireTensor::from_f32(&[values.len() as u32], &values, WireDType::BF16).unwrap();
        for (v, b) in values.iter().zip(t.to_f32().unwrap()) {
            prop_assert!((v - b).abs() <= v.abs() * 2f32.powi(-8) + f32::MIN_POSITIVE);
        }
    }

    /// Ids and layer ranges round-trip through their text forms.
    #[test]
    fn text_forms_round_trip(m in model_id(), s in session_id(), c in mesh_key(), l in layer_range()) {
        prop_assert_eq!(m.to_string().parse::<ModelId>().unwrap(), m);
        prop_assert_eq!(s.to_string().parse::<SessionId>().unwrap(), s);
        prop_assert_eq!(c.to_string().parse::<MeshKey>().unwrap(), c);
        prop_assert_eq!(l.to_string().parse::<LayerRange>().unwrap(), l);
        let json = serde_json::to_string(&(m, s, c, l)).unwrap();
        let back: (ModelId, SessionId, MeshKey, LayerRange) = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, (m, s, c, l));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic, whether one-shot or streamed, with default or tiny
    /// limits; a decoded message is always valid and re-encodes to itself.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), sizes in vec(1usize..32, 1..4)) {
        for limits in [FrameLimits::default(), FrameLimits { max_frame_bytes: 300, max_header_bytes: 200 }] {
            check_decoded(decode_frame(&bytes, &limits));
            for r in drain(&bytes, &sizes, limits) {
                check_decoded(r);
            }
        }
    }

    /// The same with a correct length prefix and, often, a known tag, so the bytes reach the
    /// header and payload checks instead of stopping at the prefix.
    #[test]
    fn arbitrary_bodies_never_panic(tag in prop_oneof![0u8..9, any::<u8>()], header in vec(any::<u8>(), 0..200), payload in vec(any::<u8>(), 0..64)) {
        let frame = raw_frame(tag, &header, &payload);
        check_decoded(decode_frame(&frame, &FrameLimits::default()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Mutated valid frames (bit flips, byte overwrites, truncation, extension, with and
    /// without a repaired length prefix) give an error or a valid message, never a panic.
    #[test]
    fn mutated_frames_never_panic(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in vec(any::<u8>(), 0..8),
        fix_prefix in any::<bool>(),
    ) {
        let mut frame = encode_frame(&msg).unwrap();
        for (at, x) in &flips {
            let i = at.index(frame.len());
            frame[i] ^= x | 1;
        }
        if let Some(c) = cut {
            frame.truncate(c.index(frame.len()));
        }
        frame.extend_from_slice(&extra);
        if fix_prefix && frame.len() >= 4 {
            let body = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&body.to_le_bytes());
        }
        check_decoded(decode_frame(&frame, &FrameLimits::default()));
        for r in drain(&frame, &[7, 1, 64], FrameLimits::default()) {
            check_decoded(r);
        }
    }
}

/// A decoded message must be valid and survive another round trip unchanged.
fn check_decoded(r: Result<Message, ProtocolError>) {
    match r {
        Ok(m) => {
            m.validate().unwrap();
            let again = decode_frame(&encode_frame(&m).unwrap(), &FrameLimits::default()).unwrap();
            assert_eq!(again, m);
        }
        Err(e) => {
            // Every error renders and maps to a code without panicking.
            let _ = (e.to_string(), e.code(), ErrorMessage::from(&e));
        }
    }
}
