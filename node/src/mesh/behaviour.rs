//! The libp2p swarm lamina runs: QUIC and TCP + noise + yamux; mDNS on a LAN, Kademlia
//! across networks, identify and ping, all under lamina's own protocol names (so a lamina
//! mesh never mixes with IPFS's DHT); the membership exchange every connection starts
//! with, and the announcement exchange (both request-response, CBOR, size-capped);
//! session streams of the data plane for nodes that serve over the mesh's connections;
//! and the NAT kit: AutoNAT (am I reachable?), relay v2 (a client always, a server with
//! `--relay`) and DCUtR (hole punching from a relayed connection).

use std::time::Duration;

use lamina_protocol::{SignedAnnouncement, SignedMemberCert, SignedRevocation};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, identify, kad, mdns, noise, ping, relay, tcp, upnp, yamux,
    Multiaddr, PeerId, StreamProtocol,
};
use serde::{Deserialize, Serialize};

use super::limits::MeshLimits;
use super::MeshError;

/// lamina's own protocol names, so a lamina mesh never mixes with IPFS's DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/lamina/kad/1.0.0");
/// Version 2: records carry membership certificates and no certificate fingerprint.
pub const ANNOUNCE_PROTOCOL: StreamProtocol = StreamProtocol::new("/lamina/announce/2.0.0");
/// The membership exchange: each side's certificate and the revocations it knows.
pub const MEMBER_PROTOCOL: StreamProtocol = StreamProtocol::new("/lamina/member/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/lamina/id/1.0.0";

/// How often the table is exchanged with every connected peer.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often RTTs are measured; a ping unanswered for [`PING_TIMEOUT`] marks the peer
/// unreachable (routes avoid it) well before its record expires.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that failed to connect is not redialled sooner than this.
pub const REDIAL_BACKOFF: Duration = Duration::from_secs(3);
/// Withdrawals are gossiped this long, then forgotten.
pub const KEEP_WITHDRAWN_MS: u64 = 60_000;
/// Records in one sync message; a table larger than this is sent freshest first.
pub const MAX_SYNC_RECORDS: usize = 1024;
/// Bytes of one sync message (records are ~300 bytes each).
pub const MAX_SYNC_BYTES: u64 = 1 << 20;
/// Peers this node keeps connections to for gossip and RTTs.
pub const MAX_PEERS: usize = 128;

/// A peer that has not proved membership this long after connecting is disconnected.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Revocations in one membership message at most.
pub const MAX_REVOCATIONS_PER_MESSAGE: usize = 1024;
/// Bytes of one membership message (a certificate or revocation is ~150 bytes).
pub const MAX_MEMBER_BYTES: u64 = 512 * 1024;

/// One direction of the membership exchange: sent by both sides of every new connection
/// (request and response), and again whenever a node learns a revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberHello {
    /// The sender's certificate (`None` in an open mesh).
    pub cert: Option<SignedMemberCert>,
    /// Revocations the sender knows, so they reach every member, late joiners included.
    pub revocations: Vec<SignedRevocation>,
}

/// One direction of the table exchange.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sync {
    pub records: Vec<SignedAnnouncement>,
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so a connection over [`MeshLimits`] is denied before any other behaviour
    /// sets up state for it.
    pub limits: connection_limits::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub announce: request_response::cbor::Behaviour<Sync, Sync>,
    pub member: request_response::cbor::Behaviour<MemberHello, MemberHello>,
    /// Reservations and circuits on relays, for a node nobody can dial.
    pub relay_client: relay::client::Behaviour,
    /// A relay for others (`lamina node --relay`), within [`RelayLimits`].
    pub relay: Toggle<relay::Behaviour>,
    /// Upgrades relayed connections to direct ones through the NATs (hole punching).
    pub dcutr: dcutr::Behaviour,
    /// Whether this node is reachable at its addresses: peers dial it back.
    pub autonat: autonat::Behaviour,
    /// Port mappings on the home router (`--upnp`): its external address, once mapped,
    /// is one peers dial directly.
    pub upnp: Toggle<upnp::tokio::Behaviour>,
    /// Session streams of the data plane on the mesh's own connections
    /// ([`crate::dataplane::SESSION_PROTOCOL`]), for hops that announce
    /// [`crate::dataplane::P2P_ADDR`].
    pub streams: libp2p_stream::Behaviour,
}

