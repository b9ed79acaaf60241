//! The engine: what the front end (the ublk queues) drives.
//!
//! Byte-addressed read, write (with FUA), flush, discard and write-zeroes over a
//! primary device, with every write recorded before it is issued and mirrored to
//! the secondary after it completes.
//!
//! One write: `begin_write` bumps each touched region's state word (one atomic
//! operation each); regions not in the durable record are admitted through the
//! record's group commit, and the call returns only once they are durable. The
//! caller then writes the primary and calls `WriteGuard::complete`, which marks
//! the regions dirty and queues the newly dirty ones for the mirror pool.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::geometry::{check_region_size, Geometry, DEFAULT_REGION_SIZE};
use crate::mirror::{MirrorConfig, MirrorPool, MirrorStats};
use crate::predict;
use crate::record::{Clock, LoadOutcome, Record, RegionFile};
use crate::stats::Counter;

/// Default capacity for clean regions in the record: 1 GiB.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub region_size: u64,
    /// Bytes of clean regions the record may hold.
    pub capacity: u64,
    /// Record policy name (`predictive`, `lru`, `md-bitmap`).
    pub policy: String,
    pub mirror: MirrorConfig,
    /// With a new record file: trust that primary and secondary are already
    /// identical (e.g. both blank) and skip the initial full copy.
    pub assume_clean: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            region_size: DEFAULT_REGION_SIZE,
            capacity: DEFAULT_CAPACITY,
            policy: "predictive".into(),
            mirror: MirrorConfig::default(),
            assume_clean: false,
        }
    }
}

impl EngineConfig {
    /// Refuses bad values, naming them.
    pub fn validate(&self) -> Result<()> {
        check_region_size(self.region_size)?;
        if self.capacity < self.region_size {
            return Err(Error::Config(format!(
                "capacity {} is smaller than one region ({} bytes)",
                self.capacity, self.region_size
            )));
        }
        if !predict::POLICIES.contains(&self.policy.as_str()) {
            return Err(Error::Config(format!(
                "unknown policy {:?}; choose one of {}",
                self.policy,
                predict::POLICIES.join(", ")
            )));
        }
        if self.mirror.threads == 0 || self.mirror.threads > 64 {
            return Err(Error::Config(format!(
                "mirror threads {} is outside 1..=64",
                self.mirror.threads
            )));
        }
        if self.mirror.max_copy_bytes < self.region_size {
            return Err(Error::Config(format!(
                "max copy size {} is smaller than the region size {}",
                self.mirror.max_copy_bytes, self.region_size
            )));
        }
        if self.mirror.max_rate == Some(0) {
            return Err(Error::Config("max copy rate 0 would never copy".into()));
        }
        Ok(())
    }
}

/// The devices an engine runs over.
pub struct Devices {
    pub primary: Dev,
    pub secondary: Dev,
    /// Where the record lives (a small file or block device).
    pub record: Dev,
    /// The record device holds no record yet: create one.
    pub record_is_new: bool,
    /// Identifies the device pair; a record made for another pair is refused.
    pub identity: u64,
}

/// A stable identity for a primary/secondary pair, from their names.
pub fn pair_identity(primary: &str, secondary: &str) -> u64 {
    let a = crc32c::crc32c(primary.as_bytes());
    let b = crc32c::crc32c_append(a ^ 0x5441_4e44, secondary.as_bytes());
    (u64::from(a) << 32) | u64::from(b)
}

/// What start-up found in the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// A new record: a full initial copy (or none with `assume_clean`).
    Created,
    /// An existing record: its regions are resynced.
    Recovered,
    /// The record could not be trusted: full resync.
    Corrupt { reason: String },
}

