//! `lamina-sharding`: from model files to runnable layer shards.
//!
//! A model is cut into contiguous layer ranges; an [`executor::Shard`] holds the weights
//! of one range and runs forward steps for many sessions, each with its own explicit
//! [`kv_cache::KvCache`]. Everything here is free of networking: the node crate moves
//! the hidden states between shards, this crate only computes them.
//!
//! # How data flows
//!
//! ```text
//! load:  GGUF file ─► gguf ─────────────┐
//!                                       ├─► source::ModelFile ─► executor::Shard::load
//!        safetensors dir ─► safetensors ┘   (tensors by GGUF      (config; KernelPlan:
//!                                            name)                 kernels or candle
//!                                                                  per weight)
//!
//! step:  prompt ─► tokenizer / chat ─► ids ─► Shard::forward_batch ─► hidden ─► next shard …
//!                                               (embedding, blocks: kernels matmuls,
//!                                                candle norms, rope, attention, kv_cache)
//!        last shard: logits ─► sampling ─► token ─► generate (pure machine) ─► next step
//! ```
//!
//! - Loading: [`source::ModelFile`] opens a GGUF file ([`gguf`], memory-mapped) or a
//!   safetensors checkpoint ([`safetensors`]) and hands out tensors by their GGUF names;
//!   [`config`] reads the architecture from the same file. [`executor::Shard::load`]
//!   reads only its range's tensors and decides per weight, through the process's
//!   [`kernels::KernelConfig`], whether lamina's [`kernels`] or candle run it; weights on
//!   the kernels stay in the mapped file (or are repacked into panels).
//! - A step: the executor stacks the sessions' rows (token ids through the embedding,
//!   or hidden states from the previous shard), runs its blocks (each matmul on the
//!   kernels or candle, attention per session against its [`kv_cache`]), and returns
//!   hidden states, or logits from the last shard.
//! - Generation: [`generate`]'s pure state machine decides what to feed next and when to
//!   stop, [`sampling`] picks each token from the logits; the node crate drives the same
//!   machine over the network.
//!
//! # Modules, one job each
//!
//! Model files:
//! - [`gguf`]: memory-mapped GGUF files, metadata accessors, per-tensor reads.
//! - [`safetensors`]: Hugging Face Llama-layout safetensors checkpoints.
//! - [`source`]: one interface over both formats, so a shard reads only its own tensors.
//! - [`config`]: architecture settings read from GGUF metadata or HF `config.json`.
//! - [`file_limits`]: every limit on what a model file may declare.
//! - [`manifest`]: blake3 of every tensor, grouped by layer; the model id.
//! - [`synth`]: random-weight GGUF models of real architectures.
//!
//! Computing:
//! - [`layers`]: the `a..b` layer range type and splits.
//! - [`executor`]: the layer-range executor; its submodules are the step types, the
//!   shard, embedding, rope, block, attention, norm, linear (lamina or candle per
//!   weight) and head.
//! - [`kernels`]: CPU matmul kernels for the GGUF block types: the per-type kernel table
//!   (scalar, AVX2, AVX-512 VNNI), activation quantizers, weight panels, the thread
//!   pool, and [`kernels::KernelConfig`], the one reader of their environment variables.
//! - [`kv_cache`]: per-session, per-layer key/value storage with positions.
//!
//! Text and generation:
//! - [`tokenizer`]: SentencePiece and byte-level BPE tokenizers from GGUF metadata, and
//!   `tokenizer.json` through the `tokenizers` crate.
//! - [`chat`]: chat templates rendered with minijinja.
//! - [`sampling`]: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//! - [`generate`]: the generation machine (pure rules: prefill, decode, stop) and its
//!   drivers over a chain of in-process shards.
//!
//! Placement:
//! - [`planner`]: pure placement (which layers to host) and routing (which chain of
//!   peers).
//!
//! [`error`]: the one error type, with a variant per cause.

pub mod chat;
pub mod config;
pub mod error;
pub mod executor;
pub mod file_limits;
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
