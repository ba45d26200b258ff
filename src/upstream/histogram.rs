//! A latency histogram made of atomics: fixed buckets, recorded from any thread
//! without a lock, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus' convention), the last one
/// followed by `+Inf`.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket (not cumulative); the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// Sum in seconds, total count, and per-bucket counts (not cumulative, `+Inf`
    /// last).
    pub fn read(&self) -> (f64, u64, [u64; BUCKETS.len() + 1]) {
        let mut counts = [0; BUCKETS.len() + 1];
        for (c, a) in counts.iter_mut().zip(&self.counts) {
            *c = a.load(Relaxed);
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (sum, counts.iter().sum(), counts)
    }

    /// The mean in milliseconds (0 with no observations).
    pub fn mean_ms(&self) -> u64 {
        let (sum, count, _) = self.read();
        if count == 0 {
            0
        } else {
            (sum * 1000.0 / count as f64) as u64
        }
    }

    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Relaxed);
        }
        self.sum_micros.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_add_up() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, counts) = h.read();
        assert_eq!(count, 3);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[2], 1, "3 ms is in the <= 5 ms bucket");
        assert_eq!(counts[BUCKETS.len()], 1, "60 s is in +Inf");
        assert!((sum - 60.0035).abs() < 1e-6);
        assert_eq!(h.mean_ms(), 20_001);
    }
}