/// The engine's state, for status requests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EngineStatus {
    /// `live`, `resyncing` or `degraded`.
    pub state: &'static str,
    pub device_size: u64,
    pub region_size: u64,
    pub policy: &'static str,
    pub capacity_bytes: u64,
    pub record_regions: u64,
    pub record_bytes: u64,
    pub dirty_bytes: u64,
    pub lag_seconds: f64,
    pub writes: u64,
    pub bytes_written: u64,
    pub record_updates: u64,
    pub record_pages_written: u64,
    pub updates_per_1000_writes: f64,
    pub predicted_regions: u64,
    pub predicted_never_written: u64,
    pub bytes_copied: u64,
    pub copy_errors: u64,
    pub resync_total_bytes: u64,
    pub resync_done_bytes: u64,
    pub degraded: bool,
    pub last_error: Option<String>,
    pub start: StartKind,
    pub uptime_seconds: f64,
}

/// The mirroring engine of one device.
pub struct Engine {
    geometry: Geometry,
    primary: Dev,
    secondary: Dev,
    record: Arc<Record>,
    mirror: MirrorPool,
    writes: Counter,
    bytes_written: Counter,
    start: StartKind,
    started: Instant,
    capacity: u64,
}

/// A write that passed the record check; `complete` it once the primary has it.
#[must_use = "a write must be completed"]
pub struct WriteGuard<'a> {
    engine: &'a Engine,
    regions: Range<u64>,
}

impl WriteGuard<'_> {
    /// Ends the write: the regions turn dirty and are queued for mirroring.
    /// Call it whether or not the primary write succeeded.
    pub fn complete(self) {
        // Drop does the work, so a panicking caller still releases the regions.
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut dirtied = Vec::new();
        self.engine
            .record
            .end_write(self.regions.clone(), &mut dirtied);
        self.engine.mirror.enqueue(&dirtied);
    }
}

impl Engine {
    /// Opens the engine: loads or creates the record, marks what it lists as
    /// dirty, and starts the mirror pool, which resyncs it while I/O is served.
    pub fn open(devices: Devices, config: &EngineConfig) -> Result<Engine> {
        Self::open_with(devices, config, false)
    }

    /// Like `open`, but without mirror threads: the caller copies with
    /// `pump_mirror`. For deterministic tests.
    pub fn open_manual(devices: Devices, config: &EngineConfig) -> Result<Engine> {
        Self::open_with(devices, config, true)
    }

