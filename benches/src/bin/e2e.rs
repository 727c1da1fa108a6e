//! The end-to-end bench of issue 6: for each model, a single node (all layers) and meshes
//! of 2, 3 and 4 nodes (even split), on loopback and with emulated links, as an OpenAI
//! client sees them: time to first token, decode tokens/s, the ratio to the single node,
//! data-plane bytes on the wire per decode token, peak RSS per node, and aggregate
//! tokens/s with 1, 4 and 16 concurrent streaming clients. Then the latency-rise check
//! (3 nodes with 25 ms one way on every link vs loopback) and the relay's own added time.
//!
//! ```text
//! cargo build --release -p lamina-node -p lamina-benches &&
//!   target/release/e2e [--models smollm2,tinyllama] [--nodes 1,2,3,4] [--links 0,5,50]
//!   [--clients 1,4,16] [--tokens 32] [--rounds 3] [--write]
//! ```
//!
//! One testnet per (model, link, node count), started with `lamina_testnet` and stopped
//! (nodes, then relays) before the next; everything is stopped on error and on Ctrl-C.
//! `--links` are round-trip times in ms: each node's data plane sits behind a
//! `lamina_testnet::relay` that delays both directions by half of it. On loopback (`0`)
//! the relays are there too, with a zero spec (they forward at once; their cost is the
//! measured "relay's own added time"), so that every row counts its bytes the same way;
//! `--direct-loopback` runs loopback rows without relays (no byte count then).

use anyhow::{bail, Context, Result};
use clap::Parser;
use lamina_benches::mesh::{
    check_stop, concurrent_streams, install_ctrl_c, lamina_exe, spread, stream_chat, Net, Sample,
    ScratchDir, PROMPT,
};
use lamina_benches::models::{self, SMOLLM2_PATH};
use lamina_benches::relay_cost::{self, RelayCost};
use lamina_benches::report::{markdown_table, median, update_section};
use lamina_benches::sys;
use lamina_sharding::synth::SynthDType;
use lamina_testnet::relay::LinkSpec;
use lamina_testnet::{Placement, UpOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "End-to-end table: single node vs 2-4 node meshes, loopback and emulated links")]
struct Args {
    /// Models: `smollm2` (the real SmolLM2-135M Q4_1) and/or `tinyllama` (a synthetic
    /// TinyLlama-1.1B-shape Q4_0, written once into $LAMINA_BENCH_DIR or /tmp/lamina-bench).
    #[arg(long, value_delimiter = ',', default_value = "smollm2,tinyllama")]
    models: Vec<ModelChoice>,
    /// Node counts (1 = one node with every layer).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    nodes: Vec<usize>,
    /// Emulated link round-trip times, ms (0 = loopback); each direction gets half.
    #[arg(long, value_delimiter = ',', default_value = "0,5,50")]
    links: Vec<f64>,
    /// Concurrent streaming clients of the aggregate-throughput columns.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// `max_tokens` of every request (each client of the concurrent runs too).
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Measured single-client requests per configuration (after one warm-up).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `--threads` of every node (the single node's too).
    #[arg(long, default_value_t = 1)]
    threads_per_node: usize,
    /// The `lamina` binary (default: `lamina` next to this executable).
    #[arg(long)]
    lamina: Option<PathBuf>,
    /// The SmolLM2 file.
    #[arg(long, default_value = SMOLLM2_PATH)]
    smollm2: PathBuf,
    /// A TinyLlama-shape file to use instead of the synthetic one.
    #[arg(long)]
    tinyllama: Option<PathBuf>,
    /// Loopback rows without relays (then they have no byte count).
    #[arg(long)]
    direct_loopback: bool,
    /// Round trips of the relay-cost measurement (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    relay_round_trips: usize,
    /// Bound on each request, seconds.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Write the section into RESULTS.md (between `<!-- BEGIN e2e -->` and
    /// `<!-- END e2e -->`) and the raw numbers into results/e2e.json under --out-dir.
    #[arg(long)]
    write: bool,
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    out_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ModelChoice {
    Smollm2,
    Tinyllama,
}

/// A model of the run.
struct Model {
    label: &'static str,
    path: PathBuf,
}

/// One configuration: a model, a link and a node count.
#[derive(Clone, Debug, Serialize)]
struct Config {
    model: &'static str,
    nodes: usize,
    /// Round-trip time of every link, ms (0 = loopback).
    rtt_ms: f64,
}

impl Config {
    fn one_way(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_ms / 2e3)
    }
}

/// One concurrent run: `clients` streams at once.
#[derive(Clone, Debug, Default, Serialize)]
struct Concurrent {
    clients: usize,
    /// Why the run failed (then the figures are 0).
    error: Option<String>,
    /// Every stream's completion tokens over the wall time from the common start to the
    /// last stream's end.
    tokens_per_s: f64,
    tokens: usize,
    wall_ms: f64,
}

/// What one configuration measured.
#[derive(Debug, Default, Serialize)]
struct Row {
    config: Option<Config>,
    layers: Vec<String>,
    startup_s: f64,
    /// The whole row: start, measurements, stop.
    elapsed_s: f64,
    samples: Vec<Sample>,
    /// Relay bytes (all links, both directions) of a 1-token request: the prefill's share.
    prefill_bytes: Option<u64>,
    /// Relay bytes per request of each measured round.
    round_bytes: Vec<u64>,
    concurrent: Vec<Concurrent>,
    /// `VmHWM` of each node at the end, KiB.
    peak_rss_kib: Vec<u64>,
    relay_drops: u64,
    error: Option<String>,
}

impl Row {
    fn tps(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.tokens_per_s).collect()
    }

