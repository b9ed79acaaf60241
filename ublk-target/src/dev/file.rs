//! Regular files and block devices. Reads and writes with O_DIRECT go
//! through the calling thread's io_uring (`rings`); buffered ones, and every
//! sync, are plain system calls. The kernel runs a buffered write that may
//! block, and every fsync, on an io_uring worker thread, so a caller that
//! waits for it pays two more thread switches than the system call: a
//! record update, which writes and syncs, took a fifth longer that way.
//!
//! With O_DIRECT, requests whose buffer address, offset or length are not
//! aligned go through an aligned bounce buffer; a write that covers a block
//! only partly reads that block first (read-modify-write) under a striped
//! lock, so concurrent writes to different bytes of one block do not undo
//! each other.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::{Dev, PathCheck};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rings::{with_thread_ring, AlignedBuf, RwFlags};

use super::BlockDev;
use crate::error::{Error, Result};

/// Largest bounce buffer, and largest buffer of zeroes written at once.
const CHUNK: u64 = 1 << 20;
/// Stripes of the read-modify-write lock table.
const RMW_STRIPES: usize = 64;

/// The block-device ioctls used here (`linux/fs.h`).
mod ioctl {
    nix::ioctl_read_bad!(
        blkgetsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()),
        u64
    );
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// How to open a device.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Bypass the page cache where the file system allows (O_DIRECT).
    pub direct: bool,
    /// Create a regular file of `create_size` bytes when it does not exist.
    pub create_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    Block,
}

/// A regular file or block device.
pub struct FileDev {
    file: File,
    path: PathBuf,
    kind: Kind,
    size: u64,
    logical: u32,
    physical: u32,
    /// With O_DIRECT in effect: the alignment required of buffer addresses,
    /// offsets and lengths.
    dio_align: Option<u32>,
    discard: bool,
    /// `FALLOC_FL_PUNCH_HOLE` is still believed to work (cleared on EOPNOTSUPP).
    punch_hole: AtomicBool,
    /// `FALLOC_FL_ZERO_RANGE` is still believed to work (regular files).
    zero_range: AtomicBool,
    /// Held while a partly written block is read, patched and written back.
    rmw: Box<[Mutex<()>]>,
    /// What the path named when it was opened (see `check_path`).
    identity: Identity,
    /// Whether O_DIRECT was asked for (to reopen the same way).
    want_direct: bool,
}

/// What a path names: a block device by its number, a file by its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    Block(u64),
    File { dev: u64, ino: u64 },
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        if meta.file_type().is_block_device() {
            Identity::Block(meta.rdev())
        } else {
            Identity::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }
}

impl fmt::Debug for FileDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDev")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("logical", &self.logical)
            .field("physical", &self.physical)
            .field("dio_align", &self.dio_align)
            .field("discard", &self.discard)
            .finish()
    }
}

/// Wraps an I/O error as "`what` `path`: error".
fn ctx<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

