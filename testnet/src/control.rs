//! Control of single nodes of a running testnet: `kill` one (SIGKILL or SIGTERM),
//! `restart` it (same data dir, so the same peer id and certificate; same layers and model;
//! bootstrapping through a node that is alive) and `status` (which nodes are alive, and the
//! mesh's coverage as one live node sees it). The state file is rewritten atomically when a
//! node gets a new pid or new addresses.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::{bootstrap_addr, is_alive, is_our_node, NodeState, TestnetState};

/// How long `restart` waits for the node to load its layers and bind.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(300);

/// The signal `kill` sends.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: the node dies at once (a crash, a pulled plug).
    #[default]
    Kill,
    /// SIGTERM: the node withdraws its announcement and drains its sessions first.
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
        }
    }
}

impl FromStr for Signal {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let s_up = s.to_ascii_uppercase();
        match s_up.trim_start_matches("SIG") {
            "KILL" | "9" => Ok(Signal::Kill),
            "TERM" | "15" => Ok(Signal::Term),
            _ => bail!("unknown signal {s:?} (KILL or TERM)"),
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn find<'a>(state: &'a TestnetState, node_id: &str) -> anyhow::Result<&'a NodeState> {
    state
        .nodes
        .iter()
        .find(|n| n.id == node_id)
        .with_context(|| {
            let ids: Vec<&str> = state.nodes.iter().map(|n| n.id.as_str()).collect();
            format!(
                "no node {node_id} in the testnet (nodes: {})",
                ids.join(", ")
            )
        })
}

/// Sends `signal` to the node `node_id` of the testnet in `state` and waits until it is
/// gone (10 s for SIGKILL, 30 s for SIGTERM, which drains sessions first). Returns `false`
/// if the node was not running. The state file is left as it is: a dead pid reads as
/// not alive, and `restart` needs the entry.
pub fn kill(state: &Path, node_id: &str, signal: Signal) -> anyhow::Result<bool> {
    let st = TestnetState::read(state)?;
    let n = find(&st, node_id)?;
    if !is_our_node(n.pid) {
        return Ok(false);
    }
    crate::signal(n.pid, signal.name());
    let wait = match signal {
        Signal::Kill => Duration::from_secs(10),
        Signal::Term => Duration::from_secs(30),
    };
    let deadline = Instant::now() + wait;
    while is_alive(n.pid) {
        if Instant::now() > deadline {
            bail!(
                "{node_id} (pid {}) is still alive {wait:?} after SIG{signal}",
                n.pid
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// The arguments with every `--bootstrap X` removed, and the value of `--ready-file`.
fn strip_bootstrap(args: &[String]) -> (Vec<String>, Option<PathBuf>) {
    let mut out = Vec::with_capacity(args.len());
    let mut ready = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--bootstrap" {
            it.next();
            continue;
        }
        if a.starts_with("--bootstrap=") {
            continue;
        }
        if a == "--ready-file" {
            if let Some(v) = it.next() {
                ready = Some(PathBuf::from(v));
                out.push(a.clone());
                out.push(v.clone());
            }
            continue;
        }
        out.push(a.clone());
    }
    (out, ready)
}

/// Starts the (dead) node `node_id` again with the command line `up` recorded: the same
/// data dir (so the same peer id and certificate), layers and model, bootstrapping through
/// a live node of the testnet (none if it is the only one). Waits until the node is ready,
/// then records its new pid and addresses in the state file and returns its entry. The
/// node's log is appended to.
pub fn restart(state: &Path, node_id: &str, lamina_exe: &Path) -> anyhow::Result<NodeState> {
    let st = TestnetState::read(state)?;
    let n = find(&st, node_id)?.clone();
    if is_our_node(n.pid) {
        bail!(
            "{node_id} (pid {}) is running; kill it first (`lamina testnet kill {node_id}`)",
            n.pid
        );
    }
    if n.args.is_empty() {
        bail!(
            "{} has no command line for {node_id} (written by an older lamina); start the testnet again",
            state.display()
        );
    }
    let boot = st
        .nodes
        .iter()
        .filter(|o| o.id != n.id && is_our_node(o.pid))
        .find_map(|o| bootstrap_addr(&o.p2p));
    let (mut args, ready) = strip_bootstrap(&n.args);
    if let Some(b) = &boot {
        args.push("--bootstrap".into());
        args.push(b.clone());
    }
    let ready = ready.with_context(|| format!("{node_id}'s command line has no --ready-file"))?;
    let _ = std::fs::remove_file(&ready);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)
        .with_context(|| format!("cannot open {}", n.log.display()))?;
    writeln!(
        out,
        "--- lamina testnet restart {node_id} (bootstrap {}) ---",
        boot.as_deref().unwrap_or("none")
    )?;
    let err = out.try_clone()?;
    let mut cmd = match &n.netns {
        Some(ns) => crate::netns::command_in(ns, lamina_exe),
        None => Command::new(lamina_exe),
    };
    // Its own process group, as `up` starts them (see there).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(&args)
        .env(
            "LAMINA_LOG",
            std::env::var("LAMINA_LOG").unwrap_or_else(|_| "lamina_node=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", lamina_exe.display()))?;
    let deadline = Instant::now() + RESTART_TIMEOUT;
    let info = match crate::wait_ready(
        &mut child,
        node_id,
        &ready,
        &n.log,
        deadline,
        RESTART_TIMEOUT,
        None,
    ) {
        Ok(i) => i,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let node = NodeState {
        layers: info.layers,
        api: info.api.map(|a| format!("http://{a}")),
        pid: child.id(),
        dataplane: info.listen,
        peer_id: info.peer_id,
        p2p: info.p2p,
        ..n
    };
    // Re-read: another node may have been restarted meanwhile.
    let mut st = TestnetState::read(state)?;
    if let Some(slot) = st.nodes.iter_mut().find(|o| o.id == node.id) {
        *slot = node.clone();
    }
    crate::write_atomic(state, &serde_json::to_vec_pretty(&st)?)?;
    // The child is not waited for: the node outlives this call (and `lamina testnet
    // restart`); `down` and `kill` stop it by pid.
    drop(child);
    Ok(node)
}

/// One node in [`status`].
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub alive: bool,
    pub pid: u32,
    pub layers: String,
    pub api: Option<String>,
    pub peer_id: String,
}

/// [`status`]: the nodes, and the mesh as one live node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct TestnetStatus {
    pub nodes: Vec<NodeStatus>,
    /// The node whose `/status` gave `complete` and `coverage`.
    pub seen_by: Option<String>,
    pub complete: Option<bool>,
    /// Servers per layer.
    pub coverage: Vec<u64>,
    pub uncovered: Vec<String>,
}

