//! A node's configuration, in one place: every option of [`crate::daemon::Node`], built
//! from the command line ([`NodeConfig::from_args`]) or by a Rust program
//! ([`NodeConfig::new`] and its fields). Nothing below reads flags or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lamina_protocol::LayerRange;
use libp2p::Multiaddr;

use crate::api::access::AccessOptions;
use crate::cli::NodeArgs;
use crate::limits::Limits;
use crate::session::faults::{Adversary, FaultPlan};

/// Which layers a node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayersChoice {
    /// The range that raises the mesh's weakest coverage most within the memory budget
    /// (Petals' rule), moving when a gap opens elsewhere.
    Auto,
    /// None: the node joins, routes and serves the API only.
    None,
    /// Exactly these.
    Fixed(LayerRange),
}

impl std::str::FromStr for LayersChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LayersChoice::Auto),
            "none" => Ok(LayersChoice::None),
            r => r
                .parse()
                .map(LayersChoice::Fixed)
                .map_err(|e| format!("`{r}` is not auto, none or a range a..b: {e}")),
        }
    }
}

/// Which mesh a node joins. There is no default: an operator names an open mesh or a
/// private one (`--open` / `--member FILE`), so nobody runs an open node unawares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MeshChoice {
    /// Not chosen: [`crate::Node::start`] refuses to start.
    #[default]
    Unset,
    /// Anyone who can reach the node may join.
    Open,
    /// The private mesh of this member file (`lamina mesh admit --out FILE`).
    Member(PathBuf),
}

/// Where a node keeps its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityStore {
    /// Keys in this folder (created on first use): the peer id survives restarts.
    Dir(PathBuf),
    /// Fresh keys in memory (a light client, a test node).
    Ephemeral,
}

/// Everything a node is started with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The model file (GGUF or safetensors directory).
    pub model: PathBuf,
    pub layers: LayersChoice,
    /// Memory for weights, bytes (auto placement takes as many layers as fit).
    pub max_memory: Option<u64>,
    /// The data plane's (QUIC) address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The data-plane address announced instead of the bound one (a relay in front).
    pub advertise_dataplane: Option<String>,
    /// libp2p listen addresses (empty: QUIC and TCP on the data plane's host, any port).
    pub p2p_listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// The mesh the node joins (open, or private by member file).
    pub mesh: MeshChoice,
    pub identity: IdentityStore,
    /// Every bound on what peers and clients can make the node spend (sessions, KV
    /// budget, rows per step, deadlines, connections, HTTP).
    pub limits: Limits,
    /// Serve the OpenAI-compatible HTTP API here.
    pub api: Option<SocketAddr>,
    /// Route API requests through this fixed chain file instead of the mesh.
    pub api_chain: Option<PathBuf>,
    /// Generations the HTTP API runs at once; more are answered 429.
    pub api_max_concurrent: usize,
    /// API keys, quotas, usage and audit of the HTTP API.
    pub api_access: AccessOptions,
    /// The API's generations run the model's ends here (`--private-ends`).
    pub private_ends: bool,
    /// Name in logs and handshakes (default: from the peer id).
    pub name: Option<String>,
    /// How long a stopping node waits for its sessions to finish.
    pub drain_timeout: Duration,
    /// Faults the session server injects (churn tests only).
    pub faults: Option<Arc<FaultPlan>>,
    /// A standing misbehaviour for drills (`--adversary`, hidden; never in production).
    pub adversary: Option<Adversary>,
    /// The fraction of the API's steps the entry re-runs on other servers to check them
    /// (`--verify-rate`; 0 by default, 0.05 in testnets). See `pipeline::verify`.
    pub verify_rate: f64,
    /// How widely routes are spread over servers of about the same speed
    /// (`--route-spread`; see `mesh::Spread`).
    pub route_spread: f64,
    /// Serve as a relay for nodes behind NATs (`--relay`).
    pub relay: bool,
    /// Behind a NAT: reserve a circuit on a relay at once (`--behind-nat`).
    pub behind_nat: bool,
    /// AutoNAT may probe private addresses (`--autonat-private`; testnets).
    pub autonat_private: bool,
    /// Where a forwarded port reaches this node's mesh listener (`--external-addr`).
    pub external_addrs: Vec<Multiaddr>,
    /// Ask the router for port mappings (`--upnp`).
    pub upnp: bool,
}

