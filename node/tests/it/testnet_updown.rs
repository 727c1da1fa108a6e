//! `lamina testnet up --detach` starts three nodes with a state file, the first node's HTTP
//! API answers `POST /v1/completions` through the chain (greedy = reference, sampled = the
//! single-process run with the same seed), and `lamina testnet down` leaves no process.
//! `lamina testnet up` in the foreground serves until Ctrl-C (or someone's `down`) and then
//! leaves no process either: with stories260K, and with four SmolLM2 nodes answering a chat
//! completion (the first acceptance line; the time it took is printed). With
//! `--netns` (root; required in CI) every node runs in a namespace of its own, `partition`
//! cuts exactly the links it names and `heal` restores them, and Ctrl-C removes every
//! namespace.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::pipeline::*;
use candle_core::Device;
use lamina_sharding::generate::{generate, GenerateRequest, LocalChain};
use lamina_sharding::layers::LayerRange;
use lamina_sharding::sampling::SamplingParams;
use lamina_sharding::source::ModelFile;
use lamina_testnet::{is_alive, TestnetState};

/// Runs `lamina testnet down` on drop if the test did not.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_lamina"))
                .args(["testnet", "down", "--state"])
                .arg(&self.0)
                .status();
        }
    }
}

fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, v) = post_to(url, "/v1/completions", body);
    (status, v)
}

