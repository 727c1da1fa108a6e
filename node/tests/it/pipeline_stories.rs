//! Acceptance 1 and 2 of the data-plane issue: three `lamina node` processes on loopback
//! serving stories260K as 0..2, 2..4, 4..5 generate the reference tokens with f32 and f16
//! activations; with f32 the logits are bit-identical to the single-process run; eight
//! concurrent generations give the same tokens as alone.

use std::time::Duration;

use crate::common::pipeline::*;
use candle_core::Device;
use lamina_node::dataplane::{client_endpoint, Dialer};
use lamina_node::model_id_of;
use lamina_protocol::{FrameLimits, WireDType};
use lamina_sharding::generate::LocalChain;
use lamina_sharding::layers::LayerRange;
use lamina_sharding::source::ModelFile;

#[test]
fn three_nodes_generate_reference_tokens_f32_bit_exact_and_f16() {
    let (Some(path), Some(prompts)) = (model_path(STORIES), reference_prompts(STORIES)) else {
        return;
    };
    assert_eq!(prompts.len(), 3);
    let model = ModelFile::open(&path).expect("model");
    let model_id = model_id_of(&model).expect("model id");
    let local = LocalChain::load(&model, &[LayerRange::new(0, 5).unwrap()], &Device::Cpu)
        .expect("local chain");
    let (_nodes, chain) = start_chain(&path, &["0..2", "2..4", "4..5"]);
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(180), async {
            let dialer = Dialer::new(
                client_endpoint(None).unwrap(),
                FrameLimits::default(),
                libp2p::identity::Keypair::generate_ed25519(),
            );
            for (name, prompt, want) in &prompts {
                let (local_tokens, local_logits) = local_greedy(&local, prompt, want.len());
                assert_eq!(&local_tokens, want, "local run of {name:?}");

                let (got, logits) = run_remote(
                    &dialer,
                    &chain,
                    model_id,
                    prompt,
                    want.len(),
                    WireDType::F32,
                    true,
                )
                .await;
                assert_eq!(&got, want, "f32 tokens of {name:?}");
                assert_eq!(logits.len(), local_logits.len());
                for (i, (a, b)) in logits.iter().zip(&local_logits).enumerate() {
                    assert!(
                        bits(a) == bits(b),
                        "{name:?}: f32 logits differ at step {i}"
                    );
                }

                let (got, _) = run_remote(
                    &dialer,
                    &chain,
                    model_id,
                    prompt,
                    want.len(),
                    WireDType::F16,
                    false,
                )
                .await;
                assert_eq!(&got, want, "f16 tokens of {name:?}");
            }
        })
        .await
        .expect("test finished in time");
    });
}

#[test]
fn eight_concurrent_generations_equal_alone() {
    let (Some(path), Some(prompts)) = (model_path(STORIES), reference_prompts(STORIES)) else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let model_id = model_id_of(&model).expect("model id");
    drop(model);
    let (_nodes, chain) = start_chain(&path, &["0..2", "2..4", "4..5"]);
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(180), async {
            let dialer = Dialer::new(
                client_endpoint(None).unwrap(),
                FrameLimits::default(),
                libp2p::identity::Keypair::generate_ed25519(),
            );
            // Alone, one after another.
            let mut alone = Vec::new();
            for i in 0..8 {
                let (_, prompt, want) = &prompts[i % prompts.len()];
                let dtype = if i % 2 == 0 {
                    WireDType::F16
                } else {
                    WireDType::F32
                };
                let (got, _) =
                    run_remote(&dialer, &chain, model_id, prompt, want.len(), dtype, false).await;
                alone.push(got);
            }
            // All eight at once.
            let mut tasks = Vec::new();
            for i in 0..8 {
                let (dialer, chain) = (dialer.clone(), chain.clone());
                let (_, prompt, want) = prompts[i % prompts.len()].clone();
                let dtype = if i % 2 == 0 {
                    WireDType::F16
                } else {
                    WireDType::F32
                };
                tasks.push(tokio::spawn(async move {
                    run_remote(&dialer, &chain, model_id, &prompt, want.len(), dtype, false)
                        .await
                        .0
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let got = t.await.expect("task");
                assert_eq!(
                    got, alone[i],
                    "concurrent generation {i} differs from alone"
                );
                assert_eq!(
                    got,
                    prompts[i % prompts.len()].2,
                    "generation {i} vs reference"
                );
            }
        })
        .await
        .expect("test finished in time");
    });
}
