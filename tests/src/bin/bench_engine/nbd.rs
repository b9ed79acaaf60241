//! The remote-secondary benchmark: the mirror pool's full copy of a filled
//! primary to an nbdkit export over a link with a round trip of `--rtt`
//! (a delay line on loopback), against `nbdcopy --flush` copying the same
//! file to the same export through the same link (durable at its end, as
//! the engine's copy is), and plain `nbdcopy` for reference. Goal: >= 0.8 x
//! nbdcopy.

use super::*;
use tandem_tests::proxy::DelayLine;

/// nbdkit's file plugin on 127.0.0.1 at a free port, killed when dropped.
struct Nbdkit(std::process::Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nbdkit's file plugin serving `file`, after `before` (filters) and with
/// `after` (their parameters), on 127.0.0.1 at a free port.
fn nbdkit(file: &Path, before: &[&str], after: &[&str]) -> anyhow::Result<(Nbdkit, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(before)
        .arg("file")
        .arg(file)
        .args(after)
        .stdin(Stdio::null())
        .spawn()
        .context("run nbdkit (Debian's nbdkit package)")?;
    let server = Nbdkit(child);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "nbdkit did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, port))
}

pub(crate) fn nbd_bench(a: &NbdArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size = size_arg(&a.size, 1 << 30, 64 << 20, quick)?;
    let rounds = a.rounds.unwrap_or(if quick { 1 } else { 3 });
    let rtt = tandem::units::parse_duration(&a.rtt)?;
    println!(
        "\n## Remote secondary: full copy of a {} primary to an nbdkit export over a {} ms \
         round trip (a delay line on loopback), the engine's mirror pool against nbdcopy, \
         {rounds} interleaved rounds",
        format_size(size),
        rtt.as_millis()
    );
    let dir = &a.dir;
    let paths = paths_in(dir, "nbd");
    let export = dir.join("bench-nbd-export.img");
    remove_all(&paths)?;
    remove(&export)?;
    write_data_file(&paths.primary, size, 11)?;
    create_sparse(&export, size)?;
    let (server, port) = nbdkit(&export, &[], &[])?;
    let link = DelayLine::start(port, rtt / 2)?;
    let uri = format!("nbd://127.0.0.1:{}/", link.port);
    // The engine's copy is durable when it ends (each batch is flushed
    // before its regions are marked clean); `nbdcopy --flush` ends durable
    // too, with one flush at the end. Plain nbdcopy leaves the data in the
    // server's cache, so its time is not that of the same job.
    let tools = ["engine mirror pool", "nbdcopy --flush", "nbdcopy"];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 0..rounds {
        for k in 0..tools.len() {
            let i = (round + k) % tools.len();
            // The export starts blank each time.
            File::options().write(true).open(&export)?.set_len(0)?;
            File::options().write(true).open(&export)?.set_len(size)?;
            let t = if i == 0 {
                remove(&paths.record)?;
                let mut p = paths.clone();
                p.secondary = uri.clone().into();
                let config = EngineConfig::default();
                let t0 = Instant::now();
                let engine = Engine::open(p.open(&config)?, &config)?;
                ensure!(
                    engine.wait_synced(Duration::from_secs(1800)),
                    "the mirror did not catch up within 30 minutes: {:?}",
                    engine.status().last_error
                );
                let t = t0.elapsed().as_secs_f64();
                engine.shutdown()?;
                t
            } else {
                let t0 = Instant::now();
                let st = Command::new("nbdcopy")
                    .args((i == 1).then_some("--flush"))
                    .arg(&paths.primary)
                    .arg(&uri)
                    .status()
                    .context("run nbdcopy (Debian's libnbd-bin)")?;
                ensure!(st.success(), "nbdcopy: {st}");
                t0.elapsed().as_secs_f64()
            };
            ensure!(
                same_contents(&paths.primary, &export, size)?,
                "{}: the export differs from the primary after the copy",
                tools[i]
            );
            secs[i].push(t);
        }
    }
    drop(server);
    remove_all(&paths)?;
    remove(&export)?;
    println!();
    let (rows, ratios) = copier_table(
        &tools,
        &secs,
        size,
        &[(1, "vs_nbdcopy_flush"), (2, "vs_nbdcopy_no_flush")],
    );
    Ok(json!({
        "bytes": size, "rtt_ms": rtt.as_secs_f64() * 1000.0, "rounds": rounds,
        "copiers": rows, "ratios": ratios,
    }))
}

/// Host writes against a secondary slower than the host (nbdkit's delay
/// filter), with no bound, `--max-dirty` with pull-ahead, and with throttle:
/// host IOPS, the largest backlog and the largest recovery point seen.
pub(crate) fn lag_bench(a: &NbdArgs) -> anyhow::Result<Value> {
    use tandem::engine::OverMaxDirty;
    let quick = a.common.quick;
    let size: u64 = if quick { 64 << 20 } else { 256 << 20 };
    let secs = if quick { 1.0 } else { 5.0 };
    let max_dirty: u64 = size / 16;
    let block: u64 = 64 << 10;
    let threads = 4;
    println!(
        "\n## A secondary slower than the host (nbdkit, 5 ms a write): {threads} writer \
         threads of random {} writes over a {} device for {secs} s; --max-dirty {}",
        format_size(block),
        format_size(size),
        format_size(max_dirty)
    );
    let dir = &a.dir;
    let paths = paths_in(dir, "lag");
    let export = dir.join("bench-lag-export.img");
    let mut rows = Vec::new();
    println!("\n| policy | host IOPS | largest backlog | largest recovery point (s) | writes throttled |");
    println!("|---|---:|---:|---:|---:|");
    for (name, bound) in [
        ("no bound", None),
        ("pull-ahead", Some(OverMaxDirty::PullAhead)),
        ("throttle", Some(OverMaxDirty::Throttle)),
    ] {
        remove_all(&paths)?;
        remove(&export)?;
        create_sparse(&paths.primary, size)?;
        create_sparse(&export, size)?;
        let (_server, port) = nbdkit(&export, &["--filter=delay"], &["delay-write=5ms"])?;
        let mut p = paths.clone();
        p.secondary = format!("nbd://127.0.0.1:{port}/").into();
        let config = EngineConfig {
            assume_clean: true,
            max_dirty: bound.map(|_| max_dirty),
            on_max_dirty: bound.unwrap_or_default(),
            ..EngineConfig::default()
        };
        let engine = Engine::open(p.open(&config)?, &config)?;
        let stop = AtomicBool::new(false);
        let writes = std::sync::atomic::AtomicU64::new(0);
        let (mut most_dirty, mut most_lag) = (0u64, 0f64);
        std::thread::scope(|s| -> anyhow::Result<()> {
            for t in 0..threads {
                let (engine, stop, writes) = (&engine, &stop, &writes);
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                    let mut buf = vec![0u8; block as usize];
                    fill_pattern(&mut buf, t as u64);
                    while !stop.load(Ordering::Relaxed) {
                        let at = rng.gen_range(0..size / block) * block;
                        engine.write(&buf, at, false).expect("host write");
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                std::thread::sleep(Duration::from_millis(20));
                let st = engine.status();
                most_dirty = most_dirty.max(st.dirty_bytes);
                most_lag = most_lag.max(st.lag_seconds);
            }
            stop.store(true, Ordering::Relaxed);
            Ok(())
        })?;
        let iops = writes.load(Ordering::Relaxed) as f64 / secs;
        let throttled = engine.status().max_dirty.map_or(0, |m| m.throttled_writes);
        ensure!(
            engine.wait_synced(Duration::from_secs(600)),
            "{name}: the mirror did not catch up"
        );
        engine.shutdown()?;
        drop(engine);
        ensure!(
            same_contents(&paths.primary, &export, size)?,
            "{name}: the export differs from the primary"
        );
        println!(
            "| {name} | {iops:.0} | {} | {most_lag:.2} | {throttled} |",
            format_size(most_dirty)
        );
        rows.push(json!({
            "policy": name, "host_iops": iops, "largest_backlog_bytes": most_dirty,
            "largest_recovery_point_seconds": most_lag, "throttled_writes": throttled,
        }));
    }
    remove_all(&paths)?;
    remove(&export)?;
    Ok(json!({ "bytes": size, "max_dirty": max_dirty, "seconds": secs, "runs": rows }))
}