/// `(status, response head, JSON body)`.
fn post_to(url: &str, path: &str, body: &serde_json::Value) -> (u16, String, serde_json::Value) {
    let addr = url
        .strip_prefix("http://")
        .expect("the api is an http:// URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read the response");
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let (head, json) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        status,
        head.to_owned(),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    v["choices"][0]["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn testnet_up_serves_completions_and_down_leaves_no_process() {
    let (Some(path), Some(prompts)) = (model_path(STORIES), reference_prompts(STORIES)) else {
        return;
    };
    let dir = TempDir::new("testnet");
    let state_path = dir.path().join("state.json");
    let guard = Down(state_path.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "up", "--detach", "--nodes", "3", "--model"])
        .arg(&path)
        .arg("--state")
        .arg(&state_path)
        .output()
        .expect("run testnet up");
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = TestnetState::read(&state_path).expect("state file");
    let layers: Vec<&str> = state.nodes.iter().map(|n| n.layers.as_str()).collect();
    assert_eq!(layers, ["0..2", "2..4", "4..5"]);
    for n in &state.nodes {
        assert!(is_alive(n.pid), "{} is running", n.id);
        assert!(n.log.exists());
    }
    // The raw JSON has the documented keys.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for key in ["id", "layers", "api", "pid", "log"] {
        assert!(raw["nodes"][0].get(key).is_some(), "state has {key}");
    }

    let api = state.nodes[0].api.clone().expect("first node's API");
    let (name, _, want) = &prompts[0];
    let (status, v) = post(
        &api,
        // OpenAI's default temperature is 1: greedy must be asked for.
        &serde_json::json!({"prompt": name, "max_tokens": want.len(), "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(&token_ids(&v), want, "greedy completion = reference");

    // Sampled: the same tokens as the single-process run with the same settings.
    let model = ModelFile::open(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    let local = LocalChain::load(&model, &[LayerRange::new(0, 5).unwrap()], &Device::Cpu).unwrap();
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        ..SamplingParams::default()
    };
    let req = GenerateRequest {
        prompt_ids: tok.encode(name, tok.add_bos_default(), false).unwrap(),
        max_tokens: 24,
        sampling,
        stop: vec![],
    };
    let mut s = local.session(req.prompt_ids.len() + 24).unwrap();
    let want = generate(&mut s, &tok, &req, 2048, |_| {}).unwrap();
    let body = serde_json::json!({"prompt": name, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 7});
    let (status, v) = post(&api, &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        token_ids(&v),
        want.generated_token_ids,
        "sampled completion = local run"
    );
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want.text);

    // A bad body is a 400, and the node keeps serving.
    let (status, _) = post(&api, &serde_json::json!({"prompt": 5}));
    assert_eq!(status, 400);
    let (status, _) = post(
        &api,
        &serde_json::json!({"prompt": "x", "temperature": -1.0}),
    );
    assert_eq!(status, 400);

    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["testnet", "down", "--state"])
        .arg(&state_path)
        .output()
        .expect("run testnet down");
    assert!(
        out.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &state.nodes {
        assert!(
            !is_alive(n.pid),
            "{} (pid {}) still running after down",
            n.id,
            n.pid
        );
    }
    assert!(!state_path.exists(), "down removes the state file");
    drop(guard);
}

/// Processes whose command line mentions `needle` (a testnet's folder: every node's
/// `--data-dir` is under it), other than this test.
fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !is_alive(pid) {
            continue;
        }
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// `lamina testnet up` in the foreground. On drop (a failed test) it is SIGKILLed, and
/// every process it may have left is killed: the state file's and any that mentions the
/// testnet's folder.
struct Foreground {
    child: Child,
    dir: PathBuf,
    state: PathBuf,
    /// Its stdout, line by line.
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Foreground {
    fn start(model: &Path, nodes: usize, dir: &Path, extra: &[&str]) -> Self {
        let state = dir.join("state.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args(["testnet", "up", "--nodes", &nodes.to_string()])
            .args(extra)
            .arg("--model")
            .arg(model)
            .arg("--state")
            .arg(&state)
            .arg("--dir")
            .arg(dir.join("net"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start testnet up");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("up: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            dir: dir.to_path_buf(),
            state,
            lines,
            stderr,
        }
    }

    /// Waits (bounded) for the line `up` prints once the mesh serves, and returns it.
    fn wait_up(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("up;") => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("testnet up exited ({status}) before it was up");
                    }
                    assert!(Instant::now() < deadline, "testnet up was not up in 300 s");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for up");
                    panic!("testnet up closed its stdout ({status}) before it was up");
                }
            }
        }
    }

    /// Waits (bounded) for `up` to exit and returns whether it succeeded, and its stdout
    /// lines since [`Foreground::wait_up`].
    fn wait_exit(&mut self) -> (bool, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait up") {
                break s;
            }
            assert!(Instant::now() < deadline, "testnet up did not exit in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
        (status.success(), lines)
    }

    /// Asserts that no process the testnet started is left, nor its state file.
    fn assert_nothing_left(&self, state: &TestnetState) {
        for n in &state.nodes {
            assert!(
                !is_alive(n.pid),
                "{} (pid {}) is still running",
                n.id,
                n.pid
            );
        }
        let left = processes_mentioning(&self.dir);
        assert!(left.is_empty(), "processes left behind: {left:?}");
        assert!(!self.state.exists(), "the state file is removed");
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let e = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
            eprintln!("testnet up's stderr:\n{}", e.join().unwrap_or_default());
        }
        if self.state.exists() {
            let _ = lamina_testnet::down(&self.state);
        }
        for (pid, _) in processes_mentioning(&self.dir) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn sigint(pid: u32) {
    let ok = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -INT {pid}");
}

/// A chat completion through the first node's API: `(text, completion tokens, request id)`.
fn chat(state: &TestnetState) -> (String, u64, String) {
    let api = state.nodes[0].api.clone().expect("node-0's API");
    let (status, head, v) = post_to(
        &api,
        "/v1/chat/completions",
        &serde_json::json!({
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "max_tokens": 16,
            "temperature": 0
        }),
    );
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("message content")
        .to_owned();
    let rid = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-request-id").then_some(v)
        })
        .expect("x-request-id header")
        .trim()
        .to_owned();
    (
        text,
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        rid,
    )
}

