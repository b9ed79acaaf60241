//! Runs the engine over files with several writer threads, logging every
//! acknowledged write, until it is killed. Used by the crash test.
//!
//! Usage: crash-writer PRIMARY SECONDARY RECORD LOG_DIR THREADS EPOCH POLICY

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tandem::dev::Cache;
use tandem::engine::{Engine, EngineConfig, Paths};
use tandem::mirror::MirrorConfig;
use tandem_tests::{block_data, Ack, BLOCK};

/// Engine settings shared with the test that checks the writer's work.
pub fn config(policy: &str, cache: Cache) -> EngineConfig {
    EngineConfig {
        region_size: 64 << 10,
        capacity: 4 << 20,
        policy: policy.into(),
        mirror: MirrorConfig {
            threads: 2,
            ..MirrorConfig::default()
        },
        assume_clean: true,
        passthrough: false,
        cache,
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 9,
        "usage: crash-writer PRIMARY SECONDARY RECORD LOG_DIR THREADS EPOCH POLICY CACHE"
    );
    let paths = Paths {
        primary: PathBuf::from(&args[1]),
        secondary: PathBuf::from(&args[2]),
        record: PathBuf::from(&args[3]),
    };
    let log_dir = PathBuf::from(&args[4]);
    let threads: u32 = args[5].parse()?;
    let epoch: u64 = args[6].parse()?;
    let cache = Cache::parse(&args[8])
        .ok_or_else(|| anyhow::anyhow!("cache {:?}: choose one of {:?}", args[8], Cache::NAMES))?;
    let config = config(&args[7], cache);
    let engine = Arc::new(Engine::open(paths.open(&config)?, &config)?);
    let blocks = (engine.geometry().device_size() / BLOCK) as u32;
    println!("ready");
    std::io::stdout().flush()?;
    // Reports the record's size and dirty bytes now and then, so the test can
    // compare what a recovery resyncs with the state just before the kill.
    {
        let engine = engine.clone();
        std::thread::spawn(move || loop {
            let st = engine.status();
            println!("status {} {}", st.record_bytes, st.dirty_bytes);
            let _ = std::io::stdout().flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
    }
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            let log_path = log_dir.join(format!("ack-{t}"));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)?;
                let mut rng = rand::rngs::StdRng::seed_from_u64(epoch ^ u64::from(t) << 32);
                let mine = blocks / threads;
                // Mostly a hot set, sometimes anywhere: exercises hits and misses.
                for i in 0u64.. {
                    let k = if rng.gen_bool(0.8) {
                        rng.gen_range(0..mine.min(64))
                    } else {
                        rng.gen_range(0..mine)
                    };
                    let block = k * threads + t;
                    let seq = epoch * 1_000_000_000 + i;
                    let fua = rng.gen_bool(0.25);
                    engine.write(&block_data(block, t, seq), u64::from(block) * BLOCK, fua)?;
                    if i % 16 == 15 {
                        engine.flush()?;
                    }
                    Ack {
                        block,
                        thread: t,
                        seq,
                    }
                    .append(&mut log)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread")?;
    }
    Ok(())
}
