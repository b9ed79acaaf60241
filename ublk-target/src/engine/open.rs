//! Opening an engine: the devices, the record loaded, created or found
//! corrupt (and then resynced whole), the mirror pool and the destager.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{throttle, Engine, EngineConfig, StartKind};
use crate::dev::{Cache, Dev, MissingDev};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::lease::Lease;
use crate::mirror::MirrorPool;
use crate::peer::wire::Hello;
use crate::peer::{PeerStatus, PeerStore};
use crate::predict;
use crate::record::committer::Committer;
use crate::record::destage::{DestageThread, DESTAGE_INTERVAL};
use crate::record::{Image, LoadOutcome, Record, RecordStore, RegionFile};
use crate::region::Clock;
use crate::stats::{Counter, Gauge};

/// The devices an engine runs over.
pub struct Devices {
    pub primary: Dev,
    pub secondary: Dev,
    /// Where the record lives (a small file or block device).
    pub record: Dev,
    /// The record device holds no record yet: create one.
    pub record_is_new: bool,
    /// Identifies the device pair; a record made for another pair is refused.
    /// With a lease, the identity the lease names (both nodes then agree on
    /// it, whatever their paths to the devices).
    pub identity: u64,
    /// The device's lease, claimed (with `EngineConfig::lease`).
    pub lease: Option<Arc<Lease>>,
    /// The disks that both data devices sit on (`dev::shared_disks`).
    pub shared_disks: Vec<String>,
}

/// A stable identity for a primary/secondary pair, from their names.
pub fn pair_identity(primary: &str, secondary: &str) -> u64 {
    let a = crc32c::crc32c(primary.as_bytes());
    let b = crc32c::crc32c_append(a ^ 0x5441_4e44, secondary.as_bytes());
    (u64::from(a) << 32) | u64::from(b)
}

/// The identity of a device named `name` by both nodes of a pair.
pub fn named_identity(name: &str) -> u64 {
    pair_identity("pair-name", name)
}

/// Paths of a mirrored device's three parts.
#[derive(Debug, Clone)]
pub struct Paths {
    pub primary: std::path::PathBuf,
    pub secondary: std::path::PathBuf,
    pub record: std::path::PathBuf,
}

impl Paths {
    /// Refuses a path given twice: primary and secondary must differ, and the
    /// record must be neither of them.
    pub fn check_distinct(&self) -> Result<()> {
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        let (p, s, r) = (
            canon(&self.primary),
            canon(&self.secondary),
            canon(&self.record),
        );
        if p.is_some() && p == s {
            return Err(Error::Config(format!(
                "--primary and --secondary are the same file: {}",
                self.primary.display()
            )));
        }
        if r.is_some() && (r == p || r == s) {
            return Err(Error::Config(format!(
                "--record {} is also a data device",
                self.record.display()
            )));
        }
        Ok(())
    }

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
        let data = OpenOptions {
            direct: config.cache == Cache::None,
            ..OpenOptions::default()
        };
        let primary: Dev = Arc::new(FileDev::open(&primary_path, &data)?);
        // An NBD export is connected to once: that attempt also says
        // whether it is there.
        let remote = crate::dev::nbd::is_uri(&self.secondary)
            .then(|| crate::dev::open_data(&self.secondary, &data));
        let missing = config.allow_missing_secondary
            && match &remote {
                Some(opened) => opened.is_err(),
                None => !self.secondary.exists(),
            };
        let mut shared_disks = Vec::new();
        let (secondary, secondary_path): (Dev, _) = if missing {
            // A degraded start: the identity takes the path as given.
            log::warn!(
                "secondary {} is missing: starting degraded; the record keeps every \
                 written region until it appears",
                self.secondary.display()
            );
            let dev = MissingDev::new(self.secondary.clone(), primary.size(), data.direct);
            (Arc::new(dev), self.secondary.clone())
        } else if let Some(opened) = remote {
            // An NBD export: its URI is its name.
            (opened?, self.secondary.clone())
        } else {
            let path = canon("secondary", &self.secondary)?;
            self.check_distinct()?;
            shared_disks = crate::dev::shared_disks(&primary_path, &path);
            if !shared_disks.is_empty() {
                log::warn!(
                    "primary {} and secondary {} are both on {}: unless a redundant layer \
                     between covers it, its loss takes both copies; and every copy is a \
                     second write to it",
                    primary_path.display(),
                    path.display(),
                    shared_disks.join(", ")
                );
            }
            (Arc::new(FileDev::open(&path, &data)?), path)
        };
        let geometry = Geometry::new(primary.size(), config.region_size)?;
        let record_is_new = match std::fs::metadata(&self.record) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::io(format!("record {}", self.record.display()), e)),
            Ok(m) => m.is_file() && m.len() == 0,
        };
        let layout = RegionFile::file_size(&geometry);
        if record_is_new && self.record.exists() {
            // An existing empty file: give it the size the layout needs.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.record)
                .and_then(|f| f.set_len(layout))
                .map_err(|e| Error::io(format!("size record {}", self.record.display()), e))?;
        }
        let record: Dev = Arc::new(FileDev::open(
            &self.record,
            &OpenOptions {
                direct: false,
                create_size: record_is_new.then_some(layout),
            },
        )?);
        let mut identity = config.identity.unwrap_or_else(|| {
            pair_identity(
                &primary_path.to_string_lossy(),
                &secondary_path.to_string_lossy(),
            )
        });
        let lease = match &config.lease {
            None => None,
            Some(lc) => {
                let lease = Lease::claim(lc, identity, primary.size(), config.region_size)?;
                identity = lease.identity();
                Some(lease)
            }
        };
        Ok(Devices {
            identity,
            primary,
            secondary,
            record,
            record_is_new,
            lease,
            shared_disks,
        })
    }
}

