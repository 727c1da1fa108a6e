//! Real-model parity: lamina's greedy output on the shared real models equals the
//! reference continuations produced by independent implementations (reference.json).

use crate::common::*;
use candle_core::Device;
use lamina_sharding::generate::{generate, GenerateRequest, LocalChain, Stepper};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;

const STORIES: &str = "stories260K.gguf";
const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn full_chain(model: &ModelFile) -> LocalChain {
    let n = model.config().unwrap().n_layers;
    LocalChain::load(
        model,
        &[lamina_sharding::layers::range(0, n).unwrap()],
        &Device::Cpu,
    )
    .unwrap()
}

/// Greedy decoding that also records the logits of every generated position.
fn greedy_with_logits(chain: &LocalChain, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = chain.session(prompt.len() + n).unwrap();
    let mut logits = s.step(prompt).unwrap();
    let mut out = Vec::new();
    let mut all = Vec::new();
    for i in 0..n {
        let t = argmax(&logits);
        all.push(logits.clone());
        out.push(t);
        if i + 1 < n {
            logits = s.step(&[t]).unwrap();
        }
    }
    (out, all)
}

#[test]
fn stories260k_matches_reference_tokens_and_logits() {
    let (Some(path), Some(reference)) = (model_path(STORIES), reference()) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let chain = full_chain(&model);
    let prompts = reference["models"][STORIES]["prompts"].as_object().unwrap();
    assert_eq!(prompts.len(), 3);
    for (prompt, r) in prompts {
        let want_prompt = ids(&r["prompt_token_ids"]);
        let got_prompt = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
        assert_eq!(got_prompt, want_prompt, "prompt ids of {prompt:?}");
        let want = ids(&r["generated_token_ids"]);
        let (got, logits) = greedy_with_logits(&chain, &got_prompt, want.len());
        assert_eq!(got, want, "greedy tokens of {prompt:?}");
        // First-position top-5 logits. Against HF transformers (f32, an exact float
        // implementation like lamina's; its values are reference.json's cross-check):
        // within 1e-4. Against reference.json's llama.cpp values: within 5e-3, because
        // llama.cpp's default f16 KV cache rounds attention, and how much depends on its
        // build: the same llama-cpp-python 0.3.36 built natively on this machine lands
        // 1.7e-3 from reference.json's values itself (the reference was built with
        // GGML_NATIVE=OFF), and with an f32 KV cache it lands 3.6e-3 away, on lamina's
        // values: `stories260k_first_logits_equal_llamacpp_with_f32_kv` holds that to 1e-4.
        let hf = &r["crosscheck_hf_transformers"]["first_position_top5_logits"];
        for (src, tops, tol) in [
            ("llama.cpp", &r["first_position_top5_logits"], 5e-3f32),
            ("transformers", hf, 1e-4),
        ] {
            for top in tops.as_array().unwrap() {
                let id = top["token_id"].as_u64().unwrap() as usize;
                let want = top["logit"].as_f64().unwrap() as f32;
                let got = logits[0][id];
                eprintln!(
                    "{prompt:?} token {id}: lamina {got:.6}, {src} {want:.6}, diff {:.2e}",
                    (got - want).abs()
                );
                assert!(
                    (got - want).abs() < tol,
                    "{prompt:?}: logit of token {id} is {got}, {src} says {want}"
                );
            }
        }
        // The text through the generation loop equals llama.cpp's detokenization.
        let req = GenerateRequest {
            prompt_ids: got_prompt.clone(),
            max_tokens: want.len(),
            sampling: SamplingParams::greedy(),
            stop: vec![],
        };
        let mut s = chain.session(got_prompt.len() + want.len()).unwrap();
        let out = generate(&mut s, &tok, &req, 2048, |_| {}).unwrap();
        assert_eq!(out.generated_token_ids, want);
        assert_eq!(
            out.text,
            r["generated_text_llamacpp_detokenize"].as_str().unwrap(),
            "text of {prompt:?}"
        );
    }
}

