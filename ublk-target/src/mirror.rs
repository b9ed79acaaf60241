//! The mirror pool: threads that copy dirty regions from primary to secondary.
//!
//! Regions are queued when they turn dirty. A worker claims a run of adjacent
//! dirty regions (up to `max_copy_bytes`), reads it from the primary, writes it
//! to the secondary, makes it durable there, and only then marks the regions
//! clean, which succeeds only if no write started since the claim. A failed
//! copy leaves the regions dirty, puts the pool in degraded mode and retries
//! with backoff; host I/O never sees a secondary failure.
//!
//! Copies yield to heavy host I/O: while host I/O is in flight most of the
//! time (and the dirty backlog is below half the record's capacity), a newly
//! dirty region waits up to `max_lag` instead of `copy_delay`, so the host's
//! writes do not share the machine with the copies, and writes to a hot region
//! during that time are copied once. Light host I/O does not delay copies.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dev::{Dev, PathCheck};
use crate::error::{Error, Result};
use crate::record::{ChunkMask, ClaimRefused, CopyClaim, Record, RegionView};
use crate::stats::Gauge;

/// How the pool copies.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Worker threads.
    pub threads: usize,
    /// Largest extent one copy moves, in bytes.
    pub max_copy_bytes: u64,
    /// Copy bandwidth cap in bytes per second; `None` copies as fast as it can.
    pub max_rate: Option<u64>,
    /// How often removals from the record are written lazily (sooner when
    /// they pass an eighth of the capacity).
    pub flush_interval: Duration,
    /// How long a newly dirty region waits before its first copy, so further
    /// writes to it are copied together (write-behind coalescing).
    pub copy_delay: Duration,
    /// Under heavy host I/O, how long a dirty region may wait for its copy;
    /// zero copies at once whatever the load.
    pub max_lag: Duration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            threads: 2,
            max_copy_bytes: 4 << 20,
            max_rate: None,
            flush_interval: Duration::from_millis(200),
            copy_delay: Duration::from_millis(50),
            max_lag: DEFAULT_MAX_LAG,
        }
    }
}

/// How long copies may wait under heavy host I/O, by default.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);
/// Host I/O counts as heavy when it is in flight at least this share of the time.
const BUSY_UTIL: f64 = 0.25;
/// The time constant of the host I/O average: about ten samples.
const BUSY_WINDOW: Duration = Duration::from_millis(200);
/// How often the housekeeping thread samples the host I/O while anything is
/// dirty. Each sample wakes the thread: under emulation, sampling every 5 ms
/// took 3-4% of a CPU from the host's I/O; every 20 ms costs a quarter of that,
/// and copies resume about 0.3 s after heavy host I/O ends.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// First retry delay after a secondary failure; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a failing secondary whose path still names it is reopened.
const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// Delay before retrying a region that had writes in flight.
const BUSY_RETRY: Duration = Duration::from_millis(1);
/// Extents one worker copies before one sync of the secondary.
const EXTENTS_PER_SYNC: usize = 8;

/// A worker's copy buffer: page-aligned (so O_DIRECT needs no bounce) and
/// reused across copies.
#[derive(Default)]
pub(crate) struct CopyBuf(Option<rings::AlignedBuf>);

impl CopyBuf {
    /// At least `len` bytes, reallocated only when too small.
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.0.as_ref().is_none_or(|b| b.len() < len) {
            self.0 = Some(rings::AlignedBuf::zeroed(len));
        }
        &mut self.0.as_mut().expect("allocated above")[..len]
    }
}

/// Claimed extents (runs of adjacent regions with their claims) and when
/// each was queued.
type Batch = Vec<(Vec<(u64, CopyClaim)>, Instant)>;

#[derive(Debug, Clone, Copy)]
struct Entry {
    region: u64,
    /// When the region was queued: the copy lag is measured from here.
    since: Instant,
    not_before: Instant,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Entries waiting for a retry time.
    delayed: VecDeque<Entry>,
    /// Queue times of extents being copied now.
    copying: Vec<Instant>,
}

/// Counters the pool keeps.
#[derive(Debug, Default)]
struct Counters {
    bytes_copied: AtomicU64,
    copies: AtomicU64,
    copy_errors: AtomicU64,
    resync_total: AtomicU64,
    resync_done: AtomicU64,
}

/// A token bucket for the copy bandwidth cap.
struct Throttle {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// Returns how long to wait before `bytes` may be copied, taking them.
    fn take(&mut self, bytes: u64) -> Duration {
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
struct Pacer {
    util: f64,
    last: Option<Instant>,
}

impl Pacer {
    /// Adds a sample taken at `now`; returns the new average.
    fn sample(&mut self, now: Instant, busy: bool) -> f64 {
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
    fn current(&self, now: Instant) -> f64 {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => self.util,
            _ => 0.0,
        }
    }
}

struct Shared {
    record: Arc<Record>,
    primary: Dev,
    /// Replaced when the secondary's path names a new device (see
    /// `watch_secondary`).
    secondary: RwLock<Dev>,
    /// The secondary's path names nothing, or something else than the open
    /// device: copies fail until a device is back there.
    secondary_gone: AtomicBool,
    /// When the secondary was last reopened while failing.
    last_reopen: Mutex<Instant>,
    config: MirrorConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
    /// Wakes the housekeeping thread at stop (apart from `wake`, which every
    /// enqueue signals).
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
    backoff_until: Mutex<Option<Instant>>,
    backoff: Mutex<Duration>,
    throttle: Option<Mutex<Throttle>>,
    /// Regions that recovery found in the record and that are not copied yet.
    resync: Mutex<HashSet<u64>>,
    counters: Counters,
    /// Host I/O in flight, raised by the engine around every request.
    host_io: Arc<Gauge>,
    pacer: Mutex<Pacer>,
    /// Whether copies are being held back for heavy host I/O right now.
    deferring: AtomicBool,
}

/// A snapshot of the pool's figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MirrorStats {
    pub bytes_copied: u64,
    pub copies: u64,
    pub copy_errors: u64,
    /// Seconds since the oldest region still waiting was queued.
    pub lag_seconds: f64,
    pub degraded: bool,
    pub last_error: Option<String>,
    pub resync_total_bytes: u64,
    pub resync_done_bytes: u64,
    /// Share of recent time with host I/O in flight (0 to 1).
    pub host_busy: f64,
    /// Copies are held back (up to the maximum lag) for heavy host I/O.
    pub deferring: bool,
}

/// The pool of mirror threads of one device.
pub struct MirrorPool {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MirrorPool {
    /// Starts `config.threads` workers and a housekeeping thread. `host_io`
    /// is the level of host I/O in flight, which copies yield to.
    pub fn start(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
        host_io: Arc<Gauge>,
    ) -> Result<Self> {
        if config.threads == 0 {
            return Err(Error::Config("mirror threads must be at least 1".into()));
        }
        Self::build(record, primary, secondary, config, host_io, true)
    }