/// Which nodes of the testnet are alive, their layers and APIs, and the coverage of the
/// model as the first live node with an API sees it.
pub fn status(state: &Path) -> anyhow::Result<TestnetStatus> {
    let st = TestnetState::read(state)?;
    let nodes: Vec<NodeStatus> = st
        .nodes
        .iter()
        .map(|n| NodeStatus {
            id: n.id.clone(),
            alive: is_our_node(n.pid),
            pid: n.pid,
            layers: n.layers.clone(),
            api: n.api.clone(),
            peer_id: n.peer_id.clone(),
        })
        .collect();
    let mut out = TestnetStatus {
        nodes,
        seen_by: None,
        complete: None,
        coverage: Vec::new(),
        uncovered: Vec::new(),
    };
    for n in out.nodes.iter().filter(|n| n.alive) {
        let Some(api) = &n.api else { continue };
        let Ok(s) = crate::status(api) else { continue };
        out.seen_by = Some(n.id.clone());
        out.complete = s["complete"].as_bool();
        out.coverage = s["coverage"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l["servers"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        out.uncovered = s["uncovered"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        break;
    }
    Ok(out)
}

/// Waits until the node at `api` sees every layer served by at least `servers` reachable
/// peers, and none of the serving peers is banned by it (a peer that failed a generation
/// is avoided for a while even after it came back; `/status` says how long in
/// `banned_for_ms`). Returns the last `/status`.
pub fn wait_redundant(
    api: &str,
    servers: u64,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(s) = crate::status(api) {
            let covered = s["coverage"].as_array().is_some_and(|c| {
                !c.is_empty() && c.iter().all(|l| l["servers"].as_u64() >= Some(servers))
            });
            let clear = s["peers"].as_array().is_some_and(|ps| {
                ps.iter().all(|p| {
                    p["reachable"].as_bool() != Some(false)
                        && p["banned_for_ms"].as_u64().unwrap_or(0) == 0
                })
            });
            if covered && clear {
                return Ok(s);
            }
            last = s;
        }
        if Instant::now() > deadline {
            bail!("the mesh did not get {servers} usable servers per layer back within {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!("KILL".parse::<Signal>().unwrap(), Signal::Kill);
        assert_eq!("sigterm".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::Kill);
        assert!("HUP".parse::<Signal>().is_err());
    }

    #[test]
    fn restart_drops_old_bootstraps_and_finds_the_ready_file() {
        let args: Vec<String> = [
            "node",
            "--bootstrap",
            "/ip4/1",
            "--ready-file",
            "/t/r.json",
            "--bootstrap=/ip4/2",
            "--name",
            "node-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (out, ready) = strip_bootstrap(&args);
        assert_eq!(
            out,
            ["node", "--ready-file", "/t/r.json", "--name", "node-1"]
        );
        assert_eq!(ready, Some(PathBuf::from("/t/r.json")));
    }
}
