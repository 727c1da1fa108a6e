//! x86-64 SIMD kernels: AVX2 + FMA + F16C, and the same kernels with AVX-512 VNNI's
//! `vpdpbusd` on 256-bit vectors (AVX512VL) for the u8 x i8 dot products.
//!
//! Both tiers are generated from one macro, so they differ only in [`dot`]: AVX2 uses
//! `vpmaddubsw` + `vpmaddwd` (ggml's `mul_sum_us8_pairs_float`), VNNI one `vpdpbusd`. On
//! Zen 4, 512-bit ops run as two 256-bit halves, so 256-bit vectors with VNNI lose
//! nothing and keep the block-at-a-time structure (one 32-element block per vector).
//!
//! Tricks, as in ggml's `ggml_vec_dot_q{4,5}_{0,1}_q8_{0,1}` and `ggml_vec_dot_q8_0_q8_0`:
//! - Q4 nibbles are expanded to 32 unsigned bytes (low nibbles, then high nibbles) and
//!   multiplied as unsigned against the signed activation quants.
//! - Q5's fifth bits are spread from the u32 `qh` to one byte each (ggml's
//!   `bytes_from_bits_32`: broadcast, byte shuffle, OR with all-but-one-bit masks,
//!   compare with all ones) and OR-ed in as bit 4, giving unsigned quants 0..32.
//! - Q4_0's `-8` (Q5_0's `-16`) offset is applied in i32: `dot(q, y) - dot(8, y)`,
//!   exact, with `dot(8, y)` computed once per activation block for every weight row of
//!   the tile.
//! - Q4_1 and Q5_1 keep ggml's float structure: `d_w d_x sum(q y)` accumulated in 8 f32
//!   lanes per block, `m_w s_x` summed apart and added at the end (see `scalar.rs` on
//!   why).
//! - Weight rows are prefetched [`PF_TILES`] tiles ahead: the rows of one tile are short
//!   (360 to 960 bytes here), too short for the hardware prefetcher to stream them at
//!   full speed (measured on the output head: `benches/RESULTS.md`, "Kernel choices").
//! - Q8_0 x Q8_0 uses `dot(|w|, sign(y, w))` so the unsigned operand is `|w|`.
//!
//! A tile is `R` weight rows x `C` activation rows: the activation block is loaded once
//! per `R` rows, the expanded weight block once per `C` rows, and `R * C` independent
//! accumulators hide the FMA latency.

use super::blocks::{tag, QK};
use super::quantize::QActs;
use super::{OutPtr, QMatrix};
use std::ops::Range;

/// How many tiles ahead the weight rows are prefetched.
const PF_TILES: usize = 2;

/// Weight type tags for the const-generic kernels.
const T_Q4_0: u8 = tag::Q4_0;
const T_Q4_1: u8 = tag::Q4_1;
const T_Q8_0: u8 = tag::Q8_0;
const T_Q5_0: u8 = tag::Q5_0;
const T_Q5_1: u8 = tag::Q5_1;

