//! The device's lease on shared storage: which node may write the device
//! and copy it to the secondary, in which ownership generation.
//!
//! A delta lease of the kind sanlock keeps (a block per lease, renewed by
//! its owner, judged expired by another node only from its own clock), in a
//! small file or block device that both nodes reach (`--lease`). Why not
//! sanlock itself: its leases fence by having a watchdog reset the host,
//! through its daemon and wdmd on every node, with a C client library; here
//! the engine fences itself in-process (it stops acknowledging writes and
//! stops marking regions clean), which needs the lease's validity at the
//! acknowledgement, an atomic load.
//!
//! The rules (`timeout` is the owner's, kept in the block):
//! - The owner rewrites the block every `timeout / 4` (a new counter). A
//!   renewal counts only if its read and write took less than `timeout / 8`,
//!   and then the lease is valid until `timeout` after the renewal began.
//!   Each renewal first reads the block: another owner or a higher
//!   generation fences this node for good.
//! - Another node may take the lease over only after it has seen the block
//!   unchanged for `timeout + margin` (`margin = timeout / 2`) by its own
//!   clock, and only when the owner did not release it. It then writes
//!   itself as owner at the next generation, waits `timeout / 4` and reads
//!   the block back: the lease is its own only if the block still is.
//! - What this assumes: a write the old owner issued while its lease was
//!   valid completes within the margin, and clocks run at the same rate.
//! - A clean stop releases the lease (the owner stays, its generation too):
//!   a released lease is never taken over by expiry, only by its owner.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::dev::{BlockDev, FileDev, OpenOptions};
use crate::error::{Error, Result};

/// Bytes of a lease block (one sector of 4 KiB, written whole).
pub const LEASE_BYTES: usize = 4096;
/// Default lease timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAGIC: &[u8; 4] = b"TDLE";
const VERSION: u32 = 1;

/// What a lease block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    /// The device the lease is for (the pair identity of the first owner).
    pub identity: u64,
    pub device_size: u64,
    pub region_size: u64,
    /// The owning node.
    pub owner: u64,
    /// The ownership generation: one more at each takeover.
    pub generation: u64,
    /// Renewal counter: a change means the owner is alive.
    pub counter: u64,
    /// The owner stopped cleanly: no takeover by expiry.
    pub released: bool,
    /// The owner's lease timeout in milliseconds.
    pub timeout_ms: u64,
    /// The owner serves directly (its peer unreachable): the record its
    /// peer holds may lack regions, so a takeover copies the whole device.
    #[serde(default)]
    pub direct: bool,
}

impl Block {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How long another node must see the block unchanged before it may
    /// take the lease over.
    pub fn expiry(&self) -> Duration {
        self.timeout() + self.timeout() / 2
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LEASE_BYTES];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        let words = [
            self.identity,
            self.device_size,
            self.region_size,
            self.owner,
            self.generation,
            self.counter,
            u64::from(self.released),
            self.timeout_ms,
            u64::from(self.direct),
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..LEASE_BYTES - 4]);
        b[LEASE_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for a blank (all-zero) lease.
    fn decode(b: &[u8], path: &Path) -> Result<Option<Block>> {
        let bad = |why: String| Error::Config(format!("lease {}: {why}", path.display()));
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[0..4] != MAGIC {
            return Err(bad(format!(
                "not a tandem lease (magic {:02x?}); give a blank file or device of at least {LEASE_BYTES} bytes",
                &b[0..4]
            )));
        }
        let crc = u32::from_le_bytes(b[LEASE_BYTES - 4..].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..LEASE_BYTES - 4]) {
            return Err(bad("checksum mismatch: the lease block is corrupt".into()));
        }
        let version = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "version {version}, this build reads {VERSION}"
            )));
        }
        let w = |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().expect("8"));
        Ok(Some(Block {
            identity: w(0),
            device_size: w(1),
            region_size: w(2),
            owner: w(3),
            generation: w(4),
            counter: w(5),
            released: w(6) != 0,
            timeout_ms: w(7),
            direct: w(8) != 0,
        }))
    }
}

