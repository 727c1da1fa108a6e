//! The portable kernels of the 32-element quant types, and the numerical reference of
//! the SIMD ones.
//!
//! Per block, the integer dot product of the weight quants and the activation quants is
//! exact (i32); it is scaled by `d_w * d_x` in f32. Q4_1 and Q5_1 add `m_w * s_x` (their
//! min times the activation block sum), as ggml's `ggml_vec_dot_q4_1_q8_1` and
//! `ggml_vec_dot_q5_1_q8_1`; Q4_0 and Q5_0 subtract their offset (8, 16) inside the
//! integer sum, as `ggml_vec_dot_q{4,5}_0_q8_0`. The SIMD kernels
//! compute the same integers and the same per-block products; only the order of the f32
//! summation differs.
//!
//! Q4_1 could be computed centered, `d (nib - 8) + (m + 8d)`, whose two terms cancel less
//! (a smaller SIMD vs scalar difference on inputs with large outliers; figures in
//! `benches/RESULTS.md`, "Kernel choices"). It was tried and dropped: it did
//! not consistently bring the logits closer to the exact f32 product (the 8-bit activation rounding
//! dominates, and quant flips in outlier blocks make any change chaotic), and it moved
//! SmolLM2's greedy tokens away from llama.cpp's, which uses the uncentered form.

use super::blocks::{f16_at, nibble, quant5, u32_at, WeightType, QK};
use super::quantize::QActs;
use super::{OutPtr, QMatrix};
use std::ops::Range;

/// The scalar kernel of every 32-element quant type: [`dot_row`] for each weight row of
/// `rows` and each activation row.
///
/// # Safety
/// The contract of [`super::table::BlockFn`].
pub(crate) unsafe fn gemm(w: &QMatrix<'_>, acts: &QActs, out: OutPtr, rows: Range<usize>) {
    debug_assert!(rows.end <= w.n && acts.k == w.k && out.len == acts.m * w.n);
    let rb = w.row_bytes();
    for r in rows {
        let row = &w.data[r * rb..(r + 1) * rb];
        for c in 0..acts.m {
            let v = dot_row(w.ty, row, acts, c);
            // SAFETY: c * n + r < m * n; this thread owns column r.
            unsafe { out.write(c * w.n + r, v) };
        }
    }
}

/// `sum_k w[k] * x[c, k]` for one weight row (`row.len() == nb * block_bytes`) of a
/// 32-element quant type and activation row `c`.
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
            WeightType::Q5_0 => {
                let qh = u32_at(wb, 2);
                let isum: i32 = (0..QK)
                    .map(|j| (quant5(qh, qs, j) as i32 - 16) * yq[j] as i32)
                    .sum();
                acc += isum as f32 * (dw * dy);
            }
            WeightType::Q5_1 => {
                let (mw, qh) = (f16_at(wb, 2), u32_at(wb, 4));
                let isum: i32 = (0..QK)
                    .map(|j| quant5(qh, qs, j) as i32 * yq[j] as i32)
                    .sum();
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
            // Not 32-element quant types: the kernel table routes them elsewhere.
            WeightType::Q4K
            | WeightType::Q5K
            | WeightType::Q6K
            | WeightType::F16
            | WeightType::BF16 => {}
        }
    }
    acc
}
