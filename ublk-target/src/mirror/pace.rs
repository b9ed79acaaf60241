//! Pacing: copies yield to heavy host I/O (sampled by the pacer thread,
//! which also follows the secondary's path), and the copy bandwidth cap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
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

/// The overtaken share is taken over about this many of the last copies
/// whose outcome is known (each outcome scales the earlier ones down by
/// `1 - 1/OVERTAKEN_SPAN`). Counted in outcomes, not in time: while copies
/// wait for the lag, nothing is cleaned, and the share stays what the last
/// copies showed.
pub(super) const OVERTAKEN_SPAN: f64 = 64.0;
/// The share is judged only once this many (weighted) outcomes are known.
pub(super) const OVERTAKEN_MIN_KNOWN: f64 = 16.0;
/// From this share of overtaken copies on, copying ahead of the maximum lag
/// is futile.
pub(super) const OVERTAKEN_FUTILE: f64 = 0.5;

/// Copies overtaken by writes: of the regions that recent copies cleaned,
/// the share that turned dirty again within the maximum lag. A copy whose
/// region is written again that soon leaves the backlog as it was, and
/// waiting for the lag would have copied both writes at once: when most
/// copies are overtaken, copies made early to bound the backlog only take
/// the disk from the host.
///
/// A clean's outcome is known when its region turns dirty again, or once
/// the lag has passed without that. Until then it counts for neither side:
/// counted as not overtaken, a burst of copies would look fruitful for the
/// second or so before the host comes back to their regions.
pub(super) struct Overtaken {
    epoch: Instant,
    /// When each region was last cleaned, in milliseconds since `epoch`
    /// (wrapping, at least 1), or 0 once its outcome is known: 4 bytes a
    /// region.
    cleaned_at: Box<[AtomicU32]>,
    outcomes: Mutex<Outcomes>,
}

#[derive(Default)]
struct Outcomes {
    /// Cleans whose outcome may not be known yet, oldest first: the region
    /// and its `cleaned_at`.
    pending: VecDeque<(u64, u32)>,
    /// Weighted counts of the known outcomes and of the overtaken ones.
    known: f64,
    overtaken: f64,
}

impl Outcomes {
    fn add(&mut self, overtaken: bool) {
        let keep = 1.0 - 1.0 / OVERTAKEN_SPAN;
        self.known = self.known * keep + 1.0;
        self.overtaken = self.overtaken * keep + if overtaken { 1.0 } else { 0.0 };
    }
}

impl Overtaken {
    pub(super) fn new(regions: u64) -> Self {
        Overtaken {
            epoch: Instant::now(),
            cleaned_at: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            outcomes: Mutex::new(Outcomes::default()),
        }
    }

    fn millis(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_millis() as u32).max(1)
    }

    fn lag_millis(within: Duration) -> u32 {
        within.as_millis().min(u128::from(u32::MAX / 2)) as u32
    }

    /// Milliseconds from `at` to `ms`, wrapping; a time a little after `ms`
    /// (taken by another thread) is no time.
    fn age(ms: u32, at: u32) -> u32 {
        match ms.wrapping_sub(at) {
            a if a > u32::MAX / 2 => 0,
            a => a,
        }
    }

    /// At most this many cleans wait for their outcome. The entries of the
    /// cleans already known stay until they age out, so a region written
    /// and copied often has several; the copies of one lag are far fewer
    /// than this on any disk. Past it, the oldest count as not overtaken.
    fn pending_cap(&self) -> usize {
        65536 + (2 * self.cleaned_at.len()).min(1 << 20)
    }

    /// Copies cleaned `regions` at `now`.
    pub(super) fn cleaned(&self, regions: &[u64], now: Instant, within: Duration) {
        if regions.is_empty() {
            return;
        }
        let ms = self.millis(now);
        let mut o = lock(&self.outcomes);
        for &r in regions {
            self.cleaned_at[r as usize].store(ms, Ordering::Relaxed);
            o.pending.push_back((r, ms));
        }
        self.settle(&mut o, ms, within);
    }

    /// Settles the pending cleans older than `within` (or beyond the cap):
    /// those whose region did not turn dirty again were not overtaken.
    fn settle(&self, o: &mut Outcomes, ms: u32, within: Duration) {
        let within = Self::lag_millis(within);
        let cap = self.pending_cap();
        while let Some(&(r, at)) = o.pending.front() {
            if Self::age(ms, at) <= within && o.pending.len() <= cap {
                break;
            }
            o.pending.pop_front();
            let unknown = self.cleaned_at[r as usize]
                .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if unknown {
                o.add(false);
            }
        }
    }

    /// `regions` turned dirty at `now`: those cleaned less than `within`
    /// before were overtaken.
    pub(super) fn dirtied(&self, regions: &[u64], now: Instant, within: Duration) {
        let ms = self.millis(now);
        let within = Self::lag_millis(within);
        let mut o = None;
        for &r in regions {
            let at = self.cleaned_at[r as usize].swap(0, Ordering::Relaxed);
            if at != 0 {
                o.get_or_insert_with(|| lock(&self.outcomes))
                    .add(Self::age(ms, at) <= within);
            }
        }
    }

    /// The share of the last known outcomes that were overtaken, or 0 while
    /// too few are known to tell.
    pub(super) fn share(&self, now: Instant, within: Duration) -> f64 {
        let mut o = lock(&self.outcomes);
        self.settle(&mut o, self.millis(now), within);
        if o.known < OVERTAKEN_MIN_KNOWN {
            0.0
        } else {
            o.overtaken / o.known
        }
    }
}

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
    /// Samples the host I/O and decides whether copies wait for it to ease
    /// (up to the maximum lag). They do while it is heavy, unless the
    /// backlog nears `--max-dirty`, and either:
    /// - the dirty backlog is below half the capacity and the write-data
    ///   buffer is less than half full (held back longer, its writes would
    ///   overflow it, and every copy would read the primary back instead of
    ///   sending what the buffer holds); or
    /// - most copies are overtaken (`Overtaken`): copying early cannot bring
    ///   the backlog down, and waiting copies each region's writes once.
    ///
    /// Returns the decision and whether copies were held back until now
    /// (the waiting workers need a wake-up).
    pub(super) fn pace(&self, now: Instant) -> (bool, bool) {
        let util = lock(&self.pacer).sample(now, self.host_io.get() > 0);
        let dirty = self.record.states().dirty_count();
        let futile = self.overtaken.share(now, self.max_lag()) >= OVERTAKEN_FUTILE;
        let backlog_ok = !self.near_max_dirty()
            && (futile
                || (dirty < (self.record.capacity_regions() / 2).max(1)
                    && !self.buffer.half_full()));
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