macro_rules! x86_kernels {
    ($modname:ident, $features:literal, |$a:ident, $b:ident| $dot:block) => {
        pub(crate) mod $modname {
            use super::{OutPtr, QActs, QMatrix, Range, PF_TILES, QK, T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0};
            use std::arch::x86_64::*;

            /// Sums of four adjacent `u8 * i8` products in each i32 lane.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot($a: __m256i, $b: __m256i) -> __m256i $dot

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }

            /// The two f16 at `p` (a block's `d`, and `m` for Q4_1) as f32.
            ///
            /// # Safety
            /// `p..p + 4` must be readable.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn f16x2(p: *const u8) -> (f32, f32) {
                // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned.
                let bits = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
                let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
                (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
            }

            const fn block_bytes(t: u8) -> usize {
                match t {
                    T_Q4_0 => 18,
                    T_Q4_1 => 20,
                    T_Q5_0 => 22,
                    T_Q5_1 => 24,
                    _ => 34,
                }
            }

            /// One `R x C` tile: weight rows at `w + r * row_bytes`, activation row `c`
            /// at quants `xq + c * k`, scales `xd + c * nb`, sums `xs + c * nb`.
            ///
            /// # Safety
            /// The `R` rows of `nb` blocks of type `T` and the `C` activation rows of
            /// `nb` blocks must be readable through these pointers.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn tile<const T: u8, const R: usize, const C: usize>(
                w: *const u8,
                row_bytes: usize,
                nb: usize,
                xq: *const i8,
                k: usize,
                xd: *const f32,
                xs: *const f32,
            ) -> [[f32; C]; R] {
                let bb = block_bytes(T);
                let mask = _mm256_set1_epi8(0x0F);
                let eight = _mm256_set1_epi8(8);
                let sixteen = _mm256_set1_epi8(16);
                let bit4 = _mm256_set1_epi8(0x10);
                // ggml's `bytes_from_bits_32` constants: byte i of the broadcast u32
                // picks qh byte i / 8, and the OR mask leaves only bit i % 8 unknown.
                let spread = _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                );
                let bits = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
                let ones = _mm256_set1_epi64x(-1);
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                let mut mins = [[0f32; C]; R];
                for b in 0..nb {
                    let mut qy = [_mm256_setzero_si256(); C];
                    let mut dy = [0f32; C];
                    let mut sy = [0f32; C];
                    let mut corr = [_mm256_setzero_si256(); C];
                    for c in 0..C {
                        // SAFETY: activation row c has nb blocks of 32 quants, a scale
                        // and a sum each (caller contract); b < nb.
                        unsafe {
                            qy[c] = _mm256_loadu_si256(xq.add(c * k + b * QK).cast());
                            dy[c] = *xd.add(c * nb + b);
                            sy[c] = *xs.add(c * nb + b);
                        }
                        if T == T_Q4_0 {
                            corr[c] = dot(eight, qy[c]);
                        } else if T == T_Q5_0 {
                            corr[c] = dot(sixteen, qy[c]);
                        }
                    }
                    for r in 0..R {
                        // SAFETY: weight row r has nb blocks of bb bytes (caller
                        // contract); every block is at least 18 bytes, so the 4-byte
                        // scale read stays inside it, and each type's quant loads
                        // below read its own layout.
                        let blk = unsafe { w.add(r * row_bytes + b * bb) };
                        // Stream the rows of the tile after next into L1 while this one
                        // runs; `wrapping_add` because it may point past the weights
                        // (a prefetch never faults).
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF_TILES * R * row_bytes).cast());
                        // SAFETY: as above.
                        let (dw, mw) = unsafe { f16x2(blk) };
                        if T == T_Q8_0 {
                            // SAFETY: bytes 2..34 of a Q8_0 block are its quants.
                            let qx = unsafe { _mm256_loadu_si256(blk.add(2).cast()) };
                            let ax = _mm256_sign_epi8(qx, qx);
                            for c in 0..C {
                                let p = dot(ax, _mm256_sign_epi8(qy[c], qx));
                                let sc = _mm256_set1_ps(dw * dy[c]);
                                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r][c]);
                            }
                        } else {
                            let off = match T {
                                T_Q4_0 => 2,
                                T_Q4_1 => 4,
                                T_Q5_0 => 6,
                                _ => 8,
                            };
                            // SAFETY: the 16 quant bytes of a Q4 / Q5 block follow its
                            // header (d, m, qh as the type has them).
                            let raw = unsafe { _mm_loadu_si128(blk.add(off).cast()) };
                            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
                            let mut qx = _mm256_and_si256(both, mask);
                            if T == T_Q5_0 || T == T_Q5_1 {
                                // SAFETY: the 4 bytes of qh sit just before the quants.
                                let qh = unsafe { std::ptr::read_unaligned(blk.add(off - 4).cast::<i32>()) };
                                let b = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread);
                                let set = _mm256_cmpeq_epi8(_mm256_or_si256(b, bits), ones);
                                qx = _mm256_or_si256(qx, _mm256_and_si256(set, bit4));
                            }
                            for c in 0..C {
                                let mut p = dot(qx, qy[c]);
                                if T == T_Q4_0 || T == T_Q5_0 {
                                    p = _mm256_sub_epi32(p, corr[c]);
                                }
                                let sc = _mm256_set1_ps(dw * dy[c]);
                                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[r][c]);
                                if T == T_Q4_1 || T == T_Q5_1 {
                                    mins[r][c] += mw * sy[c];
                                }
                            }
                        }
                    }
                }
                let mut out = [[0f32; C]; R];
                for r in 0..R {
                    for c in 0..C {
                        out[r][c] = hsum(acc[r][c]) + mins[r][c];
                    }
                }
                out
            }

            /// Runs `R x C` tiles over weight rows `rows` (from `*r` on, while `R` fit)
            /// for activation rows `c0..c0 + C`, writing `y[c, r]` at `c * n + r`.
            ///
            /// # Safety
            /// As [`gemm`]; `c0 + C <= acts.m`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn run<const T: u8, const R: usize, const C: usize>(
                w: &[u8],
                acts: &QActs,
                out: OutPtr,
                n: usize,
                rows: &Range<usize>,
                r: &mut usize,
                c0: usize,
            ) {
                let (k, nb) = (acts.k, acts.nb);
                let row_bytes = nb * block_bytes(T);
                while *r + R <= rows.end {
                    // SAFETY: rows *r..*r + R < n exist in `w` (n * row_bytes bytes,
                    // checked by the caller) and activation rows c0..c0 + C exist.
                    let v = unsafe {
                        tile::<T, R, C>(
                            w.as_ptr().add(*r * row_bytes),
                            row_bytes,
                            nb,
                            acts.qs.as_ptr().add(c0 * k),
                            k,
                            acts.d.as_ptr().add(c0 * nb),
                            acts.s.as_ptr().add(c0 * nb),
                        )
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
                acts: &QActs,
                out: OutPtr,
                n: usize,
                rows: Range<usize>,
            ) {
                let m = acts.m;
                let mut c0 = 0;
                // SAFETY (all calls): forwarded caller contract of `gemm`.
                unsafe {
                    while c0 < m {
                        let cn = (m - c0).min(4);
                        let mut r = rows.start;
                        match cn {
                            1 => {
                                run::<T, 4, 1>(w, acts, out, n, &rows, &mut r, c0);
                                run::<T, 1, 1>(w, acts, out, n, &rows, &mut r, c0);
                            }
                            2 => {
                                run::<T, 2, 2>(w, acts, out, n, &rows, &mut r, c0);
                                run::<T, 1, 2>(w, acts, out, n, &rows, &mut r, c0);
                            }
                            3 => {
                                run::<T, 2, 3>(w, acts, out, n, &rows, &mut r, c0);
                                run::<T, 1, 3>(w, acts, out, n, &rows, &mut r, c0);
                            }
                            _ => {
                                run::<T, 2, 4>(w, acts, out, n, &rows, &mut r, c0);
                                run::<T, 1, 4>(w, acts, out, n, &rows, &mut r, c0);
                            }
                        }
                        c0 += cn;
                    }
                }
            }

            /// `y[c, r] = sum_k w[r, k] * x[c, k]` for `r` in `rows`, every `c`, for the
            /// 32-element quant type of tag `T`.
            ///
            /// # Safety
            /// The CPU supports this module's features; `w` is of the type of `T` and
            /// `acts` holds `acts.m` rows of `w.cols()`; `out` has room for
            /// `acts.m * w.rows()` values, `rows.end <= w.rows()`, and no other thread
            /// writes the columns `rows` concurrently.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn gemm<const T: u8>(
                w: &QMatrix<'_>,
                acts: &QActs,
                out: OutPtr,
                rows: Range<usize>,
            ) {
                debug_assert!(rows.end <= w.n && acts.k == w.k && out.len == acts.m * w.n);
                // SAFETY: forwarded caller contract.
                unsafe { gemm_t::<T>(w.data, acts, out, w.n, rows) }
            }

            /// The SIMD twin of [`crate::kernels::quantize::quantize_scalar`], with
            /// bit-identical results.
            ///
            /// # Safety
            /// The CPU supports this module's features.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
                let sign = _mm256_set1_ps(-0.0);
                let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                let blocks = x
                    .chunks_exact(QK)
                    .zip(qs.chunks_exact_mut(QK))
                    .zip(d.iter_mut().zip(s.iter_mut()));
                for ((xb, qb), (db, sb)) in blocks {
                    let p = xb.as_ptr();
                    // SAFETY: xb has exactly 32 floats.
                    let v = unsafe {
                        [
                            _mm256_loadu_ps(p),
                            _mm256_loadu_ps(p.add(8)),
                            _mm256_loadu_ps(p.add(16)),
                            _mm256_loadu_ps(p.add(24)),
                        ]
                    };
                    let mut mx = _mm256_andnot_ps(sign, v[0]);
                    for vi in &v[1..] {
                        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
                    }
                    let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
                    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
                    let amax = _mm_cvtss_f32(m4);
                    let dd = amax / 127.0;
                    let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
                    let mul = _mm256_set1_ps(id);
                    const RN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                    let q = v.map(|vi| _mm256_cvtps_epi32(_mm256_round_ps::<RN>(_mm256_mul_ps(vi, mul))));
                    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                    let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
                    let s4 = _mm_hadd_epi32(s4, s4);
                    let s4 = _mm_hadd_epi32(s4, s4);
                    let isum = _mm_cvtsi128_si32(s4);
                    let lo = _mm256_packs_epi32(q[0], q[1]);
                    let hi = _mm256_packs_epi32(q[2], q[3]);
                    let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
                    // SAFETY: qb has exactly 32 bytes.
                    unsafe { _mm256_storeu_si256(qb.as_mut_ptr().cast(), packed) };
                    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(dd));
                    let dr = _mm_cvtss_f32(_mm_cvtph_ps(h));
                    *db = dr;
                    *sb = dr * isum as f32;
                }
            }
        }
    };
}

x86_kernels!(avx2, "avx2,fma,f16c", |a, b| {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
});

x86_kernels!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |a, b| { _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b) }
);
