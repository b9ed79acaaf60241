//! An in-memory device that can lose power and fail on purpose.
//!
//! It keeps what was made durable apart from writes made since the last sync,
//! so a simulated crash can keep any subset of the unsynced writes. Fault
//! injection covers what real devices cannot be made to do on demand: failing
//! every call from some point on, and tearing a write part-way.

use std::io;
use std::sync::{Condvar, Mutex};

use super::BlockDev;

/// Faults to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// After this many more successful writes and syncs, every call fails with EIO.
    pub fail_after: Option<u64>,
    /// The write that hits `fail_after` first lands this many bytes (a torn write).
    pub torn_bytes: Option<usize>,
    /// Reads fail with EIO.
    pub fail_reads: bool,
    /// The errno failing calls return instead of EIO (e.g. ENOSPC).
    pub errno: Option<i32>,
}

#[derive(Debug)]
struct State {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Writes since the last sync, oldest first.
    unsynced: Vec<(u64, Vec<u8>)>,
    faults: Faults,
    failed: bool,
    writes: u64,
    syncs: u64,
}

/// An in-memory block device.
#[derive(Debug)]
pub struct MemDev {
    name: String,
    size: u64,
    state: Mutex<State>,
    /// Syncs wait while this is set (`hold_syncs`); the count is how many wait.
    held: Mutex<(bool, usize)>,
    released: Condvar,
}

/// The error a failing call returns under `faults`.
fn fault(faults: &Faults) -> io::Error {
    io::Error::from_raw_os_error(faults.errno.unwrap_or(libc::EIO))
}

