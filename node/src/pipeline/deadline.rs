//! Per-step deadlines from what the chain has shown it can do (pure).
//!
//! A stalled hop must be found in a few step times, not after a fixed five minutes; a busy
//! but healthy chain must not be mistaken for a stalled one. So the entry's deadline is a
//! generous multiple of the slowest step measured so far, and each hop bounds its next hop
//! more tightly the deeper it sits ([`HOP_FLOOR`] per hop to the end), so that the hop just
//! above a stall names it before anyone further up gives up.

use std::time::Duration;

/// Per hop below, the least a hop (and the entry) waits for a measured one-row step of
/// its next hop.
pub const HOP_FLOOR: Duration = Duration::from_secs(1);

/// Per-step deadlines from what the chain has shown it can do: a generous multiple of the
/// slowest decode step so far, never below a floor (scheduling noise on a loaded machine)
/// and, before any decode step was measured, a multiple of the prefill.
#[derive(Clone, Debug)]
pub struct StepDeadline {
    slowest: Option<Duration>,
    prefill: Option<Duration>,
    pub floor: Duration,
    pub factor: u32,
    pub first: Duration,
}

impl Default for StepDeadline {
    fn default() -> Self {
        Self {
            slowest: None,
            prefill: None,
            floor: Duration::from_secs(2),
            factor: 20,
            first: Duration::from_secs(300),
        }
    }
}

impl StepDeadline {
    /// The deadline for the next step.
    pub fn next(&self) -> Duration {
        self.next_for(1)
    }

    /// The deadline for a step of `rows` rows. Before anything was measured: a base plus
    /// a per-row allowance (a slow CPU node prefills ~20 rows/s of a 7B model), capped at
    /// `first`, so a dead hop on the first step costs seconds, not minutes.
    pub fn next_for(&self, rows: usize) -> Duration {
        match (self.slowest, self.prefill) {
            (Some(s), _) if rows <= 1 => (s * self.factor).max(self.floor),
            (_, Some(p)) => (p * 4).max(self.floor * 2),
            (Some(s), None) => (s * self.factor * rows as u32).max(self.floor),
            (None, None) => (Duration::from_secs(10)
                + Duration::from_millis(50) * u32::try_from(rows).unwrap_or(u32::MAX))
            .min(self.first),
        }
    }

    /// Records a completed step (`rows` input rows).
    pub fn observe(&mut self, rows: usize, took: Duration) {
        if rows > 1 || self.prefill.is_none() {
            self.prefill = Some(self.prefill.map_or(took, |p| p.max(took)));
        } else {
            self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
        }
    }
}

/// A next hop's deadline for a step of `rows` rows: 10x its slowest one-row step (at
/// least [`HOP_FLOOR`] per hop from it to the end, `depth`), or, for a prefill or before
/// anything was measured, 8 s plus 40 ms a row.
///
/// Why the floor grows with the depth: when a hop further down stalls, the hop just
/// above it must be the first to give up, so that it names the stalled hop. With one
/// floor for all, every hop above a fast stalled one would time out at the same instant
/// and the outermost would blame its own next hop, an innocent one.
pub fn downstream_deadline(slowest: Option<Duration>, rows: u32, depth: u32) -> Duration {
    match slowest {
        Some(s) if rows <= 1 => (s * 10).max(HOP_FLOOR * depth.max(1)),
        _ => Duration::from_secs(8) + Duration::from_millis(40) * rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_measured_steps() {
        let mut d = StepDeadline::default();
        assert_eq!(d.next_for(100), Duration::from_secs(15));
        assert_eq!(d.next_for(100_000), Duration::from_secs(300));
        d.observe(40, Duration::from_millis(900));
        assert_eq!(
            d.next(),
            Duration::from_millis(3600).max(Duration::from_secs(4))
        );
        d.observe(1, Duration::from_millis(20));
        assert_eq!(d.next(), Duration::from_secs(2));
        d.observe(1, Duration::from_millis(300));
        assert_eq!(d.next(), Duration::from_secs(6));
    }

    #[test]
    fn deeper_hops_are_given_up_on_sooner() {
        let fast = Some(Duration::from_millis(5));
        let d = |depth| downstream_deadline(fast, 1, depth);
        assert_eq!(d(1), Duration::from_secs(1));
        assert_eq!(d(2), Duration::from_secs(2));
        assert!(
            d(1) < d(2) && d(2) < d(3),
            "each hop waits longer than the one below"
        );
        // A measured slow next hop: its own pace, whatever the depth.
        let slow = Some(Duration::from_millis(500));
        assert_eq!(downstream_deadline(slow, 1, 2), Duration::from_secs(5));
        // Nothing measured, or a prefill: the allowance.
        assert_eq!(
            downstream_deadline(None, 10, 3),
            Duration::from_secs(8) + Duration::from_millis(400)
        );
    }
}
