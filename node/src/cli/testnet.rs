//! `lamina demo` and `lamina testnet`: local meshes of node processes.

use clap::Args;
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

use super::parse::{parse_node_count, parse_threads};
use super::OutputFormat;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The model (default: SmolLM2-135M-Instruct, pulled into the model cache if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 3, value_parser = parse_node_count)]
    pub nodes: usize,
    /// The prompt (a chat message for models with a chat template).
    #[arg(default_value = "Write a haiku about a lighthouse.")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Stop the mesh after answering instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

// `Up` carries every flag of `testnet up`; the command is parsed once per process, so
// its size costs nothing worth boxing the variant for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum TestnetCommand {
    /// Start N nodes on loopback, layers split evenly, write the state file, and keep
    /// them running until Ctrl-C (or `down`); `--detach` returns once they serve.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The model file every node serves a part of, or the name of a synthetic preset
        /// (`tiny`, `tinyllama-1.1b`, ...: `lamina model synth --help`), written once as
        /// Q8_0 (seed 0) into the testnet folder.
        #[arg(long)]
        model: PathBuf,
        /// The state file to write (JSON).
        #[arg(long)]
        state: PathBuf,
        /// Every layer on K nodes: the nodes form K groups, each splitting the model
        /// evenly (so any one node may die with every layer still served).
        #[arg(long, conflicts_with_all = ["layers_per_node", "placement"])]
        redundancy: Option<usize>,
        /// N consecutive layers per node, the chunks assigned round-robin.
        #[arg(long, conflicts_with_all = ["redundancy", "placement"])]
        layers_per_node: Option<usize>,
        /// Folder for data dirs and logs (default: STATE.d).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// `even`: layers split evenly by `--layers`; `auto`: every node places itself
        /// within a memory budget of about 1/N of the model.
        #[arg(long, value_enum, default_value_t = PlacementArg::Even)]
        placement: PlacementArg,
        /// Compute threads of every node.
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// Return once the model is covered and leave the nodes running (stop them with
        /// `lamina testnet down --state FILE`) instead of staying up until Ctrl-C. Not
        /// with link emulation on loopback (`up` owns its relays).
        #[arg(long)]
        detach: bool,
        /// Run every node in a network namespace of its own, joined by veth pairs to a
        /// bridge (root only; addresses in 10.213.0.0/16, nothing leaves the machine), so
        /// `lamina testnet partition` can cut links. Link flags then shape every node's
        /// uplink (NFQUEUE and iptables; a relayed datagram crosses two).
        #[arg(long)]
        netns: bool,
        /// With --netns: put nodes behind a NAT of their own, e.g.
        /// node-1=cone,node-2=symmetric (nftables; node-0, the bootstrap, stays public).
        /// Their API port is forwarded; the rest of their traffic is NATed, and they
        /// serve sessions over the mesh's connections (`lamina node --behind-nat`).
        #[arg(long, value_name = "NODE=NAT,...", requires = "netns", value_parser = lamina_testnet::parse_nats)]
        nat: Vec<Vec<(usize, lamina_testnet::netns::Nat)>>,
        /// Make these nodes circuit relays (`lamina node --relay`), e.g. node-0
        /// (repeatable): NATed nodes reserve circuits on them, and peers that cannot reach
        /// each other directly meet through them until DCUtR punches a hole.
        #[arg(long, value_name = "NODE", value_parser = lamina_testnet::parse_node)]
        relay: Vec<usize>,
        /// An open mesh. By default the testnet is a private mesh: its authority key in
        /// DIR/mesh (named in the state file), every node admitted before it starts.
        #[arg(long)]
        open: bool,
        /// Link emulation: one-way delay added on every data-plane link, e.g. 20ms. On
        /// loopback any link flag keeps `up` running (it owns the relays) until Ctrl-C
        /// stops the nodes; with --netns a shaper holds what leaves each node.
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        latency: Option<std::time::Duration>,
        /// Link emulation: delay jitter (uniform ±), e.g. 2ms; never reorders datagrams.
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        jitter: Option<std::time::Duration>,
        /// Link emulation: datagram loss, e.g. 0.1%.
        #[arg(long, value_parser = lamina_testnet::relay::parse_loss)]
        loss: Option<f64>,
        /// Link emulation: bandwidth per link direction, e.g. 100mbit, 1gbit, 500kbit.
        #[arg(long, value_parser = lamina_testnet::relay::parse_bandwidth)]
        bandwidth: Option<u64>,
        /// Every node requires keys of this file (`lamina keys add`) on its API.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
        /// The fraction of steps every node's API spot-checks on other servers.
        #[arg(long, default_value_t = lamina_testnet::DEFAULT_VERIFY_RATE)]
        verify_rate: f64,
        /// DRILLS ONLY: start a node as an adversary, e.g. node-2=corrupt (modes:
        /// corrupt[:fraction], huge-token[:fraction], stall, inflate, flood). Repeatable.
        #[arg(long, value_name = "NODE=MODE", value_parser = lamina_testnet::parse_adversary)]
        adversary: Vec<(usize, String)>,
    },
    /// Stop the nodes of a testnet (and remove its namespaces).
    Down {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Kill one node of a testnet (SIGKILL by default: a crash).
    Kill {
        /// The node's id, e.g. node-1.
        node: String,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
        /// KILL (at once) or TERM (withdraw and drain first).
        #[arg(long, default_value = "KILL")]
        signal: lamina_testnet::Signal,
    },
    /// Start a dead node of a testnet again: same data dir (same peer id), layers and
    /// model, bootstrapping through a live node.
    Restart {
        /// The node's id, e.g. node-1.
        node: String,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Cut the links between some nodes of a `--netns` testnet (until `heal`).
    Partition {
        /// The nodes on one side, e.g. node-0,node-1.
        #[arg(value_delimiter = ',', required = true)]
        side: Vec<String>,
        /// The nodes on the other side (default: every node not in SIDE).
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Restore every link `partition` cut.
    Heal {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// INTERNAL: the uplink shaper `up --netns` starts in each node's namespace with link
    /// flags (holds what leaves eth0, through NFQUEUE, until the link says).
    #[command(hide = true)]
    ShapeUplink {
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        latency: std::time::Duration,
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        jitter: Option<std::time::Duration>,
        #[arg(long, value_parser = lamina_testnet::relay::parse_loss)]
        loss: Option<f64>,
        #[arg(long, value_parser = lamina_testnet::relay::parse_bandwidth)]
        bandwidth: Option<u64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Which nodes of a testnet are alive, their layers and APIs, and the coverage.
    Status {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    Even,
    Auto,
}
