//! `lamina-testnet`: local multi-node testnets. `up` starts N `lamina node` processes on
//! loopback (layers split evenly, each with its own data dir, log and ports chosen by the
//! OS, each in a process group of its own), or each in a network namespace of its own
//! ([`netns`]), reports their progress ([`events`]), waits until every node sees the
//! model covered, and records the nodes in a JSON state file; `down` stops the processes
//! the state file names and removes its namespaces. Whether `up`'s caller then stays in
//! the foreground is the caller's business (the `lamina` binary does, until Ctrl-C).
//!
//! This crate does not link `lamina-node`: it drives the `lamina` binary (whose
//! `testnet` subcommand calls it), so the dependency points node -> testnet and there is no
//! cycle. State file: `{"nodes": [{"id", "layers": "a..b", "api", "pid", "log", ...}]}`.

pub mod relay;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub mod control;
pub mod events;
pub mod netns;
pub mod placement;
pub mod uplink;
pub use control::{kill, restart, wait_redundant, Signal};
pub use events::{CancelFlag, Observer, UpEvent};

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
    /// How long to wait for every node to load its layers and bind, and for the mesh to
    /// cover the model.
    pub ready_timeout: Duration,
    /// How the nodes get their layers.
    pub placement: Placement,
    /// `--threads` of every node (default: the node's own default).
    pub threads: Option<usize>,
    /// More arguments for every `lamina node`.
    pub extra_args: Vec<String>,
    /// Shape every data-plane link (both directions) like this; on loopback this needs
    /// [`up_with_links`] (its relays); in namespaces a shaper holds what leaves each node
    /// ([`uplink`]).
    pub link: Option<relay::LinkSpec>,
    /// Told of every node's progress (for progress bars).
    pub observer: Option<Observer>,
    /// Makes `up` stop the nodes it started and give up when set.
    pub cancel: Option<CancelFlag>,
    /// Every node in a network namespace of its own (root only; see [`netns`]).
    pub netns: bool,
    /// The API keys file every node requires (`--api-keys`); without it, nodes whose API
    /// is not on loopback (`netns`) serve it open (`--api-open`).
    pub api_keys: Option<PathBuf>,
    /// An open mesh (`--open`); by default the testnet is a private mesh: `up` makes its
    /// authority in `DIR/mesh` and admits every node before it starts.
    pub open: bool,
    /// `--verify-rate` of every node (spot checks of the steps its API runs); testnets
    /// check [`DEFAULT_VERIFY_RATE`] of them by default, a daemon none.
    pub verify_rate: f64,
    /// Nodes started as adversaries for drills: (node index, `--adversary` mode).
    pub adversaries: Vec<(usize, String)>,
    /// Nodes behind a NAT of their own (`--netns` only; node 0 stays public).
    pub nat: Vec<(usize, netns::Nat)>,
    /// Nodes that serve as relays (`lamina node --relay`) for the NATed ones.
    pub relays: Vec<usize>,
}

/// The `--verify-rate` of testnet nodes unless told otherwise.
pub const DEFAULT_VERIFY_RATE: f64 = 0.05;

/// Parses `node-I=MODE` (a `--adversary` of `lamina testnet up`) into (I, MODE); the mode
/// itself is checked by the node.
pub fn parse_adversary(s: &str) -> Result<(usize, String), String> {
    let (node, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NODE=MODE (e.g. node-2=corrupt)"))?;
    let i = node
        .strip_prefix("node-")
        .and_then(|i| i.parse::<usize>().ok())
        .ok_or_else(|| format!("`{node}` is not a node id like node-2"))?;
    if mode.is_empty() {
        return Err(format!("`{s}` names no mode"));
    }
    Ok((i, mode.to_string()))
}

/// `--nat`'s value: `node-1=cone,node-2=symmetric` (comma-separated, repeatable).
pub fn parse_nats(s: &str) -> Result<Vec<(usize, netns::Nat)>, String> {
    s.split(',')
        .map(|one| {
            let (i, kind) = parse_adversary(one.trim()).map_err(|e| {
                e.replace(
                    "NODE=MODE (e.g. node-2=corrupt)",
                    "NODE=NAT (e.g. node-1=cone)",
                )
            })?;
            let nat = kind.parse::<netns::Nat>().map_err(|e| e.to_string())?;
            Ok((i, nat))
        })
        .collect()
}

/// A node id like `node-2`.
pub fn parse_node(s: &str) -> Result<usize, String> {
    s.strip_prefix("node-")
        .and_then(|i| i.parse::<usize>().ok())
        .ok_or_else(|| format!("`{s}` is not a node id like node-2"))
}

/// How testnet nodes get their layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `--layers` from an even split (deterministic: tests and benches).
    Even,
    /// No `--layers`: each node places itself, with a `--max-memory` that holds about
    /// `1/nodes` of the model, so the mesh must split it to cover it.
    Auto,
    /// These `--layers` values, one per node (`a..b`, `none` or `auto`).
    Fixed(Vec<String>),
    /// Every layer on this many nodes ([`placement::redundant`]).
    Redundant(usize),
    /// This many layers per node ([`placement::per_node`]).
    PerNode(usize),
}

