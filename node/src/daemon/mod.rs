//! The node as a library: [`Node::start`] takes a [`NodeConfig`] and returns a
//! [`NodeHandle`] once the node serves (its addresses, peer id, status, and a graceful
//! [`NodeHandle::shutdown`]). `lamina node` is a thin command over it; tests and programs
//! start nodes in-process the same way.
//!
//! What starting a node does, in order: open the model and compute its id; load or make
//! the identities; bind the data plane (QUIC) and the API; join the mesh and announce
//! itself; choose its layers (fixed, none, or auto placement over what the mesh
//! announced), load and measure them, serve them; serve the API; keep its record fresh
//! and, when auto-placed, move when the mesh would be better served elsewhere.
//!
//! One shutdown mechanism: a [`CancellationToken`] every task of the node selects on,
//! and a [`TaskTracker`] the shutdown waits for (as in mini-redis).

mod handle;
mod measure;
pub mod placement;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lamina_protocol::{Announcement, LayerRange, ModelId, NodeState, ANNOUNCEMENT_VERSION};
use lamina_sharding::manifest::Manifest;
use lamina_sharding::planner::span_for_budget;
use lamina_sharding::source::ModelFile;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handle::{NodeHandle, NodeInfo};
pub use measure::load_and_measure;

use crate::config::MeshChoice;
use crate::config::{IdentityStore, LayersChoice, NodeConfig};
use crate::dataplane::{server_endpoint_with, Dialer};
use crate::mesh::{load_or_create_identity, MeshHandle, SwarmOptions};
use crate::pipeline::ChainClient;
use crate::routes::{ChainFileRoutes, RouteSource};
use crate::session::faults::{Adversary, FaultPlan};
use crate::session::{Reporter, ServerOptions, SessionServer};
use crate::trust::{Gate, MemberFile, SharedGate};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("model {path}: {source}")]
    Model {
        path: String,
        source: lamina_sharding::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    OpenApi(#[from] crate::api::access::OpenApiRefused),
    #[error("API access: {0}")]
    Access(#[from] crate::api::access::AccessError),
    #[error("data plane: {0}")]
    DataPlane(#[from] crate::dataplane::DataPlaneError),
    #[error("mesh: {0}")]
    Mesh(#[from] crate::mesh::MeshError),
    #[error("session server: {0}")]
    Server(#[from] crate::session::ServerError),
    #[error("choosing layers: {0}")]
    Placement(#[from] lamina_sharding::planner::PlanError),
    #[error("membership: {0}")]
    Trust(#[from] crate::trust::TrustError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The model id of a model file (blake3 of its manifest).
pub fn model_id_of(model: &ModelFile) -> Result<ModelId, lamina_sharding::Error> {
    let id = Manifest::compute(model)?.model_id();
    id.parse::<ModelId>()
        .map_err(|e| lamina_sharding::Error::InvalidInput(format!("model id {id}: {e}")))
}

/// A lamina node.
pub struct Node;

impl Node {
    /// Starts a node on the current tokio runtime and returns once it serves (its layers
    /// loaded and announced, its API listening).
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        if let Some(addr) = config.api {
            crate::api::access::check_exposure(addr, &config.api_access)?;
        }
        if config.mesh == MeshChoice::Unset {
            return Err(NodeError::Config(
                "no mesh chosen: pass --member FILE for a private mesh (see `lamina mesh create` \
                 and `lamina mesh admit`) or --open to let anyone who can reach this node join"
                    .into(),
            ));
        }
        let path = config.model.display().to_string();
        let model_err = |source| NodeError::Model {
            path: path.clone(),
            source,
        };
        let model = Arc::new(ModelFile::open(&config.model).map_err(model_err)?);
        let cfg = model.config().map_err(model_err)?;
        if let LayersChoice::Fixed(r) = &config.layers {
            lamina_sharding::layers::check_range(*r, cfg.n_layers)
                .map_err(|e| NodeError::Config(format!("--layers {r}: {e}")))?;
        }
        let manifest = Manifest::compute(&model).map_err(model_err)?;
        let model_id: ModelId = manifest
            .model_id()
            .parse()
            .map_err(|e| NodeError::Config(format!("model id: {e}")))?;
        let span = match config.max_memory {
            Some(budget) => span_for_budget(budget, manifest.max_layer_bytes(), cfg.n_layers)
                .map_err(|e| NodeError::Config(format!("--max-memory {budget}: {e}")))?,
            None => cfg.n_layers,
        };
        let tokenizer = Arc::new(model.tokenizer().map_err(model_err)?);
        let key = match &config.identity {
            IdentityStore::Dir(dir) => load_or_create_identity(dir)?,
            IdentityStore::Ephemeral => Keypair::generate_ed25519(),
        };
        let peer_id = key.public().to_peer_id();
        let gate = SharedGate::new(gate_of(&config.mesh, &peer_id)?);
        let name = config.name.clone().unwrap_or_else(|| {
            let id = peer_id.to_string();
            format!("node-{}", &id[..12.min(id.len())])
        });

        let endpoint = server_endpoint_with(config.listen, &key, &config.limits.peers)?;
        let listen = endpoint.local_addr().map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
        let dialer = Dialer::new(endpoint.clone(), config.limits.frame, key.clone())
            .with_bounds(config.limits.peers)
            .with_member(gate.read(|g| g.own_cert().cloned()));
        let api_listener = match config.api {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Listen { addr, source })?,
            ),
            None => None,
        };
        let api_addr = match &api_listener {
            Some(l) => Some(l.local_addr().map_err(|source| NodeError::Listen {
                addr: listen,
                source,
            })?),
            None => None,
        };

        let template = Announcement {
            version: ANNOUNCEMENT_VERSION,
            peer_id: peer_id.to_bytes(),
            model_id,
            n_layers: u32::try_from(cfg.n_layers).unwrap_or(u32::MAX),
            layers: None,
            state: NodeState::Serving,
            // Behind a NAT nobody can dial the endpoint: sessions come over the mesh's
            // connections unless an operator forwarded a port and says where.
            dataplane_addr: config.advertise_dataplane.clone().unwrap_or_else(|| {
                if config.behind_nat {
                    crate::dataplane::P2P_ADDR.to_string()
                } else {
                    listen.to_string()
                }
            }),
            listen_addrs: vec![],
            api: api_addr.map(|a| format!("http://{a}")),
            tokens_per_sec: 0.0,
            free_slots: u32::try_from(config.limits.max_sessions).unwrap_or(u32::MAX),
            max_memory: config.max_memory.unwrap_or(0),
            lamina_version: env!("CARGO_PKG_VERSION").into(),
            seq: 0,
            issued_at_ms: 0,
            expires_at_ms: 0,
            withdrawn: false,
            started_at_ms: crate::ids::now_ms(),
            member: gate.read(|g| g.own_cert().cloned()),
        };
        let p2p_listen = if config.p2p_listen.is_empty() {
            default_p2p_listen(listen)
        } else {
            config.p2p_listen.clone()
        };
        let swarm = SwarmOptions {
            listen: p2p_listen,
            bootstrap: config.bootstrap.clone(),
            mdns: config.mdns,
            relay: config.relay.then(crate::mesh::RelayLimits::default),
            behind_nat: config.behind_nat,
            autonat_private: config.autonat_private,
            external: config.external_addrs.clone(),
            upnp: config.upnp,
        };
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        // Before joining: a bad keys file is an error at start, not at the first request.
        let access = match &api_listener {
            Some(_) => {
                let (access, writers) =
                    crate::api::access::Access::start(&config.api_access, token.child_token())
                        .await?;
                for w in writers {
                    tasks.spawn(w);
                }
                Arc::new(access)
            }
            None => Arc::new(crate::api::access::Access::open()),
        };
        let mesh = MeshHandle::start_with(
            key.clone(),
            &swarm,
            template,
            gate.clone(),
            token.child_token(),
            config.limits.mesh,
        )?
        .with_route_spread(config.route_spread);
        // Hops that announce `p2p` are reached on the mesh's own connections.
        let dialer = dialer.with_p2p(mesh.streams());
        mesh.wait_listening(Duration::from_secs(5)).await;
        mesh.update(|_| {}).await?;

        let auto = config.layers == LayersChoice::Auto;
        let range: Option<LayerRange> = match &config.layers {
            LayersChoice::None => None,
            LayersChoice::Fixed(r) => Some(*r),
            LayersChoice::Auto => {
                let alone = config.bootstrap.is_empty() && !config.mdns;
                let wait = if alone {
                    Duration::ZERO
                } else {
                    placement::JOIN_WAIT
                };
                Some(placement::choose_initial(&mesh, span, wait).await?)
            }
        };
        let metrics = Arc::new(crate::api::Metrics::new());
        // A drill's adversary (hidden `--adversary`), seeded by the peer id so a rerun of
        // the same testnet misbehaves on the same steps.
        let faults = config.faults.clone().or_else(|| {
            config.adversary.map(|a| {
                let h = blake3::hash(&peer_id.to_bytes());
                let mut seed = [0u8; 8];
                seed.copy_from_slice(&h.as_bytes()[..8]);
                Arc::new(FaultPlan::adversary(a, u64::from_le_bytes(seed)))
            })
        });
        let (layers_tx, layers_rx) = watch::channel(range);
        let mut served = None;
        if let Some(r) = range {
            mesh.update(move |a| {
                a.layers = Some(r);
                a.state = NodeState::Loading;
            })
            .await?;
            let (shard, tps) = load_and_measure(model.clone(), r)
                .await
                .map_err(model_err)?;
            let opts = ServerOptions {
                node_name: name.clone(),
                max_sessions: config.limits.max_sessions,
                idle_timeout: config.limits.idle_timeout,
                limits: config.limits.frame,
                peers: config.limits.peers,
                refusals: metrics.refusals().clone(),
                faults: faults.clone(),
                gate: gate.clone(),
                batch_rows: config.limits.batch_rows,
            };
            let server =
                SessionServer::new(shard, model_id, dialer.clone(), Reporter::new(key), opts)?;
            tasks.spawn(server.clone().serve(endpoint.clone()));
            match mesh.streams().accept(crate::dataplane::SESSION_PROTOCOL) {
                Ok(incoming) => {
                    tasks.spawn(server.clone().serve_p2p(incoming));
                }
                Err(e) => tracing::warn!("session streams over the mesh: {e}"),
            }
            let announced = FaultPlan::announced_tps(faults.as_deref(), tps);
            mesh.update(move |a| {
                a.state = NodeState::Serving;
                a.tokens_per_sec = announced;
            })
            .await?;
            tracing::info!(layers = %r, tokens_per_sec = tps, "serving");
            served = Some((server, tps));
        }

        let info = NodeInfo {
            name: name.clone(),
            peer_id,
            model_id,
            dataplane: listen,
            api: api_addr,
            layers: layers_rx,
        };
        if let Some(listener) = api_listener {
            let chat_template = model
                .chat_template(&tokenizer)
                .map_err(model_err)?
                .unwrap_or_else(lamina_sharding::chat::ChatTemplate::chatml);
            let ends = if config.private_ends {
                let e = lamina_sharding::executor::Ends::load(&model, &candle_core::Device::Cpu)
                    .map_err(model_err)?;
                Some(crate::pipeline::EntryEnds::new(e))
            } else {
                None
            };
            if config.api_chain.is_none() {
                // This node plans routes: it measures their candidates.
                tasks.spawn(crate::mesh::probe::run(
                    mesh.clone(),
                    dialer.clone(),
                    crate::mesh::probe::ProbeOptions::new(cfg.dim),
                    token.child_token(),
                ));
            }
            let (routes, status): (Arc<dyn RouteSource>, crate::api::StatusSource) =
                match &config.api_chain {
                    Some(f) => {
                        let n = u32::try_from(cfg.n_layers).unwrap_or(u32::MAX);
                        let r = Arc::new(ChainFileRoutes::new(f.clone(), n));
                        (r.clone(), crate::api::StatusSource::ChainFile(r))
                    }
                    None => (
                        Arc::new(mesh.clone()),
                        crate::api::StatusSource::Mesh(mesh.clone()),
                    ),
                };
            let state = Arc::new(crate::api::ApiState::new(crate::api::ApiParts {
                client: ChainClient {
                    dialer: dialer.clone(),
                    model_id,
                    tokenizer: tokenizer.clone(),
                    context_length: cfg.context_length,
                    ends,
                    verify: crate::pipeline::VerifyPolicy {
                        rate: config.verify_rate,
                        // Drawn at start: hops must not know which steps get checked.
                        seed: u64::from_le_bytes(
                            crate::ids::new_session_id().as_bytes()[..8]
                                .try_into()
                                .unwrap_or([0; 8]),
                        ),
                    },
                },
                routes,
                status,
                model_name: cfg.name.clone(),
                model_id,
                chat_template,
                metrics: metrics.clone(),
                limits: crate::api::ApiLimits {
                    max_concurrent_requests: config.api_max_concurrent,
                    max_prompt_tokens: cfg.context_length,
                    http: config.limits.http,
                },
                node: Some(info.clone()),
                access,
            }));
            let app = crate::api::router(state);
            let (bounds, refusals) = (config.limits.http, metrics.refusals().clone());
            tasks.spawn(crate::api::server::serve(
                listener,
                app,
                bounds,
                refusals,
                token.clone(),
            ));
        }
        tasks.spawn(follow(
            mesh.clone(),
            served.as_ref().map(|(s, _)| s.clone()),
            metrics,
            config.limits.max_sessions,
            token.clone(),
        ));
        if config.adversary == Some(Adversary::Flood) {
            tasks.spawn(flood_drill(mesh.clone(), dialer.clone(), token.clone()));
        }
        if let (Some((server, tps)), true) = (&served, auto) {
            tasks.spawn(placement::rebalance_loop(
                mesh.clone(),
                server.clone(),
                model.clone(),
                *tps,
                layers_tx,
                token.clone(),
            ));
        }
        Ok(NodeHandle::new(
            info,
            mesh,
            served.map(|(s, _)| s),
            dialer,
            token,
            tasks,
            config.drain_timeout,
        ))
    }
}

/// The gate of the mesh `choice` names, for the node `me`: its member file must hold a
/// valid certificate for this very peer id (a copied file is refused here, with both ids).
fn gate_of(choice: &MeshChoice, me: &libp2p::PeerId) -> Result<Gate, NodeError> {
    match choice {
        MeshChoice::Unset | MeshChoice::Open => Ok(Gate::Open),
        MeshChoice::Member(path) => {
            let f = MemberFile::load(path)?;
            let now = crate::ids::now_ms() / 1000;
            f.cert.verify(&f.mesh, me, now).map_err(|e| {
                NodeError::Config(format!(
                    "--member {}: {e} (this node is {me}; admit it with `lamina mesh admit --peer {me}`)",
                    path.display()
                ))
            })?;
            tracing::info!(mesh = %f.mesh, "joining a private mesh");
            Ok(Gate::member(f.mesh, f.cert))
        }
    }
}

/// QUIC and TCP on the data plane's host, any port.
fn default_p2p_listen(dataplane: SocketAddr) -> Vec<Multiaddr> {
    let ip = match dataplane.ip() {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    let base = Multiaddr::empty().with(ip);
    vec![
        base.clone().with(Protocol::Udp(0)).with(Protocol::QuicV1),
        base.with(Protocol::Tcp(0)),
    ]
}

/// What follows the node while it runs: the free session slots in its record (updated
/// when they change), and the gauges of sessions and RTTs.
/// The `flood` drill: once the mesh is known, floods every other live peer (bounded; see
/// [`crate::session::faults::flood`]).
async fn flood_drill(mesh: MeshHandle, dialer: Dialer, stop: CancellationToken) {
    mesh.wait_synced(Duration::from_secs(10)).await;
    let me = mesh.peer_id();
    let targets = mesh
        .live()
        .into_iter()
        .filter(|(p, _)| *p != me)
        .map(|(p, a)| (a.dataplane_addr, p))
        .collect();
    crate::session::faults::flood(dialer, targets, stop).await;
}

async fn follow(
    mesh: MeshHandle,
    server: Option<Arc<SessionServer>>,
    metrics: Arc<crate::api::Metrics>,
    max_sessions: usize,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut announced = max_sessions;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let active = server.as_ref().map_or(0, |s| s.active_sessions());
        metrics.set_sessions_active(i64::try_from(active).unwrap_or(i64::MAX));
        if let Some(s) = &server {
            metrics.set_session_inputs(s.inputs().tokens(), s.inputs().hidden());
            let batches = s.compute_stats();
            metrics.set_compute_batches(batches.batches(), batches.steps());
            metrics.set_kv_budget(s.kv_budget().used(), s.kv_budget().total());
        }
        metrics.set_mesh(&mesh.snapshot());
        let free = max_sessions.saturating_sub(active);
        if free != announced {
            announced = free;
            let slots = u32::try_from(free).unwrap_or(u32::MAX);
            if let Err(e) = mesh.update(move |a| a.free_slots = slots).await {
                tracing::warn!("cannot update the announcement: {e}");
            }
        }
    }
}
