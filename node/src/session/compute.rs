//! A hop's compute: a few threads per node that run steps in the order they arrive, handed
//! over from the async session tasks and answered through a oneshot.
//!
//! Why a FIFO queue and not `spawn_blocking` per step: the kernels already spread one
//! step over their pool's threads, so more steps at once than the cores can hold only
//! fight over the cores and finish late together; sixteen prefills at once all finish
//! late. In order, each finishes as early as it can, the async workers never block, and
//! this queue is where continuous batching (several sessions' rows in one forward) plugs
//! in. The queue has as many workers as kernel pools fit in the cores
//! ([`workers_for`]): one when the kernels use every core, more when they use fewer (a
//! node started with `--threads 1` on a 2-core machine steps two sessions at once, as
//! it did before this queue; with one worker its concurrent clients got half the
//! throughput).
//!
//! What runs here is the model: the shard's forward, the sampler on the last hop, and the
//! conversions between wire tensors and candle's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};
use lamina_protocol::{ForwardInput, WireDType, WireTensor};
use lamina_sharding::executor::{LogitRows, Shard, ShardInput, ShardOutput};
use lamina_sharding::kv_cache::KvCache;
use lamina_sharding::sampling::Sampler;
use tokio::sync::oneshot;

use super::machine::Role;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error("the compute thread has stopped")]
    Stopped,
    #[error("the computation panicked: {0}")]
    Panicked(String),
}

/// Workers of a compute queue: how many steps, each running on a kernel pool of
/// `kernel_threads` threads, fit in `cores` at once (at least one, at most eight).
pub fn workers_for(cores: usize, kernel_threads: usize) -> usize {
    (cores / kernel_threads.max(1)).clamp(1, 8)
}

/// The node's compute threads. Cloning shares them; they stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ComputeQueue {
    tx: mpsc::Sender<Job>,
}

impl ComputeQueue {
    /// Starts `workers` threads (at least one) named `name-i` (for profilers and
    /// panics), taking jobs in arrival order.
    pub fn start(name: &str, workers: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job, not while it
                    // runs; a poisoned lock (a panic while waiting cannot happen) is
                    // taken over.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Runs `f` on the compute thread after every job queued before it. A panic in `f`
    /// is this job's error; the thread goes on with the next.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ComputeError> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                ComputeError::Panicked(what)
            });
            let _ = done.send(r);
        });
        self.tx.send(job).map_err(|_| ComputeError::Stopped)?;
        answer.await.map_err(|_| ComputeError::Stopped)?
    }
}

/// A session's state that the compute thread works on: moved there for each step and back.
pub struct SessionCompute {
    pub cache: KvCache,
    pub sampler: Option<Sampler>,
    /// Tokens this hop drew (the repetition penalty's window, on the last hop).
    pub history: Vec<u32>,
}

/// What a step produced.
pub enum StepOut {
    Hidden(WireTensor),
    Token { id: u32, logits: Option<WireTensor> },
}

/// Why a step failed on this hop.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The input does not fit the session (wrong width, token ids out of range).
    #[error("bad input: {0}")]
    BadInput(String),
    /// The hop itself failed.
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> StepError {
    StepError::Internal(e.to_string())
}

/// One forward step of `rows` rows through `shard`.
pub fn run_step(
    shard: &Shard,
    c: &mut SessionCompute,
    input: ForwardInput,
    rows: usize,
    dtype: WireDType,
    role: Role,
) -> Result<StepOut, StepError> {
    let dim = shard.config().dim;
    let input = match input {
        ForwardInput::Tokens(t) => ShardInput::Tokens(t),
        ForwardInput::Hidden(h) => {
            let v = h.to_f32().map_err(|e| StepError::BadInput(e.to_string()))?;
            ShardInput::Hidden(Tensor::from_vec(v, (rows, dim), &Device::Cpu).map_err(internal)?)
        }
    };
    let out = shard
        .forward(&mut c.cache, input, LogitRows::Last)
        .map_err(|e| StepError::BadInput(e.to_string()))?;
    let flat = |t: Tensor| -> Result<Vec<f32>, StepError> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(internal)
    };
    match (out, role) {
        (ShardOutput::Hidden(h), Role::ReturnLast) => {
            // The entry's head needs the last row only, and exactly: f32, whatever the
            // session's activation type.
            let last = h.narrow(0, rows.saturating_sub(1), 1).map_err(internal)?;
            let v = flat(last)?;
            let shape = [1, u32::try_from(dim).map_err(internal)?];
            Ok(StepOut::Hidden(
                WireTensor::from_f32(&shape, &v, WireDType::F32).map_err(internal)?,
            ))
        }
        (ShardOutput::Hidden(h), _) => {
            let v = flat(h)?;
            let shape = [
                u32::try_from(rows).map_err(internal)?,
                u32::try_from(dim).map_err(internal)?,
            ];
            Ok(StepOut::Hidden(
                WireTensor::from_f32(&shape, &v, dtype).map_err(internal)?,
            ))
        }
        (ShardOutput::Logits(l), Role::Sample { return_logits }) => {
            let v = flat(l)?;
            let sampler = c
                .sampler
                .as_mut()
                .ok_or_else(|| internal("no sampler on the last hop"))?;
            let id = sampler.sample(&v, &c.history).map_err(internal)?;
            c.history.push(id);
            let logits = if return_logits {
                let n = u32::try_from(v.len()).map_err(internal)?;
                Some(WireTensor::from_f32(&[n], &v, WireDType::F32).map_err(internal)?)
            } else {
                None
            };
            Ok(StepOut::Token { id, logits })
        }
        (ShardOutput::Logits(_), _) => Err(internal("logits on a hop that does not sample")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_and_a_panic_is_only_its_own_error() {
        let q = ComputeQueue::start("test-compute", 1).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..8 {
            let log = log.clone();
            waits.push(q.run(move || log.lock().unwrap().push(i)));
        }
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..8).collect::<Vec<_>>());
        let e = q.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e, ComputeError::Panicked("boom".into()));
        assert_eq!(q.run(|| 7).await.unwrap(), 7, "the thread goes on");
    }

    #[tokio::test]
    async fn several_workers_run_jobs_side_by_side() {
        let q = ComputeQueue::start("test-compute", 2).unwrap();
        // Two jobs that each wait for the other: they finish only if they run at once.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        let (x, y) = tokio::join!(
            q.run(move || a.wait().is_leader()),
            q.run(move || b.wait().is_leader())
        );
        assert_ne!(x.unwrap(), y.unwrap(), "exactly one leader");
    }

    #[test]
    fn workers_fill_the_cores_with_kernel_pools() {
        assert_eq!(workers_for(2, 2), 1);
        assert_eq!(workers_for(2, 1), 2);
        assert_eq!(workers_for(8, 3), 2);
        assert_eq!(workers_for(1, 4), 1);
        assert_eq!(workers_for(64, 1), 8);
        assert_eq!(workers_for(4, 0), 4);
    }
}
