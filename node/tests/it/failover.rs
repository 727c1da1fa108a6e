//! Failover of generations in flight: in a mesh where every layer has two servers, a hop
//! of the chain is killed (`kill -9`) while a generation streams; the generation completes
//! with exactly the text of an undisturbed run, and the client sees no error.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::api::*;
use crate::common::pipeline::*;
use lamina_testnet::{Placement, UpOptions};
use serde_json::{json, Value};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENS: usize = 40;

struct Down(std::path::PathBuf, Vec<u32>);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lamina_testnet::down(&self.0);
        for pid in &self.1 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn body(seed: u64, temperature: f32) -> Value {
    json!({"prompt": "Once upon a time, in a quiet harbor town,", "max_tokens": TOKENS,
           "temperature": temperature, "seed": seed, "stream": true,
           "stream_options": {"include_usage": true}})
}

/// Streams a completion; after `kill_after` chunks have arrived, calls `kill` once.
fn stream(
    entry: &str,
    log: &std::path::Path,
    body: &Value,
    kill_after: usize,
    mut kill: impl FnMut(),
) -> Streamed {
    let mut s = connect(entry);
    write_request(
        &mut s,
        entry,
        "POST",
        "/v1/completions",
        Some("application/json"),
        &body.to_string(),
    );
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut killed = false;
    loop {
        let n = s.read(&mut buf).expect("read the stream");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let chunks = String::from_utf8_lossy(&raw).matches("data: ").count();
        if !killed && chunks >= kill_after {
            kill();
            killed = true;
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    let text = String::from_utf8(dechunk(&raw[split + 4..])).expect("utf-8");
    if !text.contains("[DONE]") {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "the stream broke off: {text}\nentry log (last lines first):\n{}",
            tail.join("\n")
        );
    }
    join_stream(&text)
}

fn route_peers(entry: &str) -> Vec<String> {
    let st = get(entry, "/status").json();
    st["last_route"]["hops"]
        .as_array()
        .expect("a route")
        .iter()
        .map(|h| h["peer"].as_str().unwrap().to_string())
        .collect()
}

fn wait_redundant(entry: &str, avoid: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = get(entry, "/status").json();
        let cov = st["coverage"].as_array().unwrap();
        let live_ok = st["peers"].as_array().unwrap().iter().all(|p| {
            !avoid.contains(&p["peer_id"].as_str().unwrap().to_string()) || p["reachable"] == false
        });
        if cov.iter().all(|l| l["servers"].as_u64() == Some(2)) && live_ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redundancy never came back: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hop_killed_mid_generation_changes_nothing_the_client_sees() {
    let Some(path) = model_path(SMOLLM2) else {
        return;
    };
    let dir = TempDir::new("failover");
    let state = dir.path().join("state.json");
    let ranges = ["0..15", "0..15", "15..30", "15..30", "none"];
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        ranges.len(),
        path.clone(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = Placement::Fixed(ranges.iter().map(|s| s.to_string()).collect());
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    // No spot checks: a second chain's plan would be the last route the kill reads.
    opts.verify_rate = 0.0;
    // Open: replacements join the testnet as plain `lamina node` processes.
    opts.open = true;
    let st = lamina_testnet::up(&opts).expect("testnet up");
    let pids: Vec<u32> = st.nodes.iter().map(|n| n.pid).collect();
    let _down = Down(state, pids);
    let entry = st.nodes[4]
        .api
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    // The entry node is never killed: replacements join through it.
    let boot = lamina_testnet::bootstrap_addr(&st.nodes[4].p2p).unwrap();
    let by_peer = |p: &str| {
        st.nodes
            .iter()
            .find(|n| n.peer_id == p)
            .map(|n| (n.pid, n.layers.clone()))
    };

    let mut replacements: Vec<(Kill, TempDir)> = Vec::new();
    let mut killed: Vec<String> = Vec::new();
    // Kill the first hop, then the last hop, at different steps; greedy and sampled.
    for (round, (hop, kill_after, seed, temp)) in [
        (0usize, 4usize, 0u64, 0.0f32),
        (1, 12, 7, 0.8),
        (0, 20, 3, 0.8),
    ]
    .into_iter()
    .enumerate()
    {
        let want = stream(
            &entry,
            &st.nodes[4].log,
            &body(seed, temp),
            usize::MAX,
            || {},
        );
        // The hop to kill is read when the kill is due: routes are spread over equal
        // servers, so this generation's chain is the one planned last, not the previous
        // generation's.
        let mut victim: Option<(String, u32, String)> = None;
        let t = Instant::now();
        let got = stream(
            &entry,
            &st.nodes[4].log,
            &body(seed, temp),
            kill_after,
            || {
                let v = route_peers(&entry)[hop].clone();
                if let Some((pid, layers)) = by_peer(&v) {
                    Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap();
                    victim = Some((v, pid, layers));
                }
            },
        );
        let Some((victim, _, layers)) = victim else {
            // The route goes through a replacement from an earlier round (whose pid the
            // testnet does not know): that round killed nothing.
            eprintln!("round {round}: the route uses a replacement node; not killing");
            assert_eq!(got.text, want.text);
            continue;
        };
        eprintln!(
            "round {round}: killed hop {hop} ({layers}) after {kill_after} chunks; finished in {:?}",
            t.elapsed()
        );
        assert_eq!(got.text, want.text, "round {round}: the text is unchanged");
        assert_eq!(
            got.usage, want.usage,
            "round {round}: token counts are unchanged"
        );
        assert_eq!(got.finish_reason, want.finish_reason);
        killed.push(victim);
        // Bring the range back to two servers for the next round.
        let d = TempDir::new("replacement");
        let child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .arg("node")
            .arg("--model")
            .arg(&path)
            .args([
                "--layers",
                &layers,
                "--open",
                "--threads",
                "1",
                "--bootstrap",
                &boot,
            ])
            .arg("--data-dir")
            .arg(d.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a replacement");
        replacements.push((Kill(child), d));
        wait_redundant(&entry, &killed);
    }
    let metrics = get(&entry, "/metrics").body;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("lamina_failover_recovery_seconds_count"))
        .unwrap_or("no recoveries")
        .to_string();
    eprintln!("{line}");
    assert!(!killed.is_empty());
    let recovered: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(recovered >= 1.0, "no failover was recorded: {line}");
}

/// The same over the libp2p data plane (`--advertise-dataplane p2p`, stories260K): a hop
/// killed mid-generation loses its mesh connection, the session stream on it fails, and
/// the generation fails over with the text unchanged.
#[test]
fn a_p2p_hop_killed_mid_generation_changes_nothing_the_client_sees() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("failover-p2p");
    let state = dir.path().join("state.json");
    let ranges = ["0..2", "0..2", "2..5", "2..5", "none"];
    let mut opts = UpOptions::new(
        env!("CARGO_BIN_EXE_lamina").into(),
        ranges.len(),
        path.clone(),
        state.clone(),
        dir.path().join("net"),
    );
    opts.placement = Placement::Fixed(ranges.iter().map(|s| s.to_string()).collect());
    opts.threads = Some(1);
    opts.ready_timeout = Duration::from_secs(60);
    opts.extra_args = vec!["--advertise-dataplane".into(), "p2p".into()];
    opts.verify_rate = 0.0;
    let st = lamina_testnet::up(&opts).expect("testnet up");
    let pids: Vec<u32> = st.nodes.iter().map(|n| n.pid).collect();
    let _down = Down(state, pids);
    let entry = st.nodes[4]
        .api
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let want = stream(&entry, &st.nodes[4].log, &body(0, 0.0), usize::MAX, || {});
    let mut killed = None;
    let got = stream(&entry, &st.nodes[4].log, &body(0, 0.0), 6, || {
        let v = route_peers(&entry)[0].clone();
        let pid = st.nodes.iter().find(|n| n.peer_id == v).map(|n| n.pid);
        if let Some(pid) = pid {
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            killed = Some(v);
        }
    });
    assert!(killed.is_some(), "the first hop was killed");
    assert_eq!(got.text, want.text, "the text is unchanged");
    assert_eq!(got.usage, want.usage);
    let metrics = get(&entry, "/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lamina_failover_recovery_seconds_count") && !l.ends_with(" 0")),
        "a failover was recorded"
    );
}
