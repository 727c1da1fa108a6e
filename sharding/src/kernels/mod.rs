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
//! The weights are not copied: [`QLinear`] keeps the `Arc<QTensor>` (shared with
//! candle's `QMatMul` fallback and, for tied heads, with the embedding) and borrows its
//! CPU bytes per call. The quantized activations live in a thread-local buffer that is
//! reused across calls; the only allocation per call is the output tensor.
//!
//! Settings: [`KernelConfig`] reads every environment variable of the kernels, once
//! per process (`LAMINA_KERNELS=candle|all`, `LAMINA_KERNELS_ISA=scalar|avx2|avx512`,
//! `LAMINA_PANELS=off`, `LAMINA_POOL=rayon`, `LAMINA_POOL_SPIN_US`); see [`config`].

pub mod blocks;
pub mod config;
pub mod floats;
mod isa;
pub mod kquants;
pub mod panels;
pub mod pool;
pub mod quantize;
pub mod scalar;
mod table;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_kquants;

use crate::gguf::TensorView;
use crate::{Error, Result};
pub use blocks::{WeightType, QK, QK_K};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
pub use config::KernelConfig;
pub use isa::Isa;
pub use kquants::Q8KActs;
pub use panels::Panels;
pub use quantize::QActs;
use std::ops::Range;
use std::sync::Arc;

/// Whether `LAMINA_KERNELS` leaves the kernels on (anything but `candle`).
pub fn enabled() -> bool {
    KernelConfig::global().enabled()
}

/// Whether the executor should use these kernels for a weight type by default.
///
/// A type is on only where the kernel bench (`cargo bench -p lamina-benches --bench
/// kernels`, lamina vs candle's `QMatMul`, 2 threads, GB/s of GGUF weight bytes, one run
/// per figure) measured lamina at least as fast for both m = 1 and m = 64 on 2048x2048
/// and 576x1536 weights:
/// - Q5_0 (13.1 vs 0.6 and 9.2 vs 0.4 GB/s at m = 1; 0.45 vs 0.02 and 0.55 vs 0.02 at
///   m = 64) and Q5_1 (16.7 vs 0.9, 23.1 vs 2.1; 0.45 vs 0.04, 0.77 vs 0.03): candle has
///   no SIMD kernel for them.
/// - F16 (96.6 vs 33.8, 30.8 vs 19.9; 2.29 vs 1.71, 1.70 vs 1.34) and BF16 (46.0 vs 30.3,
///   34.0 vs 22.1; 1.66 vs 1.34, 1.80 vs 1.24): candle multiplies an f32 copy it
///   dequantizes at load, twice the bytes (and twice the memory) of these.
///
/// - Q8_0 where AVX-512 VNNI runs [`Panels`] (weights repacked into 16-row panels at
///   load): before the panels, candle's own repacked VNNI path beat the block-at-a-time
///   kernel (107 vs 41 GB/s at m = 1 and 4.9 vs 1.2 at m = 64 on 2048x2048); the panels
///   beat candle end to end (synthetic TinyLlama-1.1B Q8_0, 1 thread, on a loaded
///   machine: prefill 107 vs 75 tok/s, decode 16.6 vs 10.2) in half its memory (candle
///   keeps the file's pages and its repacked copy).
///
/// Off, on candle:
/// - Q8_0 without AVX-512 VNNI, on candle's shapes (see [`preferred_for`]).
/// - Q4_K: candle repacks it too; lamina wins decode (17.4 vs 8.2, 13.3 vs 0.7) but
///   loses prefill on 2048x2048 (0.57 vs 2.92 GB/s).
/// - Q5_K: lamina wins prefill (1.16 vs 0.59, 1.06 vs 0.49) but was a hair behind at
///   decode on 2 threads in two runs (35.9 vs 37.5 and 23.7 vs 24.2; ahead on 1 thread,
///   22.0 vs 20.2 and 22.0 vs 17.5).
/// - Q6_K: candle repacks it for m > 1; lamina wins decode (26.1 vs 16.0, 19.1 vs 14.9)
///   but loses prefill on 576x1536 (0.70 vs 2.04; 1 thread: 0.65 vs 1.62 and 0.68 vs
///   1.21).
///
/// `LAMINA_KERNELS=all` opts every type in, to measure it.
pub fn preferred(ty: WeightType) -> bool {
    match ty {
        WeightType::Q4_0
        | WeightType::Q4_1
        | WeightType::Q5_0
        | WeightType::Q5_1
        | WeightType::F16
        | WeightType::BF16 => true,
        WeightType::Q8_0 if panels::wanted(WeightType::Q8_0) => true,
        WeightType::Q8_0 | WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => {
            KernelConfig::global().mode == config::KernelMode::All
        }
    }
}

