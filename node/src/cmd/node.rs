//! `lamina node`: the daemon. It joins the mesh (libp2p), chooses or is told its layers,
//! serves them on the QUIC data plane, announces itself, and (with `--api`) answers the
//! OpenAI-compatible HTTP API through routes it plans from the mesh.
//!
//! When ready it prints one JSON line to stdout (and, with `--ready-file`, writes the same
//! object to that file): `{"event":"ready","name","peer_id","p2p","layers","listen",
//! "fingerprint","model_id","api"}`. Tests and the testnet read it to learn the bound ports.
//! When auto placement later moves the node, it logs the move (and the record changes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{Device, Tensor};
use lamina_protocol::{Announcement, FrameLimits, ModelId, NodeState, ANNOUNCEMENT_VERSION};
use lamina_sharding::executor::{LogitRows, Shard, ShardInput};
use lamina_sharding::layers::LayerRange;
use lamina_sharding::manifest::Manifest;
use lamina_sharding::planner::span_for_budget;
use lamina_sharding::source::ModelFile;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::cli::{LayersChoice, NodeArgs};
use crate::dataplane::{server_endpoint, Dialer, Identity};
use crate::mesh::plan::{initial_range, rebalance_target, to_wire};
use crate::mesh::swarm::SwarmOptions;
use crate::mesh::{load_or_create_identity, MeshHandle};
use crate::pipeline::ChainClient;
use crate::session::{ServerOptions, SessionServer};
use lamina_sharding::chat::ChatTemplate;

/// The model id of a model file (blake3 of its manifest).
pub fn model_id_of(model: &ModelFile) -> anyhow::Result<ModelId> {
    let id = Manifest::compute(model)?.model_id();
    id.parse::<ModelId>()
        .map_err(|e| anyhow::anyhow!("model id {id}: {e}"))
}

