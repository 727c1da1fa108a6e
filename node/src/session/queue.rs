//! A hop's compute queue: a few threads per node that take work in arrival order, handed
//! over from the async session tasks and answered through a oneshot, with the steps that
//! wait together run as one batch (continuous batching).
//!
//! Why a FIFO queue and not `spawn_blocking` per step: the kernels already spread one
//! step over their pool's threads, so more steps at once than the cores can hold only
//! fight over the cores and finish late together; sixteen prefills at once all finish
//! late. Why batches: a decode step reads every weight of the shard for one row, so
//! sixteen sessions stepped one by one read the weights sixteen times; stacked, once
//! (the kernels' panels take many rows per weight load). A free worker takes the oldest
//! waiting step and the steps behind it on the same shard, within a row budget
//! ([`super::batch::pick`]), so batches form by themselves under load and a lone session
//! runs exactly as before. The queue has as many workers as kernel pools fit in the cores
//! ([`workers_for`]): one when the kernels use every core, more when they use fewer.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use lamina_sharding::executor::Shard;
use tokio::sync::oneshot;

use super::batch::{pick, Waiting};
use super::compute::{run_batch, SessionCompute, Step, StepError, StepOut};

type Job = Box<dyn FnOnce() + Send>;

/// What a step's session gets back: its state, and the step's result.
pub type StepDone = (SessionCompute, Result<StepOut, StepError>);

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

/// Rows one batch may stack by default: a prefill chunk of the entry's size
/// ([`crate::pipeline::STEP_CHUNK_ROWS`]) fills it alone, and up to that many waiting
/// decode steps share one.
pub const DEFAULT_BATCH_ROWS: usize = 512;

struct StepWork {
    shard: Arc<Shard>,
    /// The shard gives a session the same bits in a batch as alone
    /// ([`Shard::batch_invariant`]); else its steps run one by one.
    batchable: bool,
    step: Step,
    done: oneshot::Sender<Result<StepDone, ComputeError>>,
}

enum Work {
    Job(Job),
    /// Boxed: a step carries its session's state (cache handles, sampler), which would
    /// make every queued closure as large.
    Step(Box<StepWork>),
}

impl Work {
    fn waiting(&self) -> Waiting {
        match self {
            Work::Job(_) => Waiting::Other,
            Work::Step(s) if s.batchable => Waiting::Step {
                shard: Arc::as_ptr(&s.shard) as usize,
                rows: s.step.rows,
            },
            Work::Step(_) => Waiting::Other,
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    batch_rows: usize,
    stats: BatchStats,
}

struct Queue {
    work: VecDeque<Work>,
    closed: bool,
}

/// How the queue batched: forwards run and the steps they carried.
#[derive(Default)]
pub struct BatchStats {
    batches: AtomicU64,
    steps: AtomicU64,
}

impl BatchStats {
    /// Forwards run (a lone step counts as a batch of one).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Steps those forwards carried.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }
}

/// Closes the queue when the last [`ComputeQueue`] clone is dropped: the workers finish
/// what is queued and stop.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.0.ready.notify_all();
    }
}

/// The node's compute threads. Cloning shares them; they stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ComputeQueue {
    closer: Arc<Closer>,
}

impl ComputeQueue {
    /// Starts `workers` threads (at least one) named `name-i` (for profilers and
    /// panics), taking work in arrival order, batching at most [`DEFAULT_BATCH_ROWS`].
    pub fn start(name: &str, workers: usize) -> std::io::Result<Self> {
        Self::start_with(name, workers, DEFAULT_BATCH_ROWS)
    }

    /// As [`start`](Self::start), batching at most `batch_rows` rows (1: no batching).
    pub fn start_with(name: &str, workers: usize, batch_rows: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                work: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            batch_rows: batch_rows.max(1),
            stats: BatchStats::default(),
        });
        for i in 0..workers.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&shared))?;
        }
        Ok(Self {
            closer: Arc::new(Closer(shared)),
        })
    }

    fn push(&self, w: Work) -> Result<(), ComputeError> {
        let shared = &self.closer.0;
        let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.closed {
            return Err(ComputeError::Stopped);
        }
        q.work.push_back(w);
        drop(q);
        shared.ready.notify_one();
        Ok(())
    }

    /// How the queue batched so far.
    pub fn stats(&self) -> &BatchStats {
        &self.closer.0.stats
    }

    /// Runs `f` on a compute thread after every job queued before it. A panic in `f`
    /// is this job's error; the thread goes on with the next.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ComputeError> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(f)).map_err(panicked));
        });
        self.push(Work::Job(job))?;
        answer.await.map_err(|_| ComputeError::Stopped)?
    }

    /// Runs `step` on `shard`, in a batch with the other steps waiting for the same
    /// shard when there are any and the shard's outputs do not depend on the batch
    /// ([`Shard::batch_invariant`]; F32 weights on candle's matmul run one by one). A panic fails every step of its batch (their sessions'
    /// states are lost with it, as a lone step's would be).
    pub async fn step(&self, shard: Arc<Shard>, step: Step) -> Result<StepDone, ComputeError> {
        let (done, answer) = oneshot::channel();
        let batchable = shard.batch_invariant();
        self.push(Work::Step(Box::new(StepWork {
            shard,
            batchable,
            step,
            done,
        })))?;
        answer.await.map_err(|_| ComputeError::Stopped)?
    }
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> ComputeError {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    ComputeError::Panicked(what)
}