/// What the swarm is built with.
#[derive(Clone, Debug, Default)]
pub struct SwarmOptions {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// Serve as a relay for nodes behind NATs (`--relay`), within these limits.
    pub relay: Option<RelayLimits>,
    /// This node is behind a NAT (`--behind-nat`): it reserves a circuit on a relay of the
    /// mesh without waiting for AutoNAT to say so.
    pub behind_nat: bool,
    /// AutoNAT probes private addresses too (testnets: every address there is private).
    pub autonat_private: bool,
    /// Addresses at which an operator says this node is reachable (a forwarded port,
    /// `--external-addr`): announced first, and confirmed to AutoNAT, identify and DCUtR.
    pub external: Vec<Multiaddr>,
    /// Ask the router for port mappings (UPnP IGD, `--upnp`).
    pub upnp: bool,
}

/// What a relay gives the nodes behind NATs that use it. Circuits carry their sessions
/// (activations), so bytes are bounded per circuit by a generous cap and time by a
/// duration after which the node reconnects; reservations and circuits are bounded in
/// all and per peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayLimits {
    /// Reservations held at once (default 128), per peer (default 4).
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    /// Circuits open at once (default 64), per peer (default 16).
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// One circuit's life (default 1 h) and bytes (default 4 GiB).
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            max_circuits: 64,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 4 << 30,
        }
    }
}

impl RelayLimits {
    fn config(&self) -> relay::Config {
        let per_sec = |n: u32| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            // libp2p's defaults (30 circuits per peer, then one per 2 minutes) suit a
            // public relay of strangers' pings; members of a mesh redial each other
            // through it every few seconds until DCUtR punches, and would run dry in a
            // minute. Bursts of 60 per peer and 240 per IP, one more per second (four per
            // IP); the open circuits stay bounded by `max_circuits*`.
            circuit_src_rate_limiters: Vec::new(),
            ..relay::Config::default()
        }
        .circuit_src_per_peer(per_sec(60), Duration::from_secs(1))
        .circuit_src_per_ip(per_sec(240), Duration::from_millis(250))
    }
}

/// The relay protocol a peer lists (identify) when it serves as a relay.
pub const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// libp2p's connection limits from [`MeshLimits`].
pub fn connection_limits(limits: &MeshLimits) -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(limits.max_inbound))
        .with_max_pending_incoming(Some(limits.max_pending_inbound))
        .with_max_established_outgoing(Some(limits.max_outbound))
        .with_max_pending_outgoing(Some(limits.max_pending_outbound))
        .with_max_established_per_peer(Some(limits.max_per_peer))
}

/// The swarm of `key` under the default [`MeshLimits`].
pub fn build_swarm(
    key: &Keypair,
    opts: &SwarmOptions,
) -> Result<libp2p::Swarm<Behaviour>, MeshError> {
    build_swarm_with(key, opts, &MeshLimits::default())
}

pub fn build_swarm_with(
    key: &Keypair,
    opts: &SwarmOptions,
    limits: &MeshLimits,
) -> Result<libp2p::Swarm<Behaviour>, MeshError> {
    let conn_limits = connection_limits(limits);
    let swarm_err = |e: &dyn std::fmt::Display| MeshError::Swarm(e.to_string());
    let mdns_on = opts.mdns;
    let relay_limits = opts.relay;
    let autonat_private = opts.autonat_private;
    let upnp_on = opts.upnp;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| swarm_err(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| swarm_err(&e))?
        .with_behaviour(|key, relay_client| {
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
            let member_codec =
                request_response::cbor::codec::Codec::<MemberHello, MemberHello>::default()
                    .set_request_size_maximum(MAX_MEMBER_BYTES)
                    .set_response_size_maximum(MAX_MEMBER_BYTES);
            let member = request_response::Behaviour::with_codec(
                member_codec,
                [(MEMBER_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(ADMISSION_TIMEOUT),
            );
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(conn_limits),
                member,
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
                relay_client,
                relay: Toggle::from(relay_limits.map(|l| relay::Behaviour::new(peer, l.config()))),
                dcutr: dcutr::Behaviour::new(peer),
                autonat: autonat::Behaviour::new(
                    peer,
                    autonat::Config {
                        only_global_ips: !autonat_private,
                        // A node joins in seconds; decide about as fast.
                        boot_delay: Duration::from_secs(3),
                        retry_interval: Duration::from_secs(30),
                        ..autonat::Config::default()
                    },
                ),
                upnp: Toggle::from(upnp_on.then(upnp::tokio::Behaviour::default)),
                streams: libp2p_stream::Behaviour::new(),
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
    for addr in &opts.external {
        swarm.add_external_address(addr.clone());
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
