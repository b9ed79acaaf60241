//! The load benchmark: raw io_uring against engine passthrough against the mirrored engine.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Raw,
    Passthrough,
    Mirrored,
    /// Mirrored with the write-data buffer off (`--copy-buffer 0`): every
    /// copy reads the primary back, as before the buffer.
    ReadBack,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Raw, Mode::Passthrough, Mode::Mirrored, Mode::ReadBack];

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "a_raw_io_uring",
            Mode::Passthrough => "b_engine_passthrough",
            Mode::Mirrored => "c_engine_mirrored",
            Mode::ReadBack => "d_engine_mirrored_read_back",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Raw => "(a) raw io_uring",
            Mode::Passthrough => "(b) engine passthrough",
            Mode::Mirrored => "(c) engine mirror+record",
            Mode::ReadBack => "(d) as (c), copy buffer off",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) block: u64,
    pub(crate) random: bool,
}

pub(crate) const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "rand-4k-qd32",
        block: 4096,
        random: true,
    },
    Workload {
        name: "seq-128k-qd32",
        block: 128 << 10,
        random: false,
    },
];

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RunResult {
    pub(crate) mib_s: f64,
    pub(crate) iops: f64,
    pub(crate) lat_p50_us: f64,
    pub(crate) lat_p99_us: f64,
    pub(crate) cpu_us_per_write: f64,
    /// Engine figures at the end of a mirrored run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) engine: Option<Value>,
}

/// Runs `threads` writers for `dur`, each with one write in flight, through
/// `write`; thread `t`'s buffer and stream are its own.
pub(crate) fn drive(
    threads: usize,
    dur: Duration,
    wl: Workload,
    size: u64,
    write: &(dyn Fn(&[u8], u64) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<RunResult> {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let blocks = size / wl.block;
    let stripe = blocks / threads as u64;
    ensure!(
        stripe > 0,
        "device too small for {threads} streams of {}",
        wl.block
    );
    let cpu0 = cpu_seconds();
    let (elapsed, per_thread) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, start) = (&stop, &start);
                s.spawn(move || -> anyhow::Result<(u64, Vec<u32>)> {
                    let mut buf = AlignedBuf::zeroed(wl.block as usize);
                    fill_pattern(&mut buf, t as u64 + 1);
                    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbe7c_4000 + t as u64);
                    let mut lat = Vec::with_capacity(1 << 16);
                    let first = t as u64 * stripe;
                    let mut next = 0u64;
                    start.wait();
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let block = if wl.random {
                            rng.gen_range(0..blocks)
                        } else {
                            let b = first + next;
                            next = (next + 1) % stripe;
                            b
                        };
                        let t0 = Instant::now();
                        write(&buf, block * wl.block)?;
                        lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                        ops += 1;
                    }
                    Ok((ops, lat))
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (t0.elapsed(), results)
    });
    let cpu = cpu_seconds() - cpu0;
    let mut ops = 0u64;
    let mut lat = Vec::new();
    for r in per_thread {
        let (n, l) = r?;
        ops += n;
        lat.extend(l);
    }
    lat.sort_unstable();
    let secs = elapsed.as_secs_f64();
    Ok(RunResult {
        mib_s: (ops * wl.block) as f64 / MIB / secs,
        iops: ops as f64 / secs,
        lat_p50_us: percentile(&lat, 0.5) / 1000.0,
        lat_p99_us: percentile(&lat, 0.99) / 1000.0,
        cpu_us_per_write: cpu * 1e6 / ops.max(1) as f64,
        engine: None,
    })
}

