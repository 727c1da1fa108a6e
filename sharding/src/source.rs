//! One interface over the model formats lamina reads, so the executor asks for tensors by
//! their GGUF names and reads only the ones its layer range needs.

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::gguf::{GgufFile, TensorView};
use crate::safetensors::SafetensorsModel;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use std::path::Path;

/// A model file (GGUF) or checkpoint directory (safetensors).
#[derive(Debug)]
pub enum ModelFile {
    Gguf(GgufFile),
    Safetensors(SafetensorsModel),
}

/// One tensor as listed by [`ModelFile::tensor_list`].
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Option<u64>,
}

impl ModelFile {
    /// Opens a `.gguf` file, or a safetensors checkpoint (a directory with `config.json`,
    /// or one of its `.safetensors` files).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let is_st = path.is_dir() || path.extension().is_some_and(|e| e == "safetensors");
        if is_st {
            Ok(Self::Safetensors(SafetensorsModel::open(path)?))
        } else {
            Ok(Self::Gguf(GgufFile::open(path)?))
        }
    }

    /// Wraps GGUF bytes held in memory (synthetic models).
    pub fn from_gguf_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Ok(Self::Gguf(GgufFile::from_bytes(name, bytes)?))
    }

    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            Self::Gguf(g) => ModelConfig::from_gguf_metadata(
                g.metadata(),
                g.tensor_info("output.weight").is_some(),
            ),
            Self::Safetensors(s) => s.config(),
        }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Self::Gguf(g) => Tokenizer::from_gguf_metadata(g.metadata()),
            Self::Safetensors(s) => Tokenizer::from_hf_file(&s.tokenizer_path(), None),
        }
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
        match self {
            Self::Gguf(g) => ChatTemplate::from_gguf_metadata(g.metadata(), tok),
            Self::Safetensors(s) => {
                let Some(cfg) = s.tokenizer_config()? else {
                    return Ok(None);
                };
                let Some(src) = cfg.get("chat_template").and_then(|v| v.as_str()) else {
                    return Ok(None);
                };
                let piece = |id: Option<u32>| {
                    id.and_then(|i| tok.id_to_piece(i))
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(Some(ChatTemplate::new(
                    src,
                    &piece(tok.bos_id()),
                    &piece(tok.eos_id()),
                )?))
            }
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        match self {
            Self::Gguf(g) => g.tensor_info(name).is_some(),
            Self::Safetensors(s) => s.has(name),
        }
    }

    /// Reads one tensor (by GGUF name), checking its shape against `expected` when given.
    pub fn load(&self, name: &str, expected: Option<&[usize]>, device: &Device) -> Result<QTensor> {
        let t = match self {
            Self::Gguf(g) => g.qtensor(name, device)?,
            Self::Safetensors(s) => s.qtensor(name, device)?,
        };
        if let Some(exp) = expected {
            if t.shape().dims() != exp {
                return Err(Error::TensorShape {
                    name: name.to_string(),
                    got: t.shape().dims().to_vec(),
                    expected: exp.to_vec(),
                });
            }
        }
        Ok(t)
    }

    /// One tensor's stored bytes in place, with its type, for the readers that run on the
    /// stored layout without a copy (the kernels, quantized embedding lookups). `None`
    /// where the format has no such layout (safetensors are converted on load). The shape
    /// is checked against `expected` as in [`ModelFile::load`].
    pub fn view(&self, name: &str, expected: &[usize]) -> Result<Option<(TensorView, GgmlDType)>> {
        let Self::Gguf(g) = self else {
            return Ok(None);
        };
        let info = g
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if info.shape != expected {
            return Err(Error::TensorShape {
                name: name.to_string(),
                got: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let dtype = info.dtype.ok_or_else(|| Error::UnsupportedTensorType {
            name: name.to_string(),
            dtype: info.type_name(),
        })?;
        Ok(Some((g.tensor_view(name)?, dtype)))
    }

    /// Every tensor with its type, shape and size, in file order (GGUF) or name order.
    pub fn tensor_list(&self) -> Vec<TensorEntry> {
        match self {
            Self::Gguf(g) => g
                .tensors()
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: t.type_name(),
                    shape: t.shape.clone(),
                    bytes: t.size,
                })
                .collect(),
            Self::Safetensors(s) => {
                let mut names = s.gguf_names();
                names.sort();
                names
                    .into_iter()
                    .filter_map(|n| {
                        let (dtype, shape, data) = s.raw(&n).ok()?;
                        Some(TensorEntry {
                            name: n,
                            dtype,
                            shape,
                            bytes: Some(data.len() as u64),
                        })
                    })
                    .collect()
            }
        }
    }

    /// The raw stored bytes of a tensor, for content hashing.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        match self {
            Self::Gguf(g) => g.tensor_bytes(name),
            Self::Safetensors(s) => Ok(s.raw(name)?.2),
        }
    }

    /// Releases this process's resident pages of one tensor (GGUF mappings only); see
    /// [`GgufFile::release_pages`].
    pub fn release_pages(&self, name: &str) {
        if let Self::Gguf(g) = self {
            g.release_pages(name);
        }
    }

    /// A short description of the format, for `model inspect`.
    pub fn format_name(&self) -> String {
        match self {
            Self::Gguf(g) => format!("GGUF v{}", g.version()),
            Self::Safetensors(_) => "safetensors (Hugging Face layout)".into(),
        }
    }
}
