//! `lamina node`: every flag of a node (turned into a `NodeConfig` in `config.rs`).

use clap::Args;
use std::path::PathBuf;

use super::parse::{
    parse_bytes, parse_count, parse_layers_choice, parse_max_sessions, parse_threads,
};
use super::LayersChoice;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The model file (GGUF or safetensors directory).
    #[arg(long, required_unless_present = "print_peer_id")]
    pub model: Option<PathBuf>,
    /// Join the private mesh of this member file (`lamina mesh admit ... --out FILE`):
    /// only peers with a certificate of the same mesh are let in.
    #[arg(long, value_name = "FILE", conflicts_with = "open")]
    pub member: Option<PathBuf>,
    /// Join an open mesh: anyone who can reach this node may join it and use it.
    #[arg(long)]
    pub open: bool,
    /// Print the peer id of --data-dir (making its key if needed) and exit, so that an
    /// operator can admit a node before its first start.
    #[arg(long)]
    pub print_peer_id: bool,
    /// The layers to serve: `a..b`, `none` (join, route and serve the API only), or
    /// `auto` (default): the range that raises the mesh's weakest coverage most within
    /// `--max-memory`.
    #[arg(long, default_value = "auto", value_parser = parse_layers_choice)]
    pub layers: LayersChoice,
    /// Memory for weights, e.g. 512MiB, 2GiB, 100000000 (default: the whole model).
    #[arg(long, value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// The data-plane (QUIC, UDP) address; port 0 picks a free one (printed when ready).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The data-plane address announced to the mesh, when peers must dial something in
    /// front of --listen (a NAT mapping). `p2p`: sessions run as streams on the mesh's own
    /// libp2p connections, however those reach this node. Default: the bound --listen
    /// address.
    #[arg(long, value_name = "ADDR")]
    pub advertise_dataplane: Option<String>,
    /// libp2p listen multiaddrs (default: QUIC and TCP on the --listen host, any port).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// An address at which peers reach this node's mesh listener through a port the
    /// operator forwarded, e.g. /ip4/203.0.113.7/udp/4001/quic-v1 (repeat): announced
    /// first and taken as reachable (with `--p2p-listen` on the forwarded port).
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addr: Vec<libp2p::Multiaddr>,
    /// Ask the router for port mappings (UPnP IGD) and announce the mapped address; off
    /// by default. `/status` says what the router answered (`upnp`).
    #[arg(long)]
    pub upnp: bool,
    /// Peers to join through, e.g. /ip4/10.0.0.5/udp/4001/quic-v1/p2p/12D3Koo... (repeat).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Discover peers on the LAN with mDNS (off by default).
    #[arg(long)]
    pub mdns: bool,
    /// Where the node keeps its keys (p2p identity, data-plane certificate).
    #[arg(long, default_value = ".lamina")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /// /v1/models, /status, /metrics) on this address.
    #[arg(long)]
    pub api: Option<std::net::SocketAddr>,
    /// Route API requests through this fixed chain file (read on every request) instead
    /// of planning routes from the mesh.
    #[arg(long)]
    pub api_chain: Option<PathBuf>,
    /// Generations the HTTP API runs at once; more are answered 429.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub api_max_concurrent: u64,
    #[command(flatten)]
    pub api_access: ApiAccessArgs,
    /// As the entry of the API's requests, run the model's embedding, final norm, head and
    /// sampling here, so the hops see hidden states only (never token ids or text); the
    /// tokens are the same as without it.
    #[arg(long)]
    pub private_ends: bool,
    /// Also write the ready line (JSON) to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Name in logs and handshakes.
    #[arg(long)]
    pub name: Option<String>,
    /// Compute threads (default: the physical cores).
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// The fraction of its API's generation steps this entry re-runs on other servers of
    /// the same layers, banning a hop whose output differs (0 = off; 0..=1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub verify_rate: f64,
    /// How widely routes are spread over servers of about the same measured speed: each
    /// route scales every server's speed by a random factor in 1..1+R, so servers within
    /// R of each other share the traffic (0 = always the single cheapest chain).
    #[arg(long, default_value_t = crate::mesh::Spread::DEFAULT_FRACTION, value_parser = parse_fraction)]
    pub route_spread: f64,
    /// Serve as a circuit relay (v2) for nodes behind NATs: reservations and circuits
    /// bounded in all and per peer, each circuit's bytes and life bounded. Only on a node
    /// others can dial at its listen addresses (they become its external addresses).
    #[arg(long)]
    pub relay: bool,
    /// This node is behind a NAT: reserve a circuit on a relay of the mesh at once (and
    /// announce the relayed address) instead of waiting for AutoNAT to find it
    /// unreachable, and serve sessions over the mesh's connections (`p2p`) unless
    /// `--advertise-dataplane` names a forwarded port.
    #[arg(long)]
    pub behind_nat: bool,
    /// Let AutoNAT's probes count private addresses (testnets, where every address is).
    #[arg(long, hide = true)]
    pub autonat_private: bool,
    /// DRILLS ONLY: misbehave on purpose (corrupt[:fraction], huge-token[:fraction], stall,
    /// inflate, flood), so a testnet can watch its defences work. Hidden from --help.
    #[arg(long, hide = true, value_name = "MODE")]
    pub adversary: Option<crate::session::faults::Adversary>,
}