impl Paths {
    /// Creates the record with no region set, if there is none yet: what
    /// `--assume-clean` does at a first start, done once and for all (by
    /// `tandemctl enable`, which keeps `assume_clean` out of the config
    /// file: a record lost later must lead to a full copy, never to
    /// "clean"). Returns whether it created one. Not for a device with a
    /// lease (opening would claim it).
    pub fn create_clean_record(&self, config: &EngineConfig) -> Result<bool> {
        if config.lease.is_some() {
            return Err(Error::Config(
                "--assume-clean with --lease: start the device once with `tandemctl add` instead"
                    .into(),
            ));
        }
        let devices = self.open(config)?;
        if !devices.record_is_new {
            return Ok(false);
        }
        let geometry = Geometry::new(devices.primary.size(), config.region_size)?;
        RegionFile::create(devices.record, &geometry, devices.identity, false)?;
        Ok(true)
    }
}

impl Engine {
    /// Opens the engine: loads or creates the record, marks what it lists as
    /// dirty, and starts the mirror pool, which resyncs it while I/O is served.
    pub fn open(devices: Devices, config: &EngineConfig) -> Result<Engine> {
        Self::open_with(devices, config, false)
    }

    /// Like `open`, but without mirror or destage threads: the caller copies
    /// with `pump_mirror` (and evicts or destages through `record()`). For
    /// deterministic tests.
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
            lease,
            shared_disks,
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
        let (store, start, resync) = if config.passthrough {
            let file = RegionFile::create(record_dev.clone(), &geometry, identity, true)?;
            (file, StartKind::Passthrough, Vec::new())
        } else if record_is_new {
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
        let (store, resync, peer) =
            hold(store, resync, config, identity, &geometry, lease.clone())?;
        let predictor =
            predict::by_name(&config.policy, geometry.regions(), geometry.region_size())?;
        let barrier_dev = primary.clone();
        let record = Arc::new(
            Record::new(
                geometry,
                config.capacity,
                predictor,
                store,
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
        let host_io = Arc::new(Gauge::default());
        let mirror = start_pool(
            record.clone(),
            primary.clone(),
            secondary.clone(),
            config.mirror.clone(),
            host_io.clone(),
        )?;
        if let Some(l) = &lease {
            mirror.fence_with(l.clone());
        }
        mirror.enqueue_resync(&dirtied);
        let destager = if manual {
            None
        } else {
            Some(DestageThread::start(record.clone(), DESTAGE_INTERVAL)?)
        };
        let throttle = match config.max_dirty {
            Some(max) if !config.passthrough => {
                mirror.set_max_dirty_regions(max / geometry.region_size());
                let t = throttle::Throttle::new(max, config.on_max_dirty);
                let (t2, states, region, working) = (
                    t.clone(),
                    record.clone(),
                    geometry.region_size(),
                    mirror.working(),
                );
                let thread = std::thread::Builder::new()
                    .name("throttle".into())
                    .spawn(move || {
                        t2.run(|| {
                            let over = states.states().dirty_count() * region > t2.max_dirty;
                            t2.must_wait(over, working())
                        })
                    })
                    .map_err(|e| Error::io("start the throttle thread", e))?;
                Some((t, thread))
            }
            _ => None,
        };
        Ok(Engine {
            throttle,
            destager,
            geometry,
            primary,
            secondary,
            committer: Committer::new(record.clone()),
            writeback: config.cache == Cache::Writeback,
            identity,
            dual: std::sync::OnceLock::new(),
            verify: std::sync::Mutex::new(None),
            read_latency: Default::default(),
            write_latency: Default::default(),
            record,
            mirror,
            host_io,
            writes: Counter::default(),
            bytes_written: Counter::default(),
            poll_ns: Counter::default(),
            start,
            started: Instant::now(),
            capacity: config.capacity,
            passthrough: config.passthrough,
            peer,
            lease,
            shared_disks,
        })
    }
}

/// Where the record is held: the local region file, or (with a peer) the
/// peer, with the local file for direct service. With a peer, what the peer
/// holds is recovered too: all of it when the peer held the record last (the
/// local file then says every region), in addition to the local file's when
/// the local file held it.
#[allow(clippy::type_complexity)]
fn hold(
    file: RegionFile,
    mut resync: Vec<u64>,
    config: &EngineConfig,
    identity: u64,
    geometry: &Geometry,
    lease: Option<Arc<Lease>>,
) -> Result<(
    Box<dyn RecordStore>,
    Vec<u64>,
    Option<Arc<Mutex<PeerStatus>>>,
)> {
    let Some(pc) = &config.peer else {
        return Ok((Box::new(file), resync, None));
    };
    let hello = Hello {
        node: pc.node,
        identity,
        generation: 0,
        device_size: geometry.device_size(),
        region_size: geometry.region_size(),
    };
    let regions = geometry.regions();
    let mut store = PeerStore::new(&pc.address, hello, &pc.state, file, regions, lease)?;
    match store.fetch(regions)? {
        Some(held) if !store.local_was_holding() => resync = held,
        Some(held) => {
            resync.extend(held);
            resync.sort_unstable();
            resync.dedup();
        }
        None => log::warn!(
            "peer {} is unreachable at start: recovering from the local record",
            pc.address
        ),
    }
    let mut image = Image::repeat(false, regions as usize);
    for &r in &resync {
        image.set(r as usize, true);
    }
    store.start(&image)?;
    let status = store.status();
    Ok((Box::new(store), resync, Some(status)))
}
