//! F16 and BF16 weights against the f32 activations themselves.
//!
//! ggml rounds the activations to f16 (or bf16) for these types; here they stay f32:
//! the product is then the exact f32 product of the stored weights, as candle's
//! dequantized-f32 path computes it, while the weights still stream at 2 bytes each.
//!
//! Every output accumulates in 8 f32 lanes (lane `l` takes the elements `l mod 8`),
//! summed at the end in the order of the SIMD horizontal sum; the scalar reference
//! mirrors this, so SIMD and scalar differ only by FMA's single rounding (the SIMD
//! kernels fuse the multiply-add, the scalar one rounds twice).

use super::blocks::{bf16_at, f16_at, WeightType};
use super::{OutPtr, QMatrix};
use std::ops::Range;

/// The scalar kernel of F16 / BF16: [`dot_row`] for each weight row of `rows` against
/// each row of `x` (`m * k`).
///
/// # Safety
/// The contract of [`super::table::BlockFn`].
pub(crate) unsafe fn gemm(w: &QMatrix<'_>, x: &[f32], out: OutPtr, rows: Range<usize>) {
    let m = x.len() / w.k;
    debug_assert!(rows.end <= w.n && x.len() == m * w.k && out.len == m * w.n);
    let rb = w.row_bytes();
    for r in rows {
        let row = &w.data[r * rb..(r + 1) * rb];
        for c in 0..m {
            let v = dot_row(w.ty, row, &x[c * w.k..(c + 1) * w.k]);
            // SAFETY: c * n + r < m * n; this thread owns column r.
            unsafe { out.write(c * w.n + r, v) };
        }
    }
}

/// `sum_k w[k] * x[k]` for one F16 / BF16 weight row (`2 * x.len()` bytes).
pub fn dot_row(ty: WeightType, row: &[u8], x: &[f32]) -> f32 {
    let read = if ty == WeightType::BF16 {
        bf16_at
    } else {
        f16_at
    };
    let mut lanes = [0f32; 8];
    for (w8, x8) in row.chunks_exact(16).zip(x.chunks_exact(8)) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += read(w8, 2 * l) * x8[l];
        }
    }
    hsum8(lanes)
}

/// The sum of 8 lanes in the order of the x86 kernels' horizontal sum.
#[inline]
pub(crate) fn hsum8(v: [f32; 8]) -> f32 {
    let s = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let s = [s[0] + s[2], s[1] + s[3]];
    s[0] + s[1]
}

