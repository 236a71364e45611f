//! Background work at idle priority, raised back when someone waits for it.
//!
//! On a CPU device the double buffer's background compile shares the cores with the evals it
//! overlaps. At normal priority the scheduler gives it its fair share of a core in the middle of
//! an eval, whose other thread then waits at the next join. At idle priority it only runs when
//! a core has nothing else to do, which a training step leaves often enough (a `tiny` step
//! keeps about 1.5 of 2 cores busy). Once the trainer has to wait for the compile (the lag
//! would exceed `--max-staleness`), the compile is what holds the run up, so it gets its normal
//! priority back.
//!
//! Linux only (`SCHED_IDLE`). Elsewhere both calls do nothing: on the ANE the compile runs in
//! Apple's compiler service, not on this thread.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// No thread has entered yet.
const NOT_ENTERED: i32 = 0;
/// Raised before the thread entered: it must stay at normal priority.
const RAISED: i32 = -1;

/// One background thread's priority, shared between it and the threads that may wait for it.
#[derive(Clone, Debug, Default)]
pub struct BackgroundThread(Arc<AtomicI32>);

impl BackgroundThread {
    /// Called on the background thread: lowers it to idle priority, unless a waiter already
    /// raised it. Returns whether the thread now runs at idle priority.
    pub fn enter(&self) -> bool {
        let Some(tid) = sys::current_thread() else {
            return false;
        };
        // Lowered before the thread is published: a waiter that sees the tid may raise it at
        // once, and that must not be undone by a lowering still to come.
        if !sys::set_idle(tid, true) {
            return false;
        }
        if self
            .0
            .compare_exchange(NOT_ENTERED, tid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // A waiter raised it first: back to normal priority.
            sys::set_idle(tid, false);
            return false;
        }
        true
    }

    /// Called by a thread about to wait for the background one: gives it its normal priority
    /// back (now, or at once when it enters). Returns false only when the system refused
    /// (an unprivileged Linux thread may not leave idle priority under `RLIMIT_NICE` 0; it then
    /// still runs on the core the waiter leaves free).
    pub fn raise(&self) -> bool {
        match self.0.swap(RAISED, Ordering::AcqRel) {
            tid if tid > 0 => sys::set_idle(tid, false),
            _ => true,
        }
    }
}

/// The CPU time the calling thread has used so far (Linux; `None` elsewhere). A background
/// compile's start-to-end time includes the time it sat preempted at idle priority; this is
/// what it took from the cores.
pub fn thread_cpu_time() -> Option<Duration> {
    sys::thread_cpu_time()
}

#[cfg(target_os = "linux")]
mod sys {
    use std::time::Duration;

    pub fn thread_cpu_time() -> Option<Duration> {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to write.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
            return None;
        }
        Some(Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        ))
    }

    pub fn current_thread() -> Option<i32> {
        // SAFETY: gettid has no preconditions.
        Some(unsafe { libc::gettid() })
    }

    /// Switches thread `tid` of this process to `SCHED_IDLE`, or back to `SCHED_OTHER`.
    pub fn set_idle(tid: i32, idle: bool) -> bool {
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the duration of the call; an unknown or
        // exited tid makes the call fail with ESRCH, which is reported as false.
        unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn thread_cpu_time() -> Option<std::time::Duration> {
        None
    }

    pub fn current_thread() -> Option<i32> {
        None
    }

    pub fn set_idle(_tid: i32, _idle: bool) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn policy_of_this_thread() -> i32 {
        // SAFETY: querying the calling thread's policy has no preconditions.
        unsafe { libc::sched_getscheduler(0) }
    }

    fn may_leave_idle_priority() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_background_thread_runs_idle_until_a_waiter_raises_it() {
        let background = BackgroundThread::default();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (raised_tx, raised_rx) = mpsc::channel();
        let thread = {
            let background = background.clone();
            std::thread::spawn(move || {
                let entered = background.enter();
                entered_tx
                    .send((entered, policy_of_this_thread()))
                    .expect("the test waits for this");
                raised_rx.recv().expect("the test raises the thread");
                policy_of_this_thread()
            })
        };
        let (entered, while_idle) = entered_rx.recv().expect("the thread entered");
        assert!(
            entered,
            "lowering a thread's own priority is always allowed"
        );
        assert_eq!(while_idle, libc::SCHED_IDLE);
        let raised = background.raise();
        raised_tx.send(()).expect("the thread waits for this");
        let after = thread.join().expect("the thread ran");
        if may_leave_idle_priority() {
            assert!(raised);
        }
        if raised {
            assert_eq!(after, libc::SCHED_OTHER);
        }
    }

    #[test]
    fn a_waiter_racing_the_thread_as_it_enters_always_leaves_it_at_normal_priority() {
        if !may_leave_idle_priority() {
            return;
        }
        // Whichever comes first, the raise wins: the thread ends at normal priority.
        for _ in 0..200 {
            let background = BackgroundThread::default();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let thread = {
                let background = background.clone();
                std::thread::spawn(move || {
                    background.enter();
                    go_rx.recv().expect("the test lets the thread finish");
                    policy_of_this_thread()
                })
            };
            assert!(background.raise());
            go_tx.send(()).expect("the thread waits for this");
            assert_eq!(thread.join().expect("the thread ran"), libc::SCHED_OTHER);
        }
    }

    /// A thread's CPU time grows while it computes and stands still while it sleeps, and
    /// another thread's work does not count.
    #[test]
    fn thread_cpu_time_counts_this_threads_work_only() {
        let start = thread_cpu_time().expect("Linux measures thread CPU time");
        // Busy until 20 ms of CPU time have passed (bounded, in case the clock stood still).
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        while thread_cpu_time().unwrap() < start + Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            assert!(
                wall.elapsed() < Duration::from_secs(60),
                "CPU time never grew"
            );
        }
        std::hint::black_box(x);
        let (sleeper, busy_other) = std::thread::scope(|s| {
            let sleeper = s.spawn(|| {
                let before = thread_cpu_time().unwrap();
                std::thread::sleep(Duration::from_millis(200));
                thread_cpu_time().unwrap() - before
            });
            let before = thread_cpu_time().unwrap();
            (sleeper.join().unwrap(), thread_cpu_time().unwrap() - before)
        });
        // 200 ms asleep costs a few microseconds of CPU, not the 200 ms of wall time.
        assert!(sleeper < Duration::from_millis(50), "{sleeper:?}");
        // This thread only waited for the sleeper.
        assert!(busy_other < Duration::from_millis(50), "{busy_other:?}");
    }

    #[test]
    fn a_thread_raised_before_it_enters_keeps_its_normal_priority() {
        let background = BackgroundThread::default();
        assert!(background.raise());
        let (entered, policy) = {
            let background = background.clone();
            std::thread::spawn(move || (background.enter(), policy_of_this_thread()))
                .join()
                .expect("the thread ran")
        };
        assert!(!entered);
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
