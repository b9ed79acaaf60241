//! Benchmarks of the engine on the host, over files.
//!
//! - `load`: writer threads drive (a) raw io_uring writes to the primary file,
//!   (b) the engine in passthrough mode (mirror and record off), (c) the
//!   engine with mirror and record, (d) the same with the write-data buffer
//!   off, so every copy reads the primary back; 4 KiB random and 128 KiB
//!   sequential writes, fixed duration, interleaved rounds, medians with min
//!   and max, and the bytes read back per byte mirrored for (c) and (d).
//!   Goal: (c) >= 0.9 x (a).
//! - `catchup`: the mirror pool's full initial copy of a filled primary,
//!   against `dd` copying the same file. Goal: >= 0.8 x dd.
//! - `recovery`: SIGKILL the `engine-load` child (the crash test's), reopen, and
//!   measure what the record makes it resync, against a full-device resync.
//! - `peer`: a write that misses the record with the record held by a peer
//!   over loopback, against a local record file, and the link's round trip.
//! - `dual`: dual-active, a read of a region in the other node's record (a
//!   status check first) against one outside it, and the share of a
//!   migration-like mix that needs a check.
//! - `nbd`: the mirror's full copy to an nbdkit export over a 10 ms round
//!   trip (a delay line on loopback), against nbdcopy over the same link.
//!   Goal: >= 0.8 x nbdcopy. Then host writes against a secondary slower
//!   than the host: IOPS and the largest recovery point with no bound,
//!   `--max-dirty` with pull-ahead, and with throttle.
//! - `all`: all of them in a row, one table each, one JSON file.
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
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rings::{with_thread_ring, AlignedBuf, RwFlags};
use serde_json::{json, Value};
use tandem::engine::{Engine, EngineConfig, Paths};
use tandem::units::{format_size, parse_size};
use tandem_tests::follow_status;

mod catchup;
mod dual;
mod load;
mod micro;
mod nbd;
mod peer;
mod recovery;
mod takeover;
mod util;

use catchup::*;
use dual::*;
use load::*;
use micro::*;
use nbd::*;
use peer::*;
use recovery::*;
use takeover::*;
use util::*;

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
    /// A miss with the record held by a peer over loopback against a local miss.
    Peer(PeerArgs),
    /// Node A killed under load: node B's takeover, its time and its copy.
    Takeover(PeerArgs),
    /// Dual-active: a read of a region in the other node's record (a status
    /// check first) against one outside it, and the share that need one.
    Dual(PeerArgs),
    /// The mirror's full copy to an NBD export over a slow link, against nbdcopy.
    Nbd(NbdArgs),
}

#[derive(Args, Clone)]
struct NbdArgs {
    #[command(flatten)]
    common: Common,
    /// Directory for the primary, the record and the export's file.
    #[arg(long)]
    dir: PathBuf,
    /// Bytes to copy [default: 1GiB, quick 64MiB].
    #[arg(long)]
    size: Option<String>,
    /// Rounds [default: 3, quick 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// The link's round trip.
    #[arg(long, default_value = "10ms")]
    rtt: String,
}

#[derive(Args, Clone)]
struct PeerArgs {
    #[command(flatten)]
    common: Common,
    /// Directory on the file system to hold both records.
    #[arg(long)]
    dir: PathBuf,
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
    /// The write-data buffer's budget of mode (c), e.g. 256MiB [engine default: 64MiB].
    #[arg(long)]
    copy_buffer: Option<String>,
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
        if let Some(b) = &self.copy_buffer {
            config.mirror.copy_buffer = parse_size(b)?;
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
        if let Some(b) = &self.copy_buffer {
            d.push(format!("copy buffer {b}"));
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
    threads: u32,
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
            // 128k sequential on the disk alone, in longer runs: each starts
            // with an empty record and an empty buffer.
            let quick = a.common.quick;
            let seq_on_disk = |mirror: MirrorArgs| LoadArgs {
                dirs: vec![a.disk_dir.clone()],
                secs: (!quick).then_some(20.0),
                rounds: (!quick).then_some(1),
                workloads: vec!["seq-128k-qd32".into()],
                mirror,
                ..load.clone()
            };
            // The secondary on another device: the primary's disk carries
            // only the host's writes and what copies read back.
            if let Some(other) = a.dirs.iter().find(|d| **d != a.disk_dir) {
                report["load_secondary_apart"] = load_bench(&seq_on_disk(MirrorArgs {
                    secondary_dir: Some(other.clone()),
                    ..MirrorArgs::default()
                }))?;
            }
            // Both on one disk, copies capped at 100 MiB/s: what the host
            // gains when it need not share the disk with copies at full
            // speed, and the lag that costs (BENCHMARKS.md, "One disk").
            report["load_one_disk_copy_rate_capped"] = load_bench(&seq_on_disk(MirrorArgs {
                mirror_max_rate: Some("100MiB".into()),
                ..MirrorArgs::default()
            }))?;
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
            let peer = PeerArgs {
                common: a.common.clone(),
                dir: a.disk_dir.clone(),
            };
            report["peer"] = peer_bench(&peer)?;
            report["takeover"] = takeover_bench(&peer)?;
            report["dual"] = dual_bench(&peer)?;
            let nbd = NbdArgs {
                common: a.common.clone(),
                dir: a.disk_dir.clone(),
                size: None,
                rounds: None,
                rtt: "10ms".into(),
            };
            report["nbd"] = nbd_bench(&nbd)?;
            report["lag"] = lag_bench(&nbd)?;
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
        Cmd::Peer(a) => {
            let r = peer_bench(&a)?;
            write_json(&a.common, &json!({ "peer": r }))
        }
        Cmd::Takeover(a) => {
            let r = takeover_bench(&a)?;
            write_json(&a.common, &json!({ "takeover": r }))
        }
        Cmd::Dual(a) => {
            let r = dual_bench(&a)?;
            write_json(&a.common, &json!({ "dual": r }))
        }
        Cmd::Nbd(a) => {
            let r = nbd_bench(&a)?;
            let lag = lag_bench(&a)?;
            write_json(&a.common, &json!({ "nbd": r, "lag": lag }))
        }
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
