//! [`WireTensor`]: a dense tensor as it travels between hops, and its element type
//! [`WireDType`].
//!
//! Activations are sent as f16 by default (half the bytes of f32, and the precision loss is
//! far below what the model's own bf16/f16 weights already impose); f32 when a test asks for
//! bit-exact logits. bf16 keeps f32's exponent range for models whose activations overflow
//! f16. The data is raw little-endian elements, row-major, with no padding, so it can be
//! appended to a frame as is and sliced out of a received frame without copying.

use std::fmt;

use bytes::Bytes;
use half::{bf16, f16};

pub use crate::dtype::WireDType;
use crate::error::ProtocolError;

/// Most dimensions a wire tensor may have. Activations are rank 2 (`[rows, hidden]`) and
/// logits rank 1 or 2; the limit leaves room while making any shape cheap to check and to
/// quote in an error.
pub const MAX_TENSOR_RANK: usize = 8;

/// Most elements a wire tensor may have: 2^31. A frame body is at most `u32::MAX` bytes and
/// the smallest element is 2 bytes, so no tensor that fits in any frame is larger; the bound
/// also keeps `elements * dtype.size()` far from overflow.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;

/// Checks rank and element count of `shape`; returns the element count.
///
/// A shape with a zero dimension has zero elements, whatever its other dimensions. Otherwise
/// the product is computed with overflow checks and must not exceed
/// [`MAX_TENSOR_ELEMENTS`].
pub fn checked_element_count(shape: &[u32]) -> Result<u64, ProtocolError> {
    if shape.len() > MAX_TENSOR_RANK {
        return Err(ProtocolError::TensorRankTooLarge {
            rank: shape.len(),
            max: MAX_TENSOR_RANK,
        });
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1u64, |acc, &d| {
            acc.checked_mul(u64::from(d))
                .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        })
        .ok_or_else(|| ProtocolError::TensorTooLarge {
            shape: shape.to_vec(),
            max: MAX_TENSOR_ELEMENTS,
        })
}

/// Bytes a tensor of `shape` and `dtype` occupies, after the checks of
/// [`checked_element_count`]. Cannot overflow: at most 2^31 elements of at most 4 bytes.
pub fn checked_byte_len(shape: &[u32], dtype: WireDType) -> Result<u64, ProtocolError> {
    Ok(checked_element_count(shape)? * dtype.size() as u64)
}

/// A dense, row-major tensor of little-endian elements, valid by construction.
///
/// The fields are private so that every `WireTensor` in memory satisfies
/// `data.len() == product(shape) * dtype.size()` with shape within the rank and element
/// limits; encoding therefore never meets an inconsistent tensor. The data is a [`Bytes`]
/// so that a tensor decoded from a frame is a view into that frame (no copy) and a tensor
/// being sent can be handed to the transport as its own chunk.
#[derive(Clone, PartialEq, Eq)]
pub struct WireTensor {
    shape: Vec<u32>,
    dtype: WireDType,
    data: Bytes,
}

impl WireTensor {
    /// Wraps raw little-endian element bytes, checking them against shape and dtype.
    pub fn new(
        shape: impl Into<Vec<u32>>,
        dtype: WireDType,
        data: impl Into<Bytes>,
    ) -> Result<Self, ProtocolError> {
        let shape = shape.into();
        let data = data.into();
        let expected = checked_byte_len(&shape, dtype)?;
        if data.len() as u64 != expected {
            return Err(ProtocolError::TensorSizeMismatch {
                shape,
                dtype,
                expected,
                actual: data.len() as u64,
            });
        }
        Ok(Self { shape, dtype, data })
    }

