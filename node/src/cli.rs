//! The command line, declared with clap. Every flag is validated here or by the command
//! that uses it, so a bad value is a one-line error, never a panic.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    Node(NodeArgs),
    /// Start or stop a local testnet of node processes.
    #[command(subcommand)]
    Testnet(TestnetCommand),
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The model file (GGUF or safetensors directory).
    #[arg(long)]
    pub model: PathBuf,
    /// The layers to serve, e.g. 0..2.
    #[arg(long)]
    pub layers: String,
    /// The data-plane (QUIC, UDP) address; port 0 picks a free one (printed when ready).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Where the node keeps its certificate and key.
    #[arg(long, default_value = ".lamina")]
    pub data_dir: PathBuf,
    /// Sessions served at once.
    #[arg(long, default_value_t = 64, value_parser = parse_max_sessions)]
    pub max_sessions: usize,
    /// Close sessions idle this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_secs: u64,
    /// Serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /// /v1/models, /status, /metrics) on this address.
    #[arg(long)]
    pub api: Option<std::net::SocketAddr>,
    /// The chain file the HTTP API runs requests through (read on every request).
    #[arg(long)]
    pub api_chain: Option<PathBuf>,
    /// Generations the HTTP API runs at once; more are answered 429.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub api_max_concurrent: u64,
    /// Also write the ready line (JSON) to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Name in logs and handshakes.
    #[arg(long)]
    pub name: Option<String>,
    /// Compute threads (default: the physical cores).
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum TestnetCommand {
    /// Start N nodes on loopback, layers split evenly, and write the state file.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The model file every node serves a part of.
        #[arg(long)]
        model: PathBuf,
        /// The state file to write (JSON).
        #[arg(long)]
        state: PathBuf,
        /// Folder for data dirs and logs (default: STATE.d).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stop the nodes of a testnet.
    Down {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    /// The prompt (with --chat: the user's message).
    pub prompt: String,
    /// A GGUF file or a safetensors checkpoint directory. Without it, a small built-in
    /// random-weight model is used (its text is noise).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Run the model as these contiguous shards, chained in this process, e.g. 0..2,2..5.
    #[arg(long, value_name = "RANGES")]
    pub layers_split: Option<String>,
    /// Treat the prompt as a user message and render the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Penalty for tokens seen in the last 64 (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text is generated (may be repeated).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Compute threads (default: the physical cores).
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Output: the text as it streams, or one JSON object at the end.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Run through running nodes: a JSON chain file, a list of {layers, addr, fingerprint}.
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,
    /// Activations on the wire with --chain: f16 or f32 (bit-exact).
    #[arg(long, default_value = "f16")]
    pub activation_dtype: lamina_protocol::WireDType,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print a model's architecture, tensor types, per-layer sizes and model id.
    Inspect {
        /// A GGUF file or a safetensors checkpoint directory.
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Write a random-weight GGUF model of a real architecture.
    Synth {
        /// Architecture preset (tiny, stories260k-shape, smollm2-135m-shape,
        /// tinyllama-1.1b, llama-3-8b-shape).
        #[arg(long)]
        preset: String,
        /// Weight type: f32, f16, q8_0, q4_0, q4_1.
        #[arg(long, default_value = "q8_0")]
        dtype: String,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Override the number of layers.
        #[arg(long)]
        layers: Option<usize>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Thread counts from 1 to 1024: zero would deadlock and more is a typo.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a thread count from 1 to 1024")),
    }
}

/// Session limits from 1 to 65536.
fn parse_max_sessions(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a session count from 1 to 65536")),
    }
}
