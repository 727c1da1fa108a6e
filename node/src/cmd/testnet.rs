//! `lamina testnet up|down|kill|restart|status`: local testnets of `lamina node` processes
//! (see `lamina-testnet`). `up` stays in the foreground until Ctrl-C and then stops every
//! node it started, unless `--detach`ed. `partition`/`heal` cut and restore links of a
//! `--netns` testnet.

use anyhow::Context;

use crate::cli::TestnetCommand;

/// `model` itself when it is a file; else, when it names a synthetic preset, that preset
/// written once (Q8_0, seed 0) into `dir`, with a progress bar.
fn model_or_preset(
    model: std::path::PathBuf,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    if model.exists() {
        return Ok(model);
    }
    let name = model.to_string_lossy().into_owned();
    let preset = lamina_sharding::synth::preset(&name).map_err(|e| {
        anyhow::anyhow!(
            "{} is neither a model file nor a synthetic preset: {e}",
            model.display()
        )
    })?;
    let spec = lamina_sharding::synth::SynthSpec::new(
        preset.name,
        lamina_sharding::synth::SynthDType::Q8_0,
        0,
    )?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(format!("{}-q8_0-seed0.gguf", preset.name));
    if !out.exists() {
        super::model::write_synth(&spec, &out)?;
    }
    Ok(out)
}

