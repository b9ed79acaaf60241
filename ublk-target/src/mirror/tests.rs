//! Tests of the mirror pool.

use super::copy::CopyBuf;
use super::pace::BUSY_WINDOW;
use super::queue::{Batch, Entry, EXTENTS_PER_SYNC};
use super::*;
use crate::dev::PathCheck;
use crate::dev::{BlockDev, Faults, MemDev};
use crate::error::Error;
use crate::geometry::Geometry;
use crate::predict::Lru;
use crate::record::{NullStore, RegionStates};
use crate::region::Clock;
use crate::region::RegionView;
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
        err.message.contains("secondary") && err.message.contains("secondary-dev"),
        "names the secondary: {err}"
    );
    assert_eq!(err.errno, -libc::EIO, "the device's errno is kept");
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
        .is_some_and(|e| e.message.contains("gone") && e.errno == -libc::ENODEV));
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
        .is_some_and(|e| e.message.contains("smaller")));
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
    assert!(s.last_error.unwrap().message.contains("sync secondary"));
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
            &[],
        )
        .unwrap();
    rig.secondary.sync().unwrap();
    // ...a host write lands after the copy read the primary...
    rig.write(REGION, &new);
    // ...and the claim is settled.
    rig.shared().finish(batch, Ok(n), &[], Instant::now());
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
            &[],
        )
        .unwrap();
    rig.secondary.sync().unwrap();
    rig.write(0, &pattern(7, 4096));
    // Settle only region 0's extent: the rest of the batch is put back.
    let (first, rest): (Batch, Batch) = batch.into_iter().partition(|(run, _)| run[0].0 == 0);
    rig.shared().finish(first, Ok(n), &[], Instant::now());
    rig.shared()
        .finish(rest, Err(Error::Stopped), &[], Instant::now());
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

#[test]
fn a_paused_mirror_copies_nothing_until_resumed_and_settings_change_while_running() {
    let rig = rig(8 * REGION, config(8), false);
    rig.pool.set_paused(true);
    rig.write_region(2, 7);
    assert!(!rig.pool.pump(), "nothing is copied while paused");
    assert_eq!(rig.dirty(), vec![2]);
    assert!(rig.record.states().is_recorded(2), "the record keeps it");
    assert!(rig.pool.stats().paused);
    rig.pool.set_paused(false);
    rig.pump_all();
    assert!(rig.dirty().is_empty());
    assert_eq!(rig.secondary.durable_contents(), rig.primary.contents());

    assert_eq!(rig.pool.stats().max_copy_rate, None);
    rig.pool.set_max_rate(Some(10 << 20)).unwrap();
    assert_eq!(rig.pool.stats().max_copy_rate, Some(10 << 20));
    let e = rig.pool.set_max_rate(Some(0)).unwrap_err().to_string();
    assert!(e.contains("rate 0"), "{e}");
    rig.pool.set_max_rate(None).unwrap();
    assert_eq!(rig.pool.stats().max_copy_rate, None);
    rig.pool.set_max_lag(Duration::from_millis(250));
    assert_eq!(rig.pool.stats().max_lag_seconds, 0.25);
}

#[test]
fn an_entry_put_back_keeps_its_place_in_queue_time() {
    // A retried region queued long ago goes before younger ones: behind
    // them, while copies wait for the lag, it would wait a round more.
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let entry = |region: u64, ms: u64| Entry {
        region,
        since: at(ms),
        not_before: at(ms),
    };
    let mut q = Queue::default();
    for (r, ms) in [(1, 0), (2, 10), (3, 20)] {
        q.entries.push_back(entry(r, ms));
    }
    q.put_back(entry(9, 5));
    q.put_back(entry(8, 30));
    q.put_back(entry(7, 0));
    let order: Vec<u64> = q.entries.iter().map(|e| e.region).collect();
    assert_eq!(order, vec![1, 7, 9, 2, 3, 8]);
    // Held back, in the order of the time each may go again (a busy retry
    // after 1 ms before a refused grant's 50 ms): the workers look only at
    // the front.
    q.delay(entry(4, 50));
    q.delay(entry(5, 1));
    q.delay(entry(6, 30));
    let held: Vec<u64> = q.delayed.iter().map(|e| e.region).collect();
    assert_eq!(held, vec![5, 6, 4]);
}

