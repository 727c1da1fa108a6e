//! Activation quantization: each row of `x` is cut into blocks of 32 and stored as 8-bit
//! quants with an f16-rounded scale, as ggml's `quantize_row_q8_0` / `quantize_row_q8_1`.
//!
//! Per block: `amax = max |x_j|`, `d = amax / 127`, `q_j = round(x_j / d)` (computed as
//! `x_j * (1 / d)`, rounding half to even as ggml's AVX path does), the stored scale is
//! `d` rounded to f16 (the value every dot product uses), and `s = d * sum(q)` is kept
//! for the Q4_1 and Q4_0 corrections (ggml's Q8_1 block sum). One layout serves Q8_0 and
//! Q8_1 use: the Q8_0 kernels ignore `s`.
//!
//! The scalar quantizer here is the reference; the SIMD one (`x86.rs`) produces
//! bit-identical quants, scales and sums (tested).

use super::blocks::{round_f16, QK};

/// The quantized activations of an `m x k` matrix (`k` a multiple of 32), row-major.
#[derive(Clone, Debug, Default)]
pub struct QActs {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// Blocks per row, `k / 32`.
    pub(crate) nb: usize,
    /// `m * k` quants.
    pub(crate) qs: Vec<i8>,
    /// `m * nb` block scales (f16-rounded, stored as f32).
    pub(crate) d: Vec<f32>,
    /// `m * nb` block sums `d * sum(q)`.
    pub(crate) s: Vec<f32>,
}

impl QActs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Quants of row `r`.
    pub fn qs_row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.k..(r + 1) * self.k]
    }

    /// Block scales of row `r`.
    pub fn d_row(&self, r: usize) -> &[f32] {
        &self.d[r * self.nb..(r + 1) * self.nb]
    }

    /// Block sums of row `r`.
    pub fn s_row(&self, r: usize) -> &[f32] {
        &self.s[r * self.nb..(r + 1) * self.nb]
    }

    /// Quantizes `x` (`m * k` values, row-major) into `self` with `quantize` (the
    /// reference [`quantize_scalar`] or a SIMD twin, chosen by the kernel table), reusing
    /// its buffers. The caller checks `k % 32 == 0` and `x.len() == m * k`.
    ///
    /// # Safety
    /// The CPU runs the instruction set `quantize` was compiled for.
    pub(crate) unsafe fn fill_with(
        &mut self,
        x: &[f32],
        m: usize,
        k: usize,
        quantize: Q8x32Quantizer,
    ) {
        debug_assert!(k.is_multiple_of(QK) && x.len() == m * k);
        let nb = k / QK;
        self.m = m;
        self.k = k;
        self.nb = nb;
        // `resize` keeps the capacity, so a steady state allocates nothing.
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        self.s.resize(m * nb, 0.0);
        // SAFETY: the caller guarantees the CPU runs `quantize`.
        unsafe { quantize(x, &mut self.qs, &mut self.d, &mut self.s) };
    }
}

/// Quantizes f32 rows into 8-bit blocks of 32 (`qs`), their scales (`d`) and
/// scale-times-sum (`s`). Unsafe because SIMD variants need their instruction set; the
/// kernel table hands out only the ones this CPU runs.
pub(crate) type Q8x32Quantizer = unsafe fn(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]);

/// The reference quantizer: `x`, `qs` of equal length (a multiple of 32), `d` and `s` of
/// one entry per block.
pub fn quantize_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let blocks = x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut().zip(s.iter_mut()));
    for ((xb, qb), (db, sb)) in blocks {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let dd = amax / 127.0;
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qb.iter_mut().zip(xb) {
            // `as` saturates; |v * id| <= 127 up to rounding anyway.
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        let dr = round_f16(dd);
        *db = dr;
        *sb = dr * sum as f32;
    }
}
