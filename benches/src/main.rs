//! `lamina-bench`: single-node throughput of lamina next to candle-transformers'
//! `quantized_llama` and llama.cpp, and the memory a shard holds.
//!
//! ```text
//! cargo run --release -p lamina-benches                 # = compare (then rss)
//! cargo run --release -p lamina-benches -- compare --rounds 5 --threads 2
//! cargo run --release -p lamina-benches -- rss --ranges 0..15,0..30
//! ```
//!
//! Results are printed and written to `benches/RESULTS.md` and `benches/results/*.json`
//! (`--no-write` to skip).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lamina_benches::compare::{self, CompareOptions};
use lamina_benches::models::{self, BenchModel};
use lamina_benches::report::update_section;
use lamina_benches::rss;
use lamina_benches::worker::{self, Impl};
use lamina_sharding::layers::LayerRange;
use lamina_sharding::synth::SynthDType;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "lamina-bench",
    about = "Prefill/decode tokens/s of lamina vs candle quantized_llama vs llama.cpp, and shard memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Throughput side by side (the default), followed by the RSS check unless --no-rss.
    Compare(Box<CompareArgs>),
    /// Memory held by shards of different layer ranges.
    Rss(RssArgs),
    /// One measured run in this process (spawned by `compare`).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// One RSS measurement in this process (spawned by `rss`).
    #[command(hide = true)]
    RssWorker(RssWorkerArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModelChoice {
    /// The real SmolLM2-135M-Instruct Q4_1 file.
    Smollm2,
    /// A synthetic random-weight model (`--synth-preset`, `--synth-dtype`).
    Synth,
}

#[derive(Args, Clone)]
struct OutArgs {
    /// Where RESULTS.md and results/ are written.
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    out_dir: PathBuf,
    /// Print only; do not touch RESULTS.md or results/.
    #[arg(long)]
    no_write: bool,
}

#[derive(Args)]
struct CompareArgs {
    #[arg(long, value_delimiter = ',', default_value = "smollm2,synth")]
    models: Vec<ModelChoice>,
    #[arg(long, default_value = models::SMOLLM2_PATH)]
    smollm2: PathBuf,
    #[arg(long, default_value = "tinyllama-1.1b")]
    synth_preset: String,
    /// One or more dtypes, comma-separated: one synthetic model each.
    #[arg(long, value_delimiter = ',', default_value = "q8_0")]
    synth_dtype: Vec<String>,
    /// More GGUF files to run, as `LABEL=PATH` (repeatable), e.g. a requantization.
    #[arg(long = "gguf", value_name = "LABEL=PATH")]
    extra: Vec<String>,
    #[arg(long, default_value_t = 0)]
    synth_seed: u64,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Rounds; each runs every implementation once (fresh processes).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Prompt length P (token ids).
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps G.
    #[arg(long, default_value_t = 64)]
    gen: usize,
    #[arg(long, value_delimiter = ',', default_value = "lamina,candle,llama.cpp")]
    impls: Vec<Impl>,
    /// Skip the untimed warm-up pass.
    #[arg(long)]
    no_warmup: bool,
    /// Python with llama-cpp-python [default: $LAMINA_BENCH_PYTHON, else
    /// /work/venvs/llamacpp/bin/python].
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llamacpp_worker.py"))]
    script: PathBuf,
    /// Before each run, wait while other processes use more than this many cores.
    #[arg(long, default_value_t = 0.3)]
    max_busy_cores: f64,
    /// Longest wait for a quiet machine before a run (then it runs anyway, noted).
    #[arg(long, default_value_t = 600)]
    max_wait: u64,
    /// Runs again (up to this many times) a run during which other processes used more than
    /// --max-busy-cores.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Per-run timeout in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Skip the RSS check that follows the comparison.
    #[arg(long)]
    no_rss: bool,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Args)]
struct RssArgs {
    #[arg(long, default_value = models::SMOLLM2_PATH)]
    model: PathBuf,
    /// The first range is compared with the last (held memory ratio).
    #[arg(long, value_delimiter = ',', default_value = "0..15,0..30")]
    ranges: Vec<LayerRange>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    out: OutArgs,
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long = "impl")]
    implementation: Impl,
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    threads: usize,
    /// Comma-separated prompt token ids.
    #[arg(long)]
    ids: String,
    #[arg(long, default_value_t = 64)]
    gen: usize,
    #[arg(long)]
    no_warmup: bool,
    /// Untimed warm-up passes (ignored with --no-warmup).
    #[arg(long, default_value_t = 1)]
    warmups: usize,
}

#[derive(Args)]
struct RssWorkerArgs {
    #[arg(long)]
    model: PathBuf,
    /// Omit for the baseline process.
    #[arg(long)]
    range: Option<LayerRange>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let command = std::env::args().skip(1).collect::<Vec<_>>();
    let command = if command.is_empty() {
        "cargo run --release -p lamina-benches".to_string()
    } else {
        format!(
            "cargo run --release -p lamina-benches -- {}",
            command.join(" ")
        )
    };
    let result = dispatch(cli, &command);
    lamina_benches::child::remove_worker_exe();
    result
}

