//! The mirror pool: threads that copy dirty regions from primary to secondary.
//!
//! Regions are queued when they turn dirty. A worker claims a run of adjacent
//! dirty regions (up to `max_copy_bytes`), reads it from the primary, writes it
//! to the secondary, makes it durable there, and only then marks the regions
//! clean, which succeeds only if no write started since the claim. A failed
//! copy leaves the regions dirty, puts the pool in degraded mode and retries
//! with backoff; host I/O never sees a secondary failure.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::record::{ClaimRefused, CopyClaim, Record, RegionView};

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
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            threads: 2,
            max_copy_bytes: 4 << 20,
            max_rate: None,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// First retry delay after a secondary failure; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Delay before retrying a region that had writes in flight.
const BUSY_RETRY: Duration = Duration::from_millis(1);
/// Extents one worker copies before one sync of the secondary.
const EXTENTS_PER_SYNC: usize = 8;

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

struct Shared {
    record: Arc<Record>,
    primary: Dev,
    secondary: Dev,
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
    /// Starts `config.threads` workers and a housekeeping thread.
    pub fn start(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
    ) -> Result<Self> {
        if config.threads == 0 {
            return Err(Error::Config("mirror threads must be at least 1".into()));
        }
        Self::build(record, primary, secondary, config, true)
    }

    /// A pool without threads: the owner copies by calling `pump`. For
    /// deterministic tests and single-threaded tools.
    pub fn manual(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
    ) -> Result<Self> {
        Self::build(record, primary, secondary, config, false)
    }

    fn build(
        record: Arc<Record>,
        primary: Dev,
        secondary: Dev,
        config: MirrorConfig,
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
            secondary,
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
                self.shared.copy_batch(batch, &mut Vec::new());
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
        let size = self.shared.record.geometry();
        let bytes: u64 = regions
            .iter()
            .map(|&r| {
                let b = size.region_bytes(r);
                b.end - b.start
            })
            .sum();
        lock(&self.shared.resync).extend(regions.iter().copied());
        self.shared
            .counters
            .resync_total
            .fetch_add(bytes, Ordering::Relaxed);
        self.shared.enqueue(regions);
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
        }
    }

    /// Stops the workers after their current copy. Regions queued later stay
    /// dirty (and recorded) until a new pool copies them.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
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
        for &region in regions {
            q.entries.push_back(Entry {
                region,
                since: now,
                not_before: now,
            });
        }
        drop(q);
        self.wake.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
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
            while batch.len() < EXTENTS_PER_SYNC {
                let Some(e) = q.entries.pop_front() else {
                    break;
                };
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
            let wait = q.delayed.front().map_or(Duration::from_millis(200), |e| {
                e.not_before.saturating_duration_since(now)
            });
            q = self
                .wake
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn work(&self) {
        let mut buf = Vec::new();
        while let Some(batch) = self.next_batch(true) {
            self.copy_batch(batch, &mut buf);
        }
    }

    /// Copies claimed extents, syncs the secondary once, and settles the claims.
    fn copy_batch(&self, batch: Batch, buf: &mut Vec<u8>) {
        let g = *self.record.geometry();
        let mut copied = 0u64;
        let mut result = Ok(());
        for (run, _) in &batch {
            let start = g.region_bytes(run[0].0).start;
            let end = g.region_bytes(run[run.len() - 1].0).end;
            result = self.copy(start, end, buf).map(|n| copied += n);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| {
            self.secondary
                .sync()
                .map_err(|e| Error::io(format!("sync secondary {}", self.secondary.describe()), e))
        });
        self.finish(batch, result.map(|()| copied));
    }

    /// Copies bytes `start..end` from primary to secondary (not yet durable).
    fn copy(&self, start: u64, end: u64, buf: &mut Vec<u8>) -> Result<u64> {
        let len = (end - start) as usize;
        buf.resize(len, 0);
        if let Some(t) = &self.throttle {
            let wait = lock(t).take(len as u64);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        self.primary.read_at(&mut buf[..len], start).map_err(|e| {
            Error::io(
                format!("read primary {} at {start}", self.primary.describe()),
                e,
            )
        })?;
        self.secondary
            .write_at(&buf[..len], start, false)
            .map_err(|e| {
                Error::io(
                    format!("write secondary {} at {start}", self.secondary.describe()),
                    e,
                )
            })?;
        Ok(len as u64)
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
                        self.secondary.describe()
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

    /// Writes lazy removals from the record: every `flush_interval`, or as
    /// soon as they pass an eighth of the capacity, so a crash resyncs little
    /// beyond the capacity.
    fn housekeep(&self) {
        let tick = self.config.flush_interval / 4;
        let threshold = (self.record.capacity_regions() / 8).max(1) as usize;
        let mut last_flush = Instant::now();
        let mut g = lock(&self.stop_lock);
        while !self.stopping() {
            g = self
                .stop_signal
                .wait_timeout(g, tick)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if self.stopping() {
                break;
            }
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
