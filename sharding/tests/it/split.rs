//! Split equivalence: any cut of the layers into contiguous shards, chained in one
//! process, gives the same greedy tokens and the same logits as the unsplit model.

use crate::common::*;
use candle_core::Device;
use lamina_sharding::generate::{LocalChain, Stepper};
use lamina_sharding::layers::{even_split, LayerRange};
use lamina_sharding::source::ModelFile;
use lamina_sharding::synth;
use proptest::prelude::*;

fn synthetic() -> ModelFile {
    let spec = synth::SynthSpec {
        preset: synth::preset("tiny").unwrap().clone(),
        dtype: synth::SynthDType::Q8_0,
        seed: 7,
        n_layers_override: Some(6),
    };
    ModelFile::from_gguf_bytes("synthetic", synth::gguf_bytes(&spec).unwrap()).unwrap()
}

/// Greedy tokens and the logits of each step.
fn run(chain: &LocalChain, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = chain.session(prompt.len() + n).unwrap();
    let mut logits = s.step(prompt).unwrap();
    let (mut toks, mut all) = (vec![], vec![]);
    for _ in 0..n {
        let t = argmax(&logits);
        toks.push(t);
        all.push(logits.clone());
        logits = s.step(&[t]).unwrap();
    }
    (toks, all)
}

/// Ranges from cut points.
fn ranges(n_layers: usize, mut cuts: Vec<usize>) -> Vec<LayerRange> {
    cuts.retain(|&c| c > 0 && c < n_layers);
    cuts.sort();
    cuts.dedup();
    let mut out = vec![];
    let mut start = 0;
    for c in cuts.into_iter().chain([n_layers]) {
        out.push(lamina_sharding::layers::range(start, c).unwrap());
        start = c;
    }
    out
}

fn check_model(model: &ModelFile, prompts: &[Vec<u32>], extra_splits: &[Vec<LayerRange>]) {
    let n = model.config().unwrap().n_layers;
    let whole = LocalChain::load(
        model,
        &[lamina_sharding::layers::range(0, n).unwrap()],
        &Device::Cpu,
    )
    .unwrap();
    let mut splits: Vec<Vec<LayerRange>> = vec![
        even_split(n, 2).unwrap(),
        even_split(n, 3.min(n)).unwrap(),
        even_split(n, n).unwrap(),
    ];
    splits.extend_from_slice(extra_splits);
    for prompt in prompts {
        let (want_toks, want_logits) = run(&whole, prompt, 8);
        for split in &splits {
            let chain = LocalChain::load(model, split, &Device::Cpu).unwrap();
            let (toks, logits) = run(&chain, prompt, 8);
            assert_eq!(toks, want_toks, "split {split:?}");
            for (a, b) in logits.iter().zip(&want_logits) {
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(d <= 1e-5, "split {split:?}: logits differ by {d}");
            }
        }
    }
}

#[test]
fn stories260k_every_split_shape_matches_unsplit() {
    let Some(path) = model_path("stories260K.gguf") else {
        return;
    };
    let model = ModelFile::open(path).unwrap();
    let tok = model.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = ["Once upon a time", "The cat sat", "Tom had a big red ball"]
        .iter()
        .map(|p| tok.encode(p, true, false).unwrap())
        .collect();
    check_model(&model, &prompts, &[]);
}

