//! `/v1/chat/completions` on a 3-node SmolLM2-135M-Instruct chain (0..10, 10..20, 20..30,
//! the API on the first, at most one generation at a time): whole and streamed answers
//! equal the single-process greedy run of the rendered chat template; content as text
//! parts equals content as a string; a second request while one runs is a 429; a client
//! that disconnects mid-stream stops its generation and the node keeps serving.

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_sharding::chat::encode_chat;
use lamina_sharding::chat::{ChatMessage, ChatTemplate};
use lamina_sharding::source::ModelFile;
use serde_json::{json, Value};

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MAX_TOKENS: usize = 20;

fn chat(messages: Value, extra: Value) -> Value {
    let mut body = json!({
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "activation_dtype": "f32",
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

#[test]
fn chat_completions_equal_single_process_429_and_disconnect() {
    let Some(path) = model_path(SMOLLM) else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let tok = model.tokenizer().expect("tokenizer");
    let template = model
        .chat_template(&tok)
        .expect("template")
        .unwrap_or_else(ChatTemplate::chatml);
    let net = ApiChain::start(
        &path,
        &["0..10", "10..20", "20..30"],
        &["--api-max-concurrent", "1"],
    );
    let api = net.api.as_str();

    let conversations = [
        vec![ChatMessage::new("user", "What is the capital of France?")],
        vec![
            ChatMessage::new("system", "You are a helpful assistant. Answer briefly."),
            ChatMessage::new("user", "Name three colors."),
        ],
    ];
    for msgs in &conversations {
        let ids = encode_chat(&tok, &template, msgs).expect("render");
        let want = reference_run(&model, ids.clone(), MAX_TOKENS, vec![]);
        assert!(!want.text.is_empty());
        let messages = serde_json::to_value(msgs).unwrap();

        let r = post(
            api,
            "/v1/chat/completions",
            &chat(messages.clone(), json!({})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            want.text.as_str(),
            "{msgs:?}"
        );
        let finish = match want.finish_reason {
            lamina_sharding::generate::FinishReason::Stop => "stop",
            _ => "length",
        };
        assert_eq!(v["choices"][0]["finish_reason"], finish);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        assert_eq!(
            v["usage"]["completion_tokens"],
            want.generated_token_ids.len()
        );

        let r = post(
            api,
            "/v1/chat/completions",
            &chat(
                messages,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let s = join_stream(&r.body);
        assert_eq!(s.chunks[0]["choices"][0]["delta"]["role"], "assistant");
        for c in &s.chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        assert_eq!(s.text, want.text, "streamed {msgs:?}");
        assert_eq!(s.finish_reason, finish);
        assert_eq!(
            s.usage.expect("usage")["completion_tokens"],
            want.generated_token_ids.len()
        );
    }

    // Content as a list of text parts; `max_completion_tokens`; the model by name.
    let ids = encode_chat(&tok, &template, &conversations[0]).unwrap();
    let want = reference_run(&model, ids, 8, vec![]);
    let name = get(api, "/v1/models").json()["data"][0]["id"].clone();
    let r = post(
        api,
        "/v1/chat/completions",
        &chat(
            json!([{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]),
            json!({"max_completion_tokens": 8, "max_tokens": 100, "model": name}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        want.text.as_str()
    );

    // One generation at a time: a second is refused while the first streams.
    let long = chat(
        json!([{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]),
        json!({"stream": true, "max_tokens": 4000}),
    );
    let before = get(api, "/status").json()["api"]["cancelled_requests"]
        .as_u64()
        .unwrap();
    let (sock, seen) = start_stream(api, "/v1/chat/completions", &long, "\"content\":\"");
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let e = assert_error(
        &post(
            api,
            "/v1/chat/completions",
            &chat(json!([{"role": "user", "content": "hi"}]), json!({})),
        ),
        429,
        "rate_limit_error",
    );
    assert_eq!(e["code"], "rate_limit_exceeded");

    // The client goes away mid-stream: the generation stops early, the slot frees up.
    drop(sock);
    let st = wait_idle(api);
    assert_eq!(
        st["api"]["cancelled_requests"].as_u64().unwrap(),
        before + 1,
        "the generation was cancelled, not run to its end: {st}"
    );
    let r = post(
        api,
        "/v1/chat/completions",
        &chat(
            serde_json::to_value(&conversations[0]).unwrap(),
            json!({"max_tokens": 8}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        want.text.as_str()
    );
    drop(net);
}
