//! The record's costs per write, without I/O.
//!
//! - `hit`: a write to a region already in the record, through
//!   `Record::begin_write` + `Record::end_write` of a record built with the
//!   `predictive` policy (what every write pays; the predictor is not called
//!   on a hit, and this measures that it is not). Variants: the region is
//!   already dirty (steady state under load), the region is clean (the write
//!   turns it dirty: one more atomic), and two threads writing at once to
//!   regions on different cache lines and on the same cache line.
//! - `engine_hit`: the same through `Engine::plan` + `Io::complete`
//!   (range check, counters, mirror queue) over in-memory devices.
//! - `miss`: a write to a region not in the record: `Record::admit` with a
//!   `NullStore` (the group commit and the predictor, no I/O); the mirror marks
//!   the region clean at once so eviction keeps the record within capacity and
//!   the next write to it misses again.
//!
//! Goal: the hit path at most 100 ns per write.
//!
//! Run: `cargo bench -p tandem --bench record` (add `-- --warm-up-time 0.2
//! --measurement-time 0.5` for a short run).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tandem::dev::MemDev;
use tandem::engine::{pair_identity, Devices, Engine, EngineConfig, Plan, Request};
use tandem::predict::by_name;
use tandem::record::{NullStore, Record, RegionFile};
use tandem::region::Clock;
use tandem::Geometry;

const REGION: u64 = 1 << 20;
/// A 1 TiB device of 1 MiB regions: a million state words, as in production.
const DEVICE: u64 = 1 << 40;

fn record(policy: &str, capacity: u64) -> Record {
    let g = Geometry::new(DEVICE, REGION).unwrap();
    Record::new(
        g,
        capacity,
        by_name(policy, g.regions(), g.region_size()).unwrap(),
        Box::new(NullStore::default()),
        Clock::monotonic(),
    )
}

/// One write to region `r` as the engine makes it: begin, admit on a miss, end.
/// Returns whether it missed.
#[inline]
fn write(rec: &Record, r: u64, misses: &mut Vec<u64>, dirtied: &mut Vec<u64>) -> bool {
    misses.clear();
    dirtied.clear();
    rec.begin_write(r..r + 1, misses);
    let missed = !misses.is_empty();
    if missed {
        rec.admit(misses).unwrap();
    }
    rec.end_write(r..r + 1, dirtied);
    missed
}

/// What the mirror does once it has copied `r`: marks it clean.
fn mark_clean(rec: &Record, r: u64) {
    let states = rec.states();
    if let Ok(claim) = states.claim_copy(r) {
        states.finish_copy(r, claim, true);
    }
}

fn hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("hit");
    g.throughput(Throughput::Elements(1));
    let rec = record("predictive", 1 << 30);
    let (mut misses, mut dirtied) = (Vec::new(), Vec::new());
    // Regions 1000.. admitted (the first write misses), far apart on the
    // state words so that two threads never share a cache line.
    for t in 0..4 {
        write(&rec, 1000 + t * 64, &mut misses, &mut dirtied);
    }
    assert!(!write(&rec, 1000, &mut misses, &mut dirtied), "a hit");

    g.bench_function("dirty_region", |b| {
        b.iter(|| {
            rec.begin_write(black_box(1000..1001), &mut misses);
            rec.end_write(black_box(1000..1001), &mut dirtied);
            debug_assert!(misses.is_empty() && dirtied.is_empty());
        })
    });

    // Clean regions: each timed write turns one dirty; the mirror's cleaning
    // happens between batches, untimed. 4096 distinct regions, 97 apart (out
    // of the predictor's neighbourhood), each on its own cache line; a record
    // whose capacity holds them all clean.
    let wide = record("predictive", 16 << 30);
    let clean: Vec<u64> = (0..4096).map(|i| 1000 + i * 97).collect();
    for pass in 0.. {
        let mut missed = 0;
        for &r in &clean {
            missed += u32::from(write(&wide, r, &mut misses, &mut dirtied));
            mark_clean(&wide, r);
        }
        if missed == 0 {
            break;
        }
        assert!(
            pass < 10,
            "regions keep leaving the record: {missed} missed"
        );
    }
    g.bench_function("clean_region", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            misses.clear();
            dirtied.clear();
            while left > 0 {
                let n = left.min(clean.len() as u64) as usize;
                let t = Instant::now();
                for &r in &clean[..n] {
                    wide.begin_write(r..r + 1, &mut misses);
                    wide.end_write(r..r + 1, &mut dirtied);
                }
                total += t.elapsed();
                assert!(misses.is_empty(), "clean regions stay recorded");
                assert_eq!(dirtied.len(), n, "each write turned a region dirty");
                misses.clear();
                dirtied.clear();
                for &r in &clean[..n] {
                    mark_clean(&wide, r);
                }
                left -= n as u64;
            }
            total
        })
    });

    // Two threads at once; the figure is wall time per write per thread.
    for (name, stride) in [("2_threads_far", 64u64), ("2_threads_same_line", 1)] {
        let base = 1000;
        let regions = [base, base + stride];
        for &r in &regions {
            write(&rec, r, &mut misses, &mut dirtied);
        }
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(3);
                std::thread::scope(|s| {
                    let handles: Vec<_> = regions
                        .iter()
                        .map(|&r| {
                            let (rec, barrier) = (&rec, &barrier);
                            s.spawn(move || {
                                let (mut m, mut d) = (Vec::new(), Vec::new());
                                barrier.wait();
                                let t = Instant::now();
                                for _ in 0..iters {
                                    rec.begin_write(black_box(r..r + 1), &mut m);
                                    rec.end_write(black_box(r..r + 1), &mut d);
                                }
                                let e = t.elapsed();
                                assert!(m.is_empty());
                                e
                            })
                        })
                        .collect();
                    barrier.wait();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap()
                })
            })
        });
    }
    g.finish();
    let s = rec.stats();
    eprintln!(
        "hit: record updates {} (all from set-up), regions {}, predicted {}",
        s.updates, s.regions, s.predicted_regions
    );
}

