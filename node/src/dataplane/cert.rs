//! The data plane's TLS, bound to the libp2p identity: each side's certificate is signed by
//! its libp2p identity key (the libp2p TLS spec, `libp2p-tls`), so one QUIC handshake
//! proves both peer ids. A dialer names the peer id it expects and the handshake fails on
//! any other (a peer announcing another's address cannot take its traffic); the server
//! requires a client certificate and learns the peer id of whoever opened the connection
//! ([`peer_of`]), which the session server's gate judges.
//!
//! The certificate is made afresh from the identity key whenever a configuration is built:
//! nothing but the identity key (`p2p.key`) is kept on disk.

use std::sync::Arc;

use libp2p::identity::Keypair;
use libp2p::PeerId;
use rustls::pki_types::CertificateDer;

use super::{transport, DataPlaneError, ALPN};
use crate::limits::PeerBounds;

/// The quinn server configuration of a node with identity `key`, with the default
/// [`PeerBounds`].
pub fn server_config(key: &Keypair) -> Result<quinn::ServerConfig, DataPlaneError> {
    server_config_with(key, &PeerBounds::default())
}

/// The quinn server configuration of a node with identity `key` that keeps `bounds`:
/// streams per connection (QUIC flow control: a peer cannot open more) and incoming
/// connections waiting for their handshake (quinn refuses more before any cryptography).
pub fn server_config_with(
    key: &Keypair,
    bounds: &PeerBounds,
) -> Result<quinn::ServerConfig, DataPlaneError> {
    let mut tls =
        libp2p_tls::make_server_config(key).map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(bounds.max_streams_per_connection));
    cfg.max_incoming(bounds.max_handshakes.max(1));
    Ok(cfg)
}

/// A quinn client configuration presenting `key`'s certificate and accepting only a server
/// that proves the peer id `expected`.
pub fn client_config(
    key: &Keypair,
    expected: PeerId,
) -> Result<quinn::ClientConfig, DataPlaneError> {
    let mut tls = libp2p_tls::make_client_config(key, Some(expected))
        .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    // A dialer's peers open no streams towards it.
    cfg.transport_config(transport(0));
    Ok(cfg)
}

/// The peer id the other end of `conn` proved in the handshake (`None` only for a
/// connection without a libp2p certificate, which the TLS configuration never accepts).
pub fn peer_of(conn: &quinn::Connection) -> Option<PeerId> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let end_entity = chain.first()?;
    libp2p_tls::certificate::parse(end_entity)
        .ok()
        .map(|c| c.peer_id())
}
