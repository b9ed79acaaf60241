//! Property test: random interleavings of writes, flushes, mirror copies,
//! evictions, secondary failures and power losses, over in-memory devices that
//! keep only what was made durable plus any subset of unsynced writes.
//!
//! Checked at every step: no region outside the durable record differs between
//! primary and secondary, whatever subset of unsynced writes a crash would keep
//! (none, or all). Checked after every crash: every acknowledged and flushed
//! write is on the primary; after recovery and resync both devices are
//! byte-identical.

use std::sync::Arc;

use proptest::prelude::*;
use tandem::dev::{Faults, MemDev};
use tandem::engine::{pair_identity, Devices, Engine, EngineConfig};
use tandem::geometry::Geometry;
use tandem::record::{LoadOutcome, RegionFile};

const REGION: u64 = 64 << 10;
const REGIONS: u64 = 16;
const SIZE: u64 = REGION * REGIONS;
const BLOCK: u64 = 4096;
const BLOCKS: u64 = SIZE / BLOCK;

#[derive(Debug, Clone)]
enum Op {
    Write { block: u64, blocks: u64, fua: bool },
    Flush,
    Pump(u8),
    Trim,
    LazyFlush,
    FailSecondary,
    HealSecondary,
    Crash { keep: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..BLOCKS, 1..=20u64, any::<bool>()).prop_map(|(block, blocks, fua)| Op::Write {
            block,
            blocks: blocks.min(BLOCKS - block),
            fua
        }),
        2 => Just(Op::Flush),
        4 => (1..4u8).prop_map(Op::Pump),
        1 => Just(Op::Trim),
        2 => Just(Op::LazyFlush),
        1 => Just(Op::FailSecondary),
        1 => Just(Op::HealSecondary),
        1 => any::<u64>().prop_map(|keep| Op::Crash { keep }),
    ]
}

/// What each 4 KiB block of the primary may hold: the newest write that was
/// acknowledged and made durable (flush or FUA), and the writes after it.
#[derive(Clone)]
struct BlockModel {
    durable: u64,
    since: Vec<u64>,
}

struct World {
    primary: Arc<MemDev>,
    secondary: Arc<MemDev>,
    record: Arc<MemDev>,
    geometry: Geometry,
    config: EngineConfig,
    model: Vec<BlockModel>,
    next_id: u64,
}

fn fill(id: u64, blocks: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((blocks * BLOCK) as usize);
    for b in 0..blocks {
        let stamp = id.wrapping_mul(1_000_003).wrapping_add(b);
        for _ in 0..BLOCK / 8 {
            v.extend_from_slice(&stamp.to_le_bytes());
        }
    }
    v
}

/// The stamp a 4 KiB block holds (0 for never written).
fn stamp_of(block: &[u8]) -> u64 {
    u64::from_le_bytes(block[..8].try_into().unwrap())
}

impl World {
    fn new(policy: &str) -> Self {
        let geometry = Geometry::new(SIZE, REGION).unwrap();
        let record_size = RegionFile::file_size(&geometry);
        World {
            primary: Arc::new(MemDev::new("primary", SIZE)),
            secondary: Arc::new(MemDev::new("secondary", SIZE)),
            record: Arc::new(MemDev::new("record", record_size)),
            geometry,
            config: EngineConfig {
                region_size: REGION,
                capacity: 4 * REGION,
                policy: policy.into(),
                assume_clean: true,
                ..EngineConfig::default()
            },
            model: vec![
                BlockModel {
                    durable: 0,
                    since: Vec::new()
                };
                BLOCKS as usize
            ],
            next_id: 1,
        }
    }

    fn open(&self, new: bool) -> Engine {
        Engine::open_manual(
            Devices {
                primary: self.primary.clone(),
                secondary: self.secondary.clone(),
                record: self.record.clone(),
                record_is_new: new,
                shared_disks: Vec::new(),
                identity: pair_identity("primary", "secondary"),
                lease: None,
            },
            &self.config,
        )
        .expect("engine opens")
    }

