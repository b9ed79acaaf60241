//! The recovery benchmark: what a SIGKILL under load (the `engine-load`
//! child, as in the crash test) makes the record resync, against a full resync.

use super::*;
use tandem::dev::Cache;
use tandem::mirror::MirrorConfig;
use tandem_tests::load::{LoadArgs, Mix};

/// Opens the engine over a new record without assume_clean and times the
/// full copy. Returns (bytes, seconds).
pub(crate) fn full_resync(paths: &Paths, size: u64) -> anyhow::Result<(u64, f64)> {
    remove(&paths.record)?;
    let config = EngineConfig::default();
    let t0 = Instant::now();
    let engine = Engine::open(paths.open(&config)?, &config)?;
    ensure!(
        engine.wait_synced(Duration::from_secs(3600)),
        "full resync did not finish"
    );
    let secs = t0.elapsed().as_secs_f64();
    let bytes = engine.status().resync_total_bytes;
    ensure!(
        bytes == size,
        "a full resync covered {bytes} of {size} bytes"
    );
    engine.shutdown()?;
    Ok((bytes, secs))
}

pub(crate) fn recovery_bench(a: &RecoveryArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size = size_arg(&a.size, 4 << 30, 512 << 20, quick)?;
    let capacities: Vec<u64> = if a.capacities.is_empty() {
        if quick {
            vec![size / 16, size / 4]
        } else {
            vec![256 << 20, 1 << 30]
        }
    } else {
        a.capacities
            .iter()
            .map(|c| parse_size(c))
            .collect::<Result<_, _>>()?
    };
    let kill_after = a.kill_after.unwrap_or(if quick { 1.0 } else { 5.0 });
    let started = Instant::now();
    println!(
        "\n## Recovery after SIGKILL under load: {} device in {} ({}), {} writer threads \
         (90% random 4 KiB in the first eighth, 10% sequential 64 KiB streams, flush every 128), \
         killed after {kill_after} s; 1 MiB regions, predictive",
        format_size(size),
        a.dir.display(),
        df_of(&a.dir),
        a.threads
    );
    let paths = paths_in(&a.dir, "recovery");
    remove_all(&paths)?;
    write_data_file(&paths.primary, size, 3)?;
    create_sparse(&paths.secondary, size)?;
    // The first full copy makes the pair identical (and allocates the secondary).
    let (_, first_full) = full_resync(&paths, size)?;
    // The engine-under-load child is built beside this benchmark.
    let child_exe = std::env::current_exe()?.with_file_name("engine-load");
    ensure!(
        child_exe.exists(),
        "{} is missing: build it with cargo build --release -p tandem-tests --bins",
        child_exe.display()
    );
    let mut rows = Vec::new();
    for (i, &capacity) in capacities.iter().enumerate() {
        let load = LoadArgs {
            primary: paths.primary.clone(),
            secondary: paths.secondary.clone(),
            record: paths.record.clone(),
            mix: Mix::Streams,
            log_dir: None,
            threads: a.threads,
            seed: i as u64 + 1,
            policy: "predictive".into(),
            cache: Cache::None,
            region_size: EngineConfig::default().region_size,
            capacity,
            mirror_threads: MirrorConfig::default().threads,
            ..LoadArgs::stamped(&a.dir, a.threads)
        };
        let mut child = Command::new(&child_exe)
            .args(load.args())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", child_exe.display()))?;
        let last = follow_status(child.stdout.take().unwrap()).map_err(|e| anyhow!(e))?;
        std::thread::sleep(Duration::from_secs_f64(kill_after));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait()?;
        if status.signal() != Some(libc::SIGKILL) {
            bail!("engine-load ended by itself ({status}) before the kill: see its stderr");
        }
        let [record_before, dirty_before, writes_before] = match last.join().unwrap()[..] {
            [r, d, w] => [r, d, w],
            _ => [0, 0, 0],
        };
        let config = load.config();
        let t0 = Instant::now();
        let engine = Engine::open(paths.open(&config)?, &config)?;
        let st = engine.status();
        ensure!(
            engine.wait_synced(Duration::from_secs(3600)),
            "resync did not finish"
        );
        let secs = t0.elapsed().as_secs_f64();
        engine.shutdown()?;
        drop(engine);
        let t1 = Instant::now();
        ensure!(
            same_contents(&paths.primary, &paths.secondary, size)?,
            "primary and secondary differ after the resync"
        );
        let verify = t1.elapsed().as_secs_f64();
        rows.push(json!({
            "capacity": capacity,
            "writes_before_kill": writes_before,
            "record_bytes_before_kill": record_before,
            "dirty_bytes_before_kill": dirty_before,
            "start": format!("{:?}", st.start),
            "resync_bytes": st.resync_total_bytes,
            "resync_seconds": secs,
            "verify_seconds": verify,
        }));
    }
    let (_, last_full) = full_resync(&paths, size)?;
    remove_all(&paths)?;
    let full = spread(&[first_full, last_full]);
    println!("\n| capacity | writes before kill | record / dirty ~50 ms before kill | resynced | resync s | MiB/s | vs full resync (bytes, time) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let bytes = r["resync_bytes"].as_u64().unwrap();
        let secs = r["resync_seconds"].as_f64().unwrap();
        println!(
            "| {} | {} | {} / {} | {} | {:.2} | {:.0} | {:.3}, {:.3} |",
            format_size(r["capacity"].as_u64().unwrap()),
            r["writes_before_kill"],
            format_size(r["record_bytes_before_kill"].as_u64().unwrap()),
            format_size(r["dirty_bytes_before_kill"].as_u64().unwrap()),
            format_size(bytes),
            secs,
            bytes as f64 / MIB / secs,
            bytes as f64 / size as f64,
            secs / full.median,
        );
    }
    println!(
        "| full-device resync (fresh record) | | | {} | {:.2} (first {:.2}, last {:.2}) | {:.0} | 1, 1 |",
        format_size(size),
        full.median,
        first_full,
        last_full,
        size as f64 / MIB / full.median
    );
    println!(
        "\n(recovery wall time {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(json!({
        "dir": a.dir, "filesystem": df_of(&a.dir), "device_bytes": size, "threads": a.threads,
        "kill_after_seconds": kill_after, "crashes": rows,
        "full_resync_seconds": { "first": first_full, "last": last_full },
        "wall_seconds": started.elapsed().as_secs_f64(),
    }))
}
