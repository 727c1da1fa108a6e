//! Synthetic models: random-weight GGUF files with the exact shapes of real Llama-family
//! models.
//!
//! Tests, benchmarks and the testnet need models, but real weights cannot be downloaded in
//! CI. A synthetic file has the same architecture, tensor names, tensor types and metadata as
//! a real checkpoint, so the loader, the sharding planner, the executor and llama.cpp all
//! treat it like one; only the text it generates is noise.
//!
//! Files are a pure function of the [`SynthSpec`]: the same spec gives the same bytes on every
//! machine (see [`weights`] for how values are seeded), so a peer can regenerate a model
//! instead of downloading it, and manifests of synthetic models are stable.
//!
//! Tensor types, chosen the way llama.cpp's quantizer lays out real files:
//! - RMSNorm weights are always F32 (they are tiny and precision-sensitive).
//! - With the 4-bit types (Q4_0, Q4_1), `token_embd.weight` is Q8_0: embeddings are looked up
//!   row by row, so their quantization error is not averaged away by a matmul (real 4-bit
//!   files likewise keep one end of the model at higher precision; llama.cpp's quantizer
//!   promotes the output head to Q6_K). `output.weight` keeps the chosen type, so that 4-bit
//!   output matmuls get exercised.
//! - A matrix whose row length (input features) is not a multiple of the 32-element block is
//!   kept in F32, as real files keep odd shapes unquantized. Among the presets this only
//!   happens to `ffn_down` of `stories260k-shape` (ffn 172). A `dim` that is not a multiple
//!   of 32 would leave nearly nothing quantized, so that is an error for quantized types.

mod presets;
pub mod vocab;
pub mod weights;
mod writer;

use std::fmt;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

pub use presets::{preset, presets, Preset, MIN_VOCAB_SIZE};
pub use vocab::{build_vocab, Vocab};
pub use writer::{ALIGNMENT, GGUF_VERSION};

use crate::{Error, Result};
use writer::{Meta, Workers};

/// The main weight type of a synthetic file (llama.cpp's "file type").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynthDType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl SynthDType {
    pub const ALL: [SynthDType; 5] = [
        SynthDType::F32,
        SynthDType::F16,
        SynthDType::Q8_0,
        SynthDType::Q4_0,
        SynthDType::Q4_1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthDType::F32 => "f32",
            SynthDType::F16 => "f16",
            SynthDType::Q8_0 => "q8_0",
            SynthDType::Q4_0 => "q4_0",
            SynthDType::Q4_1 => "q4_1",
        }
    }

    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            SynthDType::F32 => GgmlDType::F32,
            SynthDType::F16 => GgmlDType::F16,
            SynthDType::Q8_0 => GgmlDType::Q8_0,
            SynthDType::Q4_0 => GgmlDType::Q4_0,
            SynthDType::Q4_1 => GgmlDType::Q4_1,
        }
    }

    /// llama.cpp's `LLAMA_FTYPE_*` for `general.file_type`; it differs from the tensor type
    /// code (Q8_0 is file type 7 but tensor type 8).
    pub fn file_type(self) -> u32 {
        match self {
            SynthDType::F32 => 0,
            SynthDType::F16 => 1,
            SynthDType::Q4_0 => 2,
            SynthDType::Q4_1 => 3,
            SynthDType::Q8_0 => 7,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.ggml_dtype().block_size() > 1
    }
}

impl fmt::Display for SynthDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SynthDType {
    type Err = Error;

