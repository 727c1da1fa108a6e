//! The kernel table: per weight type, the activations its kernels read and the kernel
//! of each instruction-set level, in the manner of ggml's `type_traits_cpu`.
//!
//! One [`TypeTraits`] per [`WeightType`] holds
//! - `blocks`: the kernels on the file's block layout, one [`PerIsa`] slot per level,
//!   inside the variant of [`BlockKernels`] that names the activation format they read
//!   (8-bit blocks of 32, Q8_K super-blocks, or the f32 activations);
//! - `panels`: the kernels on weights repacked at load into [`Panels`], where the type
//!   has a panel layout.
//!
//! [`matmul`](super::matmul) looks its type up once per call; [`run`], the one row
//! runner every type shares, selects the kernel of the level, prepares the activations
//! of its format ([`Activations`]) and hands the rows out to it over the pool. An empty
//! slot falls back to the next lower level that has a kernel ([`PerIsa::select`]);
//! every type has a scalar block kernel (tested).
//!
//! Adding a kernel for a (type, level) is one line here: the slot's `x86!(...)` entry
//! (or `Some(...)` for portable code). A new NEON tier adds its `neon` slots on aarch64.

#![allow(clippy::needless_update)]

// `tag` names the SIMD entries, which exist on x86-64 only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use super::blocks::tag;
use super::blocks::{bf16_at, f16_at, nibble, quant5, u32_at, WeightType, QK};
use super::kquants::{quantize_q8k_scalar, Q8KActs, Q8KQuantizer};
use super::panels::{PanelFn, Panels};
use super::quantize::{quantize_scalar, Q8x32Quantizer, QActs};
use super::{floats, kquants, scalar, split_units, Isa, OutPtr, QMatrix};
#[cfg(target_arch = "x86_64")]
use super::{panels, x86, x86_kquants};
use crate::{Error, Result};
use std::cell::RefCell;
use std::ops::Range;

