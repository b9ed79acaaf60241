//! One io_uring, and blocking helpers that submit on it and wait.
//!
//! Every helper borrows its buffers for the whole call and returns only once
//! the kernel has posted a completion for every entry it accepted, so no
//! buffer can be freed or reused while the kernel still reads or writes it.

use std::fmt;
use std::io;
use std::ops::BitOr;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, EnterFlags, IoUring};

/// Largest transfer put in one entry; the kernel caps a read or write below 2 GiB anyway.
const MAX_OP_BYTES: usize = 1 << 30;
/// Consecutive rounds of transient failure (EAGAIN, EBUSY) tolerated without progress.
const MAX_STALLS: u32 = 1000;

/// Per-write flags (`RWF_*`), passed in the entry's `rw_flags`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RwFlags(i32);

impl RwFlags {
    pub const NONE: RwFlags = RwFlags(0);
    /// `RWF_DSYNC`: the write is durable when it completes, as with O_DSYNC (a FUA write).
    pub const DSYNC: RwFlags = RwFlags(libc::RWF_DSYNC);

    /// Raw `RWF_*` bits, for flags without a constant here.
    pub const fn from_bits(bits: i32) -> RwFlags {
        RwFlags(bits)
    }

    pub const fn bits(self) -> i32 {
        self.0
    }
}

impl BitOr for RwFlags {
    type Output = RwFlags;

    fn bitor(self, rhs: RwFlags) -> RwFlags {
        RwFlags(self.0 | rhs.0)
    }
}

/// An io_uring used synchronously: each helper submits its entries and waits
/// for all of their completions before returning.
pub struct Ring {
    uring: IoUring,
    /// Set when a submission failed in a way that may have left entries in
    /// the submission queue. Their buffers are gone once the failing call
    /// returns, so the ring is never entered again: every call fails.
    broken: bool,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("entries", &self.uring.params().sq_entries())
            .field("broken", &self.broken)
            .finish()
    }
}

/// One positional read or write in progress.
struct Transfer {
    addr: *mut u8,
    len: usize,
    offset: u64,
    done: usize,
    /// A read returned 0 bytes: end of file.
    eof: bool,
}