#[test]
fn synthetic_every_split_shape_matches_unsplit() {
    let model = synthetic();
    let prompts = vec![vec![1, 5, 300, 42], vec![1, 9], vec![7; 17]];
    check_model(&model, &prompts, &[]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random cut points and random prompts on both models.
    #[test]
    fn random_splits_match_unsplit(
        cuts in proptest::collection::vec(1usize..6, 0..5),
        prompt in proptest::collection::vec(3u32..500, 1..12),
        use_stories in any::<bool>(),
    ) {
        let model = if use_stories {
            match model_path("stories260K.gguf") {
                Some(p) => ModelFile::open(p).unwrap(),
                None => synthetic(),
            }
        } else {
            synthetic()
        };
        let n = model.config().unwrap().n_layers;
        let split = ranges(n, cuts);
        let whole = LocalChain::load(&model, &[lamina_sharding::layers::range(0, n).unwrap()], &Device::Cpu).unwrap();
        let chain = LocalChain::load(&model, &split, &Device::Cpu).unwrap();
        let (wt, wl) = run(&whole, &prompt, 6);
        let (t, l) = run(&chain, &prompt, 6);
        prop_assert_eq!(t, wt);
        for (a, b) in l.iter().zip(&wl) {
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            prop_assert!(d <= 1e-5, "split {:?}: logits differ by {}", split, d);
        }
    }
}

/// Several sessions in one batched step give the same logits as each run alone.
#[test]
fn batched_sessions_equal_single_sessions() {
    use lamina_sharding::executor::{LogitRows, SeqStep, Shard, ShardInput, ShardOutput};
    let model = synthetic();
    let n = model.config().unwrap().n_layers;
    let shard = Shard::load(
        &model,
        lamina_sharding::layers::range(0, n).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9, 10]];
    // Alone.
    let mut alone = vec![];
    for p in &prompts {
        let mut c = shard.new_cache(32).unwrap();
        let out = shard
            .forward(&mut c, ShardInput::Tokens(p.clone()), LogitRows::Last)
            .unwrap();
        let step2 = shard
            .forward(&mut c, ShardInput::Tokens(vec![11]), LogitRows::Last)
            .unwrap();
        alone.push((
            out.into_tensor().to_vec2::<f32>().unwrap(),
            step2.into_tensor().to_vec2::<f32>().unwrap(),
        ));
    }
    // Together.
    let mut caches: Vec<_> = prompts
        .iter()
        .map(|_| shard.new_cache(32).unwrap())
        .collect();
    let mut steps: Vec<SeqStep> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(c, p)| SeqStep {
            cache: c,
            input: ShardInput::Tokens(p.clone()),
            logits: LogitRows::Last,
        })
        .collect();
    let first = shard.forward_batch(&mut steps).unwrap();
    drop(steps);
    let mut steps: Vec<SeqStep> = caches
        .iter_mut()
        .map(|c| SeqStep {
            cache: c,
            input: ShardInput::Tokens(vec![11]),
            logits: LogitRows::Last,
        })
        .collect();
    let second = shard.forward_batch(&mut steps).unwrap();
    for (i, (a, b)) in first.into_iter().zip(second).enumerate() {
        let (ShardOutput::Logits(a), ShardOutput::Logits(b)) = (a, b) else {
            panic!("logits expected")
        };
        let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        for (x, y) in a[0].iter().zip(&alone[i].0[0]) {
            assert!((x - y).abs() <= 1e-5, "prefill of seq {i}");
        }
        for (x, y) in b[0].iter().zip(&alone[i].1[0]) {
            assert!((x - y).abs() <= 1e-5, "decode of seq {i}");
        }
    }
}

