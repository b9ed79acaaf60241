//! Tests of the engine.

use super::*;
use crate::dev::{BlockDev, Faults, MemDev};
use crate::mirror::MirrorConfig;
use crate::predict;
use crate::record::{LoadOutcome, RegionFile};
use crate::region::RegionView;
use crate::status::State;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const REGION: u64 = 64 << 10;
const REGIONS: u64 = 16;
const SIZE: u64 = REGION * REGIONS;

fn identity() -> u64 {
    pair_identity("primary", "secondary")
}

/// Deterministic, non-zero bytes that differ with `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 / 5 + seed * 17 + 3) % 253) as u8 + 1)
        .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        region_size: REGION,
        capacity: 4 * REGION,
        policy: "lru".into(),
        assume_clean: true,
        ..EngineConfig::default()
    }
}

struct Rig {
    primary: Arc<MemDev>,
    secondary: Arc<MemDev>,
    record: Arc<MemDev>,
    /// What the engine sees as its primary (`primary`, or a wrapper).
    primary_dev: Dev,
    config: EngineConfig,
    identity: u64,
}

fn record_dev(device_size: u64) -> Arc<MemDev> {
    let g = Geometry::new(device_size, REGION).unwrap();
    Arc::new(MemDev::new("record", RegionFile::file_size(&g)))
}

fn rig_with(primary: MemDev, secondary: MemDev) -> Rig {
    let record = record_dev(primary.size());
    let primary = Arc::new(primary);
    Rig {
        primary_dev: primary.clone(),
        primary,
        secondary: Arc::new(secondary),
        record,
        config: config(),
        identity: identity(),
    }
}

fn rig() -> Rig {
    rig_with(MemDev::new("primary", SIZE), MemDev::new("secondary", SIZE))
}

impl Rig {
    fn devices(&self, new: bool) -> Devices {
        Devices {
            primary: self.primary_dev.clone(),
            secondary: self.secondary.clone(),
            record: self.record.clone(),
            record_is_new: new,
            shared_disks: Vec::new(),
            identity: self.identity,
            lease: None,
        }
    }

    fn try_open(&self, new: bool) -> Result<Engine> {
        Engine::open_manual(self.devices(new), &self.config)
    }

    fn open(&self, new: bool) -> Engine {
        self.try_open(new)
            .unwrap_or_else(|e| panic!("engine does not open: {e}"))
    }

    fn open_threaded(&self, new: bool) -> Engine {
        Engine::open(self.devices(new), &self.config)
            .unwrap_or_else(|e| panic!("engine does not open: {e}"))
    }

    fn open_err(&self, new: bool) -> Error {
        match self.try_open(new) {
            Ok(_) => panic!("the engine opened"),
            Err(e) => e,
        }
    }

    /// Replaces the record device by one holding `bytes`.
    fn set_record(&mut self, bytes: Vec<u8>) {
        self.record = Arc::new(MemDev::from_bytes("record", bytes));
    }

    /// The regions the record device holds durably now.
    fn durable_record(&self) -> Vec<u64> {
        durable_regions(&self.record, self.primary.size(), self.identity)
    }

    fn in_sync(&self) -> bool {
        let p = self.primary.contents();
        self.secondary.durable_contents()[..p.len()] == p[..]
    }
}

fn durable_regions(record: &MemDev, device_size: u64, identity: u64) -> Vec<u64> {
    let g = Geometry::new(device_size, REGION).unwrap();
    let copy = Arc::new(MemDev::from_bytes("copy", record.durable_contents()));
    match RegionFile::open(copy, &g, identity) {
        Ok((_, LoadOutcome::Loaded(r))) => r,
        Ok((_, LoadOutcome::Corrupt(why))) => panic!("durable record is corrupt: {why}"),
        Err(e) => panic!("durable record unreadable: {e}"),
    }
}

fn pump_all(e: &Engine) -> usize {
    let mut n = 0;
    while e.pump_mirror() {
        n += 1;
        assert!(n < 1000, "the mirror does not converge");
    }
    n
}

fn dirty(e: &Engine) -> Vec<u64> {
    e.record().states().dirty_regions().collect()
}

fn config_message(e: Error) -> String {
    match e {
        Error::Config(msg) => msg,
        other => panic!("not a configuration error: {other}"),
    }
}

#[test]
fn a_secondary_smaller_than_the_primary_is_refused_naming_both_sizes() {
    let rig = rig_with(
        MemDev::new("primary", SIZE),
        MemDev::new("secondary", SIZE - 4096),
    );
    let msg = config_message(rig.open_err(true));
    assert!(msg.contains(&SIZE.to_string()), "{msg}");
    assert!(msg.contains(&(SIZE - 4096).to_string()), "{msg}");
    assert!(
        msg.contains("secondary") && msg.contains("primary"),
        "{msg}"
    );
    assert_eq!(rig.record.op_counts(), (0, 0), "nothing created");
    // A larger secondary is fine.
    let rig = rig_with(
        MemDev::new("primary", SIZE),
        MemDev::new("secondary", SIZE + REGION),
    );
    rig.open(true);
}

#[test]
fn an_empty_primary_and_bad_settings_are_refused_before_any_io() {
    let rig = rig_with(MemDev::new("primary", 0), MemDev::new("secondary", SIZE));
    let msg = config_message(rig.open_err(true));
    assert!(msg.contains("empty"), "{msg}");
    let mut rig = self::rig();
    for (bad, what) in [
        (
            EngineConfig {
                policy: "fifo".into(),
                ..config()
            },
            "fifo",
        ),
        (
            EngineConfig {
                capacity: REGION - 1,
                ..config()
            },
            "capacity",
        ),
        (
            EngineConfig {
                region_size: 3 * REGION,
                ..config()
            },
            "power of two",
        ),
        (
            EngineConfig {
                mirror: MirrorConfig {
                    max_rate: Some(0),
                    ..MirrorConfig::default()
                },
                ..config()
            },
            "rate 0",
        ),
        (
            EngineConfig {
                mirror: MirrorConfig {
                    threads: 0,
                    ..MirrorConfig::default()
                },
                ..config()
            },
            "threads",
        ),
    ] {
        rig.config = bad;
        let msg = config_message(rig.open_err(true));
        assert!(msg.contains(what), "{what}: {msg}");
    }
    assert_eq!(rig.record.op_counts(), (0, 0));
    assert_eq!(rig.primary.op_counts(), (0, 0));
}

