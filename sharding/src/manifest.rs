//! Content manifests: a blake3 hash of every tensor's stored bytes, grouped by the layer
//! it belongs to. The model id is the blake3 of the manifest's canonical encoding, so two
//! nodes agree that they serve the same model exactly when they hold the same bytes,
//! whatever the files are called, and a node can check the slice it loads.

use crate::source::ModelFile;
use crate::Result;
use std::collections::BTreeMap;

/// Which part of the model a tensor belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Group {
    /// The token embedding (needed by the first shard).
    Embedding,
    /// A transformer block.
    Layer(usize),
    /// Final norm and output head (needed by the last shard).
    Head,
    /// Anything else (kept so that the id covers every byte).
    Other,
}

/// Classifies a GGUF tensor name.
pub fn group_of(name: &str) -> Group {
    if name == "token_embd.weight" {
        return Group::Embedding;
    }
    if name == "output_norm.weight" || name == "output.weight" {
        return Group::Head;
    }
    if let Some(rest) = name.strip_prefix("blk.") {
        if let Some((n, _)) = rest.split_once('.') {
            if let Ok(n) = n.parse() {
                return Group::Layer(n);
            }
        }
    }
    Group::Other
}

/// One tensor's entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorHash {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub blake3: String,
}

/// The manifest of a model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    #[serde(with = "group_list")]
    pub groups: BTreeMap<Group, Vec<TensorHash>>,
}

/// JSON objects need string keys; the groups travel as a list of `[group, tensors]`.
mod group_list {
    use super::{Group, TensorHash};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Group, Vec<TensorHash>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<(&Group, &Vec<TensorHash>)> = m.iter().collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Group, Vec<TensorHash>>, D::Error> {
        let v: Vec<(Group, Vec<TensorHash>)> = Vec::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

impl Manifest {
    /// Hashes every tensor of the file. Tensors of a type lamina cannot load are hashed
    /// too (their bytes still identify the model) when their size is known.
    pub fn compute(model: &ModelFile) -> Result<Self> {
        let mut groups: BTreeMap<Group, Vec<TensorHash>> = BTreeMap::new();
        for t in model.tensor_list() {
            let Ok(bytes) = model.raw_bytes(&t.name) else {
                continue;
            };
            let hash = blake3::hash(bytes);
            // Hashing reads the whole file; without this a node would hold every page
            // of it, not just its own layers.
            model.release_pages(&t.name);
            groups
                .entry(group_of(&t.name))
                .or_default()
                .push(TensorHash {
                    name: t.name.clone(),
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    bytes: bytes.len() as u64,
                    blake3: hash.to_hex().to_string(),
                });
        }
        for v in groups.values_mut() {
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(Self { groups })
    }

    /// The canonical encoding the model id is computed from: one line per tensor, sorted
    /// by group then name, `name dtype dims bytes hash`.
    pub fn canonical(&self) -> String {
        let mut out = String::from("lamina-manifest-v1\n");
        for tensors in self.groups.values() {
            for t in tensors {
                let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
                out.push_str(&format!(
                    "{} {} {} {} {}\n",
                    t.name,
                    t.dtype,
                    dims.join("x"),
                    t.bytes,
                    t.blake3
                ));
            }
        }
        out
    }

    /// The model id: blake3 of the canonical manifest, hex.
    pub fn model_id(&self) -> String {
        blake3::hash(self.canonical().as_bytes())
            .to_hex()
            .to_string()
    }

    /// Bytes per group, for `model inspect`.
    pub fn group_bytes(&self) -> BTreeMap<Group, u64> {
        self.groups
            .iter()
            .map(|(g, ts)| (*g, ts.iter().map(|t| t.bytes).sum()))
            .collect()
    }

    /// Bytes of weights of the largest layer: what a node's memory budget is divided by
    /// (the largest, so a budget never overflows on an uneven model). 0 without layers.
    pub fn max_layer_bytes(&self) -> u64 {
        self.group_bytes()
            .into_iter()
            .filter(|(g, _)| matches!(g, Group::Layer(_)))
            .map(|(_, b)| b)
            .max()
            .unwrap_or(0)
    }

    /// A memory budget that holds exactly `k` layers (plus half a layer of slack, so
    /// rounding never loses one): how testnets and tests make nodes take `k` layers.
    pub fn budget_for_layers(&self, k: u64) -> u64 {
        let per = self.max_layer_bytes();
        per * k + per / 2
    }

    /// Looks up one tensor's hash.
    pub fn get(&self, name: &str) -> Option<&TensorHash> {
        self.groups
            .get(&group_of(name))
            .and_then(|v| v.iter().find(|t| t.name == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_serializes_to_json() {
        let mut groups = BTreeMap::new();
        groups.insert(Group::Layer(1), vec![]);
        groups.insert(Group::Embedding, vec![]);
        let m = Manifest { groups };
        let text = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn groups() {
        assert_eq!(group_of("token_embd.weight"), Group::Embedding);
        assert_eq!(group_of("blk.12.attn_q.weight"), Group::Layer(12));
        assert_eq!(group_of("output.weight"), Group::Head);
        assert_eq!(group_of("output_norm.weight"), Group::Head);
        assert_eq!(group_of("rope_freqs.weight"), Group::Other);
    }
}
