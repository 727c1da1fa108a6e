//! x86-64 SIMD kernels for the K-quants ([`super::kquants`]) against Q8_K activations,
//! after ggml's AVX2 `ggml_vec_dot_q{4,5,6}_K_q8_K`.
//!
//! Per super-block and weight row, the quants are expanded to eight vectors of 32
//! unsigned bytes (`q <= 63`, so `vpmaddubsw` against the i8 activations cannot
//! saturate: `2 * 63 * 128 < 2^15`), and the sub-block scales to i16 vectors, one per 32
//! elements (Q6_K's two groups of 16 per vector get one scale each half). The weight
//! block is decoded once per tile of up to four activation rows.
//!
//! Every per-super-block integer is reduced to a scalar before the f32 step, which is
//! written exactly as in [`super::kquants::dot_row`]: the SIMD results are bit-identical
//! to the scalar reference, and independent of tiling and threads.
//!
//! The AVX-512 tier is the same code compiled with AVX512VL/VNNI enabled: `vpdpwssd`
//! fuses the i16 scale multiply with the accumulation, and the 16 extra vector
//! registers keep a decoded super-block out of memory. K-quants gain nothing from
//! `vpdpbusd`, whose 4-way sums would cross Q6_K's 16-element scale groups.

use super::blocks::{tag, QK_K};
use super::kquants::Q8KActs;
use super::{OutPtr, QMatrix};
use std::arch::x86_64::*;
use std::ops::Range;

/// How many tiles ahead the weight rows are prefetched.
const PF_TILES: usize = 2;

const T_Q4K: u8 = tag::Q4K;
const T_Q5K: u8 = tag::Q5K;
const T_Q6K: u8 = tag::Q6K;

/// The SIMD twin of [`super::kquants::quantize_q8k_scalar`], bit-identical to it.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let top = _mm256_set1_ps(127.0);
    const RN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let blocks = x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(d.iter_mut().zip(bsums.chunks_exact_mut(16)));
    for ((xb, qb), (db, sb)) in blocks {
        let p = xb.as_ptr();
        let mut mx = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            // SAFETY: xb has exactly 256 floats.
            let v = unsafe { _mm256_loadu_ps(p.add(8 * i)) };
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        if amax == 0.0 {
            *db = 0.0;
            qb.fill(0);
            sb.fill(0);
            continue;
        }
        // The first value of largest magnitude, as the scalar loop picks it (NaN-free
        // input: `amax` is one of the |x|).
        let max = xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let mul = _mm256_set1_ps(iscale);
        for i in 0..QK_K / 32 {
            // SAFETY: 32 * i + 32 <= 256 floats of xb.
            let v = unsafe {
                [
                    _mm256_loadu_ps(p.add(32 * i)),
                    _mm256_loadu_ps(p.add(32 * i + 8)),
                    _mm256_loadu_ps(p.add(32 * i + 16)),
                    _mm256_loadu_ps(p.add(32 * i + 24)),
                ]
            };
            let q = v.map(|vi| {
                let r = _mm256_round_ps::<RN>(_mm256_mul_ps(mul, vi));
                _mm256_cvtps_epi32(_mm256_min_ps(r, top))
            });
            let lo = _mm256_packs_epi32(q[0], q[1]);
            let hi = _mm256_packs_epi32(q[2], q[3]);
            let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
            // SAFETY: qb has exactly 256 bytes; 32 * i + 32 <= 256.
            unsafe { _mm256_storeu_si256(qb.as_mut_ptr().add(32 * i).cast(), packed) };
        }
        for (s, g) in sb.iter_mut().zip(qb.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        *db = 1.0 / iscale;
    }
}

