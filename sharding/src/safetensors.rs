//! Hugging Face Llama-layout safetensors checkpoints (`config.json`, `tokenizer.json` and
//! one or more `*.safetensors` files in a directory).
//!
//! Tensors are addressed by their GGUF names everywhere else in lamina; this module maps
//! them to the Hugging Face names, so the executor has one naming scheme.

use crate::config::ModelConfig;
use crate::error::read_capped;
use crate::file_limits::*;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// A checkpoint directory.
pub struct SafetensorsModel {
    dir: PathBuf,
    files: MmapedSafetensors,
    config_json: serde_json::Value,
    names: Vec<String>,
}

impl std::fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("dir", &self.dir)
            .field("tensors", &self.names.len())
            .finish()
    }
}

/// The Hugging Face name of a GGUF-named tensor.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of a Hugging Face-named tensor (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

impl SafetensorsModel {
    /// Opens a checkpoint directory (or the directory of a given `.safetensors` file).
    pub fn open(path: &Path) -> Result<Self> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let config_path = dir.join("config.json");
        let text = read_capped(&config_path, "config.json size", CONFIG_JSON_MAX_BYTES)?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::Malformed {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Malformed {
                path: dir.clone(),
                reason: "no .safetensors files in the directory".into(),
            });
        }
        for f in &files {
            check_file_header(f)?;
        }
        // SAFETY: read-only maps of files lamina does not modify while serving them.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Malformed {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            dir,
            files: st,
            config_json,
            names,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> Result<ModelConfig> {
        let mut cfg = ModelConfig::from_hf_config(&self.config_json)?;
        // A checkpoint without `lm_head.weight` ties its head even when config.json
        // forgets to say so.
        if !self.names.iter().any(|n| n == "lm_head.weight") {
            cfg.tied_embeddings = true;
        }
        Ok(cfg)
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// `tokenizer_config.json`'s chat template and special tokens, when present. A file
    /// over [`TOKENIZER_CONFIG_MAX_BYTES`] or not JSON is an error, not an absent file.
    pub fn tokenizer_config(&self) -> Result<Option<serde_json::Value>> {
        let p = self.dir.join("tokenizer_config.json");
        if !p.exists() {
            return Ok(None);
        }
        let text = read_capped(&p, "tokenizer_config.json size", TOKENIZER_CONFIG_MAX_BYTES)?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::Malformed {
                path: p,
                reason: e.to_string(),
            })
    }

    pub fn config_json(&self) -> &serde_json::Value {
        &self.config_json
    }

    /// GGUF names of the tensors present.
    pub fn gguf_names(&self) -> Vec<String> {
        self.names.iter().filter_map(|n| gguf_name(n)).collect()
    }

    pub fn has(&self, gguf: &str) -> bool {
        hf_name(gguf).is_some_and(|h| self.names.contains(&h))
    }

    /// (dtype name, shape, raw bytes) of a GGUF-named tensor.
    pub fn raw(&self, gguf: &str) -> Result<(String, Vec<usize>, &[u8])> {
        let hf = hf_name(gguf).ok_or_else(|| Error::MissingTensor(gguf.to_string()))?;
        let view = self
            .files
            .get(&hf)
            .map_err(|_| Error::MissingTensor(format!("{gguf} ({hf})")))?;
        Ok((
            format!("{:?}", view.dtype()),
            view.shape().to_vec(),
            view.data(),
        ))
    }

    /// Loads a GGUF-named tensor as a `QTensor` of the checkpoint's float type.
    pub fn qtensor(&self, gguf: &str, device: &Device) -> Result<QTensor> {
        let hf = hf_name(gguf).ok_or_else(|| Error::MissingTensor(gguf.to_string()))?;
        let view = self
            .files
            .get(&hf)
            .map_err(|_| Error::MissingTensor(format!("{gguf} ({hf})")))?;
        let target = match view.dtype() {
            safetensors::Dtype::F32 => GgmlDType::F32,
            safetensors::Dtype::F16 => GgmlDType::F16,
            safetensors::Dtype::BF16 => GgmlDType::BF16,
            other => {
                return Err(Error::UnsupportedTensorType {
                    name: hf,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = self.files.load(&hf, device)?.to_dtype(DType::F32)?;
        Ok(QTensor::quantize(&t, target)?)
    }
}

/// One tensor of a safetensors header, as [`check_header`] validated it.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the data section (after the header).
    pub data: std::ops::Range<u64>,
}

/// Checks a whole safetensors file held in memory: the header length against
/// [`SAFETENSORS_MAX_HEADER_BYTES`] and the file, then every entry as
/// [`check_header_json`] does. Also the entry point of the `safetensors_header` fuzz
/// target.
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<Vec<HeaderEntry>> {
    let n = header_len(path, bytes.get(..8), bytes.len() as u64)?;
    let json = &bytes[8..8 + n as usize];
    check_header_json(path, json, bytes.len() as u64 - 8 - n)
}

/// Reads and checks the header of a safetensors file without mapping it, so that a
/// hostile header is refused with a typed error before the `safetensors` crate sees it.
fn check_file_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len = [0u8; 8];
    let first8 = if file_len >= 8 {
        f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
        Some(&len[..])
    } else {
        None
    };
    let n = header_len(path, first8, file_len)?;
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
    check_header_json(path, &json, file_len - 8 - n).map(|_| ())
}

/// The header length a file declares, checked against the limit and the file length.
fn header_len(path: &Path, first8: Option<&[u8]>, file_len: u64) -> Result<u64> {
    let malformed = |reason: String| Error::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let Some(Ok(first8)) = first8.map(<[u8; 8]>::try_from) else {
        return Err(malformed(format!(
            "{file_len} bytes: too short for a safetensors header"
        )));
    };
    let n = u64::from_le_bytes(first8);
    if n > SAFETENSORS_MAX_HEADER_BYTES {
        return Err(Error::limit(
            path,
            "safetensors header length",
            n,
            SAFETENSORS_MAX_HEADER_BYTES,
        ));
    }
    if n > file_len - 8 {
        return Err(malformed(format!(
            "the header of {n} bytes runs past the end of the file ({file_len} bytes): the file is truncated"
        )));
    }
    Ok(n)
}

/// Checks a safetensors JSON header against a data section of `data_len` bytes: at most
/// [`SAFETENSORS_MAX_TENSORS`] entries, each with a known dtype, a shape whose element
/// count times the dtype's bits is computed with checked arithmetic and matches its byte
/// range exactly, and a byte range inside the data section.
pub fn check_header_json(path: &Path, json: &[u8], data_len: u64) -> Result<Vec<HeaderEntry>> {
    let malformed = |reason: String| Error::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| malformed(format!("the header is not a JSON object: {e}")))?;
    if map.len() > SAFETENSORS_MAX_TENSORS + 1 {
        return Err(Error::limit(
            path,
            "safetensors tensor count",
            map.len() as u64,
            SAFETENSORS_MAX_TENSORS as u64,
        ));
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        dtype: safetensors::Dtype,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            if !v.is_object() {
                return Err(malformed("`__metadata__` is not an object".into()));
            }
            continue;
        }
        let raw: Raw =
            serde_json::from_value(v).map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
        let (start, end) = raw.data_offsets;
        if start > end || end > data_len {
            return Err(malformed(format!(
                "tensor `{name}`: bytes {start}..{end} are not inside the data section of {data_len} bytes"
            )));
        }
        let too_large = || {
            malformed(format!(
                "tensor `{name}`: shape {:?} is too large",
                raw.shape
            ))
        };
        let bits = raw
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|elems| elems.checked_mul(raw.dtype.bitsize() as u64))
            .ok_or_else(too_large)?;
        if !bits.is_multiple_of(8) || bits / 8 != end - start {
            return Err(malformed(format!(
                "tensor `{name}`: shape {:?} of {:?} takes {bits} bits, but its byte range {start}..{end} holds {}",
                raw.shape,
                raw.dtype,
                end - start
            )));
        }
        let shape = raw
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| too_large()))
            .collect::<Result<Vec<_>>>()?;
        out.push(HeaderEntry {
            name,
            dtype: raw.dtype,
            shape,
            data: start..end,
        });
    }
    Ok(out)
}
