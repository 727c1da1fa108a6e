//! Shapes of real Llama-family models, so synthetic files exercise the same tensor sizes,
//! head layouts and memory footprints as the checkpoints lamina serves.

use crate::{Error, Result};

/// The architecture of one synthetic model: everything except the weights themselves.
///
/// Fields are public so tests can build shapes that no preset covers; [`Preset::validate`]
/// catches combinations that a Llama forward pass cannot run. Not `Copy`, so that adding a
/// field that is not `Copy` later does not break callers.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub n_layers: usize,
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// No `output.weight` tensor; readers reuse `token_embd.weight` as the output head.
    pub tied_embeddings: bool,
}

/// Ids 0..3 are `<unk>`, `<s>`, `</s>` and 3..259 the byte tokens that SentencePiece's byte
/// fallback needs; a vocabulary smaller than that cannot encode arbitrary text.
pub const MIN_VOCAB_SIZE: usize = 3 + 256;

impl Preset {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads.max(1)
    }

    /// Rejects shapes that would write a file no Llama implementation can run, before any
    /// bytes are written.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Synth(format!("preset `{}`: {why}", self.name)));
        if self.n_layers == 0 {
            return bad("n_layers must be at least 1".into());
        }
        if self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.ffn_dim == 0 {
            return bad("dim, n_heads, n_kv_heads and ffn_dim must be positive".into());
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "dim {} is not a multiple of n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dim {} is odd; rotary embeddings rotate pairs",
                self.head_dim()
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.vocab_size < MIN_VOCAB_SIZE {
            return bad(format!(
                "vocab_size {} is below {MIN_VOCAB_SIZE} (3 special tokens + 256 byte tokens)",
                self.vocab_size
            ));
        }
        if u32::try_from(self.vocab_size).is_err() {
            return bad(format!(
                "vocab_size {} does not fit token ids (u32)",
                self.vocab_size
            ));
        }
        if self.context_length == 0 {
            return bad("context_length must be positive".into());
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!(
                "rope_base {} must be finite and positive",
                self.rope_base
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!(
                "rms_eps {} must be finite and positive",
                self.rms_eps
            ));
        }
        Ok(())
    }
}

static PRESETS: [Preset; 5] = [
    // Smallest useful model: every code path (GQA, untied head) in a file of a few hundred KiB.
    // ffn_dim is 192 rather than a LLaMA-style 176 so that every matmul row is a whole number
    // of 32-element quantization blocks.
    Preset {
        name: "tiny",
        n_layers: 4,
        dim: 64,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 192,
        vocab_size: 512,
        context_length: 512,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
    },
    // Karpathy's llama2.c stories260K. Its ffn_dim of 172 is not a multiple of 32, so the
    // quantized variants keep `ffn_down` in F32 (see `synth` module docs). The original shares
    // the classifier with the embedding, which also gives the tests a small tied model.
    Preset {
        name: "stories260k-shape",
        n_layers: 5,
        dim: 64,
        n_heads: 8,
        n_kv_heads: 4,
        ffn_dim: 172,
        vocab_size: 512,
        context_length: 2048,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
    },
    Preset {
        name: "smollm2-135m-shape",
        n_layers: 30,
        dim: 576,
        n_heads: 9,
        n_kv_heads: 3,
        ffn_dim: 1536,
        vocab_size: 49_152,
        context_length: 8192,
        rope_base: 100_000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
    },
    Preset {
        name: "tinyllama-1.1b",
        n_layers: 22,
        dim: 2048,
        n_heads: 32,
        n_kv_heads: 4,
        ffn_dim: 5632,
        vocab_size: 32_000,
        context_length: 2048,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
    },
    Preset {
        name: "llama-3-8b-shape",
        n_layers: 32,
        dim: 4096,
        n_heads: 32,
        n_kv_heads: 8,
        ffn_dim: 14_336,
        vocab_size: 128_256,
        context_length: 8192,
        rope_base: 500_000.0,
        rms_eps: 1e-5,
        tied_embeddings: false,
    },
];

/// All built-in presets, smallest first.
pub fn presets() -> &'static [Preset] {
    &PRESETS
}

/// Looks a preset up by name; the error lists the valid names so a CLI typo is self-explaining.
pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        Error::Synth(format!(
            "unknown preset `{name}`; valid presets: {}",
            names.join(", ")
        ))
    })
}
