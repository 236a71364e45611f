//! How the device paces the framework: loads retried with back-off while the ANE is short of
//! resources, one compile at a time in the process, and a pause after a failed compile. Plain
//! Rust over a [`Clock`], so that the waits are tested in virtual time.

use crate::clock::{Clock, RealClock};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

/// Retries of a load that failed for want of ANE resources, which is transient: other
/// kernels, or another process, release theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadRetry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The wait before the first retry; each later wait doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

/// A load that failed for good.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadGaveUp<E> {
    /// The last attempt's error.
    pub error: E,
    pub attempts: u32,
}

impl LoadRetry {
    /// The reference shim's policy: up to 6 retries, waiting from 100 ms doubling up to 3.2 s
    /// (ane-constraints section 3, "no ANE resources").
    pub const REFERENCE: LoadRetry = LoadRetry {
        retries: 6,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(3200),
    };

    /// The waits before each retry, in order.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..self.retries).map(move |n| {
            self.first_delay
                .saturating_mul(2u32.saturating_pow(n))
                .min(self.max_delay)
        })
    }

    /// Calls `load` until it succeeds, fails with an error `is_transient` rejects, or the
    /// retries are used up, sleeping on `clock` between attempts.
    pub fn run<T, E>(
        &self,
        clock: &dyn Clock,
        is_transient: impl Fn(&E) -> bool,
        mut load: impl FnMut() -> Result<T, E>,
    ) -> Result<T, LoadGaveUp<E>> {
        let mut delays = self.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match load() {
                Ok(loaded) => return Ok(loaded),
                Err(error) => error,
            };
            match delays.next() {
                Some(delay) if is_transient(&error) => clock.sleep(delay),
                _ => return Err(LoadGaveUp { error, attempts }),
            }
        }
    }
}

/// Whether a load failure, by its NSError description, is the transient want of resources
/// ("Program load failed — no ANE resources (transient; retry)", as reported by the projects
/// in ane-constraints section 3). Anything else is not retried: a program the ANE cannot
/// load fails the same way every time.
pub fn is_transient_load_failure(description: &str) -> bool {
    let text = description.to_ascii_lowercase();
    text.contains("no ane resources") || text.contains("transient; retry")
}

/// The pause after a failed compile before the next: the compiler is reported to pace later
/// compiles by about 15 s (ANEForge issue #149; ane-constraints section 3).
pub const PAUSE_AFTER_FAILED_COMPILE: Duration = Duration::from_secs(15);

/// The compiler of one process: one compile (and load) at a time, paced after a failure.
/// The compiler's state is per process, so every device of the process uses one gate,
/// [`PROCESS_COMPILER`].
#[derive(Debug)]
pub struct CompilerGate<C> {
    clock: C,
    pause_after_failure: Duration,
    /// When the last compile failed, on `clock`, if it did; the lock is the turn.
    last_failure: Mutex<Option<Duration>>,
}

/// One compile's turn at the compiler; the next compile starts when it is dropped.
#[derive(Debug)]
pub struct CompileTurn<'a, C: Clock> {
    clock: &'a C,
    last_failure: MutexGuard<'a, Option<Duration>>,
}

impl<C: Clock> CompilerGate<C> {
    pub fn new(clock: C, pause_after_failure: Duration) -> CompilerGate<C> {
        CompilerGate {
            clock,
            pause_after_failure,
            last_failure: Mutex::new(None),
        }
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Waits for the compile in progress, then until the pause after the last failed compile
    /// is over.
    pub fn enter(&self) -> CompileTurn<'_, C> {
        // A panicking compile leaves a valid time (or none) behind.
        let last_failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failed_at) = *last_failure {
            let resume_at = failed_at + self.pause_after_failure;
            let now = self.clock.now();
            if now < resume_at {
                self.clock.sleep(resume_at - now);
            }
        }
        CompileTurn {
            clock: &self.clock,
            last_failure,
        }
    }
}

impl<C: Clock> CompileTurn<'_, C> {
    /// The compile failed: the next waits out the pause, counted from now.
    pub fn compile_failed(&mut self) {
        *self.last_failure = Some(self.clock.now());
    }

    /// The compile succeeded: the next need not wait.
    pub fn compile_succeeded(&mut self) {
        *self.last_failure = None;
    }
}

