//! The commands of the `lamina` binary, one module each.

mod chain;
mod demo;
mod generate;
mod keys;
mod mesh;
mod model;
pub mod node;
mod progress;
pub mod remote;
mod testnet;

use crate::cli::{Cli, Command};

/// The compute threads a process may really use when `--threads` is not given: the CPUs
/// of its affinity mask, within its cgroup's CPU quota (`available_parallelism` reads
/// both), not the host's core count.
pub fn default_compute_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Fixes the number of compute threads candle uses. Must run before any tensor work,
/// because candle sizes its thread pools once, from these variables, on first use.
pub fn set_compute_threads(n: usize) {
    // SAFETY (edition 2021: not unsafe): called at startup, before any other thread exists.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Node(args) => node::run(*args),
        Command::Testnet(cmd) => testnet::run(cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Mesh(cmd) => mesh::run(cmd),
        Command::Status { peer, format } => remote::status(&peer, format),
    }
}