    /// A pool without threads: the owner copies by calling `pump`. For
    /// deterministic tests and single-threaded tools.
    pub fn manual(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
        host_io: Arc<Gauge>,
    ) -> Result<Self> {
        Self::build(record, primary, secondary, config, host_io, false)
    }

    fn build(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
        host_io: Arc<Gauge>,
        threads: bool,
    ) -> Result<Self> {
        if config.max_copy_bytes < record.geometry().region_size() {
            return Err(Error::Config(format!(
                "max copy size {} is smaller than the region size {}",
                config.max_copy_bytes,
                record.geometry().region_size()
            )));
        }
        let throttle = match config.max_rate {
            Some(0) => {
                return Err(Error::Config(
                    "max copy rate 0 would never copy; omit it for no cap".into(),
                ))
            }
            Some(rate) => Some(Mutex::new(Throttle {
                rate,
                tokens: 0.0,
                last: Instant::now(),
            })),
            None => None,
        };
        let shared = Arc::new(Shared {
            record,
            primary,
            secondary: RwLock::new(secondary),
            secondary_gone: AtomicBool::new(false),
            last_reopen: Mutex::new(Instant::now()),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_signal: Condvar::new(),
            degraded: AtomicBool::new(false),
            last_error: Mutex::new(None),
            backoff_until: Mutex::new(None),
            backoff: Mutex::new(MIN_BACKOFF),
            throttle,
            resync: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            host_io,
            pacer: Mutex::new(Pacer::default()),
            deferring: AtomicBool::new(false),
            config,
        });
        let mut workers = Vec::new();
        if !threads {
            return Ok(MirrorPool {
                shared,
                workers: Mutex::new(workers),
            });
        }
        for i in 0..shared.config.threads {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tandem-mirror-{i}"))
                    .spawn(move || s.work())
                    .map_err(|e| Error::io("start mirror thread", e))?,
            );
        }
        let s = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name("tandem-destage".into())
                .spawn(move || s.housekeep())
                .map_err(|e| Error::io("start destage thread", e))?,
        );
        Ok(MirrorPool {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Copies one batch on the calling thread, ignoring retry delays; returns
    /// false when nothing was ready to copy.
    pub fn pump(&self) -> bool {
        match self.shared.next_batch(false) {
            Some(batch) => {
                self.shared.copy_batch(batch, &mut CopyBuf::default());
                true
            }
            None => false,
        }
    }

    /// Queues regions that turned dirty.
    pub fn enqueue(&self, regions: &[u64]) {
        self.shared.enqueue(regions);
    }

    /// Queues regions found in the record at start-up and counts them as resync.
    pub fn enqueue_resync(&self, regions: &[u64]) {
        self.shared.enqueue_resync(regions);
    }

    pub fn stats(&self) -> MirrorStats {
        let s = &self.shared;
        let now = Instant::now();
        let lag = {
            let q = lock(&s.queue);
            q.entries
                .iter()
                .chain(q.delayed.iter())
                .map(|e| e.since)
                .chain(q.copying.iter().copied())
                .min()
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64())
        };
        MirrorStats {
            bytes_copied: s.counters.bytes_copied.load(Ordering::Relaxed),
            copies: s.counters.copies.load(Ordering::Relaxed),
            copy_errors: s.counters.copy_errors.load(Ordering::Relaxed),
            lag_seconds: if s.record.states().dirty_count() == 0 {
                0.0
            } else {
                lag
            },
            degraded: s.degraded.load(Ordering::Relaxed),
            last_error: lock(&s.last_error).clone(),
            resync_total_bytes: s.counters.resync_total.load(Ordering::Relaxed),
            resync_done_bytes: s.counters.resync_done.load(Ordering::Relaxed),
            host_busy: lock(&s.pacer).current(now),
            deferring: s.deferring.load(Ordering::Relaxed),
        }
    }

    /// Stops the workers after their current copy. Regions queued later stay
    /// dirty (and recorded) until a new pool copies them.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            // Under the queue lock, so a worker between its stop check and its
            // wait cannot miss the wake-up.
            let _q = lock(&self.shared.queue);
            self.shared.wake.notify_all();
        }
        {
            let _g = lock(&self.shared.stop_lock);
            self.shared.stop_signal.notify_all();
        }
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for MirrorPool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn enqueue(&self, regions: &[u64]) {
        if regions.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut q = lock(&self.queue);
        // A worker waiting while entries are queued wakes when the oldest is
        // due, which is no later than these new ones: only a queue that was
        // empty needs the workers woken. (Under emulation, waking them for
        // every region that turned dirty took 2-3% of a CPU.)
        let was_empty = q.entries.is_empty();
        for &region in regions {
            q.entries.push_back(Entry {
                region,
                since: now,
                not_before: now,
            });
        }
        drop(q);
        if was_empty {
            self.wake.notify_all();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn secondary(&self) -> Dev {
        self.secondary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Follows the secondary's path (from the housekeeping thread): a device
    /// that was removed puts the pool in degraded mode even if writes to the
    /// open handle still succeed (a deleted file); a device that is back, or
    /// a new one, is opened and copied to in full, since what it holds is
    /// unknown. While copies fail with the path unchanged, the device is
    /// reopened every `REOPEN_EVERY` (a handle to a device that went away
    /// fails for ever, even once one with the same number is back).
    fn watch_secondary(&self) {
        let secondary = self.secondary();
        let gone = self.secondary_gone.load(Ordering::Acquire);
        let full = match secondary.check_path() {
            PathCheck::Same if !gone => {
                let failing = self.degraded.load(Ordering::Acquire);
                let mut last = lock(&self.last_reopen);
                if !failing || last.elapsed() < REOPEN_EVERY {
                    return;
                }
                *last = Instant::now();
                false
            }
            // Back under the same number, after it was gone.
            PathCheck::Same => true,
            PathCheck::Replaced => {
                self.lose_secondary(format!(
                    "secondary {} was replaced by another device",
                    secondary.describe()
                ));
                true
            }
            PathCheck::Gone(why) => {
                self.lose_secondary(format!("secondary {why}"));
                return;
            }
        };
        if let Err(e) = self.switch_secondary(&secondary, full) {
            log::debug!("secondary not usable yet: {e}");
            if full {
                *lock(&self.last_error) = Some(e.to_string());
            }
        }
    }

    /// Marks the secondary as gone: degraded, copies fail.
    fn lose_secondary(&self, why: String) {
        if !self.secondary_gone.swap(true, Ordering::AcqRel) {
            log::warn!("{why}; degraded until it is back");
        }
        self.degraded.store(true, Ordering::Release);
        *lock(&self.last_error) = Some(why);
    }

    /// Opens the device at the secondary's path and copies to it from now
    /// on; with `full`, every region is first recorded and marked dirty.
    fn switch_secondary(&self, old: &Dev, full: bool) -> Result<()> {
        let new = old.reopen()?;
        let size = self.primary.size();
        if new.size() < size {
            return Err(Error::Config(format!(
                "secondary {} is back with {} bytes, smaller than the primary's {size}",
                new.describe(),
                new.size()
            )));
        }
        let dirtied = if full {
            self.record.record_all()?
        } else {
            Vec::new()
        };
        *self.secondary.write().unwrap_or_else(|e| e.into_inner()) = new;
        self.secondary_gone.store(false, Ordering::Release);
        if full {
            log::warn!(
                "secondary {} is back as a new device: copying all {size} bytes",
                old.describe()
            );
            self.enqueue_resync(&dirtied);
        } else {
            log::info!("secondary {} reopened", old.describe());
        }
        // Try at once instead of at the end of the backoff.
        *lock(&self.backoff_until) = None;
        let _q = lock(&self.queue);
        self.wake.notify_all();
        Ok(())
    }

    /// Queues regions that must be copied in full and counts them as resync.
    fn enqueue_resync(&self, regions: &[u64]) {
        let g = self.record.geometry();
        let bytes: u64 = regions
            .iter()
            .map(|&r| {
                let b = g.region_bytes(r);
                b.end - b.start
            })
            .sum();
        lock(&self.resync).extend(regions.iter().copied());
        self.counters
            .resync_total
            .fetch_add(bytes, Ordering::Relaxed);
        self.enqueue(regions);
    }

    /// Waits for work (unless `!blocking`): returns claimed extents, each a
    /// run of adjacent claimed regions.
    fn next_batch(&self, blocking: bool) -> Option<Batch> {
        let states = self.record.states();
        let max_regions =
            (self.config.max_copy_bytes / self.record.geometry().region_size()).max(1);
        let regions = self.record.geometry().regions();
        let mut q = lock(&self.queue);
        loop {
            if self.stopping() {
                return None;
            }
            let now = Instant::now();
            // Secondary failing: wait out the backoff.
            let backoff_until = *lock(&self.backoff_until);
            if let Some(until) = backoff_until {
                if until > now && blocking {
                    q = self
                        .wake
                        .wait_timeout(q, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
            }
            while q
                .delayed
                .front()
                .is_some_and(|e| e.not_before <= now || !blocking)
            {
                let e = q.delayed.pop_front().unwrap();
                q.entries.push_back(e);
            }
            let mut batch = Vec::new();
            let mut young: Option<Instant> = None;
            let deferring = blocking && !q.entries.is_empty() && self.deferring_now(now);
            let delay = if deferring {
                self.config.max_lag
            } else {
                self.config.copy_delay
            };
            while batch.len() < EXTENTS_PER_SYNC {
                let Some(&e) = q.entries.front() else {
                    break;
                };
                let due = e.since + delay;
                if blocking && due > now {
                    // Queued too recently: let more writes to it gather first.
                    young = Some(due);
                    break;
                }
                q.entries.pop_front();
                match states.claim_copy(e.region) {
                    Ok(claim) => {
                        let mut run = vec![(e.region, claim)];
                        let mut next = e.region + 1;
                        while (run.len() as u64) < max_regions && next < regions {
                            match states.claim_copy(next) {
                                Ok(c) => run.push((next, c)),
                                Err(_) => break,
                            }
                            next += 1;
                        }
                        q.copying.push(e.since);
                        batch.push((run, e.since));
                    }
                    Err(ClaimRefused::Busy) => {
                        q.delayed.push_back(Entry {
                            not_before: now + BUSY_RETRY,
                            ..e
                        });
                    }
                    Err(ClaimRefused::Clean) | Err(ClaimRefused::Claimed) => {}
                }
            }
            if !batch.is_empty() {
                return Some(batch);
            }
            if !blocking {
                return None;
            }
            let wait = q
                .delayed
                .front()
                .map(|e| e.not_before)
                .into_iter()
                .chain(young)
                .min()
                .map_or(Duration::from_millis(200), |t| {
                    t.saturating_duration_since(now)
                });
            q = self
                .wake
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Samples the host I/O and decides whether copies wait for it to ease:
    /// they do while it is heavy and the dirty backlog is below half the
    /// capacity. Returns the decision and whether copies were held back
    /// until now (the waiting workers need a wake-up).
    fn pace(&self, now: Instant) -> (bool, bool) {
        let util = lock(&self.pacer).sample(now, self.host_io.get() > 0);
        let backlog_ok =
            self.record.states().dirty_count() < (self.record.capacity_regions() / 2).max(1);
        let defer = util >= BUSY_UTIL && backlog_ok;
        let eased = self.deferring.swap(defer, Ordering::Relaxed) && !defer;
        (defer, eased)
    }

    /// Whether copies wait for host I/O now: the housekeeping thread's last
    /// decision, or a fresh one when that is stale (the thread samples only
    /// while something is dirty).
    fn deferring_now(&self, now: Instant) -> bool {
        if self.config.max_lag.is_zero() {
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

    fn work(&self) {
        let mut buf = CopyBuf::default();
        while let Some(batch) = self.next_batch(true) {
            self.copy_batch(batch, &mut buf);
        }
    }

    /// Copies claimed extents, syncs the secondary once, and settles the claims.
    /// Only the chunks written since each region's last copy are moved.
    fn copy_batch(&self, batch: Batch, buf: &mut CopyBuf) {
        let states = self.record.states();
        let secondary = self.secondary();
        if self.secondary_gone.load(Ordering::Acquire) {
            // Writes to the old handle may still succeed (a deleted file), but
            // they reach nothing that will be read: nothing is copied.
            let gone = Error::io(
                format!("secondary {} is gone", secondary.describe()),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            );
            self.finish(batch, Err(gone));
            return;
        }
        let mut copied = 0u64;
        let mut result = Ok(());
        let mut taken: Vec<(u64, ChunkMask)> = Vec::new();
        'runs: for (run, _) in &batch {
            if self.stopping() {
                // Stopping: leave the rest dirty (and recorded) for the next start.
                for &(r, mask) in &taken {
                    states.restore_chunks(r, mask);
                }
                self.release(batch);
                return;
            }
            for (start, end) in self.dirty_extents(run, &mut taken) {
                result = self.copy(&secondary, start, end, buf).map(|n| copied += n);
                if result.is_err() {
                    break 'runs;
                }
            }
        }
        let result = result.and_then(|()| {
            secondary
                .sync()
                .map_err(|e| Error::io(format!("sync secondary {}", secondary.describe()), e))
        });
        if result.is_err() {
            for &(r, mask) in &taken {
                states.restore_chunks(r, mask);
            }
        }
        self.finish(batch, result.map(|()| copied));
    }

    /// Takes the written chunks of a claimed run (noting them in `taken`) and
    /// returns the byte extents to copy, adjacent chunks merged.
    fn dirty_extents(
        &self,
        run: &[(u64, CopyClaim)],
        taken: &mut Vec<(u64, ChunkMask)>,
    ) -> Vec<(u64, u64)> {
        let g = self.record.geometry();
        let shift = self.record.chunk_shift();
        let mut extents: Vec<(u64, u64)> = Vec::new();
        for &(r, _) in run {
            let mask = self.record.states().take_chunks(r);
            taken.push((r, mask));
            let region = g.region_bytes(r);
            let mut bits = mask;
            while bits != 0 {
                let i = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = region.start + (i << shift);
                let end = (start + (1 << shift)).min(region.end);
                if start >= end {
                    continue;
                }
                match extents.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => extents.push((start, end)),
                }
            }
        }
        extents
    }

    /// Copies bytes `start..end` from primary to secondary (not yet durable).
    fn copy(&self, secondary: &Dev, start: u64, end: u64, buf: &mut CopyBuf) -> Result<u64> {
        let len = (end - start) as usize;
        let buf = buf.get(len);
        if let Some(t) = &self.throttle {
            let wait = lock(t).take(len as u64);
            if !wait.is_zero() {
                // Interruptible: a stop does not wait out the bandwidth cap.
                let g = lock(&self.stop_lock);
                if !self.stopping() {
                    drop(self.stop_signal.wait_timeout(g, wait));
                }
            }
        }
        self.primary.read_at(&mut buf[..len], start).map_err(|e| {
            Error::io(
                format!("read primary {} at {start}", self.primary.describe()),
                e,
            )
        })?;
        secondary.write_at(&buf[..len], start, false).map_err(|e| {
            Error::io(
                format!("write secondary {} at {start}", secondary.describe()),
                e,
            )
        })?;
        Ok(len as u64)
    }

    /// Drops the claims of a batch that was not copied; its regions stay dirty.
    fn release(&self, batch: Batch) {
        let states = self.record.states();
        let mut q = lock(&self.queue);
        for (run, since) in &batch {
            for &(r, claim) in run {
                states.finish_copy(r, claim, false);
                q.entries.push_back(Entry {
                    region: r,
                    since: *since,
                    not_before: Instant::now(),
                });
            }
            if let Some(i) = q.copying.iter().position(|t| t == since) {
                q.copying.swap_remove(i);
            }
        }
    }

    fn finish(&self, batch: Batch, result: Result<u64>) {
        let states = self.record.states();
        let g = *self.record.geometry();
        let durable = result.is_ok();
        let mut requeue = Vec::new();
        let mut cleaned = Vec::new();
        for (run, since) in &batch {
            for &(r, claim) in run {
                if states.finish_copy(r, claim, durable) {
                    cleaned.push(r);
                } else {
                    requeue.push(Entry {
                        region: r,
                        since: if durable { Instant::now() } else { *since },
                        not_before: Instant::now(),
                    });
                }
            }
        }
        match result {
            Ok(n) => {
                self.counters.bytes_copied.fetch_add(n, Ordering::Relaxed);
                self.counters
                    .copies
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if self.degraded.swap(false, Ordering::AcqRel) {
                    log::info!(
                        "secondary {} is back; leaving degraded mode",
                        self.secondary().describe()
                    );
                }
                *lock(&self.backoff) = MIN_BACKOFF;
                *lock(&self.backoff_until) = None;
            }
            Err(e) => {
                self.counters.copy_errors.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    log::warn!("mirror copy failed, entering degraded mode: {e}");
                }
                *lock(&self.last_error) = Some(e.to_string());
                let mut backoff = lock(&self.backoff);
                *lock(&self.backoff_until) = Some(Instant::now() + *backoff);
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
            }
        }
        if !cleaned.is_empty() {
            let mut resync = lock(&self.resync);
            if !resync.is_empty() {
                let done: u64 = cleaned
                    .iter()
                    .filter(|r| resync.remove(r))
                    .map(|&r| {
                        let b = g.region_bytes(r);
                        b.end - b.start
                    })
                    .sum();
                self.counters.resync_done.fetch_add(done, Ordering::Relaxed);
            }
        }
        {
            let mut q = lock(&self.queue);
            for (_, since) in &batch {
                if let Some(i) = q.copying.iter().position(|t| t == since) {
                    q.copying.swap_remove(i);
                }
            }
            for e in requeue {
                // A region written during its copy is still dirty: copy it again.
                if states.is_dirty(e.region) {
                    q.entries.push_back(e);
                }
            }
        }
        self.wake.notify_all();
        if !cleaned.is_empty() {
            self.record.trim();
        }
    }

    /// Samples the host I/O every `SAMPLE_EVERY` while anything is dirty (to
    /// pace the copies), and writes lazy removals from the record: every
    /// `flush_interval`, or as soon as they pass an eighth of the capacity, so
    /// a crash resyncs little beyond the capacity.
    fn housekeep(&self) {
        let tick = self.config.flush_interval / 4;
        let pacing = !self.config.max_lag.is_zero();
        let threshold = (self.record.capacity_regions() / 8).max(1) as usize;
        let mut last_flush = Instant::now();
        let mut last_trim = Instant::now();
        let mut g = lock(&self.stop_lock);
        while !self.stopping() {
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
            if last_trim.elapsed() < tick {
                continue;
            }
            last_trim = Instant::now();
            self.watch_secondary();
            self.record.trim();
            let due = last_flush.elapsed() >= self.config.flush_interval;
            if (due && self.record.has_unflushed()) || self.record.pending_forget() >= threshold {
                last_flush = Instant::now();
                if let Err(e) = self.record.flush() {
                    log::warn!("lazy record flush failed (will retry): {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{BlockDev, Faults, MemDev};
    use crate::geometry::Geometry;
    use crate::predict::Lru;
    use crate::record::{Clock, NullStore};
    use std::sync::mpsc;

    const REGION: u64 = 64 << 10;

    struct Rig {
        record: Arc<Record>,
        primary: Arc<MemDev>,
        secondary: Arc<MemDev>,
        pool: MirrorPool,
        host_io: Arc<Gauge>,
    }

    fn config(max_copy_regions: u64) -> MirrorConfig {
        MirrorConfig {
            threads: 2,
            max_copy_bytes: max_copy_regions * REGION,
            max_rate: None,
            ..MirrorConfig::default()
        }
    }

    fn record(size: u64) -> Arc<Record> {
        record_with_capacity(size, 1 << 30)
    }

    fn record_with_capacity(size: u64, capacity: u64) -> Arc<Record> {
        let g = Geometry::new(size, REGION).unwrap();
        Arc::new(Record::new(
            g,
            capacity,
            Box::new(Lru::new()),
            Box::new(NullStore::default()),
            Clock::Manual(Arc::new(AtomicU64::new(0))),
        ))
    }

    /// Deterministic, non-zero bytes that differ with `seed`.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64 / 7 + seed * 31 + 1) % 251) as u8 + 1)
            .collect()
    }

    fn rig(size: u64, config: MirrorConfig, threaded: bool) -> Rig {
        rig_with_record(record(size), config, threaded)
    }

    fn rig_with_record(record: Arc<Record>, config: MirrorConfig, threaded: bool) -> Rig {
        let size = record.geometry().device_size();
        let host_io = Arc::new(Gauge::default());
        let primary = Arc::new(MemDev::new("primary-dev", size));
        let secondary = Arc::new(MemDev::new("secondary-dev", size));
        let build = if threaded {
            MirrorPool::start
        } else {
            MirrorPool::manual
        };
        let pool = match build(
            record.clone(),
            primary.clone(),
            secondary.clone(),
            config,
            host_io.clone(),
        ) {
            Ok(p) => p,
            Err(e) => panic!("pool does not start: {e}"),
        };
        Rig {
            record,
            primary,
            secondary,
            pool,
            host_io,
        }
    }

    impl Rig {
        fn shared(&self) -> &Shared {
            &self.pool.shared
        }

        /// Starts a host write: recorded first, then issued to the primary.
        /// The caller ends it with `end_write`.
        fn begin_write(&self, offset: u64, data: &[u8]) -> std::ops::Range<u64> {
            let regions = self.record.geometry().regions_of(offset, data.len() as u64);
            let mut misses = Vec::new();
            self.record.begin_write(regions.clone(), &mut misses);
            if !misses.is_empty() {
                self.record.admit(&misses).unwrap();
            }
            self.primary.write_at(data, offset, false).unwrap();
            regions
        }

        fn end_write(&self, regions: std::ops::Range<u64>) {
            let mut dirtied = Vec::new();
            self.record.end_write(regions, &mut dirtied);
            self.pool.enqueue(&dirtied);
        }

        fn write(&self, offset: u64, data: &[u8]) {
            let regions = self.begin_write(offset, data);
            self.end_write(regions);
        }

        /// Writes a whole region with a pattern of its own.
        fn write_region(&self, r: u64, seed: u64) {
            self.write(r * REGION, &pattern(seed, REGION as usize));
        }

        /// Pumps until nothing is ready; returns the number of batches.
        fn pump_all(&self) -> usize {
            let mut n = 0;
            while self.pool.pump() {
                n += 1;
                assert!(n < 1000, "the mirror does not converge");
            }
            n
        }

        fn dirty(&self) -> Vec<u64> {
            self.record.states().dirty_regions().collect()
        }

        /// The regions of each extent of the next batch.
        fn runs(batch: &Batch) -> Vec<Vec<u64>> {
            batch
                .iter()
                .map(|(run, _)| run.iter().map(|&(r, _)| r).collect())
                .collect()
        }
    }

    #[test]
    fn adjacent_dirty_regions_are_copied_as_one_extent() {
        let rig = rig(8 * REGION, config(8), false);
        for r in 1..7 {
            rig.write_region(r, r);
        }
        assert_eq!(rig.dirty(), (1..7).collect::<Vec<_>>());
        assert!(rig.pool.pump());
        let s = rig.pool.stats();
        assert_eq!(s.copies, 1, "six adjacent regions, one extent");
        assert_eq!(s.bytes_copied, 6 * REGION);
        assert_eq!(rig.secondary.op_counts(), (1, 1), "one write, one sync");
        assert!(rig.dirty().is_empty());
        assert!(
            !rig.pool.pump(),
            "nothing left: the other queue entries are dropped"
        );
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn coalescing_is_capped_at_max_copy_bytes() {
        let rig = rig(8 * REGION, config(3), false);
        for r in 0..8 {
            rig.write_region(r, r);
        }
        let batch = rig.shared().next_batch(false).expect("work is ready");
        assert_eq!(
            Rig::runs(&batch),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        rig.shared().copy_batch(batch, &mut CopyBuf::default());
        let s = rig.pool.stats();
        assert_eq!(s.copies, 3);
        assert_eq!(s.bytes_copied, 8 * REGION);
        assert_eq!(rig.secondary.op_counts(), (3, 1), "three writes, one sync");
        assert!(rig.dirty().is_empty());
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn gaps_split_extents_and_one_sync_covers_at_most_eight() {
        let rig = rig(32 * REGION, config(8), false);
        // Regions 0 and 1 adjacent, then ten isolated ones.
        rig.write_region(0, 1);
        rig.write_region(1, 2);
        for r in (4..24).step_by(2) {
            rig.write_region(r, r);
        }
        let batch = rig.shared().next_batch(false).unwrap();
        assert_eq!(batch.len(), EXTENTS_PER_SYNC);
        assert_eq!(Rig::runs(&batch)[0], vec![0, 1]);
        assert_eq!(Rig::runs(&batch)[1], vec![4]);
        rig.shared().copy_batch(batch, &mut CopyBuf::default());
        assert_eq!(rig.secondary.op_counts(), (8, 1));
        assert_eq!(rig.dirty(), vec![18, 20, 22]);
        assert!(rig.pool.pump());
        assert_eq!(rig.secondary.op_counts(), (11, 2));
        assert_eq!(rig.pool.stats().copies, 11);
        assert!(!rig.pool.pump());
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn a_failing_secondary_degrades_and_recovers_when_healed() {
        let rig = rig(8 * REGION, config(8), false);
        for r in [1, 2, 5] {
            rig.write_region(r, r + 10);
        }
        rig.secondary.set_faults(Faults {
            fail_after: Some(0),
            ..Faults::default()
        });
        assert!(rig.pool.pump(), "a batch was attempted");
        let s = rig.pool.stats();
        assert_eq!(s.copy_errors, 1);
        assert!(s.degraded);
        let err = s.last_error.expect("the error is kept");
        assert!(
            err.contains("secondary") && err.contains("secondary-dev"),
            "names the secondary: {err}"
        );
        assert_eq!(s.copies, 0);
        assert_eq!(s.bytes_copied, 0);
        assert_eq!(rig.dirty(), vec![1, 2, 5], "failed copies stay dirty");
        for r in [1, 2, 5] {
            assert!(rig.record.states().is_recorded(r));
        }
        // Still failing: retried (not dropped), errors keep counting.
        assert!(rig.pool.pump());
        assert_eq!(rig.pool.stats().copy_errors, 2);
        assert_eq!(rig.dirty(), vec![1, 2, 5]);
        assert_eq!(
            *lock(&rig.shared().backoff),
            MIN_BACKOFF * 4,
            "backoff doubles"
        );

        rig.secondary.set_faults(Faults::default());
        rig.pump_all();
        let s = rig.pool.stats();
        assert!(rig.dirty().is_empty());
        assert!(!s.degraded);
        assert_eq!(s.copy_errors, 2);
        assert_eq!(s.bytes_copied, 3 * REGION);
        assert_eq!(s.lag_seconds, 0.0);
        assert_eq!(*lock(&rig.shared().backoff), MIN_BACKOFF, "backoff reset");
        assert!(lock(&rig.shared().backoff_until).is_none());
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    /// A secondary whose path the test controls: what `check_path` says, and
    /// the device `reopen` finds there.
    struct Pathed {
        dev: Arc<MemDev>,
        path: Arc<Mutex<(PathCheck, Option<Arc<MemDev>>)>>,
    }

    impl BlockDev for Pathed {
        fn size(&self) -> u64 {
            self.dev.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.dev.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
            self.dev.write_at(buf, offset, fua)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.dev.sync()
        }
        fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.dev.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.dev.write_zeroes(offset, len)
        }
        fn supports_discard(&self) -> bool {
            true
        }
        fn describe(&self) -> String {
            "pathed-secondary".into()
        }
        fn check_path(&self) -> PathCheck {
            lock(&self.path).0.clone()
        }
        fn reopen(&self) -> Result<Dev> {
            let mut p = lock(&self.path);
            let dev =
                p.1.take()
                    .ok_or_else(|| Error::Config("nothing there".into()))?;
            p.0 = PathCheck::Same;
            Ok(Arc::new(Pathed {
                dev,
                path: self.path.clone(),
            }))
        }
    }

    #[test]
    fn a_secondary_that_vanishes_degrades_and_a_new_one_is_copied_whole() {
        let size = 8 * REGION;
        let record = record(size);
        let primary = Arc::new(MemDev::new("primary-dev", size));
        let first = Arc::new(MemDev::new("first", size));
        let path = Arc::new(Mutex::new((PathCheck::Same, None)));
        let pool = MirrorPool::manual(
            record.clone(),
            primary.clone(),
            Arc::new(Pathed {
                dev: first.clone(),
                path: path.clone(),
            }),
            config(8),
            Arc::new(Gauge::default()),
        )
        .unwrap();
        let rig = Rig {
            record,
            primary,
            secondary: first.clone(),
            pool,
            host_io: Arc::new(Gauge::default()),
        };
        for r in [1, 2] {
            rig.write_region(r, r);
        }
        rig.pump_all();
        assert!(rig.dirty().is_empty());
        // The path names nothing: writes to the old handle would still
        // succeed (a deleted file), but nothing is marked clean any more.
        lock(&path).0 = PathCheck::Gone("pathed-secondary is gone".into());
        rig.shared().watch_secondary();
        assert!(rig.pool.stats().degraded);
        rig.write_region(3, 3);
        assert!(rig.pool.pump(), "a copy was tried");
        assert_eq!(rig.dirty(), vec![3], "no copy while the secondary is gone");
        assert_ne!(first.contents(), rig.primary.contents(), "nothing written");
        assert!(rig
            .pool
            .stats()
            .last_error
            .is_some_and(|e| e.contains("gone")));
        // A copy claimed before the new device arrives cannot mark its region
        // clean: what it wrote went to the old device.
        let stale = rig.record.states().claim_copy(3).unwrap();
        // A smaller device there is refused.
        *lock(&path) = (
            PathCheck::Replaced,
            Some(Arc::new(MemDev::new("small", size - REGION))),
        );
        rig.shared().watch_secondary();
        assert!(rig.pool.stats().degraded, "a smaller secondary is refused");
        assert!(rig
            .pool
            .stats()
            .last_error
            .is_some_and(|e| e.contains("smaller")));
        // A new (blank) device: every region is recorded, dirty, copied.
        let second = Arc::new(MemDev::new("second", size));
        *lock(&path) = (PathCheck::Replaced, Some(second.clone()));
        rig.shared().watch_secondary();
        assert_eq!(rig.dirty().len(), 8, "all of it is copied again");
        assert!(!rig.record.states().finish_copy(3, stale, true));
        assert_eq!(rig.record.recorded_regions().len(), 8);
        assert_eq!(rig.pool.stats().resync_total_bytes, size);
        rig.pump_all();
        let s = rig.pool.stats();
        assert!(rig.dirty().is_empty());
        assert!(!s.degraded);
        assert_eq!(s.resync_done_bytes, size);
        assert_eq!(second.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn a_failed_secondary_sync_keeps_regions_dirty() {
        let rig = rig(4 * REGION, config(4), false);
        rig.write_region(2, 7);
        // The data write succeeds, the sync after it fails.
        rig.secondary.set_faults(Faults {
            fail_after: Some(1),
            ..Faults::default()
        });
        assert!(rig.pool.pump());
        let s = rig.pool.stats();
        assert_eq!(s.copy_errors, 1);
        assert!(s.degraded);
        assert!(s.last_error.unwrap().contains("sync secondary"));
        assert_eq!(
            rig.dirty(),
            vec![2],
            "not durable on the secondary, not clean"
        );
        assert_ne!(rig.secondary.durable_contents(), rig.primary.contents());
        rig.secondary.set_faults(Faults::default());
        rig.pump_all();
        assert!(rig.dirty().is_empty());
        assert!(!rig.pool.stats().degraded);
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn a_write_between_claim_and_finish_keeps_the_region_dirty() {
        let rig = rig(4 * REGION, config(4), false);
        let old = pattern(1, REGION as usize);
        let new = pattern(2, REGION as usize);
        rig.write(REGION, &old);
        // A worker's copy, step by step: claim, copy and sync...
        let batch = rig.shared().next_batch(false).unwrap();
        assert_eq!(Rig::runs(&batch), vec![vec![1]]);
        let n = rig
            .shared()
            .copy(
                &rig.shared().secondary(),
                REGION,
                2 * REGION,
                &mut CopyBuf::default(),
            )
            .unwrap();
        rig.secondary.sync().unwrap();
        // ...a host write lands after the copy read the primary...
        rig.write(REGION, &new);
        // ...and the claim is settled.
        rig.shared().finish(batch, Ok(n));
        assert_eq!(rig.dirty(), vec![1], "the copy missed a write: still dirty");
        assert_eq!(
            &rig.secondary.contents()[REGION as usize..2 * REGION as usize],
            &old[..]
        );
        // It was requeued and is copied again.
        assert!(rig.pool.pump());
        assert!(rig.dirty().is_empty());
        assert_eq!(
            &rig.secondary.durable_contents()[REGION as usize..2 * REGION as usize],
            &new[..]
        );
        assert_eq!(rig.pool.stats().copies, 2);
    }

    #[test]
    fn a_write_in_flight_at_finish_keeps_the_region_dirty_until_it_ends() {
        let rig = rig(4 * REGION, config(4), false);
        rig.write_region(0, 1);
        let batch = rig.shared().next_batch(false).unwrap();
        let newer = pattern(9, 4096);
        let inflight = rig.begin_write(0, &newer);
        rig.shared().copy_batch(batch, &mut CopyBuf::default());
        assert_eq!(rig.dirty(), vec![0]);
        assert!(!rig.pool.pump(), "busy: nothing can be claimed yet");
        rig.end_write(inflight);
        assert!(rig.pool.pump(), "retried once the write ended");
        assert!(rig.dirty().is_empty());
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn busy_regions_are_retried_not_dropped() {
        let rig = rig(4 * REGION, config(4), false);
        rig.write_region(0, 1);
        rig.write_region(1, 2);
        rig.write_region(2, 3);
        // A second write to region 1 is in flight: it is already dirty, so
        // ending this write queues nothing new.
        let inflight = rig.begin_write(REGION + 512, &pattern(4, 1024));
        let batch = rig.shared().next_batch(false).unwrap();
        assert_eq!(
            Rig::runs(&batch),
            vec![vec![0], vec![2]],
            "the run stops at the busy region"
        );
        rig.shared().copy_batch(batch, &mut CopyBuf::default());
        assert_eq!(rig.dirty(), vec![1]);
        for _ in 0..3 {
            assert!(!rig.pool.pump());
            let q = lock(&rig.shared().queue);
            assert!(
                q.delayed
                    .iter()
                    .chain(q.entries.iter())
                    .any(|e| e.region == 1),
                "the busy region stays queued"
            );
        }
        let mut dirtied = Vec::new();
        rig.record.end_write(inflight, &mut dirtied);
        assert!(dirtied.is_empty(), "already dirty: nothing new to queue");
        assert!(rig.pool.pump());
        assert!(rig.dirty().is_empty());
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(1)
    }

    #[test]
    fn throttle_token_bucket_math() {
        // `last` in the future: no time has passed (duration_since saturates).
        let frozen = || Instant::now() + Duration::from_secs(3600);
        let mut t = Throttle {
            rate: 1000,
            tokens: 0.0,
            last: frozen(),
        };
        // Empty bucket: 500 bytes at 1000 B/s is half a second.
        assert!(close(t.take(500), Duration::from_millis(500)));
        // The debt accumulates.
        t.last = frozen();
        assert!(close(t.take(500), Duration::from_millis(1000)));
        assert_eq!(t.tokens, -1000.0);
        // Two seconds (at least) refill 2000 tokens, capped at the burst:
        // a tenth of a second of rate plus the request.
        t.last = Instant::now() - Duration::from_secs(2);
        assert_eq!(t.take(100), Duration::ZERO);
        assert_eq!(t.tokens, 100.0, "capped at rate/10 + 100, minus 100");
        // A long idle time does not bank more than the burst.
        t.last = Instant::now() - Duration::from_secs(3600);
        assert_eq!(t.take(100), Duration::ZERO);
        assert_eq!(t.tokens, 100.0);
        t.last = frozen();
        assert!(close(t.take(300), Duration::from_millis(200)));
        // Exactly the tokens available: no wait.
        let mut t = Throttle {
            rate: 4096,
            tokens: 8192.0,
            last: frozen(),
        };
        assert_eq!(t.take(8192), Duration::ZERO);
        assert!(close(t.take(4096), Duration::from_secs(1)));
    }

    #[test]
    fn bad_configurations_are_refused_with_a_message() {
        let pool = |config: MirrorConfig, threaded: bool| {
            let size = 4 * REGION;
            let build = if threaded {
                MirrorPool::start
            } else {
                MirrorPool::manual
            };
            build(
                record(size),
                Arc::new(MemDev::new("p", size)),
                Arc::new(MemDev::new("s", size)),
                config,
                Arc::new(Gauge::default()),
            )
        };
        let config_error = |r: Result<MirrorPool>| match r {
            Err(Error::Config(msg)) => msg,
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        for threaded in [false, true] {
            let msg = config_error(pool(
                MirrorConfig {
                    max_rate: Some(0),
                    ..config(4)
                },
                threaded,
            ));
            assert!(msg.contains("rate 0"), "{msg}");
            assert!(msg.contains("never copy"), "{msg}");
            let msg = config_error(pool(
                MirrorConfig {
                    max_copy_bytes: REGION - 1,
                    ..config(4)
                },
                threaded,
            ));
            assert!(
                msg.contains(&(REGION - 1).to_string()) && msg.contains(&REGION.to_string()),
                "{msg}"
            );
        }
        let msg = config_error(pool(
            MirrorConfig {
                threads: 0,
                ..config(4)
            },
            true,
        ));
        assert!(msg.contains("threads"), "{msg}");
        // A rate cap that is not zero is accepted.
        assert!(pool(
            MirrorConfig {
                max_rate: Some(1),
                ..config(4)
            },
            false
        )
        .is_ok());
    }

    #[test]
    fn resync_counts_real_bytes_and_completes() {
        // Four regions, the last one 4 KiB.
        let size = 3 * REGION + 4096;
        let rig = rig(size, config(1), false);
        rig.primary
            .write_at(&pattern(5, size as usize), 0, true)
            .unwrap();
        let dirtied = rig.record.recover(0..4);
        assert_eq!(dirtied, vec![0, 1, 2, 3]);
        rig.pool.enqueue_resync(&dirtied);
        let s = rig.pool.stats();
        assert_eq!(s.resync_total_bytes, size);
        assert_eq!(s.resync_done_bytes, 0);
        // An ordinary write queued meanwhile is not resync.
        rig.write(REGION, &pattern(6, 4096));
        assert_eq!(rig.pool.stats().resync_total_bytes, size);

        // Region 0 is written during its copy: not done yet.
        let batch = rig.shared().next_batch(false).unwrap();
        assert_eq!(Rig::runs(&batch)[0], vec![0]);
        let n = rig
            .shared()
            .copy(
                &rig.shared().secondary(),
                0,
                REGION,
                &mut CopyBuf::default(),
            )
            .unwrap();
        rig.secondary.sync().unwrap();
        rig.write(0, &pattern(7, 4096));
        // Settle only region 0's extent: the rest of the batch is put back.
        let (first, rest): (Batch, Batch) = batch.into_iter().partition(|(run, _)| run[0].0 == 0);
        rig.shared().finish(first, Ok(n));
        rig.shared().finish(rest, Err(Error::Stopped));
        assert_eq!(rig.pool.stats().resync_done_bytes, 0);

        rig.pump_all();
        let s = rig.pool.stats();
        assert!(rig.dirty().is_empty());
        assert_eq!(s.resync_done_bytes, size, "partial last region by its size");
        assert_eq!(s.resync_total_bytes, size);
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
    }

    #[test]
    fn resync_of_the_partial_last_region_alone() {
        let size = 3 * REGION + 4096;
        let rig = rig(size, config(4), false);
        let dirtied = rig.record.recover([3]);
        rig.pool.enqueue_resync(&dirtied);
        assert_eq!(rig.pool.stats().resync_total_bytes, 4096);
        rig.pump_all();
        assert_eq!(rig.pool.stats().resync_done_bytes, 4096);
        assert_eq!(rig.pool.stats().bytes_copied, 4096);
    }

    /// Runs `pool.stop()` on another thread; returns how long it took, or
    /// `None` when it did not return within `limit`.
    fn stop_within(pool: MirrorPool, limit: Duration) -> Option<Duration> {
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        std::thread::spawn(move || {
            pool.stop();
            let _ = tx.send(start.elapsed());
            drop(pool);
        });
        rx.recv_timeout(limit).ok()
    }

    #[test]
    fn threaded_pool_copies_everything_and_stops_promptly() {
        let rig = rig(
            32 * REGION,
            MirrorConfig {
                threads: 3,
                ..config(4)
            },
            true,
        );
        // Writes of all sizes and offsets while the workers copy.
        for i in 0..300u64 {
            let len = 512 * (1 + (i * 13) % 300);
            let offset = (i * 37_123) % (32 * REGION - len);
            let len = len as usize;
            rig.write(offset, &pattern(i, len));
        }
        wait_clean(&rig, Duration::from_secs(5));
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
        let s = rig.pool.stats();
        assert!(s.copies > 0);
        assert_eq!(s.copy_errors, 0);
        assert!(!s.degraded);
        assert_eq!(s.lag_seconds, 0.0);
        let Rig { pool, .. } = rig;
        let took = stop_within(pool, Duration::from_secs(5)).expect("stop returns");
        assert!(took < Duration::from_secs(1), "stop took {took:?}");
    }

    #[test]
    fn threaded_pool_stops_promptly_while_degraded() {
        let rig = rig(8 * REGION, config(4), true);
        rig.secondary.set_faults(Faults {
            fail_after: Some(0),
            ..Faults::default()
        });
        for r in 0..8 {
            rig.write_region(r, r);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.pool.stats().copy_errors < 3 {
            assert!(Instant::now() < deadline, "no retries with backoff");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rig.pool.stats().degraded);
        assert_eq!(rig.dirty().len(), 8);
        let Rig {
            pool,
            record,
            secondary,
            ..
        } = rig;
        let took = stop_within(pool, Duration::from_secs(5)).expect("stop returns");
        // The backoff wait is cut short by stop (at most a few hundred ms here).
        assert!(took < Duration::from_secs(2), "stop took {took:?}");
        assert_eq!(record.states().dirty_count(), 8, "still dirty after stop");
        assert_eq!(secondary.op_counts(), (0, 0));
    }

    #[test]
    fn threaded_pool_stops_promptly_under_a_rate_cap() {
        // One region a second; eight isolated regions form one batch.
        let rig = rig(
            16 * REGION,
            MirrorConfig {
                threads: 1,
                max_rate: Some(REGION),
                ..config(1)
            },
            true,
        );
        // Written first and queued at once, so the worker claims them together.
        let mut dirtied = Vec::new();
        for r in (0..16).step_by(2) {
            let regions = rig.begin_write(r * REGION, &pattern(r, REGION as usize));
            rig.record.end_write(regions, &mut dirtied);
        }
        rig.pool.enqueue(&dirtied);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&rig.shared().queue).copying.len() < 8 {
            assert!(Instant::now() < deadline, "the worker does not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        let Rig { pool, .. } = rig;
        let took = stop_within(pool, Duration::from_secs(2));
        assert!(
            took.is_some(),
            "stop() did not return within 2 s: the worker sleeps for the \
             throttle once per extent of its batch before it looks at the stop flag"
        );
    }

    #[test]
    fn the_host_io_average_follows_the_samples() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.sample(t0, true), 1.0, "the first sample stands alone");
        // Idle for one time constant: the average falls to 1/e.
        let u = p.sample(t0 + BUSY_WINDOW, false);
        assert!((u - (-1.0f64).exp()).abs() < 1e-9, "{u}");
        // Busy every other sample, 1 ms apart: it settles near one half.
        let mut t = t0 + BUSY_WINDOW;
        for i in 0..2000 {
            t += Duration::from_millis(1);
            p.sample(t, i % 2 == 0);
        }
        assert!((p.current(t) - 0.5).abs() < 0.05, "{}", p.current(t));
        // A stale average reads as idle.
        assert_eq!(p.current(t + Duration::from_secs(2)), 0.0);
    }

    /// Mirror settings for the pacing tests: no coalescing delay, so only the
    /// pacing can hold a copy back.
    fn paced(max_lag: Duration) -> MirrorConfig {
        MirrorConfig {
            copy_delay: Duration::ZERO,
            max_lag,
            ..config(4)
        }
    }

    /// Waits until nothing is dirty; fails the test after `limit`.
    fn wait_clean(rig: &Rig, limit: Duration) {
        let t0 = Instant::now();
        while rig.record.states().dirty_count() > 0 {
            assert!(t0.elapsed() < limit, "not copied within {limit:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn heavy_host_io_holds_copies_back_up_to_the_maximum_lag() {
        let lag = Duration::from_millis(600);
        let rig = rig(16 * REGION, paced(lag), true);
        let busy = rig.host_io.enter();
        let t0 = Instant::now();
        rig.write(3 * REGION, &pattern(1, 4096));
        std::thread::sleep(Duration::from_millis(100));
        let s = rig.pool.stats();
        assert!(s.deferring, "copies are held back: {s:?}");
        assert!(
            s.host_busy > 0.9,
            "host I/O is in flight all the time: {s:?}"
        );
        wait_clean(&rig, Duration::from_secs(10));
        let took = t0.elapsed();
        assert!(
            took >= lag,
            "copied after {took:?}, before the maximum lag {lag:?}"
        );
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
        drop(busy);
    }

    #[test]
    fn copies_resume_as_soon_as_host_io_eases() {
        let rig = rig(16 * REGION, paced(Duration::from_secs(3600)), true);
        let busy = rig.host_io.enter();
        rig.write(5 * REGION, &pattern(2, 8192));
        rig.write(9 * REGION, &pattern(3, 8192));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rig.dirty(), vec![5, 9], "held back while host I/O is heavy");
        drop(busy);
        wait_clean(&rig, Duration::from_secs(10));
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
        assert!(!rig.pool.stats().deferring);
    }

    #[test]
    fn light_host_io_and_a_zero_maximum_lag_never_hold_copies_back() {
        // No host I/O in flight: copied at once though the maximum lag is long.
        let rig = rig(16 * REGION, paced(Duration::from_secs(3600)), true);
        rig.write(REGION, &pattern(4, 4096));
        wait_clean(&rig, Duration::from_secs(10));
        // Host I/O in flight, but a zero maximum lag: copied at once.
        let rig = rig_with_record(record(16 * REGION), paced(Duration::ZERO), true);
        let busy = rig.host_io.enter();
        rig.write(2 * REGION, &pattern(5, 4096));
        wait_clean(&rig, Duration::from_secs(10));
        assert!(!rig.pool.stats().deferring);
        drop(busy);
    }

    #[test]
    fn a_backlog_of_half_the_capacity_is_copied_despite_heavy_host_io() {
        // Capacity 4 regions: 2 dirty regions are half of it.
        let rig = rig_with_record(
            record_with_capacity(16 * REGION, 4 * REGION),
            paced(Duration::from_secs(3600)),
            true,
        );
        let busy = rig.host_io.enter();
        rig.write(0, &pattern(6, 4096));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rig.dirty(), vec![0], "one dirty region is held back");
        rig.write(8 * REGION, &pattern(7, 4096));
        wait_clean(&rig, Duration::from_secs(10));
        assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());
        drop(busy);
    }
}
