//! [`NodeHandle`]: a running node, as its starter holds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lamina_protocol::LayerRange;
use libp2p::{Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dataplane::Dialer;
pub use crate::info::NodeInfo;
use crate::mesh::{MeshHandle, MeshStatus};
use crate::session::SessionServer;

/// A running node. Dropping it does not stop the node; [`shutdown`](Self::shutdown)
/// does, gracefully, and [`kill`](Self::kill) at once.
pub struct NodeHandle {
    info: NodeInfo,
    mesh: MeshHandle,
    server: Option<Arc<SessionServer>>,
    endpoint: quinn::Endpoint,
    dialer: Dialer,
    token: CancellationToken,
    tasks: TaskTracker,
    drain_timeout: Duration,
}

impl NodeHandle {
    pub(super) fn new(
        info: NodeInfo,
        mesh: MeshHandle,
        server: Option<Arc<SessionServer>>,
        dialer: Dialer,
        token: CancellationToken,
        tasks: TaskTracker,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            info,
            mesh,
            server,
            endpoint: dialer.endpoint().clone(),
            dialer,
            token,
            tasks,
            drain_timeout,
        }
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    pub fn peer_id(&self) -> PeerId {
        self.info.peer_id
    }

    /// The data plane's bound address.
    pub fn dataplane_addr(&self) -> SocketAddr {
        self.info.dataplane
    }

    /// The HTTP API's bound address.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.info.api
    }

    /// The p2p addresses, each with its `/p2p/<peer id>` suffix.
    pub fn p2p_addrs(&self) -> Vec<Multiaddr> {
        self.mesh.listen_addrs()
    }

    /// The layers served now.
    pub fn layers(&self) -> Option<LayerRange> {
        *self.info.layers.borrow()
    }

    pub fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }

    /// The node's data-plane dialer: its identity, and its membership certificate in a
    /// private mesh (what a program generating through this node dials with).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The session server, when the node serves layers.
    pub fn server(&self) -> Option<&Arc<SessionServer>> {
        self.server.as_ref()
    }

    /// The mesh as this node sees it.
    pub fn status(&self) -> MeshStatus {
        self.mesh.status()
    }

    /// The line `lamina node` prints when ready: `{"event":"ready","name","peer_id","p2p",
    /// "layers","listen","model_id","api"}`.
    pub fn ready_line(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "ready",
            "name": self.info.name,
            "peer_id": self.info.peer_id.to_string(),
            "p2p": self.p2p_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "layers": self.info.layers_text(),
            "listen": self.info.dataplane.to_string(),
            "model_id": self.info.model_id.to_string(),
            "api": self.info.api.map(|a| a.to_string()),
        })
    }

    /// Stops the node gracefully: refuses new sessions first (routes planned from tables
    /// that still list it go elsewhere instead of opening sessions the drain would cut
    /// off), withdraws its record, lets the sessions in flight finish (bounded by the
    /// drain timeout), then stops every task and closes the data plane.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        if let Some(server) = &self.server {
            server.drain();
        }
        if let Err(e) = self.mesh.withdraw().await {
            tracing::debug!("withdraw: {e}");
        }
        if let Some(server) = &self.server {
            if !server.wait_idle(self.drain_timeout).await {
                let left = server.active_sessions();
                tracing::warn!(sessions = left, "drain timed out; closing them");
            }
        }
        self.stop().await;
    }

    /// Stops the node at once, as a crash would: no drain, no withdrawal (peers find out
    /// from failed streams, pings and the record's expiry).
    pub async fn kill(self) {
        self.stop().await;
    }

    async fn stop(self) {
        self.token.cancel();
        self.endpoint.close(0u32.into(), b"shutting down");
        self.tasks.close();
        // Tasks end on the token; a session task may still be inside a step.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}