/// The lease area: one block at the start of a file or device.
pub struct LeaseArea {
    dev: FileDev,
    path: PathBuf,
}

impl LeaseArea {
    /// Opens the lease at `path`, creating a blank file when it does not
    /// exist. O_DIRECT where the file system allows: two nodes share no page
    /// cache.
    pub fn open(path: &Path) -> Result<LeaseArea> {
        let dev = FileDev::open(
            path,
            &OpenOptions {
                direct: true,
                create_size: (!path.exists()).then_some(LEASE_BYTES as u64),
            },
        )?;
        if dev.size() < LEASE_BYTES as u64 {
            return Err(Error::Config(format!(
                "lease {} has {} bytes; it needs {LEASE_BYTES}",
                path.display(),
                dev.size()
            )));
        }
        Ok(LeaseArea {
            dev,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Result<Option<Block>> {
        let mut buf = rings::AlignedBuf::zeroed(LEASE_BYTES);
        self.dev
            .read_at(&mut buf[..], 0)
            .map_err(|e| Error::io(format!("read lease {}", self.path.display()), e))?;
        Block::decode(&buf[..], &self.path)
    }

    /// Writes the block durably (FUA).
    pub fn write(&self, block: &Block) -> Result<()> {
        let mut buf = rings::AlignedBuf::zeroed(LEASE_BYTES);
        buf[..].copy_from_slice(&block.encode());
        self.dev
            .write_at(&buf[..], 0, true)
            .map_err(|e| Error::io(format!("write lease {}", self.path.display()), e))
    }
}

/// How a node holds a device's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub path: PathBuf,
    /// This node's id.
    pub node: u64,
    pub timeout: Duration,
    /// Dual-active: a lease that the other node of the pair took over and
    /// then released (it took this node's record into its own) is claimed
    /// back, at the next generation.
    pub reclaim: bool,
}

/// The lease's state, for the status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeaseStatus {
    pub path: String,
    pub node: u64,
    pub generation: u64,
    /// Whether writes may be acknowledged now.
    pub valid: bool,
    /// Milliseconds until the lease lapses unless renewed (0 when lapsed).
    pub remaining_ms: u64,
    pub renewals: u64,
    pub failed_renewals: u64,
    /// Why this node lost the lease for good, once it has.
    pub lost: Option<String>,
}

/// A lease this node owns, renewed by a thread until it is released.
pub struct Lease {
    area: LeaseArea,
    node: u64,
    timeout: Duration,
    /// The block as last written by this node.
    block: Mutex<Block>,
    base: Instant,
    /// Nanoseconds after `base` until which writes may be acknowledged;
    /// 0 once the lease is lost.
    valid_until: AtomicU64,
    lost: Mutex<Option<String>>,
    renewals: AtomicU64,
    failed: AtomicU64,
    stop: (Mutex<bool>, Condvar),
    released: AtomicBool,
    /// Serialises the lease's read-check-write cycles (the renewal thread
    /// and `set_direct`).
    io: Mutex<()>,
}

impl Lease {
    /// Claims the lease for a device this node is about to serve: a blank
    /// lease is initialised for `identity` at generation 1; this node's own
    /// lease (from an earlier run) is renewed. A lease another node owns is
    /// refused: only a takeover moves it.
    pub fn claim(
        cfg: &LeaseConfig,
        identity: u64,
        device_size: u64,
        region_size: u64,
    ) -> Result<Arc<Lease>> {
        let area = LeaseArea::open(&cfg.path)?;
        let timeout_ms = cfg.timeout.as_millis() as u64;
        let next = match area.read()? {
            None => Block {
                identity,
                device_size,
                region_size,
                owner: cfg.node,
                generation: 1,
                counter: 1,
                released: false,
                timeout_ms,
                direct: false,
            },
            Some(b) if b.device_size != device_size || b.region_size != region_size => {
                return Err(Error::Config(format!(
                    "lease {} is for a device of {} bytes in regions of {}; this one has {device_size} in regions of {region_size}",
                    cfg.path.display(),
                    b.device_size,
                    b.region_size
                )))
            }
            Some(b) if b.owner != cfg.node && b.released && cfg.reclaim => {
                log::info!(
                    "lease {}: node {} took this node's record over at generation {} and released it; claiming it back",
                    cfg.path.display(),
                    b.owner,
                    b.generation
                );
                Block {
                    owner: cfg.node,
                    generation: b.generation + 1,
                    counter: 1,
                    released: false,
                    timeout_ms,
                    // Until this node's peer holds its whole record again, a
                    // takeover copies the whole device.
                    direct: true,
                    ..b
                }
            }
            Some(b) if b.owner != cfg.node => {
                return Err(Error::Fenced(format!(
                    "lease {} belongs to node {} at generation {}; node {} may serve the device only by taking it over",
                    cfg.path.display(),
                    b.owner,
                    b.generation,
                    cfg.node
                )))
            }
            Some(b) => Block {
                counter: b.counter + 1,
                released: false,
                timeout_ms,
                ..b
            },
        };
        Self::acquire(area, cfg, next)
    }

