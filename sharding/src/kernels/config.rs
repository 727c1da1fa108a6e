//! Every setting of the kernels that comes from the environment, read in one place.
//!
//! [`KernelConfig::global`] reads the variables once per process, on first use; the rest
//! of the kernels ask it and never the environment. Tests build a config from a lookup
//! function instead ([`KernelConfig::from_lookup`]), so they can check every setting
//! without touching the process environment.
//!
//! | variable | values | effect |
//! | --- | --- | --- |
//! | `LAMINA_KERNELS` | `candle`, `all`, else default | candle's `QMatMul` everywhere; every type on the kernels; the measured choice ([`super::preferred`]) |
//! | `LAMINA_KERNELS_ISA` | `scalar`, `avx2`, else no cap | caps the SIMD level ([`Isa::detect`]) |
//! | `LAMINA_PANELS` | `off`, else on | keeps Q8_0 / Q4_0 / Q4_1 in the file's layout instead of repacking them into [`super::Panels`] |
//! | `LAMINA_POOL` | `rayon`, else lamina's | rayon's pool instead of [`super::pool::Pool`], for A/B runs |
//! | `LAMINA_POOL_SPIN_US` | microseconds (u64) | how long an idle pool worker spins before it parks (default 100) |
//!
//! The pool's size is rayon's thread count (`RAYON_NUM_THREADS`, which `lamina --threads`
//! sets), read by rayon itself.

use super::Isa;
use std::sync::OnceLock;
use std::time::Duration;

/// Which weights the executor gives to the kernels (`LAMINA_KERNELS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMode {
    /// The measured choice per weight type and shape ([`super::preferred_for`]).
    Preferred,
    /// `candle`: none; candle's `QMatMul` everywhere, for A/B runs and bisecting.
    Candle,
    /// `all`: every weight type the kernels cover, to measure them.
    All,
}

/// Whose threads split a matmul (`LAMINA_POOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// lamina's persistent spinning pool ([`super::pool::Pool`]).
    Lamina,
    /// `rayon`: rayon's global pool.
    Rayon,
}

/// The default of [`KernelConfig::spin`]: long enough to cover the single-threaded work
/// between two matmuls of one forward step (a few to tens of microseconds), short enough
/// that a node idling between tokens hands the cores back at once.
pub const SPIN_DEFAULT: Duration = Duration::from_micros(100);

/// The kernels' settings; see the module documentation for the variables behind them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    pub mode: KernelMode,
    /// The SIMD level the kernels use: this CPU's best ([`Isa::best`]) capped by
    /// `LAMINA_KERNELS_ISA`.
    pub isa: Isa,
    /// Whether Q8_0 / Q4_0 / Q4_1 may be repacked into panels (`LAMINA_PANELS` is not
    /// `off`).
    pub panels: bool,
    pub pool: PoolKind,
    /// How long an idle pool worker spins before it parks.
    pub spin: Duration,
}

impl KernelConfig {
    /// The process's config: [`KernelConfig::from_env`] on first use, then the same.
    pub fn global() -> &'static KernelConfig {
        static CONFIG: OnceLock<KernelConfig> = OnceLock::new();
        CONFIG.get_or_init(Self::from_env)
    }

    /// Reads the environment now. The kernels use [`KernelConfig::global`]; this is
    /// for callers that want to see what a fresh read would give.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// A config from `get(name)`, the value of variable `name` if set. Unknown values
    /// mean the default, as they always have.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let mode = match get("LAMINA_KERNELS").as_deref() {
            Some("candle") => KernelMode::Candle,
            Some("all") => KernelMode::All,
            _ => KernelMode::Preferred,
        };
        let cap = match get("LAMINA_KERNELS_ISA").as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") => Isa::Avx2,
            _ => Isa::Avx512Vnni,
        };
        let panels = !matches!(get("LAMINA_PANELS").as_deref(), Some("off"));
        let pool = match get("LAMINA_POOL").as_deref() {
            Some("rayon") => PoolKind::Rayon,
            _ => PoolKind::Lamina,
        };
        let spin = get("LAMINA_POOL_SPIN_US")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
            .unwrap_or(SPIN_DEFAULT);
        Self {
            mode,
            isa: Isa::best().capped(cap),
            panels,
            pool,
            spin,
        }
    }

    /// Whether the kernels run at all (`LAMINA_KERNELS` is not `candle`).
    pub fn enabled(&self) -> bool {
        self.mode != KernelMode::Candle
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
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.mode, KernelMode::Preferred);
        assert_eq!(c.isa, Isa::best());
        assert!(c.panels && c.enabled());
        assert_eq!(c.pool, PoolKind::Lamina);
        assert_eq!(c.spin, SPIN_DEFAULT);
    }

    #[test]
    fn every_variable() {
        assert_eq!(
            config(&[("LAMINA_KERNELS", "candle")]).mode,
            KernelMode::Candle
        );
        assert!(!config(&[("LAMINA_KERNELS", "candle")]).enabled());
        assert_eq!(config(&[("LAMINA_KERNELS", "all")]).mode, KernelMode::All);
        assert_eq!(
            config(&[("LAMINA_KERNELS", "what")]).mode,
            KernelMode::Preferred
        );
        assert_eq!(config(&[("LAMINA_KERNELS_ISA", "scalar")]).isa, Isa::Scalar);
        assert_eq!(
            config(&[("LAMINA_KERNELS_ISA", "avx2")]).isa,
            Isa::best().capped(Isa::Avx2)
        );
        assert_eq!(config(&[("LAMINA_KERNELS_ISA", "avx512")]).isa, Isa::best());
        assert!(!config(&[("LAMINA_PANELS", "off")]).panels);
        assert!(config(&[("LAMINA_PANELS", "on")]).panels);
        assert_eq!(config(&[("LAMINA_POOL", "rayon")]).pool, PoolKind::Rayon);
        assert_eq!(
            config(&[("LAMINA_POOL_SPIN_US", "250")]).spin,
            Duration::from_micros(250)
        );
        assert_eq!(config(&[("LAMINA_POOL_SPIN_US", "-1")]).spin, SPIN_DEFAULT);
    }
}