#[cfg(target_arch = "x86_64")]
macro_rules! float_kernels {
    ($modname:ident, $features:literal) => {
        pub(crate) mod $modname {
            use crate::kernels::blocks::tag;
            use crate::kernels::{OutPtr, QMatrix};
            use std::arch::x86_64::*;
            use std::ops::Range;

            const T_BF16: u8 = tag::BF16;

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }

            /// Eight weights at `p` as f32.
            ///
            /// # Safety
            /// `p..p + 16` must be readable.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load8<const T: u8>(p: *const u8) -> __m256 {
                // SAFETY: the caller guarantees 16 readable bytes; the load is unaligned.
                let raw = unsafe { _mm_loadu_si128(p.cast()) };
                if T == T_BF16 {
                    // bf16 is the high half of an f32.
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
                } else {
                    _mm256_cvtph_ps(raw)
                }
            }

            /// One `R x C` tile: weight rows at `w + r * 2k`, activation rows at
            /// `x + c * k`.
            ///
            /// # Safety
            /// The `R` weight rows of `2k` bytes and the `C` activation rows of `k`
            /// floats must be readable; `k` is a multiple of 8.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn tile<const T: u8, const R: usize, const C: usize>(
                w: *const u8,
                x: *const f32,
                k: usize,
            ) -> [[f32; C]; R] {
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                let mut i = 0;
                while i < k {
                    // The R weight vectors stay in registers and each activation vector
                    // is used as it is loaded: R * C accumulators + R + 1 live vectors,
                    // which fits AVX2's sixteen registers for every tile shape used here
                    // (holding the C activation vectors instead needs R * C + C + 1, 17
                    // for 3 x 4, and spilled).
                    let mut wv = [_mm256_setzero_ps(); R];
                    for (r, v) in wv.iter_mut().enumerate() {
                        // SAFETY: i + 8 <= k weights (2 bytes each) of row r.
                        *v = unsafe { load8::<T>(w.add(r * 2 * k + 2 * i)) };
                    }
                    for c in 0..C {
                        // SAFETY: i + 8 <= k floats of activation row c.
                        let xv = unsafe { _mm256_loadu_ps(x.add(c * k + i)) };
                        for (acc_r, &wr) in acc.iter_mut().zip(&wv) {
                            acc_r[c] = _mm256_fmadd_ps(wr, xv, acc_r[c]);
                        }
                    }
                    i += 8;
                }
                // A plain loop rather than `acc.map(..)`: `array::map` is not compiled
                // with this function's features, so where it is not inlined (which
                // depends on how the crate is cut into codegen units) every sum became
                // an out-of-line call through memory.
                let mut out = [[0f32; C]; R];
                for (o, a) in out.iter_mut().zip(&acc) {
                    for (o, a) in o.iter_mut().zip(a) {
                        *o = hsum(*a);
                    }
                }
                out
            }

            /// # Safety
            /// As [`gemm`]; `c0 + C <= m`.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn run<const T: u8, const R: usize, const C: usize>(
                w: &[u8],
                x: &[f32],
                k: usize,
                out: OutPtr,
                n: usize,
                rows: &Range<usize>,
                r: &mut usize,
                c0: usize,
            ) {
                while *r + R <= rows.end {
                    // SAFETY: rows *r..*r + R < n exist in `w` (n * 2k bytes, checked by
                    // the caller) and activation rows c0..c0 + C exist in `x`.
                    let v = unsafe {
                        tile::<T, R, C>(w.as_ptr().add(*r * 2 * k), x.as_ptr().add(c0 * k), k)
                    };
                    for (i, vr) in v.iter().enumerate() {
                        for (c, &val) in vr.iter().enumerate() {
                            // SAFETY: (c0 + c) * n + *r + i < m * n, and this thread
                            // owns output columns `rows` (caller contract).
                            unsafe { out.write((c0 + c) * n + *r + i, val) };
                        }
                    }
                    *r += R;
                }
            }

            #[target_feature(enable = $features)]
            unsafe fn gemm_t<const T: u8>(
                w: &[u8],
                x: &[f32],
                m: usize,
                k: usize,
                out: OutPtr,
                n: usize,
                rows: Range<usize>,
            ) {
                let mut c0 = 0;
                // SAFETY (all calls): forwarded caller contract of `gemm`.
                unsafe {
                    while c0 < m {
                        let cn = (m - c0).min(4);
                        let mut r = rows.start;
                        match cn {
                            1 => {
                                run::<T, 4, 1>(w, x, k, out, n, &rows, &mut r, c0);
                                run::<T, 1, 1>(w, x, k, out, n, &rows, &mut r, c0);
                            }
                            2 => {
                                run::<T, 4, 2>(w, x, k, out, n, &rows, &mut r, c0);
                                run::<T, 1, 2>(w, x, k, out, n, &rows, &mut r, c0);
                            }
                            3 => {
                                run::<T, 2, 3>(w, x, k, out, n, &rows, &mut r, c0);
                                run::<T, 1, 3>(w, x, k, out, n, &rows, &mut r, c0);
                            }
                            _ => {
                                run::<T, 3, 4>(w, x, k, out, n, &rows, &mut r, c0);
                                run::<T, 1, 4>(w, x, k, out, n, &rows, &mut r, c0);
                            }
                        }
                        c0 += cn;
                    }
                }
            }

            /// `y[c, r] = sum_k w[r, k] * x[c, k]` for `r` in `rows`, every `c`, for the
            /// type of tag `T`.
            ///
            /// # Safety
            /// The CPU supports this module's features; `T` is `tag::F16` or `tag::BF16`
            /// and `w` of that type; `x` holds `m * k` floats, `k` a multiple of 8; `out` has
            /// room for `m * n` values, `rows.end <= n`, and no other thread writes the
            /// columns `rows` concurrently.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn gemm<const T: u8>(
                w: &QMatrix<'_>,
                x: &[f32],
                out: OutPtr,
                rows: Range<usize>,
            ) {
                let (k, n) = (w.k, w.n);
                let m = x.len() / k;
                // SAFETY: forwarded caller contract.
                unsafe { gemm_t::<T>(w.data, x, m, k, out, n, rows) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
float_kernels!(avx2, "avx2,fma,f16c");

#[cfg(target_arch = "x86_64")]
float_kernels!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl");
