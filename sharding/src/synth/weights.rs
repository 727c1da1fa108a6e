//! Deterministic pseudo-random weight values.
//!
//! Every row of every tensor gets its own RNG, seeded from blake3 of (model seed, tensor
//! name, row index). That makes a value depend only on where it sits, not on the order in
//! which tensors or rows are generated, so rows can be filled by several threads, a tensor can
//! be regenerated on its own, and files are byte-identical on every platform and thread count.
//! The stream itself is rand 0.9's `StdRng` (ChaCha12); a rand upgrade that changes `StdRng`
//! would change the bytes of every synthetic file, which the golden-hash test would catch.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Domain separation for blake3, so these seeds never collide with other uses of the same
/// hash in lamina (tensor manifests, model ids).
const KEY_CONTEXT: &str = "lamina synth weights v1";

/// Standard deviation of matmul weights. Small enough that the residual stream of a 32-layer
/// model stays far from f16 overflow, large enough that logits are not all equal.
pub const MATMUL_STD: f32 = 0.02;
/// Standard deviation of the noise around 1.0 in RMSNorm weights; real norms hover near 1.
pub const NORM_NOISE_STD: f32 = 0.01;

/// How the values of one tensor are distributed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Init {
    pub mean: f32,
    pub std: f32,
}

impl Init {
    pub fn for_tensor(name: &str) -> Self {
        if name.ends_with("norm.weight") {
            Init {
                mean: 1.0,
                std: NORM_NOISE_STD,
            }
        } else {
            Init {
                mean: 0.0,
                std: MATMUL_STD,
            }
        }
    }
}

/// The per-tensor key from which each row's RNG seed is derived.
pub fn tensor_key(seed: u64, name: &str) -> [u8; 32] {
    let mut material = Vec::with_capacity(8 + name.len());
    material.extend_from_slice(&seed.to_le_bytes());
    material.extend_from_slice(name.as_bytes());
    blake3::derive_key(KEY_CONTEXT, &material)
}

/// Fills `out` (one row) with approximately normal values.
///
/// Uses the Irwin-Hall sum of four 16-bit uniforms taken from a single `u64`: one RNG call
/// per value and no transcendental functions, which keeps an 8B-parameter file to about a
/// minute, while the bell shape (bounded at ±3.46 σ) is all random-weight tests need.
pub fn fill_row(key: &[u8; 32], row: u64, init: Init, out: &mut [f32]) {
    let mut rng = StdRng::from_seed(*blake3::keyed_hash(key, &row.to_le_bytes()).as_bytes());
    // Sum of four uniforms on 0..=65535 has mean 131070 and std 65536/sqrt(3) (to 1e-9).
    let scale = init.std * 3f32.sqrt() / 65536.0;
    for x in out.iter_mut() {
        let r = rng.next_u64();
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        *x = init.mean + (s as f32 - 131_070.0) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_match_init() {
        let key = tensor_key(7, "blk.0.attn_q.weight");
        let mut row = vec![0f32; 200_000];
        fill_row(&key, 0, Init::for_tensor("x.weight"), &mut row);
        let n = row.len() as f64;
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.0005, "std {}", var.sqrt());
    }

    #[test]
    fn rows_and_tensors_are_independent_streams() {
        let a = tensor_key(1, "a");
        let b = tensor_key(1, "b");
        let a2 = tensor_key(2, "a");
        let init = Init::for_tensor("w");
        let row = |k: &[u8; 32], r| {
            let mut v = vec![0f32; 8];
            fill_row(k, r, init, &mut v);
            v
        };
        assert_eq!(row(&a, 0), row(&a, 0));
        assert_ne!(row(&a, 0), row(&a, 1));
        assert_ne!(row(&a, 0), row(&b, 0));
        assert_ne!(row(&a, 0), row(&a2, 0));
    }

    #[test]
    fn norms_center_on_one() {
        let key = tensor_key(0, "blk.0.attn_norm.weight");
        let mut v = vec![0f32; 4096];
        fill_row(&key, 0, Init::for_tensor("blk.0.attn_norm.weight"), &mut v);
        assert!(v.iter().all(|&x| (0.9..1.1).contains(&x)));
    }
}