#[test]
fn a_record_device_too_small_is_refused() {
    let mut rig = rig();
    rig.record = Arc::new(MemDev::new("record", 4096));
    let msg = config_message(rig.open_err(true));
    assert!(msg.contains("record"), "{msg}");
}

#[test]
fn discard_and_write_zeroes_dirty_regions_and_the_mirror_follows() {
    let data = pattern(1, SIZE as usize);
    let rig = rig_with(
        MemDev::from_bytes("primary", data.clone()),
        MemDev::from_bytes("secondary", data.clone()),
    );
    let e = rig.open(true);
    assert!(dirty(&e).is_empty(), "assume_clean: nothing to copy");
    e.discard(2 * REGION, REGION).unwrap();
    e.write_zeroes(5 * REGION + 4096, 8192).unwrap();
    assert_eq!(dirty(&e), vec![2, 5]);
    assert_eq!(e.status().dirty_bytes, 2 * REGION);
    assert_eq!(e.status().writes, 2);
    assert_eq!(rig.durable_record(), vec![2, 5], "recorded like writes");
    pump_all(&e);
    assert!(dirty(&e).is_empty());
    let s = rig.secondary.durable_contents();
    let (r2, r5) = ((2 * REGION) as usize, (5 * REGION) as usize);
    assert!(s[r2..r2 + REGION as usize].iter().all(|&b| b == 0));
    assert!(s[r5 + 4096..r5 + 4096 + 8192].iter().all(|&b| b == 0));
    assert_eq!(&s[r5..r5 + 4096], &data[r5..r5 + 4096], "only the range");
    assert_eq!(&s[..r2], &data[..r2]);
    assert!(rig.in_sync());
}

#[test]
fn out_of_range_requests_are_einval_and_touch_nothing() {
    let rig = rig();
    let e = rig.open(true);
    let check = |r: Result<()>, offset: u64, len: u64| match r {
        Err(err @ Error::OutOfRange { .. }) => {
            assert_eq!(err.errno(), -libc::EINVAL);
            let Error::OutOfRange {
                offset: o,
                len: l,
                size,
            } = err
            else {
                unreachable!()
            };
            assert_eq!((o, l, size), (offset, len, SIZE));
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    };
    let buf = vec![7u8; 4096];
    for offset in [SIZE - 2048, SIZE, u64::MAX - 100] {
        check(e.write(&buf, offset, false), offset, 4096);
        check(e.write(&buf, offset, true), offset, 4096);
        check(e.read(&mut vec![0; 4096], offset), offset, 4096);
        check(e.discard(offset, 4096), offset, 4096);
        check(e.write_zeroes(offset, 4096), offset, 4096);
    }
    check(e.discard(0, SIZE + 1), 0, SIZE + 1);
    // The last byte is in range.
    e.write(&[9], SIZE - 1, false).unwrap();
    let mut last = [0u8];
    e.read(&mut last, SIZE - 1).unwrap();
    assert_eq!(last, [9]);
    let s = e.status();
    assert_eq!(s.writes, 1, "rejected requests are not counted");
    assert_eq!(s.record_updates, 1);
    assert_eq!(e.record().recorded_regions(), vec![REGIONS - 1]);
    assert_eq!(rig.primary.op_counts(), (1, 0));
}

#[test]
fn primary_io_errors_map_to_negative_errnos() {
    let rig = rig();
    let e = rig.open(true);
    e.write(&pattern(1, 8192), REGION, false).unwrap();
    pump_all(&e);
    rig.primary.set_faults(Faults {
        fail_after: Some(0),
        torn_bytes: Some(1000),
        fail_reads: false,
        errno: None,
    });
    let err = e.write(&pattern(2, 8192), 3 * REGION, false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(err.errno(), -libc::EIO);
    assert!(err.to_string().contains("primary"), "{err}");
    // The write may have landed partly: the region is dirty all the same,
    // so the mirror copies whatever the primary holds.
    assert_eq!(dirty(&e), vec![3]);
    assert!(rig.durable_record().contains(&3));
    assert_eq!(e.flush().unwrap_err().errno(), -libc::EIO);
    assert_eq!(e.discard(0, 4096).unwrap_err().errno(), -libc::EIO);
    assert_eq!(e.write_zeroes(0, 4096).unwrap_err().errno(), -libc::EIO);
    rig.primary.set_faults(Faults {
        fail_reads: true,
        ..Faults::default()
    });
    let err = e.read(&mut vec![0; 4096], 0).unwrap_err();
    assert_eq!(err.errno(), -libc::EIO);
    assert!(
        err.to_string()
            .contains("read of 4096 bytes at 0 on the primary"),
        "{err}"
    );
    // The mirror cannot read the primary either: degraded, still dirty.
    assert!(e.pump_mirror());
    let s = e.status();
    assert!(s.degraded);
    assert_eq!(s.state, State::Degraded);
    assert!(s.last_error.unwrap().contains("read primary"));
    assert_eq!(dirty(&e), vec![0, 3]);
    rig.primary.set_faults(Faults::default());
    pump_all(&e);
    assert!(dirty(&e).is_empty());
    assert_eq!(
        &rig.primary.contents()[3 * REGION as usize..][..1000],
        &pattern(2, 1000)[..]
    );
    assert!(rig.in_sync());
    assert_eq!(e.status().state, State::Live);
}

/// Plans a write that must wait for the record, and hands it to the
/// committer; `done` receives `tag` when its outcome is ready.
fn submit_pending<'e>(
    e: &'e Engine,
    offset: u64,
    tag: u64,
    done: &std::sync::mpsc::Sender<u64>,
) -> IoTicket<'e> {
    match e.plan(Request::write(offset, 4096, false)) {
        Plan::Pending(p) => {
            let done = done.clone();
            p.submit(Box::new(move || done.send(tag).unwrap()))
        }
        _ => panic!("a write at {offset} did not need the record"),
    }
}

