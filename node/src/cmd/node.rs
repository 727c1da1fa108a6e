//! `lamina node`: serve one layer range of a model on the QUIC data plane (and, with
//! `--api`, the HTTP API through the chain in `--api-chain`).
//!
//! When ready it prints one JSON line to stdout (and, with `--ready-file`, writes the same
//! object to that file): `{"event":"ready","name","layers","listen","fingerprint",
//! "model_id","api"}`. Tests and the testnet read it to learn the bound ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use candle_core::Device;
use lamina_protocol::{FrameLimits, ModelId};
use lamina_sharding::chat::ChatTemplate;
use lamina_sharding::executor::Shard;
use lamina_sharding::layers::LayerRange;
use lamina_sharding::manifest::Manifest;
use lamina_sharding::source::ModelFile;

use crate::cli::NodeArgs;
use crate::dataplane::{server_endpoint, Dialer, Identity};
use crate::pipeline::ChainClient;
use crate::session::{ServerOptions, SessionServer};

/// The model id of a model file (blake3 of its manifest).
pub fn model_id_of(model: &ModelFile) -> anyhow::Result<ModelId> {
    let id = Manifest::compute(model)?.model_id();
    id.parse::<ModelId>()
        .map_err(|e| anyhow::anyhow!("model id {id}: {e}"))
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let model = ModelFile::open(&args.model)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let cfg = model.config()?;
    let range: LayerRange = args
        .layers
        .parse()
        .with_context(|| format!("--layers {}", args.layers))?;
    range
        .check(cfg.n_layers)
        .with_context(|| format!("--layers {}", args.layers))?;
    let model_id = model_id_of(&model)?;
    let tokenizer = Arc::new(model.tokenizer()?);
    // The HTTP API renders chat requests with the model's own template.
    let mut chat_template = if args.api.is_some() {
        model.chat_template(&tokenizer)?
    } else {
        None
    };
    let shard = Arc::new(Shard::load(&model, range, &Device::Cpu)?);
    drop(model);
    let data_dir = args.data_dir.clone();
    let identity = Identity::load_or_create(&data_dir)
        .with_context(|| format!("data dir {}", data_dir.display()))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("node-{}", &identity.fingerprint().to_string()[..8]));

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
        let opts = ServerOptions {
            node_name: name.clone(),
            max_sessions: args.max_sessions,
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            limits,
        };
        let server = SessionServer::new(shard.clone(), model_id, dialer.clone(), opts)?;
        let api_addr: Option<SocketAddr> = match args.api {
            Some(addr) => {
                let chain_file = args
                    .api_chain
                    .clone()
                    .context("--api needs --api-chain FILE (the chain to run requests through)")?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let bound = listener.local_addr()?;
                let metrics = Arc::new(crate::api::Metrics::new());
                // The gauge follows the session server (a scrape sees it within a second).
                let (m, srv) = (metrics.clone(), server.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        m.set_sessions_active(
                            i64::try_from(srv.active_sessions()).unwrap_or(i64::MAX),
                        );
                    }
                });
                let state = Arc::new(
                    crate::api::ApiState::new(
                        ChainClient {
                            dialer: dialer.clone(),
                            model_id,
                            tokenizer: tokenizer.clone(),
                            vocab_size: shard.config().vocab_size,
                            context_length: shard.config().context_length,
                        },
                        Arc::new(crate::api::ChainFileRoutes::new(
                            chain_file,
                            u32::try_from(shard.config().n_layers).unwrap_or(u32::MAX),
                        )),
                        shard.config().name.clone(),
                        model_id,
                        chat_template.take().unwrap_or_else(ChatTemplate::chatml),
                        metrics,
                        crate::api::ApiLimits {
                            max_concurrent_requests: usize::try_from(args.api_max_concurrent)
                                .unwrap_or(1),
                            max_prompt_tokens: shard.config().context_length,
                        },
                    )
                    .with_node_info(serde_json::json!({
                        "name": name,
                        "layers": range.to_string(),
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
                Some(bound)
            }
            None => None,
        };
        let ready = serde_json::json!({
            "event": "ready",
            "name": name,
            "layers": range.to_string(),
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
        use std::io::Write;
        std::io::stdout().flush()?;
        tracing::info!(%listen, layers = %range, "serving");
        let serve = tokio::spawn(server.serve(endpoint.clone()));
        shutdown_signal().await;
        tracing::info!("shutting down");
        endpoint.close(0u32.into(), b"shutting down");
        serve.abort();
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

async fn shutdown_signal() {
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
