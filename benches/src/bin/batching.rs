//! Continuous batching, side by side in one run (issue 18): one node serving every layer,
//! with batching (`--batch-rows 512`, the default) and without (`--batch-rows 1`:
//! sessions stepped one by one, as before), each round starting each afresh (one node up
//! at a time, in alternating order), with 1, 4, 16 and 32 concurrent streaming clients.
//!
//! ```text
//! cargo build --release -p lamina-node -p lamina-benches &&
//!   target/release/batching [--clients 1,4,16,32] [--tokens 64] [--rounds 3] [--threads 1]
//! ```
//!
//! Per configuration: aggregate tokens/s (every stream's completion tokens over the wall
//! time from the common start to the last stream's end), its ratio to one client's, the
//! worst client's time to first token when all arrive at once, and the time to first
//! token of a client that arrives while the others are decoding (the steady state of a
//! busy node: `clients - 1` long streams running), each over the node's solo TTFT.

use anyhow::{Context, Result};
use clap::Parser;
use lamina_benches::mesh::{
    check_stop, concurrent_streams, install_ctrl_c, lamina_exe, stream_chat, Net, Sample,
};
use lamina_benches::models::SMOLLM2_PATH;
use lamina_benches::report::{markdown_table, median};
use lamina_testnet::{Placement, UpOptions};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Continuous batching on and off, one node, concurrent clients")]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    clients: Vec<usize>,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `--threads` of the nodes.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `--batch-rows` of the batching node.
    #[arg(long, default_value_t = 512)]
    batch_rows: usize,
    #[arg(long)]
    lamina: Option<PathBuf>,
    #[arg(long, default_value = SMOLLM2_PATH)]
    model: PathBuf,
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
}

/// One concurrent run's figures.
struct Run {
    tokens_per_s: f64,
    worst_ttft: Duration,
    /// TTFT of one more client arriving while `clients - 1` others decode.
    late_ttft: Duration,
}

fn concurrent(api: &str, clients: usize, tokens: usize, timeout: Duration) -> Result<Run> {
    let (samples, wall) = concurrent_streams(api, clients, tokens, timeout)?;
    let total: usize = samples.iter().map(|s| s.completion_tokens).sum();
    let worst = samples.iter().map(|s| s.ttft).max().unwrap_or_default();
    let tokens_per_s = total as f64 / wall.as_secs_f64().max(1e-9);
    Ok(Run {
        tokens_per_s,
        worst_ttft: worst,
        late_ttft: late_arrival(api, clients, tokens, timeout)?,
    })
}

/// The TTFT of a client that arrives once `clients - 1` others are decoding long
/// streams (each past its first token).
fn late_arrival(api: &str, clients: usize, tokens: usize, timeout: Duration) -> Result<Duration> {
    let busy = clients.saturating_sub(1);
    let started = Arc::new(Barrier::new(busy + 1));
    let handles: Vec<_> = (0..busy)
        .map(|_| {
            let (api, started) = (api.to_string(), started.clone());
            std::thread::spawn(move || -> Result<Sample> {
                started.wait();
                stream_chat(&api, 2 * tokens, timeout)
            })
        })
        .collect();
    started.wait();
    // Past every busy stream's prefill: they decode now.
    std::thread::sleep(Duration::from_millis(if busy == 0 { 0 } else { 1500 }));
    let s = stream_chat(api, tokens, timeout)?;
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(s.ttft)
}

