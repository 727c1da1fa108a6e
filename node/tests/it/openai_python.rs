//! The official OpenAI Python client against a node's API: `examples/python/openai_chat.py`
//! asks a SmolLM2 node (all 30 layers) one chat question whole and streamed; both texts
//! equal the single-process greedy run.
//!
//! The interpreter comes from `LAMINA_PYTHON`, else `/work/venvs/openai/bin/python`; when
//! neither can `import openai` the test fails in CI and is skipped elsewhere.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_sharding::chat::encode_chat;
use lamina_sharding::chat::{ChatMessage, ChatTemplate};
use lamina_sharding::generate::FinishReason;
use lamina_sharding::source::ModelFile;

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT: &str = "What is the capital of France?";
const MAX_TOKENS: usize = 20;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A Python that has `openai`, or `None` (skip) outside CI.
fn python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("LAMINA_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![PathBuf::from("/work/venvs/openai/bin/python")],
    };
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-c", "import openai"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p.clone());
        }
    }
    assert!(
        !in_ci(),
        "no Python with the openai package ({candidates:?}); set LAMINA_PYTHON"
    );
    eprintln!("SKIPPED: no Python with the openai package ({candidates:?}); set LAMINA_PYTHON");
    None
}

#[test]
fn official_openai_client_chat_equals_single_process() {
    let Some(path) = model_path(SMOLLM) else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let tok = model.tokenizer().expect("tokenizer");
    let template = model
        .chat_template(&tok)
        .expect("template")
        .unwrap_or_else(ChatTemplate::chatml);
    let ids = encode_chat(&tok, &template, &[ChatMessage::new("user", PROMPT)]).unwrap();
    let want = reference_run(&model, ids.clone(), MAX_TOKENS, vec![]);

    let net = ApiChain::start(&path, &["0..30"], &[]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/openai_chat.py");
    // `output` waits for the script, whose every request has the client's timeout.
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", net.api))
        .args(["--prompt", PROMPT, "--max-tokens", &MAX_TOKENS.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run the python script");
    assert!(
        out.status.success(),
        "the script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the script prints one JSON object");
    eprintln!("python client: {v}");
    let finish = match want.finish_reason {
        FinishReason::Stop => "stop",
        _ => "length",
    };
    assert_eq!(v["text"], want.text.as_str(), "whole");
    assert_eq!(v["stream_text"], want.text.as_str(), "streamed");
    assert_eq!(v["finish_reason"], finish);
    assert_eq!(v["stream_finish_reason"], finish);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["stream_usage"]["prompt_tokens"], ids.len());
    assert_eq!(
        v["usage"]["completion_tokens"],
        want.generated_token_ids.len()
    );
}
