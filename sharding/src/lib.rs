//! `lamina-sharding`: from model files to runnable layer shards.
//!
//! A model is cut into contiguous layer ranges; a [`executor::Shard`] holds the weights of
//! one range and runs forward steps for many sessions, each with its own explicit
//! [`kv_cache::KvCache`]. Everything here is free of networking: the node crate moves the
//! hidden states between shards, this crate only computes them.
//!
//! Modules, one job each:
//! - [`layers`]: the `a..b` layer range type and splits.
//! - [`config`]: architecture settings read from GGUF metadata or HF `config.json`.
//! - [`gguf`]: memory-mapped GGUF files, metadata accessors, per-tensor reads.
//! - [`safetensors`]: Hugging Face Llama-layout safetensors checkpoints.
//! - [`source`]: one interface over both formats, so a shard reads only its own tensors.
//! - [`manifest`]: blake3 of every tensor, grouped by layer; the model id.
//! - [`kernels`]: CPU matmul kernels for the GGUF block types with SIMD, and their pool.
//! - [`kv_cache`]: per-session, per-layer key/value storage with positions.
//! - [`executor`]: the layer-range executor (embedding, blocks, final norm, output head).
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers from GGUF metadata, and
//!   `tokenizer.json` through the `tokenizers` crate.
//! - [`chat`]: chat templates rendered with minijinja.
//! - [`sampling`]: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//! - [`generate`]: the generation loop over a chain of in-process shards, with stop rules.
//! - [`synth`]: random-weight GGUF models of real architectures.
//! - [`planner`]: pure placement (which layers to host) and routing (which chain of peers).

pub mod chat;
pub mod config;
pub mod error;
pub mod executor;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod kv_cache;
pub mod layers;
pub mod manifest;
pub mod planner;
pub mod safetensors;
pub mod sampling;
pub mod source;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
