//! A safetensors file from bytes: lamina's header check (`check_header`: length cap,
//! offsets inside the data, dtype times shape with checked arithmetic), and, for a header
//! it accepts, the `safetensors` crate's own parse and every tensor's bytes. Nothing may
//! panic or allocate beyond the limits.

#![no_main]

use lamina_sharding::safetensors::check_header;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = check_header(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    // What lamina accepted lies inside the file.
    for e in &entries {
        assert!(e.data.start <= e.data.end && e.data.end <= data.len() as u64);
    }
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for (_, view) in st.tensors() {
            let _ = view.data().len();
        }
    }
});
