//! libFuzzer target: arbitrary bytes into the frame decoder.
//!
//! The first input byte picks the limits (bit 7: tiny limits, so more inputs get past the
//! length check) and the chunk size for the streaming decoder (bits 0..6); the rest is the
//! byte stream. Same property as tests/fuzz_decode.rs: no panic, and every accepted message
//! is valid and re-encodes to itself.
#![no_main]

use lamina_protocol::{decode_frame, encode_frame, FrameDecoder, FrameLimits, Message, ProtocolError};
use libfuzzer_sys::fuzz_target;

fn check(r: Result<Message, ProtocolError>) {
    match r {
        Ok(m) => {
            m.validate().expect("accepted message is valid");
            let frame = encode_frame(&m).expect("accepted message re-encodes");
            let again = decode_frame(&frame, &FrameLimits::default()).expect("and decodes");
            assert_eq!(again, m);
        }
        Err(e) => {
            let _ = (e.to_string(), e.code());
        }
    }
}

fuzz_target!(|data: &[u8]| {
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
});
