//! [`NodeInfo`]: what a running node is, as its API and its starter see it.

use std::net::SocketAddr;

use lamina_protocol::{LayerRange, ModelId};
use libp2p::PeerId;
use tokio::sync::watch;

/// What a node is: names and addresses, fixed for its life, and the layers it serves now.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub peer_id: PeerId,
    pub model_id: ModelId,
    /// The data plane's bound address.
    pub dataplane: SocketAddr,
    /// The HTTP API's bound address.
    pub api: Option<SocketAddr>,
    /// The layers it serves (`None`: routes only); changes when auto placement moves it.
    pub layers: watch::Receiver<Option<LayerRange>>,
}

impl NodeInfo {
    /// The layers now, `"a..b"` or `"none"`.
    pub fn layers_text(&self) -> String {
        (*self.layers.borrow()).map_or_else(|| "none".to_string(), |r| r.to_string())
    }
}
