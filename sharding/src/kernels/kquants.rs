//! K-quants (Q4_K, Q5_K, Q6_K): 256-element super-blocks dotted against Q8_K
//! activations, as ggml's `ggml_vec_dot_q{4,5,6}_K_q8_K`.
//!
//! Super-block layouts (little-endian, packed):
//!
//! | type | bytes | layout |
//! | --- | --- | --- |
//! | Q4_K | 144 | `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]` |
//! | Q5_K | 176 | `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]` |
//! | Q6_K | 210 | `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d` |
//!
//! Q4_K / Q5_K: eight sub-blocks of 32 with 6-bit scales `sc_s` and mins `m_s` packed in
//! `scales` (ggml's `get_scale_min_k4`); element `e` of sub-block `s` is
//! `d sc_s q_e - dmin m_s`. Sub-blocks `2j` and `2j + 1` share the 32 bytes
//! `qs[32j..32j + 32]` (low nibbles, then high nibbles); Q5_K's fifth bit of element `l`
//! of sub-block `s` is bit `s` of `qh[l]`.
//!
//! Q6_K: sixteen groups of 16 with i8 scales; element `e` is `d sc_{e / 16} (q_e - 32)`
//! with the 6-bit `q_e` split over `ql` (4 bits) and `qh` (2 bits) as in [`quants_q6k`].
//!
//! Activations ([`Q8KActs`], ggml's `block_q8_K`): per 256 elements an f32 scale `d`,
//! i8 quants and i16 sums per 16 quants (`bsums`), quantized as ggml's
//! `quantize_row_q8_K_ref`: `iscale = -127 / max` with `max` the signed value of largest
//! magnitude, `q = min(127, round_ties_even(iscale x))`, `d = 1 / iscale`.
//!
//! Per super-block the kernels compute two exact integers, `isum = sum_s sc_s q_s . y_s`
//! and `msum = sum_s m_s bsum_s`, then `acc += (d dy) isum - (dmin dy) msum` in f32 (Q6_K
//! folds its `-32` offset into `isum` through the bsums). The SIMD kernels reduce the
//! integers to scalars before that step, so they are bit-identical to [`dot_row`].

use super::blocks::{f16_at, WeightType, QK_K};
use super::{OutPtr, QMatrix};
use std::ops::Range;

/// Quantized activations for the K-quants: an `m x k` matrix (`k` a multiple of 256),
/// row-major.
#[derive(Clone, Debug, Default)]
pub struct Q8KActs {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// Super-blocks per row, `k / 256`.
    pub(crate) nb: usize,
    /// `m * k` quants.
    pub(crate) qs: Vec<i8>,
    /// `m * nb` scales (f32, as ggml keeps them for Q8_K).
    pub(crate) d: Vec<f32>,
    /// `m * nb * 16` sums of 16 consecutive quants.
    pub(crate) bsums: Vec<i16>,
}

impl Q8KActs {
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

    /// Super-block scales of row `r`.
    pub fn d_row(&self, r: usize) -> &[f32] {
        &self.d[r * self.nb..(r + 1) * self.nb]
    }

    /// Sums of 16 quants of row `r`.
    pub fn bsums_row(&self, r: usize) -> &[i16] {
        &self.bsums[r * self.nb * 16..(r + 1) * self.nb * 16]
    }

    /// Quantizes `x` (`m * k` values, row-major) into `self` with `quantize` (the
    /// reference [`quantize_q8k_scalar`] or its SIMD twin, chosen by the kernel table),
    /// reusing its buffers. The caller checks `k % 256 == 0` and `x.len() == m * k`.
    ///
    /// # Safety
    /// The CPU runs the instruction set `quantize` was compiled for.
    pub(crate) unsafe fn fill_with(
        &mut self,
        x: &[f32],
        m: usize,
        k: usize,
        quantize: Q8KQuantizer,
    ) {
        debug_assert!(k.is_multiple_of(QK_K) && x.len() == m * k);
        let nb = k / QK_K;
        self.m = m;
        self.k = k;
        self.nb = nb;
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        self.bsums.resize(m * nb * 16, 0);
        // SAFETY: the caller guarantees the CPU runs `quantize`.
        unsafe { quantize(x, &mut self.qs, &mut self.d, &mut self.bsums) };
    }
}

/// Quantizes f32 rows into Q8_K super-blocks (`qs`), their scales (`d`) and the sums of
/// every 16 quants (`bsums`). Unsafe because the SIMD variant needs AVX2; the kernel table
/// hands out only the variants this CPU runs.
pub(crate) type Q8KQuantizer =
    unsafe fn(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]);

/// The reference Q8_K quantizer: `x` and `qs` of equal length (a multiple of 256), `d`
/// of one entry and `bsums` of 16 entries per super-block.
pub fn quantize_q8k_scalar(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    let blocks = x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(d.iter_mut().zip(bsums.chunks_exact_mut(16)));
    for ((xb, qb), (db, sb)) in blocks {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *db = 0.0;
            qb.fill(0);
            sb.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            // |iscale v| <= 127 up to rounding; `as` saturates at -128 anyway.
            *q = (iscale * v).round_ties_even().min(127.0) as i8;
        }
        for (s, g) in sb.iter_mut().zip(qb.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        *db = 1.0 / iscale;
    }
}

