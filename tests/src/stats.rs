//! Latency summaries for test output.

use std::fmt;

/// p50 / p99 / max of a set of millisecond samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises `samples` (nearest-rank percentiles); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank =
            |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Some(Latency {
            count: sorted.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: sorted[sorted.len() - 1],
        })
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expiry latency over {} orders: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let latency = Latency::of(&samples).unwrap();
        assert_eq!(
            (latency.p50_ms, latency.p99_ms, latency.max_ms),
            (50.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(&[7.0]).unwrap().p99_ms, 7.0);
        assert!(Latency::of(&[]).is_none());
    }
}
