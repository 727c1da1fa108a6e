//! The adversary drill: a 4-node testnet (three servers of the whole model and an entry
//! with `--layers none`) where node-0 misbehaves on purpose (`--adversary MODE`, one mode
//! per round), while honest clients generate through the entry. Per mode it reports:
//! whether every honest request completed with the reference text, honest time per token
//! against the unattacked round, whether (and after how many requests) the adversary was
//! banned by the entry, the routes the entry planned through each serving node and the
//! speed it measured of each, against the routes servers of those measured speeds would
//! get under the nodes' route spread (an `inflate`d node must get no more than an honest
//! server of its measured speed; node-0 of the unattacked round is one), the steps
//! each ran, and the peak RSS of every node against its
//! `--kv-budget` plus 150 MB. The `http-flood` round has no adversary node: a flood of
//! held-open connections, junk and oversized bodies and bad requests from 127.0.0.2
//! against the entry's API.
//!
//! `cargo build --release -p lamina-node -p lamina-benches &&
//!  target/release/adversary [--modes corrupt,huge-token,stall,inflate,flood]
//!  [--requests 6] [--clients 2] [--tokens 32] [--verify-rate 0.25] [--model FILE]`
//!
//! Activations are f32 (spot checks compare bit-exactly). Bounded: each request has a
//! timeout, and every round's testnet is stopped before the next starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lamina_testnet::{Placement, UpOptions};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Drive each --adversary mode against a testnet while honest clients generate")]
struct Args {
    /// The modes to drill, comma-separated (the unattacked round always runs first):
    /// node-0's `--adversary` modes, and `http-flood` (a flood against the entry's API).
    #[arg(
        long,
        default_value = "corrupt,huge-token,stall,inflate,flood,http-flood"
    )]
    modes: String,
    /// Requests per honest client per round.
    #[arg(long, default_value_t = 8)]
    requests: usize,
    /// Honest clients at once.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Tokens per request (greedy).
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// `--verify-rate` of the nodes.
    #[arg(long, default_value_t = 0.25)]
    verify_rate: f64,
    /// The model (default: shared/models/stories260K.gguf).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Timeout of one request, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Testnet folder (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `--kv-budget` of every node, MiB (the RSS bound checked is this plus 150).
    #[arg(long, default_value_t = 256)]
    kv_budget_mib: u64,
}

/// One honest request's outcome.
struct Run {
    text: Option<String>,
    secs: f64,
    error: Option<String>,
}

fn complete(api: &str, body: &Value, timeout: Duration) -> Run {
    let t = Instant::now();
    let r = ureq::post(&format!("{api}/v1/completions"))
        .timeout(timeout)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let secs = t.elapsed().as_secs_f64();
    match r {
        Ok(resp) => match resp.into_json::<Value>() {
            Ok(v) => Run {
                text: v["choices"][0]["text"].as_str().map(str::to_owned),
                secs,
                error: None,
            },
            Err(e) => Run {
                text: None,
                secs,
                error: Some(format!("bad body: {e}")),
            },
        },
        Err(e) => Run {
            text: None,
            secs,
            error: Some(e.to_string()),
        },
    }
}

/// Peak resident memory of a process, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one round measured.
struct Round {
    mode: String,
    runs: Vec<Run>,
    /// Whether the entry banned node-0 during the round.
    banned: bool,
    /// Sessions node-0 opened (as a primary, shadow or third chain's hop).
    adversary_sessions: usize,
    /// Routes through node-0 seen in the entry's last route after each request.
    routes_via_adversary: usize,
    /// Steps each serving node ran (its `lamina_session_steps_by_input`, probes included).
    steps: Vec<u64>,
    /// Routes the entry planned through each serving node (its `/status`), and the
    /// tokens/s it measured of each.
    routes: Vec<u64>,
    measured: Vec<Option<f64>>,
    peak_rss_mib: Vec<f64>,
}