/// The 6-bit scales and mins of a Q4_K / Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline]
pub fn scales_mins_k4(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = scales[j] & 63;
            mn[j] = scales[j + 4] & 63;
        } else {
            sc[j] = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
            mn[j] = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// The unsigned quants (0..16 or 0..32) of a Q4_K / Q5_K super-block, in element order.
#[inline]
fn quants_q45k(ty: WeightType, block: &[u8], q: &mut [u8; QK_K]) {
    let five = ty == WeightType::Q5K;
    let qs = &block[ty.qs_offset()..ty.block_bytes()];
    let qh = &block[16..48];
    for j in 0..4 {
        for l in 0..32 {
            let b = qs[32 * j + l];
            let (mut lo, mut hi) = (b & 0x0F, b >> 4);
            if five {
                lo |= ((qh[l] >> (2 * j)) & 1) << 4;
                hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
            }
            q[64 * j + l] = lo;
            q[64 * j + 32 + l] = hi;
        }
    }
}

/// The unsigned 6-bit quants (0..64, stored value `q - 32`) of a Q6_K super-block, in
/// element order.
#[inline]
pub fn quants_q6k(block: &[u8], q: &mut [u8; QK_K]) {
    let (ql, qh) = (&block[..128], &block[128..192]);
    for n in 0..2 {
        let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}

/// Dequantizes one super-block into `out[..256]`, with candle's (and ggml's) float
/// expressions so the result is bit-identical to theirs.
pub(crate) fn dequantize_superblock(ty: WeightType, block: &[u8], out: &mut [f32]) {
    let mut q = [0u8; QK_K];
    match ty {
        WeightType::Q6K => {
            quants_q6k(block, &mut q);
            let d = f16_at(block, 208);
            for (e, o) in out.iter_mut().enumerate().take(QK_K) {
                let sc = block[192 + e / 16] as i8;
                *o = d * sc as f32 * (q[e] as i8 - 32) as f32;
            }
        }
        _ => {
            quants_q45k(ty, block, &mut q);
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let (sc, mn) = scales_mins_k4(&block[4..16]);
            for (e, o) in out.iter_mut().enumerate().take(QK_K) {
                let s = e / 32;
                *o = d * sc[s] as f32 * q[e] as f32 - dmin * mn[s] as f32;
            }
        }
    }
}

/// The scalar kernel of the K-quants: [`dot_row`] for each weight row of `rows` and each
/// activation row.
///
/// # Safety
/// The contract of [`super::table::BlockFn`].
pub(crate) unsafe fn gemm(w: &QMatrix<'_>, acts: &Q8KActs, out: OutPtr, rows: Range<usize>) {
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

/// `sum_k w[k] * x[c, k]` for one K-quant weight row (`row.len() == nb * block_bytes`)
/// and activation row `c`: the reference of the SIMD kernels.
pub fn dot_row(ty: WeightType, row: &[u8], acts: &Q8KActs, c: usize) -> f32 {
    let (xq, xd, xb) = (acts.qs_row(c), acts.d_row(c), acts.bsums_row(c));
    let mut q = [0u8; QK_K];
    let mut acc = 0f32;
    let blocks = row
        .chunks_exact(ty.block_bytes())
        .zip(xq.chunks_exact(QK_K))
        .zip(xd.iter().zip(xb.chunks_exact(16)));
    for ((wb, yq), (&dy, bs)) in blocks {
        if ty == WeightType::Q6K {
            quants_q6k(wb, &mut q);
            let mut isum = 0i32;
            for (g, (qg, yg)) in q.chunks_exact(16).zip(yq.chunks_exact(16)).enumerate() {
                let sc = wb[192 + g] as i8 as i32;
                let p: i32 = qg.iter().zip(yg).map(|(&a, &b)| a as i32 * b as i32).sum();
                isum += sc * (p - 32 * bs[g] as i32);
            }
            acc += (f16_at(wb, 208) * dy) * isum as f32;
        } else {
            quants_q45k(ty, wb, &mut q);
            let (sc, mn) = scales_mins_k4(&wb[4..16]);
            let (mut isum, mut msum) = (0i32, 0i32);
            for (s, (qs, ys)) in q.chunks_exact(32).zip(yq.chunks_exact(32)).enumerate() {
                let p: i32 = qs.iter().zip(ys).map(|(&a, &b)| a as i32 * b as i32).sum();
                isum += sc[s] as i32 * p;
                msum += mn[s] as i32 * (bs[2 * s] as i32 + bs[2 * s + 1] as i32);
            }
            let (d, dmin) = (f16_at(wb, 0), f16_at(wb, 2));
            acc += (d * dy) * isum as f32 - (dmin * dy) * msum as f32;
        }
    }
    acc
}
