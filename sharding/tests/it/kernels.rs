//! The quantized matmul kernels (`lamina_sharding::kernels`) against their scalar
//! reference and against candle.
//!
//! Every weight type the kernels take: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (8-bit activation
//! blocks of 32), Q4_K, Q5_K, Q6_K (Q8_K activation blocks of 256), F16, BF16 (f32
//! activations).
//!
//! Tolerances:
//! - SIMD vs scalar, 32-element quant types (same quantized activations, same exact i32
//!   block dots, only the f32 summation order differs):
//!   `|y_simd - y_scalar| <= 1e-5 * sum_j |w_j x_j| + 1e-6`.
//! - SIMD vs scalar, K-quants: bit-identical (the integer super-block sums are reduced
//!   before the f32 step, which both compute in the same order).
//! - SIMD vs scalar, F16 / BF16 (same 8-lane summation order, FMA vs two roundings):
//!   `1e-5 * sum_j |w_j x_j| + 1e-6`.
//! - Activation quantization (Q8 blocks of 32 and Q8_K) is bit-identical between SIMD
//!   and scalar.
//! - Scalar (and candle's `QMatMul`) vs the exact product of the dequantized weights
//!   with the f32 activations: within the worst case of 8-bit activation rounding plus
//!   scale rounding, `B = sum_blocks amax_b(x) * QB * max_b|w| * (1/254 + 1/256)` with
//!   `QB` the activation block (32 or 256); for F16 / BF16 `B = 1e-5 sum_j |w_j x_j|`;
//!   scalar vs candle within `2B`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use lamina_sharding::kernels::{
    self, matmul, quantize_acts, quantize_acts_k, Isa, QLinear, QMatrix, WeightType, QK, QK_K,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const TYPES: [WeightType; 10] = WeightType::ALL;

fn is_k(ty: WeightType) -> bool {
    ty.block_elems() == QK_K
}

fn is_float(ty: WeightType) -> bool {
    matches!(ty, WeightType::F16 | WeightType::BF16)
}

/// Widths to test for a type: `small` for the 32-element types, multiples of 256 for
/// the K-quants.
fn widths(ty: WeightType, small: &[usize]) -> Vec<usize> {
    if is_k(ty) {
        vec![256, 512, 768]
    } else {
        small.to_vec()
    }
}

/// Values in (-1, 1) with a per-block scale spread over three decades and some outliers,
/// so blocks have very different scales as real weights and activations do.
fn random_values(rng: &mut StdRng, len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    for _ in 0..len.div_ceil(QK) {
        let scale = 10f32.powf(rng.random_range(-2.0..1.0));
        for _ in 0..QK {
            let mut x = rng.random_range(-1.0f32..1.0) * scale;
            if rng.random_range(0..40) == 0 {
                x *= 8.0;
            }
            v.push(x);
        }
    }
    v.truncate(len);
    v
}

struct Case {
    qt: Arc<QTensor>,
    /// The dequantized weight, row-major `n * k`.
    w: Vec<f32>,
    x: Vec<f32>,
    ty: WeightType,
    n: usize,
    k: usize,
    m: usize,
}

impl Case {
    fn new(ty: WeightType, n: usize, k: usize, m: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let wf = random_values(&mut rng, n * k);
        let t = Tensor::from_vec(wf, (n, k), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&t, ty.ggml()).unwrap();
        let w = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let x = random_values(&mut rng, m * k);
        Self {
            qt: Arc::new(qt),
            w,
            x,
            ty,
            n,
            k,
            m,
        }
    }

    fn run(&self, isa: Isa, threads: usize) -> Vec<f32> {
        let data = self.qt.data().unwrap();
        let qm = QMatrix::new(self.ty, self.n, self.k, &data).unwrap();
        let mut y = vec![f32::NAN; self.m * self.n];
        matmul(&qm, &self.x, self.m, &mut y, isa, threads).unwrap();
        y
    }

