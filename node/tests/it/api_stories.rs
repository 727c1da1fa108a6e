//! The HTTP API on a 3-node stories260K chain (0..2, 2..4, 4..5, the API on the first):
//! `/v1/completions` whole and streamed gives the single-process greedy text; every bad
//! input gets the right status and OpenAI's error shape, and the node keeps serving;
//! routing failures are 503 naming the layers, pipeline failures 502; `/v1/models`,
//! `/status` and `/metrics` answer.

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_node::model_id_of;
use lamina_sharding::source::ModelFile;
use serde_json::{json, Value};

const MAX_TOKENS: usize = 24;

/// (path, content type, body, status, error type, error code)
type BadCase<'a> = (
    &'a str,
    Option<&'a str>,
    String,
    u16,
    &'a str,
    Option<&'a str>,
);

fn completion(prompt: &str, extra: Value) -> Value {
    let mut body = json!({
        "prompt": prompt,
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
fn completions_whole_and_streamed_equal_single_process_and_errors_are_openai_shaped() {
    let (Some(path), Some(prompts)) = (model_path(STORIES), reference_prompts(STORIES)) else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let model_id = model_id_of(&model).expect("model id").to_string();
    let cfg = model.config().expect("config");
    let tok = model.tokenizer().expect("tokenizer");
    let net = ApiChain::start(&path, &["0..2", "2..4", "4..5"], &[]);
    let api = net.api.as_str();

    // /v1/models: the one model.
    let r = get(api, "/v1/models");
    assert_eq!(r.status, 200, "{}", r.body);
    let models = r.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));
    let name = models["data"][0]["id"]
        .as_str()
        .expect("model id")
        .to_owned();
    assert_eq!(name, cfg.name);
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(get(api, &format!("/v1/models/{name}")).status, 200);

    for (prompt, _, _) in &prompts {
        let ids = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
        let want = reference_run(&model, ids.clone(), MAX_TOKENS, vec![]);

        // Whole; `model` as the name, the lamina id, or absent.
        for m in [json!(name), json!(model_id.to_uppercase()), Value::Null] {
            let mut body = completion(prompt, json!({}));
            if !m.is_null() {
                body["model"] = m;
            }
            let r = post(api, "/v1/completions", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            assert_eq!(v["object"], "text_completion");
            assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
            assert!(v["created"].as_u64().is_some());
            assert_eq!(v["model"], name.as_str());
            assert_eq!(v["choices"][0]["index"], 0);
            assert_eq!(v["choices"][0]["text"], want.text.as_str(), "{prompt:?}");
            assert_eq!(v["choices"][0]["finish_reason"], "length");
            assert_eq!(
                v["usage"],
                json!({"prompt_tokens": ids.len(), "completion_tokens": MAX_TOKENS,
                       "total_tokens": ids.len() + MAX_TOKENS})
            );
        }

        // Streamed, with the usage chunk.
        let r = post(
            api,
            "/v1/completions",
            &completion(
                prompt,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "{}",
            r.headers
        );
        let s = join_stream(&r.body);
        assert_eq!(s.text, want.text, "streamed {prompt:?}");
        assert_eq!(s.finish_reason, "length");
        assert!(
            s.chunks.len() > 2,
            "text comes in pieces: {} chunks",
            s.chunks.len()
        );
        for c in &s.chunks {
            assert_eq!(c["object"], "text_completion");
        }
        assert_eq!(
            s.usage.expect("usage chunk")["completion_tokens"],
            MAX_TOKENS
        );
    }

    // A list of one prompt; a stop string (the text ends before it).
    let (prompt, _, _) = &prompts[0];
    let ids = tok.encode(prompt, tok.add_bos_default(), false).unwrap();
    let full = reference_run(&model, ids.clone(), MAX_TOKENS, vec![]);
    let r = post(
        api,
        "/v1/completions",
        &completion(prompt, json!({"prompt": [prompt]})),
    );
    assert_eq!(r.json()["choices"][0]["text"], full.text.as_str());
    let word: String = full
        .text
        .split_whitespace()
        .nth(3)
        .expect("four words")
        .to_owned();
    let want = reference_run(&model, ids, MAX_TOKENS, vec![word.clone()]);
    let r = post(
        api,
        "/v1/completions",
        &completion(prompt, json!({"stop": [word]})),
    );
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], want.text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Bad input: status, OpenAI's shape, and the code or param where there is one.
    let long_prompt = "Once upon a time ".repeat(cfg.context_length);
    let cases: Vec<BadCase> = vec![
        // (path, content type, body, status, type, code)
        (
            "/v1/completions",
            Some("application/json"),
            "{\"prompt\": ".into(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            "[1, 2]".into(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            "{}".into(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": 5}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "max_tokens": "ten"}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("text/plain"),
            json!({"prompt": "x"}).to_string(),
            415,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            None,
            json!({"prompt": "x"}).to_string(),
            415,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "max_tokens": cfg.context_length + 1}).to_string(),
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": long_prompt}).to_string(),
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "model": "gpt-4"}).to_string(),
            404,
            "invalid_request_error",
            Some("model_not_found"),
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "n": 2}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "frequency_penalty": 0.5}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "presence_penalty": 1}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "logprobs": 2}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": "x", "temperature": -1}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/completions",
            Some("application/json"),
            json!({"prompt": ["a", "b"]}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/chat/completions",
            Some("application/json"),
            json!({"messages": "hi"}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/chat/completions",
            Some("application/json"),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            400,
            "invalid_request_error",
            None,
        ),
        (
            "/v1/nothing",
            Some("application/json"),
            "{}".into(),
            404,
            "invalid_request_error",
            None,
        ),
    ];
    for (p, ct, body, status, kind, code) in &cases {
        let r = request(api, "POST", p, *ct, body);
        let e = assert_error(&r, *status, kind);
        if let Some(code) = code {
            assert_eq!(e["code"], *code, "{body}: {e}");
        }
    }
    let e = assert_error(
        &post(
            api,
            "/v1/completions",
            &json!({"prompt": "x", "temperature": "hot"}),
        ),
        400,
        "invalid_request_error",
    );
    assert_eq!(e["param"], "temperature", "{e}");
    // Unknown fields are ignored.
    let r = post(
        api,
        "/v1/completions",
        &completion(prompt, json!({"user": "u", "some_new_field": {"a": [1]}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], full.text.as_str());

    // No route: 503 naming the uncovered layers (whole and streamed).
    net.write_chain(&net.chain[..2]);
    for stream in [false, true] {
        let r = post(
            api,
            "/v1/completions",
            &completion(prompt, json!({"stream": stream})),
        );
        let e = assert_error(&r, 503, "server_error");
        assert!(
            e["message"].as_str().unwrap().contains("4..5"),
            "names the layers: {e}"
        );
    }
    let st = get(api, "/status").json();
    assert_eq!(st["coverage"], json!([1, 1, 1, 1, 0]), "{st}");

    // Pipeline failure: the first hop is not the peer the chain names (its handshake
    // proves another peer id); 502 before streaming.
    let mut bad = net.chain.clone();
    bad[0].peer = net.chain[1].peer;
    net.write_chain(&bad);
    for stream in [false, true] {
        let r = post(
            api,
            "/v1/completions",
            &completion(prompt, json!({"stream": stream})),
        );
        assert_error(&r, 502, "server_error");
    }
    net.write_chain(&net.chain);

    // Still serving.
    let r = post(api, "/v1/completions", &completion(prompt, json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], full.text.as_str());
    assert!(r.header("x-request-id").is_some(), "{}", r.headers);

    // /status: the route source's view plus the API's.
    let st = wait_idle(api);
    assert_eq!(st["routes"], "chain_file");
    assert_eq!(st["node"]["layers"], "0..2", "{st}");
    assert_eq!(st["node"]["listen"], net.chain[0].addr.as_str());
    assert_eq!(st["n_layers"], 5);
    assert_eq!(st["coverage"], json!([1, 1, 1, 1, 1]));
    assert_eq!(st["last_route"]["chain"].as_array().map(Vec::len), Some(3));
    assert_eq!(st["api"]["model"], name.as_str());
    assert_eq!(st["api"]["model_id"], model_id.as_str());
    assert_eq!(st["api"]["context_length"], cfg.context_length);
    assert!(st["api"]["generated_tokens"].as_u64().unwrap() > 0);

    // /metrics: Prometheus text with the request counter by endpoint and status.
    let r = get(api, "/metrics");
    assert_eq!(r.status, 200);
    let m = r.body;
    for line in [
        "lamina_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "lamina_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"}",
        "lamina_http_requests_total{endpoint=\"/v1/completions\",status=\"503\"}",
        "lamina_http_requests_total{endpoint=\"/v1/completions\",status=\"502\"}",
        "lamina_http_requests_total{endpoint=\"/v1/models\",status=\"200\"}",
        "lamina_generated_tokens_total ",
        "lamina_prompt_tokens_total ",
        "lamina_active_requests 0",
        "lamina_time_to_first_token_seconds_count ",
        "lamina_step_seconds_count ",
        "lamina_sessions_active ",
    ] {
        assert!(m.lines().any(|l| l.starts_with(line)), "{line:?} in\n{m}");
    }
    drop(net);
}
