//! The `lamina` binary: parses the command line and runs one command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lamina_node::cli::Cli::parse();
    // Thread counts must be fixed before candle builds its pools on first use, and always:
    // left unset, candle works its default out again on every matmul (it reads
    // /proc/cpuinfo each time), which cost 1.14x the wall time of `--threads 2`.
    let threads = cli
        .threads()
        .unwrap_or_else(lamina_node::cmd::default_compute_threads);
    lamina_node::cmd::set_compute_threads(threads);
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAMINA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: per-node log files stay plain text, so `grep id=X` works.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match lamina_node::cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