impl UpOptions {
    /// Defaults for `nodes` nodes of `model`, files under `dir`.
    pub fn new(
        lamina_exe: PathBuf,
        nodes: usize,
        model: PathBuf,
        state: PathBuf,
        dir: PathBuf,
    ) -> Self {
        Self {
            lamina_exe,
            nodes,
            model,
            state,
            dir,
            ready_timeout: Duration::from_secs(300),
            placement: Placement::Even,
            threads: None,
            extra_args: Vec::new(),
            link: None,
            observer: None,
            cancel: None,
            netns: false,
            api_keys: None,
            open: false,
            verify_rate: DEFAULT_VERIFY_RATE,
            adversaries: Vec::new(),
            nat: Vec::new(),
            relays: Vec::new(),
        }
    }
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
    /// Data-plane (QUIC) address peers dial: the node's relay with link emulation.
    #[serde(default)]
    pub dataplane: String,
    /// With link emulation: the node's own data-plane socket behind its relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_listen: Option<String>,
    #[serde(default)]
    pub data_dir: PathBuf,
    /// libp2p peer id.
    #[serde(default)]
    pub peer_id: String,
    /// libp2p multiaddrs (with `/p2p/<peer id>`): where a new node can bootstrap.
    #[serde(default)]
    pub p2p: Vec<String>,
    /// The `lamina` arguments the node was started with (`lamina testnet restart` starts
    /// it again with them); empty in state files of older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The network namespace the node runs in (`up --netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// The state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestnetState {
    pub nodes: Vec<NodeState>,
    /// The namespaces and bridge of `up --netns`, which `down` removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<netns::NetnsState>,
    /// The private mesh's folder (its authority key): admit more nodes with
    /// `lamina mesh admit --mesh <this>`. `None`: an open mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<PathBuf>,
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
    api: Option<String>,
    layers: String,
    #[serde(default)]
    p2p: Vec<String>,
    #[serde(default)]
    peer_id: String,
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

/// A testnet started by [`up_with_links`]: its state and, with link emulation, the relays
/// (keep this value alive as long as the testnet is used).
#[derive(Debug)]
pub struct Testnet {
    pub state: TestnetState,
    pub links: Option<Links>,
}

/// The link-emulation relays of a testnet, one in front of each node's data plane, on a
/// runtime of their own. Dropping it stops them (the nodes then cannot reach each other's
/// data planes).
pub struct Links {
    spec: relay::LinkSpec,
    runtime: Option<tokio::runtime::Runtime>,
    /// `relays[i]` is in front of node `i`.
    relays: Vec<relay::RelayHandle>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("spec", &self.spec)
            .field("relays", &self.relays)
            .finish_non_exhaustive()
    }
}

impl Links {
    fn new(spec: relay::LinkSpec) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lamina-relay")
            .enable_all()
            .build()?;
        Ok(Self {
            spec,
            runtime: Some(runtime),
            relays: Vec::new(),
        })
    }

    /// A relay to `127.0.0.1:port` on a fresh loopback port.
    fn spawn(&self, port: u16, seed: u64) -> anyhow::Result<relay::RelayHandle> {
        let rt = self.runtime.as_ref().expect("links runtime");
        let _guard = rt.enter();
        let config = relay::RelayConfig {
            seed,
            ..Default::default()
        };
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Ok(relay::Relay::spawn_with(
            local, upstream, self.spec, self.spec, config,
        )?)
    }

    pub fn spec(&self) -> relay::LinkSpec {
        self.spec
    }

    /// The relays, in node order.
    pub fn relays(&self) -> &[relay::RelayHandle] {
        &self.relays
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            {
                let _guard = rt.enter();
                self.relays.clear();
            }
            // Safe in any context (even inside another runtime).
            rt.shutdown_background();
        }
    }
}

