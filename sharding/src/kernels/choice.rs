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
    /// - Q8_0 without AVX-512 VNNI, on candle's shapes (see [`KernelConfig::preferred_for`]).
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

    /// [`KernelConfig::preferred`], refined by the weight's shape: candle's fast paths for Q8_0 and Q4_K
    /// are its repacked AVX-512 VNNI kernels, which it uses only when `k` is a multiple of 256
    /// and `n` of 16 (`candle_core::quantized::repack_x86::select`); elsewhere it falls back
    /// to a generic kernel far slower than these. SmolLM2's weights (k = 576) and its tied
    /// Q8_0 output head are such shapes: the end-to-end bench measured SmolLM2 Q8_0 decode
    /// at 0.44x llama.cpp on candle's path (benches/RESULTS.md), so those go to lamina.
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
