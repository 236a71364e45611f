//! Time as the probes, reports and the trainer see it.
//!
//! Every timing in the project goes through a [`Clock`], so that the same measuring code runs
//! against real hardware ([`RealClock`]) and against a latency model in virtual time
//! ([`SimClock`]), where results are exact and repeatable. Virtual time is per thread: work on
//! one thread advances only that thread's timeline, which is what "runs in parallel" means, and
//! timelines meet where results are handed over ([`Clock::advance_to`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    /// The current time on the calling thread's timeline, since the clock started.
    fn now(&self) -> Duration;
    /// Spends `d` on the calling thread.
    fn sleep(&self, d: Duration);
    /// Moves the calling thread's timeline forward to at least `t`: the thread has received
    /// something that was ready only at `t`. A no-op on a real clock, where that is already so.
    fn advance_to(&self, t: Duration);
    /// True for a modelled clock; reports label their figures "simulated".
    fn is_simulated(&self) -> bool;
}

/// Wall-clock time.
#[derive(Debug)]
pub struct RealClock {
    start: Instant,
}

impl RealClock {
    pub fn new() -> RealClock {
        RealClock {
            start: Instant::now(),
        }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn advance_to(&self, _t: Duration) {}

    fn is_simulated(&self) -> bool {
        false
    }
}

/// Virtual time: `sleep` advances only the calling thread's timeline and returns at once.
/// A thread's timeline starts at zero the first time it touches the clock.
#[derive(Debug, Default)]
pub struct SimClock {
    timelines: Mutex<HashMap<ThreadId, Duration>>,
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock::default()
    }

    fn with_timeline<R>(&self, f: impl FnOnce(&mut Duration) -> R) -> R {
        let mut map = self
            .timelines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(map.entry(std::thread::current().id()).or_default())
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        self.with_timeline(|t| *t)
    }

    fn sleep(&self, d: Duration) {
        self.with_timeline(|t| *t += d);
    }

    fn advance_to(&self, at: Duration) {
        self.with_timeline(|t| *t = (*t).max(at));
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_clock_keeps_one_timeline_per_thread() {
        let clock = SimClock::new();
        clock.sleep(Duration::from_millis(5));
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                clock.advance_to(Duration::from_millis(2));
                clock.sleep(Duration::from_millis(30));
                clock.now()
            })
            .join()
            .unwrap()
        });
        assert_eq!(other, Duration::from_millis(32));
        assert_eq!(clock.now(), Duration::from_millis(5));
        clock.advance_to(other);
        assert_eq!(clock.now(), Duration::from_millis(32));
        clock.advance_to(Duration::from_millis(1));
        assert_eq!(clock.now(), Duration::from_millis(32));
    }
}
