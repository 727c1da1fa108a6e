//! The data planes side by side: the time a hop adds per token when sessions run on each
//! node's own QUIC endpoint (quinn, the default) and when they run as streams on the
//! mesh's libp2p connections (`--advertise-dataplane p2p`), measured in one run.
//!
//! `cargo build --release -p lamina-node -p lamina-benches &&
//!  target/release/dataplane [--rounds 5] [--tokens 64] [--model FILE]`
//!
//! Four testnets of release `lamina` processes on loopback (one thread each), all up at
//! once and measured in rounds (odd rounds in reverse order) so that machine load affects
//! each alike: per
//! data plane, a one-hop chain (a layerless entry and one server of every layer) and a
//! three-hop chain (the layers split over three servers). Decode time per token is the
//! difference of two greedy requests (8 and 8 + `--tokens` tokens) through the entry's
//! API, divided by the difference of their token counts, so prompt and setup cancel; the
//! time a hop adds is (three-hop - one-hop) / 2. Medians over rounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lamina_testnet::{Placement, UpOptions};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Per-hop time of the QUIC and the libp2p-stream data planes, side by side")]
struct Args {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Decode tokens measured per request pair.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// The model (default: shared/models/stories260K.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Working folder (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Stops a testnet when dropped.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
    }
}

struct Net {
    label: String,
    api: String,
    _down: Down,
}

fn up(exe: &Path, model: &Path, dir: &Path, ranges: Vec<String>, p2p: bool) -> Result<Net> {
    let state = dir.join("state.json");
    let mut opts = UpOptions::new(
        exe.to_path_buf(),
        ranges.len(),
        model.to_path_buf(),
        state.clone(),
        dir.join("net"),
    );
    let hops = ranges.iter().filter(|r| *r != "none").count();
    opts.placement = Placement::Fixed(ranges);
    opts.threads = Some(1);
    opts.verify_rate = 0.0;
    opts.ready_timeout = Duration::from_secs(180);
    if p2p {
        opts.extra_args = vec!["--advertise-dataplane".into(), "p2p".into()];
    }
    let st = lamina_testnet::up(&opts).context("testnet up")?;
    let down = Down(state);
    let api = st
        .nodes
        .last()
        .and_then(|n| n.api.clone())
        .context("the entry has no API")?;
    Ok(Net {
        label: format!("{} {hops} hop(s)", if p2p { "p2p" } else { "quic" }),
        api,
        _down: down,
    })
}

/// Wall seconds and completion tokens of one greedy request.
fn complete(api: &str, prompt: &str, n: usize) -> Result<(f64, u64)> {
    let t = Instant::now();
    let v: Value = ureq::post(&format!("{api}/v1/completions"))
        .timeout(Duration::from_secs(300))
        .send_json(json!({"prompt": prompt, "max_tokens": n, "temperature": 0.0}))?
        .into_json()?;
    let secs = t.elapsed().as_secs_f64();
    let tokens = v["usage"]["completion_tokens"]
        .as_u64()
        .context("no usage in the answer")?;
    Ok((secs, tokens))
}

/// Decode milliseconds per token through `api`.
fn decode_ms(api: &str, prompt: &str, tokens: usize) -> Result<f64> {
    let (a, na) = complete(api, prompt, 8)?;
    let (b, nb) = complete(api, prompt, 8 + tokens)?;
    if nb <= na {
        bail!("the model stopped early ({nb} tokens): pick another prompt");
    }
    Ok((b - a) * 1e3 / (nb - na) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let exe = lamina_benches::mesh::lamina_bin()?;
    let model = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/stories260K.gguf")
    });
    if !model.exists() {
        bail!("model {} not found (--model)", model.display());
    }
    let n_layers = lamina_sharding::source::ModelFile::open(&model)?
        .config()?
        .n_layers;
    if n_layers < 3 {
        bail!("the model has {n_layers} layers: three hops need three");
    }
    let (a, b) = (n_layers / 3, 2 * n_layers / 3);
    let three = vec![
        format!("0..{a}"),
        format!("{a}..{b}"),
        format!("{b}..{n_layers}"),
        "none".to_string(),
    ];
    let one = vec![format!("0..{n_layers}"), "none".to_string()];
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lamina-dataplane-{}", std::process::id()))
    });
    let mut nets = Vec::new();
    for (i, (ranges, p2p)) in [
        (one.clone(), false),
        (three.clone(), false),
        (one, true),
        (three, true),
    ]
    .into_iter()
    .enumerate()
    {
        nets.push(up(
            &exe,
            &model,
            &dir.join(format!("net-{i}")),
            ranges,
            p2p,
        )?);
    }
    // Warm every chain once (first sessions dial and fill caches).
    for n in &nets {
        decode_ms(&n.api, &args.prompt, 8)?;
    }
    let mut ms: Vec<Vec<f64>> = vec![Vec::new(); nets.len()];
    for round in 0..args.rounds {
        // Odd rounds go backwards, so no chain always runs first or last.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..nets.len()).collect()
        } else {
            (0..nets.len()).rev().collect()
        };
        for i in order {
            let n = &nets[i];
            let v = decode_ms(&n.api, &args.prompt, args.tokens)?;
            eprintln!("round {round}: {}: {v:.3} ms/token", n.label);
            ms[i].push(v);
        }
    }
    let med: Vec<f64> = ms.into_iter().map(median).collect();
    println!(
        "| data plane | 1 hop ms/token | 3 hops ms/token | added per hop (µs) |\n| --- | --- | --- | --- |"
    );
    let per_hop = |one: f64, three: f64| (three - one) / 2.0 * 1e3;
    let quic = per_hop(med[0], med[1]);
    let p2p = per_hop(med[2], med[3]);
    println!(
        "| quic (own endpoint) | {:.3} | {:.3} | {quic:.0} |",
        med[0], med[1]
    );
    println!(
        "| p2p (mesh streams) | {:.3} | {:.3} | {p2p:.0} |",
        med[2], med[3]
    );
    println!(
        "\np2p / quic: per hop {:.2}x, 3-hop ms/token {:.2}x ({} rounds of {} tokens, model {})",
        p2p / quic,
        med[3] / med[1],
        args.rounds,
        args.tokens,
        model.display()
    );
    Ok(())
}