    /// Accepts any case (`Q4_0` as written by llama.cpp tools, `q4_0` as on the CLI).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| d.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|d| d.name()).collect();
                Error::Synth(format!(
                    "unknown dtype `{s}`; valid dtypes: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Everything that determines a synthetic file's bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    /// Owned rather than `&'static` so tests can write shapes no preset has.
    pub preset: Preset,
    pub dtype: SynthDType,
    pub seed: u64,
    /// Fewer (or more) layers than the preset, e.g. a 2-layer tinyllama-shape file whose
    /// matrices are full size but which writes in a second.
    pub n_layers_override: Option<usize>,
}

impl SynthSpec {
    pub fn new(preset_name: &str, dtype: SynthDType, seed: u64) -> Result<Self> {
        Ok(SynthSpec {
            preset: preset(preset_name)?.clone(),
            dtype,
            seed,
            n_layers_override: None,
        })
    }

    pub fn with_layers(mut self, n_layers: usize) -> Self {
        self.n_layers_override = Some(n_layers);
        self
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers_override.unwrap_or(self.preset.n_layers)
    }

    /// The preset with the layer override applied: the architecture actually written.
    pub fn effective_preset(&self) -> Preset {
        Preset {
            n_layers: self.n_layers(),
            ..self.preset.clone()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let p = self.effective_preset();
        p.validate()?;
        if self.dtype.is_quantized() && !p.dim.is_multiple_of(self.dtype.ggml_dtype().block_size())
        {
            return Err(Error::Synth(format!(
                "preset `{}`: dim {} is not a multiple of the {} block size {}",
                p.name,
                p.dim,
                self.dtype,
                self.dtype.ggml_dtype().block_size()
            )));
        }
        Ok(())
    }
}

/// One tensor of a planned file, in GGUF order.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    pub name: String,
    /// candle order: `[rows, cols]` = `[out_features, in_features]`; GGUF stores it reversed.
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    pub bytes: u64,
    /// From the start of the data section (as GGUF tensor infos store it).
    pub offset: u64,
}

/// The tensor list of `spec` with types, sizes and offsets, without generating any weights:
/// lets tests check 8B-shape layouts and lets callers size files before writing them.
pub fn plan(spec: &SynthSpec) -> Result<Vec<PlannedTensor>> {
    spec.validate()?;
    let p = spec.effective_preset();
    let hd = p.head_dim();
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("token_embd.weight".into(), vec![p.vocab_size, p.dim])];
    for l in 0..p.n_layers {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        shapes.push((b("attn_norm"), vec![p.dim]));
        shapes.push((b("attn_q"), vec![p.n_heads * hd, p.dim]));
        shapes.push((b("attn_k"), vec![p.n_kv_heads * hd, p.dim]));
        shapes.push((b("attn_v"), vec![p.n_kv_heads * hd, p.dim]));
        shapes.push((b("attn_output"), vec![p.dim, p.n_heads * hd]));
        shapes.push((b("ffn_norm"), vec![p.dim]));
        shapes.push((b("ffn_gate"), vec![p.ffn_dim, p.dim]));
        shapes.push((b("ffn_up"), vec![p.ffn_dim, p.dim]));
        shapes.push((b("ffn_down"), vec![p.dim, p.ffn_dim]));
    }
    shapes.push(("output_norm.weight".into(), vec![p.dim]));
    if !p.tied_embeddings {
        shapes.push(("output.weight".into(), vec![p.vocab_size, p.dim]));
    }

    let mut offset = 0u64;
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let dtype = tensor_dtype(spec.dtype, &name, &shape);
            let bytes = writer::tensor_bytes(dtype, shape.iter().product())?;
            let t = PlannedTensor {
                name,
                shape,
                dtype,
                bytes,
                offset,
            };
            offset += bytes + writer::padding(bytes);
            Ok(t)
        })
        .collect()
}

/// The per-tensor type rules described in the module docs.
fn tensor_dtype(dtype: SynthDType, name: &str, shape: &[usize]) -> GgmlDType {
    if shape.len() == 1 {
        return GgmlDType::F32;
    }
    let chosen =
        if name == "token_embd.weight" && matches!(dtype, SynthDType::Q4_0 | SynthDType::Q4_1) {
            GgmlDType::Q8_0
        } else {
            dtype.ggml_dtype()
        };
    let row_len = shape.last().copied().unwrap_or(0);
    if row_len.is_multiple_of(chosen.block_size()) {
        chosen
    } else {
        GgmlDType::F32
    }
}

