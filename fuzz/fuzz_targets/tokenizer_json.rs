//! A `tokenizer.json` from bytes (`Tokenizer::from_hf_json_bytes`: the byte cap, the
//! `tokenizers` crate's parse, the id-range limit, the vocabulary build), then a short
//! encode and decode with what parsed. Nothing may panic or allocate beyond the limits.

#![no_main]

use lamina_sharding::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_hf_json_bytes(data, None) else {
        return;
    };
    if let Ok(ids) = tok.encode("Hello, world! <s> 123 héllo", true, true) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX]);
});
