//! libFuzzer target: the body of `POST /v1/chat/completions` and `POST /v1/completions`,
//! through the same steps as the handlers (`node/src/api/{chat,completions}.rs`) up to
//! tokenizing: the JSON extractor's parse, the object check, the two typed parses, the
//! validation into settings, the endpoint's own fields, and the context fit.
//!
//! Input: one control byte (bit 0: chat or completions; bits 1..8: the context length,
//! 1 + 16 * b), then the body. Properties: no panic; every refusal is a 4xx whose OpenAI
//! error body names a message; settings the API accepts are ones the wire and the last
//! hop's sampler accept too (an accepted request never fails later on its settings); the
//! context fit never promises more than the context.
#![no_main]

use lamina_fuzz::write_seeds_if_asked;
use lamina_node::api::errors::{parse_value, ApiError};
use lamina_node::api::generation::fit_context;
use lamina_node::api::openai::{ChatFields, CommonParams, CompletionFields, Settings};
use lamina_protocol::SamplingSettings;
use lamina_sharding::sampling::{Sampler, SamplingParams};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_error(e: &ApiError) {
    assert!(e.status.is_client_error(), "{} for a bad body", e.status);
    let body = e.body();
    assert!(body["error"]["message"].is_string());
}

fn check_settings(s: &Settings) {
    assert!(s.stop.len() <= 4 && s.stop.iter().all(|x| !x.is_empty()));
    assert!(!s.include_usage || s.stream);
    assert!((0.0..=2.0).contains(&s.sampling.temperature));
    let wire = SamplingSettings::from(&s.sampling);
    if let Err(e) = wire.validate() {
        panic!("the API accepted sampling settings the wire refuses: {e} ({wire:?})");
    }
    if let Err(e) = Sampler::new(SamplingParams::from(&wire)) {
        panic!("the API accepted sampling settings the last hop refuses: {e} ({wire:?})");
    }
}

/// The prompt's token count stands in for the tokenizer: about one per 4 bytes, at
/// least one for a non-empty prompt.
fn tokens_of(text: &str) -> usize {
    text.len().div_ceil(4)
}

fn chat(body: Value, context: usize) -> Result<usize, ApiError> {
    let common: CommonParams = parse_value(body.clone())?;
    let fields: ChatFields = parse_value(body)?;
    let max_tokens = fields.max_completion_tokens.or(common.max_tokens);
    let settings = common.settings(max_tokens)?;
    check_settings(&settings);
    let messages = fields.messages()?;
    assert!(!messages.is_empty());
    let prompt: usize = messages.iter().map(|m| tokens_of(&m.content) + 4).sum();
    fit_context(prompt, settings.max_tokens, None, context, "messages")
}

fn completion(body: Value, context: usize) -> Result<usize, ApiError> {
    let common: CommonParams = parse_value(body.clone())?;
    let fields: CompletionFields = parse_value(body)?;
    let max_tokens = common.max_tokens;
    let settings = common.settings(max_tokens)?;
    check_settings(&settings);
    let prompt = fields.prompt()?;
    fit_context(
        tokens_of(&prompt),
        settings.max_tokens,
        Some(16),
        context,
        "prompt",
    )
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let chat = [
        r#"{"model":"m","messages":[{"role":"user","content":"Hello"}]}"#,
        r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"there"}]},{"role":"assistant","content":null}],"max_completion_tokens":20,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"repetition_penalty":1.1,"seed":7,"stop":["\n","END"],"stream":true,"stream_options":{"include_usage":true},"activation_dtype":"f32","logprobs":false,"top_logprobs":0,"n":1}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}],"logit_bias":{"5":1},"frequency_penalty":0.5}"#,
        r#"{"messages":[],"max_tokens":-1,"temperature":"hot"}"#,
    ];
    let completions = [
        r#"{"model":"m","prompt":"Once upon a time","max_tokens":8}"#,
        r#"{"prompt":["one"],"max_tokens":18446744073709551615,"temperature":2,"top_p":1e-30,"min_p":0.99,"seed":18446744073709551615,"stop":"x","echo":false,"best_of":1,"suffix":"","logprobs":0,"presence_penalty":0,"activation_dtype":"bf16"}"#,
        r#"{"prompt":["a","b"],"echo":true,"n":2,"stop":["a","b","c","d","e"],"repetition_penalty":0}"#,
        r#"[1,2,3]"#,
    ];
    let mut out = Vec::new();
    for (i, b) in chat.iter().enumerate() {
        let mut s = vec![0x10];
        s.extend_from_slice(b.as_bytes());
        out.push((format!("chat-{i}"), s));
    }
    for (i, b) in completions.iter().enumerate() {
        let mut s = vec![0x11];
        s.extend_from_slice(b.as_bytes());
        out.push((format!("completion-{i}"), s));
    }
    out
}

fuzz_target!(
    init: write_seeds_if_asked("openai_body", seeds),
    |data: &[u8]| {
        let Some((&ctl, body)) = data.split_first() else {
            return;
        };
        // axum's `Json` extractor; a body that is not JSON is refused there.
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        if !body.is_object() {
            return;
        }
        let context = 1 + 16 * usize::from(ctl >> 1);
        let r = if ctl & 1 == 0 {
            chat(body, context)
        } else {
            completion(body, context)
        };
        match r {
            Ok(n) => assert!(n <= context, "max_tokens {n} past the context {context}"),
            Err(e) => check_error(&e),
        }
    }
);
