//! The engine: what the front end (the ublk queues) drives.
//!
//! Byte-addressed read, write (with FUA), flush, discard and write-zeroes over a
//! primary device, with every write recorded before it is issued and mirrored to
//! the secondary after it completes.
//!
//! One request (see `request`): `plan` checks its range; a write bumps each
//! touched region's state word (one atomic operation each), and regions not in
//! the durable record make it `Pending` until the record committer has made
//! them durable (sharing one update with concurrent misses). The front end
//! issues the ready request on the primary as its `Issue` says, and
//! `Io::complete` marks the regions dirty and queues the newly dirty ones for
//! the mirror pool. `serve` is that whole path on the calling thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::mirror::{MirrorPool, MirrorStats};
use crate::record::committer::Committer;
use crate::record::destage::DestageThread;
use crate::record::Record;
use crate::stats::{Counter, Gauge};

mod answer;
mod config;
mod dual;
mod open;
mod request;
mod status;
#[cfg(test)]
mod tests;
mod throttle;
mod verify;
mod write;

pub use config::{DualConfig, EngineConfig, PeerConfig, DEFAULT_CAPACITY};
pub use dual::{DualStatus, DualTakeover, OtherLease};
pub use open::{named_identity, pair_identity, Devices, Paths};
pub use request::{ublk_result, Data, Io, IoTicket, Issue, Op, PendingIo, Plan, Request};
pub use status::{EngineStatus, StartKind};
pub use throttle::{OverMaxDirty, ThrottleStatus};
pub use verify::{Mismatch, VerifyReport};
use write::{PendingWrite, WriteGuard, WriteStart};

impl Drop for Engine {
    fn drop(&mut self) {
        // The throttle's thread ends, and lets any waiting write go.
        if let Some((t, _)) = &self.throttle {
            t.stop();
        }
    }
}

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
    /// The data devices go through the host page cache (`--cache writeback`).
    writeback: bool,
    /// The device's identity (both nodes of a pair agree on it).
    identity: u64,
    /// Dual-active service, once `go_dual` has started it.
    dual: std::sync::OnceLock<dual::Dual>,
    /// The link's figures, when a peer holds the record.
    peer: Option<Arc<std::sync::Mutex<crate::peer::PeerStatus>>>,
    /// The device's lease: no write is acknowledged while it is not valid.
    lease: Option<Arc<crate::lease::Lease>>,
    /// Host request latencies, reads and writes, as the front end saw them
    /// (`note_latency`).
    read_latency: crate::stats::Latency,
    write_latency: crate::stats::Latency,
    /// The bound on the dirty backlog (`--max-dirty`), and its thread.
    throttle: Option<(Arc<throttle::Throttle>, std::thread::JoinHandle<()>)>,
    /// The running or last `verify`.
    verify: std::sync::Mutex<Option<Arc<verify::VerifyJob>>>,
    /// The disks both data devices sit on (`Devices::shared_disks`).
    shared_disks: Vec<String>,
}

impl Engine {
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn record(&self) -> &Arc<Record> {
        &self.record
    }

    /// The device's identity (the lease's, or its paths').
    pub fn identity(&self) -> u64 {
        self.identity
    }

    pub fn primary(&self) -> &Dev {
        &self.primary
    }

    pub fn secondary(&self) -> &Dev {
        &self.secondary
    }

    /// Registers a write of `len` bytes at `offset`, which `plan` has checked
    /// to be inside the device, with the record: `Ready` when every region it
    /// touches is in the durable record, else `Pending` (see `request`, which
    /// wraps this for every request that changes data).
    pub(crate) fn start_write(&self, offset: u64, len: u64) -> WriteStart<'_> {
        let host_io = self.host_io.enter();
        self.writes.add(1);
        self.bytes_written.add(len);
        if self.passthrough {
            return WriteStart::Ready(WriteGuard {
                engine: self,
                offset,
                len: 0,
                began: [0; write::BEGAN],
                _host_io: host_io,
            });
        }
        let mut misses = Vec::new();
        let mut began = [0; write::BEGAN];
        self.record.begin_write_seqs(
            self.geometry.regions_of(offset, len),
            &mut misses,
            &mut began,
        );
        let guard = WriteGuard {
            engine: self,
            offset,
            len,
            began,
            _host_io: host_io,
        };
        if misses.is_empty() {
            WriteStart::Ready(guard)
        } else {
            WriteStart::Pending(PendingWrite {
                guard: Some(guard),
                misses,
            })
        }
    }

    /// Counts time a front end spent spinning for completions (status
    /// `poll_seconds`), so the CPU that polling costs is visible.
    /// Counts one host request's latency, from its arrival to its answer
    /// (reads and writes; other requests are not counted).
    #[inline]
    pub fn note_latency(&self, op: Op, took: Duration) {
        match op {
            Op::Read => self.read_latency.record(took),
            Op::Write => self.write_latency.record(took),
            _ => {}
        }
    }

    pub fn note_poll(&self, spun: Duration) {
        self.poll_ns
            .add(u64::try_from(spun.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Reads `buf.len()` bytes at `offset` (`serve` of a read).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let req = Request::read(offset, buf.len() as u64);
        self.serve(req, Data::Into(buf)).map(drop)
    }

    /// Writes `buf` at `offset`; with `fua` it is durable on return (`serve`
    /// of a write).
    pub fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let req = Request::write(offset, buf.len() as u64, fua);
        self.serve(req, Data::From(buf)).map(drop)
    }

    /// Makes every completed write durable on the primary.
    pub fn flush(&self) -> Result<()> {
        self.serve(Request::flush(), Data::None).map(drop)
    }

    /// Discards a range on the primary; the mirror follows.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.serve(Request::discard(offset, len), Data::None)
            .map(drop)
    }

    /// Writes zeroes over a range on the primary; the mirror follows.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.serve(Request::write_zeroes(offset, len), Data::None)
            .map(drop)
    }

    /// Copies one batch of dirty regions on the calling thread (engines
    /// opened with `open_manual`); false when nothing was ready.
    pub fn pump_mirror(&self) -> bool {
        self.mirror.pump()
    }

    pub fn mirror_stats(&self) -> MirrorStats {
        self.mirror.stats()
    }

    /// The write-data buffer the mirror copies from.
    pub fn copy_buffer(&self) -> &crate::mirror::WriteBuffer {
        self.mirror.buffer()
    }

    /// Clean stop: stops the mirror, drops clean regions from the record and
    /// makes it durable, so the next start resyncs only what is still dirty.
    pub fn shutdown(&self) -> Result<()> {
        self.stop_verify();
        if let Some((t, _)) = &self.throttle {
            t.stop();
        }
        self.committer.stop();
        if let Some(d) = &self.destager {
            d.stop();
        }
        self.mirror.stop();
        self.primary
            .sync()
            .map_err(|e| Error::io("flush primary", e))?;
        self.record.forget_clean();
        self.record.destage()?;
        if let Some(l) = &self.lease {
            // Only after a clean stop: a lease that lapses instead lets the
            // peer take the device over.
            l.release();
        }
        Ok(())
    }

    /// The device's lease, when it has one.
    pub fn lease(&self) -> Option<&Arc<crate::lease::Lease>> {
        self.lease.as_ref()
    }

    /// `Ok` unless the lease forbids writing now.
    fn check_lease(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l.check(),
            None => Ok(()),
        }
    }
}