impl Transfer {
    fn new(addr: *mut u8, len: usize, offset: u64) -> Transfer {
        Transfer {
            addr,
            len,
            offset,
            done: 0,
            eof: false,
        }
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write(RwFlags),
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Ring {
    /// A ring with `entries` submission slots (rounded up to a power of two by the kernel).
    pub fn new(entries: u32) -> io::Result<Ring> {
        Ok(Ring {
            uring: IoUring::new(entries)?,
            broken: false,
        })
    }

    /// Whether a failed submission left this ring unusable (every call then fails).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads exactly `buf.len()` bytes at `offset`, resubmitting after short
    /// reads. Reaching end of file first is an `UnexpectedEof` error.
    pub fn read_at(&mut self, fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_at_most(fd, buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at offset {offset} reached end of file after {n} bytes",
                    buf.len()
                ),
            ));
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`, stopping early only at end
    /// of file; returns the number of bytes read.
    pub fn read_at_most(&mut self, fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut t = [Transfer::new(buf.as_mut_ptr(), buf.len(), offset)];
        // SAFETY: `buf` is mutably borrowed for this whole call, so it stays
        // valid and untouched by anyone else until `transfer` returns, which is
        // after the kernel has finished with it.
        unsafe { self.transfer(fd, &mut t, Dir::Read)? };
        Ok(t[0].done)
    }

    /// Writes all of `buf` at `offset`, resubmitting after short writes.
    pub fn write_at(
        &mut self,
        fd: RawFd,
        buf: &[u8],
        offset: u64,
        flags: RwFlags,
    ) -> io::Result<()> {
        // The kernel only reads through this pointer for a write.
        let mut t = [Transfer::new(buf.as_ptr().cast_mut(), buf.len(), offset)];
        // SAFETY: `buf` is borrowed for this whole call and a write only reads
        // it; `transfer` returns after the kernel has finished with it.
        unsafe { self.transfer(fd, &mut t, Dir::Write(flags)) }
    }

    /// Writes every `(buffer, offset)` pair, all submitted at once, and waits
    /// for all of them. Returns the first error in `ops` order, once none of
    /// the writes is in flight any more.
    pub fn write_all_at(&mut self, fd: RawFd, ops: &[(&[u8], u64)]) -> io::Result<()> {
        let mut ts: Vec<Transfer> = ops
            .iter()
            .map(|(buf, off)| Transfer::new(buf.as_ptr().cast_mut(), buf.len(), *off))
            .collect();
        // SAFETY: every buffer in `ops` is borrowed for this whole call and a
        // write only reads it; `transfer` returns after the kernel has
        // finished with all of them.
        unsafe { self.transfer(fd, &mut ts, Dir::Write(RwFlags::NONE)) }
    }

    /// [`write_all_at`](Self::write_all_at), then, if every write succeeded,
    /// an fsync (or fdatasync) covering them.
    ///
    /// The sync is submitted after all writes have completed, so it is
    /// ordered after them (io_uring does not order entries in one batch).
    pub fn write_all_at_then_fsync(
        &mut self,
        fd: RawFd,
        ops: &[(&[u8], u64)],
        datasync: bool,
    ) -> io::Result<()> {
        self.write_all_at(fd, ops)?;
        self.fsync(fd, datasync)
    }

    /// `fsync(2)`, or `fdatasync(2)` when `datasync`.
    pub fn fsync(&mut self, fd: RawFd, datasync: bool) -> io::Result<()> {
        let flags = if datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let entry = opcode::Fsync::new(types::Fd(fd)).flags(flags).build();
        self.single(entry).map(drop)
    }

    /// `fallocate(2)` with `mode` (`FALLOC_FL_*`) over `len` bytes at `offset`.
    pub fn fallocate(&mut self, fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let entry = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(offset)
            .mode(mode)
            .build();
        self.single(entry).map(drop)
    }

    /// Runs one entry that refers to no memory; returns its non-negative result.
    fn single(&mut self, entry: squeue::Entry) -> io::Result<i32> {
        let mut res = [0];
        loop {
            // SAFETY: callers pass only entries that refer to no user memory
            // (fsync, fallocate), so there is no buffer to keep alive.
            unsafe { self.complete(std::slice::from_ref(&entry), &mut res)? };
            match res[0] {
                r if r == -libc::EINTR => continue,
                r if r < 0 => return Err(errno(r)),
                r => return Ok(r),
            }
        }
    }

    /// Drives `transfers` to completion: resubmits the remainder after short
    /// transfers, stops a read at end of file, retries EINTR and EAGAIN
    /// results, and returns the first error once no transfer is in flight.
    ///
    /// # Safety
    ///
    /// For each transfer, `addr..addr + len` must be valid for reads (and for
    /// writes when `dir` is `Read`) and must not be accessed by anything else
    /// until this function returns.
    unsafe fn transfer(
        &mut self,
        fd: RawFd,
        transfers: &mut [Transfer],
        dir: Dir,
    ) -> io::Result<()> {
        let mut entries = Vec::with_capacity(transfers.len());
        let mut active = Vec::with_capacity(transfers.len());
        let mut results = Vec::with_capacity(transfers.len());
        let mut stalls = 0;
        loop {
            entries.clear();
            active.clear();
            for (i, t) in transfers.iter().enumerate() {
                if t.done == t.len || t.eof {
                    continue;
                }
                // SAFETY: `done < len`, so the pointer stays inside the buffer.
                let addr = unsafe { t.addr.add(t.done) };
                let len = (t.len - t.done).min(MAX_OP_BYTES) as u32;
                let offset = t.offset + t.done as u64;
                let entry = match dir {
                    Dir::Read => opcode::Read::new(types::Fd(fd), addr, len)
                        .offset(offset)
                        .build(),
                    Dir::Write(flags) => opcode::Write::new(types::Fd(fd), addr, len)
                        .offset(offset)
                        .rw_flags(flags.bits())
                        .build(),
                };
                entries.push(entry);
                active.push(i);
            }
            if entries.is_empty() {
                return Ok(());
            }
            results.clear();
            results.resize(entries.len(), 0);
            // SAFETY: the entries point into the transfers' buffers, which the
            // caller keeps valid and unshared until we return.
            unsafe { self.complete(&entries, &mut results)? };

            let mut first_err = None;
            let mut progress = false;
            for (&i, &res) in active.iter().zip(&results) {
                let t = &mut transfers[i];
                if res > 0 {
                    t.done += res as usize;
                    progress = true;
                } else if res == 0 {
                    match dir {
                        Dir::Read => {
                            t.eof = true;
                            progress = true;
                        }
                        Dir::Write(_) => {
                            first_err.get_or_insert_with(|| {
                                io::Error::new(
                                    io::ErrorKind::WriteZero,
                                    format!(
                                        "write at offset {} wrote nothing",
                                        t.offset + t.done as u64
                                    ),
                                )
                            });
                        }
                    }
                } else if res != -libc::EINTR && res != -libc::EAGAIN {
                    first_err.get_or_insert_with(|| errno(res));
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            if progress {
                stalls = 0;
            } else {
                stalls += 1;
                if stalls > MAX_STALLS {
                    return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                }
                std::thread::yield_now();
            }
        }
    }

    /// Submits `entries` (in chunks that fit the submission queue) and waits
    /// for all of them; `results[i]` receives the completion result of
    /// `entries[i]`.
    ///
    /// # Safety
    ///
    /// Every buffer an entry refers to must stay valid, and be accessed by
    /// nothing else, until this function returns. It returns only once the
    /// kernel has completed every entry it accepted; entries it never accepted
    /// are left in a ring marked broken, which is never entered again.
    unsafe fn complete(
        &mut self,
        entries: &[squeue::Entry],
        results: &mut [i32],
    ) -> io::Result<()> {
        debug_assert_eq!(entries.len(), results.len());
        let cap = self.uring.params().sq_entries() as usize;
        for (entries, results) in entries.chunks(cap).zip(results.chunks_mut(cap)) {
            // SAFETY: forwarded from our caller.
            unsafe { self.complete_chunk(entries, results)? };
        }
        Ok(())
    }

    /// [`complete`](Self::complete) for at most one submission queue's worth.
    ///
    /// # Safety
    ///
    /// As for `complete`.
    unsafe fn complete_chunk(
        &mut self,
        entries: &[squeue::Entry],
        results: &mut [i32],
    ) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "io_uring ring is unusable after an earlier submission failure",
            ));
        }
        let n = entries.len();
        {
            // The queue is empty here: every earlier call drained it or broke the ring.
            let mut sq = self.uring.submission();
            for (i, entry) in entries.iter().enumerate() {
                let entry = entry.clone().user_data(i as u64);
                // SAFETY: the caller keeps the entry's buffers valid until we
                // return, and we return only after its completion (or with the
                // ring broken, so an entry left queued is never submitted).
                if unsafe { sq.push(&entry) }.is_err() {
                    self.broken = true;
                    return Err(io::Error::other(
                        "io_uring submission queue unexpectedly full",
                    ));
                }
            }
        }
        // The completion queue holds twice the submission queue, so a chunk
        // never overflows it, and each entry posts exactly one completion.
        let mut reaped = 0;
        let mut stalls = 0;
        while reaped < n {
            // If the kernel stops submitting part-way it returns without
            // waiting, and the next round submits the rest.
            match self.uring.submit_and_wait(n - reaped) {
                Ok(_) => stalls = 0,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && stalls < MAX_STALLS =>
                {
                    stalls += 1;
                    std::thread::yield_now();
                }
                Err(e) => {
                    self.broken = true;
                    reaped += self.reap(results);
                    let queued = self.uring.submission().len();
                    let in_flight = n.saturating_sub(reaped).saturating_sub(queued);
                    self.wait_in_flight(in_flight, results, &e);
                    return Err(e);
                }
            }
            reaped += self.reap(results);
        }
        Ok(())
    }

    /// Moves available completions into `results` (indexed by user data);
    /// returns how many there were.
    fn reap(&mut self, results: &mut [i32]) -> usize {
        let mut count = 0;
        for cqe in self.uring.completion() {
            let slot = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| results.get_mut(i));
            if let Some(slot) = slot {
                *slot = cqe.result();
                count += 1;
            }
        }
        count
    }

    /// After a failed submission: waits, without submitting anything more,
    /// for the `in_flight` entries the kernel did accept. If even that fails
    /// the process aborts, since returning would free buffers the kernel may
    /// still write.
    fn wait_in_flight(&mut self, mut in_flight: usize, results: &mut [i32], cause: &io::Error) {
        while in_flight > 0 {
            // SAFETY: submits nothing (`to_submit` is 0) and passes no
            // argument pointer; it only waits for completions.
            let waited = unsafe {
                self.uring.submitter().enter::<libc::sigset_t>(
                    0,
                    in_flight as u32,
                    EnterFlags::GETEVENTS.bits(),
                    None,
                )
            };
            if let Err(e) = waited {
                if e.raw_os_error() != Some(libc::EINTR) {
                    eprintln!(
                        "rings: io_uring submission failed ({cause}) and waiting for \
                         {in_flight} accepted operations failed too ({e}); aborting \
                         rather than freeing buffers the kernel may still use"
                    );
                    std::process::abort();
                }
            }
            in_flight = in_flight.saturating_sub(self.reap(results));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn write_then_read_round_trip() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let mut ring = Ring::new(8).unwrap();
        let data = pattern(10_000, 3);
        ring.write_at(fd, &data, 777, RwFlags::NONE).unwrap();
        ring.write_at(fd, b"fua", 0, RwFlags::DSYNC).unwrap();
        let mut back = vec![0; data.len()];
        ring.read_at(fd, &mut back, 777).unwrap();
        assert_eq!(back, data);
        let mut head = [0; 3];
        ring.read_at(fd, &mut head, 0).unwrap();
        assert_eq!(&head, b"fua");
        ring.read_at(fd, &mut [], 1 << 40).unwrap();
    }

    #[test]
    fn read_past_end_of_file_is_unexpected_eof() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let mut ring = Ring::new(8).unwrap();
        ring.write_at(fd, &[9; 100], 0, RwFlags::NONE).unwrap();
        let mut buf = [0u8; 64];
        let err = ring.read_at(fd, &mut buf, 50).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(ring.read_at_most(fd, &mut buf, 50).unwrap(), 50);
        assert_eq!(ring.read_at_most(fd, &mut buf, 500).unwrap(), 0);
        assert!(!ring.is_broken());
    }

    #[test]
    fn batch_write_larger_than_the_queue() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        // Four slots, ten writes: the batch goes in several chunks.
        let mut ring = Ring::new(4).unwrap();
        let pages: Vec<Vec<u8>> = (0..10).map(|i| pattern(4096, i)).collect();
        let ops: Vec<(&[u8], u64)> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), (9 - i as u64) * 4096))
            .collect();
        ring.write_all_at_then_fsync(fd, &ops, true).unwrap();
        for (i, p) in pages.iter().enumerate() {
            let mut back = vec![0; 4096];
            ring.read_at(fd, &mut back, (9 - i as u64) * 4096).unwrap();
            assert_eq!(&back, p);
        }
        ring.write_all_at(fd, &[]).unwrap();
    }

    #[test]
    fn fsync_and_fdatasync() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let mut ring = Ring::new(2).unwrap();
        ring.write_at(fd, b"durable", 0, RwFlags::NONE).unwrap();
        ring.fsync(fd, false).unwrap();
        ring.fsync(fd, true).unwrap();
    }

    #[test]
    fn fallocate_punch_hole_reads_back_zeroes() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let mut ring = Ring::new(8).unwrap();
        ring.write_at(fd, &[0xAB; 16384], 0, RwFlags::NONE).unwrap();
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match ring.fallocate(fd, mode, 4096, 8192) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("SKIPPED fallocate_punch_hole_reads_back_zeroes: the temp dir's file system cannot punch holes ({e})");
                return;
            }
            r => r.unwrap(),
        }
        let mut back = vec![0xFF; 16384];
        ring.read_at(fd, &mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0xAB));
        assert!(back[4096..12288].iter().all(|&b| b == 0));
        assert!(back[12288..].iter().all(|&b| b == 0xAB));
        assert_eq!(file.metadata().unwrap().len(), 16384, "size kept");
    }

    #[test]
    fn errors_carry_the_errno() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"data").unwrap();
        let ro = std::fs::File::open(&path).unwrap();
        let mut ring = Ring::new(8).unwrap();
        let err = ring
            .write_at(ro.as_raw_fd(), b"x", 0, RwFlags::NONE)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = ring
            .write_all_at(ro.as_raw_fd(), &[(b"a", 0), (b"b", 1)])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = ring.fallocate(ro.as_raw_fd(), 0, 0, 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = ring.fsync(-1, true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        // An error result does not break the ring.
        assert!(!ring.is_broken());
        let mut buf = [0; 4];
        ring.read_at(ro.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"data");
    }
}
