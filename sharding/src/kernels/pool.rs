//! A small persistent thread pool for the kernels' row splits.
//!
//! Why not rayon: one decode step of a small model runs a couple of hundred short matmuls
//! (tens of microseconds each) with a little single-threaded work between them (norms,
//! RoPE, attention). Rayon's idle workers go to sleep between those matmuls, and waking
//! them is a futex round trip per matmul: a large share of a 2-thread decode in the
//! profile (`benches/RESULTS.md`, "Kernel choices"), and the reason the second thread
//! added little. These workers spin for a short
//! window ([`super::config::SPIN_DEFAULT`], `LAMINA_POOL_SPIN_US`) after each job, so the next matmul finds them awake, as llama.cpp's
//! threads do, and then park, so that a node waiting for its next token (a pipeline hop
//! whose neighbours compute meanwhile) does not burn the cores its neighbours need.
//!
//! Parts are claimed dynamically, so a worker that is late costs nothing: the caller runs
//! its parts. A part that panics, on a worker or on the caller, is re-raised in the caller's
//! thread once every part has finished: the caller's request fails (the node's compute queue
//! turns a panic into that request's error) rather than going on with a result that has a
//! part missing, and the pool serves the next job as before. One job runs at a time. A caller that finds the pool busy (another thread is inside
//! [`Pool::run`]) runs its parts itself instead of waiting, so concurrent callers never
//! block one another and never deadlock.

use super::config::{KernelConfig, PoolKind};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One [`Pool::run`]: parts are claimed from `next` by whoever comes first, the caller
/// included, so a worker that is late (descheduled on a busy machine) costs nothing: the
/// caller takes its parts, as rayon's work stealing would.
struct Job {
    /// The borrowed closure. Dereferenced only by a thread that claimed a part below
    /// `parts`: `run` does not return before every such part is done, so it is alive.
    f: *const (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// The first panic of a part run by a worker, re-raised by `run` in the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `f` points to a `Sync` closure and is only dereferenced under the claim rule
// above; the counters are atomics.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs parts until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.parts {
                return;
            }
            // SAFETY: part i < parts is claimed and not yet done, so `run` is still
            // waiting and the closure it borrowed is alive.
            let f = unsafe { &*self.f };
            // A panicking part must still count as done, or `run` would wait forever; its
            // payload is kept for `run` to re-raise in the caller.
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// Bumped once per job; a worker looks at `job` when it sees a new epoch.
    epoch: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    /// Workers parked (or about to park) on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// How long an idle worker spins for the next job before it parks.
    spin: Duration,
}

