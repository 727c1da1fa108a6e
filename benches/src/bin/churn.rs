//! The churn drill: a testnet where every layer has two servers loses one hop of the route
//! of every generation (`kill -9` at a random step; `--kill 2`: two hops of different
//! ranges at once) and gets them back (`restart`, same data dir and peer id) before the
//! next one. Each disturbed generation must stream exactly the
//! text and `completion_tokens` of an undisturbed reference run; the drill reports how
//! many did, the latency the recoveries added, and the entry's recovery histogram.
//!
//! `cargo build --release -p lamina-node -p lamina-benches &&
//!  target/release/churn [--generations 50] [--tokens 64] [--seed 1] [--model FILE]`
//!
//! Two hops at once, on six serving nodes (every range on two):
//! `target/release/churn --generations 20 --kill 2 --layers 0..10,0..10,10..20,10..20,20..30,20..30,none`
//!
//! Nodes: `0..15`, `0..15`, `15..30`, `15..30` (SmolLM2-135M has 30 layers) and an entry
//! node with `--layers none`, which is never killed: the client talks to it, and it is the
//! one that fails generations over. Everything is bounded: each generation has a timeout,
//! the wait for the mesh to heal has one, and the whole drill stops after `--max-minutes`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lamina_testnet::{Placement, Signal, TestnetState, UpOptions};
use serde_json::{json, Value};

const PROMPT: &str = "Here is a long story about a lighthouse keeper named Tom and the great storm that changed his life.\n\nChapter 1\n\n";

#[derive(Parser, Debug)]
#[command(about = "Kill a hop of every generation's route and check nothing changes")]
struct Args {
    /// Disturbed generations.
    #[arg(long, default_value_t = 50)]
    generations: usize,
    /// Tokens per generation (greedy; the prompt must not stop earlier).
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Seed of the choice of hop and step.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The model (default: shared/models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Layer ranges of the nodes (`none` for the entry, which must be last).
    #[arg(long, default_value = "0..15,0..15,15..30,15..30,none")]
    layers: String,
    #[arg(long, default_value = PROMPT)]
    prompt: String,
    /// Compute threads per node.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Undisturbed runs for the reference text and the median time.
    #[arg(long, default_value_t = 5)]
    reference_runs: usize,
    /// Timeout of one generation, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// How long to wait for two usable servers per layer after a restart, seconds.
    #[arg(long, default_value_t = 120)]
    heal_timeout: u64,
    /// The drill stops (and reports) after this many minutes.
    #[arg(long, default_value_t = 75)]
    max_minutes: u64,
    /// Testnet folder (default: a temporary one, removed unless something failed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Hops of the route killed at once, each of another range (every range must still
    /// have a live server: at most the route's hop count, with two servers per range).
    #[arg(long, default_value_t = 1)]
    kill: usize,
}

/// splitmix64: a seeded, dependency-free choice of hops and steps.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// Stops the testnet on drop.
struct Net(PathBuf);

impl Drop for Net {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = lamina_testnet::down(&self.0) {
                eprintln!("testnet down: {e:#}");
            }
        }
    }
}

/// One streamed generation.
#[derive(Debug, Default)]
struct Run {
    text: String,
    completion_tokens: Option<u64>,
    finish: Option<String>,
    chunks: usize,
    done: bool,
    total: Duration,
    error: Option<String>,
}

impl Run {
    fn complete(&self) -> bool {
        self.done && self.error.is_none()
    }
}

/// Streams a completion from `api`; `on_chunk(n)` runs after the n-th choice chunk.
fn stream(api: &str, body: &Value, timeout: Duration, mut on_chunk: impl FnMut(usize)) -> Run {
    let t = Instant::now();
    let mut run = Run::default();
    let resp = ureq::post(&format!("{api}/v1/completions"))
        .timeout(timeout)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            run.error = Some(format!(
                "HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            ));
            run.total = t.elapsed();
            return run;
        }
        Err(e) => {
            run.error = Some(format!("request: {e}"));
            run.total = t.elapsed();
            return run;
        }
    };
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                run.error = Some(format!("stream broke off after {} chunks: {e}", run.chunks));
                break;
            }
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            run.done = true;
            break;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                run.error = Some(format!("bad chunk {data:?}: {e}"));
                break;
            }
        };
        if let Some(e) = v.get("error") {
            run.error = Some(format!("error in the stream: {e}"));
            continue;
        }
        let choices = v["choices"].as_array().cloned().unwrap_or_default();
        if choices.is_empty() {
            run.completion_tokens = v["usage"]["completion_tokens"].as_u64();
            continue;
        }
        if let Some(s) = choices[0]["text"].as_str() {
            run.text.push_str(s);
        }
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            run.finish = Some(f.to_owned());
        }
        run.chunks += 1;
        on_chunk(run.chunks);
    }
    if !run.done && run.error.is_none() {
        run.error = Some(format!(
            "the stream ended without [DONE] after {} chunks",
            run.chunks
        ));
    }
    run.total = t.elapsed();
    run
}

