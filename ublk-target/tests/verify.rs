//! `tandemctl verify` at the engine: a mismatch planted on the secondary is
//! found with its offsets and, with repair, copied again; host writes that
//! race the comparison never count as mismatches.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem::engine::{Data, Paths, VerifyReport};
use tandem::{Engine, EngineConfig, Request};

const REGION: u64 = 64 << 10;
const SIZE: u64 = 8 << 20;

fn open(dir: &std::path::Path) -> (Arc<Engine>, Paths) {
    let paths = Paths {
        primary: dir.join("p"),
        secondary: dir.join("s"),
        record: dir.join("r"),
    };
    for p in [&paths.primary, &paths.secondary] {
        std::fs::File::create(p).unwrap().set_len(SIZE).unwrap();
    }
    let config = EngineConfig {
        region_size: REGION,
        capacity: 16 * REGION,
        assume_clean: true,
        ..EngineConfig::default()
    };
    let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    (Arc::new(e), paths)
}

fn write(e: &Engine, offset: u64, len: u64, byte: u8) {
    let buf = vec![byte; len as usize];
    e.serve(Request::write(offset, len, false), Data::From(&buf))
        .unwrap();
}

fn run(e: &Arc<Engine>, repair: bool) -> VerifyReport {
    e.start_verify(repair, None).unwrap();
    let start = Instant::now();
    loop {
        let r = e.verify_report().unwrap();
        if !r.running {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "verify hangs: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_planted_mismatch_is_found_with_its_offsets_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (e, paths) = open(dir.path());
    for r in 0..SIZE / REGION {
        write(&e, r * REGION, REGION, r as u8 + 1);
    }
    assert!(e.wait_synced(Duration::from_secs(20)));
    let clean = run(&e, false);
    assert_eq!(clean.mismatched_regions, 0, "{clean:?}");
    assert_eq!(clean.regions_compared, SIZE / REGION);
    assert_eq!(clean.bytes_compared, SIZE);

    // Bytes 1000..1100 of region 7 rot on the secondary, behind tandem's back.
    let at = 7 * REGION + 1000;
    let s = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths.secondary)
        .unwrap();
    s.write_all_at(&[0xee; 100], at).unwrap();
    s.sync_all().unwrap();
    let found = run(&e, false);
    assert_eq!(found.mismatched_regions, 1, "{found:?}");
    let m = &found.mismatches[0];
    assert_eq!((m.region, m.offset, m.len), (7, at, 100));
    assert_eq!(found.repaired_regions, 0);

    let fixed = run(&e, true);
    assert_eq!(fixed.repaired_regions, 1, "{fixed:?}");
    assert!(e.wait_synced(Duration::from_secs(20)));
    assert_eq!(run(&e, false).mismatched_regions, 0);
    e.shutdown().unwrap();
    assert_eq!(
        std::fs::read(&paths.primary).unwrap(),
        std::fs::read(&paths.secondary).unwrap()
    );
}

#[test]
fn writes_racing_the_verify_are_never_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _paths) = open(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (e, stop, writes) = (e.clone(), stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Scattered 4 KiB writes: regions turn dirty and clean again
                // under the verify's reads.
                let off = (n * 7919 % (SIZE / 4096)) * 4096;
                write(&e, off, 4096, (n % 251) as u8);
                n += 1;
                writes.store(n, Ordering::Relaxed);
            }
        })
    };
    // At least five passes, and as many more as it takes for 100 writes to
    // have raced them (each write that misses the record waits for a
    // durable update, slow on a loaded disk).
    let started = Instant::now();
    let (mut compared, mut passes) = (0, 0);
    while passes < 5
        || (writes.load(Ordering::Relaxed) <= 100 && started.elapsed() < Duration::from_secs(60))
    {
        let r = run(&e, false);
        assert_eq!(
            r.mismatched_regions, 0,
            "a racing write was taken for a mismatch: {r:?}"
        );
        compared += r.regions_compared;
        passes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let writes = writes.load(Ordering::Relaxed);
    assert!(
        writes > 100 && compared > 0,
        "{writes} writes, {compared} compared in {passes} passes"
    );
    e.shutdown().unwrap();
}
