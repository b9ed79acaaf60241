//! Benchmarks of the engine on the host, over files.
//!
//! - `load`: writer threads drive (a) raw io_uring writes to the primary file,
//!   (b) the engine in passthrough mode (mirror and record off), (c) the
//!   engine with mirror and record; 4 KiB random and 128 KiB sequential
//!   writes, fixed duration, interleaved rounds, medians with min and max.
//!   Goal: (c) >= 0.9 x (a).
//! - `catchup`: the mirror pool's full initial copy of a filled primary,
//!   against `dd` copying the same file. Goal: >= 0.8 x dd.
//! - `recovery`: SIGKILL a child running the engine under load, reopen, and
//!   measure what the record makes it resync, against a full-device resync.
//! - `all`: the three in a row, one table each, one JSON file.
//!
//! `scripts/bench-host` builds in release and runs everything.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rings::{with_thread_ring, AlignedBuf, RwFlags};
use serde_json::{json, Value};
use tandem::engine::{Engine, EngineConfig, Paths};
use tandem::units::{format_size, parse_size};
use tandem_tests::follow_status;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Parser)]
#[command(
    name = "bench-engine",
    about = "Benchmarks of the tandem engine over files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load, catch-up and recovery in a row.
    All(AllArgs),
    /// Throughput of raw io_uring, passthrough and mirrored engine.
    Load(LoadArgs),
    /// The mirror pool's full copy against dd.
    Catchup(CatchupArgs),
    /// Resync after SIGKILL under load against a full-device resync.
    Recovery(RecoveryArgs),
    /// Internal: the engine under load until killed (run by `recovery`).
    #[command(hide = true)]
    CrashChild(ChildArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Short runs and small files (a smoke run of well under a minute).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct LoadArgs {
    #[command(flatten)]
    common: Common,
    /// Directories to put the files in (each is benchmarked); e.g. /dev/shm /tmp.
    #[arg(long = "dir", required = true)]
    dirs: Vec<PathBuf>,
    /// Seconds per run [default: 5, quick 0.5].
    #[arg(long)]
    secs: Option<f64>,
    /// Rounds (each runs every mode once, in rotated order) [default: 5, quick 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Device size [default: 2GiB, quick 256MiB].
    #[arg(long)]
    size: Option<String>,
    /// Writer threads, each with one write in flight: the queue depth.
    #[arg(long, default_value_t = 32)]
    threads: usize,
    /// Only these workloads (rand-4k-qd32, seq-128k-qd32).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    #[command(flatten)]
    mirror: MirrorArgs,
}

/// Mirror settings for experiments; the defaults are the engine's.
#[derive(Args, Clone, Default)]
struct MirrorArgs {
    /// Put the secondary in this directory instead (e.g. another device).
    #[arg(long)]
    secondary_dir: Option<PathBuf>,
    /// Mirror threads [engine default: 2].
    #[arg(long)]
    mirror_threads: Option<usize>,
    /// Mirror bandwidth cap, e.g. 200MiB (per second) [engine default: none].
    #[arg(long)]
    mirror_max_rate: Option<String>,
    /// Largest extent one copy moves [engine default: 4MiB].
    #[arg(long)]
    mirror_max_copy: Option<String>,
    /// How long copies may wait under heavy host I/O, e.g. 0 or 10s [engine default: 10s].
    #[arg(long)]
    mirror_max_lag: Option<String>,
}

impl MirrorArgs {
    fn apply(&self, config: &mut EngineConfig) -> anyhow::Result<()> {
        if let Some(t) = self.mirror_threads {
            config.mirror.threads = t;
        }
        if let Some(r) = &self.mirror_max_rate {
            config.mirror.max_rate = Some(parse_size(r)?);
        }
        if let Some(c) = &self.mirror_max_copy {
            config.mirror.max_copy_bytes = parse_size(c)?;
        }
        if let Some(l) = &self.mirror_max_lag {
            config.mirror.max_lag = tandem::units::parse_duration(l)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut d = Vec::new();
        if let Some(dir) = &self.secondary_dir {
            d.push(format!("secondary in {}", dir.display()));
        }
        if let Some(t) = self.mirror_threads {
            d.push(format!("{t} mirror threads"));
        }
        if let Some(l) = &self.mirror_max_lag {
            d.push(format!("mirror max lag {l}"));
        }
        if let Some(r) = &self.mirror_max_rate {
            d.push(format!("mirror rate cap {r}/s"));
        }
        if let Some(c) = &self.mirror_max_copy {
            d.push(format!("mirror max copy {c}"));
        }
        if d.is_empty() {
            "default mirror config".into()
        } else {
            d.join(", ")
        }
    }
}

#[derive(Args, Clone)]
struct CatchupArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long = "dir", required = true)]
    dirs: Vec<PathBuf>,
    /// Bytes to copy [default: 1GiB, quick 128MiB].
    #[arg(long)]
    size: Option<String>,
    /// Rounds [default: 5, quick 2].
    #[arg(long)]
    rounds: Option<usize>,
}

