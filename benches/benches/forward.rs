//! The hot path of a single node: one forward of a `LocalChain` (one shard covering every
//! layer), as prefill of 64 tokens and as one decode step of one token.
//!
//! `cargo bench -p lamina-benches --bench forward`. Threads: candle's default (the physical
//! cores) unless `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` say otherwise. The SmolLM2 part is
//! skipped, with a message, when the model file is absent.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lamina_benches::models::{prompt_ids, SMOLLM2_PATH};
use lamina_sharding::executor::LogitRows;
use lamina_sharding::generate::LocalChain;
use lamina_sharding::kv_cache::KvCache;
use lamina_sharding::layers::LayerRange;
use lamina_sharding::sampling::argmax;
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth::{self, SynthDType, SynthSpec};
use std::hint::black_box;

const PROMPT: usize = 64;
/// Decode steps run at positions `PROMPT..PROMPT + WINDOW`, then the cache is cut back to
/// the prompt, so every sample sees about the same context length.
const WINDOW: usize = 192;

fn bench_model(c: &mut Criterion, name: &str, model: &ModelFile) {
    let n_layers = model.config().expect("config").n_layers;
    let range = LayerRange::new(0, n_layers).expect("range");
    let chain = LocalChain::load(model, &[range], &Device::Cpu).expect("load");
    let ids = prompt_ids(model, PROMPT).expect("prompt");
    let max_len = PROMPT + WINDOW + 1;
    let new_caches = || -> Vec<KvCache> {
        chain
            .shards()
            .iter()
            .map(|s| s.new_cache(max_len).expect("cache"))
            .collect()
    };

    let mut g = c.benchmark_group(name);
    g.sample_size(10);

    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function("prefill_64_tokens", |b| {
        b.iter_batched(
            new_caches,
            |mut caches| {
                let logits = chain
                    .forward(&mut caches, black_box(&ids), LogitRows::Last)
                    .expect("prefill");
                (caches, logits)
            },
            BatchSize::SmallInput,
        )
    });

    let mut caches = new_caches();
    let logits = chain
        .forward(&mut caches, &ids, LogitRows::Last)
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

fn smollm2(c: &mut Criterion) {
    if !std::path::Path::new(SMOLLM2_PATH).exists() {
        eprintln!("skipping the SmolLM2 benches: {SMOLLM2_PATH} not found");
        return;
    }
    let model = ModelFile::open(SMOLLM2_PATH).expect("open SmolLM2");
    bench_model(c, "smollm2_135m_q4_1", &model);
}

fn synthetic_tiny(c: &mut Criterion) {
    let spec = SynthSpec::new("tiny", SynthDType::Q8_0, 0).expect("spec");
    let bytes = synth::gguf_bytes(&spec).expect("synthetic model");
    let model = ModelFile::from_gguf_bytes("synthetic tiny q8_0", bytes).expect("model");
    bench_model(c, "synth_tiny_q8_0", &model);
}

criterion_group!(benches, smollm2, synthetic_tiny);
criterion_main!(benches);