    /// Encodes f32 values as `dtype`, rounding to nearest-even for f16/bf16 (NaN stays NaN,
    /// out-of-range values become infinities). With `WireDType::F32` the bytes are the exact
    /// bit patterns, so [`to_f32`](Self::to_f32) gives back identical bits.
    pub fn from_f32(
        shape: &[u32],
        values: &[f32],
        dtype: WireDType,
    ) -> Result<Self, ProtocolError> {
        let elements = checked_element_count(shape)?;
        if values.len() as u64 != elements {
            return Err(ProtocolError::TensorSizeMismatch {
                shape: shape.to_vec(),
                dtype,
                expected: elements * dtype.size() as u64,
                actual: (values.len() as u64).saturating_mul(dtype.size() as u64),
            });
        }
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            WireDType::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_bits().to_le_bytes())),
            WireDType::F16 => values
                .iter()
                .for_each(|&v| data.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())),
            WireDType::BF16 => values
                .iter()
                .for_each(|&v| data.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes())),
        }
        Ok(Self {
            shape: shape.to_vec(),
            dtype,
            data: Bytes::from(data),
        })
    }

    /// Decodes the elements to f32 (exact for every dtype: f16 and bf16 widen losslessly).
    ///
    /// Re-checks the size invariant rather than trusting it, so a future constructor that
    /// forgets to validate still cannot make this read out of bounds or silently drop data.
    pub fn to_f32(&self) -> Result<Vec<f32>, ProtocolError> {
        let expected = checked_byte_len(&self.shape, self.dtype)?;
        if self.data.len() as u64 != expected {
            return Err(ProtocolError::TensorSizeMismatch {
                shape: self.shape.clone(),
                dtype: self.dtype,
                expected,
                actual: self.data.len() as u64,
            });
        }
        let d = &self.data[..];
        Ok(match self.dtype {
            WireDType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            WireDType::F16 => d
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            WireDType::BF16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        })
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> WireDType {
        self.dtype
    }

    /// The raw little-endian element bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The raw bytes as a cheaply clonable [`Bytes`] (for vectored writes).
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements.
    pub fn element_count(&self) -> u64 {
        self.shape.iter().map(|&d| u64::from(d)).product()
    }

    /// Splits into shape, dtype and data.
    pub fn into_parts(self) -> (Vec<u32>, WireDType, Bytes) {
        (self.shape, self.dtype, self.data)
    }
}

impl fmt::Debug for WireTensor {
    /// Shape, dtype and byte count only: activations can be megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireTensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("bytes", &self.data.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_is_bit_exact() {
        let values = [
            0.0,
            -0.0,
            1.5,
            f32::MIN_POSITIVE / 4.0, // subnormal
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_1234), // NaN with payload
            f32::MAX,
        ];
        let t = WireTensor::from_f32(&[2, 4], &values, WireDType::F32).unwrap();
        assert_eq!(t.data().len(), 32);
        let back = t.to_f32().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
    }

    #[test]
    fn f16_and_bf16_round() {
        let values = [1.0f32, 0.1, 65504.0, 1e6, -2.5];
        let h = WireTensor::from_f32(&[5], &values, WireDType::F16).unwrap();
        assert_eq!(h.data().len(), 10);
        let back = h.to_f32().unwrap();
        assert_eq!(back[0], 1.0);
        assert!((back[1] - 0.1).abs() < 1e-4);
        assert_eq!(back[2], 65504.0);
        assert!(back[3].is_infinite());
        let b = WireTensor::from_f32(&[5], &values, WireDType::BF16).unwrap();
        let back = b.to_f32().unwrap();
        assert!((back[3] - 1e6).abs() / 1e6 < 1e-2);
    }

    #[test]
    fn new_checks_size() {
        assert!(WireTensor::new(vec![2, 3], WireDType::F16, vec![0u8; 12]).is_ok());
        let err = WireTensor::new(vec![2, 3], WireDType::F16, vec![0u8; 11]).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TensorSizeMismatch {
                expected: 12,
                actual: 11,
                ..
            }
        ));
        assert!(WireTensor::from_f32(&[3], &[1.0, 2.0], WireDType::F32).is_err());
    }

    #[test]
    fn absurd_shapes_are_rejected() {
        let rank = vec![1u32; MAX_TENSOR_RANK + 1];
        assert!(matches!(
            checked_element_count(&rank),
            Err(ProtocolError::TensorRankTooLarge { rank: 9, max: 8 })
        ));
        let huge = vec![u32::MAX; MAX_TENSOR_RANK];
        assert!(matches!(
            checked_element_count(&huge),
            Err(ProtocolError::TensorTooLarge { .. })
        ));
        assert!(checked_element_count(&[1 << 16, 1 << 15]).is_ok());
        assert!(checked_element_count(&[1 << 16, (1 << 15) + 1]).is_err());
        assert_eq!(checked_element_count(&[u32::MAX, 0, u32::MAX]).unwrap(), 0);
        assert_eq!(checked_element_count(&[]).unwrap(), 1);
    }

    #[test]
    fn dtype_text() {
        for d in [WireDType::F32, WireDType::F16, WireDType::BF16] {
            assert_eq!(d.to_string().parse::<WireDType>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
        }
        assert!("f64".parse::<WireDType>().is_err());
    }
}
