//! The accept loop: every connection of the data plane, every stream of it a task of its
//! own ([`super::stream`]).

use std::sync::Arc;

use tracing::Instrument;

use super::server::SessionServer;
use crate::dataplane::{FramedRecv, FramedSend};

impl SessionServer {
    /// Accepts connections on `endpoint` until it is closed.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => server.connection(conn).await,
                    Err(e) => tracing::debug!("incoming connection failed: {e}"),
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, conn: quinn::Connection) {
        // The peer id its certificate proved (the TLS configuration requires one).
        let peer = crate::dataplane::peer_of(&conn);
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
                        let tx = FramedSend::new(send, self.options().limits);
                        let rx = FramedRecv::new(recv, self.options().limits);
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
