//! The QUIC data plane: one quinn endpoint per node, self-signed certificates kept in the
//! node's data directory, dialers that pin the peer's certificate by its blake3 fingerprint,
//! and framed streams that move [`Message`]s through a [`FrameDecoder`].
//!
//! * One connection per neighbour: [`Dialer`] keeps a pool keyed by (address, fingerprint).
//! * One bidirectional stream per session: [`Dialer::open_stream`] / the server's
//!   `accept_bi` loop.
//! * Servers do not authenticate clients at the TLS layer (entry clients are arbitrary);
//!   dialers always authenticate servers: a certificate whose fingerprint differs from the
//!   pinned one fails the handshake ([`cert::PinnedVerifier`]).

pub mod cert;
pub mod framed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamina_protocol::{CertFingerprint, FrameLimits};

pub use cert::Identity;
pub use framed::{FramedRecv, FramedSend, RecvError};

/// ALPN of the data plane, versioned with the protocol.
pub const ALPN: &[u8] = b"lamina-dp/1";
/// TLS server name every node's certificate carries (identity is the fingerprint, not it).
pub const SERVER_NAME: &str = "lamina";

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
    #[error("protocol: {0}")]
    Protocol(#[from] lamina_protocol::ProtocolError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1024u32.into());
    // A peer that dies without a word (kill -9, a cut link) must not leave a pooled
    // connection that looks alive for a minute: keep-alives every 2 s, dead after 10 s of
    // silence. A live peer answers keep-alives even while it computes a long prefill.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// The quinn server configuration for `identity`.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, DataPlaneError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert_der()], identity.key_der())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A quinn client configuration that accepts only a server whose certificate has the
/// fingerprint `pin`.
pub fn client_config(pin: CertFingerprint) -> Result<quinn::ClientConfig, DataPlaneError> {
    let provider = provider();
    let verifier = cert::PinnedVerifier::new(pin, provider.clone());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A server endpoint (which can also dial) bound to `addr`. Must run inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &Identity,
) -> Result<quinn::Endpoint, DataPlaneError> {
    Ok(quinn::Endpoint::server(server_config(identity)?, addr)?)
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

/// Dials peers with pinned certificates and keeps one connection per neighbour.
#[derive(Clone)]
pub struct Dialer {
    endpoint: quinn::Endpoint,
    pool: Arc<Mutex<HashMap<(SocketAddr, CertFingerprint), quinn::Connection>>>,
    limits: FrameLimits,
}

impl Dialer {
    /// A dialer that uses `endpoint` (a node's server endpoint, or a client endpoint).
    pub fn new(endpoint: quinn::Endpoint, limits: FrameLimits) -> Self {
        Self {
            endpoint,
            pool: Arc::default(),
            limits,
        }
    }

    /// The endpoint dials go out from.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The pooled connection to (`addr`, `pin`), dialing if there is none or it closed.
    pub async fn connection(
        &self,
        addr: &str,
        pin: CertFingerprint,
    ) -> Result<quinn::Connection, DataPlaneError> {
        let sock = resolve(addr).await?;
        let key = (sock, pin);
        let pooled = self.lock_pool().get(&key).cloned();
        if let Some(c) = pooled {
            if c.close_reason().is_none() {
                return Ok(c);
            }
        }
        let span = tracing::debug_span!("dial", %addr, fingerprint = %pin);
        let _g = span.enter();
        let connecting = self
            .endpoint
            .connect_with(client_config(pin)?, sock, SERVER_NAME)
            .map_err(|e| DataPlaneError::Connect {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
        drop(_g);
        let conn = connecting.await.map_err(|e| DataPlaneError::Connect {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        self.lock_pool().insert(key, conn.clone());
        Ok(conn)
    }

    /// Opens a new bidirectional stream (one session) to (`addr`, `pin`).
    pub async fn open_stream(
        &self,
        addr: &str,
        pin: CertFingerprint,
    ) -> Result<(FramedSend, FramedRecv), DataPlaneError> {
        let conn = self.connection(addr, pin).await?;
        let (send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(_) => {
                // The pooled connection died between the check and the open: dial once more.
                let sock = resolve(addr).await?;
                self.lock_pool().remove(&(sock, pin));
                let conn = self.connection(addr, pin).await?;
                conn.open_bi()
                    .await
                    .map_err(|e| DataPlaneError::Stream(e.to_string()))?
            }
        };
        Ok((
            FramedSend::new(send, self.limits),
            FramedRecv::new(recv, self.limits),
        ))
    }

    /// Forgets the pooled connection to (`addr`, `pin`): after a hop failed on it, the
    /// next dial must not reuse a connection that only looks alive.
    pub async fn evict(&self, addr: &str, pin: CertFingerprint) {
        if let Ok(sock) = resolve(addr).await {
            if let Some(c) = self.lock_pool().remove(&(sock, pin)) {
                c.close(0u32.into(), b"evicted after a failure");
            }
        }
    }

    fn lock_pool(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, CertFingerprint), quinn::Connection>> {
        // A poisoned pool only means a panic elsewhere; the map itself is still valid.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}
