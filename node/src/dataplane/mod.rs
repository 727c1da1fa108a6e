//! The QUIC data plane: one quinn endpoint per node, TLS bound to the libp2p identity
//! ([`cert`]: certificates signed by the node's identity key), and framed streams that move
//! [`Message`]s through a [`FrameDecoder`].
//!
//! * One connection per neighbour: [`Dialer`] keeps a pool keyed by (address, peer id).
//! * One bidirectional stream per session: [`Dialer::open_stream`] / the server's
//!   `accept_bi` loop.
//! * Both ends authenticate: the dialer presents its own identity's certificate and the
//!   server learns its peer id ([`cert::peer_of`]); the dialer accepts only the peer id it
//!   expects, so a handshake with anyone else fails.
//!
//! * Or, for a hop announcing [`P2P_ADDR`], one libp2p stream per session on the mesh's
//!   own connection to it ([`SESSION_PROTOCOL`], through a `libp2p_stream::Control`):
//!   whichever way the mesh reaches the peer (direct, hole-punched, relayed), its
//!   sessions go the same way, and its identity is the connection's authenticated peer
//!   id.
//!
//! [`Message`]: lamina_protocol::Message
//! [`FrameDecoder`]: lamina_protocol::FrameDecoder

pub mod cert;
pub mod framed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamina_protocol::{FrameLimits, SignedMemberCert};
use libp2p::identity::Keypair;
use libp2p::PeerId;

use crate::limits::PeerBounds;

pub use cert::{client_config, peer_of, server_config, server_config_with};
pub use framed::{p2p_framed, FramedRecv, FramedSend, RecvError};

/// ALPN of the data plane, versioned with the protocol (2: libp2p-signed certificates).
pub const ALPN: &[u8] = b"lamina-dp/2";
/// TLS server name a dialer sends (identity is the peer id in the certificate, not it).
pub const SERVER_NAME: &str = "lamina";
/// The data-plane address a node announces when its sessions run on the mesh's libp2p
/// connections instead of its own QUIC endpoint.
pub const P2P_ADDR: &str = "p2p";
/// The libp2p protocol of a session stream (one per session, as on the QUIC endpoint).
pub const SESSION_PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new("/lamina/session/5.0.0");

/// Errors of the data plane's transport layer.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot resolve data-plane address {0:?}")]
    Resolve(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("stream: {0}")]
    Stream(String),
    /// The peer did not take a frame within the send deadline.
    #[error("the peer took no frame for {0:?}")]
    SendTimeout(Duration),
    /// Dialing or opening a stream took longer than the deadline.
    #[error("connect to {addr}: no connection within {within:?}")]
    ConnectTimeout { addr: String, within: Duration },
    #[error("protocol: {0}")]
    Protocol(#[from] lamina_protocol::ProtocolError),
}

/// The transport of every data-plane connection; the peer may open `streams` streams at
/// once (sessions: one each).
pub(crate) fn transport(streams: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // A peer that dies without a word (kill -9, a cut link) must not leave a pooled
    // connection that looks alive for a minute: keep-alives every 2 s, dead after 10 s of
    // silence. A live peer answers keep-alives even while it computes a long prefill.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// A server endpoint (which can also dial) bound to `addr`, for the node with identity
/// `key`, with the default bounds. Must run inside a tokio runtime.
pub fn server_endpoint(addr: SocketAddr, key: &Keypair) -> Result<quinn::Endpoint, DataPlaneError> {
    server_endpoint_with(addr, key, &PeerBounds::default())
}

/// [`server_endpoint`] keeping `bounds`.
pub fn server_endpoint_with(
    addr: SocketAddr,
    key: &Keypair,
    bounds: &PeerBounds,
) -> Result<quinn::Endpoint, DataPlaneError> {
    Ok(quinn::Endpoint::server(
        server_config_with(key, bounds)?,
        addr,
    )?)
}

/// A dial-only endpoint on an ephemeral port of the unspecified address of `family_of`'s
/// family. Must run inside a tokio runtime.
pub fn client_endpoint(family_of: Option<SocketAddr>) -> Result<quinn::Endpoint, DataPlaneError> {
    let bind: SocketAddr = match family_of {
        Some(SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        _ => SocketAddr::from(([0u8; 4], 0)),
    };
    Ok(quinn::Endpoint::client(bind)?)
}

/// Resolves a `host:port` data-plane address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, DataPlaneError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|_| DataPlaneError::Resolve(addr.to_owned()))?
        .next()
        .ok_or_else(|| DataPlaneError::Resolve(addr.to_owned()))
}

/// Dials peers as this node's identity and keeps one connection per neighbour.
#[derive(Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
    pool: Arc<Mutex<HashMap<(SocketAddr, PeerId), quinn::Connection>>>,
    limits: FrameLimits,
    /// Deadlines of dials, stream opens and sends.
    bounds: PeerBounds,
    key: Keypair,
    member: Option<SignedMemberCert>,
    /// Opens session streams on the mesh's connections (hops announcing [`P2P_ADDR`]).
    p2p: Option<libp2p_stream::Control>,
}

