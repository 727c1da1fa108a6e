//! A GGUF file from bytes: the header, metadata and tensor table (`GgufFile::from_bytes`),
//! then what a node does next with a file that parsed: every tensor's bytes, the model
//! settings, the tokenizer built from the metadata, and one short encode/decode with it.
//! Nothing may panic, abort or allocate beyond the file limits.

#![no_main]

use lamina_sharding::config::ModelConfig;
use lamina_sharding::gguf::GgufFile;
use lamina_sharding::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for t in g.tensors() {
        if let Ok(bytes) = g.tensor_bytes(&t.name) {
            assert_eq!(Some(bytes.len() as u64), t.size);
        }
    }
    let _ = ModelConfig::from_gguf_metadata(g.metadata(), g.tensor_info("output.weight").is_some());
    if let Ok(tok) = Tokenizer::from_gguf_metadata(g.metadata()) {
        if let Ok(ids) = tok.encode("Hello, world! <s> 123", true, true) {
            let _ = tok.decode(&ids);
        }
    }
});
