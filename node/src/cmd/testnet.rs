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
    }
}