fn dispatch(cli: Cli, command: &str) -> Result<()> {
    match cli.command {
        None => match Cli::parse_from(["lamina-bench", "compare"]).command {
            Some(Cmd::Compare(a)) => run_compare(*a, command),
            _ => unreachable!("compare parses"),
        },
        Some(Cmd::Compare(a)) => run_compare(*a, command),
        Some(Cmd::Rss(a)) => run_rss(&a.model, &a.ranges, a.repeats, &a.out, command),
        Some(Cmd::Worker(a)) => run_worker(a),
        Some(Cmd::RssWorker(a)) => {
            let s = rss::worker(&a.model, a.range)?;
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
    }
}

fn run_worker(a: WorkerArgs) -> Result<()> {
    // The parent sets these; setting them when absent, before candle's first use, makes a
    // worker started by hand measure what it says.
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, a.threads.to_string());
        }
    }
    let ids = models::parse_ids(&a.ids)?;
    let mut r = worker::run_in_process(
        a.implementation,
        &a.model,
        &ids,
        a.gen,
        a.threads,
        if a.no_warmup { 0 } else { a.warmups },
    )?;
    r.info = Some(format!(
        "candle threads: {}",
        candle_core::utils::get_num_threads()
    ));
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn run_compare(a: CompareArgs, command: &str) -> Result<()> {
    if a.rounds == 0 || a.threads.is_empty() || a.impls.is_empty() || a.prompt_tokens == 0 {
        bail!("need at least one round, thread count, implementation and prompt token");
    }
    let mut bench_models = Vec::new();
    for m in &a.models {
        match m {
            ModelChoice::Smollm2 => {
                if !a.smollm2.exists() {
                    eprintln!("skipping SmolLM2: {} not found", a.smollm2.display());
                    continue;
                }
                bench_models.push(BenchModel {
                    label: "SmolLM2-135M Q4_1".into(),
                    path: a.smollm2.clone(),
                });
            }
            ModelChoice::Synth => {
                for d in &a.synth_dtype {
                    let dtype: SynthDType = d.parse()?;
                    let path = models::ensure_synth(
                        &models::cache_dir(),
                        &a.synth_preset,
                        dtype,
                        a.synth_seed,
                    )?;
                    bench_models.push(BenchModel {
                        label: format!(
                            "{} {} (synthetic)",
                            a.synth_preset,
                            dtype.name().to_uppercase()
                        ),
                        path,
                    });
                }
            }
        }
    }
    for e in &a.extra {
        let Some((label, path)) = e.split_once('=') else {
            bail!("--gguf takes LABEL=PATH, got `{e}`");
        };
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!("--gguf {label}: {} not found", path.display());
        }
        bench_models.push(BenchModel {
            label: label.to_string(),
            path,
        });
    }
    if bench_models.is_empty() {
        bail!("no models to run");
    }
    if a.impls.contains(&Impl::LlamaCpp) && !a.script.exists() {
        bail!("llama.cpp worker script {} not found", a.script.display());
    }
    let opts = CompareOptions {
        threads: a.threads.clone(),
        rounds: a.rounds,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen,
        impls: a.impls.clone(),
        warmup: !a.no_warmup,
        python: a
            .python
            .clone()
            .or_else(|| std::env::var_os("LAMINA_BENCH_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/work/venvs/llamacpp/bin/python")),
        script: a.script.clone(),
        max_busy_cores: a.max_busy_cores,
        max_wait_s: a.max_wait,
        timeout_s: a.timeout,
        retries: a.retries,
    };
    let report = compare::run(&opts, &bench_models, command)?;
    let md = report.markdown();
    println!("\n{md}");
    if !a.out.no_write {
        let dir = a.out.out_dir.join("results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("compare.json");
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", json.display()))?;
        update_section(&a.out.out_dir.join("RESULTS.md"), "compare", &md)?;
        eprintln!("wrote {} and RESULTS.md", json.display());
    }
    if !a.no_rss && a.smollm2.exists() {
        let ranges = [
            lamina_sharding::layers::range(0, 15)?,
            lamina_sharding::layers::range(0, 30)?,
        ];
        run_rss(&a.smollm2, &ranges, 3, &a.out, command)?;
    }
    Ok(())
}

fn run_rss(
    model: &Path,
    ranges: &[LayerRange],
    repeats: usize,
    out: &OutArgs,
    command: &str,
) -> Result<()> {
    if ranges.is_empty() {
        bail!("no ranges");
    }
    let report = rss::run(model, ranges, repeats, command)?;
    let md = report.markdown();
    println!("\n{md}");
    if !out.no_write {
        let dir = out.out_dir.join("results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("rss.json");
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", json.display()))?;
        update_section(&out.out_dir.join("RESULTS.md"), "rss", &md)?;
        eprintln!("wrote {} and RESULTS.md", json.display());
    }
    Ok(())
}