/// A free loopback UDP port (bound and released: another process may take it before the
/// node binds it, so callers retry on a bind failure).
fn pick_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    Ok(s.local_addr()?.port())
}

/// Starts a testnet and writes its state file. Refuses [`UpOptions::link`] (the relays
/// must outlive this call: use [`up_with_links`]).
pub fn up(opts: &UpOptions) -> anyhow::Result<TestnetState> {
    if opts.link.is_some() && !opts.netns {
        bail!("link emulation needs its relays kept running: use up_with_links");
    }
    Ok(up_with_links(opts)?.state)
}

/// Starts a testnet (with link emulation if [`UpOptions::link`] is set) and writes its
/// state file.
pub fn up_with_links(opts: &UpOptions) -> anyhow::Result<Testnet> {
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
    let layers: Vec<String> = match &opts.placement {
        Placement::Even => lamina_sharding::layers::even_split(n_layers, opts.nodes)?
            .iter()
            .map(|r| r.to_string())
            .collect(),
        Placement::Auto => vec!["auto".to_string(); opts.nodes],
        Placement::Redundant(k) => placement::redundant(n_layers, opts.nodes, *k)?
            .iter()
            .map(|r| r.to_string())
            .collect(),
        Placement::PerNode(per) => placement::per_node(n_layers, opts.nodes, *per)?
            .iter()
            .map(|r| r.to_string())
            .collect(),
        Placement::Fixed(v) => {
            if v.len() != opts.nodes {
                bail!("{} layer ranges for {} nodes", v.len(), opts.nodes);
            }
            v.clone()
        }
    };
    // A budget of ceil(L / N) layers (plus one layer of slack for the embedding and head
    // of the end shards) makes auto-placed nodes split the model between them.
    let max_memory = if opts.placement == Placement::Auto {
        let manifest = lamina_sharding::manifest::Manifest::compute(&model)?;
        let span = n_layers.div_ceil(opts.nodes.max(1));
        Some(manifest.budget_for_layers(span as u64).max(1))
    } else {
        None
    };
    drop(model);
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let model_path = std::fs::canonicalize(&opts.model)?;

    let emit = |e: UpEvent<'_>| {
        if let Some(o) = &opts.observer {
            o.emit(&e);
        }
    };
    // Made before the nodes start, so it is removed after they are killed when `up` fails.
    if !opts.nat.is_empty() && !opts.netns {
        bail!("--nat needs --netns (each NAT is a namespace)");
    }
    if let Some(i) = opts.relays.iter().find(|i| **i >= layers.len()) {
        bail!("--relay node-{i}: the testnet has {} nodes", layers.len());
    }
    if let Some((i, _)) = opts.nat.iter().find(|(i, _)| opts.relays.contains(i)) {
        bail!("--relay node-{i}: a relay must be reachable, and node-{i} is behind a NAT");
    }
    let namespaces = if opts.netns {
        let ns = netns::Netns::create_with_nats(layers.len(), &opts.nat)?;
        if let Some(spec) = &opts.link {
            ns.shape(&opts.lamina_exe, spec)?;
        }
        Some(ns)
    } else {
        None
    };
    // The address node `i` binds (behind a NAT, its LAN address).
    let host_of = |i: usize| -> String {
        match &namespaces {
            Some(ns) => ns.state.nodes[i].bind_addr().to_string(),
            None => "127.0.0.1".to_string(),
        }
    };
    // Its NAT gateway's public address, where the API port is forwarded.
    let nat_public = |i: usize| {
        namespaces
            .as_ref()
            .map(|ns| &ns.state.nodes[i])
            .filter(|n| n.nat.is_some())
            .map(|n| n.addr)
    };
    let nat_kind = |i: usize| {
        namespaces
            .as_ref()
            .and_then(|ns| ns.state.nodes[i].nat.as_ref())
            .map(|n| n.kind)
    };
    let ns_of = |i: usize| {
        namespaces
            .as_ref()
            .map(|ns| ns.state.nodes[i].netns.clone())
    };
    // A private mesh unless asked otherwise: the authority lives in DIR/mesh, each node is
    // admitted (by the peer id of its data dir) before its first start.
    let mesh_dir = if opts.open {
        None
    } else {
        let m = dir.join("mesh");
        if !m.join("mesh.key").exists() {
            run_lamina(&opts.lamina_exe, &["mesh", "create", "--out"], &[&m])?;
        }
        Some(m)
    };
    let mut members: Vec<Option<PathBuf>> = Vec::new();
    for i in 0..layers.len() {
        let Some(m) = &mesh_dir else {
            members.push(None);
            break;
        };
        let data_dir = dir.join(format!("node-{i}"));
        let peer = run_lamina(
            &opts.lamina_exe,
            &["node", "--print-peer-id", "--data-dir"],
            &[&data_dir],
        )?;
        let file = data_dir.join("member.json");
        let peer = peer.trim().to_string();
        std::process::Command::new(&opts.lamina_exe)
            .args(["mesh", "admit", "--peer", &peer, "--mesh"])
            .arg(m)
            .arg("--out")
            .arg(&file)
            .output()
            .with_context(|| format!("cannot run {}", opts.lamina_exe.display()))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "lamina mesh admit failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ))
                }
            })?;
        members.push(Some(file));
    }
    let mut started = Started(Vec::new());
    // In namespaces the uplink shapers shape the links (`Netns::shape`); on loopback, relays.
    let mut links = match opts.netns {
        true => None,
        false => opts.link.map(Links::new).transpose()?,
    };
    let mut nodes = Vec::new();
    let deadline = Instant::now() + opts.ready_timeout;
    let mut bootstrap: Option<String> = None;
    let mut node_args: Vec<Vec<String>> = Vec::new();
    let n_nodes = layers.len();
    // Starts node `i`: with link emulation, on a port picked here, behind a new relay.
    let start = |i: usize,
                 bootstrap: &Option<String>,
                 links: &mut Option<Links>|
     -> anyhow::Result<(Child, Vec<String>)> {
        let id = format!("node-{i}");
        let data_dir = dir.join(&id);
        let log = dir.join(format!("{id}.log"));
        let ready = dir.join(format!("{id}.ready.json"));
        let _ = std::fs::remove_file(&ready);
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let netns = ns_of(i);
        let mut cmd = match &netns {
            Some(ns) => netns::command_in(ns, &opts.lamina_exe),
            None => Command::new(&opts.lamina_exe),
        };
        // What `restart` runs again: the arguments of `lamina` itself.
        let own_args_from = cmd.get_args().count();
        cmd.arg("node")
            .arg("--model")
            .arg(&model_path)
            .arg("--layers")
            .arg(&layers[i]);
        match links {
            Some(links) => {
                let port = pick_udp_port()?;
                let relay = links.spawn(port, 2 * i as u64)?;
                cmd.arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--advertise-dataplane")
                    .arg(relay.local_addr().to_string());
                if i < links.relays.len() {
                    links.relays[i] = relay;
                } else {
                    links.relays.push(relay);
                }
            }
            None => {
                cmd.arg("--listen").arg(format!("{}:0", host_of(i)));
            }
        }
        match members.get(i).cloned().flatten() {
            Some(file) => {
                cmd.arg("--member").arg(file);
            }
            None => {
                cmd.arg("--open");
            }
        }
        let api_port = match (nat_public(i), nat_kind(i)) {
            (Some(public), Some(netns::Nat::Forwarded)) => {
                // Its operator forwarded the mesh port: it says where, and sessions
                // come over the mesh's connections (its data plane port is not open).
                let port = netns::NAT_MESH_PORT;
                cmd.arg("--p2p-listen")
                    .arg(format!("/ip4/{}/udp/{port}/quic-v1", host_of(i)))
                    .arg("--external-addr")
                    .arg(format!("/ip4/{public}/udp/{port}/quic-v1"))
                    .arg("--advertise-dataplane")
                    .arg("p2p");
                netns::NAT_API_PORT
            }
            (Some(_), _) => {
                // Nobody can dial its data plane: sessions reach it on the mesh's
                // connections (which it opens itself, or which reach it through a
                // relay's circuit and then, where the NATs allow, a punched hole).
                cmd.arg("--behind-nat");
                netns::NAT_API_PORT
            }
            (None, _) => 0,
        };
        if opts.relays.contains(&i) {
            cmd.arg("--relay");
        }
        if netns.is_some() {
            // Every address of a namespace testnet is private.
            cmd.arg("--autonat-private");
        }
        cmd.arg("--api")
            .arg(format!("{}:{api_port}", host_of(i)))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--name")
            .arg(&id)
            .args(&opts.extra_args)
            .env(
                "LAMINA_LOG",
                std::env::var("LAMINA_LOG").unwrap_or_else(|_| "lamina_node=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(m) = max_memory {
            cmd.arg("--max-memory").arg(m.to_string());
        }
        if let Some(t) = opts.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        cmd.arg("--verify-rate").arg(opts.verify_rate.to_string());
        for (_, mode) in opts.adversaries.iter().filter(|(n, _)| *n == i) {
            cmd.arg("--adversary").arg(mode);
        }
        if let Some(b) = bootstrap {
            cmd.arg("--bootstrap").arg(b);
        }
        cmd.args(api_access_args(
            opts.api_keys.as_deref(),
            &data_dir,
            netns.is_some(),
        ));
        let args: Vec<String> = cmd
            .get_args()
            .skip(own_args_from)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // A process group of its own: a Ctrl-C in the terminal reaches `up` only, which
        // then stops the nodes in order (and a `--detach`ed testnet survives it).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", opts.lamina_exe.display()))?;
        emit(UpEvent::Started {
            index: i,
            id: &id,
            layers: &layers[i],
            log: &log,
        });
        Ok((child, args))
    };
    for i in 0..n_nodes {
        let (child, args) = start(i, &bootstrap, &mut links)?;
        node_args.push(args);
        started.0.push(child);
        // The first node is everyone's bootstrap peer, so it must be up before the rest
        // start; the others start together.
        if i == 0 || i + 1 == n_nodes {
            for j in nodes.len()..started.0.len() {
                let (jid, jlog, jready, jdir) = (
                    format!("node-{j}"),
                    dir.join(format!("node-{j}.log")),
                    dir.join(format!("node-{j}.ready.json")),
                    dir.join(format!("node-{j}")),
                );
                let mut retries = 0;
                let info = loop {
                    match wait_ready(
                        &mut started.0[j],
                        &jid,
                        &jready,
                        &jlog,
                        deadline,
                        opts.ready_timeout,
                        opts.cancel.as_ref(),
                    ) {
                        Ok(info) => break info,
                        // Someone took the data-plane port picked for it: a new port.
                        Err(_)
                            if links.is_some()
                                && retries < 3
                                && tail(&jlog).contains("cannot listen on 127.0.0.1:") =>
                        {
                            retries += 1;
                            let b = if j == 0 { None } else { bootstrap.clone() };
                            let (child, args) = start(j, &b, &mut links)?;
                            started.0[j] = child;
                            node_args[j] = args;
                        }
                        Err(e) => return Err(e),
                    }
                };
                if j == 0 {
                    bootstrap = bootstrap_addr(&info.p2p);
                }
                let relay = links.as_ref().map(|l| l.relays[j].local_addr().to_string());
                nodes.push(NodeState {
                    id: jid,
                    layers: info.layers,
                    api: info.api.map(|a| match nat_public(j) {
                        Some(public) => format!("http://{public}:{}", netns::NAT_API_PORT),
                        None => format!("http://{a}"),
                    }),
                    pid: started.0[j].id(),
                    log: jlog,
                    dataplane: relay.clone().unwrap_or_else(|| info.listen.clone()),
                    dataplane_listen: relay.map(|_| info.listen),
                    data_dir: jdir,
                    peer_id: info.peer_id,
                    p2p: info.p2p,
                    args: node_args.get(j).cloned().unwrap_or_default(),
                    netns: ns_of(j),
                });
                if let Some(node) = nodes.last() {
                    emit(UpEvent::Ready { index: j, node });
                }
            }
        }
    }
    let state = TestnetState {
        nodes,
        netns: namespaces.as_ref().map(|ns| ns.state.clone()),
        mesh: mesh_dir.clone(),
    };
    write_atomic(&opts.state, &serde_json::to_vec_pretty(&state)?)?;
    // Up means usable: every node's view of the mesh covers the model.
    for n in &state.nodes {
        let Some(api) = &n.api else { continue };
        wait_covered(api, deadline, opts.cancel.as_ref()).with_context(|| {
            format!(
                "{} never saw the model covered; see {}",
                n.id,
                n.log.display()
            )
        })?;
    }
    let mut state = state;
    for n in &mut state.nodes {
        if let Some(api) = &n.api {
            if let Ok(layers) = own_layers(api) {
                n.layers = layers;
            }
        }
    }
    write_atomic(&opts.state, &serde_json::to_vec_pretty(&state)?)?;
    for (index, node) in state.nodes.iter().enumerate() {
        emit(UpEvent::Serving { index, node });
    }
    for c in std::mem::take(&mut started.0) {
        drop(c);
    }
    if let Some(ns) = namespaces {
        ns.keep();
    }
    Ok(Testnet { state, links })
}

