//! Causal grouped-query attention of one session's queries against its cache, with a
//! one-pass in-place causal softmax.

use crate::{Error, Result};
use candle_core::Tensor;

/// Causal grouped-query attention of `q` `(t, n_heads, hd)` at positions
/// `start..start + t` against the cached `k`, `v` `(n_kv, start + t, hd)`. Query heads
/// sharing a KV head are folded into one matmul instead of copying K and V per head.
pub(super) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Result<Tensor> {
    let t = q.dim(0)?;
    let rep = nh / nkv;
    // (t, nh, hd) -> (nh, t, hd) -> (nkv, rep * t, hd)
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, rep * t, hd))?;
    let scale = 1.0 / (hd as f32).sqrt();
    let att = causal_softmax(&q.matmul(&k.t()?)?, t, start, scale)?;
    let y = att.matmul(v)?; // (nkv, rep * t, hd)
    Ok(y.reshape((nh, t, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, nh * hd))?)
}

/// `softmax(scale * att)` over the last dimension with the causal mask, in one pass over
/// one buffer: `att` is `(nkv, rep * t, kv_len)` with query row `i` of the step (the row
/// index modulo `t`) seeing keys `0..=start + i`. Doing scale, mask and softmax as three
/// tensor ops allocated three score-sized tensors per layer (8 MiB each for a 256-token
/// TinyLlama prefill) and ran the mask as a broadcast; masked keys are skipped here
/// instead of exponentiated.
fn causal_softmax(att: &Tensor, t: usize, start: usize, scale: f32) -> Result<Tensor> {
    let kv_len = att.dim(candle_core::D::Minus1)?;
    if kv_len != start + t {
        return Err(Error::InvalidInput(format!(
            "attention: {kv_len} keys for {t} queries after {start} cached positions"
        )));
    }
    let op = CausalSoftmax { t, start, scale };
    if att.device().is_cpu() && att.is_contiguous() {
        // The matmul's fresh output is ours alone: rewrite it in place.
        att.inplace_op1(&op)?;
        return Ok(att.clone());
    }
    let mut data = att.flatten_all()?.to_vec1::<f32>()?;
    op.rows(&mut data, kv_len);
    Ok(Tensor::from_vec(data, att.shape().clone(), att.device())?)
}

/// The in-place causal softmax of [`causal_softmax`].
struct CausalSoftmax {
    t: usize,
    start: usize,
    scale: f32,
}

impl CausalSoftmax {
    fn rows(&self, data: &mut [f32], kv_len: usize) {
        let (t, start, scale) = (self.t, self.start, self.scale);
        let softmax_row = |(r, row): (usize, &mut [f32])| {
            let seen = (start + r % t + 1).min(row.len());
            let (live, masked) = row.split_at_mut(seen);
            let mut max = f32::NEG_INFINITY;
            for x in live.iter_mut() {
                *x *= scale;
                max = max.max(*x);
            }
            let mut sum = 0f32;
            for x in live.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in live.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        };
        // Prefill scores are large enough to share out (rows are independent); a decode
        // step's are not worth a wake-up.
        if data.len() >= 1 << 16 {
            use rayon::prelude::*;
            data.par_chunks_exact_mut(kv_len)
                .enumerate()
                .for_each(softmax_row);
        } else {
            data.chunks_exact_mut(kv_len)
                .enumerate()
                .for_each(softmax_row);
        }
    }
}

impl candle_core::InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lamina-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(all) = storage else {
            candle_core::bail!("causal softmax takes f32 scores");
        };
        let kv_len = layout.dims().last().copied().unwrap_or(0);
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("causal softmax: scores not contiguous".into())
        })?;
        let data = all
            .get_mut(start..end)
            .ok_or_else(|| candle_core::Error::Msg("causal softmax: storage too short".into()))?;
        if kv_len > 0 {
            self.rows(data, kv_len);
        }
        Ok(())
    }
}
