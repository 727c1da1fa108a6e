//! `lamina-benches`: the end-to-end bench (`lamina-bench`) and the pieces the criterion
//! micro-benchmarks share with it.
//!
//! - [`compare`]: lamina vs candle-transformers' `quantized_llama` vs llama.cpp, prefill and
//!   decode tokens/s, each run in a fresh process ([`worker`], `scripts/llamacpp_worker.py`).
//! - [`rss`]: memory held by a shard of a layer range vs the whole model.
//! - [`models`]: the models (a real SmolLM2 file, synthetic TinyLlama-shape files) and the
//!   fixed prompt.
//! - [`sys`]: `/proc` readers (RSS, load, machine facts).
//! - [`mesh`]: what the HTTP benches over testnets share (`mesh`, `e2e`).
//! - [`relay_cost`]: the link-emulation relay's own added time per datagram.

pub mod child;
pub mod compare;
pub mod mesh;
pub mod models;
pub mod relay_cost;
pub mod report;
pub mod rss;
pub mod sys;
pub mod worker;