/// Computes the output columns `rows` (weight rows) of `w` for every activation row.
///
/// # Safety
/// The CPU runs the level of the slot the function sits in; `w` was validated
/// ([`QMatrix::new`]); `acts` holds the activations of `m` rows of `w.cols()` values,
/// prepared for this type; `out` has `m * w.rows()` values; `rows.end <= w.rows()`, and
/// no other thread writes the columns `rows` concurrently.
pub(crate) type BlockFn<A> = unsafe fn(w: &QMatrix<'_>, acts: &A, out: OutPtr, rows: Range<usize>);

/// One kernel slot per instruction-set level; `None` where the level has none.
#[derive(Clone, Copy)]
pub(crate) struct PerIsa<F> {
    pub scalar: Option<F>,
    pub avx2: Option<F>,
    pub avx512_vnni: Option<F>,
    /// For the NEON kernels to come; no [`Isa`] level selects it yet.
    #[cfg(target_arch = "aarch64")]
    #[allow(dead_code)]
    pub neon: Option<F>,
}

impl<F: Copy> PerIsa<F> {
    /// No kernel at any level; entries fill their slots and take the rest from here.
    pub const NONE: Self = Self {
        scalar: None,
        avx2: None,
        avx512_vnni: None,
        #[cfg(target_arch = "aarch64")]
        neon: None,
    };

    /// The slot of `isa` itself.
    fn slot(&self, isa: Isa) -> Option<F> {
        match isa {
            Isa::Scalar => self.scalar,
            Isa::Avx2 => self.avx2,
            Isa::Avx512Vnni => self.avx512_vnni,
        }
    }

    /// The kernel of `isa`, or of the next lower level that has one, with that level.
    pub fn select(&self, isa: Isa) -> Option<(Isa, F)> {
        Isa::ALL[..=isa.rank()]
            .iter()
            .rev()
            .find_map(|&i| self.slot(i).map(|f| (i, f)))
    }
}

/// A type's kernels on the file's layout, by the activations they read.
#[derive(Clone, Copy)]
pub(crate) enum BlockKernels {
    /// 8-bit blocks of 32 with scale and block sum ([`QActs`]).
    Q8x32(PerIsa<BlockFn<QActs>>),
    /// 8-bit super-blocks of 256 with sums per 16 ([`Q8KActs`]).
    Q8K(PerIsa<BlockFn<Q8KActs>>),
    /// The f32 activations themselves, `m * k` row-major.
    F32(PerIsa<BlockFn<[f32]>>),
}

/// Everything the kernels know about one weight type.
pub(crate) struct TypeTraits {
    pub blocks: BlockKernels,
    pub panels: PerIsa<PanelFn>,
}

/// `Some(kernel)` on x86-64, `None` elsewhere (where the path does not exist).
#[cfg(target_arch = "x86_64")]
macro_rules! x86 {
    ($f:expr) => {
        Some($f)
    };
}
#[cfg(not(target_arch = "x86_64"))]
macro_rules! x86 {
    ($f:expr) => {
        None
    };
}

// One entry per type; one line per (type, level) kernel. `..PerIsa::NONE` fills the
// slots an entry leaves out, including those of other targets (so clippy's
// `needless_update` would fire on x86-64, where an entry may name every slot).

static Q4_0: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8x32(PerIsa {
        scalar: Some(scalar::gemm),
        avx2: x86!(x86::avx2::gemm::<{ tag::Q4_0 }>),
        avx512_vnni: x86!(x86::avx512::gemm::<{ tag::Q4_0 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa {
        avx512_vnni: x86!(panels::avx512::gemm::<{ tag::Q4_0 }>),
        ..PerIsa::NONE
    },
};

static Q4_1: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8x32(PerIsa {
        scalar: Some(scalar::gemm),
        avx2: x86!(x86::avx2::gemm::<{ tag::Q4_1 }>),
        avx512_vnni: x86!(x86::avx512::gemm::<{ tag::Q4_1 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa {
        avx512_vnni: x86!(panels::avx512::gemm::<{ tag::Q4_1 }>),
        ..PerIsa::NONE
    },
};

static Q5_0: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8x32(PerIsa {
        scalar: Some(scalar::gemm),
        avx2: x86!(x86::avx2::gemm::<{ tag::Q5_0 }>),
        avx512_vnni: x86!(x86::avx512::gemm::<{ tag::Q5_0 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static Q5_1: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8x32(PerIsa {
        scalar: Some(scalar::gemm),
        avx2: x86!(x86::avx2::gemm::<{ tag::Q5_1 }>),
        avx512_vnni: x86!(x86::avx512::gemm::<{ tag::Q5_1 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static Q8_0: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8x32(PerIsa {
        scalar: Some(scalar::gemm),
        avx2: x86!(x86::avx2::gemm::<{ tag::Q8_0 }>),
        avx512_vnni: x86!(x86::avx512::gemm::<{ tag::Q8_0 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa {
        avx512_vnni: x86!(panels::avx512::gemm::<{ tag::Q8_0 }>),
        ..PerIsa::NONE
    },
};

static Q4K: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8K(PerIsa {
        scalar: Some(kquants::gemm),
        avx2: x86!(x86_kquants::avx2::gemm::<{ tag::Q4K }>),
        avx512_vnni: x86!(x86_kquants::avx512::gemm::<{ tag::Q4K }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static Q5K: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8K(PerIsa {
        scalar: Some(kquants::gemm),
        avx2: x86!(x86_kquants::avx2::gemm::<{ tag::Q5K }>),
        avx512_vnni: x86!(x86_kquants::avx512::gemm::<{ tag::Q5K }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static Q6K: TypeTraits = TypeTraits {
    blocks: BlockKernels::Q8K(PerIsa {
        scalar: Some(kquants::gemm),
        avx2: x86!(x86_kquants::avx2::gemm::<{ tag::Q6K }>),
        avx512_vnni: x86!(x86_kquants::avx512::gemm::<{ tag::Q6K }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static F16: TypeTraits = TypeTraits {
    blocks: BlockKernels::F32(PerIsa {
        scalar: Some(floats::gemm),
        avx2: x86!(floats::avx2::gemm::<{ tag::F16 }>),
        avx512_vnni: x86!(floats::avx512::gemm::<{ tag::F16 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

static BF16: TypeTraits = TypeTraits {
    blocks: BlockKernels::F32(PerIsa {
        scalar: Some(floats::gemm),
        avx2: x86!(floats::avx2::gemm::<{ tag::BF16 }>),
        avx512_vnni: x86!(floats::avx512::gemm::<{ tag::BF16 }>),
        ..PerIsa::NONE
    }),
    panels: PerIsa::NONE,
};

/// The table entry of `ty`.
pub(crate) fn traits(ty: WeightType) -> &'static TypeTraits {
    match ty {
        WeightType::Q4_0 => &Q4_0,
        WeightType::Q4_1 => &Q4_1,
        WeightType::Q5_0 => &Q5_0,
        WeightType::Q5_1 => &Q5_1,
        WeightType::Q8_0 => &Q8_0,
        WeightType::Q4K => &Q4K,
        WeightType::Q5K => &Q5K,
        WeightType::Q6K => &Q6K,
        WeightType::F16 => &F16,
        WeightType::BF16 => &BF16,
    }
}

/// The quantizer of 8-bit blocks of 32 for level `isa` (scalar where it has none).
pub(crate) fn q8x32_quantizer(isa: Isa) -> Q8x32Quantizer {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::avx2::quantize,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::avx512::quantize,
        _ => quantize_scalar_unsafe,
    }
}

/// The Q8_K quantizer for level `isa` (scalar where it has none).
pub(crate) fn q8k_quantizer(isa: Isa) -> Q8KQuantizer {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86_kquants::quantize_q8k,
        _ => quantize_q8k_scalar_unsafe,
    }
}

/// [`quantize_scalar`] as the quantizers' type (it needs no instruction set).
unsafe fn quantize_scalar_unsafe(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    quantize_scalar(x, qs, d, s)
}

/// [`quantize_q8k_scalar`] as the quantizers' type.
unsafe fn quantize_q8k_scalar_unsafe(x: &[f32], qs: &mut [i8], d: &mut [f32], b: &mut [i16]) {
    quantize_q8k_scalar(x, qs, d, b)
}

/// Quantizes `x` into `acts` with the code of level `isa`, which this CPU runs.
pub(crate) fn fill_q8x32(acts: &mut QActs, x: &[f32], m: usize, k: usize, isa: Isa) {
    debug_assert!(isa.is_available());
    // SAFETY: `isa` is available (checked by every caller: `matmul`, `quantize_acts`,
    // `Panels::matmul`).
    unsafe { acts.fill_with(x, m, k, q8x32_quantizer(isa)) }
}

/// Quantizes `x` into Q8_K `acts` with the code of level `isa`, which this CPU runs.
pub(crate) fn fill_q8k(acts: &mut Q8KActs, x: &[f32], m: usize, k: usize, isa: Isa) {
    debug_assert!(isa.is_available());
    // SAFETY: as for `fill_q8x32`.
    unsafe { acts.fill_with(x, m, k, q8k_quantizer(isa)) }
}

/// Dequantizes one block (`block.len() == ty.block_bytes()`) into
/// `out[..ty.block_elems()]`.
pub fn dequantize_block(ty: WeightType, block: &[u8], out: &mut [f32]) {
    let qs = &block[ty.qs_offset()..ty.block_bytes()];
    match ty {
        WeightType::Q4_0 => {
            let d = f16_at(block, 0);
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = (nibble(qs, j) as f32 - 8.0) * d;
            }
        }
        WeightType::Q4_1 => {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = nibble(qs, j) as f32 * d + m;
            }
        }
        WeightType::Q5_0 => {
            let (d, qh) = (f16_at(block, 0), u32_at(block, 2));
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = (quant5(qh, qs, j) as f32 - 16.0) * d;
            }
        }
        WeightType::Q5_1 => {
            let (d, m, qh) = (f16_at(block, 0), f16_at(block, 2), u32_at(block, 4));
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = quant5(qh, qs, j) as f32 * d + m;
            }
        }
        WeightType::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, &q) in out.iter_mut().zip(qs) {
                *o = q as i8 as f32 * d;
            }
        }
        WeightType::F16 => {
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = f16_at(block, 2 * j);
            }
        }
        WeightType::BF16 => {
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = bf16_at(block, 2 * j);
            }
        }
        WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => {
            kquants::dequantize_superblock(ty, block, out)
        }
    }
}

impl Panels {
    /// Whether this CPU runs a panel kernel (and the kernels' ISA cap allows it).
    pub fn available() -> bool {
        let isa = Isa::detect();
        WeightType::ALL
            .into_iter()
            .any(|ty| traits(ty).panels.select(isa).is_some())
    }

    /// `y[m, n] = x[m, k] · W^T` on up to `threads` threads, with the panel kernel of the
    /// best level this CPU has (whatever `LAMINA_KERNELS_ISA` says, as before the kernel
    /// table). Errors when the shapes do not fit or no panel kernel of this type runs on
    /// this CPU (they need AVX-512 VNNI).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<()> {
        let Some((isa, kernel)) = traits(self.weight_type()).panels.select(Isa::best()) else {
            return Err(Error::InvalidInput(format!(
                "weight panels: no {:?} panel kernel runs on this CPU (they need AVX-512 VNNI)",
                self.weight_type()
            )));
        };
        // SAFETY: `select` returned a kernel of level `isa`, which `Isa::best` found this
        // CPU runs, for this type.
        unsafe { self.run(kernel, q8x32_quantizer(isa), x, m, y, threads) }
    }
}

/// An activation format of the block kernels: how one call's `x` becomes what they read.
pub(crate) trait Activations: Sync {
    /// Runs `f` on `x` (`m * k`, row-major) prepared with the code of level `isa`.
    fn prepared<R>(x: &[f32], m: usize, k: usize, isa: Isa, f: impl FnOnce(&Self) -> R) -> R;
}

thread_local! {
    static ACTS: RefCell<QActs> = RefCell::new(QActs::new());
    static ACTS_K: RefCell<Q8KActs> = RefCell::new(Q8KActs::new());
}

impl Activations for QActs {
    fn prepared<R>(x: &[f32], m: usize, k: usize, isa: Isa, f: impl FnOnce(&Self) -> R) -> R {
        // A thread-local buffer, reused across calls.
        ACTS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acts) => {
                fill_q8x32(&mut acts, x, m, k, isa);
                f(&acts)
            }
            // Re-entered on this thread (a rayon worker picked up another matmul while
            // waiting): use a fresh buffer rather than the one in use.
            Err(_) => {
                let mut acts = QActs::new();
                fill_q8x32(&mut acts, x, m, k, isa);
                f(&acts)
            }
        })
    }
}

impl Activations for Q8KActs {
    fn prepared<R>(x: &[f32], m: usize, k: usize, isa: Isa, f: impl FnOnce(&Self) -> R) -> R {
        // As for `QActs`.
        ACTS_K.with(|cell| match cell.try_borrow_mut() {
            Ok(mut acts) => {
                fill_q8k(&mut acts, x, m, k, isa);
                f(&acts)
            }
            Err(_) => {
                let mut acts = Q8KActs::new();
                fill_q8k(&mut acts, x, m, k, isa);
                f(&acts)
            }
        })
    }
}

impl Activations for [f32] {
    fn prepared<R>(x: &[f32], _: usize, _: usize, _: Isa, f: impl FnOnce(&Self) -> R) -> R {
        f(x)
    }
}

impl BlockKernels {
    /// `y = x · W^T` into `out` with the kernel of `isa`, or of the next lower level that
    /// has one; an error when there is none.
    ///
    /// # Safety
    /// The CPU runs `isa`; `w` was validated ([`QMatrix::new`]); `x` holds
    /// `m * w.cols()` values and `out` `m * w.rows()`.
    pub(crate) unsafe fn run(
        &self,
        w: &QMatrix<'_>,
        x: &[f32],
        m: usize,
        out: OutPtr,
        isa: Isa,
        threads: usize,
    ) -> Result<()> {
        // SAFETY (each arm): the caller's contract.
        unsafe {
            match self {
                Self::Q8x32(k) => run(w, x, m, out, isa, threads, k),
                Self::Q8K(k) => run(w, x, m, out, isa, threads, k),
                Self::F32(k) => run(w, x, m, out, isa, threads, k),
            }
        }
    }
}

/// The row runner of every type: looks the kernel of `isa` up in `kernels`, prepares
/// the activations it reads (quantized with the code of `isa`: bit-identical at every
/// level) and splits the weight rows over up to `threads` threads in chunks of whole
/// 4-row tiles; small products stay on the calling thread.
///
/// # Safety
/// As [`BlockKernels::run`].
unsafe fn run<A: Activations + ?Sized>(
    w: &QMatrix<'_>,
    x: &[f32],
    m: usize,
    out: OutPtr,
    isa: Isa,
    threads: usize,
    kernels: &PerIsa<BlockFn<A>>,
) -> Result<()> {
    let Some((_, kernel)) = kernels.select(isa) else {
        return Err(Error::InvalidInput(format!(
            "quantized matmul: no {:?} kernel at or below {isa:?}",
            w.weight_type()
        )));
    };
    A::prepared(x, m, w.cols(), isa, |acts| {
        // Work in units of 32 weights x one activation row, whatever the block size.
        let work = w.rows() * (w.cols() / QK) * m;
        split_units(w.rows(), 4, work, threads, |rows| {
            // SAFETY: the caller's contract; `kernel` is of `isa` or a lower level;
            // `acts` was prepared above for `m` rows of `w.cols()`; the split hands out
            // disjoint `rows` below `w.rows()`.
            unsafe { kernel(w, acts, out, rows) }
        })
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_its_entry_and_a_scalar_kernel() {
        for ty in WeightType::ALL {
            let t = traits(ty);
            let scalar = match t.blocks {
                BlockKernels::Q8x32(k) => k.select(Isa::Scalar).map(|s| s.0),
                BlockKernels::Q8K(k) => k.select(Isa::Scalar).map(|s| s.0),
                BlockKernels::F32(k) => k.select(Isa::Scalar).map(|s| s.0),
            };
            assert_eq!(scalar, Some(Isa::Scalar), "{ty:?}");
            assert_eq!(
                matches!(t.blocks, BlockKernels::Q8K(_)),
                ty.block_elems() == super::super::QK_K,
                "{ty:?}: K-quants read Q8_K"
            );
        }
    }

    #[test]
    fn an_empty_slot_falls_back_to_a_lower_level() {
        let k: PerIsa<u8> = PerIsa {
            scalar: Some(0),
            avx2: Some(1),
            ..PerIsa::NONE
        };
        assert_eq!(k.select(Isa::Avx512Vnni), Some((Isa::Avx2, 1)));
        assert_eq!(k.select(Isa::Avx2), Some((Isa::Avx2, 1)));
        assert_eq!(k.select(Isa::Scalar), Some((Isa::Scalar, 0)));
        let p: PerIsa<u8> = PerIsa {
            avx512_vnni: Some(2),
            ..PerIsa::NONE
        };
        assert_eq!(p.select(Isa::Avx2), None);
        assert_eq!(p.select(Isa::Avx512Vnni), Some((Isa::Avx512Vnni, 2)));
    }
}
