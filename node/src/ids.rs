//! Fresh ids and wall-clock stamps: session ids (one per session through a chain), trace
//! ids (one per request, carried to every hop for its logs), and the clocks the rest of
//! the node stamps things with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lamina_protocol::{SessionId, TraceId};

/// A fresh session id: time, process and a counter, hashed.
pub fn new_session_id() -> SessionId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&n.to_le_bytes());
    let b = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&b.as_bytes()[..16]);
    SessionId::from(u128::from_le_bytes(id))
}

/// A fresh trace id (128 bits from the same source as session ids).
pub fn new_trace_id() -> TraceId {
    TraceId(*new_session_id().as_bytes())
}

/// Milliseconds since the Unix epoch: the clock announcements are stamped and judged by.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch (OpenAI's `created`, status stamps).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh() {
        assert_ne!(new_session_id(), new_session_id());
        assert_ne!(new_trace_id(), new_trace_id());
    }
}

/// splitmix64: a seeded generator, the same sequence on every machine (spot-check
/// sampling, drills' adversaries): decisions keyed on a seed, never on the clock.
#[derive(Debug)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
