//! Pacing: copies yield to heavy host I/O (sampled by the pacer thread,
//! which also follows the secondary's path), and the copy bandwidth cap.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{lock, Shared};

/// Host I/O counts as heavy when it is in flight at least this share of the time.
pub(super) const BUSY_UTIL: f64 = 0.25;
/// The time constant of the host I/O average: about ten samples.
pub(super) const BUSY_WINDOW: Duration = Duration::from_millis(200);
/// How often the pacer thread samples the host I/O while anything is
/// dirty. Each sample wakes the thread: under emulation, sampling every 5 ms
/// took 3-4% of a CPU from the host's I/O; every 20 ms costs a quarter of that,
/// and copies resume about 0.3 s after heavy host I/O ends.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How often the pacer thread follows the secondary's path: each look is a
/// wake-up and a stat; every 50 ms cost 1-1.5% of a CPU under emulation.
pub(super) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A token bucket for the copy bandwidth cap.
pub(super) struct Throttle {
    pub(super) rate: u64,
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl Throttle {
    /// Returns how long to wait before `bytes` may be copied, taking them.
    pub(super) fn take(&mut self, bytes: u64) -> Duration {
        let now = Instant::now();
        let burst = self.rate as f64 / 10.0 + bytes as f64;
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * self.rate as f64)
            .min(burst);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

/// Tells heavy host I/O from light: a moving average, over about
/// `BUSY_WINDOW`, of samples of whether host I/O is in flight (the share of
/// time the device is busy, as iostat's %util).
#[derive(Default)]
pub(super) struct Pacer {
    pub(super) util: f64,
    pub(super) last: Option<Instant>,
}

impl Pacer {
    /// Adds a sample taken at `now`; returns the new average.
    pub(super) fn sample(&mut self, now: Instant, busy: bool) -> f64 {
        let x = if busy { 1.0 } else { 0.0 };
        self.util = match self.last {
            None => x,
            Some(t) => {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                let keep = (-dt / BUSY_WINDOW.as_secs_f64()).exp();
                self.util * keep + x * (1.0 - keep)
            }
        };
        self.last = Some(now);
        self.util
    }

    /// The average, or 0 when no sample is recent.
    pub(super) fn current(&self, now: Instant) -> f64 {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => self.util,
            _ => 0.0,
        }
    }
}

impl Shared {
    /// Samples the host I/O and decides whether copies wait for it to ease:
    /// they do while it is heavy, the dirty backlog is below half the
    /// capacity, and the write-data buffer is less than half full (held
    /// back longer, its writes would overflow it, and every copy would read
    /// the primary back instead of sending what the buffer holds). Returns
    /// the decision and whether copies were held back until now (the
    /// waiting workers need a wake-up).
    pub(super) fn pace(&self, now: Instant) -> (bool, bool) {
        let util = lock(&self.pacer).sample(now, self.host_io.get() > 0);
        let dirty = self.record.states().dirty_count();
        let backlog_ok = dirty < (self.record.capacity_regions() / 2).max(1)
            && !self.near_max_dirty()
            && !self.buffer.half_full();
        let defer = util >= BUSY_UTIL && backlog_ok;
        let eased = self.deferring.swap(defer, Ordering::Relaxed) && !defer;
        (defer, eased)
    }

    /// Whether the backlog has reached half of `--max-dirty`.
    pub(super) fn near_max_dirty(&self) -> bool {
        self.record.states().dirty_count()
            >= (self.max_dirty_regions.load(Ordering::Relaxed) / 2).max(1)
    }

    /// Whether copies wait for host I/O now: the pacer thread's last
    /// decision, or a fresh one when that is stale (the thread samples only
    /// while something is dirty).
    pub(super) fn deferring_now(&self, now: Instant) -> bool {
        if self.max_lag().is_zero() {
            return false;
        }
        let fresh = lock(&self.pacer)
            .last
            .is_some_and(|t| now.saturating_duration_since(t) <= 2 * SAMPLE_EVERY);
        if fresh {
            self.deferring.load(Ordering::Relaxed)
        } else {
            let (defer, eased) = self.pace(now);
            if eased {
                self.wake.notify_all();
            }
            defer
        }
    }

    /// The pacer thread: samples the host I/O every `SAMPLE_EVERY` while
    /// anything is dirty (to pace the copies), and follows the secondary's
    /// path every `WATCH_EVERY`.
    pub(super) fn pace_and_watch(&self) {
        let tick = WATCH_EVERY;
        let mut last_watch = Instant::now();
        let mut g = lock(&self.stop_lock);
        while !self.stopping() {
            let pacing = !self.max_lag().is_zero();
            let sampling = pacing && self.record.states().dirty_count() > 0;
            g = self
                .stop_signal
                .wait_timeout(g, if sampling { SAMPLE_EVERY } else { tick })
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if self.stopping() {
                break;
            }
            if pacing && self.pace(Instant::now()).1 {
                // Under the queue lock, so a worker about to wait cannot miss it.
                let _q = lock(&self.queue);
                self.wake.notify_all();
            }
            if last_watch.elapsed() < tick {
                continue;
            }
            last_watch = Instant::now();
            self.watch_secondary();
        }
    }
}
