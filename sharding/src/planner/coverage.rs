//! How well each layer is served: the quantity placement maximises and `/status` shows.
//!
//! A server adds its announced tokens/s to *every* layer of its range, not a share of it:
//! each token crosses every layer of the range, so the range's throughput is the rate at
//! which that server can move tokens through any one of its layers (Petals' accounting).

use crate::layers::LayerRange;

use super::view::MeshView;

/// One layer's hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerCoverage {
    /// Live servers hosting the layer (full ones included: they still hold it).
    pub servers: usize,
    /// Sum of their announced tokens/s.
    pub tokens_per_sec: f64,
}

/// Per-layer coverage of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    layers: Vec<LayerCoverage>,
}

impl Coverage {
    /// Coverage of every layer of the view's model by its live servers.
    pub fn of(view: &MeshView) -> Self {
        let mut layers = vec![LayerCoverage::default(); view.n_layers()];
        for s in view.servers() {
            for l in &mut layers[s.layers.indices()] {
                l.servers += 1;
                l.tokens_per_sec += s.tokens_per_sec;
            }
        }
        Self { layers }
    }

    /// Coverage from per-layer values directly, for callers (and tests) that already
    /// aggregated them.
    pub fn from_layers(layers: Vec<LayerCoverage>) -> Self {
        Self { layers }
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layers(&self) -> &[LayerCoverage] {
        &self.layers
    }

    /// Per-layer summed tokens/s, the vector placement works on.
    pub fn throughputs(&self) -> Vec<f64> {
        self.layers.iter().map(|l| l.tokens_per_sec).collect()
    }

    /// The throughput of the weakest layer: the mesh's capacity for whole-model tokens.
    /// Zero for a model with no layers, so an empty model never looks well served.
    pub fn min_tokens_per_sec(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| l.tokens_per_sec)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0)
    }

    /// The `k` weakest layers, weakest first; ties go to fewer hosts (one failure away
    /// from a gap), then to the lower layer.
    pub fn weakest(&self, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.layers.len()).collect();
        idx.sort_by(|&a, &b| {
            let (la, lb) = (&self.layers[a], &self.layers[b]);
            la.tokens_per_sec
                .total_cmp(&lb.tokens_per_sec)
                .then(la.servers.cmp(&lb.servers))
                .then(a.cmp(&b))
        });
        idx.truncate(k);
        idx
    }

    /// The runs of layers at the minimum throughput: where a joining node helps most.
    pub fn weakest_ranges(&self) -> Vec<LayerRange> {
        let min = self.min_tokens_per_sec();
        super::runs(self.layers.iter().map(|l| l.tokens_per_sec <= min), 0)
    }

    /// The runs of layers no live server hosts, for "layers 12..18 are not served".
    pub fn uncovered(&self) -> Vec<LayerRange> {
        super::runs(self.layers.iter().map(|l| l.servers == 0), 0)
    }

    /// Whether every layer has at least one host.
    pub fn is_complete(&self) -> bool {
        self.layers.iter().all(|l| l.servers > 0)
    }
}