/// Takes the next batch (or job) until the queue is closed and empty.
fn worker(shared: &Shared) {
    loop {
        let mut taken = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while q.work.is_empty() && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.work.is_empty() {
                return;
            }
            let waiting: Vec<Waiting> = q.work.iter().map(Work::waiting).collect();
            let idx = pick(&waiting, shared.batch_rows);
            let mut taken = Vec::with_capacity(idx.len());
            for &i in idx.iter().rev() {
                if let Some(w) = q.work.remove(i) {
                    taken.push(w);
                }
            }
            taken.reverse();
            taken
        };
        if matches!(taken.as_slice(), [Work::Job(_)]) {
            if let Some(Work::Job(job)) = taken.pop() {
                job();
            }
            continue;
        }
        let steps: Vec<StepWork> = taken
            .into_iter()
            .filter_map(|w| match w {
                Work::Step(s) => Some(*s),
                Work::Job(_) => None,
            })
            .collect();
        run_steps(shared, steps);
    }
}

fn run_steps(shared: &Shared, work: Vec<StepWork>) {
    let Some(shard) = work.first().map(|w| w.shard.clone()) else {
        return;
    };
    let rows: usize = work.iter().map(|w| w.step.rows).sum();
    let _span = tracing::debug_span!("batch", seqs = work.len(), rows).entered();
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .steps
        .fetch_add(work.len() as u64, Ordering::Relaxed);
    let (steps, replies): (Vec<Step>, Vec<_>) = work.into_iter().map(|w| (w.step, w.done)).unzip();
    match catch_unwind(AssertUnwindSafe(|| run_batch(&shard, steps))) {
        Ok(done) => {
            for (reply, d) in replies.into_iter().zip(done) {
                let _ = reply.send(Ok(d));
            }
        }
        Err(p) => {
            let e = panicked(p);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamina_protocol::{ForwardInput, WireDType};
    use lamina_sharding::sampling::{Sampler, SamplingParams};
    use lamina_sharding::source::ModelFile;
    use lamina_sharding::synth;

    use super::super::compute::run_step;
    use super::super::machine::Role;

    #[tokio::test]
    async fn jobs_run_in_order_and_a_panic_is_only_its_own_error() {
        let q = ComputeQueue::start("test-compute", 1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
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
    async fn a_lone_step_runs_as_it_would_without_the_queue() {
        let shard = shard();
        let p = vec![3, 1, 4, 1, 5];
        let want = alone(&shard, &p);
        let q = ComputeQueue::start("test-lone", 1).unwrap();
        let (c, out) = q
            .step(shard.clone(), step(session(&shard), p.clone()))
            .await
            .unwrap();
        assert_eq!(logits(&out.unwrap()), want);
        assert_eq!(c.cache.len(), p.len());
        assert_eq!((q.stats().batches(), q.stats().steps()), (1, 1));
    }

    #[tokio::test]
    async fn several_workers_run_jobs_side_by_side() {
        let q = ComputeQueue::start("test-compute", 2).unwrap();
        // Two jobs that each wait for the other: they finish only if they run at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
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

    /// Holds the queue's only worker in a job until the returned sender is used (or
    /// dropped): the job is queued and running when this returns.
    async fn hold_worker(
        q: &ComputeQueue,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let q2 = q.clone();
        let gate = tokio::spawn(async move {
            let _ = q2
                .run(move || {
                    let _ = started_tx.send(());
                    let _ = hold.recv();
                })
                .await;
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while started.try_recv().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker never took the job"
            );
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        (release, gate)
    }

    /// Waits (bounded) until `n` items wait in the queue.
    async fn until_queued(q: &ComputeQueue, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while q.closer.0.queue.lock().unwrap().work.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the steps were never queued"
            );
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Steps `inputs` (one fresh session each) queued while the only worker is held, so
    /// that they wait together; their results in input order.
    async fn queued_together(
        q: &ComputeQueue,
        shard: &Arc<Shard>,
        inputs: &[Vec<u32>],
    ) -> Vec<StepDone> {
        let (release, gate) = hold_worker(q).await;
        let pending: Vec<_> = inputs
            .iter()
            .map(|t| {
                let (q, shard, s) = (q.clone(), shard.clone(), step(session(shard), t.clone()));
                tokio::spawn(async move { q.step(shard, s).await })
            })
            .collect();
        until_queued(q, inputs.len()).await;
        release.send(()).unwrap();
        gate.await.unwrap();
        let mut out = Vec::new();
        for p in pending {
            out.push(p.await.unwrap().unwrap());
        }
        out
    }

    fn shard() -> Arc<Shard> {
        let spec = synth::SynthSpec {
            preset: synth::preset("tiny").unwrap().clone(),
            dtype: synth::SynthDType::Q8_0,
            seed: 7,
            n_layers_override: Some(3),
        };
        let model = ModelFile::from_gguf_bytes("tiny", synth::gguf_bytes(&spec).unwrap()).unwrap();
        let n = model.config().unwrap().n_layers;
        let range = lamina_sharding::layers::range(0, n).unwrap();
        Arc::new(Shard::load(&model, range, &candle_core::Device::Cpu).unwrap())
    }

    fn session(shard: &Shard) -> SessionCompute {
        SessionCompute {
            cache: shard.new_cache(64).unwrap(),
            sampler: Some(Sampler::new(SamplingParams::default()).unwrap()),
            history: Vec::new(),
        }
    }

    fn step(c: SessionCompute, tokens: Vec<u32>) -> Step {
        Step {
            compute: c,
            rows: tokens.len(),
            input: ForwardInput::Tokens(tokens),
            dtype: WireDType::F32,
            role: Role::Sample {
                return_logits: true,
            },
        }
    }

    /// The token and logit bits of `tokens` stepped alone, without the queue.
    fn alone(shard: &Shard, tokens: &[u32]) -> (u32, Vec<u32>) {
        let mut c = session(shard);
        let role = Role::Sample {
            return_logits: true,
        };
        let input = ForwardInput::Tokens(tokens.to_vec());
        let out = run_step(shard, &mut c, input, tokens.len(), WireDType::F32, role).unwrap();
        logits(&out)
    }

    fn logits(out: &StepOut) -> (u32, Vec<u32>) {
        match out {
            StepOut::Token {
                id,
                logits: Some(l),
            } => (
                *id,
                l.to_f32().unwrap().iter().map(|x| x.to_bits()).collect(),
            ),
            _ => panic!("a token with logits expected"),
        }
    }

    /// Steps that wait together run as one forward, and each session gets exactly what
    /// it gets alone (token and logits, bit for bit), its cache advanced by its rows.
    #[tokio::test]
    async fn waiting_steps_run_as_one_batch_and_each_equals_its_lone_run() {
        let shard = shard();
        let prompts: Vec<Vec<u32>> =
            vec![vec![1, 2, 3], vec![4], vec![5, 6, 7, 8, 9], vec![10, 11]];
        let alone: Vec<(u32, Vec<u32>)> = prompts.iter().map(|p| alone(&shard, p)).collect();

        let q = ComputeQueue::start("test-batch", 1).unwrap();
        for (i, (c, out)) in queued_together(&q, &shard, &prompts)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(logits(&out.unwrap()), alone[i], "session {i}");
            assert_eq!(c.cache.len(), prompts[i].len());
        }
        assert!(shard.batch_invariant(), "Q8_0 runs on lamina's kernels");
        assert_eq!(q.stats().batches(), 1, "one forward for all four");
        assert_eq!(q.stats().steps(), 4);
    }

    /// A step with a bad input fails alone; the others of its batch go on.
    #[tokio::test]
    async fn a_bad_step_fails_alone_in_its_batch() {
        let shard = shard();
        let vocab = shard.config().vocab_size as u32;
        let q = ComputeQueue::start("test-batch-bad", 1).unwrap();
        let inputs = [vec![1, 2], vec![vocab + 5], vec![3]];
        let results: Vec<Result<usize, StepError>> = queued_together(&q, &shard, &inputs)
            .await
            .into_iter()
            .map(|(c, r)| r.map(|_| c.cache.len()))
            .collect();
        // The stacked forward refused the batch (an id outside the vocabulary); each step
        // ran again alone, and only the bad one failed.
        assert_eq!(results[0].as_ref().ok(), Some(&2));
        assert!(
            matches!(results[1], Err(StepError::BadInput(_))),
            "{:?}",
            results[1].as_ref().err()
        );
        assert_eq!(results[2].as_ref().ok(), Some(&1));
        assert_eq!(q.stats().batches(), 1);
    }
}
