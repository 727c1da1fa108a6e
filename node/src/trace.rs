//! The trace id of the request an entry is serving. It is chosen where a request enters
//! the mesh (the HTTP API, or a `generate` run) and handed to the generation by scope
//! rather than as one more argument through every layer in between: the generation runs
//! synchronously on the thread that set it, and the id only labels logs.

use std::cell::Cell;

use lamina_protocol::TraceId;

thread_local! {
    static CURRENT: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// A fresh trace id (128 bits from the same source as session ids).
pub fn new_trace_id() -> TraceId {
    TraceId(*crate::pipeline::new_session_id().as_bytes())
}

/// Runs `f` with `id` as this thread's current trace id (restored afterwards, also when
/// `f` panics).
pub fn scope<R>(id: Option<TraceId>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TraceId>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(id)));
    f()
}

/// This thread's current trace id, if a [`scope`] set one.
pub fn current() -> Option<TraceId> {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        let (a, b) = (TraceId([1; 16]), TraceId([2; 16]));
        assert_eq!(current(), None);
        scope(Some(a), || {
            assert_eq!(current(), Some(a));
            scope(Some(b), || assert_eq!(current(), Some(b)));
            assert_eq!(current(), Some(a));
        });
        assert_eq!(current(), None);
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
