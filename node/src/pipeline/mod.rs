//! The pipeline client: the entry's side of a generation through a chain of hops.
//!
//! - [`chain`]: chains of hops, chain files;
//! - [`recv`]: waiting for a hop's answer (progress-aware), checking failure reports;
//! - [`session`]: one session through a chain ([`PipelineSession`]);
//! - [`deadline`]: per-step deadlines from what the chain has shown it can do (pure);
//! - [`ends`]: the model's embedding and head run by the entry (`--private-ends`);
//! - [`failover`]: a session that survives hop failures by re-planning and replaying;
//! - [`verify`]: spot checks of a random fraction of steps on other servers;
//! - [`generate`]: the async driver of a whole generation ([`ChainClient::generate`]),
//!   over sharding's pure generation machine.
//!
//! Everything here is async and runs on the caller's tokio runtime: no blocking thread
//! per generation, no `block_on` per step.

pub mod chain;
pub mod deadline;
pub mod ends;
pub mod failover;
pub mod generate;
pub mod recv;
pub mod session;
pub mod verify;

use std::time::Duration;

use lamina_protocol::{
    Digest, SamplingSettings, SessionId, SignedStepRecord, StepProduct, TraceId, WireDType,
};

pub use chain::{check_chain, read_chain_file, ChainHop};
pub use ends::EntryEnds;
pub use failover::{FailoverPolicy, FailoverSession};
pub use generate::{ChainClient, GenerateOptions, Observer};
pub use session::PipelineSession;
pub use verify::VerifyPolicy;

use crate::failure::Failure;

/// Errors of the pipeline client.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The chain given cannot run the model (empty, not contiguous): a local mistake.
    #[error("chain: {0}")]
    InvalidChain(String),
    /// No live peer serves these layers (after leaving out the ones that failed): no
    /// chain can be planned, so waiting or retrying here would only hang the request.
    #[error("layers {layers} are not served by any peer")]
    Uncovered { layers: String },
    /// No chain could be planned for another reason (a chain file that cannot be read,
    /// a fixed chain whose hop failed).
    #[error("no route: {0}")]
    NoRoute(String),
    /// A hop failed: `failure` is the typed fact the blame rules use; `detail` is text
    /// for people (possibly written by a peer, never parsed).
    #[error("{failure}: {detail}")]
    Hop { failure: Failure, detail: String },
    /// A replayed step drew another token than the lost chain did: the output would
    /// change, so the generation stops instead.
    #[error("replayed step {step} drew token {drawn} where the lost chain drew {expected}")]
    ReplayMismatch {
        step: usize,
        drawn: u32,
        expected: u32,
    },
    /// The generation failed on this side (tokenizer, sampler, a prompt that does not fit).
    #[error("generation: {0}")]
    Generation(#[from] lamina_sharding::Error),
}

impl PipelineError {
    /// A hop failure.
    pub fn hop(failure: Failure, detail: String) -> Self {
        Self::Hop { failure, detail }
    }

    /// The typed failure, if a hop failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Hop { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// Settings of one pipeline session.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Positions the session may hold (prompt + generated).
    pub max_length: u32,
    /// Activations on the wire (f16 by default; f32 for bit-exact runs).
    pub activation_dtype: WireDType,
    /// How the last hop picks tokens.
    pub sampling: SamplingSettings,
    /// Whether each step also returns the logits.
    pub return_logits: bool,
    /// Name in `Hello`.
    pub client_name: String,
    /// Bound on the connection to the first hop and on each answer to the open.
    pub open_timeout: Duration,
    /// Bound on every step's silence (a prefill through every hop included).
    pub step_timeout: Duration,
    /// The request this session serves, told to every hop for its logs.
    pub trace_id: Option<TraceId>,
    /// The model's ends, when this side runs them: the hops then get and give hidden
    /// states only, `sampling` and `return_logits` stay here (every reply has logits).
    pub ends: Option<EntryEnds>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            max_length: 256,
            activation_dtype: WireDType::F16,
            sampling: SamplingSettings::greedy(),
            return_logits: false,
            client_name: "lamina-client".into(),
            open_timeout: Duration::from_secs(15),
            step_timeout: Duration::from_secs(300),
            trace_id: None,
            ends: None,
        }
    }
}

/// The answer to one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReply {
    pub token: u32,
    /// The last position's logits, when asked for.
    pub logits: Option<Vec<f32>>,
    /// What the chain signed about the step, for the entry to check.
    pub proof: StepProof,
}

/// The step records of one answer (see `lamina_protocol::evidence`), unchecked, with
/// what they must agree with: the input the entry sent and the answer it got.
#[derive(Clone, Debug, PartialEq)]
pub struct StepProof {
    /// The session and step the answer is for.
    pub session: SessionId,
    pub step: u64,
    /// As they arrived: last hop first.
    pub records: Vec<SignedStepRecord>,
    /// Digest of the input this side sent.
    pub sent: Digest,
    /// The answer, as records state it (`None`: no answer to check, e.g. a test reply).
    pub answered: Option<StepProduct>,
}

impl Default for StepProof {
    /// Nothing to check (a reply the entry made itself).
    fn default() -> Self {
        Self {
            session: SessionId::from(0u128),
            step: 0,
            records: Vec::new(),
            sent: [0; 32],
            answered: None,
        }
    }
}

/// Per hop of the rest of a chain, the least time a hop gives its next hop to open a
/// session (connect, handshake, open the rest). Scaled by depth so that the hop just
/// above a dead one gives up first, and names it, before anyone above it does.
pub const OPEN_HOP_FLOOR: Duration = Duration::from_secs(2);

/// The entry's bound on opening a chain of `hops` hops: one floor more than its first
/// hop's bound on the rest.
pub fn open_timeout(hops: usize) -> Duration {
    OPEN_HOP_FLOOR * u32::try_from(hops + 1).unwrap_or(u32::MAX)
}