/// The metadata of `spec`, in the order it is written (fixed, so files are reproducible).
fn metadata<'a>(
    spec: &SynthSpec,
    name: &'a str,
    vocab: &'a Vocab,
) -> Result<Vec<(&'static str, Meta<'a>)>> {
    let p = spec.effective_preset();
    let mut m = vec![
        ("general.architecture", Meta::Str("llama")),
        ("general.name", Meta::Str(name)),
        ("general.file_type", Meta::U32(spec.dtype.file_type())),
        ("general.quantization_version", Meta::U32(2)),
        ("general.alignment", Meta::U32(ALIGNMENT as u32)),
    ];
    for (key, value) in [
        ("llama.block_count", p.n_layers),
        ("llama.context_length", p.context_length),
        ("llama.embedding_length", p.dim),
        ("llama.feed_forward_length", p.ffn_dim),
        ("llama.attention.head_count", p.n_heads),
        ("llama.attention.head_count_kv", p.n_kv_heads),
        ("llama.rope.dimension_count", p.head_dim()),
        ("llama.vocab_size", p.vocab_size),
    ] {
        let v = u32::try_from(value)
            .map_err(|_| Error::Synth(format!("{key} = {value} does not fit in a u32")))?;
        m.push((key, Meta::U32(v)));
    }
    m.extend([
        ("llama.rope.freq_base", Meta::F32(p.rope_base)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Meta::F32(p.rms_eps),
        ),
        ("lamina.synth.seed", Meta::U64(spec.seed)),
        ("lamina.synth.preset", Meta::Str(p.name)),
        ("tokenizer.ggml.model", Meta::Str("llama")),
        ("tokenizer.ggml.tokens", Meta::StrArray(&vocab.tokens)),
        ("tokenizer.ggml.scores", Meta::F32Array(&vocab.scores)),
        (
            "tokenizer.ggml.token_type",
            Meta::I32Array(&vocab.token_types),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(vocab::BOS_ID)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(vocab::EOS_ID)),
        ("tokenizer.ggml.unknown_token_id", Meta::U32(vocab::UNK_ID)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
        ("tokenizer.ggml.add_eos_token", Meta::Bool(false)),
    ]);
    Ok(m)
}

/// `general.name` of the file for `spec`.
pub fn model_name(spec: &SynthSpec) -> String {
    format!("lamina-synth-{}", spec.preset.name)
}

/// Exact size in bytes of the file for `spec`, computed without generating weights.
pub fn file_size(spec: &SynthSpec) -> Result<u64> {
    let tensors = plan(spec)?;
    let name = model_name(spec);
    let vocab = build_vocab(spec.preset.vocab_size);
    let header = writer::header_len(&metadata(spec, &name, &vocab)?, &tensors)?;
    let data = tensors
        .last()
        .map_or(0, |t| t.offset + t.bytes + writer::padding(t.bytes));
    Ok(header + data)
}

fn write_with<W: Write + Seek>(
    spec: &SynthSpec,
    w: &mut W,
    label: &Path,
    workers: Workers,
) -> Result<u64> {
    let tensors = plan(spec)?;
    let name = model_name(spec);
    let vocab = build_vocab(spec.preset.vocab_size);
    let meta = metadata(spec, &name, &vocab)?;
    writer::write_all(w, label, &meta, &tensors, spec.seed, workers)
}

/// Streams the GGUF file of `spec` to `w`. At most two steps of 4 Mi f32 values per thread
/// are in memory, whatever the model size (peak RSS stays under 100 MiB for the 8B shape), so
/// big shapes can be written on small machines and CI runners.
///
/// Pass a buffered writer: the header is written in many small pieces. GGUF alignment is
/// counted from the start of the file, so `w` should be at position 0 (or a multiple of 32).
/// I/O errors are reported with the path `<gguf stream>`; [`write_gguf_file`] reports the
/// real path.
pub fn write_gguf<W: Write + Seek>(spec: &SynthSpec, w: &mut W) -> Result<()> {
    write_with(spec, w, Path::new("<gguf stream>"), Workers::default()).map(|_| ())
}

/// Writes the file for `spec` to `path` via `path` + `.tmp` and a rename, so a reader never
/// sees a half-written model under the final name (and an interrupted run leaves no file that
/// looks complete). The data is not fsynced: these are regenerable fixtures.
pub fn write_gguf_file(spec: &SynthSpec, path: &Path) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write_with(spec, &mut w, &tmp, Workers::default())?;
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The whole file of `spec` in memory; meant for the small presets. Fails with
/// [`Error::Synth`] instead of aborting when the file does not fit in memory.
pub fn gguf_bytes(spec: &SynthSpec) -> Result<Vec<u8>> {
    gguf_bytes_with(spec, Workers::default())
}

fn gguf_bytes_with(spec: &SynthSpec, workers: Workers) -> Result<Vec<u8>> {
    let size = file_size(spec)?;
    let mut buf = Vec::new();
    usize::try_from(size)
        .ok()
        .and_then(|n| buf.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            Error::Synth(format!(
                "{} ({}) needs {size} bytes in memory; write it to a file with write_gguf_file",
                spec.preset.name, spec.dtype
            ))
        })?;
    let mut cursor = std::io::Cursor::new(buf);
    write_with(spec, &mut cursor, Path::new("<memory>"), workers)?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_do_not_depend_on_thread_count() {
        // Small tasks force several row ranges per tensor, so the parallel path really splits.
        let spec = SynthSpec::new("tiny", SynthDType::Q4_0, 3).unwrap();
        let one = gguf_bytes_with(
            &spec,
            Workers {
                threads: 1,
                elems_per_task: 1 << 22,
            },
        )
        .unwrap();
        let three = gguf_bytes_with(
            &spec,
            Workers {
                threads: 3,
                elems_per_task: 1000,
            },
        )
        .unwrap();
        assert_eq!(one, three);
        assert_eq!(one.len() as u64, file_size(&spec).unwrap());
    }

    #[test]
    fn stories_ffn_down_stays_f32_when_quantized() {
        let spec = SynthSpec::new("stories260k-shape", SynthDType::Q4_0, 0).unwrap();
        let tensors = plan(&spec).unwrap();
        let find = |n: &str| tensors.iter().find(|t| t.name == n).unwrap();
        assert_eq!(find("blk.0.ffn_down.weight").dtype, GgmlDType::F32);
        assert_eq!(find("blk.0.ffn_up.weight").dtype, GgmlDType::Q4_0);
        assert_eq!(find("token_embd.weight").dtype, GgmlDType::Q8_0);
        assert!(tensors.iter().all(|t| t.name != "output.weight"));
    }
}
