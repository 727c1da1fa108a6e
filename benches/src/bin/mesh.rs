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
use lamina_benches::mesh::{lamina_exe, spread, stream_chat, Net, Sample, PROMPT};
use lamina_benches::{report, sys};
use lamina_testnet::{Placement, UpOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Starts one configuration's testnet under `work`.
fn start(exe: &Path, model: &Path, c: &Config, work: &Path) -> Result<Net> {
    let dir = work.join(c.name);
    let state = work.join(format!("{}.state.json", c.name));
    let mut opts = UpOptions::new(exe.into(), c.nodes, model.into(), state, dir);
    opts.placement = c.placement.clone();
    opts.threads = Some(c.threads);
    let started = Instant::now();
    // From here on the guard stops the nodes, whatever happens.
    let net = Net::up(&opts).with_context(|| format!("starting {}", c.name))?;
    let layers: Vec<&str> = net.state.nodes.iter().map(|n| n.layers.as_str()).collect();
    eprintln!(
        "{}: {} up in {:.1} s, layers [{}], entry {}",
        c.name,
        c.what,
        started.elapsed().as_secs_f64(),
        layers.join(", "),
        net.api()?
    );
    Ok(net)
}

/// Warm-up, then `rounds` rounds alternating the testnets; `samples[config][round]`.
fn run(nets: &[Net], cfgs: &[Config], args: &Args) -> Result<Vec<Vec<Sample>>> {
    let mut samples: Vec<Vec<Sample>> = nets.iter().map(|_| Vec::new()).collect();
    for round in 0..=args.rounds {
        for ((net, c), out) in nets.iter().zip(cfgs).zip(&mut samples) {
            let s = stream_chat(net.api()?, args.max_tokens, Duration::from_secs(600))
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
