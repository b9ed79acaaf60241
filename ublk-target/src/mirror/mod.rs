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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dev::Dev;
use crate::error::{Error, Failure, Result};
use crate::record::Record;
use crate::stats::Gauge;

pub mod buffer;
mod copy;
mod health;
mod pace;
mod queue;
#[cfg(test)]
mod tests;

pub use buffer::{WriteBuffer, DEFAULT_COPY_BUFFER};
use copy::CopyBuf;
use health::MIN_BACKOFF;
use pace::{Pacer, Throttle};
use queue::Queue;

/// How the pool copies.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Worker threads.
    pub threads: usize,
    /// Largest extent one copy moves, in bytes.
    pub max_copy_bytes: u64,
    /// Copy bandwidth cap in bytes per second; `None` copies as fast as it can.
    pub max_rate: Option<u64>,
    /// How long a newly dirty region waits before its first copy, so further
    /// writes to it are copied together (write-behind coalescing).
    pub copy_delay: Duration,
    /// Under heavy host I/O, how long a dirty region may wait for its copy;
    /// zero copies at once whatever the load.
    pub max_lag: Duration,
    /// Bytes of recent writes' data kept for their copies
    /// (`--copy-buffer`); 0 reads every copy back from the primary.
    pub copy_buffer: u64,
}

/// Mirror threads at least, for a remote secondary (`BlockDev::remote`).
pub const REMOTE_THREADS: usize = 16;
/// Mirror threads, by default.
pub const DEFAULT_THREADS: usize = 2;
/// The largest extent one copy moves, by default.
pub const DEFAULT_MAX_COPY_BYTES: u64 = 4 << 20;

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            threads: DEFAULT_THREADS,
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
            max_rate: None,
            copy_delay: Duration::from_millis(50),
            max_lag: DEFAULT_MAX_LAG,
            copy_buffer: DEFAULT_COPY_BUFFER,
        }
    }
}

/// How long copies may wait under heavy host I/O, by default.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);

/// Counters the pool keeps.
#[derive(Debug, Default)]
struct Counters {
    bytes_copied: AtomicU64,
    copies: AtomicU64,
    copy_errors: AtomicU64,
    resync_total: AtomicU64,
    resync_done: AtomicU64,
    /// Bytes copies read back from the primary.
    read_back: AtomicU64,
    /// Bytes copies sent from the write-data buffer.
    from_buffer: AtomicU64,
}

/// Dual-active: what the other node says about copying a region.
pub trait CopyGate: Send + Sync {
    /// Whether the other node's record may list `r` (its copy needs a grant).
    fn theirs(&self, r: u64) -> bool;
    /// Asks to copy `r`: its write sequence there, or `None` (busy).
    fn begin(&self, r: u64) -> crate::error::Result<Option<u64>>;
    /// Ends the grant; whether no write started on `r` there since.
    fn end(&self, r: u64, seq: u64, landed: bool) -> crate::error::Result<bool>;
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
    /// Wakes the pacer thread at stop (apart from `wake`, which every
    /// enqueue signals).
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    degraded: AtomicBool,
    last_error: Mutex<Option<Failure>>,
    backoff_until: Mutex<Option<Instant>>,
    backoff: Mutex<Duration>,
    /// The copy bandwidth cap (`--max-copy-rate`), changed at run time by
    /// `set_max_rate`.
    throttle: Mutex<Option<Throttle>>,
    /// How long copies may wait for heavy host I/O (`--max-lag`), in
    /// nanoseconds; changed at run time by `set_max_lag`.
    max_lag_ns: AtomicU64,
    /// Mirroring paused on request (`tandemctl pause`): nothing is copied,
    /// and what is written stays dirty and recorded.
    paused: AtomicBool,
    /// Regions that recovery found in the record and that are not copied yet.
    resync: Mutex<HashSet<u64>>,
    counters: Counters,
    /// Host I/O in flight, raised by the engine around every request.
    host_io: Arc<Gauge>,
    pacer: Mutex<Pacer>,
    /// Whether copies are being held back for heavy host I/O right now.
    deferring: AtomicBool,
    /// With `--max-dirty`, the bound in regions: copies are not deferred
    /// for host I/O once the backlog reaches half of it.
    max_dirty_regions: AtomicU64,
    /// The device's lease: a copy marks nothing clean unless it is valid
    /// (another node may be copying instead).
    fence: std::sync::OnceLock<Arc<crate::lease::Lease>>,
    /// Dual-active: the other node's grants for the regions its record
    /// lists.
    gate: std::sync::OnceLock<Arc<dyn CopyGate>>,
    /// Recent writes' data, which copies send instead of reading it back.
    buffer: Arc<WriteBuffer>,
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
    /// The last copy error, with its errno.
    pub last_error: Option<Failure>,
    pub resync_total_bytes: u64,
    pub resync_done_bytes: u64,
    /// Share of recent time with host I/O in flight (0 to 1).
    pub host_busy: f64,
    /// Copies are held back (up to the maximum lag) for heavy host I/O.
    pub deferring: bool,
    /// Mirroring is paused on request.
    pub paused: bool,
    /// The copy bandwidth cap in effect, bytes per second.
    pub max_copy_rate: Option<u64>,
    /// The maximum lag in effect.
    pub max_lag_seconds: f64,
    /// Bytes copies read back from the primary, and bytes they sent from
    /// the write-data buffer instead (together `bytes_copied`).
    pub read_back_bytes: u64,
    pub from_buffer_bytes: u64,
    /// The write-data buffer: bytes held now, and its budget (0: off).
    pub copy_buffer_bytes: u64,
    pub copy_buffer_budget: u64,
}

