//! [`WireDType`]: the element type of tensors on the wire.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Element type of a [`WireTensor`].
///
/// bincode encodes it as its variant index (`F32` = 0, `F16` = 1, `BF16` = 2); serde and
/// `Display`/`FromStr` use the lowercase names `f32`, `f16`, `bf16`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Encode, Decode, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WireDType {
    /// IEEE binary32: bit-exact activations and logits.
    F32,
    /// IEEE binary16: the default for activations.
    #[default]
    F16,
    /// bfloat16: f32's range at f16's size.
    BF16,
}

impl WireDType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            WireDType::F32 => 4,
            WireDType::F16 | WireDType::BF16 => 2,
        }
    }

    /// Lowercase name, as used by `Display` and serde.
    pub const fn name(self) -> &'static str {
        match self {
            WireDType::F32 => "f32",
            WireDType::F16 => "f16",
            WireDType::BF16 => "bf16",
        }
    }
}

impl fmt::Display for WireDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Text that names no [`WireDType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a wire dtype (expected f32, f16 or bf16)")]
pub struct UnknownDType(pub String);

impl FromStr for WireDType {
    type Err = UnknownDType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WireDType::F32),
            "f16" => Ok(WireDType::F16),
            "bf16" => Ok(WireDType::BF16),
            _ => Err(UnknownDType(s.chars().take(80).collect())),
        }
    }
}