#[test]
fn sub_shards_of_overlapping_loads_chain_like_the_unsplit_model() {
    use lamina_sharding::executor::Shard;
    use std::sync::Arc;
    // Two nodes loaded 0..4 and 2..6 of six layers; a chain runs 0..3 of the first and
    // 3..6 of the second, sharing their weights.
    let model = synthetic();
    let n = model.config().unwrap().n_layers;
    let whole = LocalChain::load(
        &model,
        &[lamina_sharding::layers::range(0, n).unwrap()],
        &Device::Cpu,
    )
    .unwrap();
    let a = Shard::load(
        &model,
        lamina_sharding::layers::range(0, 4).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let b = Shard::load(
        &model,
        lamina_sharding::layers::range(2, 6).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let chain = LocalChain::from_shards(vec![
        Arc::new(
            a.sub_shard(lamina_sharding::layers::range(0, 3).unwrap())
                .unwrap(),
        ),
        Arc::new(
            b.sub_shard(lamina_sharding::layers::range(3, 6).unwrap())
                .unwrap(),
        ),
    ])
    .unwrap();
    let prompt = vec![1, 5, 9, 2];
    let (want, want_logits) = run(&whole, &prompt, 6);
    let (got, logits) = run(&chain, &prompt, 6);
    assert_eq!(got, want);
    for (x, y) in logits.iter().flatten().zip(want_logits.iter().flatten()) {
        assert!((x - y).abs() <= 1e-5);
    }
    assert!(a
        .sub_shard(lamina_sharding::layers::range(3, 5).unwrap())
        .is_err());
    assert!(b
        .sub_shard(lamina_sharding::layers::range(0, 3).unwrap())
        .is_err());
}

/// Continuous batching must not change a session's output: with f32 activations the
/// logits of a session stepped in a batch with others equal, bit for bit, those of the
/// session stepped alone (prefills of different lengths, then decode steps, at every
/// batch size the node may form), wherever the shard says it is batch-invariant
/// (lamina's kernels: SmolLM2's Q4_1). stories260K's F32 weights run on candle's matmul,
/// which is not (its nodes step sessions one by one): there it says so, and the
/// difference is within float noise.
#[test]
fn batched_sessions_equal_single_sessions_bit_for_bit_on_real_models() {
    use lamina_sharding::executor::{LogitRows, SeqStep, Shard, ShardInput};
    for (file, invariant) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", true),
        ("stories260K.gguf", false),
    ] {
        let Some(path) = crate::common::model_path(file) else {
            return;
        };
        let model = ModelFile::open(&path).unwrap();
        let n = model.config().unwrap().n_layers;
        let shard = Shard::load(
            &model,
            lamina_sharding::layers::range(0, n).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(shard.batch_invariant(), invariant, "{file}");
        let prompts: Vec<Vec<u32>> = (0..5u32)
            .map(|s| {
                (0..(1 + 7 * s))
                    .map(|i| 1 + (i * 31 + s * 17) % 250)
                    .collect()
            })
            .collect();
        let decode = |s: usize, k: usize| vec![(3 + 11 * s as u32 + 5 * k as u32) % 250 + 1];
        let alone: Vec<Vec<Vec<f32>>> = prompts
            .iter()
            .enumerate()
            .map(|(s, p)| {
                let mut c = shard.new_cache(64).unwrap();
                let mut out = vec![shard
                    .forward(&mut c, ShardInput::Tokens(p.clone()), LogitRows::Last)
                    .unwrap()
                    .into_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()];
                for k in 0..3 {
                    out.push(
                        shard
                            .forward(&mut c, ShardInput::Tokens(decode(s, k)), LogitRows::Last)
                            .unwrap()
                            .into_tensor()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap(),
                    );
                }
                out
            })
            .collect();
        for size in 2..=prompts.len() {
            let mut caches: Vec<_> = (0..size).map(|_| shard.new_cache(64).unwrap()).collect();
            for k in 0..4 {
                let mut steps: Vec<SeqStep> = caches
                    .iter_mut()
                    .enumerate()
                    .map(|(s, c)| SeqStep {
                        cache: c,
                        input: ShardInput::Tokens(match k {
                            0 => prompts[s].clone(),
                            _ => decode(s, k - 1),
                        }),
                        logits: LogitRows::Last,
                    })
                    .collect();
                let outs = shard.forward_batch(&mut steps).unwrap();
                for (s, o) in outs.into_iter().enumerate() {
                    let got = o
                        .into_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    let want = alone[s].get(k).unwrap();
                    let same = got
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    let worst = got
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        same || (!invariant && worst <= 1e-4),
                        "{file}: session {s} of a batch of {size}, step {k}: max diff {worst:e}"
                    );
                }
            }
        }
    }
}
