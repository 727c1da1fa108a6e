//! A chain of hops: who runs which layers, where, with which certificate. Planned by the
//! mesh per request, or read from a chain file for fixed setups.

use std::path::Path;

use lamina_protocol::{HopAddr, LayerRange};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::PipelineError;
use crate::failure::Hop;

/// One hop of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHop {
    /// Layers it runs, `"a..b"`.
    #[serde(with = "layers_text")]
    pub layers: LayerRange,
    /// Data-plane address, `host:port`.
    pub addr: String,
    /// Its libp2p peer id: the data plane's handshake must prove it, and failure reports
    /// of this hop must be signed by it.
    #[serde(rename = "peer_id", with = "peer_text")]
    pub peer: PeerId,
}

impl ChainHop {
    /// The hop as the blame rules know it.
    pub fn hop(&self) -> Hop {
        Hop {
            peer: self.peer,
            layers: self.layers,
        }
    }

    /// The hop as the hop before it is told about it.
    pub fn wire(&self) -> HopAddr {
        HopAddr {
            layers: self.layers,
            addr: self.addr.clone(),
            peer_id: self.peer.to_bytes(),
        }
    }
}

/// `LayerRange` as `"a..b"` text in chain files.
mod layers_text {
    use lamina_protocol::LayerRange;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &LayerRange, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LayerRange, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `PeerId` as its base58 text in chain files.
mod peer_text {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a chain file: a JSON list of `{"layers", "addr", "peer_id"}`.
pub fn read_chain_file(path: &Path) -> Result<Vec<ChainHop>, PipelineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::InvalidChain(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| PipelineError::InvalidChain(format!("{}: {e}", path.display())))
}

/// Checks that `chain` is contiguous from layer 0 to `n_layers`.
pub fn check_chain(chain: &[ChainHop], n_layers: u32) -> Result<(), PipelineError> {
    let mut end = 0;
    for (i, h) in chain.iter().enumerate() {
        if h.layers.start != end {
            return Err(PipelineError::InvalidChain(format!(
                "hop {i} starts at layer {} but the chain so far ends at {end}",
                h.layers.start
            )));
        }
        end = h.layers.end;
    }
    if end != n_layers || chain.is_empty() {
        return Err(PipelineError::InvalidChain(format!(
            "the chain covers layers 0..{end}, the model has {n_layers}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_files_name_layers_and_peers_as_text() {
        let hop = ChainHop {
            layers: LayerRange::new(0, 3).unwrap(),
            addr: "127.0.0.1:1".into(),
            peer: PeerId::random(),
        };
        let json = serde_json::to_value(&hop).unwrap();
        assert_eq!(json["layers"], "0..3");
        assert_eq!(json["peer_id"], hop.peer.to_string());
        let back: ChainHop = serde_json::from_value(json).unwrap();
        assert_eq!(back, hop);
        assert!(check_chain(std::slice::from_ref(&hop), 3).is_ok());
        assert!(check_chain(std::slice::from_ref(&hop), 4).is_err());
        assert!(check_chain(&[], 3).is_err());
    }
}
