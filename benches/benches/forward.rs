//! The hot path of a single node: one forward of a `LocalChain` (one shard covering every
//! layer), as prefill of 64 tokens and as one decode step of one token, next to the same two
//! operations in candle-transformers' `quantized_llama` on the same weights.
//!
//! ```text
//! cargo bench -p lamina-benches --bench forward
//! LAMINA_BENCH_GGUF=/tmp/lamina-bench/tinyllama-1.1b-q8_0-seed0.gguf \
//!     cargo bench -p lamina-benches --bench forward -- gguf
//! ```
//!
//! Models: SmolLM2-135M Q4_1 (skipped, with a message, when the file is absent), a synthetic
//! `tiny` Q8_0 model built in memory, and any GGUF file named by `LAMINA_BENCH_GGUF`.
//! Threads: candle's default (the physical cores) unless `RAYON_NUM_THREADS` /
//! `CANDLE_NUM_THREADS` say otherwise. For a profile of one case, e.g.
//! `perf record target/release/deps/forward-* --bench --profile-time 20 'gguf/lamina/prefill'`.

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lamina_benches::models::{prompt_ids, SMOLLM2_PATH};
use lamina_sharding::executor::LogitRows;
use lamina_sharding::generate::LocalChain;
use lamina_sharding::kv_cache::KvCache;
use lamina_sharding::sampling::argmax;
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth::{self, SynthDType, SynthSpec};
use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

const PROMPT: usize = 64;
/// Decode steps run at positions `PROMPT..PROMPT + WINDOW`, then the cache goes back to the
/// prompt, so every sample sees about the same context length.
const WINDOW: usize = 192;

/// lamina: prefill and one decode step of a one-shard `LocalChain`.
fn bench_lamina(c: &mut Criterion, group: &str, model: &ModelFile, ids: &[u32]) {
    let n_layers = model.config().expect("config").n_layers;
    let range = lamina_sharding::layers::range(0, n_layers).expect("range");
    let chain = LocalChain::load(model, &[range], &Device::Cpu).expect("load");
    let max_len = PROMPT + WINDOW + 1;
    let new_caches = || -> Vec<KvCache> {
        chain
            .shards()
            .iter()
            .map(|s| s.new_cache(max_len).expect("cache"))
            .collect()
    };

    let mut g = c.benchmark_group(format!("{group}/lamina"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function("prefill_64_tokens", |b| {
        b.iter_batched(
            new_caches,
            |mut caches| {
                let logits = chain
                    .forward(&mut caches, black_box(ids), LogitRows::Last)
                    .expect("prefill");
                (caches, logits)
            },
            BatchSize::SmallInput,
        )
    });

    let mut caches = new_caches();
    let logits = chain
        .forward(&mut caches, ids, LogitRows::Last)
        .expect("prefill");
    let row = logits
        .get(0)
        .and_then(|r| r.to_vec1::<f32>())
        .expect("logits");
    let tok = argmax(&row);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_1_token", |b| {
        b.iter(|| {
            if caches[0].len() >= PROMPT + WINDOW {
                for cache in caches.iter_mut() {
                    cache.truncate(PROMPT);
                }
            }
            chain
                .forward(&mut caches, black_box(&[tok]), LogitRows::Last)
                .expect("decode")
        })
    });
    g.finish();
}

/// candle-transformers' `quantized_llama` on the same file: the reference lamina's
/// executor should match or beat.
fn bench_candle(c: &mut Criterion, group: &str, gguf: &[u8], ids: &[u32]) {
    let dev = Device::Cpu;
    let mut reader = Cursor::new(gguf);
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader).expect("gguf");
    let mut model = ModelWeights::from_gguf(content, &mut reader, &dev).expect("candle load");
    let prompt = Tensor::new(ids, &dev)
        .and_then(|t| t.unsqueeze(0))
        .expect("prompt");

    let mut g = c.benchmark_group(format!("{group}/candle"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function("prefill_64_tokens", |b| {
        b.iter(|| {
            model.clear_kv_cache();
            model.forward(black_box(&prompt), 0).expect("prefill")
        })
    });

    // Only the decode steps are timed; going back to the prompt is not.
    let restart = |model: &mut ModelWeights| -> u32 {
        model.clear_kv_cache();
        let l = model.forward(&prompt, 0).expect("prefill");
        argmax(
            &l.squeeze(0)
                .and_then(|r| r.to_vec1::<f32>())
                .expect("logits"),
        )
    };
    let mut tok = restart(&mut model);
    let mut pos = PROMPT;
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_1_token", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if pos >= PROMPT + WINDOW {
                    tok = restart(&mut model);
                    pos = PROMPT;
                }
                let x = Tensor::new(&[tok], &dev)
                    .and_then(|t| t.unsqueeze(0))
                    .expect("token");
                let t = Instant::now();
                black_box(model.forward(&x, pos).expect("decode"));
                total += t.elapsed();
                pos += 1;
            }
            total
        })
    });
    g.finish();
}

fn bench_bytes(c: &mut Criterion, group: &str, bytes: Vec<u8>) {
    let model = ModelFile::from_gguf_bytes(group, bytes.clone()).expect("model");
    let ids = prompt_ids(&model, PROMPT).expect("prompt");
    bench_lamina(c, group, &model, &ids);
    drop(model);
    bench_candle(c, group, &bytes, &ids);
}

fn smollm2(c: &mut Criterion) {
    match std::fs::read(SMOLLM2_PATH) {
        Ok(bytes) => bench_bytes(c, "smollm2_135m_q4_1", bytes),
        Err(e) => eprintln!("skipping the SmolLM2 benches: {SMOLLM2_PATH}: {e}"),
    }
}

fn synthetic_tiny(c: &mut Criterion) {
    let spec = SynthSpec::new("tiny", SynthDType::Q8_0, 0).expect("spec");
    let bytes = synth::gguf_bytes(&spec).expect("synthetic model");
    bench_bytes(c, "synth_tiny_q8_0", bytes);
}

/// Any GGUF file, e.g. the synthetic TinyLlama-1.1B of `lamina-bench compare`.
fn env_gguf(c: &mut Criterion) {
    let Some(path) = std::env::var_os("LAMINA_BENCH_GGUF") else {
        return;
    };
    match std::fs::read(&path) {
        Ok(bytes) => bench_bytes(c, "gguf", bytes),
        Err(e) => eprintln!("skipping LAMINA_BENCH_GGUF={}: {e}", path.to_string_lossy()),
    }
}

criterion_group!(benches, smollm2, synthetic_tiny, env_gguf);
criterion_main!(benches);
