//! The mesh HTTP bench (the speed line of the mesh issue): time from an HTTP request to
//! the first token, and decode tokens/s, through a 3-node mesh against a single node that
//! serves every layer, measured side by side in one run, as a client of the OpenAI API sees
//! them.
//!
//! `cargo build --release -p lamina-node -p lamina-benches &&
//!  target/release/mesh [--rounds 3] [--max-tokens 64] [--threads-per-node 1]
//!  [--single-threads N] [--model FILE] [--lamina PATH] [--out FILE.md]`
//!
//! Three testnets are started at once with `lamina_testnet::up` and kept up for the whole
//! run: (A) one node with all layers, (B) three nodes with layers 0..10, 10..20, 20..30,
//! (C) the same three entered through a fourth node with `--layers none`. Every request is
//! a streamed `POST /v1/chat/completions` to the entry node (node-0) at temperature 0.
//! Requests run one at a time (the testnets share the machine's cores, so only one of
//! them computes at any moment) and configurations alternate round by round (A, B, C,
//! A, ...) after one warm-up each, so that changes in machine load hit all alike.
//!
//! - time to first token: request sent -> first non-empty `delta.content`;
//! - decode tokens/s: `(usage.completion_tokens - 1)` / (first -> last content delta).

use anyhow::{bail, Context, Result};
use clap::Parser;
use lamina_benches::{report, sys};
use lamina_testnet::{Placement, UpOptions};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROMPT: &str = "Write a long story about a lighthouse keeper.";

#[derive(Parser, Debug)]
#[command(about = "TTFT and decode tokens/s through a 3-node mesh vs one node, over HTTP")]
struct Args {
    /// The model (GGUF).
    #[arg(long, default_value = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    ))]
    model: PathBuf,
    /// The `lamina` binary (default: `lamina` next to this executable).
    #[arg(long)]
    lamina: Option<PathBuf>,
    /// Measured rounds per configuration (after one warm-up each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// `--threads` of every mesh node (B and C).
    #[arg(long, default_value_t = 1)]
    threads_per_node: usize,
    /// `--threads` of the single node (A); default: `--threads-per-node`.
    #[arg(long)]
    single_threads: Option<usize>,
    /// Append the report to this markdown file too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip configuration C (the entry node without layers).
    #[arg(long)]
    no_entry_node: bool,
}

/// One configuration: how its testnet is started.
struct Config {
    name: &'static str,
    what: &'static str,
    nodes: usize,
    placement: Placement,
    threads: usize,
}

/// A running testnet; stops its nodes when dropped (also on error or panic).
struct Testnet {
    state: PathBuf,
    api: String,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Err(e) = lamina_testnet::down(&self.state) {
            eprintln!("warning: stopping {}: {e:#}", self.state.display());
        }
    }
}

/// What one streamed request measured.
struct Sample {
    ttft: Duration,
    tokens_per_s: f64,
    completion_tokens: usize,
    text: String,
}

fn lamina_exe(arg: Option<PathBuf>) -> Result<PathBuf> {
    let p = match arg {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("lamina"),
    };
    if !p.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p lamina-node",
            p.display()
        );
    }
    Ok(p)
}

fn configs(args: &Args) -> Vec<Config> {
    let t = args.threads_per_node;
    let mut v = vec![
        Config {
            name: "A",
            what: "1 node, all layers",
            nodes: 1,
            placement: Placement::Even,
            threads: args.single_threads.unwrap_or(t),
        },
        Config {
            name: "B",
            what: "3 nodes (0..10, 10..20, 20..30)",
            nodes: 3,
            placement: Placement::Even,
            threads: t,
        },
    ];
    if !args.no_entry_node {
        let layers = ["0..10", "10..20", "20..30", "none"];
        v.push(Config {
            name: "C",
            what: "3 nodes entered through a 4th with --layers none",
            nodes: 4,
            placement: Placement::Fixed(layers.map(String::from).to_vec()),
            threads: t,
        });
    }
    v
}

/// Starts one configuration's testnet under `work` and returns it with node-0's API.
fn start(exe: &Path, model: &Path, c: &Config, work: &Path) -> Result<Testnet> {
    let dir = work.join(c.name);
    let state = work.join(format!("{}.state.json", c.name));
    let mut opts = UpOptions::new(exe.into(), c.nodes, model.into(), state.clone(), dir);
    opts.placement = c.placement.clone();
    opts.threads = Some(c.threads);
    let started = Instant::now();
    let st = lamina_testnet::up(&opts).with_context(|| format!("starting {}", c.name))?;
    // From here on the guard stops the nodes, whatever happens.
    let mut net = Testnet {
        state,
        api: String::new(),
    };
    net.api = st.nodes[0].api.clone().context("node-0 has no HTTP API")?;
    let layers: Vec<&str> = st.nodes.iter().map(|n| n.layers.as_str()).collect();
    eprintln!(
        "{}: {} up in {:.1} s, layers [{}], entry {}",
        c.name,
        c.what,
        started.elapsed().as_secs_f64(),
        layers.join(", "),
        net.api
    );
    Ok(net)
}