/// How long a joining node listens to the mesh before choosing its layers.
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// How often an auto-placed node checks whether it should move.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(2);
/// A move must raise the weakest layer's throughput by more than this (20%), unless it
/// closes a gap: Petals' rule of thumb against chasing noise.
const REBALANCE_MARGIN: f64 = 0.2;
/// How long a stopping node waits for its sessions to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A node that just moved stays put this long, so the mesh sees its new record first.
const MOVE_COOLDOWN: Duration = Duration::from_secs(4);

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let model = Arc::new(
        ModelFile::open(&args.model)
            .with_context(|| format!("cannot load {}", args.model.display()))?,
    );
    let cfg = model.config()?;
    if let LayersChoice::Fixed(r) = &args.layers {
        r.check(cfg.n_layers)
            .with_context(|| format!("--layers {r}"))?;
    }
    let manifest = Manifest::compute(&model)?;
    let model_id: ModelId = manifest
        .model_id()
        .parse()
        .map_err(|e| anyhow::anyhow!("model id: {e}"))?;
    let per_layer = manifest.max_layer_bytes();
    let span = match args.max_memory {
        Some(budget) => span_for_budget(budget, per_layer, cfg.n_layers)
            .with_context(|| format!("--max-memory {budget}"))?,
        None => cfg.n_layers,
    };
    let tokenizer = Arc::new(model.tokenizer()?);
    // The HTTP API renders chat requests with the model's own template.
    let chat_template = if args.api.is_some() {
        model.chat_template(&tokenizer)?
    } else {
        None
    };
    let data_dir = args.data_dir.clone();
    let identity = Identity::load_or_create(&data_dir)
        .with_context(|| format!("data dir {}", data_dir.display()))?;
    let p2p_key = load_or_create_identity(&data_dir)?;
    let peer_id = p2p_key.public().to_peer_id();
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "node-{}",
            &peer_id.to_string()[..12.min(peer_id.to_string().len())]
        )
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let limits = FrameLimits::default();
        let endpoint = server_endpoint(args.listen, &identity)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let listen = endpoint.local_addr()?;
        let dialer = Dialer::new(endpoint.clone(), limits);
        let api_listener = match args.api {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let api_addr: Option<SocketAddr> = match &api_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let p2p_listen = if args.p2p_listen.is_empty() {
            default_p2p_listen(listen)
        } else {
            args.p2p_listen.clone()
        };
        let template = Announcement {
            version: ANNOUNCEMENT_VERSION,
            peer_id: peer_id.to_bytes(),
            model_id,
            n_layers: u32::try_from(cfg.n_layers).unwrap_or(u32::MAX),
            layers: None,
            state: NodeState::Serving,
            dataplane_addr: args
                .advertise_dataplane
                .clone()
                .unwrap_or_else(|| listen.to_string()),
            cert: identity.fingerprint(),
            listen_addrs: vec![],
            api: api_addr.map(|a| format!("http://{a}")),
            tokens_per_sec: 0.0,
            free_slots: u32::try_from(args.max_sessions).unwrap_or(u32::MAX),
            max_memory: args.max_memory.unwrap_or(0),
            lamina_version: env!("CARGO_PKG_VERSION").into(),
            seq: 0,
            issued_at_ms: 0,
            expires_at_ms: 0,
            withdrawn: false,
            started_at_ms: crate::mesh::now_ms(),
        };
        let mesh = MeshHandle::start(
            p2p_key,
            &SwarmOptions {
                listen: p2p_listen,
                bootstrap: args.bootstrap.clone(),
                mdns: !args.no_mdns,
            },
            template,
        )?;
        mesh.wait_listening(Duration::from_secs(5)).await;
        mesh.update(|_| {})?;

        // Which layers.
        let auto = args.layers == LayersChoice::Auto;
        let range: Option<LayerRange> = match &args.layers {
            LayersChoice::None => None,
            LayersChoice::Fixed(r) => Some(*r),
            LayersChoice::Auto => {
                let synced = mesh
                    .wait_synced(if args.bootstrap.is_empty() && args.no_mdns {
                        Duration::ZERO
                    } else {
                        JOIN_WAIT
                    })
                    .await;
                // Nodes started together see the same (empty) mesh; a delay drawn from
                // the peer id spreads their choices so most see each other's.
                let jitter = peer_jitter(&peer_id, 500);
                tokio::time::sleep(jitter).await;
                let view = mesh.placement_view();
                let r = initial_range(&view, &peer_id, span, 1.0).context("choosing layers")?;
                tracing::info!(synced, range = %r, span, "placed");
                Some(r)
            }
        };
        let server = match range {
            Some(r) => {
                let wire = to_wire(r).context("layer range")?;
                mesh.update(|a| {
                    a.layers = Some(wire);
                    a.state = NodeState::Loading;
                })?;
                let (shard, tps) = load_and_measure(model.clone(), r).await?;
                let opts = ServerOptions {
                    node_name: name.clone(),
                    max_sessions: args.max_sessions,
                    idle_timeout: Duration::from_secs(args.idle_timeout_secs),
                    limits,
                    faults: None,
                };
                let server = SessionServer::new(shard, model_id, dialer.clone(), opts)?;
                tokio::spawn(server.clone().serve(endpoint.clone()));
                mesh.update(|a| {
                    a.state = NodeState::Serving;
                    a.tokens_per_sec = tps as f32;
                })?;
                tracing::info!(layers = %r, tokens_per_sec = tps, "serving");
                Some((server, tps))
            }
            None => None,
        };

        let metrics = Arc::new(crate::api::Metrics::new());
        if let Some(listener) = api_listener {
            let routes: Arc<dyn crate::api::RouteSource> = match &args.api_chain {
                Some(f) => Arc::new(crate::api::ChainFileRoutes::new(
                    f.clone(),
                    u32::try_from(cfg.n_layers).unwrap_or(u32::MAX),
                )),
                None => Arc::new(mesh.clone()),
            };
            let state = Arc::new(
                crate::api::ApiState::new(
                    ChainClient {
                        dialer: dialer.clone(),
                        model_id,
                        tokenizer: tokenizer.clone(),
                        vocab_size: cfg.vocab_size,
                        context_length: cfg.context_length,
                    },
                    routes,
                    cfg.name.clone(),
                    model_id,
                    chat_template.unwrap_or_else(ChatTemplate::chatml),
                    metrics.clone(),
                    crate::api::ApiLimits {
                        max_concurrent_requests: usize::try_from(args.api_max_concurrent)
                            .unwrap_or(1),
                        max_prompt_tokens: cfg.context_length,
                    },
                )
                .with_node_info(serde_json::json!({
                    "name": name,
                    "peer_id": peer_id.to_string(),
                    "layers": range.map_or_else(|| "none".to_string(), |r| r.to_string()),
                    "listen": listen.to_string(),
                    "fingerprint": identity.fingerprint().to_string(),
                })),
            );
            let app = crate::api::router(state);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("HTTP API stopped: {e}");
                }
            });
        }
        // Gauges that follow the node: sessions served, RTT per peer.
        {
            let (m, srv, mesh) = (
                metrics.clone(),
                server.as_ref().map(|(s, _)| s.clone()),
                mesh.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Some(srv) = &srv {
                        m.set_sessions_active(
                            i64::try_from(srv.active_sessions()).unwrap_or(i64::MAX),
                        );
                    }
                    for (peer, rtt) in mesh.observations().rtt {
                        m.set_hop_rtt(&peer.to_string(), rtt.as_secs_f64());
                    }
                }
            });
        }

        let ready = serde_json::json!({
            "event": "ready",
            "name": name,
            "peer_id": peer_id.to_string(),
            "p2p": mesh.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "layers": range.map_or_else(|| "none".to_string(), |r| r.to_string()),
            "listen": listen.to_string(),
            "fingerprint": identity.fingerprint().to_string(),
            "model_id": model_id.to_string(),
            "api": api_addr.map(|a| a.to_string()),
        });
        if let Some(path) = &args.ready_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, ready.to_string())?;
            std::fs::rename(&tmp, path)?;
        }
        println!("{ready}");
        {
            use std::io::Write;
            std::io::stdout().flush()?;
        }

        // Keep the record fresh (with the free slots of the moment).
        let refresher = {
            let mesh = mesh.clone();
            let server = server.as_ref().map(|(s, _)| s.clone());
            let max = args.max_sessions;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::mesh::REFRESH_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let free = server
                        .as_ref()
                        .map_or(max, |s| max.saturating_sub(s.active_sessions()));
                    if let Err(e) =
                        mesh.update(|a| a.free_slots = u32::try_from(free).unwrap_or(u32::MAX))
                    {
                        tracing::warn!("cannot refresh the announcement: {e}");
                    }
                }
            })
        };
        let rebalancer = match (&server, auto) {
            (Some((server, tps)), true) => Some(tokio::spawn(rebalance_loop(
                mesh.clone(),
                server.clone(),
                model.clone(),
                *tps,
            ))),
            _ => None,
        };

        shutdown_signal().await;
        tracing::info!("shutting down");
        // Refuse new sessions before anything else: routes planned from tables that still
        // list this node then go elsewhere instead of opening sessions the drain cuts off.
        if let Some((server, _)) = &server {
            server.drain();
        }
        if let Some(r) = rebalancer {
            r.abort();
        }
        refresher.abort();
        if let Err(e) = mesh.withdraw().await {
            tracing::debug!("withdraw: {e}");
        }
        // Withdrawn, so no new route picks this node; the generations in flight finish
        // (bounded by the drain timeout) before the endpoint closes under them.
        if let Some((server, _)) = &server {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while server.active_sessions() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let left = server.active_sessions();
            if left > 0 {
                tracing::warn!(sessions = left, "drain timed out; closing them");
            }
        }
        endpoint.close(0u32.into(), b"shutting down");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
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

