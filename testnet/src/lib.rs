//! `lamina-testnet`: local multi-node testnets. `up` starts N `lamina node` processes on
//! loopback (layers split evenly, each with its own data dir, log and ports chosen by the
//! OS), writes the chain file every node's HTTP API runs requests through, and records the
//! nodes in a JSON state file; `down` stops the processes the state file names.
//!
//! This crate does not link `lamina-node`: it drives the `lamina` binary (whose
//! `testnet` subcommand calls it), so the dependency points node -> testnet and there is no
//! cycle. State file: `{"nodes": [{"id", "layers": "a..b", "api", "pid", "log", ...}],
//! "chain": FILE}`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// How to start a testnet.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The `lamina` binary.
    pub lamina_exe: PathBuf,
    pub nodes: usize,
    pub model: PathBuf,
    pub state: PathBuf,
    /// Data dirs, logs, ready files and the chain file go here.
    pub dir: PathBuf,
    /// How long to wait for every node to load its layers and bind.
    pub ready_timeout: Duration,
}

/// One node of a running testnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: String,
    pub layers: String,
    /// HTTP API address (`POST /v1/completions`).
    pub api: Option<String>,
    pub pid: u32,
    pub log: PathBuf,
    /// Data-plane (QUIC) address.
    #[serde(default)]
    pub dataplane: String,
    /// blake3 fingerprint of the node's certificate.
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub data_dir: PathBuf,
}

/// The state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestnetState {
    pub nodes: Vec<NodeState>,
    #[serde(default)]
    pub chain: Option<PathBuf>,
}

impl TestnetState {
    /// Reads a state file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read state file {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("state file {}", path.display()))
    }
}

#[derive(Deserialize)]
struct Ready {
    listen: String,
    fingerprint: String,
    api: Option<String>,
}

/// Kills the started children unless disarmed (when `up` fails half way).
struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a testnet and writes its state file.
pub fn up(opts: &UpOptions) -> anyhow::Result<TestnetState> {
    if opts.state.exists() {
        let old = TestnetState::read(&opts.state)?;
        if old.nodes.iter().any(|n| is_our_node(n.pid)) {
            bail!(
                "{} names running nodes; run `lamina testnet down --state {}` first",
                opts.state.display(),
                opts.state.display()
            );
        }
    }
    let model = lamina_sharding::source::ModelFile::open(&opts.model)
        .with_context(|| format!("cannot load {}", opts.model.display()))?;
    let n_layers = model.config()?.n_layers;
    drop(model);
    let split = lamina_sharding::layers::even_split(n_layers, opts.nodes)?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let model_path = std::fs::canonicalize(&opts.model)?;
    let chain_file = dir.join("chain.json");
    let _ = std::fs::remove_file(&chain_file);

    let mut started = Started(Vec::new());
    let mut pending = Vec::new();
    for (i, range) in split.iter().enumerate() {
        let id = format!("node-{i}");
        let data_dir = dir.join(&id);
        let log = dir.join(format!("{id}.log"));
        let ready = dir.join(format!("{id}.ready.json"));
        let _ = std::fs::remove_file(&ready);
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&opts.lamina_exe)
            .arg("node")
            .arg("--model")
            .arg(&model_path)
            .arg("--layers")
            .arg(range.to_string())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--no-mdns",
            ])
            .arg("--api-chain")
            .arg(&chain_file)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--name")
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", opts.lamina_exe.display()))?;
        pending.push((id, range.to_string(), log, ready, data_dir, child.id()));
        started.0.push(child);
    }

    let deadline = Instant::now() + opts.ready_timeout;
    let mut nodes = Vec::new();
    for (i, (id, layers, log, ready, data_dir, pid)) in pending.into_iter().enumerate() {
        let info: Ready = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(r) = serde_json::from_str::<Ready>(&text) {
                    break r;
                }
            }
            if let Some(status) = started
                .0
                .get_mut(i)
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{id} exited ({status}) before it was ready; its log {}:\n{}",
                    log.display(),
                    tail(&log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{id} was not ready within {:?}; see {}",
                    opts.ready_timeout,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        nodes.push(NodeState {
            id,
            layers,
            // A URL a person or an HTTP client can use as is.
            api: info.api.map(|a| format!("http://{a}")),
            pid,
            log,
            dataplane: info.listen,
            fingerprint: info.fingerprint,
            data_dir,
        });
    }
    let chain: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| serde_json::json!({"layers": n.layers, "addr": n.dataplane, "fingerprint": n.fingerprint}))
        .collect();
    write_atomic(&chain_file, &serde_json::to_vec_pretty(&chain)?)?;
    let state = TestnetState {
        nodes,
        chain: Some(chain_file),
    };
    write_atomic(&opts.state, &serde_json::to_vec_pretty(&state)?)?;
    // The nodes outlive this process: disarm the guard without killing them.
    for c in std::mem::take(&mut started.0) {
        drop(c);
    }
    Ok(state)
}

/// Stops every node in the state file (SIGTERM, then SIGKILL after 10 s) and removes the
/// state file. Returns how many were running. Only processes that still look like a
/// `lamina node` are signalled (a pid may have been reused).
pub fn down(state_path: &Path) -> anyhow::Result<usize> {
    let state = TestnetState::read(state_path)?;
    let mut stopped = 0;
    for n in &state.nodes {
        if !is_our_node(n.pid) {
            continue;
        }
        stopped += 1;
        signal(n.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(n.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_alive(n.pid) {
            signal(n.pid, "KILL");
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(n.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if is_alive(n.pid) {
            bail!("{} (pid {}) did not stop", n.id, n.pid);
        }
    }
    std::fs::remove_file(state_path)
        .with_context(|| format!("cannot remove {}", state_path.display()))?;
    Ok(stopped)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is a live process (zombies count as gone). Linux: reads /proc.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and runs `lamina node`.
pub fn is_our_node(pid: u32) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            args.get(1).is_some_and(|a| *a == b"node")
        }
        Err(_) => false,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
