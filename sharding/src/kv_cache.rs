//! Per-session key/value caches for the layers of one shard.
//!
//! The cache is explicit (owned by the session, passed into each forward step) rather than
//! hidden inside the layers, as in candle-transformers' `llama.rs`: a node serves many
//! sessions with one copy of the weights, and failover rebuilds a session's cache by
//! replaying its inputs. Storage grows by doubling up to the session's limit, so a
//! short session does not reserve its whole context and a long one copies O(log n) times.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Smallest allocation, in positions.
const MIN_CAPACITY: usize = 32;

/// The cache of one layer: `(n_kv_heads, capacity, head_dim)` buffers.
#[derive(Debug, Default)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    capacity: usize,
}

/// One session's cache over the layers of a shard.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    max_len: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// The shard's first layer, so a cache cannot be used with another shard by mistake.
    first_layer: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers starting at `first_layer`, holding at most
    /// `max_len` positions.
    pub fn new(
        first_layer: usize,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Self {
        Self {
            layers: (0..n_layers).map(|_| LayerKv::default()).collect(),
            len: 0,
            max_len,
            n_kv_heads,
            head_dim,
            first_layer,
        }
    }

    /// Positions already cached (the position of the next input row).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn first_layer(&self) -> usize {
        self.first_layer
    }

    /// Bytes currently allocated.
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 2 * l.capacity * self.n_kv_heads * self.head_dim * 4)
            .sum()
    }

    /// Forgets positions from `len` on (e.g. to re-run a step after a failed hop).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Frees all storage and restarts at position 0.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = LayerKv::default();
        }
        self.len = 0;
    }

    /// Checks that `rows` more positions fit.
    pub fn check_room(&self, rows: usize) -> Result<()> {
        let needed = self.len.saturating_add(rows);
        if needed > self.max_len {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.max_len,
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` of shape `(n_kv_heads, rows, head_dim)` for layer `i` (relative to
    /// the shard) at the current position and returns views of the whole cached history
    /// including them. The position only advances on [`KvCache::commit`], once every
    /// layer of the step has succeeded, so a failed step leaves the cache as it was.
    pub(crate) fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let rows = k.dim(1)?;
        let needed = self.len + rows;
        if needed > self.max_len {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.max_len,
            });
        }
        let (n_kv, hd, len, max_len) = (self.n_kv_heads, self.head_dim, self.len, self.max_len);
        let layer = self
            .layers
            .get_mut(i)
            .ok_or_else(|| Error::InvalidInput(format!("cache has no layer {i}")))?;
        if needed > layer.capacity || layer.k.is_none() {
            let cap = needed
                .max(layer.capacity * 2)
                .max(MIN_CAPACITY)
                .min(max_len.max(needed));
            let device = k.device();
            let nk = Tensor::zeros((n_kv, cap, hd), DType::F32, device)?;
            let nv = Tensor::zeros((n_kv, cap, hd), DType::F32, device)?;
            if let (Some(ok), Some(ov)) = (&layer.k, &layer.v) {
                if len > 0 {
                    nk.slice_set(&ok.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&ov.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
            }
            layer.k = Some(nk);
            layer.v = Some(nv);
            layer.capacity = cap;
        }
        let (Some(kb), Some(vb)) = (&layer.k, &layer.v) else {
            return Err(Error::InvalidInput("cache storage missing".into()));
        };
        kb.slice_set(&k.contiguous()?, 1, len)?;
        vb.slice_set(&v.contiguous()?, 1, len)?;
        Ok((kb.narrow(1, 0, needed)?, vb.narrow(1, 0, needed)?))
    }

    /// Advances the position after a successful step of `rows` rows.
    pub(crate) fn commit(&mut self, rows: usize) {
        self.len += rows;
    }

    /// A deep copy (for handing a session over, or forking it).
    pub fn try_clone(&self) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let copy = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
                Ok(match t {
                    Some(t) => Some(t.copy()?),
                    None => None,
                })
            };
            layers.push(LayerKv {
                k: copy(&l.k)?,
                v: copy(&l.v)?,
                capacity: l.capacity,
            });
        }
        Ok(Self {
            layers,
            len: self.len,
            max_len: self.max_len,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            first_layer: self.first_layer,
        })
    }

    #[allow(dead_code)]
    pub(crate) fn device(&self) -> Device {
        self.layers
            .iter()
            .find_map(|l| l.k.as_ref().map(|k| k.device().clone()))
            .unwrap_or(Device::Cpu)
    }
}
