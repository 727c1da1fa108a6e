//! The command line, declared with clap. Every flag is validated here or by the command
//! that uses it, so a bad value is a one-line error, never a panic.

use clap::{Parser, Subcommand, ValueEnum};

pub use crate::config::LayersChoice;

#[derive(Parser, Debug)]
#[command(
    name = "lamina",
    version,
    about = "A peer-to-peer, model-sharded inference mesh for large language models",
    long_about = "lamina runs transformer models split by layers across machines.\n\
                  Today it generates on one machine, optionally running the layer split of the \
                  mesh inside one process."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The compute thread count asked for, if any.
    pub fn threads(&self) -> Option<usize> {
        match &self.command {
            Command::Generate(g) => g.threads,
            Command::Node(n) => n.threads,
            _ => None,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt on this machine.
    Generate(GenerateArgs),
    /// Inspect or create model files.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve a layer range of a model on the QUIC data plane.
    Node(Box<NodeArgs>),
    /// Start or stop a local testnet of node processes.
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Make, list and revoke the API keys of `lamina node --api-keys`.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Start a local mesh of nodes on a model, send it a prompt, show the route, the text
    /// and tokens/s, and keep serving until Ctrl-C (the README's main command).
    Demo(DemoArgs),
    /// Make a private mesh, admit peers to it, revoke them.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Show the mesh as a running node sees it: peers, ranges, coverage, the last route.
    Status {
        /// The node's HTTP API, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        peer: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

mod generate;
mod keys;
mod mesh;
mod node;
mod parse;
mod testnet;

pub use generate::{GenerateArgs, ModelCommand};
pub use keys::KeysCommand;
pub use mesh::MeshCommand;
pub use node::{ApiAccessArgs, LimitArgs, NodeArgs};
pub use parse::{parse_bytes, parse_duration};
pub use testnet::{DemoArgs, PlacementArg, TestnetCommand};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}
