//! Weights repacked at load into 16-row panels for AVX-512 VNNI (issue 3): Q8_0, Q4_0
//! and Q4_1.
//!
//! Why: the block-at-a-time kernels (`x86.rs`) spend about five vector ops (expand or
//! sign trick, one 256-bit `vpdpbusd`, convert, scale, FMA) per 32 multiply-adds of one
//! weight row and one activation row, and reduce every row's eight lanes at the end,
//! where prefill on SmolLM2 Q8_0 spent most of its time (`benches/RESULTS.md`, "Kernel
//! choices"). With sixteen weight rows
//! interleaved by groups of four columns, one 512-bit `vpdpbusd` multiplies four
//! activation bytes (broadcast from memory) with four bytes of each of the sixteen rows,
//! so a 32-element block of sixteen rows against one activation row is eight
//! `vpdpbusd`, one convert and one FMA; the sixteen results land in the sixteen lanes of
//! one register (no horizontal sums); and the weight vectors of a block are loaded (and
//! for Q4, expanded) once for up to eight activation rows. This is the idea of
//! llama.cpp's repacked CPU GEMMs and of candle's `repack_x86`.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes:
//! - Q8_0: the activations are the unsigned side, offset by 128 (`q ^ 0x80`):
//!   `sum (q + 128) w = sum q w + 128 sum w`, so each block stores `-sum w` per row and
//!   the accumulator of a block starts at `-128 sum w`.
//! - Q4_0, Q4_1: the weight nibbles (0..15) are the unsigned side and the activations
//!   the signed one. Q4_0's `-8` offset is `-8 sum y` per activation block (exact, in
//!   i32); Q4_1's min is `m_w * d_y sum y` added in f32, as ggml does.
//!
//! Integer block dots are exact, so results differ from the scalar reference only in the
//! f32 summation order, and a row's result does not depend on the rows beside it.
//!
//! Layout, per panel of 16 rows (rows past `n` are zero), per 32-element block:
//! - Q8_0, 576 bytes: 16 f16 row scales, 16 i16 negated quant sums, then 8 groups of 16
//!   rows x 4 quant bytes (36 bytes per row and block against the file's 34).
//! - Q4_0, 288 bytes: 16 f16 scales, then 4 vectors of 16 rows x 4 bytes whose low
//!   nibbles are columns `4i..4i+4` and high nibbles `16+4i..16+4i+4` (ggml's own
//!   nibble order, so this is a transpose of the file's bytes; 18 bytes per row and
//!   block, as in the file).
//! - Q4_1, 320 bytes: as Q4_0 with 16 f16 mins after the scales (20, as in the file).
//!
//! The panels replace the weight in memory: the loader drops the mapped file pages it
//! read them from ([`crate::gguf::TensorView::release`]).

use super::blocks::{tag, WeightType, QK};
use super::quantize::{Q8x32Quantizer, QActs};
use super::{split_units, OutPtr, QMatrix};
use crate::{Error, Result};
use std::cell::RefCell;
use std::ops::Range;

/// Computes the output columns of the 16-row `panels` of `p` for every activation row.
///
/// # Safety
/// The CPU runs the level of the slot; `p` is of the slot's type; `acts` points at
/// activations prepared for it ([`PanelActs`]); `out` has `acts.m * n` values;
/// `panels.end` is at most the number of panels, and no other thread writes their
/// columns concurrently.
pub(crate) type PanelFn =
    unsafe fn(p: &Panels, acts: &PanelActs, out: OutPtr, panels: Range<usize>);

/// Weight rows per panel: the lanes of one 512-bit i32 register.
pub const PANEL_ROWS: usize = 16;
/// Activation rows per tile: eight f32 accumulators plus the eight weight vectors of a
/// block and a few temporaries fit the 32 vector registers.
const TILE_ROWS: usize = 8;

/// Type tags of the const-generic kernel.
const T_Q8_0: u8 = tag::Q8_0;
const T_Q4_0: u8 = tag::Q4_0;
const T_Q4_1: u8 = tag::Q4_1;

/// Bytes of one block of one panel.
const fn panel_block_bytes(t: u8) -> usize {
    match t {
        T_Q8_0 => 32 + 32 + 8 * 64,
        T_Q4_0 => 32 + 4 * 64,
        _ => 32 + 32 + 4 * 64,
    }
}

/// Where a panel block's quants start.
const fn quants_at(t: u8) -> usize {
    match t {
        T_Q4_0 => 32,
        _ => 64,
    }
}

