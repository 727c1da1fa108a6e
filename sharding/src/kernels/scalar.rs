//! The portable kernels, and the numerical reference of the SIMD ones.
//!
//! Per block, the integer dot product of the weight quants and the activation quants is
//! exact (i32); it is scaled by `d_w * d_x` in f32. Q4_1 adds `m_w * s_x` (its min times
//! the activation block sum), as ggml's `ggml_vec_dot_q4_1_q8_1`. The SIMD kernels
//! compute the same integers and the same per-block products; only the order of the f32
//! summation differs.
//!
//! Q4_1 could be computed centered, `d (nib - 8) + (m + 8d)`, whose two terms cancel less
//! (per call ~4e-5 instead of ~3e-4 worst relative difference SIMD vs scalar on
//! SmolLM2's `ffn_down` input with |x| ~ 3000 outliers). It was tried and dropped: it did
//! not consistently bring the logits closer to the exact f32 product (the 8-bit activation rounding
//! dominates, and quant flips in outlier blocks make any change chaotic), and it moved
//! SmolLM2's greedy tokens away from llama.cpp's, which uses the uncentered form.

use super::blocks::{f16_at, nibble, WeightType, QK};
use super::quantize::QActs;

/// `sum_k w[k] * x[c, k]` for one weight row (`row.len() == nb * block_bytes`) and
/// activation row `c`.
pub fn dot_row(ty: WeightType, row: &[u8], acts: &QActs, c: usize) -> f32 {
    let bb = ty.block_bytes();
    let qo = ty.qs_offset();
    let (xq, xd, xs) = (acts.qs_row(c), acts.d_row(c), acts.s_row(c));
    let mut acc = 0f32;
    let blocks = row
        .chunks_exact(bb)
        .zip(xq.chunks_exact(QK))
        .zip(xd.iter().zip(xs));
    for ((wb, yq), (&dy, &sy)) in blocks {
        let dw = f16_at(wb, 0);
        let qs = &wb[qo..bb];
        match ty {
            WeightType::Q4_0 => {
                let isum: i32 = (0..QK)
                    .map(|j| (nibble(qs, j) as i32 - 8) * yq[j] as i32)
                    .sum();
                acc += isum as f32 * (dw * dy);
            }
            WeightType::Q4_1 => {
                let mw = f16_at(wb, 2);
                let isum: i32 = (0..QK).map(|j| nibble(qs, j) as i32 * yq[j] as i32).sum();
                acc += isum as f32 * (dw * dy) + mw * sy;
            }
            WeightType::Q8_0 => {
                let isum: i32 = qs
                    .iter()
                    .zip(yq)
                    .map(|(&w, &y)| w as i8 as i32 * y as i32)
                    .sum();
                acc += isum as f32 * (dw * dy);
            }
        }
    }
    acc
}
