//! The session server: what a hop serves (its shard, swapped whole when the node moves)
//! and the limits it keeps (session slots, draining). The accept loop is in
//! [`super::accept`]; each stream's loop in [`super::stream`].
//!
//! Results travel back along the chain (each hop relays the `StepResult` of its next hop on
//! the same stream) rather than from the last hop straight to the client: the client needs
//! no listening socket (it may sit behind NAT), each session is exactly one stream per
//! neighbour, and a failed hop is reported by the hop before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lamina_protocol::{ForwardInput, FrameLimits, ModelId};
use lamina_sharding::executor::Shard;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::faults::FaultPlan;
use super::machine::HostInfo;
use super::queue::ComputeQueue;
use super::reporter::Reporter;
use crate::dataplane::Dialer;
use crate::limits::{Connections, KvBudget, PeerBounds, Refusals};
use crate::trust::SharedGate;

/// Limits and policies of a session server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Name for logs and `HelloAck`.
    pub node_name: String,
    /// Sessions served at once; the next `OpenSession` gets `SessionLimit`.
    pub max_sessions: usize,
    /// A stream silent this long is closed (its session freed, an unasked `Closed` sent).
    pub idle_timeout: Duration,
    /// Frame limits of every stream (once its session is open).
    pub limits: FrameLimits,
    /// What one peer can make the server spend: KV budget, rows per step, deadlines,
    /// connections.
    pub peers: PeerBounds,
    /// Where refusals are counted (the node's metrics share it).
    pub refusals: Refusals,
    /// Faults to inject (churn tests only; `None` in the daemon).
    pub faults: Option<Arc<FaultPlan>>,
    /// Who may open sessions: judged at every `Hello` on the peer id the TLS handshake
    /// proved (open by default).
    pub gate: SharedGate,
    /// Rows one forward may stack from waiting sessions' steps (1: no batching).
    pub batch_rows: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            node_name: "lamina".into(),
            max_sessions: 64,
            idle_timeout: Duration::from_secs(300),
            limits: FrameLimits::default(),
            peers: PeerBounds::default(),
            refusals: Refusals::default(),
            faults: None,
            gate: SharedGate::default(),
            batch_rows: super::queue::DEFAULT_BATCH_ROWS,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the shard's layers: {0}")]
    Layers(#[from] lamina_protocol::ProtocolError),
    #[error("cannot start the compute thread: {0}")]
    Compute(#[from] std::io::Error),
}

/// The shard a server hosts and what it tells peers about it. Swapped whole when the
/// node moves to other layers; a session keeps the `Served` it opened with until it ends,
/// so sessions in flight finish on the old layers while new ones get the new.
pub struct Served {
    pub shard: Arc<Shard>,
    pub host: HostInfo,
}

impl Served {
    fn new(shard: Arc<Shard>, model_id: ModelId, opts: &ServerOptions) -> Self {
        let node_name = &opts.node_name;
        let cfg = shard.config();
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let host = HostInfo {
            node_name: node_name.to_string(),
            model_id,
            layers: shard.range(),
            n_layers: u(cfg.n_layers),
            hidden_dim: u(cfg.dim),
            vocab_size: u(cfg.vocab_size),
            context_length: u(cfg.context_length),
            max_step_rows: opts.peers.max_step_rows,
        };
        Self { shard, host }
    }
}

/// Serves one shard to data-plane peers.
pub struct SessionServer {
    served: RwLock<Arc<Served>>,
    /// Set on shutdown: new sessions are refused with `ShuttingDown`, open ones go on.
    draining: AtomicBool,
    model_id: ModelId,
    slots: Arc<Semaphore>,
    dialer: Dialer,
    reporter: Reporter,
    compute: ComputeQueue,
    inputs: InputCounts,
    /// KV bytes the open sessions reserved, against [`PeerBounds::kv_budget_bytes`].
    kv: KvBudget,
    /// Data-plane connections held, in all and per peer.
    conns: Connections,
    /// QUIC handshakes in flight.
    handshakes: Arc<Semaphore>,
    opts: ServerOptions,
}

/// What kind of input this server's sessions were fed, counted per step: a hop fed token
/// ids learns the text (the first hop of a default session); one fed hidden states only
/// does not (every hop of a session whose entry runs the ends).
#[derive(Debug, Default)]
pub struct InputCounts {
    tokens: AtomicU64,
    hidden: AtomicU64,
}

impl InputCounts {
    pub(crate) fn count(&self, input: &ForwardInput) {
        let c = match input {
            ForwardInput::Tokens(_) => &self.tokens,
            ForwardInput::Hidden(_) => &self.hidden,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Steps whose input was token ids.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Steps whose input was hidden states.
    pub fn hidden(&self) -> u64 {
        self.hidden.load(Ordering::Relaxed)
    }
}

impl SessionServer {
    /// A server for `shard` of model `model_id`; `dialer` opens streams to next hops,
    /// `reporter` signs this hop's failure reports.
    pub fn new(
        shard: Arc<Shard>,
        model_id: ModelId,
        dialer: Dialer,
        reporter: Reporter,
        opts: ServerOptions,
    ) -> Result<Arc<Self>, ServerError> {
        let served = Served::new(shard, model_id, &opts);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel_threads = lamina_sharding::kernels::pool::global().threads();
        let compute = ComputeQueue::start_with(
            &format!("{}-compute", opts.node_name),
            super::queue::workers_for(cores, kernel_threads),
            opts.batch_rows,
        )?;
        Ok(Arc::new(Self {
            served: RwLock::new(Arc::new(served)),
            draining: AtomicBool::new(false),
            model_id,
            slots: Arc::new(Semaphore::new(opts.max_sessions)),
            dialer,
            reporter,
            compute,
            inputs: InputCounts::default(),
            kv: KvBudget::new(opts.peers.kv_budget_bytes),
            conns: Connections::new(
                opts.peers.max_connections,
                opts.peers.max_connections_per_peer,
            ),
            handshakes: Arc::new(Semaphore::new(opts.peers.max_handshakes.max(1))),
            opts,
        }))
    }

    /// The kinds of input its sessions were fed.
    pub fn inputs(&self) -> &InputCounts {
        &self.inputs
    }

    /// What this server hosts now.
    pub fn current(&self) -> Arc<Served> {
        self.served
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What this server hosts now.
    pub fn host(&self) -> HostInfo {
        self.current().host.clone()
    }

    /// Serves `shard` to sessions opened from now on; open sessions keep the old one.
    pub fn replace(&self, shard: Arc<Shard>) {
        let served = Arc::new(Served::new(shard, self.model_id, &self.opts));
        *self.served.write().unwrap_or_else(PoisonError::into_inner) = served;
    }

    /// Stops accepting sessions: from now on every `OpenSession` is answered
    /// `ShuttingDown` (the entry opens it elsewhere), while the sessions already open run
    /// to their end. Why not just withdraw the announcement: peers route from tables that
    /// lag by up to a record's lifetime, and a session opened here now would be cut off
    /// when the drain ends.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!("draining: refusing new sessions");
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.opts
            .max_sessions
            .saturating_sub(self.slots.available_permits())
    }

    /// Waits (at most `t`) until no session is open; whether none is. Meant for a
    /// draining server, which opens no new ones meanwhile.
    pub async fn wait_idle(&self, t: Duration) -> bool {
        let all = u32::try_from(self.opts.max_sessions).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(t, self.slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// Refusals by bound, for `/metrics`.
    pub fn refusals(&self) -> &Refusals {
        &self.opts.refusals
    }

    /// The KV budget and what open sessions hold of it.
    pub fn kv_budget(&self) -> &KvBudget {
        &self.kv
    }

    /// Connections held, in all and per peer.
    pub fn connections(&self) -> &Connections {
        &self.conns
    }

    pub(super) fn handshakes(&self) -> &Arc<Semaphore> {
        &self.handshakes
    }

    pub(super) fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    pub(super) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// How the compute queue batched so far (`/metrics`).
    pub fn compute_stats(&self) -> &super::queue::BatchStats {
        self.compute.stats()
    }

    pub(super) fn compute(&self) -> &ComputeQueue {
        &self.compute
    }

    /// A session slot, if one is free.
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}
