//! Hugging Face safetensors checkpoints: stories260K converted from GGUF to the HF Llama
//! layout (Q and K un-permuted back to "rotate half" order, HF tensor names, config.json,
//! tokenizer.json) gives the same greedy tokens and logits as the GGUF file.

use crate::common::*;
use candle_core::{Device, Tensor};
use lamina_sharding::generate::{LocalChain, Stepper};
use lamina_sharding::gguf::GgufFile;
use lamina_sharding::safetensors::hf_name;
use lamina_sharding::source::ModelFile;
use std::collections::HashMap;

/// Inverse of llama.cpp's convert-time permutation of Q/K rows (HF -> interleaved RoPE).
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let hd = rows / heads;
    w.reshape((heads, hd / 2, 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn greedy(chain: &LocalChain, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = chain.session(prompt.len() + n).unwrap();
    let mut l = s.step(prompt).unwrap();
    let (mut toks, mut all) = (vec![], vec![]);
    for _ in 0..n {
        let t = argmax(&l);
        toks.push(t);
        all.push(l.clone());
        l = s.step(&[t]).unwrap();
    }
    (toks, all)
}

#[test]
fn stories260k_as_hf_checkpoint_equals_gguf() {
    let (Some(gguf_path), Some(tok_path)) = (
        model_path("stories260K.gguf"),
        model_path("tokenizers/stories260K.tokenizer.json"),
    ) else {
        return;
    };
    let g = GgufFile::open(&gguf_path).unwrap();
    let dir = std::env::temp_dir().join(format!("lamina-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for t in g.tensors() {
        let w = g
            .qtensor(&t.name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let w = if t.name.ends_with("attn_q.weight") {
            unpermute(&w, 8)
        } else if t.name.ends_with("attn_k.weight") {
            unpermute(&w, 4)
        } else {
            w
        };
        tensors.insert(hf_name(&t.name).expect("known tensor"), w);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
        "num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 5,
        "vocab_size": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(&tok_path, dir.join("tokenizer.json")).unwrap();

    let st = ModelFile::open(&dir).unwrap();
    let gg = ModelFile::open(&gguf_path).unwrap();
    let cfg = st.config().unwrap();
    assert_eq!(cfg.n_layers, 5);
    assert_eq!(cfg.rope_style, lamina_sharding::config::RopeStyle::Neox);
    // The HF tokenizer gives the reference prompt ids.
    let tok = st.tokenizer().unwrap();
    let ids = tok.encode("Once upon a time", true, false).unwrap();
    assert_eq!(ids, vec![1, 403, 407, 261, 378]);

    let whole = |m: &ModelFile| {
        LocalChain::load(
            m,
            &[lamina_sharding::layers::range(0, 5).unwrap()],
            &Device::Cpu,
        )
        .unwrap()
    };
    let (a, la) = greedy(&whole(&st), &ids, 24);
    let (b, lb) = greedy(&whole(&gg), &ids, 24);
    assert_eq!(a, b);
    let worst = la
        .iter()
        .zip(&lb)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "safetensors vs GGUF logits differ by {worst}");
    // A split of the safetensors model matches too.
    let split = LocalChain::load(
        &st,
        &[
            lamina_sharding::layers::range(0, 3).unwrap(),
            lamina_sharding::layers::range(3, 5).unwrap(),
        ],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(greedy(&split, &ids, 24).0, a);
    std::fs::remove_dir_all(&dir).unwrap();
}
