//! The engine under load until it is killed: the one child program (the
//! `engine-load` binary) that the crash test and the recovery benchmark
//! SIGKILL. Its writer threads go through `Engine::serve`, the request path
//! the ublk queues take (plan, admission on the record committer, issue,
//! completion), and it reports the record's size and dirty bytes now and then,
//! so a parent can compare what a recovery resyncs with the state just before
//! the kill.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use rand::{Rng, SeedableRng};
use rings::AlignedBuf;
use tandem::dev::Cache;
use tandem::engine::{Data, Engine, EngineConfig, Paths, PeerConfig, Request};
use tandem::mirror::MirrorConfig;

use crate::{block_data, Ack, BLOCK};

/// What the writers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Stamped 4 KiB blocks, each thread on blocks of its own: 80 % in a hot
    /// set of 64 blocks per thread, one write in four FUA, a flush every 16
    /// writes; every acknowledged write is appended to the thread's log.
    Stamped,
    /// 90 % random 4 KiB writes in the first eighth of the device, 10 %
    /// sequential 64 KiB streams (one per thread) over the rest, a flush
    /// every 128 writes.
    Streams,
}

/// The child's command line; `args` renders it for a parent to spawn.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "engine-load",
    about = "The tandem engine under load until killed"
)]
pub struct LoadArgs {
    pub primary: PathBuf,
    pub secondary: PathBuf,
    pub record: PathBuf,
    #[arg(long, value_enum)]
    pub mix: Mix,
    /// Where `stamped` keeps the acknowledged-write logs (`ack-THREAD`).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub threads: u32,
    /// Seeds the writers; `stamped` also stamps it into every block.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "predictive")]
    pub policy: String,
    #[arg(long, default_value = "none")]
    pub cache: Cache,
    #[arg(long, default_value_t = 1 << 20)]
    pub region_size: u64,
    #[arg(long, default_value_t = tandem::engine::DEFAULT_CAPACITY)]
    pub capacity: u64,
    /// Mirror copy threads.
    #[arg(long, default_value_t = 2)]
    pub mirror_threads: usize,
    /// HOST:PORT of the peer that holds the record (this node is node 1).
    #[arg(long)]
    pub peer: Option<String>,
    /// The device's lease (this node is node 1), with its timeout in ms.
    #[arg(long)]
    pub lease: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    pub lease_timeout_ms: u64,
}

impl LoadArgs {
    /// A stamped run in `dir` (`primary.img`, `secondary.img`, `record`, and
    /// the logs in `logs`), 64 KiB regions, 4 MiB capacity, no peer.
    pub fn stamped(dir: &std::path::Path, threads: u32) -> LoadArgs {
        LoadArgs {
            primary: dir.join("primary.img"),
            secondary: dir.join("secondary.img"),
            record: dir.join("record"),
            mix: Mix::Stamped,
            log_dir: Some(dir.join("logs")),
            threads,
            seed: 1,
            policy: "predictive".into(),
            cache: Cache::None,
            region_size: 64 << 10,
            capacity: 4 << 20,
            mirror_threads: 2,
            peer: None,
            lease: None,
            lease_timeout_ms: 1000,
        }
    }

    /// The engine's configuration, for the child and for the parent that
    /// reopens the engine after the kill.
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            region_size: self.region_size,
            capacity: self.capacity,
            policy: self.policy.clone(),
            mirror: MirrorConfig {
                threads: self.mirror_threads,
                ..MirrorConfig::default()
            },
            assume_clean: true,
            passthrough: false,
            cache: self.cache,
            peer: self.peer.as_ref().map(|address| PeerConfig {
                address: address.clone(),
                node: 1,
                state: peer_state(&self.record),
            }),
            dual: None,
            identity: None,
            allow_missing_secondary: false,
            max_dirty: None,
            on_max_dirty: Default::default(),
            lease: self.lease.as_ref().map(|path| tandem::lease::LeaseConfig {
                path: path.clone(),
                node: 1,
                timeout: Duration::from_millis(self.lease_timeout_ms),
                reclaim: false,
            }),
        }
    }

    pub fn paths(&self) -> Paths {
        Paths {
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
            record: self.record.clone(),
        }
    }

    /// The command-line arguments that parse back into these.
    pub fn args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.primary.clone().into(),
            self.secondary.clone().into(),
            self.record.clone().into(),
        ];
        let mut opt = |k: &str, val: String| {
            v.push(format!("--{k}").into());
            v.push(val.into());
        };
        let mix = clap::ValueEnum::to_possible_value(&self.mix).expect("every mix has a name");
        opt("mix", mix.get_name().to_string());
        opt("threads", self.threads.to_string());
        opt("seed", self.seed.to_string());
        opt("policy", self.policy.clone());
        opt("cache", self.cache.to_string());
        opt("region-size", self.region_size.to_string());
        opt("capacity", self.capacity.to_string());
        opt("mirror-threads", self.mirror_threads.to_string());
        if let Some(d) = &self.log_dir {
            v.push("--log-dir".into());
            v.push(d.clone().into());
        }
        if let Some(p) = &self.peer {
            v.push("--peer".into());
            v.push(p.into());
        }
        if let Some(p) = &self.lease {
            v.push("--lease".into());
            v.push(p.into());
            v.push("--lease-timeout-ms".into());
            v.push(self.lease_timeout_ms.to_string().into());
        }
        v
    }
}