#[derive(Args, Clone)]
struct RecoveryArgs {
    #[command(flatten)]
    common: Common,
    /// Directory on a real disk.
    #[arg(long)]
    dir: PathBuf,
    /// Device size [default: 4GiB, quick 512MiB].
    #[arg(long)]
    size: Option<String>,
    /// Record capacities [default: 256MiB,1GiB; quick: a 16th and a quarter of the device].
    #[arg(long, value_delimiter = ',')]
    capacities: Vec<String>,
    /// Seconds of load before the kill [default: 5, quick 1].
    #[arg(long)]
    kill_after: Option<f64>,
    /// Writer threads of the killed child.
    #[arg(long, default_value_t = 32)]
    threads: usize,
}

#[derive(Args, Clone)]
struct AllArgs {
    #[command(flatten)]
    common: Common,
    /// Directories for load and catch-up.
    #[arg(long = "dir", required = true)]
    dirs: Vec<PathBuf>,
    /// Directory on a real disk for the recovery runs.
    #[arg(long)]
    disk_dir: PathBuf,
    /// Criterion's output directory (target/criterion): its figures join the report.
    #[arg(long)]
    criterion: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ChildArgs {
    primary: PathBuf,
    secondary: PathBuf,
    record: PathBuf,
    capacity: u64,
    threads: usize,
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().cmd {
        Cmd::All(a) => {
            let mut report = json!({});
            if let Some(dir) = &a.criterion {
                report["record"] = criterion_report(dir)?;
            }
            let load = LoadArgs {
                common: a.common.clone(),
                dirs: a.dirs.clone(),
                secs: None,
                rounds: None,
                size: None,
                threads: 32,
                workloads: Vec::new(),
                mirror: MirrorArgs::default(),
            };
            report["load"] = load_bench(&load)?;
            let catchup = CatchupArgs {
                common: a.common.clone(),
                dirs: a.dirs.clone(),
                size: None,
                rounds: None,
            };
            report["catchup"] = catchup_bench(&catchup)?;
            let recovery = RecoveryArgs {
                common: a.common.clone(),
                dir: a.disk_dir.clone(),
                size: None,
                capacities: Vec::new(),
                kill_after: None,
                threads: 32,
            };
            report["recovery"] = recovery_bench(&recovery)?;
            write_json(&a.common, &report)
        }
        Cmd::Load(a) => {
            let r = load_bench(&a)?;
            write_json(&a.common, &json!({ "load": r }))
        }
        Cmd::Catchup(a) => {
            let r = catchup_bench(&a)?;
            write_json(&a.common, &json!({ "catchup": r }))
        }
        Cmd::Recovery(a) => {
            let r = recovery_bench(&a)?;
            write_json(&a.common, &json!({ "recovery": r }))
        }
        Cmd::CrashChild(a) => crash_child(&a),
    }
}

fn write_json(common: &Common, report: &Value) -> anyhow::Result<()> {
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

fn size_arg(given: &Option<String>, full: u64, quick: u64, is_quick: bool) -> anyhow::Result<u64> {
    match given {
        Some(s) => Ok(parse_size(s)?),
        None => Ok(if is_quick { quick } else { full }),
    }
}

// ---------------------------------------------------------------------------
// Files and small helpers

/// The three files of one mirrored device in `dir`.
fn paths_in(dir: &Path, tag: &str) -> Paths {
    Paths {
        primary: dir.join(format!("bench-{tag}-primary.img")),
        secondary: dir.join(format!("bench-{tag}-secondary.img")),
        record: dir.join(format!("bench-{tag}-record")),
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_all(p: &Paths) -> anyhow::Result<()> {
    remove(&p.primary)?;
    remove(&p.secondary)?;
    remove(&p.record)
}

/// Deterministic non-zero bytes, different for every `seed`.
fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `size` bytes of data to `path` (allocating every block), synced,
/// and drops it from the page cache.
fn write_data_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], seed ^ done);
        f.write_all(&buf[..n])?;
        done += n as u64;
    }
    f.sync_all()?;
    drop_cache(&f);
    Ok(())
}