    /// Regions a crash keeping the given record bytes would resync.
    fn durable_record(&self, bytes: Vec<u8>) -> Vec<u64> {
        let dev = Arc::new(MemDev::from_bytes("record-copy", bytes));
        match RegionFile::open(dev, &self.geometry, pair_identity("primary", "secondary")) {
            Ok((_, LoadOutcome::Loaded(r))) => r,
            Ok((_, LoadOutcome::Corrupt(why))) => panic!("record read back corrupt: {why}"),
            Err(e) => panic!("record unreadable: {e}"),
        }
    }

    /// No region outside the record may differ, for the durable image (crash
    /// keeping nothing unsynced) and the current one (keeping everything).
    fn check_outside_record_identical(&self) -> Result<(), TestCaseError> {
        for (rec, p, s, what) in [
            (
                self.record.durable_contents(),
                self.primary.durable_contents(),
                self.secondary.durable_contents(),
                "durable",
            ),
            (
                self.record.contents(),
                self.primary.contents(),
                self.secondary.contents(),
                "current",
            ),
        ] {
            let recorded = self.durable_record(rec);
            for r in 0..REGIONS {
                if recorded.contains(&r) {
                    continue;
                }
                let b = self.geometry.region_bytes(r);
                let (lo, hi) = (b.start as usize, b.end as usize);
                prop_assert!(
                    p[lo..hi] == s[lo..hi],
                    "{what}: region {r} differs but is not in the durable record {recorded:?}"
                );
            }
        }
        Ok(())
    }

    fn write(&mut self, engine: &Engine, block: u64, blocks: u64, fua: bool) {
        let id = self.next_id;
        self.next_id += 1;
        engine
            .write(&fill(id, blocks), block * BLOCK, fua)
            .expect("host writes never fail because of the secondary");
        for b in 0..blocks {
            let stamp = id.wrapping_mul(1_000_003).wrapping_add(b);
            let m = &mut self.model[(block + b) as usize];
            if fua {
                m.durable = stamp;
                m.since.clear();
            } else {
                m.since.push(stamp);
            }
        }
    }

    fn flushed(&mut self) {
        for m in &mut self.model {
            if let Some(&last) = m.since.last() {
                m.durable = last;
                m.since.clear();
            }
        }
    }

    /// After a power loss: each block holds its durable write or a later one.
    fn check_primary_after_crash(&mut self) -> Result<(), TestCaseError> {
        let p = self.primary.contents();
        for (i, m) in self.model.iter_mut().enumerate() {
            let off = i * BLOCK as usize;
            let got = stamp_of(&p[off..off + BLOCK as usize]);
            prop_assert!(
                got == m.durable || m.since.contains(&got),
                "block {i}: holds {got:#x}, acknowledged durable {:#x}, later {:?}",
                m.durable,
                m.since
            );
            // What is there now is what survived.
            m.durable = got;
            m.since.clear();
        }
        Ok(())
    }
}

fn crash_keep(seed: u64) -> impl FnMut(usize) -> bool {
    move |i| match seed % 3 {
        0 => false,
        1 => true,
        _ => (seed >> (i % 61)) & 1 == 1,
    }
}

fn run(policy: &str, ops: Vec<Op>) -> Result<(), TestCaseError> {
    run_planted(policy, ops, false).map(drop)
}

