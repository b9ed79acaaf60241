//! Node B's takeover of a device whose owner died.
//!
//! The holder watches the device's lease on the shared storage. Once the
//! owner has left it unchanged for its timeout plus the margin (and did not
//! release it: a clean stop is no death), B takes the lease at the next
//! generation, ends the owner's sessions of the old generation, and copies
//! every region of the record it held from the shared primary to the
//! secondary, through an engine over its own paths to both, then clears
//! them. The lease is then released in B's name: `tandemctl promote` serves
//! the device on B, and the old owner, back, is refused by the lease and by
//! this holder.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::holder::WatchStatus;
use super::Holder;
use crate::engine::{Engine, EngineConfig, Paths};
use crate::error::{Error, Result};
use crate::lease::{Block, Lease, LeaseConfig, Seen, Watch};

/// The device a holder may take over: its lease, and this node's paths to
/// the shared primary and to the secondary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeoverSpec {
    pub lease: PathBuf,
    pub primary: PathBuf,
    pub secondary: PathBuf,
}

impl std::str::FromStr for TakeoverSpec {
    type Err = Error;

    /// `lease=PATH,primary=PATH,secondary=PATH`.
    fn from_str(text: &str) -> Result<TakeoverSpec> {
        let bad = |why: String| Error::Config(format!("--takeover {text:?}: {why}"));
        let (mut lease, mut primary, mut secondary) = (None, None, None);
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not KEY=PATH")))?;
            if value.is_empty() {
                return Err(bad(format!("{key} has no path")));
            }
            let slot = match key {
                "lease" => &mut lease,
                "primary" => &mut primary,
                "secondary" => &mut secondary,
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (expected lease, primary, secondary)"
                    )))
                }
            };
            *slot = Some(PathBuf::from(value));
        }
        let need =
            |v: Option<PathBuf>, key: &str| v.ok_or_else(|| bad(format!("{key}= is missing")));
        Ok(TakeoverSpec {
            lease: need(lease, "lease")?,
            primary: need(primary, "primary")?,
            secondary: need(secondary, "secondary")?,
        })
    }
}

/// What a takeover did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TakeoverReport {
    pub identity: String,
    /// The node that died, and its generation.
    pub from_node: u64,
    pub from_generation: u64,
    /// The generation this node holds now.
    pub generation: u64,
    /// How long the lease was seen unchanged before the takeover.
    pub waited_ms: u64,
    /// Regions the held record listed (none held: the whole device).
    pub held_regions: u64,
    /// Bytes copied from the primary to the secondary.
    pub bytes_resynced: u64,
    pub copy_ms: u64,
    /// The owner served directly when it died: the whole device was copied.
    #[serde(default)]
    pub whole_device: bool,
}

impl Holder {
    /// Watches the lease in `spec` until `stop`, taking the device over when
    /// its owner's lease expires; `done` hears of each takeover.
    pub fn watch(
        &self,
        spec: &TakeoverSpec,
        stop: &AtomicBool,
        mut done: impl FnMut(&TakeoverReport),
    ) -> Result<()> {
        let mut watch = Watch::new(&spec.lease)?;
        while !stop.load(Ordering::Acquire) {
            let seen = match watch.poll() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("watch lease {}: {e}", spec.lease.display());
                    self.note_watch(spec, "error", None, Some(e.to_string()));
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            match &seen {
                Seen::Blank => self.note_watch(spec, "blank", None, None),
                Seen::Alive(b) => self.note_watch(spec, "alive", Some(b), None),
                Seen::Released(b) => self.note_watch(spec, "released", Some(b), None),
                Seen::Expired(b) => self.note_watch(spec, "expired", Some(b), None),
            }
            let pause = match &seen {
                Seen::Alive(b) | Seen::Expired(b) | Seen::Released(b) => {
                    (b.timeout() / 8).clamp(Duration::from_millis(10), Duration::from_millis(500))
                }
                Seen::Blank => Duration::from_millis(200),
            };
            match seen {
                Seen::Expired(b) if b.owner != self.node() => {
                    match self.take_over(spec, &b, watch.unchanged_for()) {
                        Ok(report) => {
                            lock(&self.takeovers).push(report.clone());
                            done(&report)
                        }
                        Err(e) => log::error!(
                            "take over device {:016x} from node {}: {e}",
                            b.identity,
                            b.owner
                        ),
                    }
                }
                _ => {}
            }
            std::thread::sleep(pause);
        }
        Ok(())
    }

