//! Q8_0 weights repacked at load into 16-row panels for AVX-512 VNNI (issue 3).
//!
//! Why: the block-at-a-time kernels (`x86.rs`) spend about five vector ops (sign trick,
//! one 256-bit `vpdpbusd`, convert, scale, FMA) per 32 multiply-adds of one weight row
//! and one activation row, and reduce every row's eight lanes at the end. Prefill on
//! SmolLM2 Q8_0 spent 83% of its time there. With sixteen weight rows interleaved by
//! groups of four bytes, one 512-bit `vpdpbusd` multiplies four activation bytes
//! (broadcast from memory) with four bytes of each of the sixteen rows, so a 32-element
//! block of sixteen rows against one activation row is eight `vpdpbusd`, one convert and
//! one FMA, the sixteen results land in the sixteen lanes of one register (no horizontal
//! sums), and the eight weight vectors of a block are loaded once for up to eight
//! activation rows (llama.cpp's repacked `q8_0_16x8`-style GEMM, candle's `repack_x86`).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. The activations are the unsigned side,
//! offset by 128 (`q ^ 0x80`): `sum (q + 128) w = sum q w + 128 sum w`, so each block
//! stores `-sum w` per row and the kernel starts each block's accumulator at
//! `-128 sum w`. The integer block dot is exact, so results differ from the scalar
//! reference only in the f32 summation order.
//!
//! Layout, per panel of 16 rows (rows past `n` are zero), per 32-element block, 576
//! bytes (9 cache lines, so every block starts on a line): 16 f16 row scales, 16 i16
//! negated quant sums, then 8 groups of 16 rows x 4 quant bytes. That is 36 bytes per row
//! and block against the file's 34. The panels replace the weight in memory: the loader
//! drops the mapped file pages it read them from ([`crate::gguf::TensorView::release`]).

use super::blocks::{WeightType, QK};
use super::quantize::QActs;
use super::{pool, Isa, OutPtr, QMatrix, PAR_MIN_BLOCKS};
use crate::{Error, Result};
use std::cell::RefCell;
use std::ops::Range;

/// Weight rows per panel: the lanes of one 512-bit i32 register.
pub const PANEL_ROWS: usize = 16;
/// Bytes of one block of one panel.
const PB_BYTES: usize = 32 + 32 + 8 * 64;
/// Offsets inside a panel block.
const SCALES: usize = 0;
const SUMS: usize = 32;
const QUANTS: usize = 64;
/// Activation rows per tile: eight f32 accumulators plus the eight weight vectors of a
/// block and a few temporaries fit the 32 vector registers.
const TILE_ROWS: usize = 8;

/// One cache line; the panels are a `Vec` of these so every panel block is line-aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A Q8_0 weight `W[n, k]` in 16-row panels.
pub struct Q8Panels {
    n: usize,
    k: usize,
    nb: usize,
    panels: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for Q8Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8Panels")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

thread_local! {
    /// Quantized activations and their unsigned (offset) copy, reused across calls.
    static ACTS: RefCell<(QActs, Vec<u8>)> = RefCell::new((QActs::new(), Vec::new()));
}

impl Q8Panels {
    /// Whether this CPU runs the panel kernel (and the kernels' ISA cap allows it).
    pub fn available() -> bool {
        Isa::detect() == Isa::Avx512Vnni
    }

