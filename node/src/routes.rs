//! Where a generation's chain comes from. The API, the Rust client and failover only see
//! [`RouteSource`]: the mesh (the daemon's and the client's), a chain file read on every
//! request (`--api-chain`), or one fixed chain (`lamina generate --chain`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use libp2p::PeerId;

use crate::pipeline::{check_chain, read_chain_file, ChainHop, PipelineError};

/// Plans chains over the whole model and hears about peers that failed.
pub trait RouteSource: Send + Sync + 'static {
    /// The chain for one request now (covering `0..L`), avoiding the peers in `exclude`
    /// (failover). A source without alternatives fails when its chain uses one of them.
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError>;
    /// A peer failed a generation (by the blame rules): avoid it for a while.
    fn report_failure(&self, _peer: PeerId) {}
}

/// Why no chain could be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("layers {layers} are not served by any peer")]
    Uncovered { layers: String },
    #[error("{0}")]
    Other(String),
}

/// A failover that cannot re-plan keeps the typed cause: uncovered layers stay named.
impl From<RouteError> for PipelineError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Uncovered { layers } => Self::Uncovered { layers },
            RouteError::Other(m) => Self::NoRoute(m),
        }
    }
}

fn without_excluded(
    chain: Vec<ChainHop>,
    exclude: &HashSet<PeerId>,
) -> Result<Vec<ChainHop>, RouteError> {
    if chain.iter().any(|h| exclude.contains(&h.peer)) {
        return Err(RouteError::Other(
            "the chain's failed hop has no replacement".into(),
        ));
    }
    Ok(chain)
}

/// One chain, always.
pub struct FixedRoute(pub Vec<ChainHop>);

impl RouteSource for FixedRoute {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
        without_excluded(self.0.clone(), exclude)
    }
}

/// Hops serving each layer `0..n_layers`.
pub fn coverage(chain: &[ChainHop], n_layers: u32) -> Vec<usize> {
    (0..n_layers)
        .map(|l| chain.iter().filter(|h| h.layers.contains(l)).count())
        .collect()
}

/// The layers nobody serves, as ranges (`"2..4, 7..8"`); `None` when every layer is served.
pub fn uncovered_layers(coverage: &[usize]) -> Option<String> {
    let mut ranges = Vec::new();
    let mut start = None;
    for (l, &n) in coverage.iter().enumerate() {
        match (n, start) {
            (0, None) => start = Some(l),
            (0, Some(_)) => {}
            (_, Some(s)) => {
                ranges.push(format!("{s}..{l}"));
                start = None;
            }
            (_, None) => {}
        }
    }
    if let Some(s) = start {
        ranges.push(format!("{s}..{}", coverage.len()));
    }
    (!ranges.is_empty()).then(|| ranges.join(", "))
}

/// What a chain file holds now, for `/status`.
#[derive(Clone, Debug)]
pub struct ChainFileStatus {
    pub path: PathBuf,
    pub n_layers: u32,
    /// The chain in the file, or why it cannot be read.
    pub chain: Result<Vec<ChainHop>, String>,
    /// The last chain a request was routed through, and when (seconds since the epoch).
    pub last: Option<(u64, Vec<ChainHop>)>,
}

/// Routes every request through the chain in a file, read anew each time so a testnet
/// can write it after its nodes are up, and change it without a restart.
pub struct ChainFileRoutes {
    pub path: PathBuf,
    pub n_layers: u32,
    last: Mutex<Option<(u64, Vec<ChainHop>)>>,
}

impl ChainFileRoutes {
    pub fn new(path: PathBuf, n_layers: u32) -> Self {
        Self {
            path,
            n_layers,
            last: Mutex::new(None),
        }
    }

    fn plan(&self, chain: Vec<ChainHop>) -> Result<Vec<ChainHop>, RouteError> {
        if let Err(e) = check_chain(&chain, self.n_layers) {
            return Err(match uncovered_layers(&coverage(&chain, self.n_layers)) {
                Some(layers) => RouteError::Uncovered { layers },
                None => RouteError::Other(e.to_string()),
            });
        }
        Ok(chain)
    }

    /// The file's chain and the last route, for `/status`.
    pub fn status(&self) -> ChainFileStatus {
        ChainFileStatus {
            path: self.path.clone(),
            n_layers: self.n_layers,
            chain: read_chain_file(&self.path).map_err(|e| e.to_string()),
            last: self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

impl RouteSource for ChainFileRoutes {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
        let chain = read_chain_file(&self.path).map_err(|e| RouteError::Other(e.to_string()))?;
        let chain = without_excluded(self.plan(chain)?, exclude)?;
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((crate::ids::unix_secs(), chain.clone()));
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(layers: &str) -> ChainHop {
        ChainHop {
            layers: layers.parse().unwrap(),
            addr: "127.0.0.1:1".into(),
            peer: PeerId::random(),
        }
    }

    #[test]
    fn uncovered_layers_are_named_as_ranges() {
        let cov = coverage(&[hop("0..2"), hop("4..5")], 8);
        assert_eq!(cov, [1, 1, 0, 0, 1, 0, 0, 0]);
        assert_eq!(uncovered_layers(&cov).as_deref(), Some("2..4, 5..8"));
        assert_eq!(uncovered_layers(&coverage(&[hop("0..3")], 3)), None);
    }

    #[test]
    fn chain_file_routes_check_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.json");
        let routes = ChainFileRoutes::new(path.clone(), 5);
        let none = HashSet::new();
        assert!(matches!(routes.route(&none), Err(RouteError::Other(_))));
        std::fs::write(&path, serde_json::to_string(&[hop("0..2")]).unwrap()).unwrap();
        match routes.route(&none) {
            Err(RouteError::Uncovered { layers }) => assert_eq!(layers, "2..5"),
            other => panic!("{other:?}"),
        }
        // Overlapping but covering: not contiguous, not uncovered.
        std::fs::write(
            &path,
            serde_json::to_string(&[hop("0..3"), hop("2..5")]).unwrap(),
        )
        .unwrap();
        assert!(matches!(routes.route(&none), Err(RouteError::Other(_))));
        let good = [hop("0..3"), hop("3..5")];
        std::fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
        assert_eq!(routes.route(&none).unwrap().len(), 2);
        let st = routes.status();
        assert_eq!(st.chain.unwrap().len(), 2);
        assert_eq!(st.last.unwrap().1.len(), 2);
        let excluded = HashSet::from([good[1].peer]);
        assert!(
            routes.route(&excluded).is_err(),
            "a fixed chain has no replacement"
        );
    }
}