/// A delay in `0..max_ms` derived from the peer id (stable per node, spread across nodes).
fn peer_jitter(peer: &libp2p::PeerId, max_ms: u64) -> Duration {
    let h = blake3::hash(&peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    Duration::from_millis(u64::from_le_bytes(b) % max_ms.max(1))
}

/// Loads `range` and times decode steps through it: the throughput the record announces.
async fn load_and_measure(
    model: Arc<ModelFile>,
    range: LayerRange,
) -> anyhow::Result<(Arc<Shard>, f64)> {
    tokio::task::spawn_blocking(move || {
        let shard = Arc::new(Shard::load(&model, range, &Device::Cpu)?);
        let tps = measure_tokens_per_sec(&shard)?;
        Ok::<_, anyhow::Error>((shard, tps))
    })
    .await
    .context("loading the shard")?
}

/// Decode tokens per second for one sequence through the whole shard: the median of a
/// few one-token steps after a warm-up (the first steps pay page faults and pool start).
fn measure_tokens_per_sec(shard: &Shard) -> anyhow::Result<f64> {
    const STEPS: usize = 8;
    let mut cache = shard.new_cache(STEPS + 2)?;
    let dim = shard.config().dim;
    let input = || -> anyhow::Result<ShardInput> {
        Ok(if shard.is_first() {
            ShardInput::Tokens(vec![1])
        } else {
            ShardInput::Hidden(Tensor::zeros(
                (1, dim),
                candle_core::DType::F32,
                &Device::Cpu,
            )?)
        })
    };
    shard.forward(&mut cache, input()?, LogitRows::Last)?;
    let mut times = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let t = Instant::now();
        shard.forward(&mut cache, input()?, LogitRows::Last)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[STEPS / 2].max(1e-6);
    Ok(1.0 / median)
}

/// Moves the node when the mesh would be better served elsewhere (a gap it can close, or
/// a much weaker range), only while it has no sessions, loading the new layers before
/// the old are dropped. Sessions opened meanwhile keep the old shard until they end.
async fn rebalance_loop(
    mesh: MeshHandle,
    server: Arc<SessionServer>,
    model: Arc<ModelFile>,
    mut tps: f64,
) {
    let me = mesh.peer_id();
    let mut last_move = Instant::now();
    let mut tick = tokio::time::interval(REBALANCE_INTERVAL + peer_jitter(&me, 300));
    tick.tick().await;
    loop {
        tick.tick().await;
        if last_move.elapsed() < MOVE_COOLDOWN || server.active_sessions() > 0 {
            continue;
        }
        let host = server.host();
        let current = crate::mesh::plan::to_local(host.layers);
        let view = mesh.placement_view();
        let target = match rebalance_target(&view, &me, current, tps, REBALANCE_MARGIN) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("rebalance check: {e}");
                continue;
            }
        };
        tracing::info!(from = %current, to = %target, "moving");
        match load_and_measure(model.clone(), target).await {
            Ok((shard, new_tps)) => {
                let Some(wire) = to_wire(target) else {
                    continue;
                };
                if let Err(e) = server.replace(shard) {
                    tracing::warn!("cannot serve {target}: {e}");
                    continue;
                }
                if let Err(e) = mesh.update(|a| {
                    a.layers = Some(wire);
                    a.tokens_per_sec = new_tps as f32;
                }) {
                    tracing::warn!("cannot announce the move: {e}");
                }
                last_move = Instant::now();
                tps = new_tps;
                tracing::info!(layers = %target, tokens_per_sec = new_tps, "moved");
            }
            Err(e) => tracing::warn!("cannot load {target}: {e:#}"),
        }
    }
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