impl Dialer {
    /// A dialer that uses `endpoint` (a node's server endpoint, or a client endpoint) and
    /// proves the identity `key` to the servers it dials.
    pub fn new(endpoint: quinn::Endpoint, limits: FrameLimits, key: Keypair) -> Self {
        Self {
            endpoint,
            pool: Arc::default(),
            limits,
            bounds: PeerBounds::default(),
            key,
            member: None,
            p2p: None,
        }
    }

    /// This dialer opening sessions to hops that announce [`P2P_ADDR`] through `control`
    /// (the mesh's stream behaviour).
    pub fn with_p2p(mut self, control: libp2p_stream::Control) -> Self {
        self.p2p = Some(control);
        self
    }

    /// This dialer keeping `bounds`' deadlines (dial, stream open, every send).
    pub fn with_bounds(mut self, bounds: PeerBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// This dialer presenting `member` in every `Hello` it sends (a private mesh).
    pub fn with_member(mut self, member: Option<SignedMemberCert>) -> Self {
        self.member = member;
        self
    }

    /// The membership certificate sessions opened through this dialer present.
    pub fn member(&self) -> Option<&SignedMemberCert> {
        self.member.as_ref()
    }

    /// The peer id this dialer proves.
    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// The endpoint dials go out from.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The pooled connection to (`addr`, `peer`), dialing if there is none or it closed.
    /// The handshake fails unless the server proves `peer`.
    pub async fn connection(
        &self,
        addr: &str,
        peer: PeerId,
    ) -> Result<quinn::Connection, DataPlaneError> {
        let sock = resolve(addr).await?;
        let key = (sock, peer);
        let pooled = self.lock_pool().get(&key).cloned();
        if let Some(c) = pooled {
            if c.close_reason().is_none() {
                return Ok(c);
            }
        }
        let span = tracing::debug_span!("dial", %addr, %peer);
        let _g = span.enter();
        let connecting = self
            .endpoint
            .connect_with(client_config(&self.key, peer)?, sock, SERVER_NAME)
            .map_err(|e| DataPlaneError::Connect {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        drop(_g);
        let within = self.bounds.connect_within;
        let conn = tokio::time::timeout(within, connecting)
            .await
            .map_err(|_| DataPlaneError::ConnectTimeout {
                addr: addr.to_owned(),
                within,
            })?
            .map_err(|e| DataPlaneError::Connect {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        self.lock_pool().insert(key, conn.clone());
        Ok(conn)
    }

    /// Opens a new bidirectional stream (one session) to (`addr`, `peer`), the dial and
    /// the open each within [`PeerBounds::connect_within`] (an open waits while the peer
    /// allows no more streams on the connection).
    pub async fn open_stream(
        &self,
        addr: &str,
        peer: PeerId,
    ) -> Result<(FramedSend, FramedRecv), DataPlaneError> {
        let within = self.bounds.connect_within;
        let timed_out = || DataPlaneError::ConnectTimeout {
            addr: addr.to_owned(),
            within,
        };
        if addr == P2P_ADDR {
            return self.open_p2p(peer).await;
        }
        let conn = self.connection(addr, peer).await?;
        let (send, recv) = match tokio::time::timeout(within, conn.open_bi()).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                // The pooled connection died between the check and the open: dial once more.
                let sock = resolve(addr).await?;
                self.lock_pool().remove(&(sock, peer));
                let conn = self.connection(addr, peer).await?;
                tokio::time::timeout(within, conn.open_bi())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| DataPlaneError::Stream(e.to_string()))?
            }
        };
        Ok((
            FramedSend::new(send, self.limits).with_send_within(self.bounds.send_within),
            FramedRecv::new(recv, self.limits),
        ))
    }

    /// Opens a session stream to `peer` on the mesh's connection to it (dialing it by peer
    /// id if there is none), within [`PeerBounds::connect_within`].
    async fn open_p2p(&self, peer: PeerId) -> Result<(FramedSend, FramedRecv), DataPlaneError> {
        let Some(mut control) = self.p2p.clone() else {
            return Err(DataPlaneError::Connect {
                addr: P2P_ADDR.to_owned(),
                reason: "this dialer has no mesh connection to open sessions on".into(),
            });
        };
        let within = self.bounds.connect_within;
        let stream = tokio::time::timeout(within, control.open_stream(peer, SESSION_PROTOCOL))
            .await
            .map_err(|_| DataPlaneError::ConnectTimeout {
                addr: format!("{P2P_ADDR}/{peer}"),
                within,
            })?
            .map_err(|e| DataPlaneError::Connect {
                addr: format!("{P2P_ADDR}/{peer}"),
                reason: e.to_string(),
            })?;
        let (tx, rx) = framed::p2p_framed(stream, self.limits);
        Ok((tx.with_send_within(self.bounds.send_within), rx))
    }

    /// Forgets the pooled connection to (`addr`, `peer`): after a hop failed on it, the
    /// next dial must not reuse a connection that only looks alive.
    pub async fn evict(&self, addr: &str, peer: PeerId) {
        if addr == P2P_ADDR {
            // The mesh owns that connection; its pings judge whether it is alive.
            return;
        }
        if let Ok(sock) = resolve(addr).await {
            if let Some(c) = self.lock_pool().remove(&(sock, peer)) {
                c.close(0u32.into(), b"evicted after a failure");
            }
        }
    }

    fn lock_pool(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, PeerId), quinn::Connection>> {
        // A poisoned pool only means a panic elsewhere; the map itself is still valid.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}