#[test]
fn an_entry_overtaken_by_a_copy_ahead_of_its_turn_is_stale() {
    // Region 3 is queued, copied ahead of its turn (from the write-data
    // buffer), written again and queued anew: its first entry counts for
    // nothing, and is dropped when it reaches the head.
    let states = RegionStates::new(8);
    let dirty = |r: u64| {
        states.begin_write(r);
        assert!(states.end_write(r));
    };
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let mut q = Queue::default();
    dirty(3);
    q.push(3, at(0));
    dirty(5);
    q.push(5, at(10));
    let claim = states.claim_copy(3).unwrap();
    assert!(states.finish_copy(3, claim, true));
    assert_eq!(q.oldest(&states), Some(at(10)), "a clean region has no lag");
    dirty(3);
    q.push(3, at(20));
    assert_eq!(q.oldest(&states), Some(at(10)));
    // A thousand rounds of the same: the lag still counts from region 5.
    for i in 0..1000 {
        let claim = states.claim_copy(3).unwrap();
        assert!(states.finish_copy(3, claim, true));
        dirty(3);
        q.push(3, at(30 + i));
        assert_eq!(q.oldest(&states), Some(at(10)));
    }
    let head = q.head(&states).unwrap();
    assert_eq!((head.region, head.since), (5, at(10)));
    let e = q.pop_front().unwrap();
    assert_eq!(e.region, 5);
    let head = q.head(&states).unwrap();
    assert_eq!((head.region, head.since), (3, at(1029)));
    assert_eq!(q.len(), 1, "the stale entries were dropped at the head");
}

#[test]
fn a_region_queued_again_while_dirty_keeps_its_place_and_time() {
    // The other node's grant ended with region 3 still dirty: it is queued
    // again, but its entry from the write at 0 ms stands (queued anew, it
    // would lose 20 ms of lag and its place, each time a grant ends).
    let states = RegionStates::new(8);
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let mut q = Queue::default();
    states.begin_write(3);
    assert!(states.end_write(3));
    q.push(3, at(0));
    q.requeue(3, at(20));
    q.requeue(5, at(20));
    assert_eq!(q.oldest(&states), Some(at(0)));
    assert_eq!(q.len(), 2);
    // An entry put back younger than the region's live one adds nothing.
    q.put_back(Entry {
        region: 3,
        since: at(30),
        not_before: at(30),
    });
    q.delay(Entry {
        region: 3,
        since: at(40),
        not_before: at(41),
    });
    assert_eq!(q.len(), 2);
    let head = q.head(&states).unwrap();
    assert_eq!((head.region, head.since), (3, at(0)));
}

#[test]
fn a_write_during_a_slow_copy_counts_its_lag_from_the_claim() {
    // The secondary's sync takes 300 ms (a slow link); a write lands during
    // the copy. The region stays dirty, and the write the secondary lacks
    // began after the claim: the lag counts from there, not from the end
    // of the copy.
    let rig = rig(4 * REGION, config(4), false);
    rig.write_region(1, 1);
    rig.secondary.hold_syncs(true);
    std::thread::scope(|s| {
        let pump = s.spawn(|| rig.pool.pump());
        while rig.secondary.syncs_held() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        rig.write_region(1, 2);
        std::thread::sleep(Duration::from_millis(300));
        rig.secondary.hold_syncs(false);
        assert!(pump.join().unwrap());
    });
    assert_eq!(rig.dirty(), vec![1]);
    let lag = rig.pool.stats().lag_seconds;
    assert!(lag >= 0.3, "the lag ({lag} s) counts from the claim");
    rig.pump_all();
    assert!(rig.dirty().is_empty());
}

#[test]
fn a_failed_copy_from_the_buffer_puts_its_region_back_at_its_queue_time() {
    // Region 3 is queued at its first write and its data then held by the
    // buffer. The buffer-first copy claims it; meanwhile a worker reaches
    // its queue entry and drops it as claimed. The copy fails: the region
    // goes back with the time of that entry, not of the claim.
    let rig = rig(
        8 * REGION,
        MirrorConfig {
            copy_buffer: 2 * REGION,
            ..config(8)
        },
        false,
    );
    rig.write_region(3, 1);
    let states = rig.record.states();
    let data = pattern(2, REGION as usize);
    let (_, began) = states.begin_write_seq(3);
    rig.primary.write_at(&data, 3 * REGION, false).unwrap();
    rig.pool
        .buffer()
        .keep(states, 3, 0..REGION as u32, began, Some(&data));
    rig.end_write(3..4);
    assert!(rig.pool.buffer().half_full());
    std::thread::sleep(Duration::from_millis(100));
    let from_buffer = rig.shared().next_batch(false).unwrap();
    assert_eq!(Rig::runs(&from_buffer), vec![vec![3]]);
    assert!(
        rig.shared().next_batch(false).is_none(),
        "the entry dropped as claimed"
    );
    rig.secondary.set_faults(Faults {
        fail_after: Some(0),
        ..Faults::default()
    });
    rig.shared()
        .copy_batch(from_buffer, &mut CopyBuf::default());
    assert_eq!(rig.dirty(), vec![3]);
    let lag = rig.pool.stats().lag_seconds;
    assert!(lag >= 0.1, "the lag ({lag} s) counts from the first write");
}
