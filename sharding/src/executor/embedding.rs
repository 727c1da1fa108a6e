//! The token embedding: ids to rows of the table, decoded from the mapped file on the
//! CPU.

use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// How one row of a mapped embedding is stored.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowFormat {
    F32,
    F16,
    BF16,
    Blocks(crate::kernels::WeightType),
}

impl RowFormat {
    fn of(dtype: GgmlDType, dim: usize) -> Option<Self> {
        use crate::kernels::{WeightType, QK};
        Some(match dtype {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q4_0),
            GgmlDType::Q4_1 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q4_1),
            GgmlDType::Q8_0 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q8_0),
            _ => return None,
        })
    }

    fn row_bytes(self, dim: usize) -> usize {
        match self {
            Self::F32 => dim * 4,
            Self::F16 | Self::BF16 => dim * 2,
            Self::Blocks(t) => dim / crate::kernels::QK * t.block_bytes(),
        }
    }

    fn decode(self, row: &[u8], out: &mut [f32]) {
        use crate::kernels::QK;
        match self {
            Self::F32 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::F16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Self::BF16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Self::Blocks(t) => {
                for (o, b) in out
                    .chunks_exact_mut(QK)
                    .zip(row.chunks_exact(t.block_bytes()))
                {
                    crate::kernels::dequantize_block(t, b, o);
                }
            }
        }
    }
}

/// The token embedding. A lookup needs only a prompt's rows, so on the CPU the table stays
/// in the mapped file and rows are decoded on lookup: the first shard does not hold a
/// vocabulary-sized table it barely reads. Other devices and formats copy it.
#[derive(Debug, Clone)]
pub(super) enum Embedding {
    Float(Tensor),
    Quantized(Arc<QTensor>),
    Mapped {
        view: crate::gguf::TensorView,
        format: RowFormat,
        dim: usize,
    },
}

impl Embedding {
    pub(super) fn load(model: &ModelFile, vocab: usize, dim: usize, dev: &Device) -> Result<Self> {
        const NAME: &str = "token_embd.weight";
        if dev.is_cpu() {
            if let Some((view, dtype)) = model.view(NAME, &[vocab, dim])? {
                if let Some(format) = RowFormat::of(dtype, dim) {
                    if view.len() == vocab * format.row_bytes(dim) {
                        return Ok(Self::Mapped { view, format, dim });
                    }
                }
            }
        }
        let q = model.load(NAME, Some(&[vocab, dim]), dev)?;
        Ok(match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Self::Float(q.dequantize(dev)?),
            _ => Self::Quantized(Arc::new(q)),
        })
    }

    pub(super) fn forward(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Float(t) => t.index_select(&Tensor::new(ids, dev)?, 0)?,
            Self::Quantized(q) => q.embedding(&Tensor::new(ids, dev)?)?,
            Self::Mapped { view, format, dim } => {
                let rb = format.row_bytes(*dim);
                let bytes = view.as_bytes();
                let mut out = vec![0f32; ids.len() * dim];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(*dim)) {
                    let at = id as usize * rb;
                    let row = bytes.get(at..at + rb).ok_or_else(|| {
                        Error::InvalidInput(format!("token id {id} is outside the embedding table"))
                    })?;
                    format.decode(row, o);
                }
                Tensor::from_vec(out, (ids.len(), *dim), dev)?
            }
        })
    }
}