impl NodeConfig {
    /// The defaults of `lamina node --model MODEL`, with keys in memory and no mDNS. The
    /// mesh is not chosen: set [`mesh`](Self::mesh) before starting.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            layers: LayersChoice::Auto,
            max_memory: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_dataplane: None,
            p2p_listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            mesh: MeshChoice::Unset,
            identity: IdentityStore::Ephemeral,
            limits: Limits::default(),
            api: None,
            api_chain: None,
            api_max_concurrent: 16,
            api_access: AccessOptions::default(),
            private_ends: false,
            name: None,
            drain_timeout: Duration::from_secs(30),
            faults: None,
            adversary: None,
            verify_rate: 0.0,
            route_spread: crate::mesh::Spread::DEFAULT_FRACTION,
            relay: false,
            behind_nat: false,
            autonat_private: false,
            external_addrs: Vec::new(),
            upnp: false,
        }
    }

    /// The configuration `lamina node` flags describe.
    pub fn from_args(args: &NodeArgs) -> Self {
        Self {
            model: args.model.clone().unwrap_or_default(),
            layers: args.layers.clone(),
            max_memory: args.max_memory,
            listen: args.listen,
            advertise_dataplane: args.advertise_dataplane.clone(),
            p2p_listen: args.p2p_listen.clone(),
            bootstrap: args.bootstrap.clone(),
            mdns: args.mdns,
            mesh: match (&args.member, args.open) {
                (Some(f), _) => MeshChoice::Member(f.clone()),
                (None, true) => MeshChoice::Open,
                (None, false) => MeshChoice::Unset,
            },
            identity: IdentityStore::Dir(args.data_dir.clone()),
            limits: limits_of(&args.limits),
            api: args.api,
            api_chain: args.api_chain.clone(),
            api_max_concurrent: usize::try_from(args.api_max_concurrent).unwrap_or(1),
            api_access: access_options(&args.api_access, &args.data_dir),
            private_ends: args.private_ends,
            name: args.name.clone(),
            drain_timeout: Duration::from_secs(30),
            faults: None,
            adversary: args.adversary,
            verify_rate: args.verify_rate,
            route_spread: args.route_spread,
            relay: args.relay,
            behind_nat: args.behind_nat,
            autonat_private: args.autonat_private,
            external_addrs: args.external_addr.clone(),
            upnp: args.upnp,
        }
    }
}

/// The limits `lamina node`'s flags describe (the defaults for the rest).
fn limits_of(a: &crate::cli::LimitArgs) -> Limits {
    let mut l = Limits {
        max_sessions: a.max_sessions,
        idle_timeout: Duration::from_secs(a.idle_timeout_secs),
        batch_rows: a.batch_rows,
        ..Limits::default()
    };
    l.peers.kv_budget_bytes = a.kv_budget;
    l.peers.max_step_rows = a.max_step_rows;
    l.peers.max_connections = a.max_connections;
    l.http.max_connections = a.http_max_connections;
    l
}

/// The day's usage counts of the API keys, in the data dir.
pub const API_USAGE_FILE: &str = "api-usage.json";

/// The access options `--api-keys`, `--api-open`, `--audit-log` and `--audit-content`
/// describe; usage is persisted (in the data dir) when there are keys to count for.
fn access_options(a: &crate::cli::ApiAccessArgs, data_dir: &std::path::Path) -> AccessOptions {
    AccessOptions {
        keys: a.api_keys.clone(),
        open: a.api_open,
        usage_file: a.api_keys.as_ref().map(|_| data_dir.join(API_USAGE_FILE)),
        audit_log: a.audit_log.clone(),
        audit_content: a.audit_content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_choice_parses() {
        assert_eq!("auto".parse(), Ok(LayersChoice::Auto));
        assert_eq!("none".parse(), Ok(LayersChoice::None));
        assert!(matches!("0..4".parse(), Ok(LayersChoice::Fixed(_))));
        assert!("4..2".parse::<LayersChoice>().is_err());
    }
}
