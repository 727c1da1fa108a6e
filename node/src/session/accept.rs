//! The accept loop: every connection of the data plane, every stream of it a task of its
//! own ([`super::stream`]).

use std::sync::Arc;

use tracing::Instrument;

use super::server::SessionServer;
use crate::dataplane::{FramedRecv, FramedSend};
use crate::limits::Bound;

/// The QUIC application close code of a connection refused for a limit (the reason text
/// says which).
pub const CLOSE_OVER_LIMIT: u32 = 0x4c4d; // "LM"

impl SessionServer {
    /// Accepts connections on `endpoint` until it is closed. Each connection is counted
    /// against the handshakes in flight first (before any cryptography is done for it),
    /// then, once its peer id is proved, against the connection limits in all and per
    /// peer.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = self.handshakes().clone().try_acquire_owned() else {
                self.refusals().count(Bound::Handshakes);
                incoming.refuse();
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let within = server.options().peers.connect_within;
                let conn = tokio::time::timeout(within, async { incoming.await }).await;
                drop(permit);
                match conn {
                    Ok(Ok(conn)) => server.connection(conn).await,
                    Ok(Err(e)) => tracing::debug!("incoming connection failed: {e}"),
                    Err(_) => tracing::debug!("incoming handshake took over {within:?}"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: quinn::Connection) {
        // The peer id its certificate proved (the TLS configuration requires one).
        let peer = crate::dataplane::peer_of(&conn);
        let _counted = match self.connections().admit(peer) {
            Ok(g) => g,
            Err(refused) => {
                self.refusals().count(refused.bound());
                tracing::debug!(peer = ?peer, "refused a connection: {refused}");
                conn.close(CLOSE_OVER_LIMIT.into(), refused.to_string().as_bytes());
                return;
            }
        };
        let span = tracing::info_span!(
            "peer",
            addr = %conn.remote_address(),
            peer = %peer.map_or_else(|| "?".to_string(), |p| p.to_string())
        );
        async move {
            tracing::debug!("connected");
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let (limits, bounds) = (self.options().limits, self.options().peers);
                        let tx = FramedSend::new(send, limits).with_send_within(bounds.send_within);
                        // Until its session is open a stream carries control frames only.
                        let rx = FramedRecv::new(recv, bounds.pre_open_frame(limits));
                        let stream =
                            super::stream::serve(self.clone(), Some(conn.clone()), peer, tx, rx);
                        tokio::spawn(stream.in_current_span());
                    }
                    Err(e) => {
                        tracing::debug!("connection ended: {e}");
                        break;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Serves the session streams peers open on the mesh's libp2p connections
    /// ([`crate::dataplane::SESSION_PROTOCOL`]) until `incoming` ends. The peer id is the
    /// connection's, authenticated by libp2p; the membership gate admitted the connection
    /// and judges each stream's `Hello` as on the QUIC endpoint. Streams are counted per
    /// peer ([`PeerBounds::max_streams_per_connection`]: a peer normally has one mesh
    /// connection) and in all ([`PeerBounds::max_connections`]). The loop only spawns:
    /// libp2p drops streams that arrive while nobody polls `incoming`.
    ///
    /// [`PeerBounds::max_streams_per_connection`]: crate::limits::PeerBounds::max_streams_per_connection
    /// [`PeerBounds::max_connections`]: crate::limits::PeerBounds::max_connections
    pub async fn serve_p2p(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        use futures::StreamExt;
        let bounds = self.options().peers;
        let streams = crate::limits::Connections::<libp2p::PeerId>::new(
            bounds.max_connections,
            bounds.max_streams_per_connection as usize,
        );
        while let Some((peer, stream)) = incoming.next().await {
            let counted = match streams.admit(peer) {
                Ok(g) => g,
                Err(refused) => {
                    self.refusals().count(refused.bound());
                    tracing::debug!(%peer, "refused a session stream: {refused}");
                    continue;
                }
            };
            let limits = self.options().limits;
            let (tx, mut rx) = crate::dataplane::p2p_framed(stream, limits);
            let tx = tx.with_send_within(bounds.send_within);
            // Until its session is open a stream carries control frames only.
            rx.set_limits(bounds.pre_open_frame(limits));
            let span = tracing::info_span!("peer", via = "p2p", %peer);
            let server = self.clone();
            tokio::spawn(
                async move {
                    super::stream::serve(server, None, Some(peer), tx, rx).await;
                    drop(counted);
                }
                .instrument(span),
            );
        }
    }

    /// Serves one stream (one session) that arrived some other way than [`serve`]'s
    /// endpoint (tests drive the server over their own streams) from `peer`, if known
    /// (a private mesh's gate refuses a stream from no known peer).
    ///
    /// [`serve`]: Self::serve
    pub async fn stream(
        self: Arc<Self>,
        peer: Option<libp2p::PeerId>,
        tx: FramedSend,
        rx: FramedRecv,
    ) {
        super::stream::serve(self, None, peer, tx, rx).await
    }
}
