use super::*;
use crate::api::errors::{parse_value, ApiError};
use axum::http::StatusCode;
use lamina_protocol::WireDType;
use lamina_sharding::generate::FinishReason;
use serde_json::{json, Value};

fn common(v: Value) -> Result<Settings, ApiError> {
    let c: CommonParams = parse_value(v.clone())?;
    let max = v.get("max_tokens").and_then(Value::as_u64);
    c.settings(max)
}

#[test]
fn defaults_and_extensions() {
    let s = common(json!({"prompt": "x"})).unwrap();
    assert_eq!(s.max_tokens, None);
    assert_eq!(s.sampling.temperature, 1.0);
    assert!(!s.stream && !s.include_usage);
    assert_eq!(s.activation_dtype, WireDType::F16);
    let s = common(json!({
        "model": "m", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": 3,
        "stop": "\n", "stream": true, "stream_options": {"include_usage": true},
        "n": 1, "frequency_penalty": 0, "presence_penalty": 0.0, "user": "u",
        "top_k": 4, "activation_dtype": "f32", "some_future_field": {"x": 1},
    }))
    .unwrap();
    assert_eq!(s.model.as_deref(), Some("m"));
    assert_eq!(s.max_tokens, Some(5));
    assert_eq!(s.sampling.temperature, 0.0);
    assert_eq!(s.sampling.top_p, 0.5);
    assert_eq!(s.sampling.top_k, 4);
    assert_eq!(s.sampling.seed, 3);
    assert_eq!(s.stop, ["\n"]);
    assert!(s.stream && s.include_usage);
    assert_eq!(s.activation_dtype, WireDType::F32);
    let s = common(json!({"stop": ["a", "b"], "stream_options": {"include_usage": true}})).unwrap();
    assert_eq!(s.stop, ["a", "b"]);
    assert!(!s.include_usage, "usage chunks only when streaming");
}

#[test]
fn refusals_name_the_param() {
    for (body, param) in [
        (json!({"n": 2}), "n"),
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"presence_penalty": -1}), "presence_penalty"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": ""}), "stop"),
        (json!({"logit_bias": {"5": 10}}), "logit_bias"),
        // Wrong types.
        (json!({"max_tokens": "5"}), "max_tokens"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"stream": "yes"}), "stream"),
        (json!({"stop": 5}), "stop"),
        (json!({"seed": 1.5}), "seed"),
        (
            json!({"stream_options": {"include_usage": 1}}),
            "stream_options.include_usage",
        ),
    ] {
        let e = common(body.clone()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.kind, "invalid_request_error", "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
    }
    let e = common(json!({"frequency_penalty": 0.5})).unwrap_err();
    assert!(e.message.contains("only 0"), "{}", e.message);
}

#[test]
fn completion_prompt_forms() {
    let f = |v: Value| parse_value::<CompletionFields>(v).and_then(CompletionFields::prompt);
    assert_eq!(f(json!({"prompt": "hi"})).unwrap(), "hi");
    assert_eq!(f(json!({"prompt": ["hi"]})).unwrap(), "hi");
    assert_eq!(f(json!({"prompt": "hi", "logprobs": null})).unwrap(), "hi");
    for (body, param) in [
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": 5}), "prompt"),
        (json!({}), ""),
        (json!({"prompt": "a", "echo": true}), "echo"),
        (json!({"prompt": "a", "logprobs": 2}), "logprobs"),
        (json!({"prompt": "a", "best_of": 3}), "best_of"),
    ] {
        let e = f(body.clone()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            e.param.as_deref().unwrap_or(""),
            param,
            "{body}: {}",
            e.message
        );
    }
}

#[test]
fn chat_message_forms() {
    let f = |v: Value| parse_value::<ChatFields>(v).and_then(ChatFields::messages);
    let m = f(json!({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": null, "name": "x"},
    ]}))
    .unwrap();
    assert_eq!(m[0].content, "be brief");
    assert_eq!(m[1].content, "a\nb");
    assert_eq!(m[2].content, "");
    for (body, param) in [
        (json!({"messages": []}), "messages"),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0]"),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true}),
            "logprobs",
        ),
    ] {
        let e = f(body.clone()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
    }
}

#[test]
fn response_shapes() {
    let meta = ResponseMeta {
        kind: Kind::Chat,
        id: "chatcmpl-1".into(),
        created: 7,
        model: "m".into(),
    };
    let r = meta.response("hi", FinishReason::ContextLength, &[1, 2], usage(3, 2));
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(
        r["choices"][0]["message"],
        json!({"role": "assistant", "content": "hi"})
    );
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["total_tokens"], 5);
    let c = meta.chunk(None, json!({"content": "x"}), None);
    assert_eq!(c["object"], "chat.completion.chunk");
    assert_eq!(c["choices"][0]["delta"]["content"], "x");
    assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    let meta = ResponseMeta {
        kind: Kind::Completion,
        ..meta
    };
    let r = meta.response("hi", FinishReason::Stop, &[], usage(1, 0));
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], "hi");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let u = meta.usage_chunk(usage(1, 1));
    assert_eq!(u["choices"], json!([]));
    assert_eq!(u["usage"]["total_tokens"], 2);
}