impl FileDev {
    /// Opens `path` (a regular file or block device) for reading and writing.
    ///
    /// With `opts.direct`, a file system that refuses O_DIRECT (EINVAL) is
    /// opened buffered instead and [`BlockDev::direct`] reports `false`; so
    /// is a regular file whose size is not a multiple of the alignment
    /// O_DIRECT needs.
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Self> {
        if let Some(size) = opts.create_size {
            create_if_missing(path, size)?;
        }
        let mut file = open_file(path, opts.direct).map_err(ctx("open", path))?;
        let meta = file.metadata().map_err(ctx("stat", path))?;
        let file_type = meta.file_type();
        let fd = file.as_raw_fd();
        let (kind, size, logical, physical, discard) = if file_type.is_block_device() {
            (
                Kind::Block,
                block_size(fd).map_err(ctx("BLKGETSIZE64", path))?,
                block_logical_size(fd).map_err(ctx("BLKSSZGET", path))?,
                block_physical_size(fd).map_err(ctx("BLKPBSZGET", path))?,
                block_discard_supported(meta.rdev()),
            )
        } else if file_type.is_file() {
            (Kind::Regular, meta.len(), 512, 4096, true)
        } else {
            return Err(Error::Config(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };

        let mut dio_align = None;
        if is_direct(&file) {
            let align = match kind {
                Kind::Block => Some(logical),
                Kind::Regular => regular_dio_align(fd),
            };
            match align {
                Some(a) if is_aligned(size, u64::from(a)) => dio_align = Some(a),
                _ => {
                    log::warn!(
                        "{}: O_DIRECT unusable (alignment {align:?}, size {size}); using buffered I/O",
                        path.display()
                    );
                    file = open_file(path, false).map_err(ctx("open", path))?;
                }
            }
        }

        Ok(FileDev {
            file,
            path: path.to_path_buf(),
            kind,
            size,
            logical,
            physical: physical.max(logical),
            dio_align,
            discard,
            punch_hole: AtomicBool::new(true),
            zero_range: AtomicBool::new(true),
            rmw: (0..RMW_STRIPES).map(|_| Mutex::new(())).collect(),
            identity: Identity::of(&meta),
            want_direct: opts.direct,
        })
    }

    /// The path the device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// The O_DIRECT alignment, if this request breaks it and must be bounced.
    fn misaligned(&self, addr: *const u8, offset: u64, len: usize) -> Option<u64> {
        let a = u64::from(self.dio_align?);
        let aligned = is_aligned(addr as usize as u64, a)
            && is_aligned(offset, a)
            && is_aligned(len as u64, a);
        (!aligned).then_some(a)
    }

    fn read_bounced(&self, buf: &mut [u8], offset: u64, a: u64) -> io::Result<()> {
        let fd = self.fd();
        let end = offset + buf.len() as u64;
        let mut bounce = AlignedBuf::zeroed_aligned(bounce_len(offset, end, a), a as usize);
        with_thread_ring(|ring| {
            let mut pos = offset;
            while pos < end {
                let p = Piece::new(pos, end, a);
                let chunk = &mut bounce[..p.aligned_len()];
                ring.read_at(fd, chunk, p.a_start)?;
                let at = (pos - offset) as usize;
                buf[at..at + p.len()].copy_from_slice(&chunk[p.head()..p.head() + p.len()]);
                pos = p.end;
            }
            Ok(())
        })
    }

    fn write_bounced(&self, buf: &[u8], offset: u64, a: u64, flags: RwFlags) -> io::Result<()> {
        let fd = self.fd();
        let end = offset + buf.len() as u64;
        let mut bounce = AlignedBuf::zeroed_aligned(bounce_len(offset, end, a), a as usize);
        with_thread_ring(|ring| {
            let mut pos = offset;
            while pos < end {
                let p = Piece::new(pos, end, a);
                let chunk = &mut bounce[..p.aligned_len()];
                let partial_head = p.start != p.a_start;
                let partial_tail = p.end != p.a_end;
                let _guards = (partial_head || partial_tail)
                    .then(|| self.lock_blocks(p.a_start / a, p.a_end / a - 1));
                let block = a as usize;
                if partial_head {
                    ring.read_at(fd, &mut chunk[..block], p.a_start)?;
                }
                if partial_tail && !(partial_head && chunk.len() == block) {
                    let tail = chunk.len() - block;
                    ring.read_at(fd, &mut chunk[tail..], p.a_end - a)?;
                }
                let at = (pos - offset) as usize;
                chunk[p.head()..p.head() + p.len()].copy_from_slice(&buf[at..at + p.len()]);
                ring.write_at(fd, chunk, p.a_start, flags)?;
                pos = p.end;
            }
            Ok(())
        })
    }

    /// Locks the stripes of blocks `first` and `last`, in stripe order.
    fn lock_blocks(&self, first: u64, last: u64) -> [Option<MutexGuard<'_, ()>>; 2] {
        let stripe = |b: u64| (b % RMW_STRIPES as u64) as usize;
        let (i, j) = (stripe(first), stripe(last));
        let lock = |s: usize| self.rmw[s].lock().unwrap_or_else(|e| e.into_inner());
        let first = lock(i.min(j));
        let second = (i != j).then(|| lock(i.max(j)));
        [Some(first), second]
    }

    /// Zeroes a range: with `deallocate` (discard) a punched hole where
    /// possible, else zeroes that stay allocated; for a regular file whose
    /// file system refuses the fallocate mode, the next best way.
    fn zero(&self, offset: u64, len: u64, deallocate: bool) -> io::Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.kind == Kind::Block {
            return self.zero_block_range(offset, len, deallocate);
        }
        let (works, mode) = if deallocate {
            (&self.punch_hole, libc::FALLOC_FL_PUNCH_HOLE)
        } else {
            (&self.zero_range, libc::FALLOC_FL_ZERO_RANGE)
        };
        if self.try_fallocate(works, mode | libc::FALLOC_FL_KEEP_SIZE, offset, len)? {
            Ok(())
        } else if deallocate {
            self.zero(offset, len, false)
        } else {
            self.write_zero_buffers(offset, len)
        }
    }

    /// Runs `fallocate` with `mode` unless `works` says it is unsupported;
    /// returns false (and clears `works`) when the file system refuses it.
    fn try_fallocate(
        &self,
        works: &AtomicBool,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> io::Result<bool> {
        if !works.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let fd = self.fd();
        match with_thread_ring(|ring| ring.fallocate(fd, mode, offset, len)) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                log::info!(
                    "{}: fallocate mode {mode:#x} unsupported, writing zeroes instead",
                    self.path.display()
                );
                works.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes buffers of zeroes over the range, at most [`CHUNK`] bytes each.
    fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        let align = self.dio_align.map_or(AlignedBuf::PAGE, |a| a as usize);
        let zeroes = AlignedBuf::zeroed_aligned(len.min(CHUNK) as usize, align);
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            // Later chunks start on CHUNK boundaries, so they stay aligned.
            let n = (end - pos).min(CHUNK - pos % CHUNK);
            self.write_at(&zeroes[..n as usize], pos, false)?;
            pos += n;
        }
        Ok(())
    }

    /// Zeroes a block-device range: the part aligned to the logical block
    /// size with one call (a punched hole when `deallocate` and the device
    /// can, else BLKZEROOUT), the unaligned ends with buffers of zeroes.
    fn zero_block_range(&self, offset: u64, len: u64, deallocate: bool) -> io::Result<()> {
        let lbs = u64::from(self.logical);
        let end = offset + len;
        let mid_start = offset.next_multiple_of(lbs);
        let mid_end = end / lbs * lbs;
        if mid_start >= mid_end {
            return self.write_zero_buffers(offset, len);
        }
        if mid_start > offset {
            self.write_zero_buffers(offset, mid_start - offset)?;
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let punched = deallocate
            && self.try_fallocate(&self.punch_hole, mode, mid_start, mid_end - mid_start)?;
        if !punched {
            let range = [mid_start, mid_end - mid_start];
            // SAFETY: BLKZEROOUT reads two u64s (start, length) from the
            // pointer, which points to a live local array.
            unsafe { ioctl::blkzeroout(self.fd(), &range) }?;
        }
        if end > mid_end {
            self.write_zero_buffers(mid_end, end - mid_end)?;
        }
        Ok(())
    }
}

impl BlockDev for FileDev {
    fn size(&self) -> u64 {
        self.size
    }

    fn check_path(&self) -> PathCheck {
        match std::fs::metadata(&self.path) {
            Ok(meta) if Identity::of(&meta) == self.identity => PathCheck::Same,
            Ok(_) => PathCheck::Replaced,
            Err(e) => PathCheck::Gone(format!("{} is gone: {e}", self.path.display())),
        }
    }

    fn reopen(&self) -> Result<Dev> {
        let opts = OpenOptions {
            direct: self.want_direct,
            create_size: None,
        };
        Ok(std::sync::Arc::new(FileDev::open(&self.path, &opts)?))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn dio_alignment(&self) -> Option<u32> {
        self.dio_align
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.dio_align.is_some() {
            return Ok(());
        }
        let off = |v: u64| libc::off_t::try_from(v).unwrap_or(libc::off_t::MAX);
        nix::fcntl::posix_fadvise(
            self.file.as_raw_fd(),
            off(offset),
            off(len),
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        match self.misaligned(buf.as_ptr(), offset, buf.len()) {
            Some(a) => self.read_bounced(buf, offset, a),
            None if self.dio_align.is_none() => self.file.read_exact_at(buf, offset),
            None => {
                let fd = self.fd();
                with_thread_ring(|ring| ring.read_at(fd, buf, offset))
            }
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let flags = if fua { RwFlags::DSYNC } else { RwFlags::NONE };
        let fd = self.fd();
        let written = match self.misaligned(buf.as_ptr(), offset, buf.len()) {
            Some(a) => self.write_bounced(buf, offset, a, flags),
            None if self.dio_align.is_none() => {
                self.file.write_all_at(buf, offset)?;
                return if fua { self.sync() } else { Ok(()) };
            }
            None => with_thread_ring(|ring| ring.write_at(fd, buf, offset, flags)),
        };
        match written {
            // A kernel without RWF_DSYNC: a plain write, then fdatasync.
            Err(e) if fua && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_at(buf, offset, false)?;
                self.sync()
            }
            r => r,
        }
    }

    fn sync(&self) -> io::Result<()> {
        nix::unistd::fdatasync(self.fd()).map_err(io::Error::from)
    }

    /// Regular files: a punched hole, or zeroes where holes are unsupported.
    /// Block devices: a punched hole (the kernel deallocates where the device
    /// can and guarantees zeroes), else BLKZEROOUT. Plain BLKDISCARD is not
    /// used: it does not promise that reads return zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero(offset, len, false)
    }

    fn supports_discard(&self) -> bool {
        self.discard
    }

    fn logical_block_size(&self) -> u32 {
        self.logical
    }

    fn physical_block_size(&self) -> u32 {
        self.physical
    }

    fn direct(&self) -> bool {
        self.dio_align.is_some()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// One bounce-buffer load of a request: `start..end`, inside the aligned
/// range `a_start..a_end` of at most `max(CHUNK, a)` bytes.
struct Piece {
    start: u64,
    end: u64,
    a_start: u64,
    a_end: u64,
}

impl Piece {
    fn new(pos: u64, end: u64, a: u64) -> Piece {
        let a_start = pos / a * a;
        // `a` and CHUNK are powers of two, so `a_start + span` is aligned.
        let end = end.min(a_start + CHUNK.max(a));
        Piece {
            start: pos,
            end,
            a_start,
            a_end: end.next_multiple_of(a),
        }
    }

    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    fn aligned_len(&self) -> usize {
        (self.a_end - self.a_start) as usize
    }

    /// Where the request's bytes start in the bounce buffer.
    fn head(&self) -> usize {
        (self.start - self.a_start) as usize
    }
}

/// Whether `x` is a multiple of `a`, a power of two.
fn is_aligned(x: u64, a: u64) -> bool {
    x & (a - 1) == 0
}

/// Bounce buffer size for `offset..end`: its aligned span, at most one piece.
fn bounce_len(offset: u64, end: u64, a: u64) -> usize {
    let span = end.next_multiple_of(a) - offset / a * a;
    span.min(CHUNK.max(a)) as usize
}

/// Creates a sparse regular file of `size` bytes unless `path` exists.
fn create_if_missing(path: &Path, size: u64) -> Result<()> {
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(ctx("create", path)(e)),
    };
    if let Err(e) = file.set_len(size).and_then(|()| file.sync_all()) {
        // Do not leave a file of the wrong size behind to be opened next time.
        let _ = std::fs::remove_file(path);
        return Err(ctx("set size of", path)(e));
    }
    log::info!("created {} ({size} bytes)", path.display());
    Ok(())
}

/// Opens read-write, with O_DIRECT when `direct` unless the file system
/// refuses it (EINVAL), in which case the file is opened buffered.
fn open_file(path: &Path, direct: bool) -> io::Result<File> {
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    if direct {
        match open(libc::O_DIRECT) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: the file system refuses O_DIRECT; using buffered I/O",
                    path.display()
                );
            }
            r => return r,
        }
    }
    open(0)
}

fn is_direct(file: &File) -> bool {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

/// The O_DIRECT alignment of a regular file: from statx (Linux 6.1+) when the
/// file system reports it, else 4096. `None` when it reports no O_DIRECT support.
fn regular_dio_align(fd: RawFd) -> Option<u32> {
    // SAFETY: `statx` is plain old data, for which all-zero bytes are valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string (with
    // AT_EMPTY_PATH, `fd` itself is examined) and `stx` is a live, writable
    // statx buffer.
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Some(4096);
    }
    if stx.stx_dio_offset_align == 0 {
        return None;
    }
    let align = stx.stx_dio_offset_align.max(stx.stx_dio_mem_align).max(512);
    align.is_power_of_two().then_some(align)
}

fn block_size(fd: RawFd) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local.
    unsafe { ioctl::blkgetsize64(fd, &mut size) }?;
    Ok(size)
}