/// The pool of mirror threads of one device.
pub struct MirrorPool {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The token bucket of a copy bandwidth cap; 0 is refused.
fn throttle_for(rate: Option<u64>) -> Result<Option<Throttle>> {
    match rate {
        Some(0) => Err(Error::Config(
            "max copy rate 0 would never copy; omit it for no cap".into(),
        )),
        Some(rate) => Ok(Some(Throttle {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        })),
        None => Ok(None),
    }
}

impl Shared {
    fn max_lag(&self) -> Duration {
        Duration::from_nanos(self.max_lag_ns.load(Ordering::Relaxed))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MirrorPool {
    /// Starts `config.threads` workers and a pacer thread. `host_io`
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
        // A remote secondary: each worker waits a round trip per extent
        // and per flush, so more of them keep the link busy.
        let mut config = config;
        if secondary.remote() {
            config.threads = config.threads.max(REMOTE_THREADS);
        }
        let throttle = Mutex::new(throttle_for(config.max_rate)?);
        let missing = secondary.missing();
        let chunk = 1u32 << record.chunk_shift();
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
            // A secondary missing at start: degraded from the first moment,
            // and the watch reopens its path until it is there.
            degraded: AtomicBool::new(missing.is_some()),
            last_error: Mutex::new(missing.map(|message| Failure {
                message,
                errno: -libc::ENODEV,
            })),
            backoff_until: Mutex::new(None),
            backoff: Mutex::new(MIN_BACKOFF),
            throttle,
            max_lag_ns: AtomicU64::new(config.max_lag.as_nanos() as u64),
            paused: AtomicBool::new(false),
            resync: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            host_io,
            pacer: Mutex::new(Pacer::default()),
            deferring: AtomicBool::new(false),
            max_dirty_regions: AtomicU64::new(u64::MAX),
            fence: std::sync::OnceLock::new(),
            gate: std::sync::OnceLock::new(),
            buffer: Arc::new(WriteBuffer::new(config.copy_buffer).with_chunk(chunk)),
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
                .name("tandem-pacer".into())
                .spawn(move || s.pace_and_watch())
                .map_err(|e| Error::io("start the pacer thread", e))?,
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

    /// Queues regions that were dirty already (a copy held back, as by the
    /// other node's grant): a region still queued keeps its place and the
    /// time its lag counts from.
    pub fn requeue(&self, regions: &[u64]) {
        self.shared.requeue(regions);
    }

    /// Copies only under `lease`: a copy that ends while the lease is not
    /// valid fails, and its regions stay dirty.
    pub fn fence_with(&self, lease: Arc<crate::lease::Lease>) {
        let _ = self.shared.fence.set(lease);
    }

    /// Dual-active: copies regions that the other node's record lists only
    /// under its grant (`gate`).
    pub fn gate_with(&self, gate: Arc<dyn CopyGate>) {
        // The other node writes the shared primary too, and its writes are
        // not in this node's buffer: every copy reads the primary.
        self.shared.buffer.switch_off();
        let _ = self.shared.gate.set(gate);
    }

    /// The write-data buffer, which writes keep their data in.
    pub fn buffer(&self) -> &WriteBuffer {
        &self.shared.buffer
    }

    /// Regions marked clean by another node's copy (dual-active, under
    /// this node's grant): counted as resynced if they were to be.
    pub fn note_cleaned(&self, regions: &[u64]) {
        self.shared.count_resynced(regions);
    }

    /// Queues regions found in the record at start-up and counts them as resync.
    pub fn enqueue_resync(&self, regions: &[u64]) {
        self.shared.enqueue_resync(regions);
    }

    /// Changes the copy bandwidth cap (`None`: no cap) while running.
    pub fn set_max_rate(&self, rate: Option<u64>) -> Result<()> {
        *lock(&self.shared.throttle) = throttle_for(rate)?;
        Ok(())
    }

    /// Changes how long copies may wait for heavy host I/O while running.
    pub fn set_max_lag(&self, lag: Duration) {
        let s = &self.shared;
        s.max_lag_ns.store(lag.as_nanos() as u64, Ordering::Relaxed);
        let _q = lock(&s.queue);
        s.wake.notify_all();
    }

    /// The bound on the backlog (`--max-dirty`), in regions: past half of
    /// it copies no longer wait for host I/O to ease.
    pub fn set_max_dirty_regions(&self, regions: u64) {
        self.shared
            .max_dirty_regions
            .store(regions.max(1), Ordering::Relaxed);
    }

    /// Whether copies can go on now: the secondary works and mirroring is
    /// not paused.
    pub fn is_working(&self) -> bool {
        !self.shared.degraded.load(Ordering::Acquire) && !self.shared.paused.load(Ordering::Acquire)
    }

    /// `is_working` as a closure another thread may keep.
    pub fn working(&self) -> impl Fn() -> bool + Send + 'static {
        let s = self.shared.clone();
        move || !s.degraded.load(Ordering::Acquire) && !s.paused.load(Ordering::Acquire)
    }

    /// Pauses or resumes mirroring: while paused, nothing is copied.
    pub fn set_paused(&self, paused: bool) {
        let s = &self.shared;
        if s.paused.swap(paused, Ordering::AcqRel) != paused {
            log::info!("mirroring {}", if paused { "paused" } else { "resumed" });
        }
        let _q = lock(&s.queue);
        s.wake.notify_all();
    }

    /// The secondary copies go to now (it may have been reopened since the
    /// start).
    pub fn secondary(&self) -> Dev {
        self.shared.secondary()
    }

    pub fn stats(&self) -> MirrorStats {
        let s = &self.shared;
        let now = Instant::now();
        let lag = lock(&s.queue)
            .oldest(s.record.states())
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
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
            paused: s.paused.load(Ordering::Relaxed),
            max_copy_rate: lock(&s.throttle).as_ref().map(|t| t.rate),
            max_lag_seconds: s.max_lag().as_secs_f64(),
            read_back_bytes: s.counters.read_back.load(Ordering::Relaxed),
            from_buffer_bytes: s.counters.from_buffer.load(Ordering::Relaxed),
            copy_buffer_bytes: if s.buffer.is_on() { s.buffer.held() } else { 0 },
            copy_buffer_budget: if s.buffer.is_on() {
                s.buffer.budget()
            } else {
                0
            },
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
    /// Queues regions that turned dirty now.
    pub(super) fn enqueue(&self, regions: &[u64]) {
        self.queue_regions(regions, Queue::push);
    }

    /// Queues regions that were dirty already: those queued keep their
    /// place and their time.
    pub(super) fn requeue(&self, regions: &[u64]) {
        self.queue_regions(regions, Queue::requeue);
    }

    fn queue_regions(&self, regions: &[u64], queue: fn(&mut Queue, u64, Instant)) {
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
            queue(&mut q, region, now);
        }
        drop(q);
        if was_empty {
            self.wake.notify_all();
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Queues regions that must be copied in full and counts them as resync.
    pub(super) fn enqueue_resync(&self, regions: &[u64]) {
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
        self.requeue(regions);
    }

    /// Counts the regions of `cleaned` that were to be resynced as done.
    pub(super) fn count_resynced(&self, cleaned: &[u64]) {
        if cleaned.is_empty() {
            return;
        }
        let g = self.record.geometry();
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

    fn work(&self) {
        let mut buf = CopyBuf::default();
        while let Some(batch) = self.next_batch(true) {
            self.copy_batch(batch, &mut buf);
        }
    }
}
