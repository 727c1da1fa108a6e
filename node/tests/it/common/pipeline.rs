//! Shared helpers of the data-plane, pipeline and testnet tests: where the real models are
//! (failing in CI when missing, skipping elsewhere), `lamina node` child processes that are
//! always killed, and temporary folders.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lamina_node::dataplane::Dialer;
use lamina_node::pipeline::{ChainHop, PipelineOptions, PipelineSession};
use lamina_protocol::{ModelId, WireDType};
use lamina_sharding::generate::{LocalChain, Stepper};
use lamina_sharding::sampling::argmax;

pub const STORIES: &str = "stories260K.gguf";

pub fn models_dir() -> PathBuf {
    match std::env::var_os("LAMINA_TEST_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"),
    }
}

/// The path of a shared model file; `None` (skip) outside CI, a failure in CI.
pub fn model_path(file: &str) -> Option<PathBuf> {
    let p = models_dir().join(file);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "required test model {} is missing (set LAMINA_TEST_MODELS to the shared models folder)",
            p.display()
        );
    }
    eprintln!("SKIPPED: test model {} not found", p.display());
    None
}

/// `(prompt, prompt ids, reference generated ids)`.
pub type RefPrompt = (String, Vec<u32>, Vec<u32>);

/// The prompts of a model in reference.json.
pub fn reference_prompts(model: &str) -> Option<Vec<RefPrompt>> {
    let p = model_path("reference.json")?;
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).expect("read reference.json"))
            .expect("parse reference.json");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    let prompts = v["models"][model]["prompts"].as_object().expect("prompts");
    Some(
        prompts
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    ids(&r["prompt_token_ids"]),
                    ids(&r["generated_token_ids"]),
                )
            })
            .collect(),
    )
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "lamina-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `lamina node` child process, killed on drop.
pub struct NodeProc {
    pub child: Child,
    pub ready: serde_json::Value,
    _dir: TempDir,
}

impl NodeProc {
    /// Starts `lamina node` for `layers` of `model` on a free loopback port and waits
    /// (bounded) for its ready line.
    pub fn start(model: &Path, layers: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new("node");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .arg("node")
            .arg("--model")
            .arg(model)
            .args([
                "--layers",
                layers,
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                // Tests run side by side on one machine: no LAN discovery between them.
                "--open",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lamina node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut node = NodeProc {
            child,
            ready: serde_json::Value::Null,
            _dir: dir,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("node ready within 120 s");
        node.ready =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        node
    }

    pub fn hop(&self) -> ChainHop {
        ChainHop {
            layers: self.ready["layers"]
                .as_str()
                .expect("layers")
                .parse()
                .expect("range"),
            addr: self.ready["listen"].as_str().expect("listen").to_owned(),
            peer: self.ready["peer_id"]
                .as_str()
                .expect("peer_id")
                .parse()
                .expect("peer id"),
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one node per range; returns them and the chain.
pub fn start_chain(model: &Path, ranges: &[&str]) -> (Vec<NodeProc>, Vec<ChainHop>) {
    let nodes: Vec<NodeProc> = ranges
        .iter()
        .map(|r| NodeProc::start(model, r, &[]))
        .collect();
    let chain = nodes.iter().map(NodeProc::hop).collect();
    (nodes, chain)
}

/// A multi-threaded runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Greedy tokens (and per-step logits when asked) through the chain.
pub async fn run_remote(
    dialer: &Dialer,
    chain: &[ChainHop],
    model_id: ModelId,
    prompt: &[u32],
    n: usize,
    dtype: WireDType,
    logits: bool,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let opts = PipelineOptions {
        max_length: (prompt.len() + n) as u32,
        activation_dtype: dtype,
        return_logits: logits,
        ..PipelineOptions::default()
    };
    let mut s = PipelineSession::open(dialer, chain, model_id, &opts)
        .await
        .expect("open session");
    let mut tokens = Vec::new();
    let mut all_logits = Vec::new();
    let mut r = s.step(prompt).await.expect("prefill");
    loop {
        tokens.push(r.token);
        if let Some(l) = r.logits.take() {
            assert_eq!(
                argmax(&l),
                r.token,
                "the last hop's greedy token is the argmax"
            );
            all_logits.push(l);
        }
        if tokens.len() == n {
            break;
        }
        r = s.step(&[r.token]).await.expect("decode step");
    }
    assert_eq!(s.position() as usize, prompt.len() + n - 1);
    s.close().await.expect("close");
    (tokens, all_logits)
}

pub fn local_greedy(chain: &LocalChain, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = chain.session(prompt.len() + n).expect("session");
    let mut logits = s.step(prompt).expect("prefill");
    let mut tokens = Vec::new();
    let mut all = Vec::new();
    loop {
        let t = argmax(&logits);
        tokens.push(t);
        all.push(logits);
        if tokens.len() == n {
            break;
        }
        logits = s.step(&[t]).expect("step");
    }
    (tokens, all)
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
