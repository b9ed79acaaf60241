//! Real-process crash test: a child runs the engine over two files with
//! several writer threads and is killed with SIGKILL at a random moment, many
//! times. After each kill the engine restarts and recovers: every acknowledged
//! write must be on the primary, and after resync primary and secondary must be
//! byte-identical. Each recovery prints the bytes it resynced against the
//! record capacity.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tandem::dev::Cache;
use tandem::engine::{Engine, EngineConfig};
use tandem_tests::load::LoadArgs;
use tandem_tests::{check_acknowledged, follow_status, sigkill};

const DEVICE: u64 = 64 << 20;
const THREADS: u32 = 4;

fn kills() -> u32 {
    std::env::var("TANDEM_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn sigkill_under_load_loses_nothing_and_resyncs_to_identical() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    // The child's settings; each kill changes the policy, cache and seed.
    let mut load = LoadArgs::stamped(dir.path(), THREADS);
    let paths = load.paths();
    for p in [&paths.primary, &paths.secondary] {
        std::fs::File::create(p).unwrap().set_len(DEVICE).unwrap();
    }
    std::fs::create_dir(&logs).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("TANDEM_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x7a4d),
    );
    let n = kills();
    let mut resynced = Vec::new();
    for epoch in 1..=u64::from(n) {
        let policy = if epoch % 3 == 0 { "lru" } else { "predictive" };
        // Half the kills with the host page cache in the path: what a write
        // left there survives the daemon's death.
        let cache = if epoch % 2 == 0 {
            Cache::Writeback
        } else {
            Cache::None
        };
        load.seed = epoch;
        load.policy = policy.into();
        load.cache = cache;
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine-load"))
            .args(load.args())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn engine-load");
        let last_status = follow_status(child.stdout.take().unwrap())
            .unwrap_or_else(|e| panic!("engine-load: {e}"));
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..250)));
        sigkill(&mut child);

        let (record_before, dirty_before) = match last_status.join().unwrap()[..] {
            [record, dirty, _writes] => (record, dirty),
            _ => (0, 0),
        };

        let config: EngineConfig = load.config();
        let t0 = Instant::now();
        let engine = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
        let st = engine.status();
        let checked = check_acknowledged(&paths.primary, &logs, THREADS);
        assert!(
            engine.wait_synced(Duration::from_secs(120)),
            "resync did not finish"
        );
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "kill {epoch:2} ({policy:10}, cache {:9}): {checked} blocks acknowledged and intact; resynced {:6} KiB \
             in {secs:.2}s (capacity {} KiB; ~20 ms before the kill: record {} KiB, dirty {} KiB)",
            cache.name(),
            st.resync_total_bytes >> 10,
            config.capacity >> 10,
            record_before >> 10,
            dirty_before >> 10,
        );
        resynced.push(st.resync_total_bytes);
        engine.shutdown().unwrap();
        let p = std::fs::read(&paths.primary).unwrap();
        let s = std::fs::read(&paths.secondary).unwrap();
        assert!(
            p == s[..p.len()],
            "kill {epoch}: primary and secondary differ after resync"
        );
    }
    let max = resynced.iter().max().unwrap();
    let mean = resynced.iter().sum::<u64>() / resynced.len() as u64;
    println!(
        "{n} kills: resync per recovery mean {} KiB, max {} KiB, capacity {} KiB, device {} KiB",
        mean >> 10,
        max >> 10,
        load.capacity >> 10,
        DEVICE >> 10
    );
    assert!(
        resynced.iter().any(|&b| b > 0),
        "no kill left anything to resync: the test did not exercise recovery"
    );
}