/// A ticket's request once admitted, or its error.
fn finish(ticket: IoTicket<'_>) -> Result<Io<'_>> {
    match ticket.finish() {
        Plan::Ready(io) => Ok(io),
        Plan::Done(outcome) => Err(outcome.expect_err("an admission that is done failed")),
        Plan::Pending(_) => panic!("a finished ticket is pending again"),
    }
}

#[test]
fn writes_that_miss_are_admitted_off_thread_and_share_updates() {
    let rig = rig();
    let e = rig.open(true);
    let (tx, rx) = std::sync::mpsc::channel();
    let updates = e.status().record_updates;
    // Catch the committer in the middle of the first update...
    rig.record.hold_syncs(true);
    let first = submit_pending(&e, 2 * REGION, 2, &tx);
    let t0 = Instant::now();
    while rig.record.syncs_held() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the committer never synced"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // ...while the caller goes on. Region 2 is not durable yet, so another
    // write to it waits too; more misses queue behind the update.
    assert!(
        matches!(
            e.plan(Request::write(2 * REGION + 8192, 4096, false)),
            Plan::Pending(_)
        ),
        "region 2 is not durable yet"
    );
    let rest: Vec<IoTicket<'_>> = (3..9)
        .map(|r| submit_pending(&e, r * REGION, r, &tx))
        .collect();
    assert!(
        rx.try_recv().is_err(),
        "nothing is durable while the sync is held"
    );
    rig.record.hold_syncs(false);
    let mut woken: Vec<u64> = (0..7)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("woken"))
        .collect();
    woken.sort_unstable();
    assert_eq!(woken, (2..9).collect::<Vec<_>>(), "each woken once");
    for (i, ticket) in std::iter::once(first).chain(rest).enumerate() {
        let offset = (i as u64 + 2) * REGION;
        let io = finish(ticket).unwrap();
        let res = io.run(Data::From(&pattern(i as u64, 4096)));
        assert_eq!(io.complete(res).unwrap(), 4096, "region at {offset}");
    }
    let states = e.record().states();
    for r in 2..9 {
        assert!(states.is_recorded(r) && states.is_dirty(r), "region {r}");
        assert_eq!(states.inflight(r), 0, "region {r}");
    }
    // The six misses queued during the first update shared the next one.
    assert_eq!(e.status().record_updates, updates + 2);
    pump_all(&e);
    assert!(rig.in_sync());
}

#[test]
fn a_failed_or_abandoned_off_thread_admission_releases_its_regions() {
    let rig = rig();
    let e = rig.open(true);
    let (tx, rx) = std::sync::mpsc::channel();
    rig.record.set_faults(Faults {
        fail_after: Some(0),
        errno: Some(libc::ENOSPC),
        ..Faults::default()
    });
    let mut failed = submit_pending(&e, 5 * REGION, 5, &tx);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(5));
    // A caller that polls instead of waiting sees the answer too.
    assert!(failed.is_ready());
    let err = finish(failed).err().expect("the update failed");
    assert!(matches!(err, Error::RecordUpdate(_)), "{err}");
    // The errno crosses the committer thread as it was.
    assert_eq!(err.errno(), -libc::ENOSPC);
    // Dropped before it was finished (a queue going down): released too.
    drop(submit_pending(&e, 6 * REGION, 6, &tx));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(6));
    // A pending write dropped before it was submitted.
    let dropped = e.plan(Request::write(7 * REGION, 4096, false));
    assert!(matches!(dropped, Plan::Pending(_)));
    drop(dropped);
    let states = e.record().states();
    for r in 5..8 {
        assert_eq!(states.inflight(r), 0, "region {r} released");
        assert!(!states.is_dirty(r), "region {r} never written");
    }
    // After a stop, admissions fail at once instead of waiting.
    rig.record.set_faults(Faults::default());
    e.shutdown().unwrap();
    let late = submit_pending(&e, 9 * REGION, 9, &tx);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(9));
    let err = finish(late).err().expect("refused after the stop");
    assert!(err.to_string().contains("stopping"), "{err}");
    assert_eq!(states.inflight(9), 0);
}

#[test]
fn a_failing_record_fails_only_writes_that_need_an_update() {
    let rig = rig();
    let e = rig.open(true);
    e.write(&pattern(1, 4096), 0, false).unwrap();
    let before = rig.primary.contents();
    let updates = e.status().record_updates;
    rig.record.set_faults(Faults {
        fail_after: Some(0),
        errno: Some(libc::ENOSPC),
        ..Faults::default()
    });
    assert_eq!(e.status().state, State::Live);
    // A recorded region: no metadata, the write succeeds.
    e.write(&pattern(2, 4096), 4096, false).unwrap();
    let after_hit = rig.primary.contents();
    assert_eq!(&after_hit[4096..8192], &pattern(2, 4096)[..]);
    // An unrecorded region: the host is told, the primary untouched.
    let err = e.write(&pattern(3, 4096), 7 * REGION, false).unwrap_err();
    assert!(matches!(err, Error::RecordUpdate(_)), "{err}");
    // The store's errno reaches the host as it was.
    assert_eq!(err.errno(), -libc::ENOSPC);
    assert!(err.to_string().contains("record"), "{err}");
    let s = e.status();
    assert_eq!(s.state, State::RecordFailed);
    assert_eq!(s.record_errno, Some(libc::ENOSPC));
    assert!(s.record_error.is_some_and(|m| m.contains("No space")));
    // A write spanning a recorded and an unrecorded region fails whole.
    let err = e.write(&pattern(4, 8192), REGION - 4096, true).unwrap_err();
    assert_eq!(err.errno(), -libc::ENOSPC);
    assert!(e.discard(9 * REGION, 4096).is_err());
    assert!(e.write_zeroes(10 * REGION, 4096).is_err());
    assert_eq!(rig.primary.contents(), after_hit, "nothing issued");
    assert_ne!(before, after_hit);
    let states = e.record().states();
    for r in [0, 1, 7, 9, 10] {
        assert_eq!(states.inflight(r), 0, "region {r} released");
    }
    for r in [1, 7, 9, 10] {
        assert!(!states.is_recorded(r) && !states.is_dirty(r), "region {r}");
    }
    assert_eq!(e.status().record_updates, updates);
    // The record heals: the same write now goes through, durably recorded.
    rig.record.set_faults(Faults::default());
    e.write(&pattern(3, 4096), 7 * REGION, false).unwrap();
    assert_eq!(e.status().state, State::Live);
    assert_eq!(e.status().record_error, None);
    assert!(rig.durable_record().contains(&7));
    assert!(states.is_recorded(7));
    pump_all(&e);
    assert!(rig.in_sync());
}

