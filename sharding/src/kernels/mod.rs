//! Quantized CPU matmul kernels in llama.cpp's style (issue 3).
//!
//! `y[m, n] = x[m, k] · W[n, k]^T` for GGUF weights kept in ggml's block layout (see
//! [`blocks`]), with SIMD where the CPU has it ([`Isa`]) and portable scalar paths that
//! are the numerical references. Three families, by what the weights meet:
//! - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: each activation row is quantized to 8-bit blocks of
//!   32 ([`quantize`]), then every (weight block, activation block) pair is an exact
//!   integer dot product scaled by the two block scales ([`scalar`], `x86.rs`).
//! - Q4_K, Q5_K, Q6_K: activations quantized to 256-element Q8_K blocks, one exact
//!   integer sum per super-block ([`kquants`], `x86_kquants.rs`).
//! - F16, BF16: weights widened to f32 in registers against the f32 activations
//!   ([`floats`]).
//!
//! Q8_0, Q4_0 and Q4_1 on AVX-512 VNNI are repacked at load into 16-row panels
//! ([`panels`]), one 512-bit `vpdpbusd` per four columns of sixteen rows; the other
//! types read the file's blocks in place.
//!
//! Which function runs a (weight type, level) is one table (`table.rs`, in the manner of
//! ggml's type traits): per type, the activation format and a kernel slot per level,
//! for the block layout and for the panels; one row runner serves every type.
//!
//! Work is split over weight rows `n` across the threads of [`pool`], a persistent pool
//! whose workers spin briefly between matmuls (sized like rayon's, by
//! `RAYON_NUM_THREADS`, which `lamina --threads` sets).
//!
//! The weights are not copied unless repacked into panels: [`QLinear`] reads them in
//! place from the mapped file, or keeps the `Arc<QTensor>` (shared with candle's
//! `QMatMul` fallback and, for tied heads, with the embedding) and borrows its CPU bytes
//! per call. The quantized activations live in a thread-local buffer that is
//! reused across calls; the only allocation per call is the output tensor.
//!
//! Settings: [`KernelConfig`] reads every environment variable of the kernels, once
//! per process (`LAMINA_KERNELS=candle|all`, `LAMINA_KERNELS_ISA=scalar|avx2|avx512`,
//! `LAMINA_PANELS=off`, `LAMINA_POOL=rayon`, `LAMINA_POOL_SPIN_US`); see [`config`].
//!
//! Files, one job each:
//! - `config.rs`: [`KernelConfig`], the one reader of the environment; `isa.rs`:
//!   [`Isa`], the levels and which this CPU runs.
//! - `choice.rs`: which weights the executor gives to the kernels ([`preferred`],
//!   [`preferred_for`]); the measurements behind it are in `benches/RESULTS.md`.
//! - this file: [`QMatrix`], [`matmul`] and the split of its rows over the pool;
//!   `table.rs`: the kernel table and the one row runner; `linear.rs`: [`QLinear`].
//! - [`blocks`], [`quantize`]: block layouts and the 8-bit activation quantizer;
//!   [`scalar`], [`kquants`], [`floats`]: the reference kernels (and the Q8_K
//!   quantizer); `x86.rs`, `x86_kquants.rs` and [`floats`]: the AVX2 / AVX-512 ones.
//! - [`panels`]: the repacked layout and its kernel; [`pool`]: the threads.

pub mod blocks;
mod choice;
pub mod config;
pub mod floats;
mod isa;
pub mod kquants;
mod linear;
pub mod panels;
pub mod pool;
pub mod quantize;
pub mod scalar;
mod table;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_kquants;

use crate::{Error, Result};
pub use blocks::{WeightType, QK, QK_K};
pub use choice::{enabled, preferred, preferred_for};
pub use config::KernelConfig;
pub use isa::Isa;
pub use kquants::Q8KActs;
pub use linear::QLinear;
pub use panels::Panels;
pub use quantize::QActs;
use std::ops::Range;
pub use table::dequantize_block;

