//! io_uring plumbing shared by tandem's backing I/O, record updates and mirroring.
//!
//! - [`Ring`]: one io_uring with blocking helpers (read, write, a batch of
//!   writes, fsync, fallocate) that return only once the kernel is done with
//!   every buffer they were given.
//! - [`with_thread_ring`]: a lazily created ring per thread, so each queue and
//!   each mirror worker submits on its own ring without locking.
//! - [`AlignedBuf`]: page-aligned memory for O_DIRECT I/O.

mod buf;
mod ring;

pub use buf::AlignedBuf;
pub use ring::{Ring, RwFlags};

use std::cell::RefCell;
use std::io;

/// Submission queue size of the per-thread rings.
pub const THREAD_RING_ENTRIES: u32 = 64;

thread_local! {
    static THREAD_RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's ring, creating it on first use.
///
/// A ring left unusable by a failed submission is dropped afterwards and
/// replaced on the next call. A nested call (from inside `f`) gets a private
/// ring for its duration rather than failing.
pub fn with_thread_ring<R>(f: impl FnOnce(&mut Ring) -> io::Result<R>) -> io::Result<R> {
    let outcome = THREAD_RING.try_with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return f(&mut new_thread_ring()?);
        };
        if slot.as_ref().is_some_and(Ring::is_broken) {
            *slot = None;
        }
        let ring = match slot.as_mut() {
            Some(ring) => ring,
            None => slot.insert(new_thread_ring()?),
        };
        let result = f(ring);
        if ring.is_broken() {
            *slot = None;
        }
        result
    });
    match outcome {
        Ok(result) => result,
        // The thread is exiting and its ring is gone; `f` was not run.
        Err(_) => Err(io::Error::other(
            "io_uring: the thread's ring was already destroyed (thread exiting)",
        )),
    }
}

fn new_thread_ring() -> io::Result<Ring> {
    Ring::new(THREAD_RING_ENTRIES).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "io_uring is unavailable: io_uring_setup failed: {e} \
                 (check the kernel.io_uring_disabled sysctl and any seccomp policy)"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn nested_calls_get_a_ring_of_their_own() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        with_thread_ring(|ring| {
            ring.write_at(fd, b"outer", 0, RwFlags::NONE)?;
            // A nested call cannot borrow the same ring; it gets its own.
            with_thread_ring(|inner| inner.write_at(fd, b"inner", 5, RwFlags::NONE))
        })
        .unwrap();
        let mut buf = [0u8; 10];
        with_thread_ring(|ring| ring.read_at(fd, &mut buf, 0)).unwrap();
        assert_eq!(&buf, b"outerinner");
    }

    #[test]
    fn thread_rings_serve_many_threads() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                s.spawn(move || {
                    for i in 0..16u64 {
                        let off = (u64::from(t) * 16 + i) * 512;
                        with_thread_ring(|ring| ring.write_at(fd, &[t; 512], off, RwFlags::NONE))
                            .unwrap();
                    }
                });
            }
        });
        let mut buf = vec![0u8; 4 * 16 * 512];
        with_thread_ring(|ring| ring.read_at(fd, &mut buf, 0)).unwrap();
        for (i, chunk) in buf.chunks(16 * 512).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8));
        }
    }
}