/// [`preferred`], refined by the weight's shape: candle's fast paths for Q8_0 and Q4_K
/// are its repacked AVX-512 VNNI kernels, which it uses only when `k` is a multiple of 256
/// and `n` of 16 (`candle_core::quantized::repack_x86::select`); elsewhere it falls back
/// to a generic kernel far slower than these. SmolLM2's weights (k = 576) and its tied
/// Q8_0 output head are such shapes: the end-to-end bench measured SmolLM2 Q8_0 decode
/// at 0.44x llama.cpp on candle's path (benches/RESULTS.md), so those go to lamina.
pub fn preferred_for(ty: WeightType, n: usize, k: usize) -> bool {
    if preferred(ty) {
        return true;
    }
    let candle_repacks =
        k.is_multiple_of(256) && n.is_multiple_of(16) && Isa::Avx512Vnni.is_available();
    match ty {
        WeightType::Q8_0 | WeightType::Q4K => !candle_repacks,
        _ => false,
    }
}

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
    a.fill(x, m, k, isa);
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
    a.fill(x, m, k, isa);
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

/// Where a [`QLinear`]'s weight bytes live.
#[derive(Clone, Debug)]
enum WeightBytes {
    /// Inside a candle `QTensor` (shared with a candle fallback or a tied embedding).
    Tensor(Arc<QTensor>),
    /// In the memory-mapped model file, read in place: no copy at load.
    View(TensorView),
    /// Q8_0 repacked into panels (the file's pages for it released).
    Panels(Arc<Panels>),
}

/// A linear layer `y = x · W^T` on a quantized CPU weight, run by these kernels.
#[derive(Clone, Debug)]
pub struct QLinear {
    weight: WeightBytes,
    ty: WeightType,
    n: usize,
    k: usize,
}

impl QLinear {
    /// `Some` when the kernels can run this weight: a supported block type, 2-D
    /// `(n, k)` with `k` a multiple of its block size (32, or 256 for K-quants), on the CPU, with borrowable bytes.
    pub fn new(weight: Arc<QTensor>) -> Option<Self> {
        let ty = WeightType::from_ggml(weight.dtype())?;
        if !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        {
            let data = weight.data().ok()?;
            if !matches!(data, std::borrow::Cow::Borrowed(_)) {
                return None;
            }
            let w = QMatrix::new(ty, n, k, &data).ok()?;
            if panels::wanted(ty) {
                let panels = Panels::repack(&w).ok()?;
                return Some(Self {
                    weight: WeightBytes::Panels(Arc::new(panels)),
                    ty,
                    n,
                    k,
                });
            }
        }
        Some(Self {
            weight: WeightBytes::Tensor(weight),
            ty,
            n,
            k,
        })
    }

    /// A layer on a weight `(n, k)` read in place from a model file. `None` when the
    /// kernels do not cover `dtype`; an error when the bytes do not fit the shape.
    pub fn from_view(
        view: TensorView,
        dtype: GgmlDType,
        n: usize,
        k: usize,
    ) -> Result<Option<Self>> {
        let Some(ty) = WeightType::from_ggml(dtype) else {
            return Ok(None);
        };
        let w = QMatrix::new(ty, n, k, view.as_bytes())?;
        if panels::wanted(ty) {
            // The panels replace the weight: give its file pages back as the repacking
            // goes (a tied embedding that shares them faults in the rows it looks up
            // again).
            let panels = Panels::repack_with(&w, |bytes| view.release_range(bytes))?;
            return Ok(Some(Self {
                weight: WeightBytes::Panels(Arc::new(panels)),
                ty,
                n,
                k,
            }));
        }
        Ok(Some(Self {
            weight: WeightBytes::View(view),
            ty,
            n,
            k,
        }))
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    /// `(n, k)`: output and input widths.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `x[.., k] -> y[.., n]`, or `None` when `x` is not an f32 CPU tensor (the caller
    /// falls back to candle).
    pub fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let dims = x.dims();
        let Some((&k, batch)) = dims.split_last() else {
            return Ok(None);
        };
        if k != self.k {
            return Err(Error::InvalidInput(format!(
                "linear layer: input has {k} columns, the weight {}",
                self.k
            )));
        }
        let m: usize = batch.iter().product();
        let x = x.contiguous()?;
        let mut y = vec![0f32; m * self.n];
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Ok(None);
            };
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            let xs = all.get(start..start + m * k).ok_or_else(|| {
                Error::InvalidInput("linear layer: input storage is too short".into())
            })?;
            let owned;
            let data: &[u8] = match &self.weight {
                WeightBytes::Tensor(t) => {
                    owned = t.data()?;
                    &owned
                }
                WeightBytes::View(v) => v.as_bytes(),
                WeightBytes::Panels(p) => {
                    p.matmul(xs, m, &mut y, pool::global().threads())?;
                    return Ok(Some(Tensor::from_vec(
                        y,
                        out_shape(batch, self.n),
                        &Device::Cpu,
                    )?));
                }
            };
            let w = QMatrix::new(self.ty, self.n, self.k, data)?;
            matmul(&w, xs, m, &mut y, Isa::detect(), pool::global().threads())?;
        }
        Ok(Some(Tensor::from_vec(
            y,
            out_shape(batch, self.n),
            &Device::Cpu,
        )?))
    }
}

/// `batch` dims followed by `n`.
fn out_shape(batch: &[usize], n: usize) -> Vec<usize> {
    let mut dims = batch.to_vec();
    dims.push(n);
    dims
}
