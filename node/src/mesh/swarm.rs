//! The libp2p swarm and the one event loop that owns it.
//!
//! The rest of the node never touches the swarm: it reads the shared [`MeshState`] (the
//! announcement table, RTTs, who is connected) and sends [`Command`]s through a
//! [`super::MeshHandle`], as rust-libp2p's file-sharing example does with its `Client`.
//!
//! Announcements travel by anti-entropy: every [`SYNC_INTERVAL`], and at once when this
//! node's own record changes or a connection opens, the node sends every peer it is
//! connected to the records it holds, and the peer answers with its own. A record thus
//! reaches the whole connected mesh in a few rounds without a DHT lookup per key, and a
//! node that joins learns the whole table from its first neighbour in one round trip.
//! Each record is verified on arrival ([`super::table`]), so relays cannot forge or alter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lamina_protocol::SignedAnnouncement;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::table::Inserted;
use super::{now_ms, MeshError, MeshState};

/// lamina's own protocol names, so a lamina mesh never mixes with IPFS's DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/lamina/kad/1.0.0");
pub const ANNOUNCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/lamina/announce/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/lamina/id/1.0.0";

/// How often the table is exchanged with every connected peer.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often RTTs are measured; a ping unanswered for [`PING_TIMEOUT`] marks the peer
/// unreachable (routes avoid it) well before its record expires.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that failed to connect is not redialled sooner than this.
const REDIAL_BACKOFF: Duration = Duration::from_secs(3);
/// Withdrawals are gossiped this long, then forgotten.
const KEEP_WITHDRAWN_MS: u64 = 60_000;
/// Records in one sync message; a table larger than this is sent freshest first.
const MAX_SYNC_RECORDS: usize = 1024;
/// Bytes of one sync message (records are ~300 bytes each).
const MAX_SYNC_BYTES: u64 = 1 << 20;
/// Peers this node keeps connections to for gossip and RTTs.
const MAX_PEERS: usize = 128;

/// One direction of the table exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sync {
    pub records: Vec<SignedAnnouncement>,
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub announce: request_response::cbor::Behaviour<Sync, Sync>,
}

/// What the swarm is built with.
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
}

/// Requests from the rest of the node to the event loop.
pub enum Command {
    /// This node's record changed: gossip it now.
    Push,
    /// Send this withdrawal to every connected peer, then answer.
    Withdraw(SignedAnnouncement, oneshot::Sender<()>),
}

pub fn build_swarm(
    key: &Keypair,
    opts: &SwarmOptions,
) -> Result<libp2p::Swarm<Behaviour>, MeshError> {
    let swarm_err = |e: &dyn std::fmt::Display| MeshError::Swarm(e.to_string());
    let mdns_on = opts.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| swarm_err(&e))?
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(KAD_PROTOCOL);
            kcfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(30)));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kcfg);
            // Loopback and LAN nodes never get a confirmed external address, and a client
            // mode node would not answer the queries that let others find each other.
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
            } else {
                None
            };
            let codec = request_response::cbor::codec::Codec::<Sync, Sync>::default()
                .set_request_size_maximum(MAX_SYNC_BYTES)
                .set_response_size_maximum(MAX_SYNC_BYTES);
            let announce = request_response::Behaviour::with_codec(
                codec,
                [(ANNOUNCE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            );
            Ok(Behaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(PING_TIMEOUT),
                ),
                mdns: Toggle::from(mdns),
                announce,
            })
        })
        .map_err(|e| swarm_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    for addr in &opts.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| MeshError::Swarm(format!("cannot listen on {addr}: {e}")))?;
    }
    for addr in &opts.bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }
    Ok(swarm)
}

/// The peer id at the end of a `/p2p/<id>` multiaddr.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Owns the swarm; runs until the command channel closes.
pub struct EventLoop {
    swarm: libp2p::Swarm<Behaviour>,
    state: Arc<Mutex<MeshState>>,
    commands: mpsc::Receiver<Command>,
    me: PeerId,
    last_dial: HashMap<PeerId, Instant>,
    bootstrapped: bool,
}

