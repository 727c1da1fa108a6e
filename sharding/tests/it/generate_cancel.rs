//! `generate_until`: an `on_text` that breaks ends the generation before the next step,
//! with `FinishReason::Cancelled` and the text emitted so far; `generate` still runs to
//! the end.

use std::ops::ControlFlow;

use crate::common::*;
use candle_core::Device;
use lamina_sharding::generate::{
    generate, generate_until, FinishReason, GenerateRequest, LocalChain,
};
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;

#[test]
fn break_in_on_text_cancels_the_generation() {
    let Some(path) = model_path("stories260K.gguf") else {
        return;
    };
    let model = ModelFile::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let chain = LocalChain::load(
        &model,
        &[lamina_sharding::layers::range(0, 5).unwrap()],
        &Device::Cpu,
    )
    .unwrap();
    let req = GenerateRequest {
        prompt_ids: tok.encode("Once upon a time", true, false).unwrap(),
        max_tokens: 40,
        sampling: SamplingParams::greedy(),
        stop: vec![],
    };
    let mut s = chain.session(64).unwrap();
    let full = generate(&mut s, &tok, &req, 512, |_| {}).unwrap();
    assert_eq!(full.finish_reason, FinishReason::Length);

    let mut pieces = Vec::new();
    let mut s = chain.session(64).unwrap();
    let out = generate_until(&mut s, &tok, &req, 512, |t| {
        pieces.push(t.to_owned());
        if pieces.len() == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(pieces.len(), 3, "no text after the break");
    assert_eq!(out.text, pieces.concat());
    assert!(full.text.starts_with(&out.text));
    assert!(out.generated_token_ids.len() < full.generated_token_ids.len());
}