fn round(args: &Args, exe: &Path, model: &Path, dir: &Path, mode: Option<&str>) -> Result<Round> {
    let state_path = dir.join("state.json");
    let ranges = ["0..N", "0..N", "0..N", "none"];
    let n_layers = {
        let m = lamina_sharding::source::ModelFile::open(model)?;
        m.config()?.n_layers
    };
    let ranges: Vec<String> = ranges
        .iter()
        .map(|r| r.replace('N', &n_layers.to_string()))
        .collect();
    let mut opts = UpOptions::new(
        exe.to_path_buf(),
        ranges.len(),
        model.to_path_buf(),
        state_path.clone(),
        dir.join("net"),
    );
    opts.placement = Placement::Fixed(ranges);
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(180);
    opts.verify_rate = args.verify_rate;
    opts.extra_args = vec!["--kv-budget".into(), format!("{}MiB", args.kv_budget_mib)];
    // `http-flood` is no node's misbehaviour: a flood of HTTP connections and bad
    // requests against the entry, from another loopback address than the clients'.
    let http_flood = mode == Some("http-flood");
    if let Some(m) = mode.filter(|_| !http_flood) {
        opts.adversaries = vec![(0, m.to_string())];
    }
    let st = lamina_testnet::up(&opts).context("testnet up")?;
    let down = Down(state_path.clone());
    let entry = st.nodes.last().context("no entry")?.clone();
    let api = entry.api.clone().context("the entry has no API")?;
    let adversary = st.nodes[0].peer_id.clone();
    let body = json!({"prompt": args.prompt, "max_tokens": args.tokens, "temperature": 0.0,
                      "activation_dtype": "f32"});
    let timeout = Duration::from_secs(args.timeout);
    let mut runs = Vec::new();
    let mut via = 0;
    let flooding = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        if http_flood {
            s.spawn(|| flood_http(&api, &flooding));
        }
        let handles: Vec<_> = (0..args.clients)
            .map(|_| {
                s.spawn(|| {
                    (0..args.requests)
                        .map(|_| {
                            let r = complete(&api, &body, timeout);
                            let route_via = lamina_testnet::status(&api)
                                .ok()
                                .and_then(|st| st["last_route"]["hops"].as_array().cloned())
                                .is_some_and(|h| h.iter().any(|x| x["peer"] == adversary));
                            (r, route_via)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                for (r, route_via) in v {
                    via += usize::from(route_via);
                    runs.push(r);
                }
            }
        }
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    let steps = st
        .nodes
        .iter()
        .filter(|n| n.layers != "none")
        .map(|n| n.api.as_deref().map_or(0, node_steps))
        .collect();
    let entry_peers = lamina_testnet::status(&api)
        .ok()
        .and_then(|st| st["peers"].as_array().cloned())
        .unwrap_or_default();
    let of = |peer: &str| entry_peers.iter().find(|p| p["peer_id"] == peer).cloned();
    let servers: Vec<_> = st.nodes.iter().filter(|n| n.layers != "none").collect();
    let routes = servers
        .iter()
        .map(|n| {
            of(&n.peer_id)
                .and_then(|p| p["routes"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    let measured = servers
        .iter()
        .map(|n| of(&n.peer_id).and_then(|p| p["measured_tokens_per_sec"].as_f64()))
        .collect();
    // Bans are short-lived (they double per failure): read them from the entry's log,
    // and how much work the adversary got from its own.
    let entry_log = std::fs::read_to_string(&entry.log).unwrap_or_default();
    let banned = entry_log.contains(&format!("banned peer={adversary}"));
    let adversary_log = std::fs::read_to_string(&st.nodes[0].log).unwrap_or_default();
    let adversary_sessions = adversary_log
        .lines()
        .filter(|l| l.contains("session::stream: opened"))
        .count();
    let peak_rss_mib = st
        .nodes
        .iter()
        .map(|n| peak_rss_kib(n.pid).map_or(f64::NAN, |k| k as f64 / 1024.0))
        .collect();
    drop(down);
    Ok(Round {
        mode: mode.unwrap_or("none").to_string(),
        runs,
        banned,
        adversary_sessions,
        routes_via_adversary: via,
        steps,
        routes,
        measured,
        peak_rss_mib,
    })
}

/// `lamina node --route-spread`'s default: each plan scales every server's speed by a
/// draw from `1..1 + ROUTE_SPREAD`.
const ROUTE_SPREAD: f64 = 0.2;

/// The routes each server would get of `total` if routing ranked them at `measured`
/// (tokens/s) with the nodes' spread: the share of seeded draws each wins. What an honest
/// server of a given measured speed gets; `None` when a server was not measured.
fn expected_routes(measured: &[Option<f64>], total: u64) -> Option<Vec<f64>> {
    let speeds: Vec<f64> = measured.iter().copied().collect::<Option<_>>()?;
    const DRAWS: usize = 100_000;
    let mut wins = vec![0usize; speeds.len()];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut unit = || {
        // xorshift64*: enough for a share estimate.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..DRAWS {
        let best = speeds
            .iter()
            .map(|s| s * (1.0 + ROUTE_SPREAD * unit()))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)?;
        wins[best] += 1;
    }
    Some(
        wins.iter()
            .map(|w| *w as f64 / DRAWS as f64 * total as f64)
            .collect(),
    )
}

/// Steps a node's session server ran, from its `/metrics`.
fn node_steps(api: &str) -> u64 {
    let Ok(r) = ureq::get(&format!("{api}/metrics"))
        .timeout(Duration::from_secs(10))
        .call()
    else {
        return 0;
    };
    r.into_string()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("lamina_session_steps_by_input"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Floods `api` from 127.0.0.2 while `on`: up to 200 connections that send half a
/// request header and hold it (slowloris), 1 MiB bodies that are no JSON, 8 MiB bodies
/// (over the cap) and requests for a model the node does not serve. Bounded: paced, at
/// most 100 000 requests.
fn flood_http(api: &str, on: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let Ok(addr) = api
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
    else {
        return;
    };
    let connect = || -> Option<std::net::TcpStream> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
            .ok()?;
        s.connect_timeout(&addr.into(), Duration::from_secs(2))
            .ok()?;
        let s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
        Some(s)
    };
    let junk = vec![b'a'; 1 << 20];
    let huge = vec![b'a'; 8 << 20];
    let wrong_model = br#"{"model":"no-such-model","prompt":"x","max_tokens":64}"#.to_vec();
    let mut held: Vec<std::net::TcpStream> = Vec::new();
    let mut sent = 0u32;
    while on.load(Ordering::Relaxed) && sent < 100_000 {
        held.retain_mut(|s| s.write_all(b"x").is_ok());
        while held.len() < 200 {
            let Some(mut s) = connect() else { break };
            if s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
                .is_err()
            {
                break;
            }
            held.push(s);
        }
        for body in [&junk, &huge, &wrong_model] {
            let Some(mut s) = connect() else { continue };
            let head = format!(
                "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the testnet of `state` when dropped.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
    }
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
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lamina-adversary-{}", std::process::id()))
    });
    let mut rounds = Vec::new();
    let modes: Vec<String> = args.modes.split(',').map(|m| m.trim().to_owned()).collect();
    for (i, mode) in std::iter::once(None)
        .chain(modes.iter().map(|m| Some(m.as_str())))
        .enumerate()
    {
        eprintln!("adversary: round {i}: {}", mode.unwrap_or("none"));
        rounds.push(round(
            &args,
            &exe,
            &model,
            &dir.join(format!("round-{i}")),
            mode,
        )?);
    }
    let reference = rounds[0]
        .runs
        .iter()
        .find_map(|r| r.text.clone())
        .context("the unattacked round produced no text")?;
    let per_token = |r: &Round| {
        let ok: Vec<f64> = r
            .runs
            .iter()
            .filter(|x| x.error.is_none())
            .map(|x| x.secs / args.tokens as f64)
            .collect();
        if ok.is_empty() {
            f64::NAN
        } else {
            let mut v = ok;
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }
    };
    let base = per_token(&rounds[0]);
    println!(
        "| mode | honest requests ok | reference text | median ms/token | vs unattacked | adversary banned | adversary sessions | last routes via adversary | routes planned by the entry (node-0 adversary; node-1, node-2 honest) | tokens/s the entry measured | routes servers of those speeds would get | steps served | peak RSS per node (MiB; bound {}) |",
        args.kv_budget_mib + 150
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rounds {
        let ok = r.runs.iter().filter(|x| x.error.is_none()).count();
        let same = r
            .runs
            .iter()
            .filter(|x| x.text.as_deref() == Some(reference.as_str()))
            .count();
        let t = per_token(r);
        println!(
            "| {} | {ok}/{} | {same}/{} | {:.1} | {:.2}x | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.runs.len(),
            r.runs.len(),
            t * 1e3,
            t / base,
            if r.mode == "none" || r.mode == "http-flood" {
                "-".into()
            } else {
                r.banned.to_string()
            },
            r.adversary_sessions,
            r.routes_via_adversary,
            r.routes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            r.measured
                .iter()
                .map(|m| m.map_or("-".into(), |m| format!("{m:.0}")))
                .collect::<Vec<_>>()
                .join(", "),
            expected_routes(&r.measured, r.routes.iter().sum()).map_or("-".into(), |v| v
                .iter()
                .map(|e| format!("{e:.0}"))
                .collect::<Vec<_>>()
                .join(", ")),
            r.steps
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            r.peak_rss_mib
                .iter()
                .map(|m| format!("{m:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for e in r.runs.iter().filter_map(|x| x.error.as_ref()).take(3) {
            eprintln!("  {}: error: {e}", r.mode);
        }
    }
    Ok(())
}
