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

    /// A count or size read from a file is above lamina's limit for it
    /// ([`crate::file_limits`]); `field` names what was read.
    #[error("{path}: {field} is {value}, above lamina's limit of {limit}")]
    LimitExceeded {
        path: PathBuf,
        field: String,
        value: u64,
        limit: u64,
    },

    /// A model setting is outside the range lamina runs ([`crate::file_limits`]); `key` is
    /// the metadata key or `config.json` field.
    #[error("model setting `{key}` is {value}, outside the supported range {min}..={max}")]
    OutOfRange {
        key: String,
        value: i128,
        min: u64,
        max: u64,
    },

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

    pub(crate) fn limit(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        value: u64,
        limit: u64,
    ) -> Self {
        Error::LimitExceeded {
            path: path.into(),
            field: field.into(),
            value,
            limit,
        }
    }
}

/// Reads a whole file, refusing one longer than `limit` bytes with
/// [`Error::LimitExceeded`] naming `field`, without reading past the limit.
pub(crate) fn read_capped(path: &std::path::Path, field: &str, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        let len = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(Error::limit(path, field, len, limit));
    }
    Ok(bytes)
}
