//! RMSNorm, on candle's fused kernel.

use crate::source::ModelFile;
use crate::Result;
use candle_core::{Device, Tensor};

/// RMSNorm with its weight; candle's fused kernel over the last dimension.
#[derive(Debug, Clone)]
pub(super) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(super) fn load(
        model: &ModelFile,
        name: &str,
        dim: usize,
        eps: f64,
        dev: &Device,
    ) -> Result<Self> {
        let w = model.load(name, Some(&[dim]), dev)?.dequantize(dev)?;
        Ok(Self {
            weight: w,
            eps: eps as f32,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}