impl MemDev {
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        MemDev {
            name: name.into(),
            size,
            state: Mutex::new(State {
                durable: vec![0; size as usize],
                current: vec![0; size as usize],
                unsynced: Vec::new(),
                faults: Faults::default(),
                failed: false,
                writes: 0,
                syncs: 0,
            }),
            held: Mutex::new((false, 0)),
            released: Condvar::new(),
        }
    }

    /// A device whose durable contents are `bytes`.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        let d = MemDev::new(name, bytes.len() as u64);
        {
            let mut s = d.state();
            s.durable = bytes.clone();
            s.current = bytes;
        }
        d
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While `hold` is set, syncs wait for it to be cleared (to catch a
    /// caller in the middle of an update).
    pub fn hold_syncs(&self, hold: bool) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).0 = hold;
        self.released.notify_all();
    }

    /// How many syncs are waiting for `hold_syncs(false)`.
    pub fn syncs_held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    fn wait_while_held(&self) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.0 {
            h.1 += 1;
            while h.0 {
                h = self.released.wait(h).unwrap_or_else(|e| e.into_inner());
            }
            h.1 -= 1;
        }
    }

    /// Sets the faults to inject from now on, and clears a failure already hit.
    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.state();
        s.faults = faults;
        s.failed = false;
    }

    /// Number of writes not yet made durable.
    pub fn unsynced_writes(&self) -> usize {
        self.state().unsynced.len()
    }

    /// Writes and syncs performed so far.
    pub fn op_counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.writes, s.syncs)
    }

    /// Power loss: keeps the durable contents plus the unsynced writes for which
    /// `keep(index)` is true (applied in order), and clears any failure.
    pub fn crash(&self, mut keep: impl FnMut(usize) -> bool) {
        let mut s = self.state();
        let unsynced = std::mem::take(&mut s.unsynced);
        let mut image = s.durable.clone();
        for (i, (off, data)) in unsynced.iter().enumerate() {
            if keep(i) {
                let o = *off as usize;
                image[o..o + data.len()].copy_from_slice(data);
            }
        }
        s.durable = image.clone();
        s.current = image;
        s.failed = false;
        s.faults = Faults::default();
    }

    /// A copy of what reads see now.
    pub fn contents(&self) -> Vec<u8> {
        self.state().current.clone()
    }

    /// A copy of what would survive a power loss that keeps no unsynced write.
    pub fn durable_contents(&self) -> Vec<u8> {
        self.state().durable.clone()
    }

    /// Checks the fault plan before a mutating call; `Err` once failed.
    fn admit_op(s: &mut State) -> Result<Option<usize>, io::Error> {
        if s.failed {
            return Err(fault(&s.faults));
        }
        if let Some(n) = s.faults.fail_after.as_mut() {
            if *n == 0 {
                s.failed = true;
                return Ok(s.faults.torn_bytes.or(Some(0)));
            }
            *n -= 1;
        }
        Ok(None)
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl BlockDev for MemDev {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let s = self.state();
        if s.failed || s.faults.fail_reads {
            return Err(fault(&s.faults));
        }
        let o = offset as usize;
        buf.copy_from_slice(&s.current[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check(offset, buf.len())?;
        let mut s = self.state();
        let o = offset as usize;
        if let Some(torn) = Self::admit_op(&mut s)? {
            // The failing write lands only partly, and only in volatile state.
            let n = torn.min(buf.len());
            if n > 0 {
                s.current[o..o + n].copy_from_slice(&buf[..n]);
                s.unsynced.push((offset, buf[..n].to_vec()));
            }
            return Err(fault(&s.faults));
        }
        s.writes += 1;
        s.current[o..o + buf.len()].copy_from_slice(buf);
        if fua {
            s.durable[o..o + buf.len()].copy_from_slice(buf);
            // Older unsynced writes to these bytes are superseded: a crash that
            // keeps them must not roll the FUA data back.
            let end = offset + buf.len() as u64;
            for (woff, data) in s.unsynced.iter_mut() {
                let wend = *woff + data.len() as u64;
                let (lo, hi) = (offset.max(*woff), end.min(wend));
                if lo < hi {
                    data[(lo - *woff) as usize..(hi - *woff) as usize]
                        .copy_from_slice(&buf[(lo - offset) as usize..(hi - offset) as usize]);
                }
            }
        } else {
            s.unsynced.push((offset, buf.to_vec()));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.wait_while_held();
        let mut s = self.state();
        if Self::admit_op(&mut s)?.is_some() {
            return Err(fault(&s.faults));
        }
        s.syncs += 1;
        s.durable = s.current.clone();
        s.unsynced.clear();
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0; len as usize], offset, false)
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_durable_plus_chosen_unsynced() {
        let d = MemDev::new("m", 16);
        d.write_at(&[1; 4], 0, false).unwrap();
        d.sync().unwrap();
        d.write_at(&[2; 4], 4, false).unwrap();
        d.write_at(&[3; 4], 8, false).unwrap();
        d.write_at(&[4; 4], 12, true).unwrap();
        d.crash(|i| i == 1);
        let c = d.contents();
        assert_eq!(&c[0..4], &[1; 4]);
        assert_eq!(&c[4..8], &[0; 4], "unsynced write dropped");
        assert_eq!(&c[8..12], &[3; 4], "unsynced write kept");
        assert_eq!(&c[12..16], &[4; 4], "FUA write is durable");
    }

    #[test]
    fn fua_write_is_not_rolled_back_by_an_older_unsynced_write() {
        let d = MemDev::new("m", 8);
        d.write_at(&[1; 8], 0, false).unwrap();
        d.write_at(&[2; 4], 2, true).unwrap();
        d.crash(|_| true);
        assert_eq!(d.contents(), vec![1, 1, 2, 2, 2, 2, 1, 1]);
    }

    #[test]
    fn fail_after_tears_one_write_then_fails_everything() {
        let d = MemDev::new("m", 16);
        d.set_faults(Faults {
            fail_after: Some(1),
            torn_bytes: Some(2),
            fail_reads: false,
            errno: None,
        });
        d.write_at(&[7; 4], 0, false).unwrap();
        assert!(d.write_at(&[9; 4], 4, false).is_err());
        assert!(d.sync().is_err());
        assert_eq!(&d.contents()[4..8], &[9, 9, 0, 0]);
        d.crash(|_| false);
        assert_eq!(d.contents(), vec![0; 16], "nothing was synced");
        d.write_at(&[1; 4], 0, false).unwrap();
    }
}