    fn ms_per_token(&self) -> f64 {
        1e3 / median(&self.tps())
    }

    /// Median data-plane bytes per decode token: (bytes of an N-token request - bytes of
    /// a 1-token request) / (N - 1).
    fn bytes_per_token(&self) -> Option<f64> {
        let p = self.prefill_bytes? as f64;
        let v: Vec<f64> = self
            .round_bytes
            .iter()
            .zip(&self.samples)
            .filter(|(_, s)| s.completion_tokens > 1)
            .map(|(&b, s)| (b as f64 - p) / (s.completion_tokens - 1) as f64)
            .collect();
        (!v.is_empty()).then(|| median(&v))
    }
}

/// One-way link traversals of a decode step through `nodes` nodes: node-0's API dials the
/// first hop's data plane (node-0's own, through its relay), each hop forwards to the
/// next, and the step's result comes back along the same streams.
fn traversals(nodes: usize) -> usize {
    2 * nodes
}

fn load_models(args: &Args) -> Result<Vec<Model>> {
    let mut out = Vec::new();
    for m in &args.models {
        if out.iter().any(|x: &Model| x.label == label(*m)) {
            continue;
        }
        let path = match m {
            ModelChoice::Smollm2 => args.smollm2.clone(),
            ModelChoice::Tinyllama => match &args.tinyllama {
                Some(p) => p.clone(),
                None => models::ensure_synth(
                    &models::cache_dir(),
                    "tinyllama-1.1b",
                    SynthDType::Q4_0,
                    0,
                )?,
            },
        };
        let path = std::fs::canonicalize(&path)
            .with_context(|| format!("cannot find {}", path.display()))?;
        out.push(Model {
            label: label(*m),
            path,
        });
    }
    Ok(out)
}

fn label(m: ModelChoice) -> &'static str {
    match m {
        ModelChoice::Smollm2 => "SmolLM2-135M Q4_1",
        ModelChoice::Tinyllama => "TinyLlama-1.1B-shape Q4_0 (synthetic)",
    }
}

