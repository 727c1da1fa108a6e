//! The one error type of `lamina-sharding`.
//!
//! Every failure a user, a model file or a peer can cause has its own variant, so callers
//! (the node, the CLI, the HTTP API) can map it to a status code or a wire error without
//! parsing strings, and so messages name the cause precisely.

use std::path::PathBuf;

/// Errors of model loading, execution, tokenization and sampling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, magic: Vec<u8> },

    #[error("{path}: malformed or truncated model file: {reason}")]
    Malformed { path: PathBuf, reason: String },

    #[error("unsupported architecture `{0}` (lamina runs the llama family: llama, mistral, smollm, tinyllama)")]
    UnsupportedArchitecture(String),

    #[error("tensor `{name}` has type {dtype}, which lamina does not support here")]
    UnsupportedTensorType { name: String, dtype: String },

    #[error("model file has no tensor `{0}`")]
    MissingTensor(String),

    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("model metadata has no `{0}`")]
    MissingMetadata(String),

    #[error("model metadata `{key}` is invalid: {reason}")]
    BadMetadata { key: String, reason: String },

    #[error("invalid layer range `{text}`: {reason}")]
    ParseLayerRange { text: String, reason: String },

    #[error(
        "layer range {range} is out of bounds: the model has {n_layers} layers (0..{n_layers})"
    )]
    LayerRangeOutOfBounds { range: String, n_layers: usize },

    #[error("layer split does not cover the model: {0}")]
    BadSplit(String),

    #[error("context overflow: {needed} positions needed, but the limit is {limit}")]
    ContextOverflow { needed: usize, limit: usize },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("invalid sampling settings: {0}")]
    Sampling(String),

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("synthetic model: {0}")]
    Synth(String),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
