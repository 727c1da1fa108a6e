//! `--private-ends` (issue 15, part 6): an entry that runs the embedding, the final norm,
//! the head and the sampling itself gets the very tokens of a default chain, greedy and
//! seeded, while its hops are fed hidden states only, never a token id.

use std::sync::Arc;
use std::time::Duration;

use crate::common::hops::{client_dialer, spawn_hop, TestHop};
use crate::common::pipeline::{model_path, STORIES};
use candle_core::Device;
use lamina_node::pipeline::{
    generate::Quiet, ChainClient, EntryEnds, FailoverPolicy, GenerateOptions,
};
use lamina_node::routes::FixedRoute;
use lamina_node::session::ServerOptions;
use lamina_protocol::{FrameLimits, LayerRange, WireDType};
use lamina_sharding::executor::Ends;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Token ids each hop was fed, per hop.
fn token_inputs(hops: &[TestHop]) -> Vec<u64> {
    hops.iter().map(|h| h.server.inputs().tokens()).collect()
}

fn hidden_inputs(hops: &[TestHop]) -> Vec<u64> {
    hops.iter().map(|h| h.server.inputs().hidden()).collect()
}

async fn same_tokens_and_no_token_ids(file: &str, ranges: &[(u32, u32)], prompt: &str) {
    let Some(path) = model_path(file) else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let id = lamina_node::model_id_of(&model).expect("model id");
    let tokenizer = Arc::new(model.tokenizer().expect("tokenizer"));
    let hops: Vec<TestHop> = ranges
        .iter()
        .map(|&(a, b)| {
            spawn_hop(
                &model,
                id,
                LayerRange::new(a, b).expect("range"),
                ServerOptions::default(),
            )
        })
        .collect();
    let route = FixedRoute(hops.iter().map(|h| h.hop.clone()).collect());
    let client = ChainClient {
        dialer: client_dialer(FrameLimits::default()),
        model_id: id,
        tokenizer: tokenizer.clone(),
        context_length: model.config().expect("config").context_length,
        ends: None,
        verify: Default::default(),
    };
    let private = ChainClient {
        ends: Some(EntryEnds::new(
            Ends::load(&model, &Device::Cpu).expect("ends"),
        )),
        ..client.clone()
    };
    let opts = GenerateOptions {
        activation_dtype: WireDType::F16,
        trace_id: None,
        policy: FailoverPolicy::none(),
    };
    let prompt_ids = tokenizer.encode(prompt, true, false).expect("encode");
    let seeded = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 7,
        ..SamplingParams::greedy()
    };
    for (what, sampling) in [("greedy", SamplingParams::greedy()), ("seeded", seeded)] {
        let req = GenerateRequest {
            prompt_ids: prompt_ids.clone(),
            max_tokens: 24,
            sampling,
            stop: vec![],
        };
        let before = token_inputs(&hops);
        let default = client
            .generate(&route, &req, &opts, &mut Quiet)
            .await
            .expect("default generation")
            .output;
        let fed = token_inputs(&hops);
        assert!(
            fed[0] > before[0],
            "{file} {what}: a default chain's first hop is fed token ids ({before:?} -> {fed:?})"
        );
        let hidden_before = hidden_inputs(&hops);
        let ends = private
            .generate(&route, &req, &opts, &mut Quiet)
            .await
            .expect("private-ends generation")
            .output;
        assert_eq!(
            token_inputs(&hops),
            fed,
            "{file} {what}: with private ends no hop is fed a token id"
        );
        let hidden = hidden_inputs(&hops);
        assert!(
            hidden[0] > hidden_before[0],
            "{file} {what}: the first hop is fed hidden states instead"
        );
        assert_eq!(default.generated_token_ids.len(), 24, "{file} {what}");
        assert_eq!(
            ends.generated_token_ids, default.generated_token_ids,
            "{file} {what}: private ends draw the default chain's tokens"
        );
        assert_eq!(ends.text, default.text, "{file} {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ends_equal_default_on_stories_and_hops_see_no_token_ids() {
    tokio::time::timeout(
        Duration::from_secs(120),
        same_tokens_and_no_token_ids(
            STORIES,
            &[(0, 2), (2, 4), (4, 5)],
            "Once upon a time, there was a little girl",
        ),
    )
    .await
    .expect("finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ends_equal_default_on_smollm2_and_hops_see_no_token_ids() {
    tokio::time::timeout(
        Duration::from_secs(180),
        same_tokens_and_no_token_ids(
            SMOLLM2,
            &[(0, 10), (10, 20), (20, 30)],
            "The capital of France is",
        ),
    )
    .await
    .expect("finished in time");
}

/// The daemon's flag: a `lamina node --private-ends` entry of a three-node chain answers
/// the single-process text, and its own hop (layer 0, the one that would see the text) is
/// fed hidden states only, as its `/metrics` says.
#[test]
fn a_private_ends_node_answers_as_one_process_and_its_first_hop_sees_no_token_ids() {
    use crate::common::api::{get, post, reference_run, ApiChain};
    use serde_json::json;

    let Some(path) = model_path(STORIES) else {
        return;
    };
    let model = ModelFile::open(&path).expect("model");
    let tok = model.tokenizer().expect("tokenizer");
    let prompt = "Once upon a time, there was a little girl";
    let ids = tok
        .encode(prompt, tok.add_bos_default(), false)
        .expect("encode");
    let want = reference_run(&model, ids, 16, vec![]);
    let net = ApiChain::start(&path, &["0..2", "2..4", "4..5"], &["--private-ends"]);
    let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0,
        "activation_dtype": "f32"});
    let r = post(&net.api, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], want.text.as_str());
    // The metrics follow the server once a second.
    let line = |input: &str| format!("lamina_session_steps_by_input{{input=\"{input}\"}}");
    let value = |text: &str, input: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&line(input)))
            .and_then(|v| v.trim().parse().ok())
    };
    let t = std::time::Instant::now();
    loop {
        let m = get(&net.api, "/metrics").body;
        if value(&m, "hidden").unwrap_or(0) >= 16 {
            assert_eq!(value(&m, "tokens"), Some(0), "{m}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the first hop's steps never showed in /metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
