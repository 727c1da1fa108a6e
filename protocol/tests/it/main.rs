//! The protocol's integration tests, one binary: round trips and robustness
//! (`roundtrip`), every rejection with its typed error (`rejections`), no allocation driven
//! by a peer's length fields (`no_prealloc`), and a bounded fuzz run (`fuzz_decode`).

mod common;

mod fuzz_decode;
mod no_prealloc;
mod rejections;
mod roundtrip;
