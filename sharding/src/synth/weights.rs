//! Deterministic pseudo-random weight values.
//!
//! Every row of every tensor gets its own RNG, seeded from blake3 of (model seed, tensor
//! name, row index). That makes a value depend only on where it sits, not on the order in
//! which tensors or rows are generated, so rows can be filled by several threads, a tensor can
//! be regenerated on its own, and files are byte-identical on every platform and thread count.
//!
//! The stream is xoshiro256++, written out here rather than taken from `rand`: `StdRng`'s
//! algorithm may change between rand releases (which would silently change every synthetic
//! model's bytes and ids), and ChaCha12 costs about twice as much per value, which is the
//! largest part of writing an 8B-shape file. blake3 supplies the seed quality; xoshiro only
//! has to stretch 256 good bits over one row.

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
/// per value and no transcendental functions (Box-Muller would need a log, a sqrt and a
/// cosine per pair), while the bell shape, bounded at ±3.46 σ, is all random-weight tests need.
pub fn fill_row(key: &[u8; 32], row: u64, init: Init, out: &mut [f32]) {
    let mut rng = Xoshiro256pp::from_seed(blake3::keyed_hash(key, &row.to_le_bytes()).as_bytes());
    // Sum of four uniforms on 0..=65535 has mean 131070 and std 65536/sqrt(3) (to 1e-9).
    let scale = init.std * 3f32.sqrt() / 65536.0;
    for x in out.iter_mut() {
        let r = rng.next_u64();
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        *x = init.mean + (s as f32 - 131_070.0) * scale;
    }
}

/// xoshiro256++ (Blackman & Vigna, 2019), the generator of `rand_xoshiro::Xoshiro256PlusPlus`.
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// The seed is read as four little-endian `u64`s. An all-zero state would output only
    /// zeros; blake3 output is never all zero in practice, but it is replaced anyway.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let mut s = [0u64; 4];
        for (word, bytes) in s.iter_mut().zip(seed.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *word = u64::from_le_bytes(b);
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Xoshiro256pp { s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_outputs() {
        // State [1, 2, 3, 4]: the test vector of the reference C code / rand_xoshiro.
        let mut seed = [0u8; 32];
        for (i, w) in [1u64, 2, 3, 4].iter().enumerate() {
            seed[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let mut rng = Xoshiro256pp::from_seed(&seed);
        let expected = [
            41943041u64,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

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