#[test]
fn testnet_up_serves_until_ctrl_c_and_then_leaves_no_process() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    let dir = TempDir::new("testnet-fg");
    let mut up = Foreground::start(&path, 3, dir.path(), &[]);
    up.wait_up();
    let state = TestnetState::read(&up.state).expect("state file");
    assert_eq!(state.nodes.len(), 3);
    for n in &state.nodes {
        assert!(is_alive(n.pid), "{} is running", n.id);
    }
    let (_, tokens, rid) = chat(&state);
    assert!(tokens > 0, "the chat completion generated tokens");
    assert_eq!(rid.len(), 32, "the request id is a trace id: {rid}");
    // Still up after answering: it is the signal that stops it.
    assert!(matches!(up.child.try_wait(), Ok(None)), "up keeps running");

    sigint(up.child.id());
    let (ok, lines) = up.wait_exit();
    assert!(ok, "up exits cleanly after Ctrl-C: {lines:?}");
    assert!(
        lines.iter().any(|l| l == "stopped 3 node(s)"),
        "up says it stopped the nodes: {lines:?}"
    );
    up.assert_nothing_left(&state);

    // The request id followed the request: every hop's log has its session opened with it
    // as the session span's trace id (plain text: logs to a file have no colours).
    for n in &state.nodes {
        let log = std::fs::read_to_string(&n.log).expect("node log");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("trace={rid}")) && l.contains("opened"))
            .collect();
        assert!(
            !lines.is_empty(),
            "{} logged no session of request {rid}:\n{log}",
            n.id
        );
    }
}

/// A Ctrl-C while the nodes load stops the ones started so far: `up` catches signals
/// before it starts the first node (whose log appearing is the cue here).
#[test]
fn ctrl_c_while_the_nodes_load_leaves_no_process() {
    let Some(path) = model_path("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let dir = TempDir::new("testnet-early");
    let mut up = Foreground::start(&path, 4, dir.path(), &[]);
    let first_log = dir.path().join("net").join("node-0.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first_log.exists() {
        assert!(Instant::now() < deadline, "node-0 never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    sigint(up.child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = up.child.try_wait().expect("try_wait up") {
            break s;
        }
        assert!(Instant::now() < deadline, "up did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    // 130 when it was still starting; 0 if it had just finished and stopped them in order.
    assert!(
        status.code() == Some(130) || status.success(),
        "up exits as interrupted: {status}"
    );
    let left = processes_mentioning(dir.path());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!up.state.exists(), "no state file names the stopped nodes");
}

/// The first acceptance line, stopped both ways: `down` from another shell (the
/// foreground `up` notices and exits) and Ctrl-C.
#[test]
fn four_smollm2_nodes_answer_a_chat_completion_and_down_or_ctrl_c_leave_nothing() {
    let Some(path) = model_path("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    for stop_with_down in [true, false] {
        let dir = TempDir::new("testnet-smollm2");
        let t = Instant::now();
        let mut up = Foreground::start(&path, 4, dir.path(), &[]);
        up.wait_up();
        let state = TestnetState::read(&up.state).expect("state file");
        let layers: Vec<&str> = state.nodes.iter().map(|n| n.layers.as_str()).collect();
        assert_eq!(layers, ["0..8", "8..16", "16..23", "23..30"]);
        let (text, tokens, _) = chat(&state);
        eprintln!(
            "4 SmolLM2 nodes: up and answered a chat completion ({tokens} tokens: {text:?}) {:.1} s after `up` started",
            t.elapsed().as_secs_f64()
        );
        assert!(tokens > 0 && !text.is_empty(), "{text:?}");
        if stop_with_down {
            let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
                .args(["testnet", "down", "--state"])
                .arg(&up.state)
                .output()
                .expect("run testnet down");
            assert!(
                out.status.success(),
                "down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "stopped 4 node(s)"
            );
        } else {
            sigint(up.child.id());
        }
        let (ok, lines) = up.wait_exit();
        assert!(ok, "up exits cleanly: {lines:?}");
        up.assert_nothing_left(&state);
    }
}

/// Whether network namespaces can be made here: as root, `ip netns add` and `del` work.
/// In CI (which runs as root on the same kind of machine) they must.
pub(crate) fn netns_available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false);
    // Unique per call: tests run side by side in one process.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("lamina-probe-{}-{n}", std::process::id());
    let works = root
        && Command::new("ip")
            .args(["netns", "add", &probe])
            .status()
            .is_ok_and(|s| s.success())
        && Command::new("ip")
            .args(["netns", "del", &probe])
            .status()
            .is_ok_and(|s| s.success());
    if !works {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI runs as root and must be able to create network namespaces (root: {root})"
        );
        eprintln!("SKIPPED: no network namespaces here (root: {root})");
    }
    works
}