    /// Takes over a lease whose owner died: `seen` is the block as the
    /// caller watched it expire. The new block names this node at the next
    /// generation.
    pub fn take_over(cfg: &LeaseConfig, seen: &Block) -> Result<Arc<Lease>> {
        let area = LeaseArea::open(&cfg.path)?;
        if area.read()?.as_ref() != Some(seen) {
            return Err(Error::Fenced(format!(
                "lease {} changed while it was being taken over",
                cfg.path.display()
            )));
        }
        let next = Block {
            owner: cfg.node,
            generation: seen.generation + 1,
            counter: 1,
            released: false,
            timeout_ms: cfg.timeout.as_millis() as u64,
            ..*seen
        };
        Self::acquire(area, cfg, next)
    }

    /// Writes `next`, waits for a competitor's write to land, reads back.
    fn acquire(area: LeaseArea, cfg: &LeaseConfig, next: Block) -> Result<Arc<Lease>> {
        let began = Instant::now();
        area.write(&next)?;
        std::thread::sleep(cfg.timeout / 4);
        let back = area.read()?;
        if back != Some(next) {
            return Err(Error::Fenced(format!(
                "lease {}: another node wrote it while this node acquired it (it now says {back:?})",
                cfg.path.display()
            )));
        }
        let lease = Arc::new(Lease {
            area,
            node: cfg.node,
            timeout: cfg.timeout,
            block: Mutex::new(next),
            base: began,
            valid_until: AtomicU64::new(cfg.timeout.as_nanos() as u64),
            lost: Mutex::new(None),
            renewals: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: (Mutex::new(false), Condvar::new()),
            released: AtomicBool::new(false),
            io: Mutex::new(()),
        });
        log::info!(
            "node {} holds lease {} at generation {}",
            cfg.node,
            cfg.path.display(),
            next.generation
        );
        let weak = Arc::downgrade(&lease);
        std::thread::Builder::new()
            .name("tandem-lease".into())
            .spawn(move || Lease::renew_loop(weak))
            .map_err(|e| Error::io("spawn the lease thread", e))?;
        Ok(lease)
    }

    pub fn block(&self) -> Block {
        *lock(&self.block)
    }

    pub fn generation(&self) -> u64 {
        self.block().generation
    }

