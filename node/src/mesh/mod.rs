//! The mesh: how nodes find each other, say what they serve, place themselves and route.
//!
//! - [`swarm`]: the libp2p swarm (QUIC, TCP + noise + yamux, mDNS, Kademlia under
//!   `/lamina/kad/1.0.0`, identify, ping, the announcement exchange) and the event loop that
//!   alone owns it;
//! - [`table`]: verified announcements, newest per peer (pure);
//! - [`plan`]: table -> the planners' view -> a chain of hops, or this node's range (pure);
//! - [`bans`]: which peers failed generations and how long routes avoid them (pure);
//! - this file: [`MeshHandle`], the cloneable handle the rest of the node uses, this node's
//!   own record (signed, refreshed before it expires, withdrawn on shutdown) and the
//!   persistent identity.

pub mod bans;
pub mod plan;
pub mod swarm;
pub mod table;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lamina_protocol::{Announcement, ModelId};
use lamina_sharding::planner::{Coverage, PlanError};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::mpsc;

use self::plan::{Observations, PlannedRoute};
use self::swarm::{Command, EventLoop, SwarmOptions};
use self::table::Table;

/// How long a record lives. Short, because expiry is how a node that died without a word
/// (kill -9, a cut cable) leaves everyone's view: at most this long after its last refresh.
pub const RECORD_TTL: Duration = Duration::from_secs(9);
/// How often a node re-signs its record: three refreshes per TTL, so one lost sync round
/// never lets a live node expire.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3);

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("identity key {path}: {message}")]
    Identity { path: String, message: String },
    #[error("swarm: {0}")]
    Swarm(String),
    #[error("announcement: {0}")]
    Announce(#[from] lamina_protocol::AnnounceError),
    #[error("the mesh event loop has stopped")]
    Stopped,
}

/// Milliseconds since the Unix epoch: the clock announcements are stamped and judged by.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Loads the node's ed25519 identity from `dir/p2p.key`, or creates it there (mode 0600):
/// the peer id must survive restarts, or every restart would look like a new node and its
/// old record would linger as a ghost until it expired.
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair, MeshError> {
    let path = dir.join("p2p.key");
    let err = |message: String| MeshError::Identity {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            write_private(&tmp, &bytes).map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(bytes)
}

/// What the event loop and the handles share.
#[derive(Default)]
pub struct MeshState {
    pub table: Table,
    pub obs: Observations,
    pub connected: HashSet<PeerId>,
    pub listen_addrs: Vec<Multiaddr>,
    /// A sync with some peer has completed.
    pub synced: bool,
    /// Records dropped for failing verification.
    pub rejected: u64,
    /// The last route planned, for `/status`.
    pub last_route: Option<serde_json::Value>,
    /// Peers (by certificate) that failed generations, avoided for a while.
    pub bans: bans::Bans,
}

/// This node's own record: the fields it sets, and the sequence number of the last signed
/// copy.
struct Own {
    template: Announcement,
    seq: u64,
}

/// The handle the node uses to talk to the mesh. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    state: Arc<Mutex<MeshState>>,
    commands: mpsc::Sender<Command>,
    key: Keypair,
    me: PeerId,
    model_id: ModelId,
    n_layers: usize,
    own: Arc<Mutex<Own>>,
}

