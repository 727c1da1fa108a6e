//! The one task that owns the swarm and the mesh state, as in rust-libp2p's file-sharing
//! example: the rest of the node sends [`Command`]s through a [`super::MeshHandle`] and
//! reads the [`MeshSnapshot`]s this loop publishes after every change.
//!
//! Announcements travel by anti-entropy: every [`SYNC_INTERVAL`], and at once when this
//! node's own record changes or a connection opens, the node sends every peer it is
//! connected to the records it holds, and the peer answers with its own. A record thus
//! reaches the whole connected mesh in a few rounds without a DHT lookup per key, and a
//! node that joins learns the whole table from its first neighbour in one round trip.
//! Each record is verified on arrival ([`super::table`]), so relays cannot forge or alter.
//!
//! Before any of that, every connection passes the gate: both sides send a [`MemberHello`]
//! (their certificate and the revocations they know) and judge the other's against the
//! peer id the transport proved. Only admitted peers exchange records; a peer refused, or
//! without proof after [`ADMISSION_TIMEOUT`], is disconnected. Revocations spread the same
//! way: a node that learns one cuts the peer off and hands it to every admitted peer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lamina_protocol::{
    AnnounceError, Announcement, MemberError, SignedAnnouncement, SignedRevocation,
};
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::{DialError, ListenError, SwarmEvent};
use libp2p::{autonat, dcutr, identify, kad, mdns, ping, relay, upnp, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{
    Behaviour, BehaviourEvent, MemberHello, Sync, ADMISSION_TIMEOUT, KEEP_WITHDRAWN_MS, MAX_PEERS,
    MAX_REVOCATIONS_PER_MESSAGE, MAX_SYNC_RECORDS, REDIAL_BACKOFF, RELAY_HOP_PROTOCOL,
    SYNC_INTERVAL,
};
use super::gossip::Refusal;
use super::limits::MeshLimits;
use super::paths::{Path, Paths};
use super::state::{MeshSnapshot, MeshState};
use super::table::Inserted;
use super::{MeshError, RECORD_TTL, REFRESH_INTERVAL};
use crate::ids::now_ms;
use crate::trust::SharedGate;

mod admission;

/// A change to this node's own record.
pub type RecordEdit = Box<dyn FnOnce(&mut Announcement) + Send>;

/// Requests from the rest of the node to the event loop.
pub enum Command {
    /// Change this node's record, sign it anew and gossip it now.
    Update(RecordEdit, oneshot::Sender<Result<(), MeshError>>),
    /// Withdraw this node's record: send the withdrawal to every connected peer, give it a
    /// moment on the wire, then answer. The record is not refreshed any more.
    Withdraw(oneshot::Sender<Result<(), MeshError>>),
    /// A peer failed a generation: ban it for a while.
    Ban(PeerId),
    /// This node measured a peer's speed (tokens/s through its announced range).
    Measured(PeerId, f64),
    /// A revocation signed by the mesh's authority: cut the peer off here and hand the
    /// revocation to every admitted peer.
    Revoke(SignedRevocation, oneshot::Sender<Result<(), MeshError>>),
}

/// Owns the swarm; runs until every handle is dropped.
pub struct EventLoop {
    swarm: libp2p::Swarm<Behaviour>,
    state: MeshState,
    key: Keypair,
    commands: mpsc::Receiver<Command>,
    snapshots: watch::Sender<MeshSnapshot>,
    me: PeerId,
    last_dial: HashMap<PeerId, Instant>,
    bootstrapped: bool,
    /// Something changed since the last published snapshot.
    dirty: bool,
    /// The table changed: the snapshot's records must be rebuilt.
    records_dirty: bool,
    /// Who may take part.
    gate: SharedGate,
    /// Connected peers that proved membership: the only ones records go to or come from.
    admitted: HashSet<PeerId>,
    /// Connected peers that have not proved membership yet, and since when.
    pending: HashMap<PeerId, Instant>,
    /// Since when each connected peer is connected.
    connected_at: HashMap<PeerId, Instant>,
    /// This node learnt its own revocation: it stops dialing (every member refuses it).
    revoked_self: bool,
    limits: MeshLimits,
    /// Peers with per-peer state (RTT, reachability, dial times, gossip budgets) that are
    /// neither connected nor in the table, and since when: dropped after
    /// [`MeshLimits::departed_grace`].
    departed: HashMap<PeerId, Instant>,
    /// How each connected peer is reached (direct, hole-punched, relayed).
    paths: Paths,
    /// Peers that serve as relays (identify lists the hop protocol), with their addresses.
    relays: HashMap<PeerId, Vec<Multiaddr>>,
    /// The relay this node listens through (its reservation), while it does.
    relay_listener: Option<(ListenerId, PeerId)>,
    /// Told it is behind a NAT (`--behind-nat`): reserve without waiting for AutoNAT.
    behind_nat: bool,
    /// Serves as a relay: its listen addresses are its external ones.
    relay_server: bool,
}

impl EventLoop {
    pub fn new(
        swarm: libp2p::Swarm<Behaviour>,
        state: MeshState,
        key: Keypair,
        commands: mpsc::Receiver<Command>,
        snapshots: watch::Sender<MeshSnapshot>,
        gate: SharedGate,
        limits: MeshLimits,
    ) -> Self {
        let me = *swarm.local_peer_id();
        Self {
            swarm,
            state,
            key,
            commands,
            snapshots,
            me,
            last_dial: HashMap::new(),
            bootstrapped: false,
            dirty: true,
            records_dirty: true,
            gate,
            admitted: HashSet::new(),
            pending: HashMap::new(),
            connected_at: HashMap::new(),
            revoked_self: false,
            limits,
            departed: HashMap::new(),
            paths: Paths::default(),
            relays: HashMap::new(),
            relay_listener: None,
            behind_nat: false,
            relay_server: false,
        }
    }

    /// This loop for a node behind a NAT (`behind_nat`) and/or a relay (`relay_server`).
    pub fn with_nat(mut self, behind_nat: bool, relay_server: bool) -> Self {
        self.behind_nat = behind_nat;
        self.relay_server = relay_server;
        self
    }

    /// A listen address with this node's `/p2p/ID` at the end (a circuit address names
    /// the node already: `.../p2p-circuit/p2p/ME`).
    fn with_own_id(&self, address: Multiaddr) -> Multiaddr {
        if matches!(address.iter().last(), Some(Protocol::P2p(_))) {
            address
        } else {
            address.with(Protocol::P2p(self.me))
        }
    }

    /// Closes `peer`'s relayed connections once a better one exists: sessions must not
    /// land on a circuit (libp2p-stream picks any connection to the peer), and the relay
    /// should not carry what a direct path can.
    fn close_redundant_relayed(&mut self, peer: PeerId) {
        for c in self.paths.redundant_relayed(&peer) {
            self.swarm.close_connection(c);
        }
    }

    /// Copies the paths into the state: `/status` shows them, routing charges relayed
    /// hops more ([`super::plan::RELAYED_RTT_FACTOR`]).
    fn publish_paths(&mut self) {
        self.state.paths = self.paths.summary();
        self.state.obs.relayed = self
            .state
            .paths
            .iter()
            .filter(|(_, p)| **p == Path::Relayed)
            .map(|(p, _)| *p)
            .collect();
    }

    /// Puts `full` at the head of this node's addresses and re-signs its record: the record
    /// keeps only its first addresses, and this is one peers can dial.
    fn advertise_first(&mut self, full: Multiaddr) {
        if self.state.listen_addrs.first() == Some(&full) {
            return;
        }
        self.state.listen_addrs.retain(|a| *a != full);
        self.state.listen_addrs.insert(0, full);
        self.dirty = true;
        if self.state.own.seq > 0 {
            if let Err(e) = self.sign_own() {
                tracing::warn!("cannot re-sign the record: {e}");
            }
        }
    }

    /// Whether this node needs a relay: told so, or AutoNAT found it unreachable.
    fn needs_relay(&self) -> bool {
        self.behind_nat
            || matches!(
                self.swarm.behaviour().autonat.nat_status(),
                autonat::NatStatus::Private
            )
    }

    /// Reserves a circuit on a known relay (an admitted one) when this node needs one and
    /// has none: listening on `/p2p/RELAY/p2p-circuit` makes the relay client reserve,
    /// and the circuit address it yields is announced like any listen address.
    fn maybe_reserve(&mut self) {
        if self.relay_listener.is_some() || self.relay_server || !self.needs_relay() {
            return;
        }
        let pick = self
            .relays
            .iter()
            .filter(|(p, _)| self.admitted.contains(p))
            .find_map(|(p, addrs)| {
                let direct = |a: &&Multiaddr| !a.iter().any(|x| x == Protocol::P2pCircuit);
                let quic = addrs
                    .iter()
                    .filter(direct)
                    .find(|a| a.iter().any(|x| matches!(x, Protocol::QuicV1)));
                quic.or_else(|| addrs.iter().find(direct))
                    .map(|a| (*p, a.clone()))
            });
        let Some((relay, addr)) = pick else { return };
        let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                tracing::info!(%relay, %circuit, "reserving a circuit on a relay");
                self.relay_listener = Some((id, relay));
            }
            Err(e) => tracing::warn!(%relay, "cannot listen through the relay: {e}"),
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Addresses an operator configured (`--external-addr`) were confirmed before the
        // swarm ran: no event announces them.
        let configured: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        for address in configured {
            let full = self.with_own_id(address);
            self.advertise_first(full);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                _ = refresh.tick() => self.refresh(),
            }
            self.publish();
        }
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut snap = self.state.snapshot(now_ms());
        if !self.records_dirty {
            // The table did not change: keep the records already published.
            snap.records = self.snapshots.borrow().records.clone();
        }
        self.records_dirty = false;
        self.snapshots.send_replace(snap);
    }

    fn table_changed(&mut self) {
        self.dirty = true;
        self.records_dirty = true;
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Update(edit, done) => {
                edit(&mut self.state.own.template);
                let _ = done.send(self.sign_own());
            }
            Command::Withdraw(done) => {
                self.state.own.withdrawn = true;
                let r = self.sign_own();
                // Give the requests a moment on the wire before the process exits.
                let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                while let Ok(ev) =
                    tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
                {
                    self.on_swarm_event(ev);
                }
                let _ = done.send(r);
            }
            Command::Revoke(r, done) => {
                let res = match self.gate.write(|g| g.learn_revocation(&r)) {
                    Ok(Some(peer)) => {
                        self.cut_off(peer);
                        self.forward_revocations(vec![r]);
                        Ok(())
                    }
                    Ok(None) => {
                        // Known already, or an open mesh: pass it on anyway (cheap, and
                        // it may not have reached everyone).
                        self.forward_revocations(vec![r]);
                        Ok(())
                    }
                    Err(e) => Err(MeshError::Revocation(e)),
                };
                let _ = done.send(res);
            }
            Command::Measured(peer, tps) => {
                let now = now_ms();
                // Judged against what the peer claims now, from its own record.
                let claimed = self
                    .state
                    .table
                    .get(&peer)
                    .map(|e| f64::from(e.record.tokens_per_sec));
                if let Some(claimed) = claimed {
                    let was = self.state.speeds.get(&peer).is_some_and(|m| m.demoted);
                    let m = self.state.speeds.record(peer, tps, claimed, now);
                    if let Some(m) = m.filter(|m| m.demoted && !was) {
                        tracing::info!(
                            %peer, claimed, measured = m.tokens_per_sec,
                            "a hop measured far below its claim: ranked by measurement only"
                        );
                    }
                    self.dirty = true;
                }
            }
            Command::Ban(peer) => {
                let now = now_ms();
                let ban = self.state.bans.fail(peer, now);
                let failures = self.state.bans.failures(&peer, now);
                tracing::info!(%peer, ban_ms = ban.as_millis() as u64, failures, "banned");
                self.dirty = true;
            }
        }
    }

    /// Signs this node's record anew, keeps it in the table and gossips it now.
    fn sign_own(&mut self) -> Result<(), MeshError> {
        let now = now_ms();
        let ttl = u64::try_from(RECORD_TTL.as_millis()).unwrap_or(u64::MAX);
        let signed = self
            .state
            .own
            .sign(&self.key, now, ttl, &self.state.listen_addrs)?;
        self.state.table.insert(signed, now)?;
        self.table_changed();
        self.sync_all();
        Ok(())
    }

    /// Re-signs the record before it expires (once it was first published, and until it
    /// is withdrawn).
    fn refresh(&mut self) {
        if self.state.own.seq == 0 || self.state.own.withdrawn {
            return;
        }
        if let Err(e) = self.sign_own() {
            tracing::warn!("cannot refresh the announcement: {e}");
        }
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let gone = self.state.table.expire(now, KEEP_WITHDRAWN_MS);
        for p in &gone {
            self.state.obs.rtt.remove(p);
            self.state.obs.unreachable.remove(p);
            self.last_dial.remove(p);
        }
        if !gone.is_empty() {
            tracing::info!(peers = gone.len(), "announcements expired");
            self.table_changed();
        }
        self.state.bans.prune(now);
        self.prune_departed();
        let late: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, t)| t.elapsed() >= ADMISSION_TIMEOUT)
            .map(|(p, _)| *p)
            .collect();
        for p in late {
            self.refuse(
                p,
                &format!("no membership proof within {ADMISSION_TIMEOUT:?}"),
            );
        }
        self.sync_all();
        self.dial_known();
    }

    /// The records to gossip (see [`super::table::Table::gossip`]).
    fn records(&self) -> Vec<SignedAnnouncement> {
        self.state.table.gossip(now_ms(), MAX_SYNC_RECORDS)
    }

    fn sync_all(&mut self) {
        let records = self.records();
        let peers: Vec<PeerId> = self.admitted.iter().copied().collect();
        for p in peers {
            self.swarm.behaviour_mut().announce.send_request(
                &p,
                Sync {
                    records: records.clone(),
                },
            );
        }
    }

    /// Takes what a peer sent, through the gossip intake ([`super::gossip`]): a record
    /// seen before costs a hash, a new one a verification on the sender's budget; the
    /// gate judges only records the table would take. A refused record is counted and
    /// logged, never fatal for the rest of the batch.
    fn merge(&mut self, from: PeerId, records: Vec<SignedAnnouncement>) {
        let now = now_ms();
        let mut changed = false;
        let mut over_budget = 0usize;
        for s in records.into_iter().take(MAX_SYNC_RECORDS) {
            match self.take_record(from, s, now) {
                Ok(Inserted::New | Inserted::Updated) => changed = true,
                Ok(_) => {}
                Err(Refusal::RateLimited) => over_budget += 1,
                Err(e) => {
                    self.state.rejected += 1;
                    tracing::debug!(%from, reason = e.reason(), "dropped an announcement: {e}");
                }
            }
        }
        if over_budget > 0 {
            tracing::debug!(%from, records = over_budget, "gossip: over the sender's budget");
        }
        // Refusal counts are in the snapshot.
        self.dirty = true;
        self.state.synced = true;
        if changed {
            self.table_changed();
            self.dial_known();
        }
    }

    /// One record of `from`'s batch: screened, judged by the gate when the table would
    /// take it, kept. The gate's lock is held for one certificate check at a time, and
    /// only for records newer than the table's (a few per peer per refresh).
    fn take_record(
        &mut self,
        from: PeerId,
        signed: SignedAnnouncement,
        now: u64,
    ) -> Result<Inserted, Refusal> {
        let intake = &mut self.state.intake;
        let record = intake.screen(from, &signed, now)?;
        let Some(peer) = record.peer() else {
            return Err(intake.count(Refusal::Invalid(AnnounceError::Field("peer_id"))));
        };
        let outcome = self.state.table.would_take(&peer, record.seq);
        match outcome {
            Inserted::New | Inserted::Updated => {}
            Inserted::Full => return Err(intake.count(Refusal::TableFull)),
            Inserted::Stale => return Ok(outcome),
        }
        if let Err(e) = self
            .gate
            .read(|g| g.judge(&peer, record.member.as_ref(), now / 1000))
        {
            return Err(intake.count(Refusal::Gate(e)));
        }
        Ok(self.state.table.insert_verified(peer, record, signed))
    }

    /// Forgets the per-peer state of peers that are neither connected nor in the table
    /// since [`MeshLimits::departed_grace`]: RTTs, reachability, dial times, gossip budgets
    /// (and with the RTTs, their metric labels). Bounded: it visits the peers those maps
    /// hold, which connections and the table bound.
    fn prune_departed(&mut self) {
        let mut known: HashSet<PeerId> = self.state.obs.rtt.keys().copied().collect();
        known.extend(self.state.obs.unreachable.iter().copied());
        known.extend(self.last_dial.keys().copied());
        known.extend(self.state.intake.peer_ids());
        known.extend(self.state.speeds.peers());
        let here = |p: &PeerId| self.swarm.is_connected(p) || self.state.table.contains(p);
        let present: HashSet<PeerId> = known.iter().copied().filter(|p| here(p)).collect();
        self.departed
            .retain(|p, _| known.contains(p) && !present.contains(p));
        let grace = self.limits.departed_grace;
        let mut gone = Vec::new();
        for p in known.difference(&present) {
            let since = *self.departed.entry(*p).or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                gone.push(*p);
            }
        }
        if gone.is_empty() {
            return;
        }
        for p in &gone {
            self.departed.remove(p);
            self.state.obs.rtt.remove(p);
            self.state.obs.unreachable.remove(p);
            self.last_dial.remove(p);
            self.state.speeds.forget(p);
        }
        let gone_set: HashSet<PeerId> = gone.iter().copied().collect();
        self.state.intake.retain_peers(|p| !gone_set.contains(p));
        tracing::debug!(peers = gone.len(), "forgot departed peers");
        self.dirty = true;
    }

    /// Dials announced peers this node is not connected to, so that it can ping them
    /// (routing needs their RTT) and gossip with them directly.
    fn dial_known(&mut self) {
        if self.revoked_self {
            return;
        }
        let targets: Vec<(PeerId, Vec<Multiaddr>)> = self
            .state
            .table
            .all_live(now_ms())
            .into_iter()
            .filter(|(p, _)| *p != self.me)
            .map(|(p, a)| {
                let addrs = a
                    .listen_addrs
                    .iter()
                    .filter_map(|t| t.parse::<Multiaddr>().ok())
                    .collect();
                (p, addrs)
            })
            .collect();
        let connected = self.swarm.connected_peers().count();
        for (peer, addrs) in targets {
            if connected >= MAX_PEERS || self.swarm.is_connected(&peer) || addrs.is_empty() {
                continue;
            }
            if self
                .last_dial
                .get(&peer)
                .is_some_and(|t| t.elapsed() < REDIAL_BACKOFF)
            {
                continue;
            }
            self.last_dial.insert(peer, Instant::now());
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "dial: {e}");
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "p2p listening");
                let relayed = address.iter().any(|p| p == Protocol::P2pCircuit);
                if self.relay_server && !relayed {
                    // An operator who runs a relay says its addresses are reachable;
                    // a relay without external addresses cannot hand out reservations.
                    self.swarm.add_external_address(address.clone());
                }
                let full = self.with_own_id(address);
                if self.state.listen_addrs.contains(&full) {
                    return;
                }
                if relayed {
                    tracing::info!(address = %full, "reachable through a relay");
                    self.advertise_first(full);
                } else {
                    self.state.listen_addrs.push(full);
                }
                self.dirty = true;
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                // A forwarded port, a UPnP mapping, or an address AutoNAT dialed back:
                // reachable, so peers should try it before anything else.
                tracing::info!(%address, "external address confirmed");
                let full = self.with_own_id(address);
                self.advertise_first(full);
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                let full = self.with_own_id(address);
                self.state.listen_addrs.retain(|a| *a != full);
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = self.with_own_id(address);
                self.state.listen_addrs.retain(|a| *a != full);
                self.dirty = true;
            }
            SwarmEvent::ListenerClosed { listener_id, .. }
                if self.relay_listener.is_some_and(|(id, _)| id == listener_id) =>
            {
                tracing::info!("the relay reservation ended");
                self.relay_listener = None;
                self.maybe_reserve();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let path = self
                    .paths
                    .established(peer_id, connection_id, endpoint.is_relayed());
                if path == Path::HolePunched {
                    self.close_redundant_relayed(peer_id);
                }
                self.publish_paths();
                self.dirty = true;
                self.state.obs.unreachable.remove(&peer_id);
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                self.connected_at
                    .entry(peer_id)
                    .or_insert_with(Instant::now);
                if self.admitted.contains(&peer_id) || self.pending.contains_key(&peer_id) {
                    return;
                }
                if self.gate.read(|g| g.is_open()) {
                    self.admit(peer_id);
                } else {
                    self.pending.insert(peer_id, Instant::now());
                    let hello = self.member_hello(self.gate.read(|g| g.revocations()));
                    self.swarm
                        .behaviour_mut()
                        .member
                        .send_request(&peer_id, hello);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.paths.closed(peer_id, connection_id);
                self.publish_paths();
                self.dirty = true;
                if num_established > 0 {
                    return;
                }
                if self.relay_listener.is_some_and(|(_, r)| r == peer_id) {
                    // The reservation went with the connection; the listener closes too.
                    tracing::info!(relay = %peer_id, "lost the relay");
                }
                self.admitted.remove(&peer_id);
                if self.pending.remove(&peer_id).is_some() {
                    // It left (or its own gate refused this node) before proving anything.
                    tracing::info!(peer = %peer_id, "gate: a peer left before it was admitted");
                }
                self.state.connected = self.admitted.len();
                self.dirty = true;
                // A redial tells a dead peer (refused, unreachable) from an idle close; a
                // connection that lived only briefly (a gate refused it) waits for the
                // redial backoff instead, or two nodes would reconnect in a tight loop.
                let lived = self.connected_at.remove(&peer_id);
                if lived.is_some_and(|t| t.elapsed() >= REDIAL_BACKOFF) {
                    self.last_dial.remove(&peer_id);
                }
                self.dial_known();
            }
            SwarmEvent::IncomingConnectionError {
                error: ListenError::Denied { cause },
                send_back_addr,
                ..
            } => self.connection_denied(&cause, &send_back_addr.to_string()),
            SwarmEvent::OutgoingConnectionError {
                error: DialError::Denied { cause },
                peer_id,
                ..
            } => self.connection_denied(&cause, &format!("{peer_id:?}")),
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "cannot connect: {error}");
                self.dirty |= self.state.obs.unreachable.insert(peer);
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour_event(b),
            _ => {}
        }
    }

    /// A connection over [`MeshLimits`]: counted by the limit it hit.
    fn connection_denied(&mut self, cause: &libp2p::swarm::ConnectionDenied, who: &str) {
        let reason = match cause.downcast_ref::<libp2p::connection_limits::Exceeded>() {
            Some(e) => limit_reason(e),
            None => "other",
        };
        tracing::debug!(%who, reason, "p2p: refused a connection: {cause}");
        *self.state.connections_refused.entry(reason).or_insert(0) += 1;
        self.dirty = true;
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Member(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        if let Err(e) = self.state.intake.admit_member(peer, now_ms()) {
                            // Neither read nor answered: each answer carries every
                            // revocation, and each message may carry a thousand.
                            tracing::debug!(%peer, "membership message: {e}");
                            self.dirty = true;
                            return;
                        }
                        let reply = self.member_hello(self.gate.read(|g| g.revocations()));
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .member
                            .send_response(channel, reply);
                        self.on_member_hello(peer, request);
                    }
                    request_response::Message::Response { response, .. } => {
                        self.on_member_hello(peer, response);
                    }
                }
            }
            BehaviourEvent::Member(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => tracing::debug!(%peer, "membership exchange failed: {error}"),
            BehaviourEvent::Announce(request_response::Event::Message { peer, .. })
                if !self.admitted.contains(&peer) =>
            {
                // Not (yet) a member: nothing it sends is read, nothing is answered.
                tracing::debug!(%peer, "ignored records of a peer not admitted");
            }
            BehaviourEvent::Announce(request_response::Event::Message {
                peer, message, ..
            }) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let records = match self.state.intake.admit_sync(peer, now_ms()) {
                        Ok(()) => {
                            self.merge(peer, request.records);
                            self.records()
                        }
                        Err(e) => {
                            // Neither read nor answered with the table.
                            tracing::debug!(%peer, "gossip: {e}");
                            self.dirty = true;
                            Vec::new()
                        }
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .announce
                        .send_response(channel, Sync { records });
                }
                request_response::Message::Response { response, .. } => {
                    self.merge(peer, response.records);
                }
            },
            BehaviourEvent::Announce(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => tracing::debug!(%peer, "sync failed: {error}"),
            BehaviourEvent::Ping(ping::Event { peer, .. }) if !self.admitted.contains(&peer) => {
                // Not (yet) a member: its RTT is of no use to routing, and kept nowhere.
            }
            BehaviourEvent::Ping(ping::Event {
                peer, connection, ..
            }) if self.paths.of(&peer, connection) == Some(Path::Relayed)
                && self.paths.best(&peer) > Some(Path::Relayed) =>
            {
                // A relayed connection beside a direct one: its RTT (the detour through
                // the relay) is not what sessions will see.
            }
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                self.dirty = true;
                match result {
                    Ok(rtt) => {
                        self.state.obs.rtt.insert(peer, rtt);
                        self.state.obs.unreachable.remove(&peer);
                    }
                    Err(e) => {
                        tracing::info!(%peer, "ping failed: {e}");
                        self.state.obs.unreachable.insert(peer);
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL)
                {
                    let known = self.relays.len() < MAX_PEERS || self.relays.contains_key(&peer_id);
                    if known {
                        self.relays.insert(peer_id, info.listen_addrs.clone());
                    }
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                self.maybe_reserve();
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "reachability (AutoNAT)");
                self.state.nat_status = Some(format!("{new:?}"));
                self.dirty = true;
                self.maybe_reserve();
            }
            BehaviourEvent::Upnp(ev) => {
                let said = match ev {
                    upnp::Event::NewExternalAddr(addr) => format!("mapped {addr}"),
                    upnp::Event::ExpiredExternalAddr(addr) => format!("mapping expired {addr}"),
                    upnp::Event::GatewayNotFound => "no gateway".to_string(),
                    upnp::Event::NonRoutableGateway => "gateway not routable".to_string(),
                };
                tracing::info!(upnp = %said, "port mapping (UPnP)");
                self.state.upnp = Some(said);
                self.dirty = true;
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(conn) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection");
                    self.paths.hole_punched(remote_peer_id, conn);
                    self.close_redundant_relayed(remote_peer_id);
                    self.publish_paths();
                    self.dirty = true;
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, "hole punching failed: {e}"),
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut seen = HashSet::new();
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if seen.insert(peer) && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) if peer != self.me && !self.swarm.is_connected(&peer) => {
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addresses.into_vec())
                    .build();
                let _ = self.swarm.dial(opts);
            }
            _ => {}
        }
    }
}

/// The `reason` label of a connection refused for exceeding a limit.
fn limit_reason(e: &libp2p::connection_limits::Exceeded) -> &'static str {
    // `Kind` is not public API to match on; its text is (and fixed per kind).
    match e.to_string() {
        t if t.contains("pending incoming") => "pending_inbound",
        t if t.contains("established incoming") => "inbound",
        t if t.contains("pending outgoing") => "pending_outbound",
        t if t.contains("established outgoing") => "outbound",
        t if t.contains("per peer") => "per_peer",
        _ => "other",
    }
}
