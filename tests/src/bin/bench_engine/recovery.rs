//! The recovery benchmark: what a SIGKILL under load makes the record resync, against a full resync; and the engine-under-load child it kills.

use super::*;

/// The child's load: 90% random 4 KiB writes in a hot zone (the first eighth
/// of the device), 10% each thread's own sequential 64 KiB stream elsewhere
/// (a log); a flush every 128 writes per thread.
pub(crate) fn crash_child(a: &ChildArgs) -> anyhow::Result<()> {
    let paths = Paths {
        primary: a.primary.clone(),
        secondary: a.secondary.clone(),
        record: a.record.clone(),
    };
    let config = EngineConfig {
        capacity: a.capacity,
        ..engine_config(false)
    };
    let engine = Arc::new(Engine::open(paths.open(&config)?, &config)?);
    let size = engine.geometry().device_size();
    let hot_blocks = size / 8 / 4096;
    let cold = size - size / 8;
    let stream_len = cold / a.threads as u64 / (64 << 10) * (64 << 10);
    ensure!(stream_len > 0, "device too small for {} streams", a.threads);
    println!("ready");
    std::io::stdout().flush()?;
    {
        let engine = engine.clone();
        std::thread::spawn(move || loop {
            let s = engine.status();
            println!("status {} {} {}", s.record_bytes, s.dirty_bytes, s.writes);
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    let handles: Vec<_> = (0..a.threads)
        .map(|t| {
            let engine = engine.clone();
            let seed = a.seed;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (t as u64) << 32);
                let mut small = AlignedBuf::zeroed(4096);
                let mut big = AlignedBuf::zeroed(64 << 10);
                fill_pattern(&mut small, seed + t as u64);
                fill_pattern(&mut big, seed + t as u64 + 1000);
                let stream_start = size / 8 + t as u64 * stream_len;
                let mut pos = 0u64;
                for i in 0u64.. {
                    if rng.gen_bool(0.9) {
                        let off = rng.gen_range(0..hot_blocks) * 4096;
                        engine.write(&small, off, false)?;
                    } else {
                        engine.write(&big, stream_start + pos, false)?;
                        pos = (pos + (64 << 10)) % stream_len;
                    }
                    if i % 128 == 127 {
                        engine.flush()?;
                    }
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
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for (i, &capacity) in capacities.iter().enumerate() {
        let mut child = Command::new(&exe)
            .arg("crash-child")
            .args([&paths.primary, &paths.secondary, &paths.record])
            .args([
                capacity.to_string(),
                a.threads.to_string(),
                (i as u64 + 1).to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn crash-child")?;
        let last = follow_status(child.stdout.take().unwrap()).map_err(|e| anyhow!(e))?;
        std::thread::sleep(Duration::from_secs_f64(kill_after));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait()?;
        if status.signal() != Some(libc::SIGKILL) {
            bail!("crash-child ended by itself ({status}) before the kill");
        }
        let [record_before, dirty_before, writes_before] = match last.join().unwrap()[..] {
            [r, d, w] => [r, d, w],
            _ => [0, 0, 0],
        };
        let config = EngineConfig {
            capacity,
            ..engine_config(false)
        };
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