/// One cache line; the panels are a `Vec` of these so every panel starts on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight `W[n, k]` of one of the panel types, in 16-row panels.
pub struct Panels {
    ty: WeightType,
    n: usize,
    k: usize,
    nb: usize,
    panels: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panels")
            .field("ty", &self.ty)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

/// Per-thread activation buffers, reused across calls.
#[derive(Default)]
struct Scratch {
    acts: QActs,
    /// Q8_0: the quants offset to unsigned (`q ^ 0x80`).
    unsigned: Vec<u8>,
    /// Q4_0: `sum q` per activation block.
    sums: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Raw views of one call's activation buffers, as the panel kernels read them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PanelActs {
    /// `m * k` activation bytes (unsigned for Q8_0, signed for Q4).
    pub q: *const u8,
    /// `m * nb` block scales.
    pub d: *const f32,
    /// `m * nb` block sums `d * sum q` (Q4_1).
    pub s: *const f32,
    /// `m * nb` integer block sums (Q4_0).
    pub sums: *const i32,
    pub m: usize,
}

/// [`super::KernelConfig::panels_wanted`] of the process's config: whether a loader
/// should repack a weight of type `ty`.
pub fn wanted(ty: WeightType) -> bool {
    super::KernelConfig::global().panels_wanted(ty)
}

fn panel_tag(ty: WeightType) -> Option<u8> {
    match ty {
        WeightType::Q8_0 => Some(T_Q8_0),
        WeightType::Q4_0 => Some(T_Q4_0),
        WeightType::Q4_1 => Some(T_Q4_1),
        _ => None,
    }
}

impl Panels {
    /// Whether `ty` has a panel layout.
    pub fn supports(ty: WeightType) -> bool {
        panel_tag(ty).is_some()
    }

    /// Repacks a Q8_0, Q4_0 or Q4_1 matrix. Pure data movement: no float is recomputed.
    pub fn repack(w: &QMatrix<'_>) -> Result<Self> {
        Self::repack_with(w, |_| {})
    }