fn engine_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_hit");
    g.throughput(Throughput::Elements(1));
    let size = 256 << 20;
    let geometry = Geometry::new(size, REGION).unwrap();
    let devices = Devices {
        primary: Arc::new(MemDev::new("primary", size)),
        secondary: Arc::new(MemDev::new("secondary", size)),
        record: Arc::new(MemDev::new("record", RegionFile::file_size(&geometry))),
        record_is_new: true,
        shared_disks: Vec::new(),
        identity: pair_identity("primary", "secondary"),
        lease: None,
    };
    let config = EngineConfig {
        assume_clean: true,
        ..EngineConfig::default()
    };
    // No mirror threads: the region stays dirty, as under steady load.
    let engine = Engine::open_manual(devices, &config).unwrap();
    engine.write(&[7; 4096], 5 * REGION, false).unwrap();
    assert_eq!(engine.status().record_updates, 1);
    g.bench_function("4k_dirty_region", |b| {
        b.iter(
            || match engine.plan(Request::write(black_box(5 * REGION + 8192), 4096, false)) {
                // The record's part of a write: no primary I/O is timed.
                Plan::Ready(io) => io.complete(4096).unwrap(),
                _ => panic!("a write to a recorded region needed the record"),
            },
        )
    });
    g.finish();
    assert_eq!(engine.status().record_updates, 1, "every timed write hit");
}

fn miss(c: &mut Criterion) {
    let mut g = c.benchmark_group("miss");
    g.throughput(Throughput::Elements(1));
    for policy in ["predictive", "lru"] {
        // Capacity 64 regions; writes go to pseudo-random regions of the
        // million, so nearly every one misses, and each is marked clean at
        // once, so the record evicts (in memory) to stay within capacity.
        let capacity = 64 * REGION;
        let rec = record(policy, capacity);
        let regions = rec.geometry().regions();
        let (mut misses, mut dirtied) = (Vec::new(), Vec::new());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let writes = AtomicU64::new(0);
        let missed = AtomicU64::new(0);
        g.bench_function(BenchmarkId::from_parameter(policy), |b| {
            b.iter(|| {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % regions;
                if write(&rec, r, &mut misses, &mut dirtied) {
                    missed.fetch_add(1, Ordering::Relaxed);
                }
                mark_clean(&rec, r);
                let n = writes.fetch_add(1, Ordering::Relaxed);
                if n % 256 == 255 {
                    // The destager's lazy forgetting (NullStore: no I/O).
                    rec.destage().unwrap();
                }
            })
        });
        rec.evict();
        let s = rec.stats();
        let w = writes.load(Ordering::Relaxed);
        eprintln!(
            "miss/{policy}: {w} writes, {} missed ({:.1}%), {} record updates, {} predicted, \
             {} evictions, {} regions recorded at the end (capacity {})",
            missed.load(Ordering::Relaxed),
            100.0 * missed.load(Ordering::Relaxed) as f64 / w.max(1) as f64,
            s.updates,
            s.predicted_regions,
            s.evictions,
            s.regions,
            capacity / REGION
        );
    }
    g.finish();
}

criterion_group!(benches, hit, engine_hit, miss);
criterion_main!(benches);
