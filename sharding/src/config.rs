//! Architecture settings of a Llama-family model, read from the model file's own metadata.
//!
//! Nothing here is guessed from tensor shapes when the file states it, and everything the
//! executor needs is validated once, at load, so that a bad file fails with a message
//! naming the key rather than with a shape error deep inside a forward pass.

use crate::file_limits::*;
use crate::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF Llama files, whose converter permuted Q and K for it.
    Interleaved,
    /// Pairs (i, i + d/2) ("rotate half"): Hugging Face Llama checkpoints.
    Neox,
}

/// The shape and numerics of a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub architecture: String,
    pub name: String,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub rms_eps: f64,
    /// The output head reuses the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
}

/// Architectures that share the Llama layout and are run by this executor.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

impl ModelConfig {
    /// Reads the `general.*` and `<arch>.*` keys of a GGUF file. `has_output` says whether
    /// the file has its own `output.weight` (absent means tied embeddings).
    pub fn from_gguf_metadata(md: &HashMap<String, Value>, has_output: bool) -> Result<Self> {
        let arch = md_string(md, "general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::UnsupportedArchitecture(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_layers = md_usize(md, &key("block_count"))?;
        let dim = md_usize(md, &key("embedding_length"))?;
        let n_heads = md_usize(md, &key("attention.head_count"))?;
        let n_kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(_) => md_usize(md, &key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let ffn_dim = md_usize(md, &key("feed_forward_length"))?;
        let context_length = md_usize(md, &key("context_length"))?;
        let rms_eps = md_f64(md, &key("attention.layer_norm_rms_epsilon"))?;
        let rope_base = match md.get(&key("rope.freq_base")) {
            Some(_) => md_f64(md, &key("rope.freq_base"))? as f32,
            None => 10_000.0,
        };
        if n_heads == 0 || dim % n_heads != 0 {
            return Err(bad(
                &key("attention.head_count"),
                format!("{n_heads} heads do not divide the embedding length {dim}"),
            ));
        }
        let head_dim = dim / n_heads;
        let rope_dim = match md.get(&key("rope.dimension_count")) {
            Some(_) => md_usize(md, &key("rope.dimension_count"))?,
            None => head_dim,
        };
        // The vocabulary size is the length of the token list when the architecture key
        // is absent (older converters did not write it).
        let vocab_size = match md.get(&key("vocab_size")) {
            Some(_) => md_usize(md, &key("vocab_size"))?,
            None => match md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => return Err(Error::MissingMetadata(key("vocab_size"))),
            },
        };
        let name = md
            .get("general.name")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| arch.clone());
        let cfg = Self {
            architecture: arch,
            name,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length,
            rope_base,
            rope_dim,
            rope_style: RopeStyle::Interleaved,
            rms_eps,
            tied_embeddings: !has_output,
        };
        cfg.validate_keys(&SettingKeys::gguf(&cfg.architecture))?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM` checkpoint.
    pub fn from_hf_config(json: &serde_json::Value) -> Result<Self> {
        let get = |k: &str| json.get(k);
        let num = |k: &str| -> Result<usize> {
            let key = format!("config.json: {k}");
            let v = get(k).ok_or_else(|| Error::MissingMetadata(key.clone()))?;
            let n = v
                .as_u64()
                .map(i128::from)
                .or_else(|| v.as_i64().map(i128::from))
                .ok_or_else(|| bad(&key, format!("expected an integer, found {v}")))?;
            in_range(&key, n, 0, u32::MAX as u64)
        };
        let model_type = get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_string();
        if !["llama", "mistral"].contains(&model_type.as_str()) {
            return Err(Error::UnsupportedArchitecture(model_type));
        }
        let dim = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let n_kv_heads = match get("num_key_value_heads") {
            Some(_) => num("num_key_value_heads")?,
            None => n_heads,
        };
        if n_heads == 0 || dim % n_heads != 0 {
            return Err(bad(
                "config.json: num_attention_heads",
                format!("{n_heads} heads do not divide hidden_size {dim}"),
            ));
        }
        let head_dim = match get("head_dim") {
            Some(v) if !v.is_null() => num("head_dim")?,
            _ => dim / n_heads,
        };
        if get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "config.json: rope_scaling",
                "RoPE scaling is not supported yet".into(),
            ));
        }
        let cfg = Self {
            architecture: "llama".into(),
            name: get("_name_or_path")
                .and_then(|v| v.as_str())
                .unwrap_or("llama")
                .to_string(),
            n_layers: num("num_hidden_layers")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: num("intermediate_size")?,
            vocab_size: num("vocab_size")?,
            context_length: match get("max_position_embeddings") {
                Some(_) => num("max_position_embeddings")?,
                None => 2048,
            },
            rope_base: get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rope_dim: head_dim,
            rope_style: RopeStyle::Neox,
            rms_eps: get("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
            tied_embeddings: get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        cfg.validate_keys(&SettingKeys::hf())?;
        Ok(cfg)
    }

    /// Refuses settings the executor cannot run, with the key that is wrong (named as in
    /// GGUF metadata).
    pub fn validate(&self) -> Result<()> {
        self.validate_keys(&SettingKeys::gguf(&self.architecture))
    }

    /// [`ModelConfig::validate`], naming the settings by `keys`. Every size is bounded by
    /// [`crate::file_limits`], so that nothing sized from them later (the RoPE tables, the
    /// KV cache, the embedding) can overflow or ask for an absurd allocation.
    fn validate_keys(&self, keys: &SettingKeys) -> Result<()> {
        let ranges = [
            (&keys.layers, self.n_layers, MAX_LAYERS),
            (&keys.dim, self.dim, MAX_EMBEDDING),
            (&keys.heads, self.n_heads, MAX_HEADS),
            (&keys.kv_heads, self.n_kv_heads, MAX_HEADS),
            (&keys.head_dim, self.head_dim, MAX_HEAD_DIM),
            (&keys.rope_dim, self.rope_dim, MAX_HEAD_DIM),
            (&keys.ffn, self.ffn_dim, MAX_FFN),
            (&keys.vocab, self.vocab_size, MAX_VOCAB),
            (&keys.context, self.context_length, MAX_CONTEXT_LENGTH),
        ];
        for (key, value, max) in ranges {
            in_range(key, value as i128, 1, max)?;
        }
        let rope_floats = self.context_length as u64 * self.rope_dim as u64;
        if rope_floats > MAX_ROPE_TABLE_FLOATS {
            return Err(Error::OutOfRange {
                key: format!("{} * {}", keys.context, keys.rope_dim),
                value: rope_floats.into(),
                min: 1,
                max: MAX_ROPE_TABLE_FLOATS,
            });
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(
                "attention.head_count_kv",
                format!(
                    "{} KV heads do not divide {} query heads",
                    self.n_kv_heads, self.n_heads
                ),
            ));
        }
        if self.rope_dim != self.head_dim {
            return Err(bad(
                "rope.dimension_count",
                format!(
                    "partial rotary embeddings ({} of {} head dims) are not supported",
                    self.rope_dim, self.head_dim
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", "must be even for RoPE".into()));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                "must be positive".into(),
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(bad("rope.freq_base", "must be positive".into()));
        }
        Ok(())
    }

    /// Floats of K and V per position per layer (what one cached token costs).
    pub fn kv_floats_per_position(&self) -> usize {
        2 * self.n_kv_heads * self.head_dim
    }
}

/// The names of the settings in the format they were read from, for errors.
struct SettingKeys {
    layers: String,
    dim: String,
    heads: String,
    kv_heads: String,
    head_dim: String,
    rope_dim: String,
    ffn: String,
    vocab: String,
    context: String,
}

impl SettingKeys {
    fn gguf(arch: &str) -> Self {
        let k = |s: &str| format!("{arch}.{s}");
        Self {
            layers: k("block_count"),
            dim: k("embedding_length"),
            heads: k("attention.head_count"),
            kv_heads: k("attention.head_count_kv"),
            head_dim: k("attention.key_length"),
            rope_dim: k("rope.dimension_count"),
            ffn: k("feed_forward_length"),
            vocab: k("vocab_size"),
            context: k("context_length"),
        }
    }

    fn hf() -> Self {
        let k = |s: &str| format!("config.json: {s}");
        Self {
            layers: k("num_hidden_layers"),
            dim: k("hidden_size"),
            heads: k("num_attention_heads"),
            kv_heads: k("num_key_value_heads"),
            head_dim: k("head_dim"),
            rope_dim: k("head_dim"),
            ffn: k("intermediate_size"),
            vocab: k("vocab_size"),
            context: k("max_position_embeddings"),
        }
    }
}

/// `value` as a usize if it lies in `min..=max`, else [`Error::OutOfRange`] naming `key`.
fn in_range(key: &str, value: i128, min: u64, max: u64) -> Result<usize> {
    if value < i128::from(min) || value > i128::from(max) {
        return Err(Error::OutOfRange {
            key: key.to_string(),
            value,
            min,
            max,
        });
    }
    usize::try_from(value).map_err(|_| Error::OutOfRange {
        key: key.to_string(),
        value,
        min,
        max,
    })
}

fn bad(key: &str, reason: String) -> Error {
    Error::BadMetadata {
        key: key.to_string(),
        reason,
    }
}

pub(crate) fn md_string(md: &HashMap<String, Value>, key: &str) -> Result<String> {
    match md.get(key) {
        None => Err(Error::MissingMetadata(key.to_string())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(bad(
            key,
            format!("expected a string, found {:?}", v.value_type()),
        )),
    }
}

pub(crate) fn md_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    let v = md
        .get(key)
        .ok_or_else(|| Error::MissingMetadata(key.to_string()))?;
    let n: i128 = match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        other => {
            return Err(bad(
                key,
                format!("expected an integer, found {:?}", other.value_type()),
            ))
        }
    };
    // Each setting has its own, tighter bound in `validate`; this one only keeps the
    // arithmetic before it from overflowing.
    in_range(key, n, 0, u32::MAX as u64)
}

pub(crate) fn md_f64(md: &HashMap<String, Value>, key: &str) -> Result<f64> {
    match md.get(key) {
        None => Err(Error::MissingMetadata(key.to_string())),
        Some(Value::F32(x)) => Ok(*x as f64),
        Some(Value::F64(x)) => Ok(*x),
        Some(v) => Err(bad(
            key,
            format!("expected a float, found {:?}", v.value_type()),
        )),
    }
}
