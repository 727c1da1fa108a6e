//! `lamina testnet up` starts three nodes with a state file, the first node's HTTP API
//! answers `POST /v1/completions` through the chain (greedy = reference, sampled = the
//! single-process run with the same seed), and `lamina testnet down` leaves no process.

mod pipeline_common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use candle_core::Device;
use lamina_sharding::generate::{generate, GenerateRequest, LocalChain};
use lamina_sharding::layers::LayerRange;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use lamina_testnet::{is_alive, TestnetState};
use pipeline_common::*;

/// Runs `lamina testnet down` on drop if the test did not.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_lamina"))
                .args(["testnet", "down", "--state"])
                .arg(&self.0)
                .status();
        }
    }
}

fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let addr = url
        .strip_prefix("http://")
        .expect("the api is an http:// URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let json = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    v["choices"][0]["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn testnet_up_serves_completions_and_down_leaves_no_process() {
    let (Some(path), Some(prompts)) = (model_path(STORIES), reference_prompts(STORIES)) else {
        return;
    };
    let dir = TempDir::new("testnet");
    let state_path = dir.path().join("state.json");
    let guard = Down(state_path.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "up", "--nodes", "3", "--model"])
        .arg(&path)
        .arg("--state")
        .arg(&state_path)
        .output()
        .expect("run testnet up");
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = TestnetState::read(&state_path).expect("state file");
    let layers: Vec<&str> = state.nodes.iter().map(|n| n.layers.as_str()).collect();
    assert_eq!(layers, ["0..2", "2..4", "4..5"]);
    for n in &state.nodes {
        assert!(is_alive(n.pid), "{} is running", n.id);
        assert!(n.log.exists());
    }
    // The raw JSON has the documented keys.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for key in ["id", "layers", "api", "pid", "log"] {
        assert!(raw["nodes"][0].get(key).is_some(), "state has {key}");
    }

    let api = state.nodes[0].api.clone().expect("first node's API");
    let (name, _, want) = &prompts[0];
    let (status, v) = post(
        &api,
        // OpenAI's default temperature is 1: greedy must be asked for.
        &serde_json::json!({"prompt": name, "max_tokens": want.len(), "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(&token_ids(&v), want, "greedy completion = reference");

    // Sampled: the same tokens as the single-process run with the same settings.
    let model = ModelFile::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let local = LocalChain::load(&model, &[LayerRange::new(0, 5).unwrap()], &Device::Cpu).unwrap();
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        ..SamplingParams::default()
    };
    let req = GenerateRequest {
        prompt_ids: tok.encode(name, tok.add_bos_default(), false).unwrap(),
        max_tokens: 24,
        sampling,
        stop: vec![],
    };
    let mut s = local.session(req.prompt_ids.len() + 24).unwrap();
    let want = generate(&mut s, &tok, &req, 2048, |_| {}).unwrap();
    let body = serde_json::json!({"prompt": name, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 7});
    let (status, v) = post(&api, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        token_ids(&v),
        want.generated_token_ids,
        "sampled completion = local run"
    );
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want.text);

    // A bad body is a 400, and the node keeps serving.
    let (status, _) = post(&api, &serde_json::json!({"prompt": 5}));
    assert_eq!(status, 400);
    let (status, _) = post(
        &api,
        &serde_json::json!({"prompt": "x", "temperature": -1.0}),
    );
    assert_eq!(status, 400);

    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "down", "--state"])
        .arg(&state_path)
        .output()
        .expect("run testnet down");
    assert!(
        out.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &state.nodes {
        assert!(
            !is_alive(n.pid),
            "{} (pid {}) still running after down",
            n.id,
            n.pid
        );
    }
    assert!(!state_path.exists(), "down removes the state file");
    drop(guard);
}