/// `run`, with a stale write-data buffer planted when `stale`; returns the
/// bytes the mirror sent from the write-data buffer.
fn run_planted(policy: &str, ops: Vec<Op>, stale: bool) -> Result<u64, TestCaseError> {
    let mut w = World::new(policy);
    let mut engine = w.open(true);
    let plant = |e: &Engine| {
        if stale {
            e.copy_buffer().plant_stale();
        }
    };
    plant(&engine);
    let mut from_buffer = 0;
    for op in ops {
        match op {
            Op::Write { block, blocks, fua } => w.write(&engine, block, blocks, fua),
            Op::Flush => {
                engine.flush().expect("flush");
                w.flushed();
            }
            Op::Pump(n) => {
                for _ in 0..n {
                    engine.pump_mirror();
                }
            }
            Op::Trim => engine.record().evict(),
            Op::LazyFlush => {
                engine.record().destage().expect("lazy flush");
            }
            Op::FailSecondary => w.secondary.set_faults(Faults {
                fail_after: Some(0),
                ..Faults::default()
            }),
            Op::HealSecondary => w.secondary.set_faults(Faults::default()),
            Op::Crash { keep } => {
                from_buffer += engine.mirror_stats().from_buffer_bytes;
                drop(engine);
                w.primary.crash(crash_keep(keep));
                w.secondary.crash(crash_keep(keep.rotate_left(7)));
                w.record.crash(crash_keep(keep.rotate_left(13)));
                w.check_outside_record_identical()?;
                w.check_primary_after_crash()?;
                engine = w.open(false);
                plant(&engine);
            }
        }
        w.check_outside_record_identical()?;
    }
    // Recovery and resync: the secondary comes back and the pool catches up.
    w.secondary.set_faults(Faults::default());
    let mut rounds = 0;
    while engine.pump_mirror() {
        rounds += 1;
        prop_assert!(rounds < 10_000, "resync does not converge");
    }
    prop_assert_eq!(engine.status().dirty_bytes, 0);
    prop_assert!(
        w.primary.contents() == w.secondary.contents(),
        "primary and secondary differ after resync"
    );
    from_buffer += engine.mirror_stats().from_buffer_bytes;
    // A clean stop leaves a record that resyncs nothing.
    engine.shutdown().expect("clean stop");
    let engine = w.open(false);
    prop_assert_eq!(engine.status().resync_total_bytes, 0);
    Ok(from_buffer)
}

/// A stale write-data buffer (a write over bytes it holds is dropped, so
/// the older data is copied) is caught: the secondary differs outside the
/// record, or after resync. And the property cases copy from the buffer.
#[test]
fn a_stale_write_data_buffer_is_caught() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let found = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        run_planted("predictive", ops, true).map(drop)
    });
    let e = found.expect_err("the planted stale buffer went unseen");
    let e = e.to_string();
    assert!(e.contains("differ"), "{e}");
    eprintln!("caught: {e}");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 50,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let sent = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&prop::collection::vec(op(), 1..60), |ops| {
            let n = run_planted("predictive", ops, false)?;
            sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    assert!(
        sent.into_inner() > 0,
        "no copy was sent from the write-data buffer"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn power_loss_lru(ops in prop::collection::vec(op(), 1..60)) {
        run("lru", ops)?;
    }

    #[test]
    fn power_loss_predictive(ops in prop::collection::vec(op(), 1..60)) {
        run("predictive", ops)?;
    }
}

/// An existing empty record file is a new record: with `assume_clean` nothing
/// is resynced (it used to be reopened as a blank, corrupt record).
#[test]
fn an_empty_record_file_is_a_new_record() {
    let dir = tempfile::tempdir().unwrap();
    let paths = tandem::engine::Paths {
        primary: dir.path().join("p"),
        secondary: dir.path().join("s"),
        record: dir.path().join("r"),
    };
    for p in [&paths.primary, &paths.secondary] {
        std::fs::File::create(p).unwrap().set_len(4 << 20).unwrap();
    }
    std::fs::File::create(&paths.record).unwrap();
    let config = EngineConfig {
        region_size: REGION,
        assume_clean: true,
        ..EngineConfig::default()
    };
    let devices = paths.open(&config).unwrap();
    assert!(devices.record_is_new);
    let e = Engine::open_manual(devices, &config).unwrap();
    let st = e.status();
    assert_eq!(st.start, tandem::engine::StartKind::Created);
    assert_eq!(st.resync_total_bytes, 0);
}