/// Data-plane bytes of one request: waits until the relays have been quiet for a moment
/// (the session's close and the last ACKs are on their way when the stream ends).
fn settled_bytes(net: &Net, cfg: &Config) -> u64 {
    let quiet = Duration::from_millis(30) + 4 * cfg.one_way();
    let mut last = net.relayed_bytes();
    for _ in 0..20 {
        std::thread::sleep(quiet);
        let now = net.relayed_bytes();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn request(net: &Net, tokens: usize, args: &Args) -> Result<Sample> {
    check_stop()?;
    stream_chat(
        net.api()?,
        tokens,
        Duration::from_secs(args.request_timeout),
    )
}

/// `clients` streams at once; aggregate tokens/s over the common wall time.
fn concurrent(net: &Net, clients: usize, args: &Args) -> Result<Concurrent> {
    let timeout = Duration::from_secs(args.request_timeout);
    let (samples, wall) = concurrent_streams(net.api()?, clients, args.tokens, timeout)?;
    let total: usize = samples.iter().map(|s| s.completion_tokens).sum();
    Ok(Concurrent {
        clients,
        error: None,
        tokens_per_s: total as f64 / wall.as_secs_f64().max(1e-9),
        tokens: total,
        wall_ms: wall.as_secs_f64() * 1e3,
    })
}

/// Starts the configuration's testnet, measures it, stops it.
fn run_config(
    exe: &Path,
    model: &Model,
    cfg: &Config,
    args: &Args,
    work: &Path,
    row: &mut Row,
) -> Result<()> {
    let name = format!(
        "{}-{}n-{}ms",
        if model.label.starts_with("Smol") {
            "smollm2"
        } else {
            "tinyllama"
        },
        cfg.nodes,
        cfg.rtt_ms
    );
    let mut opts = UpOptions::new(
        exe.into(),
        cfg.nodes,
        model.path.clone(),
        work.join(format!("{name}.state.json")),
        work.join(&name),
    );
    opts.placement = Placement::Even;
    opts.threads = Some(args.threads_per_node);
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    // Room for every concurrent stream (a finished stream's slot is freed just after
    // its last chunk, so a little more than the largest run).
    opts.extra_args = vec![
        "--api-max-concurrent".into(),
        (max_clients + 8).to_string(),
        "--max-sessions".into(),
        (max_clients + 64).to_string(),
    ];
    opts.link = if cfg.rtt_ms == 0.0 && args.direct_loopback {
        None
    } else {
        Some(LinkSpec::latency(cfg.one_way()))
    };
    let started = Instant::now();
    let net = Net::up(&opts).with_context(|| format!("starting {name}"))?;
    row.startup_s = started.elapsed().as_secs_f64();
    row.layers = net.state.nodes.iter().map(|n| n.layers.clone()).collect();
    eprintln!(
        "{name}: up in {:.1} s, layers [{}]",
        row.startup_s,
        row.layers.join(", ")
    );
    let counting = net.links.is_some();
    // Warm-up: the first request pays for page faults and connection set-up.
    let w = request(&net, args.tokens, args).context("warm-up")?;
    if w.completion_tokens < args.tokens {
        eprintln!(
            "  warning: the warm-up stopped after {} of {} tokens",
            w.completion_tokens, args.tokens
        );
    }
    if counting {
        let b0 = settled_bytes(&net, cfg);
        request(&net, 1, args).context("1-token request")?;
        row.prefill_bytes = Some(settled_bytes(&net, cfg) - b0);
    }
    for round in 1..=args.rounds {
        let b0 = if counting {
            settled_bytes(&net, cfg)
        } else {
            0
        };
        let s = request(&net, args.tokens, args).with_context(|| format!("round {round}"))?;
        if counting {
            row.round_bytes.push(settled_bytes(&net, cfg) - b0);
        }
        eprintln!(
            "  round {round}: ttft {:.1} ms, {:.1} tok/s, {} tokens after a {}-token prompt",
            s.ttft.as_secs_f64() * 1e3,
            s.tokens_per_s,
            s.completion_tokens,
            s.prompt_tokens
        );
        row.samples.push(s);
    }
    for &c in &args.clients {
        check_stop()?;
        let r = if c == 1 {
            // The single-client rounds: tokens over each request's whole time.
            let v: Vec<f64> = row
                .samples
                .iter()
                .map(|s| s.completion_tokens as f64 / s.total.as_secs_f64().max(1e-9))
                .collect();
            Concurrent {
                clients: 1,
                error: None,
                tokens_per_s: median(&v),
                tokens: row.samples.iter().map(|s| s.completion_tokens).sum(),
                wall_ms: row
                    .samples
                    .iter()
                    .map(|s| s.total.as_secs_f64() * 1e3)
                    .sum(),
            }
        } else {
            // A failed run is one cell of the row, not the row: it is reported with the
            // reason (and node-0's last warnings) and the next run goes on.
            concurrent(&net, c, args).unwrap_or_else(|e| {
                let warnings = log_warnings(&net, 4);
                eprintln!("  {c} clients failed: {e:#}\n{warnings}");
                Concurrent {
                    clients: c,
                    error: Some(format!("{e:#}; node-0 log: {warnings}")),
                    ..Concurrent::default()
                }
            })
        };
        check_stop()?;
        if r.error.is_none() {
            eprintln!("  {c} client(s): {:.1} tok/s aggregate", r.tokens_per_s);
        }
        row.concurrent.push(r);
    }
    row.peak_rss_kib = net
        .state
        .nodes
        .iter()
        .map(|n| sys::pid_status_kib(n.pid, "VmHWM").unwrap_or(0))
        .collect();
    row.relay_drops = net.relay_drops();
    drop(net);
    Ok(())
}

/// The first `n` warning or error lines of node-0's log (the cause comes first; what
/// follows is often its consequence), without colour codes, joined.
fn log_warnings(net: &Net, n: usize) -> String {
    let Some(node) = net.state.nodes.first() else {
        return String::new();
    };
    let text = std::fs::read_to_string(&node.log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(n)
        .collect();
    strip_ansi(&lines.join(" / "))
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn link_name(rtt_ms: f64, direct: bool) -> String {
    if rtt_ms == 0.0 {
        if direct {
            "loopback".into()
        } else {
            "loopback (zero-spec relays)".into()
        }
    } else {
        format!("{rtt_ms} ms RTT ({} ms one way)", rtt_ms / 2.0)
    }
}

/// The single-node row of the same model and link.
fn reference<'a>(rows: &'a [Row], cfg: &Config) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.error.is_none()
            && r.config
                .as_ref()
                .is_some_and(|c| c.model == cfg.model && c.rtt_ms == cfg.rtt_ms && c.nodes == 1)
    })
}

