//! Block devices as small capability traits: what the engine reads, writes and syncs.
//!
//! `FileDev` is the real backend (a regular file or a block device, I/O through
//! `rings`). `MemDev` keeps data in memory and can simulate power loss: it is the
//! test double for the property tests and the trace simulator.

mod disks;
mod file;
mod group;
mod mem;
pub mod nbd;

pub use disks::shared_disks;
pub use file::{FileDev, OpenOptions};
pub use mem::{Faults, MemDev};
pub use nbd::{NbdDev, NbdUri};

use std::io;
use std::sync::Arc;

/// How the data devices are opened: the host page cache in the path or not.
///
/// Either way the ublk device advertises a volatile write cache: a write is
/// durable once a flush that follows it completes, or at once with FUA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// O_DIRECT: writes go straight to the device (its own cache aside).
    #[default]
    None,
    /// Through the host page cache: a write completes once copied there and
    /// reaches the device at the next flush, FUA write or kernel writeback.
    /// Faster small writes and reads of recent data, at the cost of host memory.
    Writeback,
}

impl Cache {
    pub const ALL: [Cache; 2] = [Cache::None, Cache::Writeback];
    /// The names `parse` accepts.
    pub const NAMES: [&'static str; 2] = [Cache::None.name(), Cache::Writeback.name()];

    pub fn parse(name: &str) -> Option<Cache> {
        Cache::ALL.into_iter().find(|c| c.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Cache::None => "none",
            Cache::Writeback => "writeback",
        }
    }
}

impl std::fmt::Display for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cache {
    type Err = crate::Error;
    fn from_str(text: &str) -> crate::Result<Self> {
        Cache::parse(text).ok_or_else(|| {
            crate::Error::Config(format!(
                "cache {text:?}: choose one of {}",
                Cache::NAMES.join(", ")
            ))
        })
    }
}

/// What the path a device was opened from names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathCheck {
    /// The device that is open (or the device has no path).
    Same,
    /// Another device or file: the one that was open was removed or replaced.
    Replaced,
    /// Nothing: the device or file was removed (the message says so).
    Gone(String),
}

/// A device the engine can mirror: sized, readable, writable, syncable.
///
/// All calls are positional and may be made from many threads at once.
pub trait BlockDev: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`. Not durable until `sync` unless `fua`.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync or a device flush).
    fn sync(&self) -> io::Result<()>;
    /// Deallocates a range; reads of it return zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Writes zeroes over a range, without transferring a buffer where possible.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Whether `discard` is supported natively (advertised to the host).
    fn supports_discard(&self) -> bool;
    /// Logical block size in bytes (512 for regular files).
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// Physical block size in bytes.
    fn physical_block_size(&self) -> u32 {
        4096
    }
    /// Whether reads and writes bypass the page cache (alignment matters then).
    fn direct(&self) -> bool {
        false
    }
    /// Drops what the host's page cache holds clean of a range, so that the
    /// next read comes from the device (another host may have written it).
    /// Dirty pages are written back, not lost. Nothing to do without a cache.
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// A description for messages: usually the path.
    fn describe(&self) -> String;
    /// Whether the device is reached over a network (an NBD export): its
    /// requests wait for a round trip, so more of them should be in flight.
    fn remote(&self) -> bool {
        false
    }
    /// The file descriptor, for callers that submit I/O on their own ring
    /// (the ublk queues). `None` for devices that are not files.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Whether the path this device was opened from still names it: a disk
    /// that was unplugged, a device-mapper device removed, a file deleted or
    /// replaced. Devices without a path are always `Same`.
    fn check_path(&self) -> PathCheck {
        PathCheck::Same
    }
    /// Opens whatever the device's path names now, the same way.
    fn reopen(&self) -> crate::Result<Dev> {
        Err(crate::Error::Config(format!(
            "{} cannot be reopened",
            self.describe()
        )))
    }
    /// With O_DIRECT in effect, the alignment requests on `raw_fd` must keep
    /// (address, offset and length); `None` when any request works.
    fn dio_alignment(&self) -> Option<u32> {
        None
    }
    /// Why the device is not there (a [`MissingDev`]): it stands for a
    /// device that was missing when the engine opened.
    fn missing(&self) -> Option<String> {
        None
    }
    /// A count that grows whenever writes this device acknowledged may
    /// have been lost before a sync covered them (a connection to a server
    /// broke with its cache unflushed). A caller whose writes and sync span
    /// a change must write again. Local devices never lose them: 0.
    fn losses(&self) -> u64 {
        0
    }
}

/// Opens a data device named by a path (a file or block device) or by an
/// NBD URI (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`).
pub fn open_data(spec: &std::path::Path, opts: &OpenOptions) -> crate::Result<Dev> {
    if nbd::is_uri(spec) {
        let uri = NbdUri::parse(&spec.to_string_lossy())?;
        return Ok(Arc::new(NbdDev::connect(&uri)?));
    }
    Ok(Arc::new(FileDev::open(spec, opts)?))
}

/// Whether the device `spec` names is there: a path that exists, or an NBD
/// export that accepts a connection.
pub fn present(spec: &std::path::Path) -> bool {
    if nbd::is_uri(spec) {
        return NbdUri::parse(&spec.to_string_lossy())
            .and_then(|uri| NbdDev::connect(&uri))
            .is_ok();
    }
    std::fs::metadata(spec).is_ok()
}

/// A device that was missing at start (a secondary, with
/// `--degraded-after`): every I/O fails with ENODEV, and `reopen` opens
/// whatever its path names once it exists. Its path counts as `Same`, so
/// the mirror's watch reopens it every few seconds as it does a failing
/// secondary, and copies what the record lists once it is there.
pub struct MissingDev {
    path: std::path::PathBuf,
    size: u64,
    direct: bool,
}

impl MissingDev {
    /// Stands for the device at `path`, as large as `size` (the primary's).
    pub fn new(path: std::path::PathBuf, size: u64, direct: bool) -> MissingDev {
        MissingDev { path, size, direct }
    }

    fn gone(&self) -> io::Error {
        io::Error::from_raw_os_error(libc::ENODEV)
    }
}

impl BlockDev for MissingDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(self.gone())
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> io::Result<()> {
        Err(self.gone())
    }
    fn sync(&self) -> io::Result<()> {
        Err(self.gone())
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Err(self.gone())
    }
    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        Err(self.gone())
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn remote(&self) -> bool {
        nbd::is_uri(&self.path)
    }
    fn reopen(&self) -> crate::Result<Dev> {
        let opts = OpenOptions {
            direct: self.direct,
            create_size: None,
        };
        open_data(&self.path, &opts)
    }
    fn missing(&self) -> Option<String> {
        Some(format!(
            "secondary {} was missing at start",
            self.path.display()
        ))
    }
}

/// A shared handle to any device.
pub type Dev = Arc<dyn BlockDev>;