pub fn run(cmd: TestnetCommand) -> anyhow::Result<()> {
    match cmd {
        TestnetCommand::Up {
            nodes,
            model,
            state,
            redundancy,
            layers_per_node,
            dir,
            placement,
            threads,
            detach,
            netns,
            nat,
            relay,
            open,
            latency,
            jitter,
            loss,
            bandwidth,
            api_keys,
            verify_rate,
            adversary,
        } => {
            let exe = std::env::current_exe()?;
            let dir = dir.unwrap_or_else(|| {
                let mut d = state.clone().into_os_string();
                d.push(".d");
                d.into()
            });
            let model = model_or_preset(model, &dir)?;
            let mut opts = lamina_testnet::UpOptions::new(exe, nodes, model, state.clone(), dir);
            // Absolute: `restart` runs the nodes' arguments again from anywhere.
            opts.api_keys = match api_keys {
                Some(k) => Some(
                    std::fs::canonicalize(&k)
                        .with_context(|| format!("--api-keys {}: cannot read it", k.display()))?,
                ),
                None => None,
            };
            opts.placement = match (redundancy, layers_per_node, placement) {
                (Some(k), _, _) => lamina_testnet::Placement::Redundant(k),
                (_, Some(n), _) => lamina_testnet::Placement::PerNode(n),
                (_, _, crate::cli::PlacementArg::Even) => lamina_testnet::Placement::Even,
                (_, _, crate::cli::PlacementArg::Auto) => lamina_testnet::Placement::Auto,
            };
            opts.threads = threads;
            if !(0.0..=1.0).contains(&verify_rate) {
                anyhow::bail!("--verify-rate {verify_rate} is outside 0..=1");
            }
            opts.verify_rate = verify_rate;
            if let Some((i, _)) = adversary.iter().find(|(i, _)| *i >= nodes) {
                anyhow::bail!("--adversary node-{i}: the testnet has {nodes} nodes");
            }
            opts.adversaries = adversary;
            opts.netns = netns;
            opts.nat = nat.into_iter().flatten().collect();
            opts.relays = relay;
            opts.open = open;
            if latency.is_some() || jitter.is_some() || loss.is_some() || bandwidth.is_some() {
                let spec = lamina_testnet::relay::LinkSpec {
                    latency: latency.unwrap_or_default(),
                    jitter: jitter.unwrap_or_default(),
                    loss: loss.unwrap_or(0.0),
                    bandwidth_bps: bandwidth,
                };
                spec.validate()?;
                if detach && !netns {
                    anyhow::bail!(
                        "--detach with link emulation needs --netns: on loopback `up` owns the relays that shape the links"
                    );
                }
                opts.link = Some(spec);
            }
            // Signals are caught before the first node starts: a Ctrl-C while they load
            // stops the ones started so far instead of leaving them behind.
            let stop = lamina_testnet::CancelFlag::new();
            catch_stop_signals(stop.clone())?;
            opts.cancel = Some(stop.clone());
            opts.observer = Some(super::progress::testnet_observer());
            let net = match lamina_testnet::up_with_links(&opts) {
                Ok(net) => net,
                Err(e) if stop.is_cancelled() => {
                    // Its nodes are stopped; a state file naming them would only mislead.
                    let _ = std::fs::remove_file(&state);
                    eprintln!("interrupted: {e:#}");
                    std::process::exit(130);
                }
                Err(e) => return Err(e),
            };
            for (i, n) in net.state.nodes.iter().enumerate() {
                let relay = net
                    .links
                    .as_ref()
                    .and_then(|l| l.relays().get(i))
                    .map(|r| format!(" via relay {}", r.local_addr()))
                    .unwrap_or_default();
                println!("{}{relay}", super::progress::node_line(n));
            }
            println!("state: {}", state.display());
            if let (true, Some(spec)) = (netns, &opts.link) {
                println!("every node's uplink shaped: {spec}");
            }
            if detach {
                return Ok(());
            }
            match &net.links {
                Some(links) => println!(
                    "up, with link emulation ({}) in this process; Ctrl-C or `lamina testnet down --state {}` stops it",
                    links.spec(),
                    state.display()
                ),
                None => println!(
                    "up; Ctrl-C or `lamina testnet down --state {}` stops it",
                    state.display()
                ),
            }
            // Until a signal, or until someone else ran `down` (the state file is gone).
            while !stop.is_cancelled() && state.exists() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            drop(net);
            if state.exists() {
                let n = lamina_testnet::down(&state)?;
                println!("stopped {n} node(s)");
            } else {
                println!("the testnet was stopped with `down`");
            }
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
        TestnetCommand::Partition { side, from, state } => {
            let st = lamina_testnet::TestnetState::read(&state)?;
            let ns = st
                .netns
                .as_ref()
                .with_context(|| format!("{} is not a --netns testnet", state.display()))?;
            let n = lamina_testnet::netns::partition(ns, &side, &from)?;
            println!(
                "cut {} link(s) between {} and {}",
                n / 2,
                side.join(","),
                if from.is_empty() {
                    "the rest".to_string()
                } else {
                    from.join(",")
                }
            );
            Ok(())
        }
        TestnetCommand::ShapeUplink {
            latency,
            jitter,
            loss,
            bandwidth,
            seed,
        } => {
            let spec = lamina_testnet::relay::LinkSpec {
                latency,
                jitter: jitter.unwrap_or_default(),
                loss: loss.unwrap_or(0.0),
                bandwidth_bps: bandwidth,
            };
            spec.validate()?;
            lamina_testnet::uplink::run(spec, seed)
        }
        TestnetCommand::Heal { state } => {
            let st = lamina_testnet::TestnetState::read(&state)?;
            let ns = st
                .netns
                .as_ref()
                .with_context(|| format!("{} is not a --netns testnet", state.display()))?;
            lamina_testnet::netns::heal(ns)?;
            println!("healed: every link is up");
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

/// Sets `stop` on every SIGINT (Ctrl-C) and SIGTERM from now on, on a thread of its own;
/// returns once the handlers are installed. Later signals are caught too, so a second
/// Ctrl-C cannot kill `up` half way through stopping the nodes.
fn catch_stop_signals(stop: lamina_testnet::CancelFlag) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (int, term) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    std::thread::Builder::new()
        .name("lamina-signals".into())
        .spawn(move || {
            let (mut int, mut term) = (int, term);
            rt.block_on(async {
                loop {
                    let got = tokio::select! {
                        r = int.recv() => r,
                        r = term.recv() => r,
                    };
                    if got.is_none() {
                        break;
                    }
                    stop.cancel();
                }
            })
        })?;
    Ok(())
}
