//! Counters bumped on the I/O path without sharing a cache line between threads.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SHARDS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter split into per-thread shards; reads sum them.
pub struct Counter {
    shards: [Padded; SHARDS],
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            shards: std::array::from_fn(|_| Padded::default()),
        }
    }
}

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |a, p| a.wrapping_add(p.0.load(Ordering::Relaxed)))
    }
}

/// A level (such as host I/O in flight) split into per-thread shards: `enter`
/// raises it until the returned guard drops. A guard may drop on another
/// thread; shards wrap, so the sum stays right.
#[derive(Default)]
pub struct Gauge {
    shards: Counter,
}

/// Holds a [`Gauge`] one higher while it lives.
#[must_use = "the gauge drops back when the guard does"]
pub struct GaugeGuard<'a>(&'a Gauge);

impl Gauge {
    #[inline]
    pub fn enter(&self) -> GaugeGuard<'_> {
        self.shards.add(1);
        GaugeGuard(self)
    }

    /// The current level (a snapshot: shards are read one by one).
    pub fn get(&self) -> u64 {
        let sum = self.shards.get();
        // A guard that entered on one shard and left on another can make a
        // snapshot look negative for an instant.
        if (sum as i64) < 0 {
            0
        } else {
            sum
        }
    }
}

impl Drop for GaugeGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.shards.add(u64::MAX); // wrapping -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sums_across_threads() {
        let c = Arc::new(Counter::default());
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(c.get(), 8000);
    }

    #[test]
    fn gauge_levels_survive_guards_dropped_on_other_threads() {
        let g = Arc::new(Gauge::default());
        let held: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        std::mem::forget(g.enter());
                    }
                })
            })
            .collect();
        for h in held {
            h.join().unwrap();
        }
        assert_eq!(g.get(), 4000);
        // Leave from other threads than the ones that entered.
        let left: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        drop(GaugeGuard(&g));
                    }
                })
            })
            .collect();
        for h in left {
            h.join().unwrap();
        }
        assert_eq!(g.get(), 0);
        let a = g.enter();
        let b = g.enter();
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }
}

/// The upper bounds of the latency histograms' buckets, in microseconds:
/// from a cached read's tens of microseconds to a stalled device's second.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// A latency histogram: one sharded counter per bucket (and one past the
/// last bound), plus the sum, so that recording costs two uncontended
/// atomic adds.
#[derive(Default)]
pub struct Latency {
    buckets: [Counter; LATENCY_BOUNDS_US.len() + 1],
    sum_ns: Counter,
}

/// A histogram's figures: the cumulative count at or below each bound
/// (Prometheus's `le`), the total count and the sum.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencyStatus {
    /// `(le_seconds, cumulative_count)` for each finite bound; `count`
    /// is the infinite bucket's.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Latency {
    #[inline]
    pub fn record(&self, d: std::time::Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].add(1);
        self.sum_ns.add(d.as_nanos() as u64);
    }

    pub fn status(&self) -> LatencyStatus {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.get();
            if let Some(&us) = LATENCY_BOUNDS_US.get(i) {
                buckets.push((us as f64 / 1e6, total));
            }
        }
        LatencyStatus {
            buckets,
            count: total,
            sum_seconds: self.sum_ns.get() as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latencies_land_in_cumulative_buckets() {
        let l = Latency::default();
        for us in [10, 25, 26, 3_000, 10_000_000] {
            l.record(Duration::from_micros(us));
        }
        let s = l.status();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (25e-6, 2), "le is inclusive");
        assert_eq!(s.buckets[1], (50e-6, 3));
        let at = |le: f64| s.buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(at(2_500e-6), 3);
        assert_eq!(at(5_000e-6), 4);
        assert_eq!(at(5.0), 4);
        assert_eq!(s.buckets.len(), LATENCY_BOUNDS_US.len());
        assert_eq!(s.count, 5, "the infinite bucket is the count");
        assert!(
            (s.sum_seconds - 10.003061).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }
}