fn main_table(rows: &[Row], args: &Args) -> String {
    let mut header: Vec<String> = [
        "model",
        "nodes",
        "links",
        "TTFT ms, median (min-max)",
        "decode tok/s, median (min-max)",
        "ms/token",
        "tok/s vs 1 node",
        "wire bytes per decode token",
        "peak RSS per node, MiB",
    ]
    .map(String::from)
    .to_vec();
    for c in &args.clients {
        header.push(format!(
            "aggregate tok/s, {c} client{}",
            if *c == 1 { "" } else { "s" }
        ));
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| {
            let c = r.config.as_ref()?;
            let mut v = vec![
                c.model.to_string(),
                c.nodes.to_string(),
                link_name(c.rtt_ms, args.direct_loopback),
            ];
            if let Some(e) = &r.error {
                v.push(format!(
                    "failed: {}",
                    e.replace('|', "/").replace('\n', " ")
                ));
                v.resize(header.len(), String::new());
                return Some(v);
            }
            let ttft: Vec<f64> = r
                .samples
                .iter()
                .map(|s| s.ttft.as_secs_f64() * 1e3)
                .collect();
            v.push(spread(&ttft, 1));
            v.push(spread(&r.tps(), 1));
            v.push(format!("{:.2}", r.ms_per_token()));
            v.push(match reference(rows, c) {
                Some(a) => format!("{:.2}", median(&r.tps()) / median(&a.tps())),
                None => "n/a".into(),
            });
            v.push(
                r.bytes_per_token()
                    .map_or("n/a".into(), |b| format!("{b:.0}")),
            );
            v.push(
                r.peak_rss_kib
                    .iter()
                    .map(|&k| mib(k))
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
            for want in &args.clients {
                v.push(r.concurrent.iter().find(|x| x.clients == *want).map_or(
                    "n/a".into(),
                    |x| match &x.error {
                        Some(e) => format!("failed: {}", short_error(e)),
                        None => format!("{:.1}", x.tokens_per_s),
                    },
                ));
            }
            Some(v)
        })
        .collect();
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    markdown_table(&h, &body)
}

/// An error shortened for a table cell: how many streams failed and the HTTP status,
/// else its first 60 characters.
fn short_error(e: &str) -> String {
    let count = e
        .split_once(" concurrent streams failed")
        .map(|(n, _)| n.replace(" of ", "/"));
    if let Some(i) = e.find("status ") {
        let code: String = e[i + 7..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if !code.is_empty() {
            return match count {
                Some(n) => format!("{n} streams, HTTP {code}"),
                None => format!("HTTP {code}"),
            };
        }
    }
    let s: String = e.chars().take(60).collect();
    s.replace('|', "/").replace('\n', " ")
}

/// One latency-rise line per model and mesh with a link: ms/token with the link vs on
/// loopback, the expected rise and the excess over it.
#[derive(Debug, Serialize)]
struct Rise {
    model: &'static str,
    nodes: usize,
    one_way_ms: f64,
    loopback_ms: f64,
    link_ms: f64,
    expected_ms: f64,
    excess_pct: f64,
}

fn rises(rows: &[Row]) -> Vec<Rise> {
    let ok = |r: &&Row| r.error.is_none() && !r.samples.is_empty();
    let mut out = Vec::new();
    for r in rows.iter().filter(ok) {
        let Some(c) = &r.config else { continue };
        if c.rtt_ms == 0.0 {
            continue;
        }
        let base = rows.iter().filter(ok).find(|b| {
            b.config
                .as_ref()
                .is_some_and(|x| x.model == c.model && x.nodes == c.nodes && x.rtt_ms == 0.0)
        });
        let Some(base) = base else { continue };
        let one_way_ms = c.rtt_ms / 2.0;
        let expected_ms = traversals(c.nodes) as f64 * one_way_ms;
        let (loopback_ms, link_ms) = (base.ms_per_token(), r.ms_per_token());
        out.push(Rise {
            model: c.model,
            nodes: c.nodes,
            one_way_ms,
            loopback_ms,
            link_ms,
            expected_ms,
            excess_pct: (link_ms - loopback_ms - expected_ms) / expected_ms * 100.0,
        });
    }
    out
}

fn rise_table(rises: &[Rise]) -> String {
    let rows: Vec<Vec<String>> = rises
        .iter()
        .map(|x| {
            vec![
                x.model.to_string(),
                x.nodes.to_string(),
                format!("{}", x.one_way_ms),
                format!("{:.2}", x.loopback_ms),
                format!("{:.2}", x.link_ms),
                format!("{:.2}", x.link_ms - x.loopback_ms),
                format!(
                    "{} x {} = {:.1}",
                    traversals(x.nodes),
                    x.one_way_ms,
                    x.expected_ms
                ),
                format!("{:+.1}%", x.excess_pct),
            ]
        })
        .collect();
    markdown_table(
        &[
            "model",
            "nodes",
            "one way per link, ms",
            "ms/token, loopback",
            "ms/token, with links",
            "rise, ms",
            "expected rise: traversals x one way, ms",
            "excess over expected",
        ],
        &rows,
    )
}

/// The acceptance line: 3 nodes, 25 ms one way.
fn acceptance_lines(rises: &[Rise]) -> String {
    let lines: Vec<String> = rises
        .iter()
        .filter(|x| x.nodes == 3 && x.one_way_ms == 25.0)
        .map(|x| {
            format!(
                "**Latency check ({}, 3 nodes, 25 ms one way on every link):** {:.1} ms/token vs {:.1} ms/token on loopback: \
                 rise {:.1} ms, expected {} one-way traversals x 25 ms = {:.0} ms, excess {:+.1}% (target: at most +10%): **{}**",
                x.model,
                x.link_ms,
                x.loopback_ms,
                x.link_ms - x.loopback_ms,
                traversals(3),
                x.expected_ms,
                x.excess_pct,
                if x.excess_pct <= 10.0 { "pass" } else { "FAIL" }
            )
        })
        .collect();
    if lines.is_empty() {
        "Latency check: not run (needs `--nodes` with 3 and `--links` with 0 and 50).".into()
    } else {
        lines.join("  \n")
    }
}

struct Meta {
    command: String,
    date: String,
    tree: String,
    load: (String, String),
    elapsed: Duration,
}

fn load_1m() -> String {
    sys::loadavg().map_or("?".into(), |l| format!("{:.2}", l[0]))
}

fn render(
    rows: &[Row],
    models: &[Model],
    relay: Option<&RelayCost>,
    args: &Args,
    meta: &Meta,
) -> String {
    let m = sys::machine_facts();
    let model_lines: Vec<String> = models
        .iter()
        .map(|x| format!("`{}` = `{}`", x.label, x.path.display()))
        .collect();
    let rises = rises(rows);
    let relay_text = match relay {
        Some(r) => format!(
            "**Relay's own added time at zero delay** (target: under 100 µs per datagram): median {:.1} µs, p99 {:.1} µs per datagram \
             ({} ping-pongs of {}-byte datagrams, direct vs through a zero-spec relay, as `--bin relay`).\n\n```\n{}\n```",
            r.added_median_us,
            r.added_p99_us,
            r.round_trips,
            relay_cost::LEN,
            r.text()
        ),
        None => "Relay cost: skipped (`--relay-round-trips 0`).".into(),
    };
    let drops: u64 = rows.iter().map(|r| r.relay_drops).sum();
    format!(
        "## End-to-end: single node vs 2-4 node meshes, loopback and emulated links (issue 6)\n\n\
         Command: `{}`  \n\
         Date: {}  \n\
         Source tree: {}  \n\
         Machine: {} logical CPUs, {}, {:.0} GiB, kernel {}; load average (1 min) {} at the start, {} at the end; the run took {:.1} min  \n\
         Models: {}  \n\
         Requests: streamed `POST /v1/chat/completions` to node-0, chat message \"{PROMPT}\", temperature 0, `max_tokens` {}; \
         {} thread(s) per node; {} measured single-client request(s) per row after one warm-up\n\n\
         Method. One testnet per row (`lamina_testnet::up_with_links`, layers split evenly; 1 node = one process with every layer), \
         started, measured and stopped before the next. Links: each node's data plane (QUIC) sits behind a `lamina_testnet::relay` \
         that delays both directions by half the RTT, so every link between two nodes is shaped once each way. \
         The HTTP client talks to node-0's API directly (TCP on loopback, not shaped); the client's own link is node-0's pipeline client \
         dialling the first hop's data plane through that hop's relay, so the single node also crosses one shaped link each way per token \
         (its API to its own data plane), and an N-node mesh 2N one-way links per decode token \
         (API -> node-0 -> ... -> node-(N-1), the step's result back along the same streams). \
         Loopback rows {}. \
         TTFT: request sent -> first non-empty `delta.content`; decode tok/s: (`completion_tokens` - 1) / (first -> last content delta); \
         ms/token = 1000 / median decode tok/s; \"tok/s vs 1 node\": over the single node of the same model and links. \
         Wire bytes per decode token: UDP payload bytes the relays forwarded (every link, both directions: QUIC packets with their headers, \
         ACKs, handshakes of new streams), (bytes of a {}-token request - bytes of a 1-token request) / ({} - 1), median over the rounds. \
         Peak RSS: `VmHWM` of each node process at the end of its row (its mapped model pages included), node-0 first. \
         Aggregate tok/s: every stream's completion tokens / wall time from the common start to the last stream's end; \
         1 client = the single-client rounds (tokens / whole request time, median). Datagrams the relays dropped in the whole run: {drops}.\n\n\
         {}\n\
         ### Latency rise over loopback\n\n\
         {}\n\
         {}\n\n\
         {}\n",
        meta.command,
        meta.date,
        meta.tree,
        m.logical_cpus,
        m.cpu_model,
        m.mem_total_gib,
        m.kernel,
        meta.load.0,
        meta.load.1,
        meta.elapsed.as_secs_f64() / 60.0,
        model_lines.join(", "),
        args.tokens,
        args.threads_per_node,
        args.rounds,
        if args.direct_loopback {
            "run without relays (`--direct-loopback`), so they have no byte count"
        } else {
            "run through zero-spec relays (they forward at once), so their bytes are counted like the others'; the relay's cost is below"
        },
        args.tokens,
        args.tokens,
        main_table(rows, args),
        rise_table(&rises),
        acceptance_lines(&rises),
        relay_text,
    )
}

fn check_args(args: &Args) -> Result<()> {
    if args.tokens < 2 {
        bail!("--tokens must be at least 2 (decode speed needs two tokens)");
    }
    if args.rounds == 0 || args.rounds > 100 {
        bail!("--rounds must be 1..=100");
    }
    if let Some(n) = args.nodes.iter().find(|&&n| n == 0 || n > 16) {
        bail!("--nodes {n}: node counts are 1..=16");
    }
    if let Some(c) = args.clients.iter().find(|&&c| c == 0 || c > 256) {
        bail!("--clients {c}: client counts are 1..=256");
    }
    if let Some(l) = args.links.iter().find(|l| !(0.0..=2000.0).contains(*l)) {
        bail!("--links {l}: round-trip times are 0..=2000 ms");
    }
    if args.models.is_empty() || args.nodes.is_empty() || args.links.is_empty() {
        bail!("--models, --nodes and --links need at least one value each");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    install_ctrl_c()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let exe = lamina_exe(args.lamina.clone())?;
    let models = load_models(&args)?;
    // Dropped last: the testnets live in it.
    let work = ScratchDir::new("lamina-e2e-bench")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tree = sys::tree_state(&root);
    let date = sys::utc_now();
    let load_start = load_1m();
    let t0 = Instant::now();
    let relay = if args.relay_round_trips > 0 {
        eprintln!("relay cost: {} round trips", args.relay_round_trips);
        Some(relay_cost::measure(args.relay_round_trips)?)
    } else {
        None
    };
    let mut rows = Vec::new();
    for model in &models {
        for &rtt_ms in &args.links {
            for &nodes in &args.nodes {
                let cfg = Config {
                    model: model.label,
                    nodes,
                    rtt_ms,
                };
                let mut row = Row {
                    config: Some(cfg.clone()),
                    ..Row::default()
                };
                let t = Instant::now();
                if let Err(e) = run_config(&exe, model, &cfg, &args, work.path(), &mut row) {
                    check_stop()?;
                    eprintln!("  failed: {e:#}");
                    row.error = Some(format!("{e:#}"));
                }
                row.elapsed_s = t.elapsed().as_secs_f64();
                eprintln!("  row took {:.1} s", row.elapsed_s);
                rows.push(row);
            }
        }
    }
    let meta = Meta {
        command,
        date,
        tree,
        load: (load_start, load_1m()),
        elapsed: t0.elapsed(),
    };
    let md = render(&rows, &models, relay.as_ref(), &args, &meta);
    println!("{md}");
    if args.write {
        update_section(&args.out_dir.join("RESULTS.md"), "e2e", &md)?;
        let json = serde_json::json!({
            "command": meta.command,
            "date": meta.date,
            "source_tree": meta.tree,
            "machine": sys::machine_facts(),
            "models": models.iter().map(|m| serde_json::json!({"label": m.label, "path": m.path})).collect::<Vec<_>>(),
            "tokens": args.tokens,
            "rounds": args.rounds,
            "threads_per_node": args.threads_per_node,
            "direct_loopback": args.direct_loopback,
            "relay_cost": relay,
            "rows": rows,
            "latency_rise": rises(&rows),
        });
        let dir = args.out_dir.join("results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("e2e.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} and {}",
            args.out_dir.join("RESULTS.md").display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tokens: usize, tps: f64) -> Sample {
        Sample {
            ttft: Duration::from_millis(100),
            total: Duration::from_millis(500),
            tokens_per_s: tps,
            completion_tokens: tokens,
            prompt_tokens: 10,
            text: String::new(),
        }
    }

    #[test]
    fn bytes_per_token_subtracts_the_prefill() {
        let row = Row {
            samples: vec![sample(11, 100.0), sample(11, 100.0), sample(11, 50.0)],
            prefill_bytes: Some(1000),
            round_bytes: vec![2000, 3000, 2500],
            ..Row::default()
        };
        assert_eq!(row.bytes_per_token(), Some(150.0));
        assert_eq!(row.ms_per_token(), 10.0);
        let uncounted = Row {
            samples: vec![sample(11, 100.0)],
            ..Row::default()
        };
        assert_eq!(uncounted.bytes_per_token(), None);
    }

    #[test]
    fn rise_counts_two_traversals_per_node() {
        let row = |nodes, rtt_ms, tps| Row {
            config: Some(Config {
                model: "m",
                nodes,
                rtt_ms,
            }),
            samples: vec![sample(32, tps)],
            ..Row::default()
        };
        // 10 ms/token on loopback, 165 ms/token with 25 ms one way: 155 ms rise over the
        // expected 6 x 25 = 150 ms.
        let rows = vec![row(3, 0.0, 100.0), row(3, 50.0, 1e3 / 165.0)];
        let r = rises(&rows);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].expected_ms, 150.0);
        assert!((r[0].excess_pct - 5.0 / 150.0 * 100.0).abs() < 1e-9);
        assert!(acceptance_lines(&r).contains("pass"));
    }

    #[test]
    fn errors_are_shortened_for_cells() {
        assert_eq!(short_error("POST x: status 502: {...}"), "HTTP 502");
        assert_eq!(
            short_error("12 of 16 concurrent streams failed; the first: POST x: status 502: {}"),
            "12/16 streams, HTTP 502"
        );
        assert_eq!(short_error("a|b\nc"), "a/b c");
        assert_eq!(strip_ansi("\u{1b}[33m WARN\u{1b}[0m x"), " WARN x");
    }
}