    pub fn identity(&self) -> u64 {
        self.block().identity
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Whether this node may acknowledge writes and mark regions clean now.
    #[inline]
    pub fn valid(&self) -> bool {
        self.now_ns() < self.valid_until.load(Ordering::Acquire)
    }

    /// `Ok` while the lease is valid; the reason otherwise.
    pub fn check(&self) -> Result<()> {
        if self.valid() {
            return Ok(());
        }
        let lost = lock(&self.lost).clone();
        Err(Error::Fenced(lost.unwrap_or_else(|| {
            format!(
                "lease {} was not renewed within {:?}: writes are refused until it is",
                self.area.path().display(),
                self.timeout
            )
        })))
    }

    /// Gives the lease up for good (a cluster manager's fence, or a refusal
    /// learnt from the peer): no write is acknowledged from now on.
    pub fn fence(&self, why: String) {
        log::error!("fenced: {why}");
        lock(&self.lost).get_or_insert(why);
        self.valid_until.store(0, Ordering::Release);
    }

    /// Renews every `timeout / 4` until released or dropped (a dropped
    /// lease is not renewed again: it lapses as if its node had died).
    fn renew_loop(weak: std::sync::Weak<Lease>) {
        loop {
            let Some(me) = weak.upgrade() else { return };
            {
                let g = lock(&me.stop.0);
                let (g, _) = me
                    .stop
                    .1
                    .wait_timeout_while(g, me.timeout / 4, |stop| !*stop)
                    .unwrap_or_else(|e| e.into_inner());
                if *g {
                    return;
                }
            }
            if Arc::strong_count(&me) == 1 || lock(&me.lost).is_some() {
                return;
            }
            me.renew_once();
        }
    }

    /// Says durably in the lease whether this node serves directly (its
    /// peer's record may lack regions: a takeover must copy everything).
    /// Returns once the block is written.
    pub fn set_direct(&self, direct: bool) -> Result<()> {
        let _io = lock(&self.io);
        let mine = self.block();
        if mine.direct == direct {
            return Ok(());
        }
        match self.area.read()? {
            Some(b) if b.owner == mine.owner && b.generation == mine.generation => {
                let next = Block {
                    counter: b.counter + 1,
                    direct,
                    ..mine
                };
                self.area.write(&next)?;
                *lock(&self.block) = next;
                Ok(())
            }
            other => {
                let why = format!(
                    "lease {} was taken over: it now says {other:?}",
                    self.area.path().display()
                );
                self.fence(why.clone());
                Err(Error::Fenced(why))
            }
        }
    }

    /// One renewal: read, check, write.
    fn renew_once(&self) {
        let _io = lock(&self.io);
        let began = self.now_ns();
        let mine = self.block();
        let result = self.area.read().and_then(|seen| match seen {
            Some(b) if b.owner == mine.owner && b.generation == mine.generation => {
                let next = Block {
                    counter: b.counter + 1,
                    ..mine
                };
                self.area.write(&next).map(|()| next)
            }
            other => Err(Error::Fenced(format!(
                "lease {} was taken over: it now says {other:?} (this node {} held generation {})",
                self.area.path().display(),
                self.node,
                mine.generation
            ))),
        });
        match result {
            Ok(next) => {
                *lock(&self.block) = next;
                let took = self.now_ns() - began;
                if took < (self.timeout / 8).as_nanos() as u64 {
                    let until = began + self.timeout.as_nanos() as u64;
                    if lock(&self.lost).is_none() {
                        self.valid_until.fetch_max(until, Ordering::AcqRel);
                    }
                    self.renewals.fetch_add(1, Ordering::Relaxed);
                } else {
                    log::warn!(
                        "lease {} renewal took {} ms: not counted",
                        self.area.path().display(),
                        took / 1_000_000
                    );
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e @ Error::Fenced(_)) => self.fence(e.to_string()),
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                log::warn!("renew the lease: {e}");
            }
        }
    }

    /// Stops renewing and marks the lease released (a clean stop): nobody
    /// takes it over by expiry; this node claims it again at its next start.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if lock(&self.lost).is_some() {
            return;
        }
        let _io = lock(&self.io);
        let mine = self.block();
        match self.area.read() {
            Ok(Some(b)) if b.owner == mine.owner && b.generation == mine.generation => {
                let next = Block {
                    counter: b.counter + 1,
                    released: true,
                    ..mine
                };
                if let Err(e) = self.area.write(&next) {
                    log::warn!("release the lease: {e}");
                }
            }
            other => log::warn!("lease not released: it says {other:?}"),
        }
        self.valid_until.store(0, Ordering::Release);
    }