/// The address to bootstrap through: QUIC if the node listens on it.
pub fn bootstrap_addr(p2p: &[String]) -> Option<String> {
    p2p.iter()
        .find(|a| a.contains("/quic-v1/"))
        .or(p2p.first())
        .cloned()
}

fn wait_ready(
    child: &mut Child,
    id: &str,
    ready: &Path,
    log: &Path,
    deadline: Instant,
    timeout: Duration,
    cancel: Option<&CancelFlag>,
) -> anyhow::Result<Ready> {
    loop {
        if cancel.is_some_and(CancelFlag::is_cancelled) {
            bail!("cancelled while {id} was starting");
        }
        if let Ok(text) = std::fs::read_to_string(ready) {
            if let Ok(r) = serde_json::from_str::<Ready>(&text) {
                return Ok(r);
            }
        }
        if let Some(status) = child.try_wait().ok().flatten() {
            bail!(
                "{id} exited ({status}) before it was ready; its log {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{id} was not ready within {timeout:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The API access flags of a testnet node: the shared keys file (or, off loopback, an
/// open API), and an audit log in its data dir.
fn api_access_args(
    keys: Option<&Path>,
    data_dir: &Path,
    off_loopback: bool,
) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    match keys {
        Some(k) => {
            v.push("--api-keys".into());
            v.push(k.into());
        }
        None if off_loopback => v.push("--api-open".into()),
        None => {}
    }
    v.push("--audit-log".into());
    v.push(data_dir.join("audit.jsonl").into());
    v
}

/// `GET {api}/status` as JSON.
pub fn status(api: &str) -> anyhow::Result<serde_json::Value> {
    let body = ureq::get(&format!("{api}/status"))
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| format!("GET {api}/status"))?
        .into_string()?;
    Ok(serde_json::from_str(&body)?)
}

fn wait_covered(api: &str, deadline: Instant, cancel: Option<&CancelFlag>) -> anyhow::Result<()> {
    loop {
        if cancel.is_some_and(CancelFlag::is_cancelled) {
            bail!("cancelled while waiting for the model to be covered");
        }
        if let Ok(s) = status(api) {
            if s["complete"].as_bool() == Some(true) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the model is not covered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The layers a node serves now (auto-placed nodes may have moved since they were ready).
fn own_layers(api: &str) -> anyhow::Result<String> {
    let s = status(api)?;
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    let me = peers
        .iter()
        .find(|p| p["self"].as_bool() == Some(true))
        .context("no own record")?;
    Ok(me["layers"].as_str().unwrap_or("none").to_string())
}

/// Stops every node in the state file (SIGTERM to all at once, then SIGKILL to those still
/// alive after 10 s) and removes the state file. Returns how many were running. Only
/// processes that still look like a `lamina node` are signalled (a pid may have been
/// reused).
pub fn down(state_path: &Path) -> anyhow::Result<usize> {
    let state = TestnetState::read(state_path)?;
    let running: Vec<&NodeState> = state.nodes.iter().filter(|n| is_our_node(n.pid)).collect();
    for n in &running {
        signal(n.pid, "TERM");
    }
    let wait_all = |t: Duration| {
        let deadline = Instant::now() + t;
        while running.iter().any(|n| is_alive(n.pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_all(Duration::from_secs(10));
    for n in running.iter().filter(|n| is_alive(n.pid)) {
        signal(n.pid, "KILL");
    }
    wait_all(Duration::from_secs(5));
    if let Some(n) = running.iter().find(|n| is_alive(n.pid)) {
        bail!("{} (pid {}) did not stop", n.id, n.pid);
    }
    let stopped = running.len();
    if let Some(ns) = &state.netns {
        netns::remove(ns)?;
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

/// Runs `lamina <args> <paths>` to completion and returns its stdout; its stderr is the
/// error when it fails.
fn run_lamina(exe: &Path, args: &[&str], paths: &[&Path]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .args(paths)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "`lamina {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversaries_are_node_ids_and_modes() {
        assert_eq!(
            parse_adversary("node-2=corrupt:0.25"),
            Ok((2, "corrupt:0.25".to_string()))
        );
        assert!(parse_adversary("node-2").is_err());
        assert!(parse_adversary("2=stall").is_err());
        assert!(parse_adversary("node-x=stall").is_err());
        assert!(parse_adversary("node-1=").is_err());
    }
}