fn block_logical_size(fd: RawFd) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    unsafe { ioctl::blksszget(fd, &mut size) }?;
    u32::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn block_physical_size(fd: RawFd) -> io::Result<u32> {
    let mut size: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, which
    // points to a live local.
    unsafe { ioctl::blkpbszget(fd, &mut size) }?;
    Ok(size)
}

/// Whether the block device's queue accepts discards (`discard_max_bytes > 0`).
/// A partition has no queue directory of its own; its disk's is used.
fn block_discard_supported(rdev: u64) -> bool {
    let dir = format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    ["queue", "../queue"]
        .iter()
        .find_map(|q| std::fs::read_to_string(format!("{dir}/{q}/discard_max_bytes")).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    fn create(dir: &Path, size: u64, direct: bool) -> FileDev {
        let opts = OpenOptions {
            direct,
            create_size: Some(size),
        };
        FileDev::open(&dir.join("disk.img"), &opts).unwrap()
    }

    fn read_all(dev: &FileDev) -> Vec<u8> {
        let mut buf = AlignedBuf::zeroed(dev.size() as usize);
        dev.read_at(&mut buf, 0).unwrap();
        buf.to_vec()
    }

    /// Whether the environment asks for a capability to be there, so that a
    /// test fails instead of skipping (the VM suite sets these: there the
    /// kernel has loop devices and file systems with O_DIRECT).
    fn required(var: &str) -> bool {
        std::env::var_os(var).is_some_and(|v| v == "1")
    }

    /// Says which path a test that asked for O_DIRECT exercises here: without
    /// O_DIRECT its direct-I/O half (alignment, bounce buffers) is skipped,
    /// loudly, or fails under `TANDEM_REQUIRE_DIRECT=1`.
    fn note_direct(dev: &FileDev, test: &str) {
        if dev.direct() {
            eprintln!("{test}: O_DIRECT in effect (alignment {:?})", dev.dio_align);
        } else {
            assert!(
                !required("TANDEM_REQUIRE_DIRECT"),
                "{test}: O_DIRECT is required here, but the temp dir's file system refused it"
            );
            eprintln!(
                "SKIP {test} (O_DIRECT half): the temp dir's file system refused O_DIRECT; \
                 only buffered I/O is tested here"
            );
        }
    }

    #[test]
    fn create_size_makes_a_sparse_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let dev = create(dir.path(), 3 << 20, false);
        assert_eq!(dev.size(), 3 << 20);
        assert_eq!(
            std::fs::metadata(dir.path().join("disk.img"))
                .unwrap()
                .len(),
            3 << 20
        );
        assert_eq!(dev.logical_block_size(), 512);
        assert_eq!(dev.physical_block_size(), 4096);
        assert!(dev.supports_discard());
        assert!(!dev.direct());
        assert!(dev.describe().ends_with("disk.img"));
        assert!(read_all(&dev).iter().all(|&b| b == 0));
        dev.write_at(b"kept", 0, true).unwrap();
        drop(dev);
        // An existing file keeps its size and contents.
        let dev = create(dir.path(), 1 << 20, false);
        assert_eq!(dev.size(), 3 << 20);
        let mut buf = [0; 4];
        dev.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"kept");
    }

    fn round_trip(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let dev = create(dir.path(), size, direct);
        if direct {
            note_direct(&dev, "round_trip_at_unaligned_offsets_direct");
        }
        let mut model = vec![0u8; size as usize];
        let mut write = |dev: &FileDev, data: &[u8], off: u64, fua: bool| {
            dev.write_at(data, off, fua).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(data);
        };
        let mut aligned = AlignedBuf::zeroed(8192);
        aligned.copy_from_slice(&pattern(8192, 1));
        write(&dev, &aligned, 0, false);
        write(&dev, &pattern(1000, 2), 513, false);
        write(&dev, &pattern(10, 3), 4095, true);
        write(&dev, &pattern(3, 4), 1, false);
        // Aligned offset and length, misaligned buffer address.
        let shifted = pattern(4097, 5);
        write(&dev, &shifted[1..], 16384, false);
        // Larger than one bounce buffer, unaligned at both ends.
        write(&dev, &pattern((3 << 19) + 77, 6), 12345, false);
        write(&dev, &pattern(700, 7), size - 700, true);
        dev.sync().unwrap();
        assert!(read_all(&dev) == model, "contents differ from the model");
        for (off, len) in [
            (1u64, 3usize),
            (4090, 20),
            (12000, (3 << 19) + 1000),
            (size - 5, 5),
        ] {
            let mut buf = vec![0; len + 1];
            dev.read_at(&mut buf[1..], off).unwrap();
            assert!(
                buf[1..] == model[off as usize..off as usize + len],
                "read of {len} at {off}"
            );
        }
    }

    #[test]
    fn round_trip_at_unaligned_offsets_direct() {
        round_trip(true);
    }

    #[test]
    fn round_trip_at_unaligned_offsets_buffered() {
        round_trip(false);
    }

    #[test]
    fn concurrent_writes_within_one_block_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let dev = create(dir.path(), 1 << 20, true);
        note_direct(&dev, "concurrent_writes_within_one_block_all_land");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let dev = &dev;
                s.spawn(move || {
                    for round in 0..50u8 {
                        let off = 100 + u64::from(t) * 300;
                        dev.write_at(&[t ^ round; 300], off, false).unwrap();
                    }
                });
            }
        });
        let all = read_all(&dev);
        for t in 0..8u8 {
            let off = 100 + usize::from(t) * 300;
            assert!(
                all[off..off + 300].iter().all(|&b| b == t ^ 49),
                "writer {t}"
            );
        }
    }

    fn zeroing(direct: bool, discard: bool) {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let dev = create(dir.path(), size, direct);
        let data = pattern(size as usize, 9);
        dev.write_at(&data, 0, false).unwrap();
        let ranges = [
            (1000u64, 10_000u64),
            (65536, 4096),
            (100_000, (5 << 19) + 3),
        ];
        for (off, len) in ranges {
            if discard {
                dev.discard(off, len).unwrap();
            } else {
                dev.write_zeroes(off, len).unwrap();
            }
        }
        let back = read_all(&dev);
        for (i, (&got, &was)) in back.iter().zip(&data).enumerate() {
            let zeroed = ranges
                .iter()
                .any(|&(off, len)| (off..off + len).contains(&(i as u64)));
            assert_eq!(got, if zeroed { 0 } else { was }, "byte {i}");
        }
        assert_eq!(dev.size(), size);
    }

    #[test]
    fn discard_reads_back_zeroes() {
        zeroing(false, true);
        zeroing(true, true);
    }

    #[test]
    fn write_zeroes_reads_back_zeroes() {
        zeroing(false, false);
        zeroing(true, false);
    }

    #[test]
    fn zero_buffer_fallback_matches() {
        let dir = tempfile::tempdir().unwrap();
        let dev = create(dir.path(), 3 << 20, true);
        dev.write_at(&pattern(3 << 20, 11), 0, false).unwrap();
        dev.write_zero_buffers(7, (2 << 20) + 5).unwrap();
        let back = read_all(&dev);
        assert!(back[7..7 + (2 << 20) + 5].iter().all(|&b| b == 0));
        assert_eq!(back[..7], pattern(7, 11)[..]);
        assert_eq!(
            back[(2 << 20) + 12..],
            pattern(3 << 20, 11)[(2 << 20) + 12..]
        );
    }

    #[test]
    fn out_of_range_requests_are_einval() {
        let dir = tempfile::tempdir().unwrap();
        let dev = create(dir.path(), 8192, false);
        let mut buf = [0; 16];
        let einval = Some(libc::EINVAL);
        assert_eq!(
            dev.read_at(&mut buf, 8190).unwrap_err().raw_os_error(),
            einval
        );
        assert_eq!(
            dev.write_at(&buf, 8190, false).unwrap_err().raw_os_error(),
            einval
        );
        assert_eq!(dev.discard(0, 8193).unwrap_err().raw_os_error(), einval);
        assert_eq!(
            dev.write_zeroes(u64::MAX, 2).unwrap_err().raw_os_error(),
            einval
        );
        assert_eq!(
            std::fs::metadata(dev.path()).unwrap().len(),
            8192,
            "file not extended"
        );
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.img");
        let err = FileDev::open(&path, &OpenOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(err.errno(), -libc::ENOENT);
    }

    #[test]
    fn character_device_is_refused() {
        let err = FileDev::open(Path::new("/dev/null"), &OpenOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("/dev/null"));
    }

    /// A loop device over a temp file, detached on drop.
    struct Loop(String);

    impl Loop {
        fn attach(backing: &Path, sector_size: u32) -> std::result::Result<Loop, String> {
            let out = std::process::Command::new("losetup")
                .args([
                    "--find",
                    "--show",
                    "--sector-size",
                    &sector_size.to_string(),
                ])
                .arg(backing)
                .output()
                .map_err(|e| format!("cannot run losetup: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            Ok(Loop(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["--detach", &self.0])
                .status();
        }
    }

    #[test]
    fn block_device_through_a_loop_device() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        let size = 4u64 << 20;
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let lo = match Loop::attach(&backing, 4096) {
            Ok(lo) => lo,
            Err(why) => {
                assert!(
                    !required("TANDEM_REQUIRE_LOOP"),
                    "a loop device is required here: {why}"
                );
                eprintln!(
                    "SKIP block_device_through_a_loop_device: no loop device ({why}); \
                     the real-kernel suite runs it"
                );
                return;
            }
        };
        let dev = FileDev::open(
            Path::new(&lo.0),
            &OpenOptions {
                direct: true,
                create_size: None,
            },
        )
        .unwrap();
        assert_eq!(dev.size(), size);
        assert_eq!(dev.logical_block_size(), 4096);
        assert!(dev.physical_block_size() >= 4096);
        assert!(dev.direct());
        eprintln!(
            "loop device {}: discard supported: {}",
            lo.0,
            dev.supports_discard()
        );

        let data = pattern(size as usize, 21);
        dev.write_at(&data, 0, false).unwrap();
        let mut model = data.clone();
        dev.write_at(&pattern(5000, 22), 1234, true).unwrap();
        model[1234..6234].copy_from_slice(&pattern(5000, 22));
        dev.discard(10_000, 100_000).unwrap();
        model[10_000..110_000].fill(0);
        dev.write_zeroes(200_003, 50_001).unwrap();
        model[200_003..250_004].fill(0);
        dev.sync().unwrap();
        assert!(read_all(&dev) == model, "contents differ from the model");
    }
}