    fn candle(&self) -> Vec<f32> {
        let mm = QMatMul::from_arc(self.qt.clone()).unwrap();
        let x = Tensor::from_vec(self.x.clone(), (self.m, self.k), &Device::Cpu).unwrap();
        mm.forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    /// The exact product of the dequantized weights and the f32 activations (f64 sums).
    fn exact(&self) -> Vec<f32> {
        let mut y = vec![0f32; self.m * self.n];
        for c in 0..self.m {
            for r in 0..self.n {
                let s: f64 = (0..self.k)
                    .map(|j| self.w[r * self.k + j] as f64 * self.x[c * self.k + j] as f64)
                    .sum();
                y[c * self.n + r] = s as f32;
            }
        }
        y
    }

    /// `sum_j |w_j x_j|` per output.
    fn magnitude(&self) -> Vec<f32> {
        let mut y = vec![0f32; self.m * self.n];
        for c in 0..self.m {
            for r in 0..self.n {
                y[c * self.n + r] = (0..self.k)
                    .map(|j| (self.w[r * self.k + j] * self.x[c * self.k + j]).abs())
                    .sum();
            }
        }
        y
    }

    /// The activation-quantization bound `B` of the module docs, per output.
    fn act_bound(&self) -> Vec<f32> {
        if is_float(self.ty) {
            return self.magnitude().iter().map(|m| 1e-5 * m + 1e-6).collect();
        }
        let qb = self.ty.block_elems();
        let mut y = vec![0f32; self.m * self.n];
        for c in 0..self.m {
            for r in 0..self.n {
                let mut b = 0f32;
                for blk in 0..self.k / qb {
                    let xs = &self.x[c * self.k + blk * qb..][..qb];
                    let ws = &self.w[r * self.k + blk * qb..][..qb];
                    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let wmax = ws.iter().fold(0f32, |a, v| a.max(v.abs()));
                    b += amax * qb as f32 * wmax * (1.0 / 254.0 + 1.0 / 256.0);
                }
                y[c * self.n + r] = b + 1e-6;
            }
        }
        y
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let e = (g - w).abs();
        assert!(
            e <= t,
            "{what}: output {i}: got {g}, want {w}, |diff| {e} > tolerance {t}"
        );
        worst = worst.max(e / t);
    }
    worst
}

fn simd_tolerance(case: &Case) -> Vec<f32> {
    if is_k(case.ty) {
        return vec![0.0; case.m * case.n];
    }
    case.magnitude().iter().map(|m| 1e-5 * m + 1e-6).collect()
}

#[test]
fn dequantize_block_matches_candle() {
    for ty in TYPES {
        let case = Case::new(ty, 5, 512, 1, 7);
        let data = case.qt.data().unwrap();
        let (bb, qb) = (ty.block_bytes(), ty.block_elems());
        let mut out = vec![0f32; qb];
        for (i, blk) in data.chunks_exact(bb).enumerate() {
            lamina_sharding::kernels::dequantize_block(ty, blk, &mut out);
            assert_eq!(&out[..], &case.w[i * qb..(i + 1) * qb], "{ty:?} block {i}");
        }
    }
}

#[test]
fn activation_quantization_is_bit_identical_across_isas() {
    let mut rng = StdRng::seed_from_u64(11);
    for (m, k) in [(1, 32), (3, 96), (7, 576), (2, 1536)] {
        let mut x = random_values(&mut rng, m * k);
        // Exact zeros, a zero block, and exact halves of the quant step.
        x[0] = 0.0;
        x[1] = -0.0;
        for v in &mut x[k - QK..k] {
            *v = 0.0;
        }
        let reference = quantize_acts(&x, m, k, Isa::Scalar).unwrap();
        for isa in Isa::available() {
            let q = quantize_acts(&x, m, k, isa).unwrap();
            for r in 0..m {
                assert_eq!(q.qs_row(r), reference.qs_row(r), "{isa:?} quants row {r}");
                assert_eq!(q.d_row(r), reference.d_row(r), "{isa:?} scales row {r}");
                assert_eq!(q.s_row(r), reference.s_row(r), "{isa:?} sums row {r}");
            }
        }
        // The zero block has zero scale and quants.
        assert_eq!(reference.d_row(0)[k / QK - 1], 0.0);
        assert!(reference.qs_row(0)[k - QK..].iter().all(|&q| q == 0));
    }
}

#[test]
fn simd_matches_scalar_on_odd_shapes() {
    println!(
        "available: {:?}, used by default: {:?}",
        Isa::available(),
        Isa::detect()
    );
    let mut seed = 100;
    for ty in TYPES {
        for k in widths(ty, &[32, 96, 576]) {
            for n in [1, 3, 17, 33, 577] {
                for m in [1, 2, 5, 7] {
                    seed += 1;
                    let case = Case::new(ty, n, k, m, seed);
                    let reference = case.run(Isa::Scalar, 1);
                    let tol = simd_tolerance(&case);
                    for isa in Isa::available() {
                        for threads in [1, 2, 3] {
                            let got = case.run(isa, threads);
                            let what = format!("{ty:?} {isa:?} n={n} k={k} m={m} t={threads}");
                            assert_close(&what, &got, &reference, &tol);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rows_are_batch_invariant_bitwise() {
    // A row's output must not depend on the rows batched with it (tile shapes, threads):
    // batched sessions must equal single sessions exactly.
    for ty in TYPES {
        let case = Case::new(ty, 37, widths(ty, &[96])[0], 7, 77);
        for isa in Isa::available() {
            let all = case.run(isa, 2);
            for c in 0..case.m {
                let data = case.qt.data().unwrap();
                let qm = QMatrix::new(ty, case.n, case.k, &data).unwrap();
                let mut y1 = vec![0f32; case.n];
                let x1 = &case.x[c * case.k..(c + 1) * case.k];
                matmul(&qm, x1, 1, &mut y1, isa, 1).unwrap();
                assert_eq!(
                    &all[c * case.n..(c + 1) * case.n],
                    &y1[..],
                    "{ty:?} {isa:?} row {c}"
                );
            }
        }
    }
}

#[test]
fn scalar_and_candle_match_the_exact_product_within_activation_rounding() {
    let mut seed = 500;
    for ty in TYPES {
        // Candle's Q4_1 kernel wants an even number of blocks per row.
        for k in widths(ty, &[64, 576]) {
            for n in [1, 17, 33] {
                for m in [1, 2, 5, 7] {
                    seed += 1;
                    let case = Case::new(ty, n, k, m, seed);
                    let exact = case.exact();
                    let bound = case.act_bound();
                    let ours = case.run(Isa::Scalar, 1);
                    let fast = case.run(Isa::detect(), 2);
                    let candle = case.candle();
                    let what = format!("{ty:?} n={n} k={k} m={m}");
                    let w1 =
                        assert_close(&format!("scalar vs exact, {what}"), &ours, &exact, &bound);
                    let w2 = assert_close(&format!("SIMD vs exact, {what}"), &fast, &exact, &bound);
                    assert_close(&format!("candle vs exact, {what}"), &candle, &exact, &bound);
                    let bound2: Vec<f32> = bound.iter().map(|b| 2.0 * b).collect();
                    assert_close(
                        &format!("scalar vs candle, {what}"),
                        &ours,
                        &candle,
                        &bound2,
                    );
                    assert!(w1 < 1.0 && w2 < 1.0);
                }
            }
        }
    }
}

#[test]
fn qlinear_runs_supported_weights_and_declines_the_rest() {
    let case = Case::new(WeightType::Q4_1, 33, 64, 3, 9);
    let lin = QLinear::new(case.qt.clone()).expect("Q4_1 on the CPU is supported");
    assert_eq!(lin.weight_type(), WeightType::Q4_1);
    // Any leading shape; the output keeps it.
    let x = Tensor::from_vec(case.x.clone(), (1, 3, 64), &Device::Cpu).unwrap();
    let y = lin.forward(&x).unwrap().expect("f32 CPU input runs");
    assert_eq!(y.dims(), &[1, 3, 33]);
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = case.run(Isa::detect(), 1);
    assert_close("QLinear vs matmul", &got, &want, &simd_tolerance(&case));
    // A non-contiguous input (a transposed view) is made contiguous.
    let xt = Tensor::from_vec(case.x.clone(), (3, 64), &Device::Cpu)
        .unwrap()
        .t()
        .unwrap()
        .contiguous()
        .unwrap()
        .t()
        .unwrap();
    assert!(!xt.is_contiguous());
    let y2 = lin.forward(&xt).unwrap().unwrap();
    let got2 = y2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(
        "QLinear non-contiguous",
        &got2,
        &want,
        &simd_tolerance(&case),
    );
    // Other input dtypes go back to candle.
    let xh = x.to_dtype(DType::F16).unwrap();
    assert!(lin.forward(&xh).unwrap().is_none());
    // Wrong width is an error, not a panic.
    let bad = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(lin.forward(&bad).is_err());
    // Unsupported weight types are declined at load.
    let f = Tensor::zeros((4, 256), DType::F32, &Device::Cpu).unwrap();
    for dt in [GgmlDType::F32, GgmlDType::Q2K, GgmlDType::Q3K] {
        let q = QTensor::quantize(&f, dt).unwrap();
        assert!(QLinear::new(Arc::new(q)).is_none(), "{dt:?}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let data = vec![0u8; 3 * 2 * 20];
    assert!(QMatrix::new(WeightType::Q4_1, 3, 64, &data).is_ok());
    assert!(QMatrix::new(WeightType::Q4_1, 3, 60, &data).is_err());
    assert!(QMatrix::new(WeightType::Q4_1, 4, 64, &data).is_err());
    assert!(QMatrix::new(WeightType::Q4_0, 3, 64, &data).is_err());
    assert!(QMatrix::new(WeightType::Q4_1, usize::MAX, 64, &data).is_err());
    let w = QMatrix::new(WeightType::Q4_1, 3, 64, &data).unwrap();
    let mut y = vec![0f32; 6];
    assert!(matmul(&w, &[0.0; 128], 2, &mut y, Isa::Scalar, 1).is_ok());
    assert!(matmul(&w, &[0.0; 127], 2, &mut y, Isa::Scalar, 1).is_err());
    assert!(matmul(&w, &[0.0; 128], 2, &mut y[..5], Isa::Scalar, 1).is_err());
    assert!(quantize_acts(&[0.0; 48], 1, 48, Isa::Scalar).is_err());
}

#[test]
fn env_switch_reads_candle() {
    // Only checks the default; `LAMINA_KERNELS=candle` is exercised by the CLI A/B runs.
    if std::env::var("LAMINA_KERNELS").is_err() {
        assert!(kernels::enabled());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn simd_equals_scalar_property(
        ty in 0usize..10,
        n in 1usize..70,
        nb in 1usize..7,
        m in 1usize..9,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let ty = TYPES[ty];
        let case = Case::new(ty, n, nb * ty.block_elems(), m, seed);
        let reference = case.run(Isa::Scalar, 1);
        let tol = simd_tolerance(&case);
        for isa in Isa::available() {
            let got = case.run(isa, threads);
            for ((g, w), t) in got.iter().zip(&reference).zip(&tol) {
                prop_assert!((g - w).abs() <= *t, "{:?} {:?}: {} vs {}", ty, isa, g, w);
            }
        }
    }
}

#[test]
fn q8k_activation_quantization_is_bit_identical_across_isas() {
    let mut rng = StdRng::seed_from_u64(12);
    for (m, k) in [(1, 256), (3, 512), (2, 1536)] {
        let mut x = random_values(&mut rng, m * k);
        // A zero super-block, and a row whose largest magnitude appears twice with
        // opposite signs (the first one sets the sign of the scale).
        let zero_block = k > QK_K;
        if zero_block {
            for v in &mut x[k - QK_K..k] {
                *v = 0.0;
            }
        }
        x[3] = 50.0;
        x[7] = -50.0;
        let reference = quantize_acts_k(&x, m, k, Isa::Scalar).unwrap();
        for isa in Isa::available() {
            let q = quantize_acts_k(&x, m, k, isa).unwrap();
            for r in 0..m {
                assert_eq!(q.qs_row(r), reference.qs_row(r), "{isa:?} quants row {r}");
                assert_eq!(q.d_row(r), reference.d_row(r), "{isa:?} scales row {r}");
                assert_eq!(
                    q.bsums_row(r),
                    reference.bsums_row(r),
                    "{isa:?} sums row {r}"
                );
            }
        }
        if zero_block {
            assert_eq!(reference.d_row(0)[k / QK_K - 1], 0.0);
            assert!(reference.qs_row(0)[k - QK_K..].iter().all(|&q| q == 0));
        }
        assert_eq!(reference.qs_row(0)[3], -127);
        assert_eq!(reference.qs_row(0)[7], 127);
        // bsums are the sums of 16 quants.
        let s: i16 = reference.qs_row(0)[..16].iter().map(|&q| q as i16).sum();
        assert_eq!(reference.bsums_row(0)[0], s);
    }
}

#[test]
fn new_types_run_through_qlinear_and_reject_bad_widths() {
    for ty in [
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
        WeightType::F16,
        WeightType::BF16,
    ] {
        let k = widths(ty, &[64])[0];
        let case = Case::new(ty, 9, k, 2, 31);
        let lin = QLinear::new(case.qt.clone()).expect("supported on the CPU");
        assert_eq!(lin.weight_type(), ty);
        let x = Tensor::from_vec(case.x.clone(), (2, k), &Device::Cpu).unwrap();
        let got = lin.forward(&x).unwrap().unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = case.run(Isa::detect(), 1);
        assert_eq!(got, want, "{ty:?}");
        // k must be a multiple of the type's block.
        let qb = ty.block_elems();
        let data = vec![0u8; ty.block_bytes()];
        assert!(QMatrix::new(ty, 1, qb, &data).is_ok());
        assert!(QMatrix::new(ty, 1, qb / 2, &data).is_err(), "{ty:?}");
    }
    // A K-quant weight must have a width that is a multiple of 256, not just of 32.
    let data = vec![0u8; 144];
    assert!(QMatrix::new(WeightType::Q4K, 1, 256, &data).is_ok());
    assert!(QMatrix::new(WeightType::Q4K, 2, 128, &data).is_err());
    assert!(quantize_acts_k(&[0.0; 128], 1, 128, Isa::Scalar).is_err());
}

const PANEL_TYPES: [(WeightType, usize); 3] = [
    (WeightType::Q8_0, 576),
    (WeightType::Q4_0, 288),
    (WeightType::Q4_1, 320),
];

/// The panel kernels (Q8_0, Q4_0, Q4_1 repacked into 16-row panels, AVX-512 VNNI)
/// against the scalar reference on the file layout, within the SIMD tolerance: shapes
/// with `n` not a multiple of the panel and `m` not a multiple of the 8-row tile, on 1-3
/// threads. Where the CPU lacks VNNI, the kernel must refuse with an error instead.
#[test]
fn panels_match_scalar_on_odd_shapes() {
    use lamina_sharding::kernels::Panels;
    let vnni = Isa::Avx512Vnni.is_available();
    let mut seed = 9000;
    for (ty, block_bytes) in PANEL_TYPES {
        for k in [32, 96, 576] {
            for n in [1, 15, 16, 17, 33, 577] {
                for m in [1, 2, 7, 8, 9, 17] {
                    seed += 1;
                    let case = Case::new(ty, n, k, m, seed);
                    let data = case.qt.data().unwrap();
                    let qm = QMatrix::new(ty, n, k, &data).unwrap();
                    let panels = Panels::repack(&qm).unwrap();
                    assert_eq!(panels.shape(), (n, k));
                    assert_eq!(panels.bytes(), n.div_ceil(16) * (k / 32) * block_bytes);
                    let reference = case.run(Isa::Scalar, 1);
                    let tol = simd_tolerance(&case);
                    for threads in [1, 2, 3] {
                        let mut y = vec![f32::NAN; m * n];
                        let r = panels.matmul(&case.x, m, &mut y, threads);
                        if !vnni {
                            assert!(r.is_err(), "no VNNI: the panel kernel must refuse");
                            continue;
                        }
                        r.unwrap();
                        let what = format!("{ty:?} panels n={n} k={k} m={m} t={threads}");
                        assert_close(&what, &y, &reference, &tol);
                    }
                }
            }
        }
    }
}

/// A row's output from the panel kernels does not depend on the rows batched with it
/// (the 8-row tile and the one-row decode path give the same bits).
#[test]
fn panels_are_batch_invariant_bitwise() {
    use lamina_sharding::kernels::Panels;
    if !Isa::Avx512Vnni.is_available() {
        return assert!(!Panels::available());
    }
    for (ty, _) in PANEL_TYPES {
        let case = Case::new(ty, 49, 576, 11, 4242);
        let data = case.qt.data().unwrap();
        let qm = QMatrix::new(ty, case.n, case.k, &data).unwrap();
        let panels = Panels::repack(&qm).unwrap();
        let mut all = vec![0f32; case.m * case.n];
        panels.matmul(&case.x, case.m, &mut all, 2).unwrap();
        for c in 0..case.m {
            let mut y1 = vec![0f32; case.n];
            let x1 = &case.x[c * case.k..(c + 1) * case.k];
            panels.matmul(x1, 1, &mut y1, 1).unwrap();
            assert_eq!(
                &all[c * case.n..(c + 1) * case.n],
                &y1[..],
                "{ty:?} row {c}"
            );
        }
    }
}

/// Bad input is an error, not a panic.
#[test]
fn panels_reject_bad_input() {
    use lamina_sharding::kernels::Panels;
    let case = Case::new(WeightType::Q5_0, 16, 64, 1, 1);
    let data = case.qt.data().unwrap();
    let q5 = QMatrix::new(WeightType::Q5_0, 16, 64, &data).unwrap();
    assert!(Panels::repack(&q5).is_err(), "Q5_0 has no panel layout");
    let case = Case::new(WeightType::Q8_0, 16, 64, 2, 2);
    let data = case.qt.data().unwrap();
    let qm = QMatrix::new(WeightType::Q8_0, 16, 64, &data).unwrap();
    let panels = Panels::repack(&qm).unwrap();
    let mut y = vec![0f32; 16];
    assert!(panels.matmul(&case.x, 2, &mut y, 1).is_err(), "y too short");
    assert!(
        panels.matmul(&case.x[..10], 1, &mut y, 1).is_err(),
        "x too short"
    );
}

/// `repack_with` reports every source byte it read, once, in order, in whole rows: the
/// loader releases exactly the file pages the panels replaced.
#[test]
fn panels_report_the_bytes_they_consumed() {
    use lamina_sharding::kernels::Panels;
    for (ty, _) in PANEL_TYPES {
        let (n, k) = (4000, 576);
        let case = Case::new(ty, n, k, 1, 31);
        let data = case.qt.data().unwrap();
        let qm = QMatrix::new(ty, n, k, &data).unwrap();
        let mut ranges = Vec::new();
        Panels::repack_with(&qm, |r| ranges.push(r)).unwrap();
        let row_bytes = data.len() / n;
        assert!(
            ranges.len() > 1,
            "{ty:?}: progress in steps, got {ranges:?}"
        );
        let mut at = 0;
        for r in &ranges {
            assert_eq!(r.start, at, "{ty:?}: contiguous");
            assert!(
                r.end > r.start && r.end % row_bytes == 0,
                "{ty:?}: whole rows"
            );
            at = r.end;
        }
        assert_eq!(at, data.len(), "{ty:?}: every byte");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The panel kernels equal the scalar reference on random shapes (any `n`, any
    /// number of blocks, 1-20 activation rows, so partial panels and partial tiles), or
    /// refuse where the CPU lacks VNNI.
    #[test]
    fn panels_equal_scalar_property(
        ty in 0usize..3,
        n in 1usize..70,
        nb in 1usize..7,
        m in 1usize..21,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        use lamina_sharding::kernels::Panels;
        let ty = PANEL_TYPES[ty].0;
        let case = Case::new(ty, n, nb * QK, m, seed);
        let data = case.qt.data().unwrap();
        let qm = QMatrix::new(ty, n, nb * QK, &data).unwrap();
        let panels = Panels::repack(&qm).unwrap();
        let mut got = vec![f32::NAN; m * n];
        let r = panels.matmul(&case.x, m, &mut got, threads);
        if !Isa::Avx512Vnni.is_available() {
            prop_assert!(r.is_err());
        } else {
            prop_assert!(r.is_ok());
            let reference = case.run(Isa::Scalar, 1);
            let tol = simd_tolerance(&case);
            for ((g, w), t) in got.iter().zip(&reference).zip(&tol) {
                prop_assert!((g - w).abs() <= *t, "{:?} panels: {} vs {}", ty, g, w);
            }
        }
    }
}