impl EventLoop {
    pub fn new(
        swarm: libp2p::Swarm<Behaviour>,
        state: Arc<Mutex<MeshState>>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let me = *swarm.local_peer_id();
        Self {
            swarm,
            state,
            commands,
            me,
            last_dial: HashMap::new(),
            bootstrapped: false,
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Push) => self.sync_all(),
                    Some(Command::Withdraw(w, done)) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for p in peers {
                            self.swarm.behaviour_mut().announce.send_request(
                                &p,
                                Sync { records: vec![w.clone()] },
                            );
                        }
                        // Give the requests a moment on the wire before the process exits.
                        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
                        while let Ok(ev) =
                            tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
                        {
                            self.on_swarm_event(ev);
                        }
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeshState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn on_tick(&mut self) {
        let gone = {
            let mut st = self.lock();
            let gone = st.table.expire(now_ms(), KEEP_WITHDRAWN_MS);
            for p in &gone {
                st.obs.rtt.remove(p);
            }
            gone
        };
        if !gone.is_empty() {
            tracing::info!(peers = gone.len(), "announcements expired");
        }
        self.sync_all();
        self.dial_known();
    }

    /// The records to gossip (see [`super::table::Table::gossip`]).
    fn records(&self) -> Vec<SignedAnnouncement> {
        self.lock().table.gossip(now_ms(), MAX_SYNC_RECORDS)
    }

    fn sync_all(&mut self) {
        let records = self.records();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            self.swarm.behaviour_mut().announce.send_request(
                &p,
                Sync {
                    records: records.clone(),
                },
            );
        }
    }

    /// Verifies and keeps what a peer sent; a forged or expired record is dropped and
    /// logged, never fatal for the rest of the batch.
    fn merge(&mut self, from: PeerId, records: Vec<SignedAnnouncement>) {
        let now = now_ms();
        let mut changed = false;
        {
            let mut st = self.lock();
            for s in records.into_iter().take(MAX_SYNC_RECORDS) {
                match st.table.insert(s, now) {
                    Ok((_, Inserted::New | Inserted::Updated)) => changed = true,
                    Ok(_) => {}
                    Err(e) => {
                        st.rejected += 1;
                        tracing::debug!(%from, "dropped an announcement: {e}");
                    }
                }
            }
            st.synced = true;
        }
        if changed {
            self.dial_known();
        }
    }

    /// Dials announced peers this node is not connected to, so that it can ping them
    /// (routing needs their RTT) and gossip with them directly.
    fn dial_known(&mut self) {
        let targets: Vec<(PeerId, Vec<Multiaddr>)> = {
            let st = self.lock();
            st.table
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
                .collect()
        };
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
                self.lock().listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                {
                    let mut st = self.lock();
                    st.obs.unreachable.remove(&peer_id);
                    st.connected.insert(peer_id);
                }
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                let records = self.records();
                self.swarm
                    .behaviour_mut()
                    .announce
                    .send_request(&peer_id, Sync { records });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.lock().connected.remove(&peer_id);
                // A redial tells a dead peer (refused, unreachable) from an idle close.
                self.last_dial.remove(&peer_id);
                self.dial_known();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "cannot connect: {error}");
                self.lock().obs.unreachable.insert(peer);
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour_event(b),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Announce(request_response::Event::Message {
                peer, message, ..
            }) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.merge(peer, request.records);
                    let records = self.records();
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
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                let mut st = self.lock();
                match result {
                    Ok(rtt) => {
                        st.obs.rtt.insert(peer, rtt);
                        st.obs.unreachable.remove(&peer);
                    }
                    Err(e) => {
                        tracing::info!(%peer, "ping failed: {e}");
                        st.obs.unreachable.insert(peer);
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
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