#[test]
fn reopening_an_existing_record_resyncs_its_regions() {
    let rig = rig();
    let e = rig.open(true);
    for (i, r) in [1u64, 4, 9].into_iter().enumerate() {
        e.write(&pattern(i as u64, 8192), r * REGION + 4096, false)
            .unwrap();
    }
    // Region 12 is written and mirrored: clean, but still recorded.
    e.write(&pattern(7, 4096), 12 * REGION, false).unwrap();
    assert!(e.pump_mirror());
    // The others were copied too: write them again, so they are dirty.
    for (i, r) in [1u64, 4, 9].into_iter().enumerate() {
        e.write(&pattern(i as u64 + 20, 4096), r * REGION, false)
            .unwrap();
    }
    assert_eq!(dirty(&e), vec![1, 4, 9]);
    let recorded = rig.durable_record();
    drop(e); // the daemon dies
    rig.primary.crash(|_| true);
    rig.secondary.crash(|_| false);
    let e = rig.open(false);
    let s = e.status();
    assert_eq!(s.start, StartKind::Recovered);
    assert_eq!(recorded, vec![1, 4, 9, 12]);
    assert_eq!(s.resync_total_bytes, recorded.len() as u64 * REGION);
    assert_eq!(s.resync_done_bytes, 0);
    assert_eq!(s.state, State::Resyncing);
    assert_eq!(s.dirty_bytes, 4 * REGION);
    pump_all(&e);
    let s = e.status();
    assert_eq!(s.state, State::Live);
    assert_eq!(s.resync_done_bytes, s.resync_total_bytes);
    assert_eq!(s.dirty_bytes, 0);
    assert!(rig.in_sync());
}

fn expect_full_resync(rig: &Rig) {
    let e = rig.open(false);
    let s = e.status();
    let StartKind::Corrupt { reason } = &s.start else {
        panic!("not detected as corrupt: {:?}", s.start);
    };
    assert!(!reason.is_empty());
    assert_eq!(s.resync_total_bytes, rig.primary.size());
    assert_eq!(s.dirty_bytes, SIZE);
    assert_eq!(s.state, State::Resyncing, "never clean");
    assert_eq!(
        rig.durable_record(),
        (0..REGIONS).collect::<Vec<_>>(),
        "the new record lists every region"
    );
    pump_all(&e);
    let s = e.status();
    assert_eq!(s.state, State::Live);
    assert_eq!(s.resync_done_bytes, SIZE);
    assert!(rig.in_sync());
    // The recreated record is valid: a clean stop leaves nothing to resync.
    e.shutdown().unwrap();
    drop(e);
    let e = rig.open(false);
    assert_eq!(e.status().start, StartKind::Recovered);
    assert_eq!(e.status().resync_total_bytes, 0);
}

/// A device with some data on both sides that differ outside the record
/// only where a corrupt record would hide it.
fn rig_with_history() -> Rig {
    let rig = rig_with(
        MemDev::from_bytes("primary", pattern(3, SIZE as usize)),
        MemDev::new("secondary", SIZE),
    );
    let e = rig.open(true); // assume_clean: trusts the (false) claim
    e.write(&pattern(4, 4096), 0, false).unwrap();
    drop(e);
    rig
}

#[test]
fn a_corrupt_record_header_means_a_full_resync() {
    let mut rig = rig_with_history();
    let mut bytes = rig.record.durable_contents();
    bytes[0] ^= 0xff;
    bytes[4096] ^= 0xff;
    rig.set_record(bytes);
    expect_full_resync(&rig);
}

#[test]
fn corrupt_record_pages_mean_a_full_resync() {
    let mut rig = rig_with_history();
    let mut bytes = rig.record.durable_contents();
    // One page: both slots, both copies of each, damaged in the bitmap.
    for slot in [8192, 12288] {
        for copy in [0, 2048] {
            bytes[slot + copy + 100] ^= 0x10;
        }
    }
    rig.set_record(bytes);
    expect_full_resync(&rig);
}

#[test]
fn a_blank_or_foreign_record_means_a_full_resync() {
    let mut rig = rig_with_history();
    let good = rig.record.durable_contents();
    rig.set_record(vec![0; good.len()]);
    expect_full_resync(&rig);
    let mut rig = rig_with_history();
    rig.identity = pair_identity("primary", "another secondary");
    expect_full_resync(&rig);
    // A truncated record too.
    let mut rig = rig_with_history();
    let bytes = rig.record.durable_contents();
    rig.set_record(bytes[..bytes.len() - 4096].to_vec());
    let e = rig.try_open(false);
    // Too small to recreate: refused, never started as clean.
    assert!(e.is_err());
}

#[test]
fn a_new_record_without_assume_clean_copies_the_whole_primary() {
    // Seventeen regions, the last one 4 KiB; a larger secondary.
    let size = SIZE + 4096;
    let data = pattern(8, size as usize);
    let mut rig = rig_with(
        MemDev::from_bytes("primary", data.clone()),
        MemDev::new("secondary", size + REGION),
    );
    rig.config.assume_clean = false;
    let e = rig.open(true);
    let s = e.status();
    assert_eq!(s.start, StartKind::Created);
    assert_eq!(s.resync_total_bytes, size);
    assert_eq!(s.state, State::Resyncing);
    assert_eq!(
        durable_regions(&rig.record, size, rig.identity),
        (0..=REGIONS).collect::<Vec<_>>(),
        "a crash during the first copy restarts it"
    );
    pump_all(&e);
    let s = e.status();
    assert_eq!(s.resync_done_bytes, size);
    assert_eq!(s.bytes_copied, size);
    assert_eq!(s.copy_read_back_bytes, size, "a resync reads the primary");
    assert_eq!(s.copy_from_buffer_bytes, 0);
    assert_eq!(s.state, State::Live);
    assert_eq!(
        &rig.secondary.durable_contents()[..size as usize],
        &data[..]
    );
}

#[test]
fn assume_clean_copies_nothing() {
    let rig = rig_with(
        MemDev::from_bytes("primary", pattern(8, SIZE as usize)),
        MemDev::new("secondary", SIZE),
    );
    let e = rig.open(true);
    let s = e.status();
    assert_eq!(s.start, StartKind::Created);
    assert_eq!(s.resync_total_bytes, 0);
    assert_eq!(s.state, State::Live);
    assert!(!e.pump_mirror());
    assert!(rig.durable_record().is_empty());
}

#[test]
fn a_clean_shutdown_after_mirroring_resyncs_nothing() {
    let rig = rig();
    let e = rig.open(true);
    for r in 0..REGIONS {
        e.write(&pattern(r, 4096), r * REGION + 512, false).unwrap();
    }
    pump_all(&e);
    assert!(!rig.durable_record().is_empty(), "the record trails");
    e.shutdown().unwrap();
    assert!(rig.durable_record().is_empty());
    assert_eq!(rig.primary.unsynced_writes(), 0, "primary flushed");
    drop(e);
    let e = rig.open(false);
    let s = e.status();
    assert_eq!(s.start, StartKind::Recovered);
    assert_eq!(s.resync_total_bytes, 0);
    assert_eq!(s.state, State::Live);
    assert!(!e.pump_mirror());
}