/// A fixed set of worker threads plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    busy: Mutex<()>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool that runs jobs on `threads` threads: the caller and `threads - 1` workers,
    /// which spin for [`KernelConfig::spin`] after a job before they park. Workers that
    /// cannot be spawned are simply not there (the pool degrades to fewer).
    pub fn new(threads: usize) -> Self {
        Self::with_spin(threads, KernelConfig::global().spin)
    }

    /// As [`Pool::new`], with the workers' spin given.
    pub fn with_spin(threads: usize, spin: Duration) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lamina-kernel-{i}"))
                .spawn(move || worker(&s));
            match spawned {
                Ok(h) => handles.push(h),
                Err(_) => break,
            }
        }
        Self {
            workers: handles.len(),
            shared,
            busy: Mutex::new(()),
            handles,
        }
    }

    /// Threads a job runs on (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0), .., f(parts - 1)` on the pool's threads and the caller, and returns
    /// when all are done. A panic in any part, the caller's or a worker's, is re-raised
    /// here after every part has finished (the caller's own first), so a job never
    /// returns with a part silently missing.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let serial = || (0..parts).for_each(f);
        if parts <= 1 || self.workers == 0 {
            return serial();
        }
        // A job that re-raised a part's panic unwound through this guard and poisoned the
        // lock; the pool itself is intact (every part finished), so poison is ignored, or
        // every later job would run serially on its caller.
        let _busy = match self.busy.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return serial(),
        };
        let s = &*self.shared;
        // SAFETY: only erases the borrow's lifetime; see `Job::f` for why every
        // dereference happens while this call is still waiting.
        let ptr = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f as *const (dyn Fn(usize) + Sync),
            )
        };
        let job = Arc::new(Job {
            f: ptr,
            parts,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // The caller's own parts: caught, so that this frame does not unwind while a
        // worker may still run the closure it owns.
        let mine = catch_unwind(AssertUnwindSafe(|| loop {
            let i = job.next.fetch_add(1, Ordering::AcqRel);
            if i >= parts {
                break;
            }
            let r = catch_unwind(AssertUnwindSafe(|| f(i)));
            job.done.fetch_add(1, Ordering::Release);
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        }));
        // A panic above stopped the caller's claiming; take the rest so `done` can
        // reach `parts`.
        if mine.is_err() {
            job.work();
        }
        let mut spins = 0u32;
        while job.done.load(Ordering::Acquire) < parts {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        let worker_panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(panic) = worker_panic {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < s.spin {
                continue;
            }
            // Park. `sleeping` goes up before the epoch is checked again, both under the
            // lock, so a job published meanwhile either is seen here or sees us sleeping
            // and notifies after we wait (SeqCst on both sides).
            let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                let _ = s
                    .wake
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        };
        seen = epoch;
        let job = s.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(job) = job {
            job.work();
        }
    }
}

/// Whether `LAMINA_POOL=rayon` asks for rayon's pool instead (read once), for A/B runs.
pub fn use_rayon() -> bool {
    KernelConfig::global().pool == PoolKind::Rayon
}

/// The process-wide pool of the kernels, sized on first use by `rayon`'s thread count
/// (which `RAYON_NUM_THREADS`, and so `lamina --threads`, sets).
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn runs_every_part_once() {
        let pool = Pool::new(3);
        for parts in [0, 1, 2, 3, 5, 8] {
            let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
            pool.run(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{parts}"
            );
        }
    }

    #[test]
    fn many_short_jobs_and_parking() {
        let spin = Duration::from_micros(100);
        let pool = Pool::with_spin(2, spin);
        let total = AtomicU32::new(0);
        for round in 0..2000 {
            pool.run(2, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
            if round % 500 == 0 {
                // Let the worker park, then wake it with the next job.
                std::thread::sleep(spin * 3);
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 4000);
    }

    #[test]
    fn concurrent_callers_do_not_block_each_other() {
        let pool = Arc::new(Pool::new(2));
        let total = Arc::new(AtomicU32::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (p, t) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        p.run(2, &|_| {
                            t.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("caller thread");
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 500 * 2);
    }

    #[test]
    fn a_panicking_part_fails_the_job_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        for _ in 0..20 {
            // Whoever runs part 1 panics: either way `run` re-raises it in the caller
            // once every part is done, and the pool keeps working.
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(4, &|i| {
                    if i == 1 {
                        panic!("part 1 fails");
                    }
                })
            }));
            assert!(r.is_err());
            let n = AtomicU32::new(0);
            pool.run(4, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 4);
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller() {
        let pool = Pool::with_spin(2, Duration::from_micros(100));
        let caller = std::thread::current().id();
        for round in 0..10 {
            // The caller's part waits until the worker has run one, and the worker's part
            // panics: the panic happened on the worker, and must surface here.
            let worker_ran = AtomicBool::new(false);
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(2, &|_| {
                    if std::thread::current().id() == caller {
                        let t0 = Instant::now();
                        while !worker_ran.load(Ordering::Acquire)
                            && t0.elapsed() < Duration::from_secs(10)
                        {
                            std::thread::yield_now();
                        }
                    } else {
                        worker_ran.store(true, Ordering::Release);
                        panic!("worker part fails in round {round}");
                    }
                })
            }));
            assert!(worker_ran.load(Ordering::Acquire), "the worker ran no part");
            let payload = r.expect_err("a worker's panic must fail the job");
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert_eq!(msg, format!("worker part fails in round {round}"));
            // The next job runs every part, on the same workers.
            let hits: Vec<AtomicU32> = (0..8).map(|_| AtomicU32::new(0)).collect();
            pool.run(8, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}
