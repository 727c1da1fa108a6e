//! The node-wide KV budget: sessions reserve their worst case at open and give it back
//! when they end, so admission, not the allocator, says no.
//!
//! Why reserve the whole `max_length` up front rather than charge as the cache grows:
//! the cache grows by doubling in the middle of a step, and a step that cannot grow must
//! fail a generation that was admitted; refusing at `OpenSession` sends the entry
//! elsewhere before any work is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of KV cache the open sessions of a node may hold together.
#[derive(Clone, Debug)]
pub struct KvBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: u64,
    used: AtomicU64,
}

/// Bytes held for one session; given back when dropped.
#[derive(Debug)]
pub struct KvReservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl KvBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                total,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// Holds `bytes` if they fit beside what is held; `None` (and nothing held) if not.
    pub fn reserve(&self, bytes: u64) -> Option<KvReservation> {
        let fits = |used: u64| used.checked_add(bytes).filter(|&n| n <= self.inner.total);
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .ok()
            .map(|_| KvReservation {
                inner: self.inner.clone(),
                bytes,
            })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn total(&self) -> u64 {
        self.inner.total
    }
}

impl KvReservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// KV bytes a session of `max_length` positions reserves on a shard of `layers` layers
/// caching `floats_per_position` floats per layer and position (keys and values, f32 as
/// the cache stores them). Saturates instead of overflowing: a huge request is then
/// simply refused.
pub fn kv_bytes(layers: usize, floats_per_position: usize, max_length: u32) -> u64 {
    [layers, floats_per_position, 4]
        .iter()
        .fold(u64::from(max_length), |acc, &n| {
            acc.saturating_mul(u64::try_from(n).unwrap_or(u64::MAX))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_budget_and_come_back_on_drop() {
        let b = KvBudget::new(100);
        let a = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none(), "60 + 41 is over 100");
        assert_eq!(b.used(), 60, "a refusal holds nothing");
        let c = b.reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert_eq!(c.bytes(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(u64::MAX).is_none());
        assert!(b.reserve(101).is_none());
    }

    #[test]
    fn kv_bytes_count_keys_and_values_and_saturate() {
        // 2 layers, 4 kv heads of 8 (k and v: 64 floats): 2 * 64 * 4 bytes per position.
        assert_eq!(kv_bytes(2, 64, 10), 10 * 2 * 64 * 4);
        assert_eq!(kv_bytes(usize::MAX, 64, u32::MAX), u64::MAX);
    }
}