macro_rules! k_kernels {
    ($modname:ident, $features:literal, |$s:ident, $p:ident, $sc:ident| $madd:block) => {
        pub(crate) mod $modname {
            use super::{OutPtr, Q8KActs, QMatrix, Range, PF_TILES, QK_K, T_Q4K, T_Q5K, T_Q6K};
            use std::arch::x86_64::*;

            /// `s + sum of adjacent pairs of p * sc` (i16 x i16 -> i32).
            #[inline]
            #[target_feature(enable = $features)]
            fn madd_acc($s: __m256i, $p: __m256i, $sc: __m256i) -> __m256i $madd

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum128(v: __m128i) -> i32 {
                let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
                _mm_cvtsi128_si32(s)
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256i) -> i32 {
                hsum128(_mm_add_epi32(
                    _mm256_castsi256_si128(v),
                    _mm256_extracti128_si256::<1>(v),
                ))
            }

            /// The f16 at `p` as f32.
            ///
            /// # Safety
            /// `p..p + 2` must be readable.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn f16_at(p: *const u8) -> f32 {
                // SAFETY: the caller guarantees 2 readable bytes; the read is unaligned.
                let bits = unsafe { std::ptr::read_unaligned(p.cast::<u16>()) };
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
            }

            const fn block_bytes(t: u8) -> usize {
                match t {
                    T_Q4K => 144,
                    T_Q5K => 176,
                    _ => 210,
                }
            }

            /// One decoded weight super-block.
            struct Decoded {
                /// Unsigned quants, 32 elements per vector in element order.
                q: [__m256i; 8],
                /// i16 scale per element of the `vpmaddubsw` pairs of `q[j]`.
                scl: [__m256i; 8],
                /// Q4_K / Q5_K: the eight mins as i16 (low half used). Q6_K: the 16
                /// scales as i16.
                mins: __m256i,
                d: f32,
                dmin: f32,
            }

            /// Shuffles that broadcast i16 lane `j` (bytes `2j, 2j + 1`) of a 128-bit
            /// vector to all lanes.
            const fn lane_bcast(j: usize) -> [u8; 16] {
                let mut m = [0u8; 16];
                let mut i = 0;
                while i < 8 {
                    m[2 * i] = 2 * j as u8;
                    m[2 * i + 1] = 2 * j as u8 + 1;
                    i += 1;
                }
                m
            }

            /// Shuffles that spread i8 scales `2j` and `2j + 1` to 8 bytes each.
            const fn pair_spread(j: usize) -> [u8; 16] {
                let mut m = [0u8; 16];
                let mut i = 0;
                while i < 8 {
                    m[i] = 2 * j as u8;
                    m[8 + i] = 2 * j as u8 + 1;
                    i += 1;
                }
                m
            }

            /// # Safety
            /// `blk` points at one readable super-block of type `T`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn decode<const T: u8>(blk: *const u8) -> Decoded {
                // SAFETY (whole body): only `T`'s block layout is read, inside the
                // block; intrinsics are enabled by the callers' target features.
                unsafe {
                    let m4 = _mm256_set1_epi8(0x0F);
                    let mut q = [_mm256_setzero_si256(); 8];
                    let mut scl = [_mm256_setzero_si256(); 8];
                    if T == T_Q6K {
                        let m30 = _mm256_set1_epi8(0x30);
                        for n in 0..2 {
                            let ql0 = _mm256_loadu_si256(blk.add(64 * n).cast());
                            let ql1 = _mm256_loadu_si256(blk.add(64 * n + 32).cast());
                            let h = _mm256_loadu_si256(blk.add(128 + 32 * n).cast());
                            q[4 * n] = _mm256_or_si256(
                                _mm256_and_si256(ql0, m4),
                                _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30),
                            );
                            q[4 * n + 1] = _mm256_or_si256(
                                _mm256_and_si256(ql1, m4),
                                _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30),
                            );
                            q[4 * n + 2] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                _mm256_and_si256(h, m30),
                            );
                            q[4 * n + 3] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
                            );
                        }
                        let sc = _mm_loadu_si128(blk.add(192).cast());
                        for (j, s) in scl.iter_mut().enumerate() {
                            let spread = _mm_loadu_si128(PAIR_SPREAD[j].as_ptr().cast());
                            *s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, spread));
                        }
                        Decoded {
                            q,
                            scl,
                            mins: _mm256_cvtepi8_epi16(sc),
                            d: f16_at(blk.add(208)),
                            dmin: 0.0,
                        }
                    } else {
                        let qs = blk.add(if T == T_Q5K { 48 } else { 16 });
                        let one = _mm256_set1_epi8(1);
                        let mut h = if T == T_Q5K {
                            _mm256_loadu_si256(blk.add(16).cast())
                        } else {
                            _mm256_setzero_si256()
                        };
                        for j in 0..4 {
                            let raw = _mm256_loadu_si256(qs.add(32 * j).cast());
                            let mut lo = _mm256_and_si256(raw, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
                            if T == T_Q5K {
                                // Bit 2j (then 2j + 1) of every qh byte, moved to bit 4;
                                // the 16-bit shifts leak bits across bytes only above
                                // the masked one.
                                lo = _mm256_or_si256(
                                    lo,
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(h, one)),
                                );
                                h = _mm256_srli_epi16::<1>(h);
                                hi = _mm256_or_si256(
                                    hi,
                                    _mm256_slli_epi16::<4>(_mm256_and_si256(h, one)),
                                );
                                h = _mm256_srli_epi16::<1>(h);
                            }
                            q[2 * j] = lo;
                            q[2 * j + 1] = hi;
                        }
                        // ggml's unpacking of the 12 scale bytes: bytes 0..8 of `u` are
                        // the scales, 8..16 the mins.
                        const KM1: u32 = 0x3f3f_3f3f;
                        const KM2: u32 = 0x0f0f_0f0f;
                        const KM3: u32 = 0x0303_0303;
                        let s = blk.add(4);
                        let u0 = std::ptr::read_unaligned(s.cast::<u32>());
                        let u1 = std::ptr::read_unaligned(s.add(4).cast::<u32>());
                        let u2 = std::ptr::read_unaligned(s.add(8).cast::<u32>());
                        let u = [
                            u0 & KM1,
                            (u2 & KM2) | (((u0 >> 6) & KM3) << 4),
                            u1 & KM1,
                            ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4),
                        ];
                        let sm = _mm_loadu_si128(u.as_ptr().cast());
                        let sc16 = _mm256_cvtepu8_epi16(sm);
                        let sc_lo = _mm256_castsi256_si128(sc16);
                        for (j, s) in scl.iter_mut().enumerate() {
                            let b = _mm_loadu_si128(LANE_BCAST[j].as_ptr().cast());
                            let v = _mm_shuffle_epi8(sc_lo, b);
                            *s = _mm256_set_m128i(v, v);
                        }
                        Decoded {
                            q,
                            scl,
                            mins: _mm256_permute2x128_si256::<0x01>(sc16, sc16),
                            d: f16_at(blk),
                            dmin: f16_at(blk.add(2)),
                        }
                    }
                }
            }

            static LANE_BCAST: [[u8; 16]; 8] = [
                lane_bcast(0),
                lane_bcast(1),
                lane_bcast(2),
                lane_bcast(3),
                lane_bcast(4),
                lane_bcast(5),
                lane_bcast(6),
                lane_bcast(7),
            ];

            static PAIR_SPREAD: [[u8; 16]; 8] = [
                pair_spread(0),
                pair_spread(1),
                pair_spread(2),
                pair_spread(3),
                pair_spread(4),
                pair_spread(5),
                pair_spread(6),
                pair_spread(7),
            ];

            /// One `R x C` tile: weight rows at `w + r * row_bytes`, activation row `c`
            /// at quants `xq + c * k`, scales `xd + c * nb`, sums `xb + c * nb * 16`.
            ///
            /// # Safety
            /// The `R` rows of `nb` super-blocks of type `T` and the `C` activation
            /// rows of `nb` super-blocks must be readable through these pointers.
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
                xb: *const i16,
            ) -> [[f32; C]; R] {
                let bb = block_bytes(T);
                let mut acc = [[0f32; C]; R];
                for b in 0..nb {
                    let mut dy = [0f32; C];
                    let mut bs = [_mm256_setzero_si256(); C];
                    let mut bs32 = [_mm_setzero_si128(); C];
                    for c in 0..C {
                        // SAFETY: activation row c has nb super-blocks (caller
                        // contract); b < nb.
                        unsafe {
                            dy[c] = *xd.add(c * nb + b);
                            bs[c] = _mm256_loadu_si256(xb.add((c * nb + b) * 16).cast());
                        }
                        bs32[c] = _mm_hadd_epi16(
                            _mm256_castsi256_si128(bs[c]),
                            _mm256_extracti128_si256::<1>(bs[c]),
                        );
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        // SAFETY: weight row r has nb blocks of bb bytes (caller
                        // contract).
                        let blk = unsafe { w.add(r * row_bytes + b * bb) };
                        // Stream the rows of the tile after next into L1 while this one
                        // runs; `wrapping_add` because it may point past the weights
                        // (a prefetch never faults).
                        let ahead = blk.wrapping_add(PF_TILES * R * row_bytes);
                        let mut off = 0;
                        while off < bb {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off).cast());
                            off += 64;
                        }
                        // SAFETY: blk is one whole super-block of type T.
                        let dec = unsafe { decode::<T>(blk) };
                        for c in 0..C {
                            let mut s = _mm256_setzero_si256();
                            for j in 0..8 {
                                // SAFETY: 32 quants of activation row c, super-block b.
                                let y = unsafe {
                                    _mm256_loadu_si256(xq.add(c * k + b * QK_K + 32 * j).cast())
                                };
                                let p = _mm256_maddubs_epi16(dec.q[j], y);
                                s = madd_acc(s, p, dec.scl[j]);
                            }
                            let isum = hsum(s);
                            if T == T_Q6K {
                                let msum = hsum(_mm256_madd_epi16(dec.mins, bs[c]));
                                let isum = isum - 32 * msum;
                                acc_r[c] += (dec.d * dy[c]) * isum as f32;
                            } else {
                                let mins = _mm256_castsi256_si128(dec.mins);
                                let msum = hsum128(_mm_madd_epi16(mins, bs32[c]));
                                acc_r[c] += (dec.d * dy[c]) * isum as f32
                                    - (dec.dmin * dy[c]) * msum as f32;
                            }
                        }
                    }
                }
                acc
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
                acts: &Q8KActs,
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
                            acts.bsums.as_ptr().add(c0 * nb * 16),
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
                acts: &Q8KActs,
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
                            3 => run::<T, 1, 3>(w, acts, out, n, &rows, &mut r, c0),
                            _ => run::<T, 1, 4>(w, acts, out, n, &rows, &mut r, c0),
                        }
                        c0 += cn;
                    }
                }
            }

            /// `y[c, r] = sum_k w[r, k] * x[c, k]` for `r` in `rows`, every `c`, for the
            /// K-quant of tag `T`.
            ///
            /// # Safety
            /// The CPU supports this module's features; `w` is of the type of `T` and
            /// `acts` holds `acts.m` rows of `w.cols()`; `out` has room for
            /// `acts.m * w.rows()` values, `rows.end <= w.rows()`, and no other thread
            /// writes the columns `rows` concurrently.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn gemm<const T: u8>(
                w: &QMatrix<'_>,
                acts: &Q8KActs,
                out: OutPtr,
                rows: Range<usize>,
            ) {
                debug_assert!(rows.end <= w.n && acts.k == w.k && out.len == acts.m * w.n);
                // SAFETY: forwarded caller contract.
                unsafe { gemm_t::<T>(w.data, acts, out, w.n, rows) }
            }
        }
    };
}

k_kernels!(avx2, "avx2,fma,f16c", |s, p, sc| {
    _mm256_add_epi32(s, _mm256_madd_epi16(p, sc))
});

k_kernels!(
    avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |s, p, sc| { _mm256_dpwssd_epi32(s, p, sc) }
);