    fn open_with(devices: Devices, config: &EngineConfig, manual: bool) -> Result<Engine> {
        config.validate()?;
        let Devices {
            primary,
            secondary,
            record: record_dev,
            record_is_new,
            identity,
        } = devices;
        let size = primary.size();
        if size == 0 {
            return Err(Error::Config(format!(
                "primary {} is empty (0 bytes)",
                primary.describe()
            )));
        }
        if secondary.size() < size {
            return Err(Error::Config(format!(
                "secondary {} has {} bytes, smaller than primary {} with {} bytes",
                secondary.describe(),
                secondary.size(),
                primary.describe(),
                size
            )));
        }
        let geometry = Geometry::new(size, config.region_size)?;
        let all = || (0..geometry.regions()).collect::<Vec<u64>>();
        let (store, start, resync) = if record_is_new {
            let file = RegionFile::create(
                record_dev.clone(),
                &geometry,
                identity,
                !config.assume_clean,
            )?;
            let resync = if config.assume_clean {
                Vec::new()
            } else {
                all()
            };
            (file, StartKind::Created, resync)
        } else {
            match RegionFile::open(record_dev.clone(), &geometry, identity)? {
                (file, LoadOutcome::Loaded(regions)) => (file, StartKind::Recovered, regions),
                (_, LoadOutcome::Corrupt(reason)) => {
                    log::error!(
                        "record {} cannot be trusted ({reason}); starting a full resync of {} bytes",
                        record_dev.describe(),
                        size
                    );
                    let file = RegionFile::create(record_dev.clone(), &geometry, identity, true)?;
                    (file, StartKind::Corrupt { reason }, all())
                }
            }
        };
        let predictor =
            predict::by_name(&config.policy, geometry.regions(), geometry.region_size())?;
        let barrier_dev = primary.clone();
        let record = Arc::new(
            Record::new(
                geometry,
                config.capacity,
                predictor,
                Box::new(store),
                Clock::monotonic(),
            )
            .with_barrier(Box::new(move || {
                barrier_dev
                    .sync()
                    .map_err(|e| Error::io(format!("flush primary {}", barrier_dev.describe()), e))
            })),
        );
        let dirtied = record.recover(resync);
        if !dirtied.is_empty() {
            log::info!(
                "resyncing {} regions ({} bytes) from {} to {}",
                dirtied.len(),
                dirtied.len() as u64 * geometry.region_size(),
                primary.describe(),
                secondary.describe()
            );
        }
        let start_pool = if manual {
            MirrorPool::manual
        } else {
            MirrorPool::start
        };
        let mirror = start_pool(
            record.clone(),
            primary.clone(),
            secondary.clone(),
            config.mirror.clone(),
        )?;
        mirror.enqueue_resync(&dirtied);
        Ok(Engine {
            geometry,
            primary,
            secondary,
            record,
            mirror,
            writes: Counter::default(),
            bytes_written: Counter::default(),
            start,
            started: Instant::now(),
            capacity: config.capacity,
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn record(&self) -> &Arc<Record> {
        &self.record
    }

    pub fn primary(&self) -> &Dev {
        &self.primary
    }

    pub fn secondary(&self) -> &Dev {
        &self.secondary
    }

    /// Registers a write of `len` bytes at `offset`: returns once every region
    /// it touches is in the durable record. The caller then issues the write to
    /// the primary and completes the guard.
    pub fn begin_write(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        self.geometry.check_range(offset, len)?;
        self.writes.add(1);
        self.bytes_written.add(len);
        let regions = self.geometry.regions_of(offset, len);
        let mut misses = Vec::new();
        self.record.begin_write(regions.clone(), &mut misses);
        if !misses.is_empty() {
            if let Err(e) = self.record.admit(&misses) {
                self.record.abort_write(regions);
                return Err(e);
            }
        }
        Ok(WriteGuard {
            engine: self,
            regions,
        })
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.geometry.check_range(offset, buf.len() as u64)?;
        self.primary
            .read_at(buf, offset)
            .map_err(|e| Error::io(format!("read primary at {offset}"), e))
    }

    /// Writes `buf` at `offset`; with `fua` it is durable on return.
    pub fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let guard = self.begin_write(offset, buf.len() as u64)?;
        let r = self.primary.write_at(buf, offset, fua);
        guard.complete();
        r.map_err(|e| Error::io(format!("write primary at {offset}"), e))
    }

    /// Makes every completed write durable on the primary.
    pub fn flush(&self) -> Result<()> {
        self.primary
            .sync()
            .map_err(|e| Error::io("flush primary", e))
    }

    /// Discards a range on the primary; the mirror follows.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let guard = self.begin_write(offset, len)?;
        let r = self.primary.discard(offset, len);
        guard.complete();
        r.map_err(|e| Error::io(format!("discard primary at {offset}"), e))
    }

    /// Writes zeroes over a range on the primary; the mirror follows.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let guard = self.begin_write(offset, len)?;
        let r = self.primary.write_zeroes(offset, len);
        guard.complete();
        r.map_err(|e| Error::io(format!("write zeroes to primary at {offset}"), e))
    }

    /// Copies one batch of dirty regions on the calling thread (engines
    /// opened with `open_manual`); false when nothing was ready.
    pub fn pump_mirror(&self) -> bool {
        self.mirror.pump()
    }

    pub fn mirror_stats(&self) -> MirrorStats {
        self.mirror.stats()
    }