fn route_peers(api: &str) -> Result<Vec<(String, String)>> {
    let st = lamina_testnet::status(api)?;
    let hops = st["last_route"]["hops"]
        .as_array()
        .with_context(|| format!("no route in /status: {}", st["last_route"]))?;
    Ok(hops
        .iter()
        .map(|h| {
            (
                h["peer"].as_str().unwrap_or_default().to_owned(),
                h["layers"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Waits until the entry has the record of the restarted incarnation of `peer` (its new
/// data-plane address), so the stale record of the dead one cannot pass for a healed mesh.
fn wait_seen(api: &str, peer: &str, dataplane: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = lamina_testnet::status(api) {
            let seen = s["peers"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["peer_id"] == peer
                        && p["dataplane"] == dataplane
                        && p["state"] == "serving"
                        && p["reachable"] == true
                })
            });
            if seen {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the entry never saw {peer} back at {dataplane}: {}",
                    s["peers"]
                );
            }
        } else if Instant::now() > deadline {
            bail!("the entry's /status does not answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// One disturbed generation's outcome.
struct Gen {
    /// The nodes killed, comma-separated.
    victim: String,
    layers: String,
    step: usize,
    run: Run,
    killed: bool,
    identical: bool,
    restart: Duration,
    heal: Duration,
    problem: Option<String>,
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.tokens < 2 {
        bail!("--tokens must be at least 2 (a hop dies after the first token)");
    }
    let exe = lamina_benches::mesh::lamina_bin()?;
    let model = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !model.exists() {
        bail!("model {} not found (--model)", model.display());
    }
    let ranges: Vec<String> = args
        .layers
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    if ranges.last().map(String::as_str) != Some("none") {
        bail!("--layers: the last node is the entry and must be `none`");
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lamina-churn-{}", std::process::id()))
    });
    let state_path = dir.join("state.json");
    let started = Instant::now();
    let overall = Duration::from_secs(args.max_minutes * 60);

    let mut opts = UpOptions::new(
        exe.clone(),
        ranges.len(),
        model.clone(),
        state_path.clone(),
        dir.join("net"),
    );
    opts.placement = Placement::Fixed(ranges.clone());
    opts.threads = Some(args.threads);
    opts.ready_timeout = Duration::from_secs(180);
    eprintln!(
        "churn: starting {} nodes ({}) on {}",
        ranges.len(),
        args.layers,
        model.display()
    );
    let st = lamina_testnet::up(&opts).context("testnet up")?;
    let net = Net(state_path.clone());
    let entry = st.nodes.last().unwrap().clone();
    let api = entry.api.clone().context("the entry has no API")?;
    lamina_testnet::wait_redundant(&api, 2, Duration::from_secs(args.heal_timeout))
        .context("the fresh testnet does not have two servers per layer")?;

    let body = json!({"prompt": args.prompt, "max_tokens": args.tokens, "temperature": 0.0,
                      "stream": true, "stream_options": {"include_usage": true}});
    let timeout = Duration::from_secs(args.timeout);

    // The undisturbed reference: text, tokens and the median total time.
    let mut ref_times = Vec::new();
    let mut reference: Option<Run> = None;
    for i in 0..args.reference_runs.max(1) {
        let r = stream(&api, &body, timeout, |_| {});
        if !r.complete() {
            bail!(
                "undisturbed run {i} failed: {:?}\nentry log:\n{}",
                r.error,
                tail(&entry.log, 30)
            );
        }
        if r.completion_tokens != Some(args.tokens as u64) {
            bail!(
                "the prompt yields {:?} completion tokens, not {} (finish {:?}); choose another --prompt",
                r.completion_tokens,
                args.tokens,
                r.finish
            );
        }
        if let Some(first) = &reference {
            if first.text != r.text {
                bail!("undisturbed runs differ:\n{:?}\n{:?}", first.text, r.text);
            }
        }
        eprintln!("reference {i}: {:.3} s", r.total.as_secs_f64());
        ref_times.push(r.total.as_secs_f64());
        reference.get_or_insert(r);
    }
    let reference = reference.unwrap();
    let ref_median = median(&ref_times);

    let mut rng = Rng(args.seed);
    let mut gens: Vec<Gen> = Vec::new();
    let mut stopped: Option<String> = None;
    for g in 0..args.generations {
        if started.elapsed() > overall {
            stopped = Some(format!("--max-minutes {} reached", args.max_minutes));
            break;
        }
        let step = rng.range(1, args.tokens - 1);
        let hop_pick = rng.next();
        let state = TestnetState::read(&state_path)?;
        let mut victims: Vec<(String, String)> = Vec::new();
        let mut problem: Option<String> = None;
        let mut killed = false;
        let run = stream(&api, &body, timeout, |n| {
            if n == 1 {
                match route_peers(&api) {
                    Ok(hops) if hops.len() >= args.kill => {
                        // `kill` hops in a row of the route, from a seeded start: each of
                        // another range.
                        let first = (hop_pick % hops.len() as u64) as usize;
                        for k in 0..args.kill {
                            let (peer, layers) = &hops[(first + k) % hops.len()];
                            match state.nodes.iter().find(|x| &x.peer_id == peer) {
                                Some(node) if node.id != entry.id => {
                                    victims.push((node.id.clone(), layers.clone()))
                                }
                                Some(_) => {
                                    problem = Some("the route runs through the entry".into())
                                }
                                None => {
                                    problem = Some(format!("route peer {peer} is no testnet node"))
                                }
                            }
                        }
                    }
                    Ok(hops) => {
                        problem = Some(format!(
                            "a route of {} hops for --kill {}",
                            hops.len(),
                            args.kill
                        ))
                    }
                    Err(e) => problem = Some(format!("{e:#}")),
                }
            }
            if n == step && !killed {
                for (id, _) in &victims {
                    match lamina_testnet::kill(&state_path, id, Signal::Kill) {
                        Ok(true) => killed = true,
                        Ok(false) => problem = Some(format!("{id} was not running")),
                        Err(e) => problem = Some(format!("kill {id}: {e:#}")),
                    }
                }
            }
        });
        let identical = run.complete()
            && run.text == reference.text
            && run.completion_tokens == reference.completion_tokens;
        let victim_id = victims
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let layers = victims
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join(",");
        // Bring the victims back, and wait for two usable servers per layer.
        let (mut restart, mut heal) = (Duration::ZERO, Duration::ZERO);
        if killed {
            let t = Instant::now();
            let mut back = Vec::new();
            for (id, _) in &victims {
                let old_peer = state
                    .nodes
                    .iter()
                    .find(|x| &x.id == id)
                    .map(|x| x.peer_id.clone())
                    .unwrap_or_default();
                match lamina_testnet::restart(&state_path, id, &exe) {
                    Ok(n) => {
                        if n.peer_id != old_peer {
                            problem.get_or_insert(format!("{id} came back with another peer id"));
                        }
                        back.push(n);
                    }
                    Err(e) => stopped = Some(format!("restart {id}: {e:#}")),
                }
            }
            restart = t.elapsed();
            let t = Instant::now();
            let limit = Duration::from_secs(args.heal_timeout);
            let healed = back
                .iter()
                .try_for_each(|n| wait_seen(&api, &n.peer_id, &n.dataplane, limit))
                .and_then(|_| lamina_testnet::wait_redundant(&api, 2, limit));
            match healed {
                Ok(_) => heal = t.elapsed(),
                Err(e) => stopped = Some(format!("after generation {g}: {e:#}")),
            }
        }
        eprintln!(
            "gen {g:>3}: kill {victim_id} ({layers}) after {step:>2} tokens: {} in {:.3} s ({:+.3} s), {} tokens, restart {:.2} s, healed in {:.2} s{}",
            if identical { "identical" } else if run.complete() { "DIFFERENT" } else { "FAILED" },
            run.total.as_secs_f64(),
            run.total.as_secs_f64() - ref_median,
            run.completion_tokens.map_or("?".into(), |c| c.to_string()),
            restart.as_secs_f64(),
            heal.as_secs_f64(),
            run.error.as_ref().map_or(String::new(), |e| format!(": {e}")),
        );
        gens.push(Gen {
            victim: victim_id,
            layers,
            step,
            run,
            killed,
            identical,
            restart,
            heal,
            problem,
        });
        if stopped.is_some() {
            break;
        }
    }
    let metrics = ureq::get(&format!("{api}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();

    // The report.
    let attempted = gens.len();
    let completed = gens.iter().filter(|g| g.run.complete()).count();
    let identical = gens.iter().filter(|g| g.identical).count();
    let killed = gens.iter().filter(|g| g.killed).count();
    let failed: Vec<&Gen> = gens.iter().filter(|g| !g.identical).collect();
    let added: Vec<f64> = gens
        .iter()
        .filter(|g| g.killed && g.run.complete())
        .map(|g| g.run.total.as_secs_f64() - ref_median)
        .collect();
    let restarts: Vec<f64> = gens
        .iter()
        .filter(|g| g.killed)
        .map(|g| g.restart.as_secs_f64())
        .collect();
    let heals: Vec<f64> = gens
        .iter()
        .filter(|g| g.killed)
        .map(|g| g.heal.as_secs_f64())
        .collect();
    println!(
        "churn drill: {} nodes ({}), {} hop(s) killed at once, {} tokens per generation, greedy, seed {}, {} thread(s) per node\n",
        ranges.len(),
        args.layers,
        args.kill,
        args.tokens,
        args.seed,
        args.threads
    );
    println!("| metric | value |\n| --- | --- |");
    println!(
        "| generations attempted | {attempted} of {} |",
        args.generations
    );
    println!("| a hop killed (kill -9) mid-stream | {killed} |");
    println!("| completed (200, `[DONE]`, no error) | {completed} |");
    println!("| identical text and completion_tokens | {identical} |");
    println!("| failed or different | {} |", failed.len());
    println!(
        "| undisturbed total time (median of {}) | {:.3} s |",
        ref_times.len(),
        ref_median
    );
    println!(
        "| recovery added latency, median / max | {:.3} s / {:.3} s |",
        median(&added),
        max(&added)
    );
    println!(
        "| restart to ready, median / max | {:.2} s / {:.2} s |",
        median(&restarts),
        max(&restarts)
    );
    println!(
        "| back to 2 usable servers per layer after ready, median / max | {:.2} s / {:.2} s |",
        median(&heals),
        max(&heals)
    );
    println!(
        "| drill wall time | {:.0} s |",
        started.elapsed().as_secs_f64()
    );
    if let Some(s) = &stopped {
        println!("\nstopped early: {s}");
    }
    println!("\nentry's `lamina_failover_recovery_seconds`:\n");
    println!("| le (s) | recoveries (cumulative) |\n| --- | --- |");
    for l in metrics.lines() {
        if let Some(rest) = l.strip_prefix("lamina_failover_recovery_seconds_bucket{le=\"") {
            if let Some((le, n)) = rest.split_once("\"} ") {
                println!("| {le} | {n} |");
            }
        }
    }
    for l in metrics.lines() {
        for (k, name) in [("_sum", "sum"), ("_count", "count")] {
            if let Some(v) = l.strip_prefix(&format!("lamina_failover_recovery_seconds{k} ")) {
                println!("| {name} | {v} |");
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for g in &failed {
            let i = gens.iter().position(|x| std::ptr::eq(x, *g)).unwrap();
            println!(
                "- generation {i}: killed {} ({}) after {} tokens: {}{}",
                if g.killed {
                    g.victim.as_str()
                } else {
                    "nothing"
                },
                g.layers,
                g.step,
                match (&g.run.error, g.run.complete()) {
                    (Some(e), _) => e.clone(),
                    (None, true) => format!(
                        "different output ({:?} tokens): {:?}",
                        g.run.completion_tokens, g.run.text
                    ),
                    (None, false) => "incomplete".into(),
                },
                g.problem
                    .as_ref()
                    .map_or(String::new(), |p| format!(" ({p})"))
            );
        }
    }
    let ok = stopped.is_none() && failed.is_empty() && attempted == args.generations;
    drop(net);
    if ok && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !ok {
        eprintln!("logs kept in {}", dir.join("net").display());
        std::process::exit(1);
    }
    Ok(())
}
