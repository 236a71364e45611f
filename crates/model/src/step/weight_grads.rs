//! Weight gradients on a helper thread: each `dW += dy·xᵀ` is queued as the backward produces
//! its operands and runs alongside the step's next evals; the step joins in on what is still
//! queued at its end.

use crate::host;
use crate::params::{ParamLayout, Params};
use anetrain_device::host_math::HostMath;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use WgradInput::Kept;

/// During the backward the step runs two streams at once: kernels and host math on the
/// calling thread, weight gradients on a helper. The helper's products get a pool of their
/// own share of the threads rather than splitting every product across all of them with the
/// step's own work: on two cores the fine-grained fork-join of one shared pool cost more in
/// waking and waiting than it gained. (The step itself stays on the calling thread, whose
/// timeline a simulated clock keeps.)
pub(super) struct WgradPool {
    pub(super) threads: usize,
    pub(super) pool: rayon::ThreadPool,
}

impl WgradPool {
    /// A pool of `threads / 2` threads (at least one): the helper's share of `threads`.
    pub(super) fn new(threads: usize) -> Option<WgradPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads((threads / 2).max(1))
            .thread_name(|i| format!("weight-gradients-{i}"))
            .build()
            .ok()?;
        Some(WgradPool { threads, pool })
    }
}

/// Each gradient tensor as a slice of its own, so that the weight-gradient thread can fill
/// some while the step fills others.
pub(super) struct GradSlots<'a> {
    pub(super) layout: Arc<ParamLayout>,
    pub(super) slots: Vec<Option<&'a mut [f32]>>,
}

impl<'a> GradSlots<'a> {
    pub(super) fn new(grads: &'a mut Params) -> GradSlots<'a> {
        let layout = grads.layout.clone();
        let mut rest: &'a mut [f32] = &mut grads.data;
        let mut slots = Vec::with_capacity(layout.tensors.len());
        // The layout lays tensors out back to back, in order.
        for t in &layout.tensors {
            let (slot, tail) = std::mem::take(&mut rest).split_at_mut(t.range.len());
            slots.push(Some(slot));
            rest = tail;
        }
        GradSlots { layout, slots }
    }

    /// The gradient of the tensor at `range`; each is handed out once per step.
    pub(super) fn take(&mut self, range: Range<usize>) -> &'a mut [f32] {
        let i = self
            .layout
            .tensors
            .iter()
            .position(|t| t.range == range)
            .expect("a tensor of the layout");
        self.slots[i]
            .take()
            .expect("each gradient tensor is written by one product per step")
    }
}

/// An input of a weight-gradient product: read where it is kept for the whole step (the
/// tapes), or a copy of a buffer the step is about to overwrite.
pub(super) enum WgradInput<'a> {
    Kept(&'a [f32]),
    Copied(Vec<f32>),
}

impl WgradInput<'_> {
    pub(super) fn values(&self) -> &[f32] {
        match self {
            Kept(v) => v,
            WgradInput::Copied(v) => v,
        }
    }
}

/// `dw[out][in] += dy[out][S] · x[in][S]ᵀ`, waiting to run.
pub(super) struct WgradJob<'a> {
    pub(super) dw: &'a mut [f32],
    pub(super) dy: WgradInput<'a>,
    pub(super) x: WgradInput<'a>,
    pub(super) dims: [usize; 3],
}

/// The weight-gradient products of a step run on a helper thread in the order the backward
/// pass produces them, while the step goes on evaluating kernels (the original overlaps them
/// and waits late: on the ANE the two run on different hardware; on the CPU they share the
/// cores and fill each other's idle gaps). At its end the step takes products off the queue
/// itself until none is left, rather than leave its core idle while the helper works through
/// the rest alone.
pub(super) struct WeightGradWorker<'scope, 'env> {
    pub(super) jobs: Option<mpsc::Sender<WgradJob<'env>>>,
    /// The queue, shared by the helper and (at the end) the step.
    pub(super) queue: Arc<Mutex<mpsc::Receiver<WgradJob<'env>>>>,
    pub(super) done: std::thread::ScopedJoinHandle<'scope, Duration>,
    pub(super) spare: &'env Mutex<Vec<Vec<f32>>>,
    pub(super) host: HostMath,
}

