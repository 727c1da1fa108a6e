//! The linear layers of a shard: lamina's kernels or candle's `QMatMul`, per weight, as
//! the shard's [`KernelPlan`] decides.

use crate::kernels::{KernelConfig, QLinear, WeightType};
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::sync::Arc;

/// A linear layer on the stored (usually quantized) weight: lamina's kernels when they
/// cover the weight type (and `LAMINA_KERNELS` is not `candle`), reading the weight in
/// place from the mapped file; else candle's `QMatMul` on a copy.
#[derive(Debug, Clone)]
pub(super) enum Linear {
    Kernel(QLinear),
    Candle(QMatMul),
}

impl Linear {
    fn from_qtensor(t: Arc<QTensor>, plan: &KernelPlan) -> Result<Self> {
        if plan.config.enabled() {
            if let Some(k) = QLinear::new(t.clone()).filter(|k| {
                let (n, kk) = k.shape();
                plan.config.preferred_for(k.weight_type(), n, kk)
            }) {
                return Ok(Self::Kernel(k));
            }
        }
        Ok(Self::Candle(QMatMul::from_arc(t)?))
    }

    /// The weight `name` of shape `(out, inp)`.
    pub(super) fn load(
        model: &ModelFile,
        name: &str,
        out: usize,
        inp: usize,
        dev: &Device,
        plan: &KernelPlan,
    ) -> Result<Self> {
        if dev.is_cpu() && plan.config.enabled() {
            if let Some((view, dtype)) = model.view(name, &[out, inp])? {
                let wanted = WeightType::from_ggml(dtype).is_some_and(|t| plan.wants(t, out, inp));
                if wanted {
                    if let Some(k) = QLinear::from_view(view, dtype, out, inp)? {
                        return Ok(Self::Kernel(k));
                    }
                }
            }
        }
        let t = model.load(name, Some(&[out, inp]), dev)?;
        Self::from_qtensor(Arc::new(t), plan)
    }

    /// Whether each output row is computed the same way however many rows are stacked:
    /// lamina's kernels are (each row's dot products run in a fixed order), candle's
    /// matmul is not (its blocking depends on the row count).
    pub(super) fn batch_invariant(&self) -> bool {
        matches!(self, Self::Kernel(_))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Kernel(k) => k.forward(x)?.ok_or_else(|| {
                Error::InvalidInput(format!(
                    "linear layer: the kernels take f32 CPU inputs, got {:?} on {:?}",
                    x.dtype(),
                    x.device()
                ))
            }),
            Self::Candle(m) => Ok(m.forward(x)?),
        }
    }
}

/// Which weights of one shard run on lamina's kernels.
///
/// Per weight, [`KernelConfig::preferred_for`] decides; on top of that a type goes wholly
/// to lamina when any of its weights in the shard does, because a forward step that
/// alternates between lamina's pool and candle's (each spinning between matmuls) makes
/// them steal each other's cores: a shard split between the two decoded markedly slower
/// than one wholly on lamina (figures in `benches/RESULTS.md`, "Kernel choices").
#[derive(Clone, Copy, Debug)]
pub(super) struct KernelPlan {
    config: KernelConfig,
    all_q8_0: bool,
    all_q4k: bool,
}

impl KernelPlan {
    /// `weights`: `(name, n, k)` of every linear weight the shard will load.
    pub(super) fn for_shard(
        model: &ModelFile,
        weights: &[(String, usize, usize)],
        config: KernelConfig,
    ) -> Self {
        let mut plan = Self {
            config,
            all_q8_0: false,
            all_q4k: false,
        };
        for (name, n, k) in weights {
            let Ok(Some((_, dtype))) = model.view(name, &[*n, *k]) else {
                continue;
            };
            let Some(ty) = WeightType::from_ggml(dtype) else {
                continue;
            };
            if !config.preferred(ty) && config.preferred_for(ty, *n, *k) {
                match ty {
                    WeightType::Q8_0 => plan.all_q8_0 = true,
                    WeightType::Q4K => plan.all_q4k = true,
                    _ => {}
                }
            }
        }
        plan
    }

    fn wants(&self, ty: WeightType, n: usize, k: usize) -> bool {
        self.config.preferred_for(ty, n, k)
            || (ty == WeightType::Q8_0 && self.all_q8_0)
            || (ty == WeightType::Q4K && self.all_q4k)
    }
}
