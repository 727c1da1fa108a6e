//! Where a request's chain comes from. The API only sees [`RouteSource`], so the mesh's
//! router can replace the chain file without touching a handler.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::pipeline::{check_chain, read_chain_file, ChainHop};

/// Where a request's chain comes from: a chain file today, the mesh's router later.
pub trait RouteSource: Send + Sync + 'static {
    /// Plans the chain for one request now (covering 0..L).
    fn route(&self) -> Result<Vec<ChainHop>, RouteError>;
    /// The JSON body of `GET /status`: this node, its peers, coverage per layer, the last route.
    fn status(&self) -> serde_json::Value;
    /// A chain that avoids the peers with these certificates (failover). A fixed chain has
    /// no alternative: it fails when it uses an excluded peer.
    fn route_excluding(
        &self,
        exclude: &std::collections::HashSet<lamina_protocol::CertFingerprint>,
    ) -> Result<Vec<ChainHop>, RouteError> {
        let r = self.route()?;
        if r.iter().any(|h| exclude.contains(&h.fingerprint)) {
            return Err(RouteError::Other(
                "the chain's failed hop has no replacement".into(),
            ));
        }
        Ok(r)
    }
    /// A peer failed a generation: avoid it for a while.
    fn report_failure(&self, _cert: lamina_protocol::CertFingerprint) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("layers {layers} are not served by any peer")]
    Uncovered { layers: String },
    #[error("{0}")]
    Other(String),
}

/// A failover that cannot re-plan keeps the typed cause: uncovered layers stay named.
impl From<RouteError> for crate::pipeline::PipelineError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Uncovered { layers } => Self::Uncovered { layers },
            RouteError::Other(m) => Self::Chain(m),
        }
    }
}

/// Hops serving each layer `0..n_layers`.
pub fn coverage(chain: &[ChainHop], n_layers: u32) -> Vec<usize> {
    (0..n_layers)
        .map(|l| {
            chain
                .iter()
                .filter(|h| h.layers.start <= l && l < h.layers.end)
                .count()
        })
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
}

impl RouteSource for ChainFileRoutes {
    fn route(&self) -> Result<Vec<ChainHop>, RouteError> {
        let chain = read_chain_file(&self.path).map_err(|e| RouteError::Other(e.to_string()))?;
        let chain = self.plan(chain)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut last) = self.last.lock() {
            *last = Some((now, chain.clone()));
        }
        Ok(chain)
    }

    fn status(&self) -> serde_json::Value {
        let file = match read_chain_file(&self.path) {
            Ok(chain) => {
                let cov = coverage(&chain, self.n_layers);
                json!({
                    "chain": chain,
                    "coverage": cov,
                    "uncovered": uncovered_layers(&cov),
                    "usable": self.plan(chain).is_ok(),
                })
            }
            Err(e) => json!({"error": e.to_string()}),
        };
        let last = self.last.lock().ok().and_then(|l| l.clone());
        json!({
            "routes": "chain_file",
            "chain_file": self.path.display().to_string(),
            "n_layers": self.n_layers,
            "peers": file.get("chain").cloned().unwrap_or(json!([])),
            "coverage": file.get("coverage").cloned().unwrap_or(serde_json::Value::Null),
            "file": file,
            "last_route": last.map(|(at, chain)| json!({"at": at, "chain": chain})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(layers: &str) -> ChainHop {
        ChainHop {
            layers: layers.parse().unwrap(),
            addr: "127.0.0.1:1".into(),
            fingerprint: "00".repeat(32).parse().unwrap(),
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
        let dir = std::env::temp_dir().join(format!("lamina-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chain.json");
        let routes = ChainFileRoutes::new(path.clone(), 5);
        assert!(matches!(routes.route(), Err(RouteError::Other(_))));
        std::fs::write(&path, serde_json::to_string(&[hop("0..2")]).unwrap()).unwrap();
        match routes.route() {
            Err(RouteError::Uncovered { layers }) => assert_eq!(layers, "2..5"),
            other => panic!("{other:?}"),
        }
        // Overlapping but covering: not contiguous, not uncovered.
        std::fs::write(
            &path,
            serde_json::to_string(&[hop("0..3"), hop("2..5")]).unwrap(),
        )
        .unwrap();
        assert!(matches!(routes.route(), Err(RouteError::Other(_))));
        std::fs::write(
            &path,
            serde_json::to_string(&[hop("0..3"), hop("3..5")]).unwrap(),
        )
        .unwrap();
        assert_eq!(routes.route().unwrap().len(), 2);
        let st = routes.status();
        assert_eq!(st["coverage"], json!([1, 1, 1, 1, 1]));
        assert_eq!(st["last_route"]["chain"].as_array().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