#[test]
fn a_shutdown_with_a_failing_secondary_resyncs_the_dirty_regions() {
    let rig = rig();
    let e = rig.open(true);
    e.write(&pattern(1, 4096), 3 * REGION, false).unwrap();
    pump_all(&e);
    rig.secondary.set_faults(Faults {
        fail_after: Some(0),
        ..Faults::default()
    });
    e.write(&pattern(2, 4096), 2 * REGION, false).unwrap();
    e.write(&pattern(3, 4096), 7 * REGION, false).unwrap();
    for _ in 0..3 {
        assert!(e.pump_mirror());
    }
    assert_eq!(e.status().state, State::Degraded);
    e.shutdown().unwrap();
    assert_eq!(rig.durable_record(), vec![2, 7], "clean region 3 forgotten");
    drop(e);
    rig.secondary.set_faults(Faults::default());
    let e = rig.open(false);
    let s = e.status();
    assert_eq!(s.start, StartKind::Recovered);
    assert_eq!(s.resync_total_bytes, 2 * REGION);
    assert!(
        !s.degraded,
        "a new start is not degraded until a copy fails"
    );
    pump_all(&e);
    assert_eq!(e.status().resync_done_bytes, 2 * REGION);
    assert!(rig.in_sync());
}

#[test]
fn status_counters_are_consistent() {
    let rig = rig();
    let e = rig.open(true);
    let s = e.status();
    assert_eq!((s.writes, s.record_updates), (0, 0));
    assert_eq!(s.updates_per_1000_writes, 0.0);
    e.write(&[1; 4096], 0, false).unwrap(); // miss
    e.write(&[2; 4096], 4096, false).unwrap(); // hit
    e.write(&[3; 4096], 8192, true).unwrap(); // hit
    e.write(&[4; 4096], REGION, false).unwrap(); // miss
    e.write(&[5; 4096], REGION + 4096, false).unwrap(); // hit
    e.write(&[6; 4096], REGION - 2048, false).unwrap(); // two hits
    let s = e.status();
    assert_eq!(s.writes, 6);
    assert_eq!(s.bytes_written, 6 * 4096);
    assert_eq!(s.record_updates, 2);
    assert_eq!(s.record_pages_written, 2);
    assert_eq!(s.updates_per_1000_writes, 2.0 * 1000.0 / 6.0);
    assert_eq!(s.record_regions, 2);
    assert_eq!(s.record_bytes, 2 * REGION);
    assert_eq!(s.dirty_bytes, 2 * REGION);
    assert_eq!(s.device_size, SIZE);
    assert_eq!(s.region_size, REGION);
    assert_eq!(s.capacity_bytes, 4 * REGION);
    assert_eq!(s.policy, "lru");
    assert_eq!(s.state, State::Live);
    assert_eq!(s.start, StartKind::Created);
    assert_eq!(s.bytes_copied, 0);
    pump_all(&e);
    let s = e.status();
    assert_eq!(s.dirty_bytes, 0);
    // Only the written 4 KiB chunks move: region 0 chunks 0, 1, 2 and 15
    // (the straddling write), region 1 chunks 0 and 1.
    assert_eq!(s.bytes_copied, 6 * 4096);
    // Each write's own data went, but for region 0's chunk 15: the buffer
    // holds only the straddling write's half of it, so the chunk is read
    // back from the primary.
    assert_eq!(s.copy_from_buffer_bytes, 5 * 4096);
    assert_eq!(s.copy_read_back_bytes, 4096);
    assert_eq!(
        s.copy_buffer_bytes, 0,
        "the buffer is empty once all is clean"
    );
    assert!(s.copy_buffer_budget > 0);
    assert_eq!(s.copy_errors, 0);
    assert_eq!(s.lag_seconds, 0.0);
    assert!(!s.degraded);
    assert_eq!(s.last_error, None);
    assert_eq!(s.record_regions, 2, "clean regions stay within capacity");
    assert_eq!(s.writes, 6);
}

#[test]
fn the_hit_path_touches_no_metadata() {
    for policy in predict::POLICIES {
        let mut rig = rig();
        rig.config.policy = policy.to_string();
        let e = rig.open(true);
        e.write(&[1; 4096], 3 * REGION, false).unwrap();
        let updates = e.status().record_updates;
        assert_eq!(updates, 1, "{policy}");
        let ops = rig.record.op_counts();
        for i in 0..50u64 {
            e.write(&[i as u8; 4096], 3 * REGION + (i % 16) * 4096, i % 3 == 0)
                .unwrap();
        }
        e.flush().unwrap();
        pump_all(&e);
        // Recorded and clean: still a hit.
        for i in 0..10u64 {
            e.write(&[i as u8; 512], 3 * REGION + i * 512, false)
                .unwrap();
        }
        let s = e.status();
        assert_eq!(s.record_updates, updates, "{policy}");
        assert_eq!(rig.record.op_counts(), ops, "{policy}: no record I/O");
        assert_eq!(s.writes, 61);
    }
}

/// A primary that checks, for every write, that the regions it touches
/// are in the durable record (write-ahead).
struct WriteAheadCheck {
    inner: Arc<MemDev>,
    record: Mutex<Option<Arc<MemDev>>>,
    identity: u64,
    checked: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl WriteAheadCheck {
    fn check(&self, offset: u64, len: u64) {
        let Some(record) = self.record.lock().unwrap().clone() else {
            return;
        };
        let g = Geometry::new(self.inner.size(), REGION).unwrap();
        let durable = durable_regions(&record, self.inner.size(), self.identity);
        for r in g.regions_of(offset, len) {
            if !durable.contains(&r) {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("write at {offset}+{len}: region {r} not durable"));
            }
        }
        self.checked.fetch_add(1, Ordering::Relaxed);
    }
}

