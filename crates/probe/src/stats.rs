//! Timestamps and what is computed from them. Everything stays a [`Duration`] (whole
//! nanoseconds) until it is printed, so that figures taken on a virtual clock come out exact.

use std::time::Duration;

/// When one operation started and ended, on the clock of the thread that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: Duration,
    pub end: Duration,
}

impl Interval {
    pub fn len(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    /// True if this interval lies entirely inside `outer` (its ends included).
    pub fn lies_within(&self, outer: &Interval) -> bool {
        self.start >= outer.start && self.end <= outer.end
    }
}

/// From the start of the first interval to the end of the last.
pub fn span(intervals: &[Interval]) -> Duration {
    match (intervals.first(), intervals.last()) {
        (Some(first), Some(last)) => last.end.saturating_sub(first.start),
        _ => Duration::ZERO,
    }
}

/// Min, median and max of repeated measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    pub min: Duration,
    /// The middle sample, or the mean of the two middle ones.
    pub median: Duration,
    pub max: Duration,
}

impl Spread {
    /// What an empty run of samples reports.
    pub const ZERO: Spread = Spread {
        min: Duration::ZERO,
        median: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// `None` for no samples.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Option<Spread> {
        let mut sorted: Vec<Duration> = samples.into_iter().collect();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
        };
        Some(Spread {
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }

    /// The spread of the intervals' lengths.
    pub fn of_intervals(intervals: &[Interval]) -> Option<Spread> {
        Spread::of(intervals.iter().map(Interval::len))
    }
}

/// `total / n`, exact to the nanosecond; zero for `n = 0`.
pub fn per_item(total: Duration, n: usize) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let nanos = total.as_nanos() / n as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `(a · a_count) / (b · b_count)`, the ratio of two per-item times, computed from whole
/// nanoseconds so that equal rates give exactly 1; NaN when the denominator is zero.
pub fn rate_ratio(a: Duration, a_items: usize, b: Duration, b_items: usize) -> f64 {
    let numerator = a.as_nanos() * b_items as u128;
    let denominator = b.as_nanos() * a_items as u128;
    if denominator == 0 {
        return f64::NAN;
    }
    numerator as f64 / denominator as f64
}

/// `a / b`; NaN when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    rate_ratio(a, 1, b, 1)
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// FLOPs per second of `items` operations of `flops` each taking `total`; NaN for zero time.
pub fn flops_per_second(flops: u64, items: usize, total: Duration) -> f64 {
    if total.is_zero() {
        return f64::NAN;
    }
    flops as f64 * items as f64 / total.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn spread_takes_the_middle() {
        let odd = Spread::of([us(5), us(1), us(3)]).unwrap();
        assert_eq!((odd.min, odd.median, odd.max), (us(1), us(3), us(5)));
        let even = Spread::of([us(4), us(1), us(2), us(8)]).unwrap();
        assert_eq!(even.median, us(3));
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn equal_rates_give_exactly_one() {
        let (a, b) = (
            Duration::from_nanos(189_097_000),
            Duration::from_nanos(94_548_500),
        );
        assert_eq!(rate_ratio(a, 1000, b, 500), 1.0);
        assert!(rate_ratio(us(1), 1, Duration::ZERO, 1).is_nan());
    }

    #[test]
    fn intervals_inside_a_window() {
        let window = Interval {
            start: us(10),
            end: us(20),
        };
        let inside = Interval {
            start: us(10),
            end: us(20),
        };
        let straddling = Interval {
            start: us(9),
            end: us(12),
        };
        assert!(inside.lies_within(&window));
        assert!(!straddling.lies_within(&window));
    }
}
