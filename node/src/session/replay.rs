//! The replay log: what a hop (or the client) sent downstream for one session, so that a
//! replacement for a failed next hop can be rebuilt by replaying it (the failover issue).
//! Bounded by the session's `max_length` in rows: a session can never send more positions
//! than that, so a log that would exceed it refuses the entry instead of growing.

use std::collections::VecDeque;

use lamina_protocol::Forward;

/// The `Forward`s sent downstream for one session, in order.
#[derive(Clone, Debug, Default)]
pub struct ReplayLog {
    entries: VecDeque<Forward>,
    rows: u64,
    max_rows: u64,
}

/// A `Forward` would take the log past the session's `max_length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replay log full: {held} rows held, {adding} more exceed the limit of {max}")]
pub struct ReplayFull {
    pub held: u64,
    pub adding: u64,
    pub max: u64,
}

impl ReplayLog {
    /// An empty log holding at most `max_rows` rows (the session's `max_length`).
    pub fn new(max_rows: u32) -> Self {
        Self {
            entries: VecDeque::new(),
            rows: 0,
            max_rows: u64::from(max_rows),
        }
    }

    /// Records a sent step.
    pub fn push(&mut self, f: Forward) -> Result<(), ReplayFull> {
        let adding = u64::from(f.rows());
        if self.rows + adding > self.max_rows {
            return Err(ReplayFull {
                held: self.rows,
                adding,
                max: self.max_rows,
            });
        }
        self.rows += adding;
        self.entries.push_back(f);
        Ok(())
    }

    /// The recorded steps, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Forward> {
        self.entries.iter()
    }

    /// Rows (positions) held.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Steps held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was sent yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_protocol::{ForwardInput, SessionId};

    fn f(step: u64, n: usize) -> Forward {
        Forward {
            session_id: SessionId::from(1u128),
            step,
            start_pos: 0,
            input: ForwardInput::Tokens(vec![1; n]),
        }
    }

    #[test]
    fn bounded_by_rows() {
        let mut log = ReplayLog::new(5);
        log.push(f(0, 3)).unwrap();
        log.push(f(1, 1)).unwrap();
        assert_eq!(log.rows(), 4);
        assert_eq!(
            log.push(f(2, 2)),
            Err(ReplayFull {
                held: 4,
                adding: 2,
                max: 5
            })
        );
        log.push(f(2, 1)).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(
            log.entries().map(|e| e.step).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }
}