    /// Repacks a Q8_0 matrix. Pure data movement: no float is recomputed.
    pub fn repack(w: &QMatrix<'_>) -> Result<Self> {
        if w.weight_type() != WeightType::Q8_0 {
            return Err(Error::InvalidInput(format!(
                "Q8_0 panels: cannot repack a {:?} weight",
                w.weight_type()
            )));
        }
        let (n, k) = (w.rows(), w.cols());
        let nb = k / QK;
        let panels = n.div_ceil(PANEL_ROWS);
        let mut lines = vec![Line([0; 64]); panels * nb * PB_BYTES / 64];
        let row_bytes = w.row_bytes();
        let src = w.data;
        for (pi, panel) in lines.chunks_exact_mut(nb * PB_BYTES / 64).enumerate() {
            for (b, pb) in panel.chunks_exact_mut(PB_BYTES / 64).enumerate() {
                let mut buf = [0u8; PB_BYTES];
                for r in 0..PANEL_ROWS.min(n - pi * PANEL_ROWS) {
                    let row = pi * PANEL_ROWS + r;
                    let blk = &src[row * row_bytes + b * 34..row * row_bytes + (b + 1) * 34];
                    buf[SCALES + 2 * r..SCALES + 2 * r + 2].copy_from_slice(&blk[..2]);
                    let sum: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
                    // |sum| <= 32 * 128, so the negation fits an i16.
                    let neg = (-sum) as i16;
                    buf[SUMS + 2 * r..SUMS + 2 * r + 2].copy_from_slice(&neg.to_le_bytes());
                    for j in 0..8 {
                        let at = QUANTS + j * 64 + r * 4;
                        buf[at..at + 4].copy_from_slice(&blk[2 + 4 * j..2 + 4 * j + 4]);
                    }
                }
                for (line, chunk) in pb.iter_mut().zip(buf.chunks_exact(64)) {
                    line.0.copy_from_slice(chunk);
                }
            }
        }
        Ok(Self {
            n,
            k,
            nb,
            panels,
            lines,
        })
    }

    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    /// `y[m, n] = x[m, k] · W^T` on up to `threads` threads. Errors when the shapes do not
    /// fit or the CPU lacks AVX-512 VNNI.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<()> {
        if x.len() != m * self.k || y.len() != m * self.n {
            return Err(Error::InvalidInput(format!(
                "Q8_0 panels: x has {} values and y {}, expected {m} x {} and {m} x {}",
                x.len(),
                y.len(),
                self.k,
                self.n
            )));
        }
        if !Isa::Avx512Vnni.is_available() {
            return Err(Error::InvalidInput(
                "Q8_0 panels need AVX-512 VNNI, which this CPU lacks".into(),
            ));
        }
        if m == 0 || self.n == 0 {
            return Ok(());
        }
        let out = OutPtr {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        };
        let run = |acts: &mut QActs, xu: &mut Vec<u8>| {
            acts.fill(x, m, self.k, Isa::Avx512Vnni);
            xu.clear();
            xu.extend(acts.qs.iter().map(|&q| (q as u8) ^ 0x80));
            let (acts, xu) = (&*acts, &xu[..]);
            self.split(m, threads, |p| self.run_panels(acts, xu, out, p));
        };
        ACTS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut guard) => {
                let (acts, xu) = &mut *guard;
                run(acts, xu);
            }
            // Re-entered on this thread: fresh buffers rather than the ones in use.
            Err(_) => run(&mut QActs::new(), &mut Vec::new()),
        });
        Ok(())
    }

    /// Runs `f` over panel ranges, on the calling thread for small products.
    fn split(&self, m: usize, threads: usize, f: impl Fn(Range<usize>) + Sync) {
        let work = self.n * self.nb * m;
        let threads = if work < PAR_MIN_BLOCKS {
            1
        } else {
            threads.clamp(1, self.panels)
        };
        if threads == 1 {
            return f(0..self.panels);
        }
        // Two parts per thread, claimed dynamically (see `kernels::split_rows`).
        let parts = (threads * 2).min(self.panels);
        let per = self.panels.div_ceil(parts);
        let part = |t: usize| {
            let start = (t * per).min(self.panels);
            let end = ((t + 1) * per).min(self.panels);
            if start < end {
                f(start..end);
            }
        };
        if pool::use_rayon() {
            use rayon::prelude::*;
            (0..parts).into_par_iter().for_each(part);
        } else {
            pool::global().run(parts, &part);
        }
    }

    fn run_panels(&self, acts: &QActs, xu: &[u8], out: OutPtr, panels: Range<usize>) {
        debug_assert!(panels.end <= self.panels && acts.k == self.k && xu.len() == acts.m * self.k);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `matmul` checked AVX-512 VNNI; the panels hold `self.panels` panels
            // of `nb` blocks; `xu` and `acts.d` hold `m` rows; `out` has `m * n` values
            // and the threads of one call get disjoint panel ranges.
            unsafe { avx512::gemm(self, xu, &acts.d, acts.m, out, panels) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (acts, xu, out, panels);
            unreachable!("Q8_0 panels are only built where AVX-512 VNNI runs them");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{OutPtr, Q8Panels, Range, PANEL_ROWS, PB_BYTES, QK, QUANTS, SUMS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI and F16C; `xu` holds `m * p.k` bytes and `d`
    /// `m * p.nb` scales; `out` has `m * p.n` values; no other thread writes the
    /// columns of `panels` concurrently; `panels.end <= p.panels`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn gemm(
        p: &Q8Panels,
        xu: &[u8],
        d: &[f32],
        m: usize,
        out: OutPtr,
        panels: Range<usize>,
    ) {
        let base = p.lines.as_ptr().cast::<u8>();
        for pi in panels {
            let rows = PANEL_ROWS.min(p.n - pi * PANEL_ROWS);
            let mask: __mmask16 = if rows == PANEL_ROWS {
                0xFFFF
            } else {
                (1u16 << rows) - 1
            };
            // SAFETY: panel pi exists (caller contract).
            let w = unsafe { base.add(pi * p.nb * PB_BYTES) };
            let mut c0 = 0;
            while c0 < m {
                let cn = (m - c0).min(TILE_ROWS);
                let t = Tile {
                    w,
                    nb: p.nb,
                    k: p.k,
                    // SAFETY: rows c0..c0 + cn of the activations exist.
                    xu: unsafe { xu.as_ptr().add(c0 * p.k) },
                    d: unsafe { d.as_ptr().add(c0 * p.nb) },
                    // SAFETY: row c0, column pi * 16 is inside `out`.
                    y: unsafe { out.ptr.add(c0 * p.n + pi * PANEL_ROWS) },
                    n: p.n,
                    mask,
                };
                // SAFETY: forwarded contract; the tile covers rows c0..c0 + cn.
                unsafe {
                    match cn {
                        1 => t.run::<1>(),
                        2 => t.run::<2>(),
                        3 => t.run::<3>(),
                        4 => t.run::<4>(),
                        5 => t.run::<5>(),
                        6 => t.run::<6>(),
                        7 => t.run::<7>(),
                        _ => t.run::<8>(),
                    }
                }
                c0 += cn;
            }
        }
    }

    /// One panel against up to [`TILE_ROWS`] activation rows.
    struct Tile {
        w: *const u8,
        nb: usize,
        k: usize,
        xu: *const u8,
        d: *const f32,
        y: *mut f32,
        n: usize,
        mask: __mmask16,
    }

    impl Tile {
        /// # Safety
        /// `w` points at a panel of `nb` blocks; `xu`, `d` at `C` activation rows (row
        /// strides `k` and `nb`); `y` at `C` output rows (stride `n`) with the mask's
        /// lanes writable and owned by this thread.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn run<const C: usize>(&self) {
            let mut acc = [_mm512_setzero_ps(); C];
            for b in 0..self.nb {
                // SAFETY: block b of the panel: 576 bytes from here (caller contract).
                let pb = unsafe { self.w.add(b * PB_BYTES) };
                let (dw, corr, wq) = unsafe {
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(pb.cast()));
                    let sums = _mm512_cvtepi16_epi32(_mm256_loadu_si256(pb.add(SUMS).cast()));
                    let mut wq = [_mm512_setzero_si512(); 8];
                    for (j, v) in wq.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(pb.add(QUANTS + j * 64).cast());
                    }
                    (dw, _mm512_slli_epi32::<7>(sums), wq)
                };
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: activation row c has k = nb * 32 bytes and nb scales.
                    let (xp, dx) = unsafe {
                        (
                            self.xu.add(c * self.k + b * QK),
                            *self.d.add(c * self.nb + b),
                        )
                    };
                    let bc = |j: usize| {
                        // SAFETY: 4 bytes at 4j < 32 of this block of row c.
                        _mm512_set1_epi32(unsafe {
                            std::ptr::read_unaligned(xp.add(4 * j).cast::<i32>())
                        })
                    };
                    let dot = if C == 1 {
                        // One row: two chains, so the eight dependent `vpdpbusd` do not
                        // serialize on their latency.
                        let mut e = corr;
                        let mut o = _mm512_setzero_si512();
                        for j in (0..8).step_by(2) {
                            e = _mm512_dpbusd_epi32(e, bc(j), wq[j]);
                            o = _mm512_dpbusd_epi32(o, bc(j + 1), wq[j + 1]);
                        }
                        _mm512_add_epi32(e, o)
                    } else {
                        let mut s = corr;
                        for (j, w) in wq.iter().enumerate() {
                            s = _mm512_dpbusd_epi32(s, bc(j), *w);
                        }
                        s
                    };
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: the masked lanes of output row c are this thread's (contract).
                unsafe { _mm512_mask_storeu_ps(self.y.add(c * self.n), self.mask, *a) };
            }
        }
    }
}
