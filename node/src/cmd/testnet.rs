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
            let st = lamina_testnet::up(&opts)?;
            for n in &st.nodes {
                println!(
                    "{} layers {} api {} pid {} log {}",
                    n.id,
                    n.layers,
                    n.api.as_deref().unwrap_or("-"),
                    n.pid,
                    n.log.display()
                );
            }
            println!("state: {}", state.display());
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
