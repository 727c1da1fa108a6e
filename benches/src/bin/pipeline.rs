//! The data-plane bench: decode speed of a chain of `lamina node` processes on loopback
//! against one process, measured side by side in one run, and the time each hop adds per
//! token at several hidden sizes.
//!
//! `cargo build --release -p lamina-node -p lamina-benches &&
//!  target/release/pipeline [--rounds 3] [--tokens 64] [--model FILE]`
//!
//! Everything runs as separate processes of the release `lamina` binary (the one next to
//! this one): the single-process runs are `lamina generate`, the chain runs are
//! `lamina generate --chain` against three `lamina node` processes started once and reused.
//! Rounds alternate single and chain so that machine load affects both alike.

use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROMPT: &str =
    "Once upon a time, in a land far away, there lived a wise old king who loved to tell stories";

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lamina_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAMINA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("lamina");
    if !p.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p lamina-node",
            p.display()
        );
    }
    Ok(p)
}

/// Starts one node and returns it with its chain entry.
fn start_node(
    bin: &Path,
    model: &Path,
    layers: &str,
    threads: usize,
    dir: &Path,
) -> Result<(Node, serde_json::Value)> {
    std::fs::create_dir_all(dir)?;
    let mut child = Command::new(bin)
        .args(["node", "--model"])
        .arg(model)
        .args([
            "--layers",
            layers,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            &threads.to_string(),
            "--open",
            "--data-dir",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let node = Node(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .context("node did not become ready")?;
    let ready: serde_json::Value = serde_json::from_str(&line).context("ready line")?;
    let hop = serde_json::json!({"layers": ready["layers"], "addr": ready["listen"], "peer_id": ready["peer_id"]});
    Ok((node, hop))
}

/// Decode tokens/s of one `lamina generate` run.
fn generate(bin: &Path, args: &[String]) -> Result<f64> {
    let out = Command::new(bin).arg("generate").args(args).output()?;
    if !out.status.success() {
        bail!(
            "lamina generate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["timings"]["decode_tokens_per_s"]
        .as_f64()
        .context("timings")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Single-process vs three-node decode tokens/s, medians over alternating rounds; one
/// chain figure per activation dtype in `dtypes`.
#[allow(clippy::too_many_arguments)]
fn compare(
    bin: &Path,
    model: &Path,
    ranges: &[&str],
    threads: usize,
    single_threads: usize,
    dtypes: &[&str],
    tokens: usize,
    rounds: usize,
    work: &Path,
) -> Result<(f64, Vec<f64>)> {
    let mut nodes = Vec::new();
    let mut hops = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let (n, h) = start_node(bin, model, r, threads, &work.join(format!("node{i}")))?;
        nodes.push(n);
        hops.push(h);
    }
    let chain = work.join("chain.json");
    std::fs::write(&chain, serde_json::to_string(&hops)?)?;
    let common = vec![
        "--model".to_string(),
        model.display().to_string(),
        "--max-tokens".into(),
        tokens.to_string(),
        "--format".into(),
        "json".into(),
    ];
    let mut single = vec![];
    let mut chained: Vec<Vec<f64>> = vec![vec![]; dtypes.len()];
    // One warm-up of each (page cache, connection set-up), then the measured rounds.
    for round in 0..=rounds {
        let mut a = common.clone();
        a.extend([
            "--threads".into(),
            single_threads.to_string(),
            PROMPT.into(),
        ]);
        let s = generate(bin, &a)?;
        if round > 0 {
            single.push(s);
        }
        for (d, out) in dtypes.iter().zip(chained.iter_mut()) {
            let mut b = common.clone();
            b.extend([
                "--chain".into(),
                chain.display().to_string(),
                "--activation-dtype".into(),
                d.to_string(),
                PROMPT.into(),
            ]);
            let c = generate(bin, &b)?;
            if round > 0 {
                out.push(c);
            }
        }
    }
    drop(nodes);
    Ok((median(single), chained.into_iter().map(median).collect()))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let rounds: usize = flag("--rounds", "3").parse()?;
    let tokens: usize = flag("--tokens", "64").parse()?;
    let model = PathBuf::from(flag(
        "--model",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        ),
    ));
    let bin = lamina_bin()?;
    let work = std::env::temp_dir().join(format!("lamina-pipeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    println!("## Three-node loopback chain vs one process (decode tokens/s, median of {rounds} alternating rounds, {tokens} tokens)\n");
    println!("For one sequence a pipeline runs one hop at a time, so with T threads per node the threads computing at any moment are T, as in one process with T threads (rows 1-2); the last row holds the sum of threads equal instead (3 nodes x 1 thread vs one process with 3).\n");
    println!(
        "| model | threads per node | threads of the one process | one process | 3 nodes | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (threads, single_threads) in [(1, 1), (2, 2), (1, 3)] {
        let (s, c) = compare(
            &bin,
            &model,
            &["0..10", "10..20", "20..30"],
            threads,
            single_threads,
            &["f16"],
            tokens,
            rounds,
            &work.join(format!("smol{threads}-{single_threads}")),
        )?;
        let c = c[0];
        println!(
            "| SmolLM2-135M Q4_1 (0..10, 10..20, 20..30) | {threads} | {single_threads} | {s:.1} | {c:.1} | {:.2} |",
            c / s
        );
    }

    println!("\n## Time added per hop per token (synthetic 3-layer models, q8_0, 1 thread per process)\n");
    println!("Three network hops carry each token (client -> node 1 -> node 2 -> node 3, and the sampled token back along the same streams); added per hop = (chain ms/token - one process ms/token) / 3.\n");
    println!(
        "| hidden size | preset | one process ms/token | 3 nodes f16 ms/token | added per hop f16 (µs) | 3 nodes f32 ms/token | added per hop f32 (µs) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (dim, preset) in [
        (576, "smollm2-135m-shape"),
        (2048, "tinyllama-1.1b"),
        (4096, "llama-3-8b-shape"),
    ] {
        let file = work.join(format!("{preset}-3l.gguf"));
        let st = Command::new(&bin)
            .args([
                "model", "synth", "--preset", preset, "--dtype", "q8_0", "--layers", "3", "--out",
            ])
            .arg(&file)
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("synth {preset} failed");
        }
        let (s, c) = compare(
            &bin,
            &file,
            &["0..1", "1..2", "2..3"],
            1,
            1,
            &["f16", "f32"],
            tokens,
            rounds,
            &work.join(preset),
        )?;
        let ms_s = 1e3 / s;
        let (ms16, ms32) = (1e3 / c[0], 1e3 / c[1]);
        println!(
            "| {dim} | {preset} | {ms_s:.3} | {ms16:.3} | {:.0} | {ms32:.3} | {:.0} |",
            (ms16 - ms_s) * 1e3 / 3.0,
            (ms32 - ms_s) * 1e3 / 3.0
        );
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