impl<'scope, 'env> WeightGradWorker<'scope, 'env> {
    pub(super) fn start(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        spare: &'env Mutex<Vec<Vec<f32>>>,
        pool: Option<&'env rayon::ThreadPool>,
        host: HostMath,
    ) -> Self {
        let (jobs, queue) = mpsc::channel::<WgradJob<'env>>();
        let queue = Arc::new(Mutex::new(queue));
        let helper_queue = queue.clone();
        let done = scope.spawn(move || {
            install(pool, || {
                let mut busy = Duration::ZERO;
                loop {
                    // The lock is held while waiting for a job (not while running one), which
                    // is fine: the step only takes jobs after closing the queue, when the wait
                    // ends at once.
                    let job = lock(&helper_queue).recv();
                    let Ok(job) = job else { break };
                    busy += run_wgrad_job(job, host, spare);
                }
                busy
            })
        });
        WeightGradWorker {
            jobs: Some(jobs),
            queue,
            done,
            spare,
            host,
        }
    }

    /// A copy of `values` in a spare buffer.
    pub(super) fn copy(&self, values: &[f32]) -> WgradInput<'env> {
        let mut spare = lock(self.spare);
        let mut v = spare.pop().unwrap_or_default();
        drop(spare);
        v.clear();
        v.extend_from_slice(values);
        WgradInput::Copied(v)
    }

    pub(super) fn submit(
        &mut self,
        dw: &'env mut [f32],
        dy: WgradInput<'env>,
        x: WgradInput<'env>,
        dims: [usize; 3],
    ) {
        let job = WgradJob { dw, dy, x, dims };
        if let Some(jobs) = &self.jobs {
            // The worker only stops when the queue closes, so the send cannot fail.
            let _ = jobs.send(job);
        }
    }

    /// `dw += dy·xᵀ`, with `dy` copied now (the step is about to overwrite it) and `x` read
    /// where the step keeps it to the end.
    pub(super) fn submit_copied(
        &mut self,
        dw: &'env mut [f32],
        dy: &[f32],
        x: &'env [f32],
        dims: [usize; 3],
    ) {
        let dy = self.copy(dy);
        self.submit(dw, dy, Kept(x), dims);
    }

    /// Runs the products still queued alongside the helper (one thread each: the helper
    /// holds the other core) and waits for the helper; returns the time both spent on them.
    pub(super) fn finish(mut self) -> Duration {
        self.jobs = None;
        let mut busy = Duration::ZERO;
        loop {
            let job = lock(&self.queue).try_recv();
            match job {
                Ok(job) => busy += run_wgrad_job(job, self.host.with_threads(1), self.spare),
                Err(_) => break,
            }
        }
        busy + self
            .done
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// One weight-gradient product; its copied inputs go back to the spare buffers. Returns the
/// time it took.
pub(super) fn run_wgrad_job(
    job: WgradJob,
    host: HostMath,
    spare: &Mutex<Vec<Vec<f32>>>,
) -> Duration {
    let t = Instant::now();
    let [out, inp, s] = job.dims;
    host::weight_grad(job.dw, job.dy.values(), job.x.values(), out, inp, s, host);
    let took = t.elapsed();
    let mut spare = lock(spare);
    for input in [job.dy, job.x] {
        if let WgradInput::Copied(v) = input {
            spare.push(v);
        }
    }
    took
}

/// A lock that a panic elsewhere does not poison for good: the data (a queue, spare buffers)
/// stays usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `op` in `pool`, or where it is called when there is none.
pub(super) fn install<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    op: impl FnOnce() -> R + Send,
) -> R {
    match pool {
        Some(pool) => pool.install(op),
        None => op(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers, so that every sum below is exact in f32.
    fn pattern(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed * 3) % 11) as f32 - 5.0)
            .collect()
    }

    #[test]
    fn every_queued_weight_gradient_is_added_once_whichever_thread_runs_it() {
        let (out, inp, s, jobs) = (24, 16, 40, 40);
        let dys: Vec<Vec<f32>> = (0..jobs).map(|j| pattern(out * s, j)).collect();
        let xs: Vec<Vec<f32>> = (0..jobs).map(|j| pattern(inp * s, j + 100)).collect();
        let mut dws = vec![vec![1.0f32; out * inp]; jobs];
        let spare = Mutex::default();
        std::thread::scope(|scope| {
            let mut worker = WeightGradWorker::start(scope, &spare, None, HostMath::best_built(1));
            for ((dw, dy), x) in dws.iter_mut().zip(&dys).zip(&xs) {
                worker.submit(dw, Kept(dy), WgradInput::Copied(x.clone()), [out, inp, s]);
            }
            // The step takes what the helper has not started yet.
            worker.finish();
        });
        for (j, dw) in dws.iter().enumerate() {
            for o in 0..out {
                for i in 0..inp {
                    let dot: f32 = (0..s).map(|t| dys[j][o * s + t] * xs[j][i * s + t]).sum();
                    assert_eq!(dw[o * inp + i], 1.0 + dot, "job {j}, dw[{o}][{i}]");
                }
            }
        }
        assert_eq!(
            lock(&spare).len(),
            jobs,
            "every copied input goes back to the spare buffers once"
        );
    }
}
