//! The instruction-set levels of the kernels and what this CPU runs.

use super::config::KernelConfig;

/// An instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; the numerical reference.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels with AVX-512 VNNI dot products (AVX512F/BW/VL/VNNI).
    Avx512Vnni,
}

impl Isa {
    /// Every level, lowest first.
    pub(crate) const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The best level of this CPU, ignoring the environment.
    pub fn best() -> Isa {
        Self::available().pop().unwrap_or(Isa::Scalar)
    }

    /// The level the kernels use: [`Isa::best`], capped by `LAMINA_KERNELS_ISA`
    /// (`scalar`, `avx2`, `avx512`). Read once per process ([`KernelConfig::global`]).
    pub fn detect() -> Isa {
        KernelConfig::global().isa
    }

    /// The lower of `self` and `cap`.
    pub(crate) fn capped(self, cap: Isa) -> Isa {
        if cap.rank() < self.rank() {
            cap
        } else {
            self
        }
    }

    /// Position in [`Isa::ALL`].
    pub(crate) fn rank(self) -> usize {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 => 1,
            Isa::Avx512Vnni => 2,
        }
    }
}