/// One streamed chat completion through `api`.
fn measure(api: &str, max_tokens: usize) -> Result<Sample> {
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let resp = ureq::post(&format!("{api}/v1/chat/completions"))
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(600))
        .send_string(&body.to_string())
        .with_context(|| format!("POST {api}/v1/chat/completions"))?;
    let (mut first, mut last) = (None, None);
    let mut text = String::new();
    let mut usage = None;
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).context("SSE chunk")?;
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
        }
        let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        if !delta.is_empty() {
            let now = sent.elapsed();
            first.get_or_insert(now);
            last = Some(now);
            text.push_str(delta);
        }
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("{api}: no content in the stream");
    };
    let completion_tokens = usage.context("no usage chunk in the stream")?;
    let decode = (last - first).as_secs_f64();
    Ok(Sample {
        ttft: first,
        tokens_per_s: completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9),
        completion_tokens,
        text,
    })
}

/// Warm-up, then `rounds` rounds alternating the testnets; `samples[config][round]`.
fn run(nets: &[Testnet], cfgs: &[Config], args: &Args) -> Result<Vec<Vec<Sample>>> {
    let mut samples: Vec<Vec<Sample>> = nets.iter().map(|_| Vec::new()).collect();
    for round in 0..=args.rounds {
        for ((net, c), out) in nets.iter().zip(cfgs).zip(&mut samples) {
            let s = measure(&net.api, args.max_tokens)
                .with_context(|| format!("{} round {round}", c.name))?;
            let tag = if round == 0 {
                "warm-up".to_string()
            } else {
                format!("round {round}")
            };
            eprintln!(
                "{} {tag}: ttft {:.1} ms, {:.1} tok/s, {} tokens",
                c.name,
                s.ttft.as_secs_f64() * 1e3,
                s.tokens_per_s,
                s.completion_tokens
            );
            if s.completion_tokens < args.max_tokens {
                bail!(
                    "{}: only {} of {} tokens (the model stopped early; the prompt must make it write more)",
                    c.name,
                    s.completion_tokens,
                    args.max_tokens
                );
            }
            if round > 0 {
                out.push(s);
            }
        }
    }
    Ok(samples)
}

/// The 1-minute load average (the machine is shared; this says how much).
fn load_1m() -> String {
    sys::loadavg().map_or("?".into(), |l| format!("{:.2}", l[0]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `median (min-max)` with `prec` decimals.
fn spread(v: &[f64], prec: usize) -> String {
    let (lo, hi) = report::min_max(v);
    format!("{:.prec$} ({lo:.prec$}-{hi:.prec$})", report::median(v))
}

/// The markdown report: how it was run, then one row per configuration.
fn render(
    cfgs: &[Config],
    samples: &[Vec<Sample>],
    args: &Args,
    command: &str,
    load: (String, String),
) -> String {
    let m = sys::machine_facts();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ttft: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| s.iter().map(|x| ms(x.ttft)).collect())
        .collect();
    let tps: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| s.iter().map(|x| x.tokens_per_s).collect())
        .collect();
    let (ttft_a, tps_a) = (report::median(&ttft[0]), report::median(&tps[0]));
    let text_a = &samples[0][0].text;
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let tokens: Vec<String> = samples[i]
                .iter()
                .map(|s| s.completion_tokens.to_string())
                .collect();
            let tokens = if tokens.iter().all(|t| *t == tokens[0]) {
                format!("{} in every round", tokens[0])
            } else {
                tokens.join(", ")
            };
            let same = samples[i].iter().all(|s| &s.text == text_a);
            vec![
                format!("{} {}", c.name, c.what),
                c.threads.to_string(),
                spread(&ttft[i], 1),
                spread(&tps[i], 1),
                format!("{:.2}", report::median(&ttft[i]) / ttft_a),
                format!("{:.2}", report::median(&tps[i]) / tps_a),
                tokens,
                if same { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let table = report::markdown_table(
        &[
            "configuration",
            "threads per node",
            "TTFT ms, median (min-max)",
            "decode tok/s, median (min-max)",
            "TTFT / A",
            "tok/s / A",
            "completion tokens",
            "same text as A",
        ],
        &rows,
    );
    format!(
        "### Mesh vs one node over HTTP: {} alternating rounds, {} tokens, {} thread(s) per mesh node, {} for the single node\n\n\
         Command: `{command}`  \n\
         Date: {}  \n\
         Source tree: {}  \n\
         Machine: {} logical CPUs, {}; load average (1 min) {} at the start, {} at the end  \n\
         Model: {}  \n\
         Prompt: chat message \"{PROMPT}\", temperature 0, streamed, `max_tokens` {}\n\n{table}",
        args.rounds,
        args.max_tokens,
        args.threads_per_node,
        cfgs[0].threads,
        sys::utc_now(),
        sys::tree_state(&root),
        m.logical_cpus,
        m.cpu_model,
        load.0,
        load.1,
        args.model.display(),
        args.max_tokens,
    )
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.model = std::fs::canonicalize(&args.model)
        .with_context(|| format!("cannot find {}", args.model.display()))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let exe = lamina_exe(args.lamina.clone())?;
    let work = std::env::temp_dir().join(format!("lamina-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let cfgs = configs(&args);
    let mut nets = Vec::new();
    for c in &cfgs {
        nets.push(start(&exe, &args.model, c, &work)?);
    }
    let load_start = load_1m();
    let samples = run(&nets, &cfgs, &args)?;
    let load = (load_start, load_1m());
    drop(nets);
    let _ = std::fs::remove_dir_all(&work);
    let md = render(&cfgs, &samples, &args, &command, load);
    println!("{md}");
    if let Some(out) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        writeln!(f, "\n{md}")?;
    }
    Ok(())
}