    fn note_watch(
        &self,
        spec: &TakeoverSpec,
        seen: &str,
        b: Option<&Block>,
        error: Option<String>,
    ) {
        lock(&self.watches).insert(
            spec.lease.clone(),
            WatchStatus {
                lease: spec.lease.display().to_string(),
                seen: seen.into(),
                owner: b.map(|b| b.owner),
                generation: b.map(|b| b.generation),
                error,
            },
        );
    }

    /// Takes the device over from the owner whose lease `seen` expired:
    /// the lease at the next generation, the held record surrendered, every
    /// region in it copied, the lease released in this node's name.
    pub fn take_over(
        &self,
        spec: &TakeoverSpec,
        seen: &Block,
        waited: Duration,
    ) -> Result<TakeoverReport> {
        let lc = LeaseConfig {
            path: spec.lease.clone(),
            node: self.node(),
            timeout: seen.timeout(),
            reclaim: false,
        };
        let lease = Lease::take_over(&lc, seen)?;
        log::warn!(
            "node {} took device {:016x} over from node {} (generation {} after {} ms without a renewal)",
            self.node(),
            seen.identity,
            seen.owner,
            lease.generation(),
            waited.as_millis()
        );
        let record = self.surrender(seen.identity, lease.generation())?;
        if seen.direct {
            // The owner served directly: what it added since is in its
            // local file only, out of reach. The whole device is copied.
            log::warn!(
                "node {} served device {:016x} directly: its record here may lack regions; copying the whole device",
                seen.owner,
                seen.identity
            );
            match std::fs::remove_file(&record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("remove {}", record.display()), e))
                }
                _ => {}
            }
        }
        let config = EngineConfig {
            region_size: seen.region_size,
            assume_clean: false,
            ..EngineConfig::default()
        };
        let mut devices = Paths {
            primary: spec.primary.clone(),
            secondary: spec.secondary.clone(),
            record: record.clone(),
        }
        .open(&config)?;
        devices.identity = seen.identity;
        devices.lease = Some(lease.clone());
        let t0 = Instant::now();
        let engine = Engine::open(devices, &config)?;
        let mut last_log = Instant::now();
        loop {
            lease.check()?;
            let st = engine.status();
            if engine.record().states().dirty_count() == 0
                && st.resync_done_bytes >= st.resync_total_bytes
            {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(1) {
                log::info!(
                    "takeover of device {:016x}: {} of {} bytes copied",
                    seen.identity,
                    st.resync_done_bytes,
                    st.resync_total_bytes
                );
                last_log = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let bytes_resynced = engine.status().resync_total_bytes;
        let held_regions = bytes_resynced.div_ceil(seen.region_size);
        engine.shutdown()?;
        let report = TakeoverReport {
            identity: format!("{:016x}", seen.identity),
            from_node: seen.owner,
            from_generation: seen.generation,
            generation: lease.generation(),
            waited_ms: waited.as_millis() as u64,
            held_regions,
            bytes_resynced,
            copy_ms: t0.elapsed().as_millis() as u64,
            whole_device: seen.direct,
        };
        log::warn!(
            "takeover of device {} done: {} bytes copied in {} ms; the primary and the secondary are identical",
            report.identity,
            report.bytes_resynced,
            report.copy_ms
        );
        Ok(report)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
