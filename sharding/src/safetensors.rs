//! Hugging Face Llama-layout safetensors checkpoints (`config.json`, `tokenizer.json` and
//! one or more `*.safetensors` files in a directory).
//!
//! Tensors are addressed by their GGUF names everywhere else in lamina; this module maps
//! them to the Hugging Face names, so the executor has one naming scheme.

use crate::config::ModelConfig;
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
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Malformed {
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

    /// `tokenizer_config.json`'s chat template and special tokens, when present.
    pub fn tokenizer_config(&self) -> Option<serde_json::Value> {
        let p = self.dir.join("tokenizer_config.json");
        let text = std::fs::read_to_string(p).ok()?;
        serde_json::from_str(&text).ok()
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
