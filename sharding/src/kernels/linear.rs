//! [`QLinear`]: a linear layer on a quantized CPU weight, run by the kernels, holding
//! the weight as the file's bytes in place, a candle tensor, or repacked panels.

use super::{matmul, pool, Isa, Panels, QMatrix, WeightType};
use crate::gguf::TensorView;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use std::sync::Arc;

/// Where a [`QLinear`]'s weight bytes live.
#[derive(Clone, Debug)]
enum WeightBytes {
    /// Inside a candle `QTensor` (shared with a candle fallback or a tied embedding).
    Tensor(Arc<QTensor>),
    /// In the memory-mapped model file, read in place: no copy at load.
    View(TensorView),
    /// Q8_0 repacked into panels (the file's pages for it released).
    Panels(Arc<Panels>),
}

/// A linear layer `y = x · W^T` on a quantized CPU weight, run by these kernels.
#[derive(Clone, Debug)]
pub struct QLinear {
    weight: WeightBytes,
    ty: WeightType,
    n: usize,
    k: usize,
}

impl QLinear {
    /// `Some` when the kernels can run this weight: a supported block type, 2-D
    /// `(n, k)` with `k` a multiple of its block size (32, or 256 for K-quants), on the CPU, with borrowable bytes.
    pub fn new(weight: Arc<QTensor>) -> Option<Self> {
        let ty = WeightType::from_ggml(weight.dtype())?;
        if !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        {
            let data = weight.data().ok()?;
            if !matches!(data, std::borrow::Cow::Borrowed(_)) {
                return None;
            }
            let w = QMatrix::new(ty, n, k, &data).ok()?;
            if super::panels::wanted(ty) {
                let panels = Panels::repack(&w).ok()?;
                return Some(Self {
                    weight: WeightBytes::Panels(Arc::new(panels)),
                    ty,
                    n,
                    k,
                });
            }
        }
        Some(Self {
            weight: WeightBytes::Tensor(weight),
            ty,
            n,
            k,
        })
    }

    /// A layer on a weight `(n, k)` read in place from a model file. `None` when the
    /// kernels do not cover `dtype`; an error when the bytes do not fit the shape.
    pub fn from_view(
        view: TensorView,
        dtype: GgmlDType,
        n: usize,
        k: usize,
    ) -> Result<Option<Self>> {
        let Some(ty) = WeightType::from_ggml(dtype) else {
            return Ok(None);
        };
        // A width these kernels cannot tile (an F16 weight of k = 172, say) goes to candle,
        // as in `QLinear::new`; a file whose bytes do not fit the shape is an error below.
        if k == 0 || !k.is_multiple_of(ty.block_elems()) {
            return Ok(None);
        }
        let w = QMatrix::new(ty, n, k, view.as_bytes())?;
        if super::panels::wanted(ty) {
            // The panels replace the weight: give its file pages back as the repacking
            // goes (a tied embedding that shares them faults in the rows it looks up
            // again).
            let panels = Panels::repack_with(&w, |bytes| view.release_range(bytes))?;
            return Ok(Some(Self {
                weight: WeightBytes::Panels(Arc::new(panels)),
                ty,
                n,
                k,
            }));
        }
        Ok(Some(Self {
            weight: WeightBytes::View(view),
            ty,
            n,
            k,
        }))
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// `(n, k)`: output and input widths.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `x[.., k] -> y[.., n]`, or `None` when `x` is not an f32 CPU tensor (the caller
    /// falls back to candle).
    pub fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let dims = x.dims();
        let Some((&k, batch)) = dims.split_last() else {
            return Ok(None);
        };
        if k != self.k {
            return Err(Error::InvalidInput(format!(
                "linear layer: input has {k} columns, the weight {}",
                self.k
            )));
        }
        let m: usize = batch.iter().product();
        let x = x.contiguous()?;
        let mut y = vec![0f32; m * self.n];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Ok(None);
            };
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            let xs = all.get(start..start + m * k).ok_or_else(|| {
                Error::InvalidInput("linear layer: input storage is too short".into())
            })?;
            let owned;
            let data: &[u8] = match &self.weight {
                WeightBytes::Tensor(t) => {
                    owned = t.data()?;
                    &owned
                }
                WeightBytes::View(v) => v.as_bytes(),
                WeightBytes::Panels(p) => {
                    p.matmul(xs, m, &mut y, pool::global().threads())?;
                    return Ok(Some(Tensor::from_vec(
                        y,
                        out_shape(batch, self.n),
                        &Device::Cpu,
                    )?));
                }
            };
            let w = QMatrix::new(self.ty, self.n, self.k, data)?;
            matmul(&w, xs, m, &mut y, Isa::detect(), pool::global().threads())?;
        }
        Ok(Some(Tensor::from_vec(
            y,
            out_shape(batch, self.n),
            &Device::Cpu,
        )?))
    }
}

/// `batch` dims followed by `n`.
fn out_shape(batch: &[usize], n: usize) -> Vec<usize> {
    let mut dims = batch.to_vec();
    dims.push(n);
    dims
}
