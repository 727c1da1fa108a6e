//! libFuzzer target: arbitrary bytes into the frame decoder, one-shot and streamed.
//!
//! The first input byte picks the limits (bit 7: tiny limits, so more inputs get past the
//! length check) and the chunk size for the streaming decoder (bits 0..6); the rest is the
//! byte stream. Properties: no panic; every accepted message is valid and re-encodes to
//! itself; an error reply built from any error stays within its size bound; a failure
//! report riding on an error reply verifies or is refused with a typed error.
//!
//! The proptest counterpart, run by `cargo test`, is protocol/tests/it/fuzz_decode.rs.
#![no_main]

use lamina_fuzz::{messages, write_seeds_if_asked};
use lamina_protocol::{
    decode_frame, encode_frame, ErrorMessage, FrameDecoder, FrameLimits, Message, ProtocolError,
    SessionId, MAX_ERROR_MESSAGE_BYTES,
};
use libfuzzer_sys::fuzz_target;

fn check(r: Result<Message, ProtocolError>) {
    match r {
        Ok(m) => {
            m.validate().expect("accepted message is valid");
            let frame = encode_frame(&m).expect("accepted message re-encodes");
            let again = decode_frame(&frame, &FrameLimits::default()).expect("and decodes");
            assert_eq!(again, m);
            if let Message::Error(ErrorMessage {
                report: Some(r), ..
            }) = &m
            {
                let _ = r.verify(SessionId::from(messages::SESSION));
            }
        }
        Err(e) => {
            let reply = ErrorMessage::from(&e);
            assert!(reply.message.len() <= MAX_ERROR_MESSAGE_BYTES);
            let _ = (e.to_string(), e.code(), e.is_fatal());
        }
    }
}

/// Every valid message as one frame (default limits, 16-byte chunks), and a whole session
/// as one stream.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stream = vec![15u8];
    for (name, m) in messages::all() {
        let frame = encode_frame(&m).expect("seed messages encode");
        stream.extend_from_slice(&frame);
        let mut seed = vec![15u8];
        seed.extend_from_slice(&frame);
        out.push((name.to_string(), seed));
    }
    out.push(("stream".to_string(), stream));
    out
}

fuzz_target!(
    init: write_seeds_if_asked("frame_decode", seeds),
    |data: &[u8]| {
        let Some((&ctl, bytes)) = data.split_first() else {
            return;
        };
        let limits = if ctl & 0x80 != 0 {
            FrameLimits {
                max_frame_bytes: 4096,
                max_header_bytes: 1024,
            }
        } else {
            FrameLimits::default()
        };
        let chunk = usize::from(ctl & 0x7f) + 1;

        check(decode_frame(bytes, &limits));

        let mut dec = FrameDecoder::new(limits);
        for piece in bytes.chunks(chunk) {
            dec.push(piece);
            loop {
                match dec.next_frame() {
                    Ok(Some(m)) => check(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        check(Err(e));
                        if fatal {
                            return;
                        }
                    }
                }
            }
        }
        let _ = dec.finish();
    }
);
