//! The compile budget: the ANE compiler leaks with every compile and fails after about 119 in
//! one process (spec 1.9), so compiles are counted process-wide and refused past a budget, with
//! an error the trainer acts on (checkpoint and restart) rather than an opaque compiler failure.

use crate::DeviceError;
use std::sync::atomic::{AtomicU64, Ordering};

/// The default budget: the original's `MAX_COMPILES`, safely below the ~119 limit.
pub const DEFAULT_COMPILE_BUDGET: u64 = 100;

/// Counts compiles. Every attempt that reaches the compiler counts, failed or not, since the
/// leak is per attempt; programs rejected before (bad types, missing weights) do not.
#[derive(Debug, Default)]
pub struct CompileCounter {
    used: AtomicU64,
}

/// The counter of this process: the compiler's state is per process, whatever the number of
/// `AneDevice` values.
pub(crate) static PROCESS_COMPILES: CompileCounter = CompileCounter::new();

impl CompileCounter {
    pub const fn new() -> CompileCounter {
        CompileCounter {
            used: AtomicU64::new(0),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes one compile out of `budget`, or refuses once `budget` compiles were used. Returns
    /// the number of compiles used, this one included.
    pub fn claim(&self, budget: u64) -> Result<u64, DeviceError> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < budget).then_some(used + 1)
            })
            .map(|before| before + 1)
            .map_err(|used| DeviceError::BudgetExhausted { used, budget })
    }
}

/// Compiles used by this process so far.
pub fn process_compiles() -> u64 {
    PROCESS_COMPILES.used()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_up_to_the_budget_then_refuses() {
        let counter = CompileCounter::new();
        assert_eq!(counter.claim(3).unwrap(), 1);
        assert_eq!(counter.claim(3).unwrap(), 2);
        assert_eq!(counter.claim(3).unwrap(), 3);
        match counter.claim(3) {
            Err(DeviceError::BudgetExhausted { used: 3, budget: 3 }) => {}
            other => panic!("expected BudgetExhausted, got {other:?}"),
        }
        assert_eq!(counter.used(), 3, "a refused compile is not counted");
        // A larger budget (another device in the same process) sees the same count.
        assert_eq!(counter.claim(10).unwrap(), 4);
    }

    #[test]
    fn a_zero_budget_refuses_everything() {
        let counter = CompileCounter::new();
        assert!(matches!(
            counter.claim(0),
            Err(DeviceError::BudgetExhausted { used: 0, budget: 0 })
        ));
    }

    #[test]
    fn concurrent_claims_never_exceed_the_budget() {
        let counter = CompileCounter::new();
        let granted: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..50).filter(|_| counter.claim(100).is_ok()).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap() as u64).sum()
        });
        assert_eq!(granted, 100);
        assert_eq!(counter.used(), 100);
    }
}
