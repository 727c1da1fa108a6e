//! GGUF (ggml) block layouts of the weight types the kernels read, and the 8-bit
//! activation blocks they multiply against.
//!
//! The 32-element types (one block covers [`QK`] = 32 consecutive elements of a row):
//!
//! | type | bytes | layout | element `j` |
//! | --- | --- | --- | --- |
//! | Q4_0 | 18 | `f16 d; u8 qs[16]` | `(nib(j) - 8) * d` |
//! | Q4_1 | 20 | `f16 d; f16 m; u8 qs[16]` | `nib(j) * d + m` |
//! | Q5_0 | 22 | `f16 d; u8 qh[4]; u8 qs[16]` | `(nib(j) + 16 hbit(j) - 16) * d` |
//! | Q5_1 | 24 | `f16 d; f16 m; u8 qh[4]; u8 qs[16]` | `(nib(j) + 16 hbit(j)) * d + m` |
//! | Q8_0 | 34 | `f16 d; i8 qs[32]` | `qs[j] * d` |
//! | F16 | 64 | `f16 v[32]` | `v[j]` |
//! | BF16 | 64 | `bf16 v[32]` | `v[j]` |
//!
//! where `nib(j)` is the low nibble of `qs[j]` for `j < 16` and the high nibble of
//! `qs[j - 16]` for `j >= 16`, and `hbit(j)` is bit `j` of the little-endian u32 `qh`.
//! F16 and BF16 have no blocks in ggml; grouping them by 32 lets every 32-element type
//! share one shape check, and every real model's widths are multiples of 32 anyway.
//!
//! The K-quants cover [`QK_K`] = 256 elements per super-block; their layouts are in
//! [`super::kquants`].
//!
//! All multi-byte fields are little-endian and blocks are packed without padding, so a
//! block may start at any byte offset.

use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

/// Elements per block of the 32-element types.
pub const QK: usize = 32;

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// The weight block types the kernels implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    F16,
    BF16,
}

/// The const-generic tags of the SIMD kernels (`fn gemm<const T: u8>`): one per type,
/// its [`WeightType`] discriminant, so the kernel table names a (type, level) kernel as
/// `gemm::<{ tag::Q4_0 }>`.
pub(crate) mod tag {
    use super::WeightType as W;

    pub const Q4_0: u8 = W::Q4_0 as u8;
    pub const Q4_1: u8 = W::Q4_1 as u8;
    pub const Q5_0: u8 = W::Q5_0 as u8;
    pub const Q5_1: u8 = W::Q5_1 as u8;
    pub const Q8_0: u8 = W::Q8_0 as u8;
    pub const Q4K: u8 = W::Q4K as u8;
    pub const Q5K: u8 = W::Q5K as u8;
    pub const Q6K: u8 = W::Q6K as u8;
    pub const F16: u8 = W::F16 as u8;
    pub const BF16: u8 = W::BF16 as u8;
}

impl WeightType {
    /// Every type, in declaration order.
    pub const ALL: [WeightType; 10] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::F16,
        Self::BF16,
    ];

    /// The kernel type of a ggml dtype, if there is one.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q5_1 => Some(Self::Q5_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q5K => Some(Self::Q5K),
            GgmlDType::Q6K => Some(Self::Q6K),
            GgmlDType::F16 => Some(Self::F16),
            GgmlDType::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
        }
    }

    /// Elements per block: [`QK`] or, for the K-quants, [`QK_K`]. `k` must be a multiple.
    pub const fn block_elems(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
            _ => QK,
        }
    }

    /// Bytes of one block of [`Self::block_elems`] elements.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::F16 | Self::BF16 => 64,
        }
    }

    /// Offset of the (low bits of the) quants inside a block: after the f16 scale, the
    /// min and the high bits where the type has them. 0 for F16 / BF16.
    pub const fn qs_offset(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 2,
            Self::Q4_1 => 4,
            Self::Q5_0 => 6,
            Self::Q5_1 => 8,
            Self::Q4K => 16,
            Self::Q5K => 48,
            Self::Q6K | Self::F16 | Self::BF16 => 0,
        }
    }
}

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Reads the little-endian bf16 at `b[at..at + 2]` as f32.
#[inline]
pub fn bf16_at(b: &[u8], at: usize) -> f32 {
    bf16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Reads the little-endian u32 at `b[at..at + 4]`.
#[inline]
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Rounds an f32 to the nearest f16 and back (how ggml stores block scales).
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The 4-bit quant of element `j` (0..32) of a Q4/Q5 block's `qs`.
#[inline]
pub fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < QK / 2 {
        qs[j] & 0x0F
    } else {
        qs[j - QK / 2] >> 4
    }
}

/// The 5-bit quant (0..32) of element `j` of a Q5_0 / Q5_1 block.
#[inline]
pub fn quant5(qh: u32, qs: &[u8], j: usize) -> u8 {
    nibble(qs, j) | ((((qh >> j) & 1) as u8) << 4)
}
