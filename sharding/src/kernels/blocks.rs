//! GGUF (ggml) block layouts of the weight types the kernels read, and the 8-bit
//! activation blocks they multiply against.
//!
//! Every weight block covers [`QK`] = 32 consecutive elements of one row:
//!
//! | type | bytes | layout | element `j` |
//! | --- | --- | --- | --- |
//! | Q4_0 | 18 | `f16 d; u8 qs[16]` | `(nib(j) - 8) * d` |
//! | Q4_1 | 20 | `f16 d; f16 m; u8 qs[16]` | `nib(j) * d + m` |
//! | Q8_0 | 34 | `f16 d; i8 qs[32]` | `qs[j] * d` |
//!
//! where `nib(j)` is the low nibble of `qs[j]` for `j < 16` and the high nibble of
//! `qs[j - 16]` for `j >= 16`. All multi-byte fields are little-endian and blocks are
//! packed without padding, so a block may start at any byte offset.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Elements per block, for every supported type.
pub const QK: usize = 32;

/// The weight block types the kernels implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightType {
    /// The kernel type of a ggml dtype, if there is one.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// Bytes of one block of [`QK`] elements.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Offset of the quants inside a block (after the f16 scale, and min for Q4_1).
    pub const fn qs_offset(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 => 2,
            Self::Q4_1 => 4,
        }
    }
}

/// Reads the little-endian f16 at `b[at..at + 2]` as f32.
#[inline]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Rounds an f32 to the nearest f16 and back (how ggml stores block scales).
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The 4-bit quant of element `j` (0..32) of a Q4 block's `qs`.
#[inline]
pub fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < QK / 2 {
        qs[j] & 0x0F
    } else {
        qs[j - QK / 2] >> 4
    }
}

/// Dequantizes one block (`block.len() == ty.block_bytes()`) into `out[..32]`.
pub fn dequantize_block(ty: WeightType, block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qs = &block[ty.qs_offset()..ty.block_bytes()];
    match ty {
        WeightType::Q4_0 => {
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = (nibble(qs, j) as f32 - 8.0) * d;
            }
        }
        WeightType::Q4_1 => {
            let m = f16_at(block, 2);
            for (j, o) in out.iter_mut().enumerate().take(QK) {
                *o = nibble(qs, j) as f32 * d + m;
            }
        }
        WeightType::Q8_0 => {
            for (o, &q) in out.iter_mut().zip(qs) {
                *o = q as i8 as f32 * d;
            }
        }
    }
}
