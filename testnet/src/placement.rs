//! Which layers each node of a testnet serves, for the placements that fix them up front.
//! Pure: shapes in, ranges out, so every rule is tested without starting a process.

use anyhow::{bail, Result};
use lamina_sharding::layers::{even_split, LayerRange};

/// Every layer on `k` nodes: node `i` joins group `i % k`, and each group splits the
/// model evenly among its members, so a group is a whole replica of the model and losing
/// any one node leaves every layer served (for `k >= 2`).
pub fn redundant(n_layers: usize, nodes: usize, k: usize) -> Result<Vec<LayerRange>> {
    if k == 0 || k > nodes {
        bail!("--redundancy {k} needs between 1 and {nodes} (the node count)");
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); k];
    for i in 0..nodes {
        groups[i % k].push(i);
    }
    let mut out = vec![LayerRange { start: 0, end: 0 }; nodes];
    for members in &groups {
        let split = even_split(n_layers, members.len())?;
        for (&node, range) in members.iter().zip(split) {
            out[node] = range;
        }
    }
    Ok(out)
}

/// `per` layers per node: the model cut into consecutive chunks of `per` layers (the last
/// may be shorter), node `i` serving chunk `i % chunks`. Needs at least as many nodes as
/// chunks, or some layers would be served by nobody.
pub fn per_node(n_layers: usize, nodes: usize, per: usize) -> Result<Vec<LayerRange>> {
    if per == 0 || per > n_layers {
        bail!("--layers-per-node {per} needs between 1 and {n_layers} (the model's layers)");
    }
    let chunks = n_layers.div_ceil(per);
    if nodes < chunks {
        bail!(
            "{nodes} nodes of {per} layers cannot cover {n_layers} layers (needs {chunks} nodes)"
        );
    }
    (0..nodes)
        .map(|i| {
            let c = i % chunks;
            Ok(lamina_sharding::layers::range(
                c * per,
                ((c + 1) * per).min(n_layers),
            )?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `ranges` hold each layer.
    fn coverage(n_layers: usize, ranges: &[LayerRange]) -> Vec<usize> {
        (0..n_layers)
            .map(|l| ranges.iter().filter(|r| r.indices().contains(&l)).count())
            .collect()
    }

    #[test]
    fn redundancy_k_puts_every_layer_on_k_nodes() {
        let r = redundant(30, 4, 2).unwrap();
        assert_eq!(
            r.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["0..15", "0..15", "15..30", "15..30"]
        );
        for (nodes, k) in [(1, 1), (3, 1), (4, 2), (5, 2), (6, 3), (7, 3), (5, 5)] {
            let r = redundant(30, nodes, k).unwrap();
            assert!(
                coverage(30, &r).iter().all(|&c| c == k),
                "{nodes} nodes, k = {k}: {r:?}"
            );
        }
        assert!(redundant(30, 3, 0).is_err());
        assert!(redundant(30, 3, 4).is_err());
        assert!(
            redundant(2, 6, 2).is_err(),
            "3 nodes a group cannot split 2 layers"
        );
    }

    #[test]
    fn layers_per_node_chunks_the_model_and_wraps() {
        let r = per_node(30, 4, 10).unwrap();
        assert_eq!(
            r.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["0..10", "10..20", "20..30", "0..10"]
        );
        let r = per_node(5, 3, 2).unwrap();
        assert_eq!(
            r.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["0..2", "2..4", "4..5"]
        );
        assert!(coverage(30, &per_node(30, 6, 10).unwrap())
            .iter()
            .all(|&c| c == 2));
        assert!(
            per_node(30, 2, 10).is_err(),
            "two nodes of 10 leave 10 layers unserved"
        );
        assert!(per_node(30, 4, 0).is_err());
        assert!(per_node(30, 4, 31).is_err());
    }
}