/// First-position top-20 logits against llama.cpp run with an f32 KV cache (exact
/// attention, as lamina computes it); the fixture is made by
/// `benches/scripts/llamacpp_f32kv_logits.py`.
#[test]
fn stories260k_first_logits_equal_llamacpp_with_f32_kv() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../fixtures/stories260k_llamacpp_f32kv_top.json"
    ))
    .unwrap();
    let model = ModelFile::open(&path).unwrap();
    let chain = full_chain(&model);
    let mut worst = 0f32;
    for (prompt, r) in fixture["prompts"].as_object().unwrap() {
        let prompt_ids = ids(&r["prompt_token_ids"]);
        let mut s = chain.session(prompt_ids.len()).unwrap();
        let logits = s.step(&prompt_ids).unwrap();
        let tops = r["top20"].as_array().unwrap();
        assert_eq!(tops.len(), 20);
        for top in tops {
            let id = top["token_id"].as_u64().unwrap() as usize;
            let want = top["logit"].as_f64().unwrap() as f32;
            let d = (logits[id] - want).abs();
            worst = worst.max(d);
            assert!(
                d < 1e-4,
                "{prompt:?}: logit of token {id} is {}, llama.cpp (f32 KV) says {want}",
                logits[id]
            );
        }
    }
    eprintln!("stories260K: max |lamina - llama.cpp f32 KV| over 3 x top-20 = {worst:.2e}");
}

/// Every position's logits against llama.cpp's full vectors.
#[test]
fn stories260k_logits_close_to_llamacpp_at_every_position() {
    let (Some(path), Some(lp)) = (
        model_path(STORIES),
        model_path("stories260K_logits_llamacpp.json"),
    ) else {
        return;
    };
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lp).unwrap()).unwrap();
    let model = ModelFile::open(&path).unwrap();
    let chain = full_chain(&model);
    let mut worst = 0f32;
    for (name, p) in data["prompts"].as_object().unwrap() {
        let toks = ids(&p["token_ids"]);
        let mut s = chain.session(toks.len()).unwrap();
        let logits = s.forward_all(&toks).unwrap().to_vec2::<f32>().unwrap();
        let want = p["logits"].as_array().unwrap();
        assert_eq!(logits.len(), want.len(), "{name}");
        for (row, wrow) in logits.iter().zip(want) {
            let wrow: Vec<f32> = wrow
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            for (a, b) in row.iter().zip(&wrow) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    eprintln!("stories260K: max |logit - llama.cpp| over all positions = {worst}");
    // llama.cpp's f16 KV cache moves its logits by up to 0.021 from exact f32 arithmetic
    // (the README measures the same 0.021 between llama.cpp and HF transformers).
    assert!(worst < 0.025, "max logit difference {worst}");
}

#[test]
fn smollm2_prompt_ids_and_greedy_tokens_match_reference() {
    let (Some(path), Some(reference)) = (model_path(SMOLLM), reference()) else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let chain = full_chain(&model);
    let margins = llamacpp_margins();
    let prompts = reference["models"][SMOLLM]["prompts"].as_object().unwrap();
    for (prompt, r) in prompts {
        let want_prompt = ids(&r["prompt_token_ids"]);
        let got_prompt = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
        assert_eq!(got_prompt, want_prompt, "prompt ids of {prompt:?}");
        let want = ids(&r["generated_token_ids"]);
        let (got, logits) = greedy_with_logits(&chain, &got_prompt, want.len());
        // Compare up to the first position where the reference itself is nearly tied:
        // a 4-bit model can legitimately go either way there.
        let ref_margins = &margins[prompt.as_str()];
        let mut compared = 0;
        for i in 0..want.len() {
            if ref_margins[i] < 0.3 {
                break;
            }
            assert_eq!(
                got[i],
                want[i],
                "{prompt:?}: token {i} differs (reference margin {:.3}, ours {:.3})",
                ref_margins[i],
                margin(&logits[i])
            );
            compared += 1;
        }
        eprintln!(
            "SmolLM2 {prompt:?}: {compared} of {} tokens compared and equal",
            want.len()
        );
        // The top-5 logits at the first position are within quantization noise.
        for top in r["first_position_top5_logits"].as_array().unwrap() {
            let id = top["token_id"].as_u64().unwrap() as usize;
            let want = top["logit"].as_f64().unwrap() as f32;
            assert!(
                (logits[0][id] - want).abs() < 0.5,
                "{prompt:?}: logit of {id} is {}, reference {want}",
                logits[0][id]
            );
        }
    }
}

/// llama.cpp's top-1/top-2 margin at every generated position of the SmolLM2 reference
/// continuations (made by `benches/scripts/reference_margins.py` with llama-cpp-python
/// 0.3.36 on the shared file; committed as a test fixture).
fn llamacpp_margins() -> std::collections::HashMap<String, Vec<f32>> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_reference_margins.json"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["prompts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, m)| {
            (
                k.clone(),
                m.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect()
}