pub(crate) fn engine_config(passthrough: bool) -> EngineConfig {
    EngineConfig {
        assume_clean: true,
        passthrough,
        ..EngineConfig::default()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run_mode(
    mode: Mode,
    paths: &Paths,
    wl: Workload,
    size: u64,
    threads: usize,
    dur: Duration,
    mirror: &MirrorArgs,
    direct_seen: &Mutex<Vec<String>>,
) -> anyhow::Result<RunResult> {
    match mode {
        Mode::Raw => {
            let (file, direct) = open_direct(&paths.primary)?;
            note_direct(direct_seen, "raw primary", direct);
            let fd = file.as_raw_fd();
            drive(threads, dur, wl, size, &|buf, off| {
                with_thread_ring(|r| r.write_at(fd, buf, off, RwFlags::NONE))?;
                Ok(())
            })
        }
        Mode::Passthrough | Mode::Mirrored | Mode::ReadBack => {
            // A new record each run: the mirrored engine starts with nothing
            // to copy, and passthrough's all-set record never leaks into it.
            remove(&paths.record)?;
            let mut config = engine_config(mode == Mode::Passthrough);
            mirror.apply(&mut config)?;
            if mode == Mode::ReadBack {
                config.mirror.copy_buffer = 0;
            }
            let engine = Engine::open(paths.open(&config)?, &config)?;
            note_direct(direct_seen, "engine primary", engine.primary().direct());
            let mut r = drive(threads, dur, wl, size, &|buf, off| {
                engine.write(buf, off, false)?;
                Ok(())
            })?;
            if mode != Mode::Passthrough {
                let s = engine.status();
                r.engine = Some(json!({
                    "writes": s.writes,
                    "record_updates": s.record_updates,
                    "updates_per_1000_writes": s.updates_per_1000_writes,
                    "record_bytes": s.record_bytes,
                    "dirty_bytes": s.dirty_bytes,
                    "bytes_copied": s.bytes_copied,
                    "copy_read_back_bytes": s.copy_read_back_bytes,
                    "copy_from_buffer_bytes": s.copy_from_buffer_bytes,
                    "lag_seconds": s.lag_seconds,
                    "degraded": s.degraded,
                }));
            }
            engine.shutdown()?;
            Ok(r)
        }
    }
}

pub(crate) fn note_direct(seen: &Mutex<Vec<String>>, what: &str, direct: bool) {
    let line = format!("{what}: {}", if direct { "O_DIRECT" } else { "buffered" });
    let mut s = seen.lock().unwrap();
    if !s.contains(&line) {
        s.push(line);
    }
}

pub(crate) fn load_bench(a: &LoadArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let secs = a.secs.unwrap_or(if quick { 0.5 } else { 5.0 });
    let rounds = a.rounds.unwrap_or(if quick { 3 } else { 5 });
    let size = size_arg(&a.size, 2 << 30, 256 << 20, quick)?;
    let dur = Duration::from_secs_f64(secs);
    let mut out = Vec::new();
    println!(
        "\n## Load: {} writer threads (QD{}), {secs} s per run, {rounds} interleaved rounds, \
         device {}, engine: 1 MiB regions, capacity 1 GiB, predictive, {}",
        a.threads,
        a.threads,
        format_size(size),
        a.mirror.describe()
    );
    for dir in &a.dirs {
        let started = Instant::now();
        let mut paths = paths_in(dir, "load");
        if let Some(sd) = &a.mirror.secondary_dir {
            paths.secondary = sd.join("bench-load-secondary.img");
        }
        remove_all(&paths)?;
        write_data_file(&paths.primary, size, 1)?;
        write_data_file(&paths.secondary, size, 1)?;
        let direct_seen = Mutex::new(Vec::new());
        let mut rows = Vec::new();
        let workloads = WORKLOADS
            .iter()
            .filter(|w| a.workloads.is_empty() || a.workloads.iter().any(|n| n == w.name));
        for &wl in workloads {
            let n = Mode::ALL.len();
            let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); n];
            for round in 0..rounds {
                for k in 0..n {
                    let mode = Mode::ALL[(round + k) % n];
                    let r = run_mode(
                        mode,
                        &paths,
                        wl,
                        size,
                        a.threads,
                        dur,
                        &a.mirror,
                        &direct_seen,
                    )
                    .with_context(|| format!("{} {} in {}", wl.name, mode.name(), dir.display()))?;
                    runs[mode as usize].push(r);
                }
            }
            rows.push((wl, runs));
        }
        remove_all(&paths)?;
        println!(
            "\n### {} ({}; {})\n",
            dir.display(),
            df_of(dir),
            direct_seen.lock().unwrap().join(", ")
        );
        println!(
            "| workload | mode | MiB/s median | min | max | IOPS median | p50 µs | p99 µs | CPU µs/write | vs (a) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut dir_json = Vec::new();
        let mut ratio_lines = String::new();
        for (wl, runs) in &rows {
            let raw = spread(&runs[0].iter().map(|r| r.mib_s).collect::<Vec<_>>());
            let mut wl_json = json!({ "workload": wl.name });
            for mode in Mode::ALL {
                let rs = &runs[mode as usize];
                let mb = spread(&rs.iter().map(|r| r.mib_s).collect::<Vec<_>>());
                let iops = spread(&rs.iter().map(|r| r.iops).collect::<Vec<_>>());
                let p50 = spread(&rs.iter().map(|r| r.lat_p50_us).collect::<Vec<_>>());
                let p99 = spread(&rs.iter().map(|r| r.lat_p99_us).collect::<Vec<_>>());
                let cpu = spread(&rs.iter().map(|r| r.cpu_us_per_write).collect::<Vec<_>>());
                println!(
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} |",
                    wl.name,
                    mode.label(),
                    mb.median,
                    mb.min,
                    mb.max,
                    iops.median,
                    p50.median,
                    p99.median,
                    cpu.median,
                    mb.median / raw.median
                );
                wl_json[mode.name()] = json!({
                    "mib_s": mb, "iops": iops, "lat_p50_us": p50, "lat_p99_us": p99,
                    "cpu_us_per_write": cpu, "runs": rs,
                });
            }
            // Ratios of medians, and the range of the per-round ratios
            // (each round runs the modes back to back).
            for (mode, goal) in [
                (Mode::Passthrough, None),
                (Mode::Mirrored, Some(0.9)),
                (Mode::ReadBack, None),
            ] {
                let per_round: Vec<f64> = runs[mode as usize]
                    .iter()
                    .zip(&runs[0])
                    .map(|(m, r)| m.mib_s / r.mib_s)
                    .collect();
                let pr = spread(&per_round);
                let ratio = spread(
                    &runs[mode as usize]
                        .iter()
                        .map(|r| r.mib_s)
                        .collect::<Vec<_>>(),
                )
                .median
                    / raw.median;
                let verdict = match goal {
                    Some(g) if ratio >= g => format!(" (goal >= {g}: met)"),
                    Some(g) => format!(" (goal >= {g}: MISSED by {:.0}%)", (g - ratio) / g * 100.0),
                    None => String::new(),
                };
                let key = match mode {
                    Mode::Mirrored => "c",
                    Mode::ReadBack => "d",
                    _ => "b",
                };
                writeln!(
                    ratio_lines,
                    "- {} ({key})/(a) = {ratio:.3}{verdict}; per round {:.3}..{:.3}",
                    wl.name, pr.min, pr.max
                )
                .unwrap();
                wl_json[format!("ratio_{key}_over_a")] = json!({
                    "of_medians": ratio, "per_round": pr, "goal": goal,
                });
            }
            for (mode, key) in [(Mode::Mirrored, "c"), (Mode::ReadBack, "d")] {
                let engines: Vec<&Value> = runs[mode as usize]
                    .iter()
                    .filter_map(|r| r.engine.as_ref())
                    .collect();
                // Bytes read back from the primary per byte copied, over all
                // rounds.
                let sum = |k: &str| {
                    engines
                        .iter()
                        .map(|e| e[k].as_u64().unwrap_or(0))
                        .sum::<u64>()
                };
                let read_back =
                    sum("copy_read_back_bytes") as f64 / sum("bytes_copied").max(1) as f64;
                wl_json[format!("read_back_per_copied_{key}")] = json!(read_back);
                if let Some(e) = engines.last() {
                    writeln!(
                        ratio_lines,
                        "  - {} ({key}): {read_back:.3} bytes read back from the primary per byte \
                         mirrored (all rounds); last round's engine: {} writes, {} record updates \
                         ({:.2}/1000), record {}, dirty {} at the end, {} copied ({} from the \
                         write buffer), lag {:.2} s",
                        wl.name,
                        e["writes"],
                        e["record_updates"],
                        e["updates_per_1000_writes"].as_f64().unwrap_or(0.0),
                        format_size(e["record_bytes"].as_u64().unwrap_or(0)),
                        format_size(e["dirty_bytes"].as_u64().unwrap_or(0)),
                        format_size(e["bytes_copied"].as_u64().unwrap_or(0)),
                        format_size(e["copy_from_buffer_bytes"].as_u64().unwrap_or(0)),
                        e["lag_seconds"].as_f64().unwrap_or(0.0),
                    )
                    .unwrap();
                }
            }
            dir_json.push(wl_json);
        }
        println!("\n{ratio_lines}");
        println!(
            "({} wall time: {:.1} s)",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        out.push(json!({
            "dir": dir, "filesystem": df_of(dir), "io": *direct_seen.lock().unwrap(),
            "mirror": a.mirror.describe(),
            "device_bytes": size, "threads": a.threads, "secs_per_run": secs, "rounds": rounds,
            "workloads": dir_json, "wall_seconds": started.elapsed().as_secs_f64(),
        }));
    }
    Ok(Value::Array(out))
}