    pub fn status(&self) -> EngineStatus {
        let rs = self.record.stats();
        let ms = self.mirror_stats();
        let writes = self.writes.get();
        let state = if ms.degraded {
            "degraded"
        } else if ms.resync_done_bytes < ms.resync_total_bytes {
            "resyncing"
        } else {
            "live"
        };
        EngineStatus {
            state,
            device_size: self.geometry.device_size(),
            region_size: self.geometry.region_size(),
            policy: self.record.policy(),
            capacity_bytes: self.capacity,
            record_regions: rs.regions,
            record_bytes: rs.bytes,
            dirty_bytes: rs.dirty_regions * self.geometry.region_size(),
            lag_seconds: ms.lag_seconds,
            writes,
            bytes_written: self.bytes_written.get(),
            record_updates: rs.updates,
            record_pages_written: rs.pages_written,
            updates_per_1000_writes: if writes == 0 {
                0.0
            } else {
                rs.updates as f64 * 1000.0 / writes as f64
            },
            predicted_regions: rs.predicted_regions,
            predicted_never_written: rs.predicted_never_written,
            bytes_copied: ms.bytes_copied,
            copy_errors: ms.copy_errors,
            resync_total_bytes: ms.resync_total_bytes,
            resync_done_bytes: ms.resync_done_bytes,
            degraded: ms.degraded,
            last_error: ms.last_error,
            start: self.start.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits until nothing is dirty; false on timeout.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.record.states().dirty_count() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Clean stop: stops the mirror, drops clean regions from the record and
    /// makes it durable, so the next start resyncs only what is still dirty.
    pub fn shutdown(&self) -> Result<()> {
        self.mirror.stop();
        self.primary
            .sync()
            .map_err(|e| Error::io("flush primary", e))?;
        self.record.forget_clean();
        self.record.flush()
    }
}

/// Paths of a mirrored device's three parts.
#[derive(Debug, Clone)]
pub struct Paths {
    pub primary: std::path::PathBuf,
    pub secondary: std::path::PathBuf,
    pub record: std::path::PathBuf,
}

impl Paths {
    /// Opens the devices, checking what can be checked before anything is
    /// created: both data devices exist, they are distinct, and no path is
    /// given twice. A missing or empty record file is created.
    pub fn open(&self, config: &EngineConfig) -> Result<Devices> {
        use crate::dev::{FileDev, OpenOptions};
        let canon = |what: &str, p: &std::path::Path| {
            std::fs::canonicalize(p)
                .map_err(|e| Error::Config(format!("{what} {}: {e}", p.display())))
        };
        let primary_path = canon("primary", &self.primary)?;
        let secondary_path = canon("secondary", &self.secondary)?;
        if primary_path == secondary_path {
            return Err(Error::Config(format!(
                "primary and secondary are the same file: {}",
                primary_path.display()
            )));
        }
        if let Ok(record_path) = std::fs::canonicalize(&self.record) {
            if record_path == primary_path || record_path == secondary_path {
                return Err(Error::Config(format!(
                    "record {} is also a data device",
                    record_path.display()
                )));
            }
        }
        let direct = OpenOptions {
            direct: true,
            ..OpenOptions::default()
        };
        let primary: Dev = Arc::new(FileDev::open(&primary_path, &direct)?);
        let secondary: Dev = Arc::new(FileDev::open(&secondary_path, &direct)?);
        let geometry = Geometry::new(primary.size(), config.region_size)?;
        let record_is_new = match std::fs::metadata(&self.record) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(format!("record {}", self.record.display()), e)),
            Ok(m) => m.is_file() && m.len() == 0,
        };
        let record: Dev = Arc::new(FileDev::open(
            &self.record,
            &OpenOptions {
                direct: false,
                create_size: record_is_new.then(|| RegionFile::file_size(&geometry)),
            },
        )?);
        if record_is_new && record.size() < RegionFile::file_size(&geometry) {
            // An existing empty file: give it the size the layout needs.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.record)
                .and_then(|f| f.set_len(RegionFile::file_size(&geometry)))
                .map_err(|e| Error::io(format!("size record {}", self.record.display()), e))?;
            return self.open(config);
        }
        Ok(Devices {
            identity: pair_identity(
                &primary_path.to_string_lossy(),
                &secondary_path.to_string_lossy(),
            ),
            primary,
            secondary,
            record,
            record_is_new,
        })
    }
}
