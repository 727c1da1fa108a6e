//! lamina's quantized CPU kernels (`lamina_sharding::kernels::matmul`) against candle's
//! `QMatMul` on the same weights, per weight type, for a decode-shaped (m = 1) and a
//! prefill-shaped (m = 64) product on a 2048 x 2048 and a 576 x 1536 (n x k) weight.
//!
//! ```text
//! cargo bench -p lamina-benches --bench kernels -- --warm-up-time 1 --measurement-time 3
//! cargo bench -p lamina-benches --bench kernels -- 'Q4K/'   # one type
//! ```
//!
//! `lamina-panels` is the same product on the weights repacked into 16-row panels
//! (`kernels::Panels`: Q8_0, Q4_0, Q4_1 on AVX-512 VNNI), which is what the executor
//! runs for those types there; `lamina` is the block kernel on the file's layout.
//!
//! Throughput is the GGUF bytes of the weight per product (decimal GB/s), for both
//! sides, so the two are comparable even where candle does not stream those bytes
//! (F16 / BF16: `QMatMul` dequantizes them to an f32 matrix once, at construction, and
//! multiplies that). Both sides run on rayon's global pool and the ISA `Isa::detect`
//! picks (`LAMINA_KERNELS_ISA` caps it). Compare relative numbers from one run only.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lamina_sharding::kernels::{matmul, Isa, Panels, QMatrix, WeightType};
use std::hint::black_box;
use std::sync::Arc;

const SHAPES: [(usize, usize); 2] = [(2048, 2048), (576, 1536)];
const MS: [usize; 2] = [1, 64];

/// Deterministic values in (-1, 1) with varying block scales (xorshift; no rand dep).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let scale = 10f32.powf(next() * 1.5 - 0.5);
        for _ in 0..32 {
            v.push(next() * scale);
        }
    }
    v.truncate(len);
    v
}

fn bench_kernels(c: &mut Criterion) {
    // The size of rayon's global pool unless RAYON_NUM_THREADS says otherwise.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let isa = Isa::detect();
    eprintln!("kernels bench: {isa:?}, {threads} threads");
    for ty in WeightType::ALL {
        for (n, k) in SHAPES {
            let w = Tensor::from_vec(values(n * k, 1), (n, k), &Device::Cpu).expect("weight");
            let qt = Arc::new(QTensor::quantize(&w, ty.ggml()).expect("quantize"));
            let mm = QMatMul::from_arc(qt.clone()).expect("QMatMul");
            let data = qt.data().expect("bytes");
            let qm = QMatrix::new(ty, n, k, &data).expect("layout");
            let bytes = data.len() as u64;
            // What the executor runs for this type here: the repacked panels where the
            // CPU has AVX-512 VNNI (Q8_0, Q4_0, Q4_1), else the block kernels above.
            let panels = (Panels::supports(ty) && Panels::available())
                .then(|| Panels::repack(&qm).expect("repack"));
            for m in MS {
                let x = values(m * k, 2);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).expect("x");
                let mut y = vec![0f32; m * n];
                let mut g = c.benchmark_group(format!("{ty:?}/{n}x{k}/m{m}"));
                g.throughput(Throughput::BytesDecimal(bytes));
                g.bench_function("lamina", |b| {
                    b.iter(|| {
                        matmul(&qm, black_box(&x), m, &mut y, isa, threads).expect("matmul");
                        black_box(&y);
                    })
                });
                if let Some(p) = &panels {
                    g.bench_function("lamina-panels", |b| {
                        b.iter(|| {
                            p.matmul(black_box(&x), m, &mut y, threads).expect("panels");
                            black_box(&y);
                        })
                    });
                }
                g.bench_function("candle", |b| {
                    b.iter(|| black_box(mm.forward(black_box(&xt)).expect("forward")))
                });
                g.finish();
            }
        }
    }
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