    pub fn status(&self) -> LeaseStatus {
        let until = self.valid_until.load(Ordering::Acquire);
        LeaseStatus {
            path: self.area.path().display().to_string(),
            node: self.node,
            generation: self.generation(),
            valid: self.valid(),
            remaining_ms: until.saturating_sub(self.now_ns()) / 1_000_000,
            renewals: self.renewals.load(Ordering::Relaxed),
            failed_renewals: self.failed.load(Ordering::Relaxed),
            lost: lock(&self.lost).clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
    }
}

/// What a watcher concluded about another node's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nobody has claimed it yet.
    Blank,
    /// Its owner renews it, or has not been silent long enough.
    Alive(Block),
    /// Its owner stopped cleanly.
    Released(Block),
    /// Unchanged for the owner's timeout plus the margin: it may be taken
    /// over.
    Expired(Block),
}

/// Watches a lease from another node, judging expiry by this node's clock.
pub struct Watch {
    area: LeaseArea,
    last: Option<(Block, Instant)>,
}

impl Watch {
    pub fn new(path: &Path) -> Result<Watch> {
        Ok(Watch {
            area: LeaseArea::open(path)?,
            last: None,
        })
    }

    pub fn path(&self) -> &Path {
        self.area.path()
    }

    /// How long the block has been seen unchanged (zero before it was read).
    pub fn unchanged_for(&self) -> Duration {
        self.last.map(|(_, at)| at.elapsed()).unwrap_or_default()
    }

    /// Reads the block and says what it means now.
    pub fn poll(&mut self) -> Result<Seen> {
        let now = Instant::now();
        let Some(b) = self.area.read()? else {
            self.last = None;
            return Ok(Seen::Blank);
        };
        let since = match self.last {
            Some((last, at)) if last == b => at,
            _ => {
                self.last = Some((b, now));
                now
            }
        };
        Ok(if b.released {
            Seen::Released(b)
        } else if now.duration_since(since) >= b.expiry() {
            Seen::Expired(b)
        } else {
            Seen::Alive(b)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, node: u64, ms: u64) -> LeaseConfig {
        LeaseConfig {
            path: dir.join("lease"),
            node,
            timeout: Duration::from_millis(ms),
            reclaim: false,
        }
    }

    #[test]
    fn a_block_round_trips_and_a_flipped_bit_is_caught() {
        let b = Block {
            identity: 7,
            device_size: 1 << 30,
            region_size: 1 << 20,
            owner: 2,
            generation: 3,
            counter: 99,
            released: true,
            timeout_ms: 1500,
            direct: true,
        };
        let p = Path::new("x");
        let mut raw = b.encode();
        assert_eq!(Block::decode(&raw, p).unwrap(), Some(b));
        raw[40] ^= 1;
        let e = Block::decode(&raw, p).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert_eq!(Block::decode(&[0; LEASE_BYTES], p).unwrap(), None);
        let e = Block::decode(&[0x55; LEASE_BYTES], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a tandem lease"), "{e}");
    }

    #[test]
    fn the_owner_renews_another_node_is_refused_and_takes_over_only_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 1, 1000);
        let lease = Lease::claim(&a, 11, 1 << 20, 1 << 16).unwrap();
        assert!(lease.valid());
        assert_eq!(lease.generation(), 1);
        // Node 2 may not claim it.
        let b = cfg(dir.path(), 2, 1000);
        let e = Lease::claim(&b, 11, 1 << 20, 1 << 16)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("belongs to node 1"), "{e}");
        // Renewed: alive for longer than its timeout.
        let mut watch = Watch::new(&b.path).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(2500) {
            assert!(matches!(watch.poll().unwrap(), Seen::Alive(_)));
            assert!(lease.valid());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(lease.status().renewals >= 3);
        // The owner dies (its thread stops renewing, nothing released).
        drop(lease);
        let t0 = Instant::now();
        let seen = loop {
            match watch.poll().unwrap() {
                Seen::Expired(b) => break b,
                Seen::Alive(_) => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("{other:?}"),
            }
        };
        assert!(
            t0.elapsed() >= Duration::from_millis(550),
            "{:?}",
            t0.elapsed()
        );
        let taken = Lease::take_over(&b, &seen).unwrap();
        assert_eq!(taken.generation(), 2);
        assert_eq!(taken.identity(), 11);
        // The old owner coming back is refused.
        let e = Lease::claim(&a, 11, 1 << 20, 1 << 16)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("belongs to node 2 at generation 2"), "{e}");
    }