/// Removes a `--netns` testnet's namespaces on drop (after a failure; `down` does it
/// otherwise).
struct RemoveNetns(Option<lamina_testnet::netns::NetnsState>);

impl Drop for RemoveNetns {
    fn drop(&mut self) {
        if let Some(ns) = &self.0 {
            let _ = lamina_testnet::netns::remove(ns);
        }
    }
}

/// Whether a TCP connection from namespace `netns` to `addr` (`ip:port`) succeeds
/// within 3 s (bash's /dev/tcp: no tools needed in the namespace).
fn reaches(netns: &str, addr: &str) -> bool {
    let (host, port) = addr.rsplit_once(':').expect("ip:port");
    Command::new("timeout")
        .args(["3", "ip", "netns", "exec", netns, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
        .stderr(Stdio::null())
        .status()
        .expect("run ip netns exec")
        .success()
}

fn lamina_ok(args: &[&str], state: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .arg("testnet")
        .args(args)
        .arg("--state")
        .arg(state)
        .output()
        .expect("run lamina testnet");
    assert!(
        out.status.success(),
        "lamina testnet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn netns_testnet_partitions_heals_and_leaves_no_namespace() {
    let Some(path) = model_path(STORIES) else {
        return;
    };
    if !netns_available() {
        return;
    }
    let dir = TempDir::new("testnet-netns");
    let mut up = Foreground::start(&path, 3, dir.path(), &["--netns"]);
    up.wait_up();
    let state = TestnetState::read(&up.state).expect("state file");
    let ns = state
        .netns
        .clone()
        .expect("the state file names the namespaces");
    let _cleanup = RemoveNetns(Some(ns.clone()));
    let listed = namespaces();
    for (n, nsn) in state.nodes.iter().zip(&ns.nodes) {
        assert_eq!(n.netns.as_deref(), Some(nsn.netns.as_str()));
        assert!(
            listed.contains(&nsn.netns),
            "{} exists: {listed}",
            nsn.netns
        );
        let api = n.api.as_deref().expect("api");
        assert_eq!(
            api,
            format!(
                "http://{}:{}",
                nsn.addr,
                api.rsplit(':').next().unwrap_or("")
            ),
            "{} serves its API on its namespace's address",
            n.id
        );
    }
    let (_, tokens, _) = chat(&state);
    assert!(tokens > 0, "a chat completion through the namespaces");

    let api = |i: usize| {
        state.nodes[i]
            .api
            .as_deref()
            .expect("api")
            .trim_start_matches("http://")
            .to_owned()
    };
    let netns = |i: usize| ns.nodes[i].netns.as_str();
    assert!(reaches(netns(0), &api(1)), "node-0 reaches node-1");
    let out = lamina_ok(&["partition", "node-1"], &up.state);
    assert!(out.contains("cut 2 link(s)"), "{out}");
    assert!(!reaches(netns(0), &api(1)), "node-0 is cut from node-1");
    assert!(!reaches(netns(2), &api(1)), "node-2 is cut from node-1");
    assert!(!reaches(netns(1), &api(0)), "node-1 is cut from node-0");
    assert!(reaches(netns(0), &api(2)), "node-0 still reaches node-2");
    let out = lamina_ok(&["heal"], &up.state);
    assert!(out.contains("healed"), "{out}");
    assert!(reaches(netns(0), &api(1)), "node-0 reaches node-1 again");
    assert!(reaches(netns(1), &api(0)), "node-1 reaches node-0 again");
    // One link only.
    let out = lamina_ok(&["partition", "node-0", "--from", "node-2"], &up.state);
    assert!(out.contains("cut 1 link(s)"), "{out}");
    assert!(!reaches(netns(0), &api(2)) && !reaches(netns(2), &api(0)));
    assert!(reaches(netns(0), &api(1)) && reaches(netns(1), &api(2)));
    lamina_ok(&["heal"], &up.state);
    let api0 = state.nodes[0].api.clone().expect("api");
    lamina_testnet::wait_redundant(&api0, 1, Duration::from_secs(60))
        .expect("node-0 sees every layer served again");
    let (_, tokens, _) = chat(&state);
    assert!(tokens > 0, "answers again after heal");

    sigint(up.child.id());
    let (ok, lines) = up.wait_exit();
    assert!(ok, "up exits cleanly after Ctrl-C: {lines:?}");
    up.assert_nothing_left(&state);
    let listed = namespaces();
    for n in &ns.nodes {
        assert!(
            !listed.contains(&n.netns),
            "{} is removed: {listed}",
            n.netns
        );
    }
    let bridge = Command::new("ip")
        .args(["link", "show", &ns.bridge])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("ip link show");
    assert!(!bridge.success(), "the bridge {} is removed", ns.bridge);
}

/// `--model` may name a synthetic preset (written once into the testnet folder), and
/// `--redundancy 2` / `--layers-per-node` fix the ranges: every layer on two nodes, or
/// chunks of N layers round-robin; the mesh they form answers.
#[test]
fn a_synthetic_preset_with_redundancy_or_layers_per_node_serves() {
    for (flags, want) in [
        (
            &["--redundancy", "2"][..],
            &["0..2", "0..2", "2..4", "2..4"][..],
        ),
        (
            &["--layers-per-node", "3"][..],
            &["0..3", "3..4", "0..3", "3..4"][..],
        ),
    ] {
        let dir = TempDir::new("testnet-synth");
        let state_path = dir.path().join("state.json");
        let guard = Down(state_path.clone());
        let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args([
                "testnet", "up", "--detach", "--nodes", "4", "--model", "tiny",
            ])
            .args(flags)
            .arg("--state")
            .arg(&state_path)
            .output()
            .expect("run testnet up");
        assert!(
            out.status.success(),
            "up {flags:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = TestnetState::read(&state_path).expect("state file");
        let layers: Vec<&str> = state.nodes.iter().map(|n| n.layers.as_str()).collect();
        assert_eq!(layers, want, "{flags:?}");
        let synth = dir.path().join("state.json.d").join("tiny-q8_0-seed0.gguf");
        assert!(
            synth.exists(),
            "the preset was written into the testnet folder"
        );
        let api = state.nodes[0].api.clone().expect("first node's API");
        let (status, v) = post(
            &api,
            &serde_json::json!({"prompt": "hello", "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(status, 200, "{flags:?}: {v}");
        assert_eq!(token_ids(&v).len(), 4, "{v}");
        let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
            .args(["testnet", "down", "--state"])
            .arg(&state_path)
            .output()
            .expect("run testnet down");
        assert!(out.status.success());
        for n in &state.nodes {
            assert!(!is_alive(n.pid), "{} still running after down", n.id);
        }
        drop(guard);
    }
    // Neither a file nor a preset: a clear error, nothing started.
    let dir = TempDir::new("testnet-bad");
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args([
            "testnet",
            "up",
            "--detach",
            "--nodes",
            "2",
            "--model",
            "no-such-preset",
        ])
        .arg("--state")
        .arg(dir.path().join("s.json"))
        .output()
        .expect("run testnet up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither a model file nor a synthetic preset"),
        "{err}"
    );
}