    /// [`Panels::repack`], calling `done(bytes)` with each range of `w`'s bytes it has
    /// finished reading (whole rows, in order), so a caller can give a mapped file's
    /// pages back while it goes: the file and the panels then coexist for a few rows,
    /// not for a whole tensor (a vocabulary-sized head is tens of MB).
    pub fn repack_with(w: &QMatrix<'_>, mut done: impl FnMut(Range<usize>)) -> Result<Self> {
        let ty = w.weight_type();
        let t = panel_tag(ty).ok_or_else(|| {
            Error::InvalidInput(format!("weight panels: cannot repack a {ty:?} weight"))
        })?;
        let (n, k) = (w.rows(), w.cols());
        let nb = k / QK;
        let panels = n.div_ceil(PANEL_ROWS);
        let pbb = panel_block_bytes(t);
        let len = panels * nb * pbb;
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        // SAFETY: `Line` is `repr(C)` around `[u8; 64]`, so the lines are
        // `lines.len() * 64` initialized bytes; the view ends before `lines` is moved.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), len) };
        let (row_bytes, bb) = (w.row_bytes(), ty.block_bytes());
        let qa = quants_at(t);
        // Report progress about every MiB of source rows.
        let report_every = (1 << 20) / (PANEL_ROWS * row_bytes).max(1) + 1;
        let mut reported = 0;
        for (pi, panel) in bytes.chunks_exact_mut(nb * pbb).enumerate() {
            for (b, pb) in panel.chunks_exact_mut(pbb).enumerate() {
                for r in 0..PANEL_ROWS.min(n - pi * PANEL_ROWS) {
                    let at = (pi * PANEL_ROWS + r) * row_bytes + b * bb;
                    let blk = &w.data[at..at + bb];
                    // The f16 scale (and Q4_1's f16 min right after it).
                    pb[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
                    match t {
                        T_Q8_0 => {
                            let sum: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
                            // |sum| <= 32 * 128, so the negation fits an i16.
                            let neg = (-sum) as i16;
                            pb[32 + 2 * r..34 + 2 * r].copy_from_slice(&neg.to_le_bytes());
                            for j in 0..8 {
                                let o = qa + j * 64 + r * 4;
                                pb[o..o + 4].copy_from_slice(&blk[2 + 4 * j..6 + 4 * j]);
                            }
                        }
                        _ => {
                            let qs = if t == T_Q4_1 {
                                pb[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
                                &blk[4..20]
                            } else {
                                &blk[2..18]
                            };
                            for i in 0..4 {
                                let o = qa + i * 64 + r * 4;
                                pb[o..o + 4].copy_from_slice(&qs[4 * i..4 * i + 4]);
                            }
                        }
                    }
                }
            }
            if (pi + 1) % report_every == 0 || pi + 1 == panels {
                let end = ((pi + 1) * PANEL_ROWS).min(n) * row_bytes;
                done(reported..end);
                reported = end;
            }
        }
        Ok(Self {
            ty,
            n,
            k,
            nb,
            panels,
            lines,
        })
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// `(n, k)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes of the panels.
    pub fn bytes(&self) -> usize {
        let t = panel_tag(self.ty).map_or(0, panel_block_bytes);
        self.panels * self.nb * t
    }

    /// `y[m, n] = x[m, k] · W^T` on up to `threads` threads with the panel `kernel`,
    /// activations quantized by `quantize` (the kernel table chooses both:
    /// [`Panels::matmul`]).
    ///
    /// # Safety
    /// `kernel` is a panel kernel for this type and `quantize` a quantizer, both of
    /// levels this CPU runs.
    pub(crate) unsafe fn run(
        &self,
        kernel: PanelFn,
        quantize: Q8x32Quantizer,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        threads: usize,
    ) -> Result<()> {
        if x.len() != m * self.k || y.len() != m * self.n {
            return Err(Error::InvalidInput(format!(
                "weight panels: x has {} values and y {}, expected {m} x {} and {m} x {}",
                x.len(),
                y.len(),
                self.k,
                self.n
            )));
        }
        if m == 0 || self.n == 0 {
            return Ok(());
        }
        let out = OutPtr {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        };
        let run = |sc: &mut Scratch| {
            // SAFETY: the caller guarantees the CPU runs `quantize`.
            unsafe { sc.acts.fill_with(x, m, self.k, quantize) };
            sc.unsigned.clear();
            sc.sums.clear();
            match self.ty {
                WeightType::Q8_0 => sc
                    .unsigned
                    .extend(sc.acts.qs.iter().map(|&q| (q as u8) ^ 0x80)),
                WeightType::Q4_0 => sc.sums.extend(
                    sc.acts
                        .qs
                        .chunks_exact(QK)
                        .map(|b| b.iter().map(|&q| q as i32).sum::<i32>()),
                ),
                _ => {}
            }
            let sc = &*sc;
            split_units(self.panels, 1, self.n * self.nb * m, threads, |p| {
                self.run_panels(sc, out, kernel, p)
            });
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut sc) => run(&mut sc),
            // Re-entered on this thread: fresh buffers rather than the ones in use.
            Err(_) => run(&mut Scratch::default()),
        });
        Ok(())
    }

    /// Runs `kernel` (selected by `matmul` for this type) over `panels`.
    fn run_panels(&self, sc: &Scratch, out: OutPtr, kernel: PanelFn, panels: Range<usize>) {
        debug_assert!(panels.end <= self.panels && sc.acts.k == self.k);
        let a = PanelActs {
            // Q8_0 reads the unsigned copy; Q4 the signed quants as bytes.
            q: if self.ty == WeightType::Q8_0 {
                sc.unsigned.as_ptr()
            } else {
                sc.acts.qs.as_ptr().cast()
            },
            d: sc.acts.d.as_ptr(),
            s: sc.acts.s.as_ptr(),
            sums: sc.sums.as_ptr(),
            m: sc.acts.m,
        };
        // SAFETY: `matmul` selected `kernel` for this type at a level the CPU has; the
        // panels hold `self.panels` panels of `nb` blocks of this type; the activation
        // buffers were filled for `m` rows of `k` (the one this type reads: `unsigned`
        // for Q8_0, `sums` for Q4_0); `out` has `m * n` values and the threads of one
        // call get disjoint panel ranges.
        unsafe { kernel(self, &a, out, panels) }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{
        panel_block_bytes, quants_at, OutPtr, PanelActs as Acts, Panels, Range, PANEL_ROWS, QK,
        TILE_ROWS, T_Q4_0, T_Q4_1, T_Q8_0,
    };
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI and F16C; `p` is of type `T`; `a` points at
    /// `a.m` activation rows of `p.k` (and what type `T` reads of them); `out` has
    /// `a.m * p.n` values; no other thread writes the columns of `panels` concurrently;
    /// `panels.end <= p.panels`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn gemm<const T: u8>(
        p: &Panels,
        a: &Acts,
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
            let mut c0 = 0;
            while c0 < a.m {
                let cn = (a.m - c0).min(TILE_ROWS);
                // SAFETY: panel pi and activation rows c0..c0 + cn exist; row c0,
                // column pi * 16 is inside `out` (caller contract).
                let t = unsafe {
                    Tile {
                        w: base.add(pi * p.nb * panel_block_bytes(T)),
                        nb: p.nb,
                        k: p.k,
                        q: a.q.add(c0 * p.k),
                        d: a.d.add(c0 * p.nb),
                        s: a.s.add(c0 * p.nb),
                        sums: a.sums.wrapping_add(c0 * p.nb),
                        y: out.ptr.add(c0 * p.n + pi * PANEL_ROWS),
                        n: p.n,
                        mask,
                    }
                };
                // SAFETY: forwarded contract; the tile covers rows c0..c0 + cn.
                unsafe {
                    match cn {
                        1 => t.run::<T, 1>(),
                        2 => t.run::<T, 2>(),
                        3 => t.run::<T, 3>(),
                        4 => t.run::<T, 4>(),
                        5 => t.run::<T, 5>(),
                        6 => t.run::<T, 6>(),
                        7 => t.run::<T, 7>(),
                        _ => t.run::<T, 8>(),
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
        q: *const u8,
        d: *const f32,
        s: *const f32,
        sums: *const i32,
        y: *mut f32,
        n: usize,
        mask: __mmask16,
    }

    impl Tile {
        /// # Safety
        /// `w` points at a panel of `nb` blocks of type `T`; `q`, `d` (and `s` for
        /// Q4_1, `sums` for Q4_0) at `C` activation rows (row strides `k`, `nb`); `y` at
        /// `C` output rows (stride `n`) whose masked lanes this thread owns.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn run<const T: u8, const C: usize>(&self) {
            let nibbles = _mm512_set1_epi8(0x0F);
            let mut acc = [_mm512_setzero_ps(); C];
            for b in 0..self.nb {
                // SAFETY: block b of the panel, `panel_block_bytes(T)` bytes from here.
                let pb = unsafe { self.w.add(b * panel_block_bytes(T)) };
                // SAFETY: the loads below stay inside this panel block's layout.
                let (dw, second, wq) = unsafe {
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(pb.cast()));
                    let second = _mm256_loadu_si256(pb.add(32).cast());
                    let qa = pb.add(quants_at(T));
                    let mut wq = [_mm512_setzero_si512(); 8];
                    if T == T_Q8_0 {
                        for (j, v) in wq.iter_mut().enumerate() {
                            *v = _mm512_loadu_si512(qa.add(j * 64).cast());
                        }
                    } else {
                        for i in 0..4 {
                            let v = _mm512_loadu_si512(qa.add(i * 64).cast());
                            wq[i] = _mm512_and_si512(v, nibbles);
                            wq[i + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibbles);
                        }
                    }
                    (dw, second, wq)
                };
                // Q8_0: -128 sum w per row; Q4_1: the f16 mins.
                let corr = if T == T_Q8_0 {
                    _mm512_slli_epi32::<7>(_mm512_cvtepi16_epi32(second))
                } else {
                    _mm512_setzero_si512()
                };
                let mins = if T == T_Q4_1 {
                    _mm512_cvtph_ps(second)
                } else {
                    _mm512_setzero_ps()
                };
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: activation row c has k = nb * 32 bytes and nb scales.
                    let (xp, dx) = unsafe {
                        (
                            self.q.add(c * self.k + b * QK),
                            *self.d.add(c * self.nb + b),
                        )
                    };
                    // SAFETY: 4 bytes at 4j < 32 of this block of row c.
                    let bc = |j: usize| {
                        _mm512_set1_epi32(unsafe {
                            std::ptr::read_unaligned(xp.add(4 * j).cast::<i32>())
                        })
                    };
                    let start = if T == T_Q4_0 {
                        // SAFETY: Q4_0 calls fill `sums` for every activation block.
                        _mm512_set1_epi32(-8 * unsafe { *self.sums.add(c * self.nb + b) })
                    } else {
                        corr
                    };
                    // Q8_0: unsigned activations x signed weights; Q4: the reverse.
                    let step = |acc: __m512i, j: usize| {
                        if T == T_Q8_0 {
                            _mm512_dpbusd_epi32(acc, bc(j), wq[j])
                        } else {
                            _mm512_dpbusd_epi32(acc, wq[j], bc(j))
                        }
                    };
                    let dot = if C == 1 {
                        // One row: two chains, so the eight dependent `vpdpbusd` do not
                        // serialize on their latency.
                        let (mut e, mut o) = (start, _mm512_setzero_si512());
                        for j in (0..8).step_by(2) {
                            e = step(e, j);
                            o = step(o, j + 1);
                        }
                        _mm512_add_epi32(e, o)
                    } else {
                        (0..8).fold(start, step)
                    };
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *a);
                    if T == T_Q4_1 {
                        // SAFETY: Q4_1 calls have a block sum per activation block.
                        let sy = unsafe { *self.s.add(c * self.nb + b) };
                        *a = _mm512_fmadd_ps(mins, _mm512_set1_ps(sy), *a);
                    }
                }
            }
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: the masked lanes of output row c are this thread's (contract).
                unsafe { _mm512_mask_storeu_ps(self.y.add(c * self.n), self.mask, *a) };
            }
        }
    }
}