    #[test]
    fn a_taken_over_owner_fences_itself_at_its_next_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 1, 1000);
        let lease = Lease::claim(&a, 5, 1 << 20, 1 << 16).unwrap();
        // Planted: another node overwrites the block (as a takeover would).
        let area = LeaseArea::open(&a.path).unwrap();
        let stolen = Block {
            owner: 2,
            generation: 2,
            ..lease.block()
        };
        area.write(&stolen).unwrap();
        let t0 = Instant::now();
        while lease.valid() {
            assert!(t0.elapsed() < Duration::from_secs(3), "never fenced");
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = lease.check().unwrap_err().to_string();
        assert!(e.contains("taken over"), "{e}");
        assert!(lease.status().lost.is_some());
    }

    #[test]
    fn a_released_lease_is_not_expired_and_its_owner_claims_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 1, 200);
        let lease = Lease::claim(&a, 5, 1 << 20, 1 << 16).unwrap();
        lease.release();
        assert!(!lease.valid());
        let mut watch = Watch::new(&a.path).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(watch.poll().unwrap(), Seen::Released(_)));
        std::thread::sleep(Duration::from_millis(400));
        assert!(matches!(watch.poll().unwrap(), Seen::Released(_)));
        let again = Lease::claim(&a, 5, 1 << 20, 1 << 16).unwrap();
        assert_eq!(again.generation(), 1);
        assert!(again.valid());
    }

    /// Dual-active: the other node took this node's lease over; while it
    /// holds it this node is refused, once released it is claimed back at
    /// the next generation (saying `direct` until its peer pairs), and
    /// never without `reclaim`.
    #[test]
    fn a_lease_taken_over_and_released_is_claimed_back_only_with_reclaim() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 1, 200);
        let mine = Lease::claim(&a, 5, 1 << 20, 1 << 16).unwrap();
        drop(mine);
        let mut watch = Watch::new(&a.path).unwrap();
        let seen = loop {
            if let Seen::Expired(b) = watch.poll().unwrap() {
                break b;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let theirs = Lease::take_over(&cfg(dir.path(), 2, 200), &seen).unwrap();
        assert_eq!(theirs.generation(), 2);
        let back = LeaseConfig {
            reclaim: true,
            ..a.clone()
        };
        let e = Lease::claim(&back, 5, 1 << 20, 1 << 16).err().unwrap();
        assert!(e.to_string().contains("belongs to node 2"), "{e}");
        theirs.release();
        let e = Lease::claim(&a, 5, 1 << 20, 1 << 16).err().unwrap();
        assert!(e.to_string().contains("belongs to node 2"), "{e}");
        let again = Lease::claim(&back, 5, 1 << 20, 1 << 16).unwrap();
        assert_eq!((again.block().owner, again.generation()), (1, 3));
        assert!(again.block().direct && again.valid());
    }

    #[test]
    fn a_lease_for_another_geometry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = cfg(dir.path(), 1, 200);
        drop(Lease::claim(&a, 5, 1 << 20, 1 << 16).unwrap());
        let e = Lease::claim(&a, 5, 1 << 21, 1 << 16)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("device of 1048576 bytes"), "{e}");
    }
}