impl BlockDev for WriteAheadCheck {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.check(offset, buf.len() as u64);
        self.inner.write_at(buf, offset, fua)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(offset, len);
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.check(offset, len);
        self.inner.write_zeroes(offset, len)
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn every_write_is_durably_recorded_before_it_reaches_the_primary() {
    for policy in predict::POLICIES {
        let mut rig = rig();
        rig.config.policy = policy.to_string();
        let check = Arc::new(WriteAheadCheck {
            inner: rig.primary.clone(),
            record: Mutex::new(Some(rig.record.clone())),
            identity: rig.identity,
            checked: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
        });
        rig.primary_dev = check.clone();
        let e = rig.open(true);
        for i in 0..400u64 {
            let r = (i * 7 + i / 5) % REGIONS;
            let offset = r * REGION + (i % 8) * 4096;
            match i % 10 {
                0 => e.discard(offset, 8192).unwrap(),
                1 => e.write_zeroes(offset, 4096).unwrap(),
                // Crosses into the next region (but not past the end).
                2 if r + 1 < REGIONS => e
                    .write(&pattern(i, REGION as usize), offset + 512, false)
                    .unwrap(),
                _ => e.write(&pattern(i, 4096), offset, i % 4 == 0).unwrap(),
            }
            if i % 3 == 0 {
                e.pump_mirror();
            }
            if i % 17 == 0 {
                // Lazy forgetting of evicted regions.
                e.record().evict();
                e.record().destage().unwrap();
            }
        }
        assert_eq!(check.checked.load(Ordering::Relaxed), 400, "{policy}");
        let v = check.violations.lock().unwrap();
        assert!(v.is_empty(), "{policy}: {v:?}");
        pump_all(&e);
        assert!(rig.in_sync(), "{policy}");
        assert!(
            e.status().record_updates > 1,
            "{policy}: evictions made misses"
        );
    }
}

#[test]
fn fua_writes_and_flushes_are_durable_on_the_primary() {
    let rig = rig();
    let e = rig.open(true);
    e.write(&[5; 4096], 0, true).unwrap();
    assert_eq!(&rig.primary.durable_contents()[..4096], &[5; 4096][..]);
    e.write(&[6; 4096], 4096, false).unwrap();
    assert_eq!(&rig.primary.durable_contents()[4096..8192], &[0; 4096][..]);
    e.flush().unwrap();
    assert_eq!(&rig.primary.durable_contents()[4096..8192], &[6; 4096][..]);
    let mut buf = vec![0; 8192];
    e.read(&mut buf, 0).unwrap();
    assert_eq!(&buf[..4096], &[5; 4096][..]);
    assert_eq!(&buf[4096..], &[6; 4096][..]);
}

#[test]
fn the_threaded_engine_syncs_and_reports_it() {
    let rig = rig();
    let e = rig.open_threaded(true);
    for i in 0..200u64 {
        let offset = (i * 40_961) % (SIZE - 8192);
        e.write(&pattern(i, 8192), offset, i % 5 == 0).unwrap();
    }
    assert!(
        e.wait_synced(Duration::from_secs(5)),
        "mirror did not catch up"
    );
    let s = e.status();
    assert_eq!(s.dirty_bytes, 0);
    assert_eq!(s.state, State::Live);
    assert_eq!(s.writes, 200);
    assert!(rig.in_sync());
    e.shutdown().unwrap();
    assert!(rig.durable_record().is_empty());
}

#[test]
fn host_requests_in_being_hold_mirror_copies_back() {
    let mut rig = rig();
    rig.config.capacity = SIZE;
    rig.config.mirror.max_lag = Duration::from_secs(3600);
    let e = rig.open_threaded(true);
    // A front end's request in being: planned, not yet completed.
    let busy = e.plan(Request::read(0, 4096));
    assert!(matches!(busy, Plan::Ready(_)));
    e.write(&pattern(1, 4096), 3 * REGION, false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = e.status();
    assert!(s.mirror_deferring, "copies are held back: {s:?}");
    assert!(s.host_busy > 0.9, "{s:?}");
    assert_eq!(dirty(&e), vec![3]);
    drop(busy);
    assert!(
        e.wait_synced(Duration::from_secs(10)),
        "copies did not resume when the host I/O ended"
    );
    assert!(!e.status().mirror_deferring);
    assert!(rig.in_sync());
    e.shutdown().unwrap();
}

#[test]
fn wait_synced_times_out_while_the_secondary_fails() {
    let rig = rig();
    let e = rig.open_threaded(true);
    rig.secondary.set_faults(Faults {
        fail_after: Some(0),
        ..Faults::default()
    });
    e.write(&[1; 4096], 5 * REGION, false).unwrap();
    let started = Instant::now();
    assert!(!e.wait_synced(Duration::from_millis(100)));
    assert!(started.elapsed() >= Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.status().copy_errors == 0 {
        assert!(Instant::now() < deadline, "no copy attempted");
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = e.status();
    assert_eq!(s.state, State::Degraded);
    assert_eq!(s.dirty_bytes, REGION);
    rig.secondary.set_faults(Faults::default());
    assert!(
        e.wait_synced(Duration::from_secs(10)),
        "recovers after backoff"
    );
    assert_eq!(e.status().state, State::Live);
    assert!(rig.in_sync());
}

#[test]
fn dirty_bytes_never_exceed_the_device_size() {
    let size = SIZE + 4096;
    let mut rig = rig_with(
        MemDev::from_bytes("primary", pattern(8, size as usize)),
        MemDev::new("secondary", size),
    );
    rig.config.assume_clean = false;
    let e = rig.open(true);
    let s = e.status();
    assert_eq!(s.resync_total_bytes, size);
    assert!(
        s.dirty_bytes <= size && s.record_bytes <= size,
        "device of {size} bytes reports {} dirty and {} recorded bytes",
        s.dirty_bytes,
        s.record_bytes
    );
}
#[test]
fn passthrough_serves_the_primary_alone_and_forces_a_full_resync_later() {
    let mut rig = rig();
    rig.config.passthrough = true;
    let e = rig.open(true);
    assert_eq!(e.status().state, State::Passthrough);
    let data = pattern(7, 3 * REGION as usize);
    e.write(&data, REGION, false).unwrap();
    assert_eq!(
        &rig.primary.contents()[REGION as usize..4 * REGION as usize],
        &data[..]
    );
    let st = e.status();
    assert_eq!(st.record_updates, 0, "no record updates in passthrough");
    assert_eq!(st.dirty_bytes, 0);
    assert!(!e.pump_mirror(), "nothing is mirrored in passthrough");
    assert_ne!(rig.secondary.contents(), rig.primary.contents());
    drop(e);
    // The secondary was not kept: a mirrored start copies everything.
    rig.config.passthrough = false;
    let e = rig.open(false);
    assert_eq!(e.status().resync_total_bytes, SIZE);
    pump_all(&e);
    assert!(rig.in_sync());
}

/// The issue a request is planned with, admitting it first if it must wait.
fn issue_of(e: &Engine, req: Request) -> Issue {
    let io = match e.plan(req) {
        Plan::Ready(io) => io,
        Plan::Pending(p) => match p.admit() {
            Plan::Ready(io) => io,
            _ => panic!("{req}: not admitted"),
        },
        Plan::Done(r) => panic!("{req}: done at once: {r:?}"),
    };
    let issue = io.issue();
    // Not issued: ends as a failure, which still releases its regions.
    assert!(io.complete(-libc::ECANCELED).is_err());
    issue
}

#[test]
fn each_request_is_planned_once_and_a_bad_one_is_done_at_once() {
    let rig = rig();
    let e = rig.open(true);
    // A primary without a file descriptor: the engine issues everything.
    assert_eq!(issue_of(&e, Request::read(0, 4096)), Issue::Run);
    assert_eq!(issue_of(&e, Request::write(0, 4096, true)), Issue::Run);
    assert_eq!(issue_of(&e, Request::flush()), Issue::Run);
    // What may take long never runs where it would block a queue.
    assert_eq!(issue_of(&e, Request::discard(0, REGION)), Issue::Detached);
    assert_eq!(
        issue_of(&e, Request::write_zeroes(0, REGION)),
        Issue::Detached
    );
    // A write to a region not in the record waits for it; a recorded one
    // does not.
    assert!(matches!(
        e.plan(Request::write(9 * REGION, 4096, false)),
        Plan::Pending(_)
    ));
    assert!(matches!(
        e.plan(Request::write(0, 4096, false)),
        Plan::Ready(_)
    ));
    // Outside the device: done, with EINVAL, before anything is recorded.
    let updates = e.status().record_updates;
    for req in [
        Request::read(SIZE, 1),
        Request::write(SIZE - 512, 1024, false),
    ] {
        match e.plan(req) {
            Plan::Done(Err(err)) => {
                assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
                assert_eq!(ublk_result(&req, Err(err)), -libc::EINVAL);
            }
            _ => panic!("{req} was planned"),
        }
    }
    assert_eq!(e.status().record_updates, updates);
    // Sectors that overflow a byte offset are refused, not wrapped.
    let wrapped = Request::from_sectors(Op::Write, u64::MAX / 256, 8, false);
    match e.plan(wrapped) {
        Plan::Done(Err(err)) => {
            assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
            assert_eq!(ublk_result(&wrapped, Err(err)), -libc::EINVAL);
        }
        _ => panic!("{wrapped} was planned"),
    }
    let flush = Request::from_sectors(Op::Flush, u64::MAX, 0, false);
    assert_eq!(flush, Request::flush());
    assert_eq!(
        Request::from_sectors(Op::Read, 16, 8, false),
        Request::read(8192, 4096)
    );
    // A read given no buffer, or too small a one, fails; nothing is moved.
    let Plan::Ready(io) = e.plan(Request::read(0, 4096)) else {
        panic!("read not ready")
    };
    assert_eq!(io.run(Data::Into(&mut [0; 512])), -libc::EINVAL);
    assert_eq!(io.run(Data::None), -libc::EINVAL);
    assert!(io.complete(-libc::EINVAL).is_err());
}

#[test]
fn a_primary_file_is_issued_on_its_descriptor_where_alignment_allows() {
    let dir = tempfile::tempdir().unwrap();
    let open = |direct| -> Dev {
        let opts = crate::dev::OpenOptions {
            direct,
            create_size: Some(SIZE),
        };
        Arc::new(crate::dev::FileDev::open(&dir.path().join("primary.img"), &opts).unwrap())
    };
    let mut rig = rig();
    rig.primary_dev = open(false);
    let e = rig.open(true);
    assert_eq!(issue_of(&e, Request::read(512, 100)), Issue::Read);
    assert_eq!(
        issue_of(&e, Request::write(0, 4096, true)),
        Issue::Write { dsync: true }
    );
    assert_eq!(
        issue_of(&e, Request::write(0, 4096, false)),
        Issue::Write { dsync: false }
    );
    assert_eq!(issue_of(&e, Request::flush()), Issue::Sync);
    assert_eq!(issue_of(&e, Request::discard(0, 4096)), Issue::Detached);
    drop(e);
    rig.primary_dev = open(true);
    let Some(align) = rig.primary_dev.dio_alignment() else {
        assert!(
            std::env::var_os("TANDEM_REQUIRE_DIRECT").is_none_or(|v| v != "1"),
            "O_DIRECT is required here, but the temp dir's file system refused it"
        );
        eprintln!(
            "SKIP a_primary_file_is_issued_on_its_descriptor_where_alignment_allows \
             (O_DIRECT half): the temp dir's file system refused O_DIRECT"
        );
        return;
    };
    let a = u64::from(align);
    let e = rig.open(true);
    assert_eq!(issue_of(&e, Request::read(a, a)), Issue::Read);
    assert_eq!(
        issue_of(&e, Request::write(2 * a, a, false)),
        Issue::Write { dsync: false }
    );
    // Out of the descriptor's alignment: the engine bounces it.
    assert_eq!(issue_of(&e, Request::read(a / 2, a)), Issue::Run);
    assert_eq!(issue_of(&e, Request::write(a, a + 1, false)), Issue::Run);
    // And the bounced write lands where it was asked to.
    let data = pattern(5, a as usize + 1);
    e.write(&data, 3 * a - 1, false).unwrap();
    let mut back = vec![0; data.len()];
    e.read(&mut back, 3 * a - 1).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_completion_keeps_the_errno_and_never_takes_a_short_transfer_for_success() {
    let rig = rig();
    let e = rig.open(true);
    e.write(&pattern(1, 4096), 0, false).unwrap();
    let ready = |req| match e.plan(req) {
        Plan::Ready(io) => io,
        _ => panic!("{req}: not ready"),
    };
    let req = Request::write(0, 4096, false);
    let err = ready(req).complete(-libc::ENOSPC).unwrap_err();
    assert_eq!(err.errno(), -libc::ENOSPC, "{err}");
    assert!(
        err.to_string().contains("write of 4096 bytes at 0"),
        "{err}"
    );
    // Fewer bytes than asked is a failure, never a success.
    let err = ready(req).complete(2048).unwrap_err();
    assert_eq!(ublk_result(&req, Err(err)), -libc::EIO);
    assert_eq!(ready(Request::read(0, 4096)).complete(4096).unwrap(), 4096);
    assert_eq!(ready(Request::flush()).complete(0).unwrap(), 0);
    // A failed write may have changed the primary: its region is dirty and
    // goes to the mirror all the same, and nothing stays in flight.
    let states = e.record().states();
    assert!(states.is_dirty(0));
    assert_eq!(states.inflight(0), 0);
    pump_all(&e);
    assert!(rig.in_sync());
}

/// A lost lease fences the engine: writes fail and change nothing, copies
/// mark nothing clean, the state says `fenced`; reads go on.
#[test]
fn an_engine_whose_lease_is_taken_over_writes_nothing_and_cleans_nothing() {
    use crate::lease::{Block, LeaseArea, LeaseConfig};
    let dir = tempfile::tempdir().unwrap();
    let rig = rig();
    let lc = LeaseConfig {
        path: dir.path().join("lease"),
        node: 1,
        timeout: std::time::Duration::from_millis(2000),
        reclaim: false,
    };
    let lease = crate::lease::Lease::claim(&lc, rig.identity, SIZE, REGION).unwrap();
    let mut devices = rig.devices(true);
    devices.lease = Some(lease.clone());
    let e = Engine::open_manual(devices, &rig.config).unwrap();
    e.write(&pattern(1, 4096), 0, false).unwrap();
    assert_eq!(e.status().state, State::Live);
    assert_eq!(e.status().lease.unwrap().generation, 1);
    // Region 0 is dirty; another node takes the device over.
    let stolen = Block {
        owner: 2,
        generation: 2,
        ..lease.block()
    };
    LeaseArea::open(&lc.path).unwrap().write(&stolen).unwrap();
    let t0 = std::time::Instant::now();
    while lease.valid() {
        assert!(t0.elapsed().as_secs() < 5, "the engine never noticed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = rig.primary.contents();
    let err = e.write(&pattern(2, 4096), REGION, false).unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    assert!(err.to_string().contains("taken over"), "{err}");
    assert_eq!(err.errno(), -libc::EIO);
    assert!(e.discard(0, REGION).is_err());
    assert_eq!(
        rig.primary.contents(),
        before,
        "a fenced write reached the primary"
    );
    // The copy of region 0 does not mark it clean.
    for _ in 0..4 {
        e.pump_mirror();
    }
    assert_eq!(dirty(&e), vec![0]);
    let st = e.status();
    assert_eq!(st.state, State::Fenced);
    assert!(st.lease.unwrap().lost.is_some());
    let mut buf = vec![0u8; 4096];
    e.read(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(1, 4096));
}

/// A clean stop releases the lease: it does not lapse into a takeover.
#[test]
fn a_clean_shutdown_releases_the_lease() {
    use crate::lease::{LeaseConfig, Seen, Watch};
    let dir = tempfile::tempdir().unwrap();
    let rig = rig();
    let lc = LeaseConfig {
        path: dir.path().join("lease"),
        node: 1,
        timeout: std::time::Duration::from_millis(2000),
        reclaim: false,
    };
    let mut devices = rig.devices(true);
    devices.lease = Some(crate::lease::Lease::claim(&lc, rig.identity, SIZE, REGION).unwrap());
    let e = Engine::open_manual(devices, &rig.config).unwrap();
    e.write(&pattern(1, 4096), 0, false).unwrap();
    pump_all(&e);
    e.shutdown().unwrap();
    let mut watch = Watch::new(&lc.path).unwrap();
    assert!(matches!(watch.poll().unwrap(), Seen::Released(b) if b.owner == 1));
}

#[test]
fn a_half_full_write_buffer_copies_what_it_holds_before_older_regions() {
    let mut rig = rig();
    rig.config.mirror.copy_buffer = 8192;
    let e = rig.open(true);
    // Region 1 first, with no data kept (a write-zeroes), then 4 KiB to
    // region 3: the buffer holds half its budget.
    e.write_zeroes(REGION, 4096).unwrap();
    e.write(&pattern(1, 4096), 3 * REGION, false).unwrap();
    assert_eq!(dirty(&e), vec![1, 3]);
    assert!(e.copy_buffer().half_full());
    // The first copy takes the held region, ahead of the queue's head.
    assert!(e.pump_mirror());
    let s = e.status();
    assert_eq!(dirty(&e), vec![1], "region 3 went first");
    assert_eq!(
        (s.copy_from_buffer_bytes, s.copy_read_back_bytes),
        (4096, 0)
    );
    assert!(!e.copy_buffer().half_full());
    // Then the queue as usual: region 1 is read back.
    pump_all(&e);
    let s = e.status();
    assert!(dirty(&e).is_empty());
    assert_eq!(
        (s.copy_from_buffer_bytes, s.copy_read_back_bytes),
        (4096, 4096)
    );
    assert!(rig.in_sync());
}

#[test]
fn a_region_the_buffer_does_not_hold_goes_first_once_it_has_waited_the_maximum_lag() {
    let mut rig = rig();
    rig.config.mirror.copy_buffer = 8192;
    rig.config.mirror.max_lag = std::time::Duration::from_millis(30);
    let e = rig.open(true);
    // Region 1 holds nothing in the buffer (a write-zeroes); region 3 keeps
    // it half full.
    e.write_zeroes(REGION, 4096).unwrap();
    e.write(&pattern(1, 4096), 3 * REGION, false).unwrap();
    assert!(e.pump_mirror());
    assert_eq!(
        dirty(&e),
        vec![1],
        "the held region goes first while the head is young"
    );
    // Under a load that keeps the buffer half full, the head would wait
    // for ever behind the held regions; once it has waited the maximum
    // lag, it goes first.
    e.write(&pattern(2, 4096), 3 * REGION, false).unwrap();
    assert!(e.copy_buffer().half_full());
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert!(e.pump_mirror());
    // (The queue's batch takes region 3's entry behind it as well.)
    assert!(
        !dirty(&e).contains(&1),
        "the overdue head went before the held region"
    );
    pump_all(&e);
    assert!(dirty(&e).is_empty());
    assert!(rig.in_sync());
}

#[test]
fn a_region_copied_from_the_buffer_and_written_again_counts_its_lag_from_the_new_write() {
    let mut rig = rig();
    rig.config.mirror.copy_buffer = 8192;
    let e = rig.open(true);
    e.write(&pattern(1, 4096), 3 * REGION, false).unwrap();
    // Copied from the buffer ahead of its queue entry, which stays behind.
    assert!(e.pump_mirror());
    assert!(dirty(&e).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let written = std::time::Instant::now();
    e.write(&pattern(2, 4096), 3 * REGION, false).unwrap();
    let lag = e.status().lag_seconds;
    assert!(
        lag <= written.elapsed().as_secs_f64(),
        "the lag ({lag} s) counts from the write the secondary holds already"
    );
    pump_all(&e);
    assert!(rig.in_sync());
}