/// A borrowed weight matrix `W[n, k]` in ggml block layout, validated.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    ty: WeightType,
    n: usize,
    k: usize,
    data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// `data` must hold exactly `n` rows of `k / ty.block_elems()` blocks of `ty`.
    pub fn new(ty: WeightType, n: usize, k: usize, data: &'a [u8]) -> Result<Self> {
        let qk = ty.block_elems();
        if k == 0 || !k.is_multiple_of(qk) {
            return Err(Error::InvalidInput(format!(
                "quantized matmul: k = {k} is not a positive multiple of {qk} ({ty:?})"
            )));
        }
        let want = n
            .checked_mul(k / qk)
            .and_then(|b| b.checked_mul(ty.block_bytes()));
        if want != Some(data.len()) {
            return Err(Error::InvalidInput(format!(
                "quantized matmul: {ty:?} weight of shape ({n}, {k}) needs {want:?} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self { ty, n, k, data })
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes per weight row.
    fn row_bytes(&self) -> usize {
        self.k / self.ty.block_elems() * self.ty.block_bytes()
    }
}

/// A raw output pointer shared by the threads of one matmul, each writing its own
/// columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: an `OutPtr` is only used inside one `matmul` call while the `&mut [f32]` it
// was made from is borrowed, and the threads write disjoint indices.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i < len`, and no other thread reads or writes index `i` during the call.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, v: f32) {
        debug_assert!(i < self.len);
        // SAFETY: the caller guarantees `i` is in bounds and not shared.
        unsafe { *self.ptr.add(i) = v };
    }
}

/// Below this many (weight block x activation row) products a matmul runs on the calling
/// thread: waking the pool costs more than it saves.
const PAR_MIN_BLOCKS: usize = 4096;

/// `y[m, n] = x[m, k] · W[n, k]^T` with `isa` on up to `threads` threads. `x` is
/// row-major `m * k`, `y` row-major `m * n`.
pub fn matmul(
    w: &QMatrix<'_>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<()> {
    if x.len() != m * w.k || y.len() != m * w.n {
        return Err(Error::InvalidInput(format!(
            "quantized matmul: x has {} values and y {}, expected {m} x {} and {m} x {}",
            x.len(),
            y.len(),
            w.k,
            w.n
        )));
    }
    if !isa.is_available() {
        return Err(Error::InvalidInput(format!(
            "quantized matmul: {isa:?} is not supported by this CPU"
        )));
    }
    if m == 0 || w.n == 0 {
        return Ok(());
    }
    let out = OutPtr {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    // SAFETY: `isa` is available, `w` was validated by `QMatrix::new`, `x` has `m * k`
    // values and `out` `m * n` (all checked above).
    unsafe { table::traits(w.ty).blocks.run(w, x, m, out, isa, threads) }
}

/// Quantizes `x` (`m * k`) into new Q8_K activations with `isa` (the reference when
/// `Isa::Scalar`); `k` a multiple of 256.
pub fn quantize_acts_k(x: &[f32], m: usize, k: usize, isa: Isa) -> Result<Q8KActs> {
    if k == 0 || !k.is_multiple_of(QK_K) || x.len() != m * k || !isa.is_available() {
        return Err(Error::InvalidInput(format!(
            "quantize_acts_k: {} values as {m} x {k} with {isa:?}",
            x.len()
        )));
    }
    let mut a = Q8KActs::new();
    table::fill_q8k(&mut a, x, m, k, isa);
    Ok(a)
}

/// Quantizes `x` (`m * k`) into a new [`QActs`] with `isa` (the reference when
/// `Isa::Scalar`).
pub fn quantize_acts(x: &[f32], m: usize, k: usize, isa: Isa) -> Result<QActs> {
    if k == 0 || !k.is_multiple_of(QK) || x.len() != m * k || !isa.is_available() {
        return Err(Error::InvalidInput(format!(
            "quantize_acts: {} values as {m} x {k} with {isa:?}",
            x.len()
        )));
    }
    let mut a = QActs::new();
    table::fill_q8x32(&mut a, x, m, k, isa);
    Ok(a)
}

/// Runs `f` over `0..units` in chunks of whole multiples of `align`, on up to `threads`
/// threads, or on the calling thread when `work` (32-weight x activation-row products)
/// is below [`PAR_MIN_BLOCKS`].
pub(crate) fn split_units(
    units: usize,
    align: usize,
    work: usize,
    threads: usize,
    f: impl Fn(Range<usize>) + Sync,
) {
    let chunks = units.div_ceil(align);
    let threads = if work < PAR_MIN_BLOCKS {
        1
    } else {
        threads.clamp(1, chunks.max(1))
    };
    if threads == 1 {
        f(0..units);
        return;
    }
    // Two parts per thread: parts are claimed dynamically, so the halves of a late
    // thread's share go to whoever is free.
    let parts = (threads * 2).min(chunks);
    let per = units.div_ceil(parts).next_multiple_of(align);
    let part = |t: usize| {
        let start = (t * per).min(units);
        let end = ((t + 1) * per).min(units);
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