fn create_sparse(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(size)?;
    f.sync_all()?;
    Ok(())
}

fn drop_cache(f: &File) {
    // SAFETY: posix_fadvise only takes integers; the fd is open.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Whether two files hold the same first `len` bytes.
fn same_contents(a: &Path, b: &Path, len: u64) -> anyhow::Result<bool> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 8 << 20];
    let mut bb = vec![0u8; 8 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        done += n as u64;
    }
    drop_cache(&fa);
    drop_cache(&fb);
    Ok(true)
}

/// Opens `path` for writing with O_DIRECT when the file system allows.
fn open_direct(path: &Path) -> anyhow::Result<(File, bool)> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e).with_context(|| format!("open {}", path.display())),
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain old data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Median, min and max.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(v: &[f64]) -> Spread {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i])
}

fn df_of(dir: &Path) -> String {
    Command::new("df")
        .args(["-hT", &dir.to_string_lossy()])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Load

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Passthrough,
    Mirrored,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Raw, Mode::Passthrough, Mode::Mirrored];

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "a_raw_io_uring",
            Mode::Passthrough => "b_engine_passthrough",
            Mode::Mirrored => "c_engine_mirrored",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Raw => "(a) raw io_uring",
            Mode::Passthrough => "(b) engine passthrough",
            Mode::Mirrored => "(c) engine mirror+record",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    block: u64,
    random: bool,
}