/// Where a node keeps its peer state: beside the record, as the daemon does.
fn peer_state(record: &std::path::Path) -> PathBuf {
    let mut s = record.as_os_str().to_owned();
    s.push(".peer");
    s.into()
}

/// Prints `ready`, then `status RECORD_BYTES DIRTY_BYTES WRITES` every
/// 20 ms, and writes until killed (or until a write fails: the error).
pub fn run(a: &LoadArgs) -> anyhow::Result<()> {
    ensure!(a.threads > 0, "--threads must be at least 1");
    let config = a.config();
    let engine = Arc::new(Engine::open(a.paths().open(&config)?, &config)?);
    let size = engine.geometry().device_size();
    println!("ready");
    std::io::stdout().flush()?;
    {
        let engine = engine.clone();
        std::thread::spawn(move || loop {
            let st = engine.status();
            println!(
                "status {} {} {}",
                st.record_bytes, st.dirty_bytes, st.writes
            );
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(20));
        });
    }
    let handles: Vec<_> = (0..a.threads)
        .map(|t| {
            let (engine, a) = (engine.clone(), a.clone());
            std::thread::spawn(move || match a.mix {
                Mix::Stamped => stamped(&engine, &a, t, size),
                Mix::Streams => streams(&engine, &a, t, size),
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread")?;
    }
    Ok(())
}

fn write(engine: &Engine, buf: &[u8], offset: u64, fua: bool) -> anyhow::Result<()> {
    let req = Request::write(offset, buf.len() as u64, fua);
    engine
        .serve(req, Data::From(buf))
        .with_context(|| format!("{req}"))?;
    Ok(())
}

fn flush(engine: &Engine) -> anyhow::Result<()> {
    engine
        .serve(Request::flush(), Data::None)
        .context("flush")?;
    Ok(())
}

fn stamped(engine: &Engine, a: &LoadArgs, t: u32, size: u64) -> anyhow::Result<()> {
    let dir = a
        .log_dir
        .as_ref()
        .context("--mix stamped needs --log-dir")?;
    let log_path = dir.join(format!("ack-{t}"));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ u64::from(t) << 32);
    let blocks = (size / BLOCK) as u32;
    let mine = blocks / a.threads;
    ensure!(mine > 0, "device too small for {} threads", a.threads);
    for i in 0u64.. {
        let k = if rng.gen_bool(0.8) {
            rng.gen_range(0..mine.min(64))
        } else {
            rng.gen_range(0..mine)
        };
        let block = k * a.threads + t;
        let seq = a.seed * 1_000_000_000 + i;
        let fua = rng.gen_bool(0.25);
        let mut buf = AlignedBuf::zeroed(BLOCK as usize);
        buf.copy_from_slice(&block_data(block, t, seq));
        write(engine, &buf, u64::from(block) * BLOCK, fua)?;
        if i % 16 == 15 {
            flush(engine)?;
        }
        Ack {
            block,
            thread: t,
            seq,
        }
        .append(&mut log)?;
    }
    Ok(())
}

fn streams(engine: &Engine, a: &LoadArgs, t: u32, size: u64) -> anyhow::Result<()> {
    const SMALL: u64 = 4096;
    const BIG: u64 = 64 << 10;
    let hot_blocks = size / 8 / SMALL;
    let cold = size - size / 8;
    let stream_len = cold / u64::from(a.threads) / BIG * BIG;
    ensure!(
        stream_len > 0 && hot_blocks > 0,
        "device too small for {} streams",
        a.threads
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ u64::from(t) << 32);
    let mut small = AlignedBuf::zeroed(SMALL as usize);
    let mut big = AlignedBuf::zeroed(BIG as usize);
    rng.fill(&mut small[..]);
    rng.fill(&mut big[..]);
    let stream_start = size / 8 + u64::from(t) * stream_len;
    let mut pos = 0u64;
    for i in 0u64.. {
        if rng.gen_bool(0.9) {
            write(engine, &small, rng.gen_range(0..hot_blocks) * SMALL, false)?;
        } else {
            write(engine, &big, stream_start + pos, false)?;
            pos = (pos + BIG) % stream_len;
        }
        if i % 128 == 127 {
            flush(engine)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_arguments_a_parent_renders_parse_back() {
        let a = LoadArgs {
            primary: "p".into(),
            secondary: "s".into(),
            record: "r".into(),
            mix: Mix::Stamped,
            log_dir: Some("logs".into()),
            threads: 3,
            seed: 9,
            policy: "lru".into(),
            cache: Cache::Writeback,
            region_size: 65536,
            capacity: 4 << 20,
            mirror_threads: 1,
            peer: Some("127.0.0.1:7789".into()),
            lease: Some("lease".into()),
            lease_timeout_ms: 700,
        };
        let mut argv = vec![OsString::from("engine-load")];
        argv.extend(a.args());
        let b = LoadArgs::try_parse_from(argv).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