fn main() -> Result<()> {
    let args = Args::parse();
    install_ctrl_c()?;
    let exe = lamina_exe(args.lamina.clone())?;
    let work = std::env::temp_dir().join(format!("lamina-batching-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let configs = [("batched", args.batch_rows), ("one by one", 1)];
    // One node up at a time, started afresh for each round in alternating order: two
    // nodes up at once measured differently by start order alone (the first started one
    // about 0.83x the other with identical flags, --threads 2), so none shares the machine.
    let up = |label: &str, rows: usize, round: usize| -> Result<(String, Net)> {
        let name = format!("{}-{round}", label.replace(' ', "-"));
        let mut opts = UpOptions::new(
            exe.clone(),
            1,
            args.model.clone(),
            work.join(format!("{name}.state.json")),
            work.join(&name),
        );
        opts.placement = Placement::Even;
        opts.threads = Some(args.threads);
        opts.extra_args = vec![
            "--api-max-concurrent".into(),
            (max_clients + 8).to_string(),
            "--max-sessions".into(),
            (max_clients + 64).to_string(),
            "--batch-rows".into(),
            rows.to_string(),
        ];
        let net = Net::up(&opts).with_context(|| format!("starting {label}"))?;
        let api = net.api()?.to_string();
        // Warm-up: page faults, connections.
        stream_chat(&api, args.tokens, Duration::from_secs(args.request_timeout))?;
        Ok((api, net))
    };
    let timeout = Duration::from_secs(args.request_timeout);
    // results[config][clients] = runs
    let mut results: Vec<Vec<Vec<Run>>> = configs
        .iter()
        .map(|_| args.clients.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..configs.len()).collect()
        } else {
            (0..configs.len()).rev().collect()
        };
        for ni in order {
            let (label, rows) = configs[ni];
            let (api, net) = up(label, rows, round)?;
            for (ci, &clients) in args.clients.iter().enumerate() {
                check_stop()?;
                let r = concurrent(&api, clients, args.tokens, timeout)?;
                eprintln!(
                    "round {round} {label:<10} {clients:>2} clients: {:7.1} tok/s, worst TTFT {:6.1} ms, late arrival TTFT {:6.1} ms",
                    r.tokens_per_s,
                    r.worst_ttft.as_secs_f64() * 1e3,
                    r.late_ttft.as_secs_f64() * 1e3
                );
                results[ni][ci].push(r);
            }
            drop(net);
        }
    }
    let mut rows = Vec::new();
    for (ni, (label, _)) in configs.iter().enumerate() {
        let solo_tps = median(
            &results[ni][0]
                .iter()
                .map(|r| r.tokens_per_s)
                .collect::<Vec<_>>(),
        );
        let solo_ttft = median(
            &results[ni][0]
                .iter()
                .map(|r| r.worst_ttft.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        );
        for (ci, &clients) in args.clients.iter().enumerate() {
            let tps = median(
                &results[ni][ci]
                    .iter()
                    .map(|r| r.tokens_per_s)
                    .collect::<Vec<_>>(),
            );
            let worst = median(
                &results[ni][ci]
                    .iter()
                    .map(|r| r.worst_ttft.as_secs_f64() * 1e3)
                    .collect::<Vec<_>>(),
            );
            let late = median(
                &results[ni][ci]
                    .iter()
                    .map(|r| r.late_ttft.as_secs_f64() * 1e3)
                    .collect::<Vec<_>>(),
            );
            let other = &results[1 - ni][ci];
            let other_tps = median(&other.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>());
            rows.push(vec![
                label.to_string(),
                clients.to_string(),
                format!("{tps:.1}"),
                format!("{:.2}", tps / solo_tps.max(1e-9)),
                format!("{:.2}", tps / other_tps.max(1e-9)),
                format!("{worst:.1}"),
                format!("{:.2}", worst / solo_ttft.max(1e-9)),
                format!("{late:.1}"),
                format!("{:.2}", late / solo_ttft.max(1e-9)),
            ]);
        }
    }
    println!(
        "SmolLM2 one node, --threads {}, {} tokens per request, medians of {} rounds:\n",
        args.threads, args.tokens, args.rounds
    );
    println!(
        "{}",
        markdown_table(
            &[
                "node",
                "clients",
                "aggregate tok/s",
                "vs 1 client",
                "vs the other node",
                "worst TTFT ms",
                "worst TTFT / solo TTFT",
                "late arrival TTFT ms",
                "late / solo TTFT",
            ],
            &rows
        )
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