const WORKLOADS: [Workload; 2] = [
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
struct RunResult {
    mib_s: f64,
    iops: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    cpu_us_per_write: f64,
    /// Engine figures at the end of a mirrored run.
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<Value>,
}

/// Runs `threads` writers for `dur`, each with one write in flight, through
/// `write`; thread `t`'s buffer and stream are its own.
fn drive(
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

fn engine_config(passthrough: bool) -> EngineConfig {
    EngineConfig {
        assume_clean: true,
        passthrough,
        ..EngineConfig::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn run_mode(
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
        Mode::Passthrough | Mode::Mirrored => {
            // A new record each run: the mirrored engine starts with nothing
            // to copy, and passthrough's all-set record never leaks into it.
            remove(&paths.record)?;
            let mut config = engine_config(mode == Mode::Passthrough);
            mirror.apply(&mut config)?;
            let engine = Engine::open(paths.open(&config)?, &config)?;
            note_direct(direct_seen, "engine primary", engine.primary().direct());
            let mut r = drive(threads, dur, wl, size, &|buf, off| {
                engine.write(buf, off, false)?;
                Ok(())
            })?;
            if mode == Mode::Mirrored {
                let s = engine.status();
                r.engine = Some(json!({
                    "writes": s.writes,
                    "record_updates": s.record_updates,
                    "updates_per_1000_writes": s.updates_per_1000_writes,
                    "record_bytes": s.record_bytes,
                    "dirty_bytes": s.dirty_bytes,
                    "bytes_copied": s.bytes_copied,
                    "lag_seconds": s.lag_seconds,
                    "degraded": s.degraded,
                }));
            }
            engine.shutdown()?;
            Ok(r)
        }
    }
}

fn note_direct(seen: &Mutex<Vec<String>>, what: &str, direct: bool) {
    let line = format!("{what}: {}", if direct { "O_DIRECT" } else { "buffered" });
    let mut s = seen.lock().unwrap();
    if !s.contains(&line) {
        s.push(line);
    }
}

fn load_bench(a: &LoadArgs) -> anyhow::Result<Value> {
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
            let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); 3];
            for round in 0..rounds {
                for k in 0..3 {
                    let mode = Mode::ALL[(round + k) % 3];
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
            for (mode, goal) in [(Mode::Passthrough, None), (Mode::Mirrored, Some(0.9))] {
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
                let key = if mode == Mode::Mirrored { "c" } else { "b" };
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
            let last: Vec<&Value> = runs[Mode::Mirrored as usize]
                .iter()
                .filter_map(|r| r.engine.as_ref())
                .collect();
            if let Some(e) = last.last() {
                writeln!(
                    ratio_lines,
                    "  - {} (c), last round's engine: {} writes, {} record updates ({:.2}/1000), \
                     record {}, dirty {} at the end, {} copied, lag {:.2} s",
                    wl.name,
                    e["writes"],
                    e["record_updates"],
                    e["updates_per_1000_writes"].as_f64().unwrap_or(0.0),
                    format_size(e["record_bytes"].as_u64().unwrap_or(0)),
                    format_size(e["dirty_bytes"].as_u64().unwrap_or(0)),
                    format_size(e["bytes_copied"].as_u64().unwrap_or(0)),
                    e["lag_seconds"].as_f64().unwrap_or(0.0),
                )
                .unwrap();
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

// ---------------------------------------------------------------------------
// Catch-up

fn catchup_bench(a: &CatchupArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size = size_arg(&a.size, 1 << 30, 128 << 20, quick)?;
    let rounds = a.rounds.unwrap_or(if quick { 2 } else { 5 });
    println!(
        "\n## Mirror catch-up: full initial copy of a {} primary (new record, no assume_clean; \
         default mirror config) against dd bs=4M, {rounds} interleaved rounds",
        format_size(size)
    );
    let mut out = Vec::new();
    for dir in &a.dirs {
        let started = Instant::now();
        let paths = paths_in(dir, "catchup");
        let copy = dir.join("bench-catchup-copy.img");
        remove_all(&paths)?;
        remove(&copy)?;
        write_data_file(&paths.primary, size, 7)?;
        let primary = paths.primary.to_string_lossy().to_string();
        let of = format!("of={}", copy.display());
        let if_ = format!("if={primary}");
        let dd_plain: Vec<String> = [&if_, &of, "bs=4M", "oflag=direct", "conv=fsync"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut dd_direct = dd_plain.clone();
        dd_direct.push("iflag=direct".into());
        let tools: [(&str, Option<&Vec<String>>); 3] = [
            ("engine mirror pool", None),
            ("dd oflag=direct conv=fsync", Some(&dd_plain)),
            ("dd iflag=direct oflag=direct conv=fsync", Some(&dd_direct)),
        ];
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut copied = 0;
        for round in 0..rounds {
            for k in 0..tools.len() {
                let i = (round + k) % tools.len();
                let t = match tools[i].1 {
                    None => {
                        remove(&paths.secondary)?;
                        remove(&paths.record)?;
                        create_sparse(&paths.secondary, size)?;
                        let config = EngineConfig::default();
                        let t0 = Instant::now();
                        let engine = Engine::open(paths.open(&config)?, &config)?;
                        ensure!(
                            engine.wait_synced(Duration::from_secs(1800)),
                            "the mirror did not catch up within 30 minutes"
                        );
                        let t = t0.elapsed().as_secs_f64();
                        let s = engine.status();
                        ensure!(
                            s.resync_total_bytes == size,
                            "resync of {}",
                            s.resync_total_bytes
                        );
                        copied = s.bytes_copied;
                        engine.shutdown()?;
                        drop(engine);
                        ensure!(
                            same_contents(&paths.primary, &paths.secondary, size)?,
                            "secondary differs from primary after catch-up"
                        );
                        t
                    }
                    Some(args) => {
                        remove(&copy)?;
                        let t0 = Instant::now();
                        let st = Command::new("dd")
                            .args(args)
                            .arg("status=none")
                            .status()
                            .context("run dd")?;
                        ensure!(st.success(), "dd {args:?}: {st}");
                        t0.elapsed().as_secs_f64()
                    }
                };
                secs[i].push(t);
            }
        }
        remove_all(&paths)?;
        remove(&copy)?;
        println!("\n### {} ({})\n", dir.display(), df_of(dir));
        println!("| copier | MiB/s median | min | max | seconds median |");
        println!("|---|---:|---:|---:|---:|");
        let mut rows = Vec::new();
        let mut bw = Vec::new();
        for (i, (name, _)) in tools.iter().enumerate() {
            let rate: Vec<f64> = secs[i].iter().map(|s| size as f64 / MIB / s).collect();
            let r = spread(&rate);
            let s = spread(&secs[i]);
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.2} |",
                r.median, r.min, r.max, s.median
            );
            bw.push(r.median);
            rows.push(json!({ "copier": name, "mib_s": r, "seconds": s }));
        }
        let mut ratios = json!({});
        for (i, key) in [(1, "vs_dd"), (2, "vs_dd_iflag_direct")] {
            let ratio = bw[0] / bw[i];
            let verdict = if ratio >= 0.8 {
                "goal >= 0.8: met".to_string()
            } else {
                format!("goal >= 0.8: MISSED by {:.0}%", (0.8 - ratio) / 0.8 * 100.0)
            };
            println!("- engine / {} = {ratio:.3} ({verdict})", tools[i].0);
            ratios[key] = json!(ratio);
        }
        println!(
            "  (the engine copied {} for a {} device; wall time {:.1} s)",
            format_size(copied),
            format_size(size),
            started.elapsed().as_secs_f64()
        );
        out.push(json!({
            "dir": dir, "filesystem": df_of(dir), "bytes": size, "rounds": rounds,
            "copiers": rows, "ratios": ratios, "engine_bytes_copied": copied,
        }));
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------
// Recovery

/// The child's load: 90% random 4 KiB writes in a hot zone (the first eighth
/// of the device), 10% each thread's own sequential 64 KiB stream elsewhere
/// (a log); a flush every 128 writes per thread.
fn crash_child(a: &ChildArgs) -> anyhow::Result<()> {
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
fn full_resync(paths: &Paths, size: u64) -> anyhow::Result<(u64, f64)> {
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

fn recovery_bench(a: &RecoveryArgs) -> anyhow::Result<Value> {
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

// ---------------------------------------------------------------------------
// Criterion's figures

/// Reads `DIR/GROUP/BENCH/new/estimates.json` for every benchmark criterion
/// ran, prints their medians, and checks the hit-path goal.
fn criterion_report(dir: &Path) -> anyhow::Result<Value> {
    let mut found = Vec::new();
    for group in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let group = group?.path();
        if !group.is_dir() || group.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        for bench in std::fs::read_dir(&group)? {
            let bench = bench?.path();
            let est = bench.join("new/estimates.json");
            let bench_json = bench.join("new/benchmark.json");
            let (Ok(e), Ok(b)) = (std::fs::read(&est), std::fs::read(&bench_json)) else {
                continue;
            };
            let e: Value = serde_json::from_slice(&e)?;
            let b: Value = serde_json::from_slice(&b)?;
            let id = b["full_id"].as_str().unwrap_or_default().to_string();
            // Criterion's own figure (its "time:" line): the slope of the
            // linear sampling when there is one, else the mean.
            let est = if e["slope"].is_object() {
                &e["slope"]
            } else {
                &e["mean"]
            };
            let ns = est["point_estimate"].as_f64().unwrap_or(f64::NAN);
            let lo = est["confidence_interval"]["lower_bound"]
                .as_f64()
                .unwrap_or(ns);
            let hi = est["confidence_interval"]["upper_bound"]
                .as_f64()
                .unwrap_or(ns);
            let median = e["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            found.push((id, ns, lo, hi, median));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    println!("\n## Record (criterion, ns per write; goal: hit path <= 100 ns)\n");
    println!("| benchmark | ns/write | 95% CI | median of samples | goal |");
    println!("|---|---:|---:|---:|---|");
    let mut out = Vec::new();
    for (id, ns, lo, hi, median) in &found {
        let goal = if id.starts_with("hit/") || id.starts_with("engine_hit/") {
            let worst = ns.max(*median);
            if worst <= 100.0 {
                "<= 100 ns: met".to_string()
            } else {
                format!("<= 100 ns: MISSED by {:.0}%", worst - 100.0)
            }
        } else {
            String::new()
        };
        println!("| {id} | {ns:.1} | {lo:.1}..{hi:.1} | {median:.1} | {goal} |");
        out.push(json!({ "id": id, "ns": ns, "ci_ns": [lo, hi], "median_ns": median }));
    }
    Ok(Value::Array(out))
}