/// A number in `0..=1`.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is outside 0..=1"))
    }
}

/// Who may use a node's HTTP API, and what it records.
#[derive(Args, Debug, Default, Clone)]
pub struct ApiAccessArgs {
    /// Require `Authorization: Bearer KEY` on every /v1 route, with the keys and limits
    /// of this file (`lamina keys add`). The day's counts are kept in
    /// DATA_DIR/api-usage.json.
    #[arg(long, value_name = "FILE", conflicts_with = "api_open")]
    pub api_keys: Option<PathBuf>,
    /// Serve the API to anyone on a non-loopback --api address (without it, such a node
    /// refuses to start unless it has --api-keys).
    #[arg(long)]
    pub api_open: bool,
    /// Append one JSON line per /v1 request to this file (key name, request id, model,
    /// tokens, route, status, duration; no text).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Also write prompt and completion text into the audit log.
    #[arg(long, requires = "audit_log")]
    pub audit_content: bool,
}

/// The bounds operators tune (the rest: `lamina_node::limits`, documented defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Sessions served at once.
    #[arg(long, default_value_t = 64, value_parser = parse_max_sessions)]
    pub max_sessions: usize,
    /// Close sessions idle this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_secs: u64,
    /// KV cache all open sessions may reserve together (e.g. 4GiB, 512MiB); a session
    /// that does not fit is refused as busy and opened elsewhere.
    #[arg(long, default_value = "4GiB", value_parser = parse_bytes)]
    pub kv_budget: u64,
    /// Rows one step may carry, from 512 (entries split longer prefills into chunks of
    /// 512, so no node may take fewer) up.
    #[arg(long, default_value_t = crate::limits::DEFAULT_MAX_STEP_ROWS,
          value_parser = clap::value_parser!(u32).range(512..=65536))]
    pub max_step_rows: u32,
    /// Rows one forward may stack from the steps of sessions waiting together
    /// (continuous batching); 1 steps sessions one by one.
    #[arg(long, default_value_t = crate::session::queue::DEFAULT_BATCH_ROWS,
          value_parser = parse_count)]
    pub batch_rows: usize,
    /// Data-plane connections at once, from all peers.
    #[arg(long, default_value_t = 256, value_parser = parse_count)]
    pub max_connections: usize,
    /// HTTP API connections at once.
    #[arg(long, default_value_t = 256, value_parser = parse_count)]
    pub http_max_connections: usize,
}