/// The gate every ANE device of this process compiles through.
pub static PROCESS_COMPILER: LazyLock<CompilerGate<RealClock>> =
    LazyLock::new(|| CompilerGate::new(RealClock::new(), PAUSE_AFTER_FAILED_COMPILE));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_reference_policy_doubles_from_100_ms_to_3_2_s() {
        let delays: Vec<Duration> = LoadRetry::REFERENCE.delays().collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200)]
        );
        let capped = LoadRetry {
            retries: 4,
            first_delay: ms(500),
            max_delay: ms(1500),
        };
        let delays: Vec<Duration> = capped.delays().collect();
        assert_eq!(delays, [ms(500), ms(1000), ms(1500), ms(1500)]);
    }

    #[test]
    fn a_transient_failure_is_retried_with_back_off_until_the_load_succeeds() {
        let clock = SimClock::new();
        let calls = Cell::new(0);
        let loaded = LoadRetry::REFERENCE.run(
            &clock,
            |e: &&str| is_transient_load_failure(e),
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 4 {
                    Err("Program load failed — no ANE resources (transient; retry)")
                } else {
                    Ok("loaded")
                }
            },
        );
        assert_eq!(loaded, Ok("loaded"));
        assert_eq!(calls.get(), 4);
        assert_eq!(clock.now(), ms(100 + 200 + 400));
    }

    #[test]
    fn a_transient_failure_gives_up_after_the_last_retry() {
        let clock = SimClock::new();
        let calls = Cell::new(0);
        let failed = LoadRetry::REFERENCE.run(
            &clock,
            |_: &()| true,
            || {
                calls.set(calls.get() + 1);
                Err::<(), ()>(())
            },
        );
        assert_eq!(
            failed,
            Err(LoadGaveUp {
                error: (),
                attempts: 7
            })
        );
        assert_eq!(calls.get(), 7);
        assert_eq!(clock.now(), ms(6300));
    }

    #[test]
    fn any_other_failure_is_not_retried() {
        let clock = SimClock::new();
        let calls = Cell::new(0);
        let failed = LoadRetry::REFERENCE.run(
            &clock,
            |e: &&str| is_transient_load_failure(e),
            || {
                calls.set(calls.get() + 1);
                Err::<(), _>(
                    "Error Domain=com.apple.appleneuralengine Code=2 \"InvalidMILProgram\"",
                )
            },
        );
        assert_eq!(failed.unwrap_err().attempts, 1);
        assert_eq!(calls.get(), 1);
        assert_eq!(clock.now(), Duration::ZERO, "no wait");
    }

    #[test]
    fn only_the_want_of_resources_counts_as_transient() {
        assert!(is_transient_load_failure(
            "Program load failed — no ANE resources (transient; retry) (underlying=0x5)"
        ));
        assert!(is_transient_load_failure("No ANE Resources"));
        assert!(!is_transient_load_failure(
            "Program load failed — bad program image"
        ));
        assert!(!is_transient_load_failure(""));
    }

    #[test]
    fn the_compile_after_a_failure_waits_until_the_pause_after_it_is_over() {
        let gate = CompilerGate::new(SimClock::new(), Duration::from_secs(15));
        gate.enter().compile_failed();
        gate.clock().sleep(Duration::from_secs(4));
        let mut turn = gate.enter();
        assert_eq!(gate.clock().now(), Duration::from_secs(15));
        turn.compile_succeeded();
        drop(turn);
        gate.enter();
        assert_eq!(
            gate.clock().now(),
            Duration::from_secs(15),
            "no pause after a success"
        );
    }

    #[test]
    fn the_pause_is_counted_from_the_failure_not_from_the_compile_start() {
        let gate = CompilerGate::new(SimClock::new(), Duration::from_secs(15));
        let mut turn = gate.enter();
        gate.clock().sleep(Duration::from_secs(10)); // a long compile that then fails
        turn.compile_failed();
        drop(turn);
        gate.clock().sleep(Duration::from_secs(20));
        gate.enter();
        assert_eq!(
            gate.clock().now(),
            Duration::from_secs(30),
            "already over: no wait"
        );
        let first = CompilerGate::new(SimClock::new(), Duration::from_secs(15));
        first.enter();
        assert_eq!(
            first.clock().now(),
            Duration::ZERO,
            "no wait before any failure"
        );
    }

    #[test]
    fn one_compile_at_a_time() {
        let gate = CompilerGate::new(SimClock::new(), Duration::from_secs(15));
        let inside = AtomicUsize::new(0);
        let most_inside = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let mut turn = gate.enter();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most_inside.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        turn.compile_succeeded();
                    }
                });
            }
        });
        assert_eq!(most_inside.load(Ordering::SeqCst), 1);
    }
}
