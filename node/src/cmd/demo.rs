//! `lamina demo`: the README's main command. Starts a local mesh of nodes that place
//! themselves on a model, sends a prompt through it, prints the route, the text and the
//! speed, and keeps serving (with a curl line to try) until Ctrl-C, then stops every node.
//!
//! Without `--model` it uses SmolLM2-135M-Instruct, pulled into the model cache on first
//! use (`lamina model pull smollm2-135m`); only when that fails does it fall back, with a
//! one-line notice, to a small random-weight model (whose text is noise).

use std::path::PathBuf;

use anyhow::Context;
use lamina_sharding::synth;

use crate::cli::{DemoArgs, GenerateArgs, OutputFormat};

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (model, real) = match &args.model {
        Some(m) => (m.clone(), true),
        None => match crate::models::default_model_path() {
            Ok(p) => (p, true),
            Err(e) => {
                eprintln!(
                    "notice: cannot get {} ({e}); using a random-weight model instead, its text is noise",
                    crate::models::DEFAULT_MODEL
                );
                (synthetic_fallback()?, false)
            }
        },
    };
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("lamina-demo-{}", std::process::id()));
    let state = dir.join("state.json");
    let mut opts =
        lamina_testnet::UpOptions::new(exe, args.nodes, model.clone(), state.clone(), dir.clone());
    opts.placement = lamina_testnet::Placement::Auto;
    opts.threads = Some(1);
    opts.observer = Some(super::progress::testnet_observer());
    eprintln!(
        "starting {} nodes on {} (each places itself on about 1/{} of the layers)...",
        args.nodes,
        model.display(),
        args.nodes
    );
    let t = std::time::Instant::now();
    let st = lamina_testnet::up(&opts)?;
    // From here on every exit path stops the nodes.
    let _down = Down(state.clone());
    eprintln!("mesh covered in {:.1} s:", t.elapsed().as_secs_f64());
    for n in &st.nodes {
        eprintln!(
            "  {} layers {:>7}  api {}  log {}",
            n.id,
            n.layers,
            n.api.as_deref().unwrap_or("-"),
            n.log.display()
        );
    }
    let api = st
        .nodes
        .first()
        .and_then(|n| n.api.clone())
        .context("the first node has no API")?;
    let gen = GenerateArgs {
        prompt: args.prompt.clone(),
        model: None,
        layers_split: None,
        chat: real,
        system: None,
        max_tokens: args.max_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repeat_penalty: 1.0,
        seed: 0,
        stop: vec![],
        threads: None,
        format: OutputFormat::Text,
        peer: Some(api.clone()),
        chain: None,
        activation_dtype: lamina_protocol::WireDType::F16,
    };
    println!("> {}", args.prompt);
    super::remote::generate(&gen, &api)?;
    let status = super::remote::fetch_status(&api)?;
    print!("{}", super::remote::render_status(&status));
    if args.exit {
        return Ok(());
    }
    println!(
        "\nthe mesh keeps serving; try:\n  curl -s {api}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Tell me a joke\"}}], \"max_tokens\": 64}}'\n  lamina status --peer {api}\nCtrl-C stops every node."
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(super::node::shutdown_signal());
    eprintln!("stopping...");
    Ok(())
}

/// Stops the testnet when dropped.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        match lamina_testnet::down(&self.0) {
            Ok(n) => eprintln!("stopped {n} node(s)"),
            Err(e) => eprintln!("stopping the nodes: {e:#}"),
        }
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A small random-weight model in the temp dir (written once per seed).
fn synthetic_fallback() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join("lamina-demo-synthetic-smollm2-shape-q8_0.gguf");
    if !path.exists() {
        let spec = synth::SynthSpec {
            preset: synth::preset("smollm2-135m-shape")?.clone(),
            dtype: synth::SynthDType::Q8_0,
            seed: 0,
            n_layers_override: None,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, synth::gguf_bytes(&spec)?)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}
