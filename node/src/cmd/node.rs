//! `lamina node`: the daemon, a thin command over [`crate::daemon::Node`].
//!
//! When ready it prints one JSON line to stdout (and, with `--ready-file`, writes the same
//! object to that file): `{"event":"ready","name","peer_id","p2p","layers","listen",
//! "model_id","api"}`. Tests and the testnet read it to learn the bound ports.
//! SIGTERM or Ctrl-C stops it gracefully (drain, withdraw, finish).

use std::io::Write;

use anyhow::Context;

use crate::cli::NodeArgs;
use crate::config::NodeConfig;
use crate::daemon::Node;

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.print_peer_id {
        let key = crate::mesh::load_or_create_identity(&args.data_dir)?;
        println!("{}", key.public().to_peer_id());
        return Ok(());
    }
    let config = NodeConfig::from_args(&args);
    let model = config.model.display().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let node = Node::start(config)
            .await
            .with_context(|| format!("cannot start a node on {model}"))?;
        let ready = node.ready_line();
        if let Some(path) = &args.ready_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, ready.to_string())?;
            std::fs::rename(&tmp, path)?;
        }
        let mut out = std::io::stdout();
        writeln!(out, "{ready}")?;
        out.flush()?;
        shutdown_signal().await;
        node.shutdown().await;
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
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
