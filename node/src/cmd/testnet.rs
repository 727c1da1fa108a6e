//! `lamina testnet up|down`: local testnets of `lamina node` processes (see
//! `lamina-testnet`).

use crate::cli::TestnetCommand;

pub fn run(cmd: TestnetCommand) -> anyhow::Result<()> {
    match cmd {
        TestnetCommand::Up {
            nodes,
            model,
            state,
            dir,
            placement,
            threads,
            latency,
            jitter,
            loss,
            bandwidth,
        } => {
            let exe = std::env::current_exe()?;
            let dir = dir.unwrap_or_else(|| {
                let mut d = state.clone().into_os_string();
                d.push(".d");
                d.into()
            });
            let mut opts = lamina_testnet::UpOptions::new(exe, nodes, model, state.clone(), dir);
            opts.placement = match placement {
                crate::cli::PlacementArg::Even => lamina_testnet::Placement::Even,
                crate::cli::PlacementArg::Auto => lamina_testnet::Placement::Auto,
            };
            opts.threads = threads;
            if latency.is_some() || jitter.is_some() || loss.is_some() || bandwidth.is_some() {
                let spec = lamina_testnet::relay::LinkSpec {
                    latency: latency.unwrap_or_default(),
                    jitter: jitter.unwrap_or_default(),
                    loss: loss.unwrap_or(0.0),
                    bandwidth_bps: bandwidth,
                };
                spec.validate()?;
                opts.link = Some(spec);
            }
            let net = lamina_testnet::up_with_links(&opts)?;
            for (i, n) in net.state.nodes.iter().enumerate() {
                let relay = net
                    .links
                    .as_ref()
                    .and_then(|l| l.relays().get(i))
                    .map(|r| format!(" via relay {}", r.local_addr()))
                    .unwrap_or_default();
                println!(
                    "{} layers {} api {} pid {} log {}{relay}",
                    n.id,
                    n.layers,
                    n.api.as_deref().unwrap_or("-"),
                    n.pid,
                    n.log.display()
                );
            }
            println!("state: {}", state.display());
            let Some(links) = net.links else {
                return Ok(());
            };
            println!(
                "link emulation ({}) runs in this process: keep it running; Ctrl-C stops the relays and the nodes",
                links.spec()
            );
            wait_for_stop_signal()?;
            drop(links);
            let n = lamina_testnet::down(&state)?;
            println!("stopped {n} node(s)");
            Ok(())
        }
        TestnetCommand::Down { state } => {
            let n = lamina_testnet::down(&state)?;
            println!("stopped {n} node(s)");
            Ok(())
        }
        TestnetCommand::Kill {
            node,
            state,
            signal,
        } => {
            if lamina_testnet::kill(&state, &node, signal)? {
                println!("{node} killed (SIG{signal})");
            } else {
                println!("{node} was not running");
            }
            Ok(())
        }
        TestnetCommand::Restart { node, state } => {
            let exe = std::env::current_exe()?;
            let n = lamina_testnet::restart(&state, &node, &exe)?;
            println!(
                "{} layers {} api {} pid {} peer {}",
                n.id,
                n.layers,
                n.api.as_deref().unwrap_or("-"),
                n.pid,
                n.peer_id
            );
            Ok(())
        }
        TestnetCommand::Status { state, format } => {
            let st = lamina_testnet::control::status(&state)?;
            if format == crate::cli::OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            for n in &st.nodes {
                println!(
                    "{:<8} {:<5} layers {:<8} api {} pid {}",
                    n.id,
                    if n.alive { "alive" } else { "dead" },
                    n.layers,
                    n.api.as_deref().unwrap_or("-"),
                    n.pid
                );
            }
            match (&st.seen_by, st.complete) {
                (Some(by), Some(c)) => {
                    let min = st.coverage.iter().min().copied().unwrap_or(0);
                    let max = st.coverage.iter().max().copied().unwrap_or(0);
                    println!(
                        "coverage (seen by {by}): {}, {min}..{max} servers per layer{}",
                        if c { "complete" } else { "incomplete" },
                        if st.uncovered.is_empty() {
                            String::new()
                        } else {
                            format!(", uncovered {}", st.uncovered.join(","))
                        }
                    );
                }
                _ => println!("coverage: no live node answered /status"),
            }
            Ok(())
        }
    }
}

/// Blocks until Ctrl-C (SIGINT) or SIGTERM.
fn wait_for_stop_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
