//! The engine: what the front end (the ublk queues) drives.
//!
//! Byte-addressed read, write (with FUA), flush, discard and write-zeroes over a
//! primary device, with every write recorded before it is issued and mirrored to
//! the secondary after it completes.
//!
//! One write: `begin_write` bumps each touched region's state word (one atomic
//! operation each); regions not in the durable record are admitted through the
//! record's group commit, and the call returns only once they are durable
//! (`start_write` instead hands such a write back as `Pending`, to be admitted
//! on the record committer thread while the caller goes on). The caller then
//! writes the primary and calls `WriteGuard::complete`, which marks the
//! regions dirty and queues the newly dirty ones for the mirror pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::mirror::{MirrorPool, MirrorStats};
use crate::record::committer::Committer;
use crate::record::destage::DestageThread;
use crate::record::Record;
use crate::stats::{Counter, Gauge, GaugeGuard};

mod config;
mod open;
mod status;
#[cfg(test)]
mod tests;
mod write;

pub use config::{EngineConfig, DEFAULT_CAPACITY};
pub use open::{pair_identity, Devices, Paths};
pub use status::{EngineStatus, StartKind};
pub use write::{AdmitTicket, PendingWrite, WriteGuard, WriteStart};

/// The mirroring engine of one device.
pub struct Engine {
    geometry: Geometry,
    primary: Dev,
    secondary: Dev,
    record: Arc<Record>,
    /// Admits missed regions for front ends that must not block.
    committer: Committer,
    /// Evicts and destages the record (not in engines opened `manual`).
    destager: Option<DestageThread>,
    mirror: MirrorPool,
    /// Host requests in being, which mirror copies yield to.
    host_io: Arc<Gauge>,
    writes: Counter,
    bytes_written: Counter,
    /// Nanoseconds the front end spent polling (see `note_poll`).
    poll_ns: Counter,
    start: StartKind,
    started: Instant,
    capacity: u64,
    passthrough: bool,
}

impl Engine {
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
    /// the primary and completes the guard. A miss is admitted on the record
    /// committer thread, the path the ublk queues take (they wait for an
    /// eventfd where this waits for the answer), so the crash test, the host
    /// benchmarks and the tests that write through the engine drive it too.
    pub fn begin_write(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        match self.start_write(offset, len)? {
            WriteStart::Ready(guard) => Ok(guard),
            WriteStart::Pending(pending) => pending.submit(Box::new(|| {})).finish(),
        }
    }

    /// Like `begin_write`, but never blocks: a write that needs a record
    /// update comes back `Pending`, for the caller to admit on this thread
    /// (`PendingWrite::admit`) or on the record committer thread
    /// (`PendingWrite::submit`) while it serves other requests.
    pub fn start_write(&self, offset: u64, len: u64) -> Result<WriteStart<'_>> {
        self.geometry.check_range(offset, len)?;
        let host_io = self.host_io.enter();
        self.writes.add(1);
        self.bytes_written.add(len);
        if self.passthrough {
            return Ok(WriteStart::Ready(WriteGuard {
                engine: self,
                offset,
                len: 0,
                _host_io: host_io,
            }));
        }
        let mut misses = Vec::new();
        self.record
            .begin_write(self.geometry.regions_of(offset, len), &mut misses);
        let guard = WriteGuard {
            engine: self,
            offset,
            len,
            _host_io: host_io,
        };
        Ok(if misses.is_empty() {
            WriteStart::Ready(guard)
        } else {
            WriteStart::Pending(PendingWrite {
                guard: Some(guard),
                misses,
            })
        })
    }

    /// Marks a host request in being until the guard drops: mirror copies
    /// yield to heavy host I/O. Every engine call marks its own (a write from
    /// `begin_write` until its guard completes); a front end that reads the
    /// primary directly marks the read with this.
    pub fn host_io(&self) -> GaugeGuard<'_> {
        self.host_io.enter()
    }

    /// Counts time a front end spent spinning for completions (status
    /// `poll_seconds`), so the CPU that polling costs is visible.
    pub fn note_poll(&self, spun: Duration) {
        self.poll_ns
            .add(u64::try_from(spun.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.geometry.check_range(offset, buf.len() as u64)?;
        let _io = self.host_io.enter();
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
        let _io = self.host_io.enter();
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

    /// Clean stop: stops the mirror, drops clean regions from the record and
    /// makes it durable, so the next start resyncs only what is still dirty.
    pub fn shutdown(&self) -> Result<()> {
        self.committer.stop();
        if let Some(d) = &self.destager {
            d.stop();
        }
        self.mirror.stop();
        self.primary
            .sync()
            .map_err(|e| Error::io("flush primary", e))?;
        self.record.forget_clean();
        self.record.destage()
    }
}