impl MeshHandle {
    /// Builds the swarm, starts its event loop on the current tokio runtime, and returns
    /// the handle. `template` is this node's record (its seq and times are set here).
    pub fn start(
        key: Keypair,
        opts: &SwarmOptions,
        template: Announcement,
    ) -> Result<Self, MeshError> {
        let swarm = swarm::build_swarm(&key, opts)?;
        let state = Arc::new(Mutex::new(MeshState::default()));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(EventLoop::new(swarm, state.clone(), rx).run());
        let me = key.public().to_peer_id();
        Ok(Self {
            state,
            commands: tx,
            me,
            model_id: template.model_id,
            n_layers: template.n_layers as usize,
            own: Arc::new(Mutex::new(Own { template, seq: 0 })),
            key,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    pub fn model_id(&self) -> ModelId {
        self.model_id
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeshState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn own(&self) -> std::sync::MutexGuard<'_, Own> {
        self.own
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The p2p addresses this node listens on, each with its `/p2p/<peer id>` suffix.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.lock()
            .listen_addrs
            .iter()
            .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(self.me)))
            .collect()
    }

    /// Waits until the swarm listens (so the record can carry its addresses).
    pub async fn wait_listening(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.lock().listen_addrs.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a first table exchange has completed, or `timeout` (a lone first node
    /// has nobody to sync with).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.lock().synced {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Changes this node's record with `f`, signs it with a new seq and gossips it now.
    pub fn update(&self, f: impl FnOnce(&mut Announcement)) -> Result<(), MeshError> {
        let signed = {
            let mut own = self.own();
            f(&mut own.template);
            let now = now_ms();
            // The seq must grow across restarts too (the identity persists, and a stale
            // record with a higher seq would shadow the new one): the clock provides that.
            own.seq = (own.seq + 1).max(now);
            let listen: Vec<String> = self.listen_addrs().iter().map(|a| a.to_string()).collect();
            let mut a = own.template.clone();
            a.seq = own.seq;
            a.issued_at_ms = now;
            a.expires_at_ms = now + RECORD_TTL.as_millis() as u64;
            if a.listen_addrs.is_empty() {
                a.listen_addrs = listen.into_iter().take(8).collect();
            }
            a.sign(&self.key)?
        };
        self.lock().table.insert(signed, now_ms())?;
        // A full channel means a push is queued already; that one carries the new record.
        let _ = self.commands.try_send(Command::Push);
        Ok(())
    }

    /// Re-signs the record before it expires, forever (spawn it).
    pub async fn refresh_forever(self) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.update(|_| {}) {
                tracing::warn!("cannot refresh the announcement: {e}");
            }
        }
    }

    /// Signs and gossips a withdrawal, and waits briefly for it to leave.
    pub async fn withdraw(&self) -> Result<(), MeshError> {
        let signed = {
            let mut own = self.own();
            let now = now_ms();
            own.seq = (own.seq + 1).max(now);
            let mut a = own.template.clone();
            a.seq = own.seq;
            a.issued_at_ms = now;
            a.expires_at_ms = now;
            a.withdrawn = true;
            a.sign(&self.key)?
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Withdraw(signed, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        Ok(())
    }

    /// The live records of this node's model, cloned (sorted by peer id).
    pub fn live(&self) -> Vec<(PeerId, Announcement)> {
        self.lock()
            .table
            .live(&self.model_id, now_ms())
            .into_iter()
            .map(|(p, a)| (p, a.clone()))
            .collect()
    }

    pub fn observations(&self) -> Observations {
        self.lock().obs.clone()
    }

    /// The cheapest chain over the whole model from fresh records and measured RTTs.
    pub fn route(&self) -> Result<PlannedRoute, PlanError> {
        self.route_avoiding(&HashSet::new())
    }

    /// Avoids the peer with this certificate for a while: it failed a generation (see
    /// [`bans`] for how long). A later record does not lift the ban (a peer that lies
    /// about being fine would otherwise be retried at once); its expiry or a restart does.
    pub fn ban(&self, cert: lamina_protocol::CertFingerprint) {
        let now = now_ms();
        let mut st = self.lock();
        let ban = st.bans.fail(cert, now);
        let failures = st.bans.failures(&cert, now);
        drop(st);
        tracing::info!(peer = %cert, ban_ms = ban.as_millis() as u64, failures, "banned");
    }

    /// As [`route`](Self::route), also avoiding `exclude` (failover) and banned peers.
    pub fn route_avoiding(
        &self,
        exclude: &HashSet<lamina_protocol::CertFingerprint>,
    ) -> Result<PlannedRoute, PlanError> {
        let live = self.live();
        let banned: HashSet<lamina_protocol::CertFingerprint> = self
            .lock()
            .bans
            .active(now_ms(), |cert| started_at(&live, cert))
            .into_iter()
            .collect();
        let live: Vec<(PeerId, Announcement)> = live
            .into_iter()
            .filter(|(_, a)| !exclude.contains(&a.cert) && !banned.contains(&a.cert))
            .collect();
        let refs: Vec<(PeerId, &Announcement)> = live.iter().map(|(p, a)| (*p, a)).collect();
        let obs = self.observations();
        let view = plan::routing_view(
            &refs,
            &self.model_id,
            self.n_layers,
            now_ms(),
            &obs,
            &self.me,
        );
        let r = plan::route(&view, &refs);
        let summary = match &r {
            Ok(r) => json!({
                "hops": r.hops.iter().zip(&r.peers).map(|(h, p)| json!({
                    "peer": p.to_string(), "layers": h.layers.to_string(), "addr": h.addr,
                })).collect::<Vec<_>>(),
                "est_ms_per_token": r.est_secs_per_token * 1e3,
            }),
            Err(e) => json!({"error": e.to_string()}),
        };
        self.lock().last_route = Some(summary);
        r
    }

    /// The mesh as placement sees it (loading nodes included).
    pub fn placement_view(&self) -> lamina_sharding::planner::MeshView {
        let live = self.live();
        let refs: Vec<(PeerId, &Announcement)> = live.iter().map(|(p, a)| (*p, a)).collect();
        plan::placement_view(&refs, &self.model_id, self.n_layers, now_ms())
    }

    /// `GET /status`'s view of the mesh: peers, coverage per layer, the last route.
    pub fn status(&self) -> serde_json::Value {
        let now = now_ms();
        let live = self.live();
        let obs = self.observations();
        let refs: Vec<(PeerId, &Announcement)> = live.iter().map(|(p, a)| (*p, a)).collect();
        let view = plan::routing_view(&refs, &self.model_id, self.n_layers, now, &obs, &self.me);
        let coverage = Coverage::of(&view);
        let (connected, rejected, last_route, bans) = {
            let st = self.lock();
            (
                st.connected.len(),
                st.rejected,
                st.last_route.clone(),
                st.bans.clone(),
            )
        };
        let peers: Vec<_> = live
            .iter()
            .map(|(p, a)| {
                json!({
                    "peer_id": p.to_string(),
                    "self": *p == self.me,
                    "layers": a.layers.map(|r| r.to_string()),
                    "state": format!("{:?}", a.state).to_lowercase(),
                    "tokens_per_sec": a.tokens_per_sec,
                    "free_slots": a.free_slots,
                    "dataplane": a.dataplane_addr,
                    "api": a.api,
                    "rtt_ms": obs.rtt.get(p).map(|d| d.as_secs_f64() * 1e3),
                    "reachable": !obs.unreachable.contains(p),
                    // Routes avoid a peer that failed a generation until this runs out.
                    "banned_for_ms": bans
                        .remaining(&a.cert, now, started_at(&live, &a.cert))
                        .map_or(0, |d| d.as_millis() as u64),
                    "failures": bans.failures(&a.cert, now),
                    "expires_in_ms": a.expires_at_ms.saturating_sub(now),
                    "version": a.lamina_version,
                })
            })
            .collect();
        json!({
            "peer_id": self.me.to_string(),
            "model_id": self.model_id.to_string(),
            "n_layers": self.n_layers,
            "listen": self.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "connected_peers": connected,
            "rejected_announcements": rejected,
            "peers": peers,
            "coverage": coverage.layers().iter().map(|l| json!({
                "servers": l.servers, "tokens_per_sec": l.tokens_per_sec,
            })).collect::<Vec<_>>(),
            "uncovered": coverage.uncovered().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "complete": coverage.is_complete(),
            "last_route": last_route,
        })
    }
}

/// When the newest live incarnation of the peer with `cert` started.
fn started_at(
    live: &[(PeerId, Announcement)],
    cert: &lamina_protocol::CertFingerprint,
) -> Option<u64> {
    live.iter()
        .filter(|(_, a)| &a.cert == cert)
        .map(|(_, a)| a.started_at_ms)
        .max()
}

/// The HTTP API plans every request's chain from the mesh.
impl crate::api::RouteSource for MeshHandle {
    fn route(&self) -> Result<Vec<crate::pipeline::ChainHop>, crate::api::RouteError> {
        match MeshHandle::route(self) {
            Ok(r) => Ok(r.hops),
            Err(PlanError::Uncovered { uncovered, .. }) => Err(crate::api::RouteError::Uncovered {
                layers: lamina_sharding::planner::format_ranges(&uncovered),
            }),
            Err(e) => Err(crate::api::RouteError::Other(e.to_string())),
        }
    }

    fn status(&self) -> serde_json::Value {
        MeshHandle::status(self)
    }

    fn route_excluding(
        &self,
        exclude: &HashSet<lamina_protocol::CertFingerprint>,
    ) -> Result<Vec<crate::pipeline::ChainHop>, crate::api::RouteError> {
        match self.route_avoiding(exclude) {
            Ok(r) => Ok(r.hops),
            Err(PlanError::Uncovered { uncovered, .. }) => Err(crate::api::RouteError::Uncovered {
                layers: lamina_sharding::planner::format_ranges(&uncovered),
            }),
            Err(e) => Err(crate::api::RouteError::Other(e.to_string())),
        }
    }

    fn report_failure(&self, cert: lamina_protocol::CertFingerprint) {
        self.ban(cert);
    }
}
