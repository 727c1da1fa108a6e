//! Which weights the executor gives to the kernels rather than to candle: the policy,
//! from the measurements of the kernel bench, and the switches of [`KernelConfig`].

use super::config::{KernelConfig, KernelMode};
use super::table::traits;
use super::{Isa, Panels, WeightType};

/// Whether `LAMINA_KERNELS` leaves the kernels on (anything but `candle`).
pub fn enabled() -> bool {
    KernelConfig::global().enabled()
}

/// [`KernelConfig::preferred`] of the process's config.
pub fn preferred(ty: WeightType) -> bool {
    KernelConfig::global().preferred(ty)
}

/// [`KernelConfig::preferred_for`] of the process's config.
pub fn preferred_for(ty: WeightType, n: usize, k: usize) -> bool {
    KernelConfig::global().preferred_for(ty, n, k)
}

impl KernelConfig {
    /// Whether the executor should use these kernels for a weight type by default.
    ///
    /// A type is on only where the kernel bench (`cargo bench -p lamina-benches --bench
    /// kernels`, lamina vs candle's `QMatMul`) measured lamina at least as fast at both
    /// decode (m = 1) and prefill (m = 64) shapes:
    /// - Q5_0, Q5_1: candle has no SIMD kernel for them.
    /// - F16, BF16: candle multiplies an f32 copy it dequantizes at load, twice the bytes
    ///   (and twice the memory) of these.
    /// - Q8_0 where AVX-512 VNNI runs [`Panels`]: candle's own repacked VNNI path beats
    ///   the block-at-a-time kernel, but the panels beat candle end to end, in half its
    ///   memory (candle keeps the file's pages and its repacked copy).
    ///
    /// Off, on candle:
    /// - Q8_0 without AVX-512 VNNI, on candle's shapes (see [`KernelConfig::preferred_for`]).
    /// - Q4_K and Q6_K: candle repacks them (Q6_K for m > 1); lamina wins decode but loses
    ///   prefill.
    /// - Q5_K: lamina wins prefill but was a hair behind at decode on 2 threads.
    ///
    /// The figures are in `benches/RESULTS.md`, "Kernel choices: the measurements behind
    /// `preferred`". `LAMINA_KERNELS=all` opts every type in, to measure it.
    pub fn preferred(&self, ty: WeightType) -> bool {
        match ty {
            WeightType::Q4_0
            | WeightType::Q4_1
            | WeightType::Q5_0
            | WeightType::Q5_1
            | WeightType::F16
            | WeightType::BF16 => true,
            WeightType::Q8_0 if self.panels_wanted(WeightType::Q8_0) => true,
            WeightType::Q8_0 | WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => {
                self.mode == KernelMode::All
            }
        }
    }

    /// [`KernelConfig::preferred`], refined by the weight's shape: candle's fast paths for
    /// Q8_0 and Q4_K are its repacked AVX-512 VNNI kernels, which it uses only when `k` is
    /// a multiple of 256 and `n` of 16 (`candle_core::quantized::repack_x86::select`);
    /// elsewhere it falls back to a generic kernel far slower than these. SmolLM2's
    /// weights (k = 576) and its tied Q8_0 output head are such shapes, so those go to
    /// lamina (the end-to-end figure is in `benches/RESULTS.md`, "Kernel choices").
    pub fn preferred_for(&self, ty: WeightType, n: usize, k: usize) -> bool {
        if self.preferred(ty) {
            return true;
        }
        let candle_repacks =
            k.is_multiple_of(256) && n.is_multiple_of(16) && Isa::Avx512Vnni.is_available();
        match ty {
            WeightType::Q8_0 | WeightType::Q4K => !candle_repacks,
            _ => false,
        }
    }

    /// Whether a loader should repack a weight of type `ty` into [`Panels`]: a panel type
    /// with a panel kernel at this config's level (AVX-512 VNNI), unless `LAMINA_PANELS=off`.
    pub fn panels_wanted(&self, ty: WeightType) -> bool {
        self.panels && Panels::supports(ty) && traits(ty).panels.select(self.isa).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> KernelConfig {
        KernelConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_switches_steer_the_choice() {
        let vnni = Isa::Avx512Vnni.is_available();
        let default = config(&[]);
        for ty in [WeightType::Q4_0, WeightType::Q5_1, WeightType::F16] {
            assert!(default.preferred(ty), "{ty:?}");
        }
        assert!(!default.preferred(WeightType::Q4K));
        assert_eq!(default.preferred(WeightType::Q8_0), vnni);
        assert_eq!(default.panels_wanted(WeightType::Q8_0), vnni);
        assert!(!default.panels_wanted(WeightType::Q5_0), "no panel layout");
        // k = 576 is not a shape candle repacks.
        assert!(default.preferred_for(WeightType::Q8_0, 2048, 576));

        let all = config(&[("LAMINA_KERNELS", "all")]);
        assert!(WeightType::ALL.into_iter().all(|ty| all.preferred(ty)));

        let off = config(&[("LAMINA_PANELS", "off")]);
        assert!(!off.panels_wanted(WeightType::Q8_0));
        assert!(!off.preferred(WeightType::Q8_0));

        let scalar = config(&[("LAMINA_KERNELS_ISA", "scalar")]);
        assert!(!scalar.panels_wanted(WeightType::Q4_0));
    }
}
