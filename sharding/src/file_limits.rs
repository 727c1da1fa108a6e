//! Every limit lamina puts on what a model file (or a file shipped with it) may declare, in
//! one place.
//!
//! A model file is input like a network frame: a peer may hand one over, a user may pull one
//! from anywhere. Every count or size a parser reads is checked against these limits *before*
//! it sizes an allocation or a loop, and every refusal is a typed error naming the field
//! ([`crate::Error::LimitExceeded`], [`crate::Error::OutOfRange`]). The defaults are far above
//! every real model lamina runs (noted per limit), so they only ever stop a corrupt or hostile
//! file.

// --- GGUF ---

/// Tensors in one GGUF file (real models: a few hundred to a few thousand).
pub const GGUF_MAX_TENSORS: u64 = 1 << 16;
/// Metadata key/value entries in one GGUF file (real models: under a hundred).
pub const GGUF_MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// Bytes of one GGUF string, key or value (the longest real ones are chat templates of
/// tens of KiB).
pub const GGUF_MAX_STRING_BYTES: u64 = 16 << 20;
/// Bytes of a tensor name (ggml itself allows 64).
pub const GGUF_MAX_TENSOR_NAME_BYTES: u64 = 1024;
/// Elements of one metadata array (the largest real ones are token lists and merges of a
/// few hundred thousand).
pub const GGUF_MAX_ARRAY_LEN: u64 = 1 << 22;
/// Metadata values in all arrays of a file together, which bounds the memory the parsed
/// metadata takes whatever the file size.
pub const GGUF_MAX_METADATA_VALUES: u64 = 1 << 23;
/// Dimensions of one tensor (ggml's `GGML_MAX_DIMS`).
pub const GGUF_MAX_TENSOR_DIMS: u64 = 4;
/// `general.alignment` (real files: 32).
pub const GGUF_MAX_ALIGNMENT: u64 = 1 << 16;

// --- safetensors ---

/// Bytes of a safetensors JSON header (real checkpoints: tens to hundreds of KiB).
pub const SAFETENSORS_MAX_HEADER_BYTES: u64 = 16 << 20;
/// Tensors in one safetensors file.
pub const SAFETENSORS_MAX_TENSORS: usize = 1 << 16;

// --- JSON and template files shipped with a model ---

/// Bytes of a Hugging Face `config.json` (real ones: a few KiB).
pub const CONFIG_JSON_MAX_BYTES: u64 = 1 << 20;
/// Bytes of a `tokenizer_config.json` (real ones: up to a few hundred KiB, most of it
/// the added-tokens table and the chat template).
pub const TOKENIZER_CONFIG_MAX_BYTES: u64 = 16 << 20;
/// Bytes of a `tokenizer.json` (the largest real ones, 256k-token vocabularies, are
/// about 35 MiB).
pub const TOKENIZER_JSON_MAX_BYTES: u64 = 128 << 20;
/// Bytes of a chat template's source (real ones: up to a few tens of KiB).
pub const CHAT_TEMPLATE_MAX_BYTES: usize = 1 << 20;
/// Bytes of one rendered chat prompt. The node's request limits bound the messages a
/// user sends; this bounds what the template makes of them.
pub const CHAT_RENDER_MAX_BYTES: usize = 16 << 20;
/// minijinja instructions one render may execute (real templates on long conversations:
/// a few thousand per message).
pub const CHAT_RENDER_FUEL: u64 = 5_000_000;
/// minijinja's nesting depth (loops, macros, includes) for a render.
pub const CHAT_RECURSION_LIMIT: usize = 100;

// --- model settings (GGUF metadata and config.json alike) ---

/// Transformer blocks (Llama 3.1 405B: 126).
pub const MAX_LAYERS: u64 = 1024;
/// Embedding width (405B: 16384).
pub const MAX_EMBEDDING: u64 = 1 << 16;
/// Attention heads, query or key/value (405B: 128).
pub const MAX_HEADS: u64 = 1024;
/// Width of one attention head (real: 64 to 256).
pub const MAX_HEAD_DIM: u64 = 1024;
/// Feed-forward width (405B: 53248).
pub const MAX_FFN: u64 = 1 << 18;
/// Vocabulary size, also of `tokenizer.json` ids (real: up to 256k).
pub const MAX_VOCAB: u64 = 1 << 22;
/// Context length (real: up to 128k, a few 1M). The RoPE tables are sized from it, so
/// an unbounded one would be an allocation of any size at load.
pub const MAX_CONTEXT_LENGTH: u64 = 1 << 20;
/// Floats of the precomputed RoPE cos/sin tables, `context_length * rope_dim` (1 GiB of f32).
pub const MAX_ROPE_TABLE_FLOATS: u64 = 1 << 28;
