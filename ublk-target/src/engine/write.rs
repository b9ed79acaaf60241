//! A write's passage through the record: the guard of a write in flight,
//! a write waiting for its regions to become durable in the record, and the
//! ticket of one handed to the record committer thread.

use super::Engine;
use crate::error::{Error, Failure, Result};
use crate::record::committer::Outcome;
use crate::stats::GaugeGuard;

/// A write that passed the record check; `complete` it once the primary has it.
#[must_use = "a write must be completed"]
pub(crate) struct WriteGuard<'a> {
    pub(super) engine: &'a Engine,
    pub(super) offset: u64,
    /// Zero for a write the record does not track (passthrough), and once
    /// the regions are released.
    pub(super) len: u64,
    /// The write's own sequence in each region it touches (the first
    /// `BEGAN` regions; the write-data buffer drops what it holds of the
    /// others).
    pub(super) began: [u32; BEGAN],
    pub(super) _host_io: GaugeGuard<'a>,
}

/// Regions of one write whose sequence the guard keeps.
pub(super) const BEGAN: usize = 8;

impl WriteGuard<'_> {
    /// Ends the write: the regions turn dirty and are queued for mirroring.
    /// Call it whether or not the primary write succeeded; `data` is what
    /// the primary now holds (a write that completed in full), which the
    /// mirror may copy from instead of reading it back. (Drop ends a write
    /// without it, so a panicking caller still releases the regions.)
    pub fn complete(mut self, data: Option<&[u8]>) {
        self.end(data);
    }

    fn end(&mut self, data: Option<&[u8]>) {
        if self.len == 0 {
            return;
        }
        let (offset, len) = (self.offset, self.len);
        self.len = 0;
        let engine = self.engine;
        let buffer = engine.mirror.buffer();
        if buffer.is_on() {
            let states = engine.record.states();
            for (i, r) in engine.geometry.regions_of(offset, len).enumerate() {
                let region = engine.geometry.region_bytes(r);
                let (lo, hi) = (offset.max(region.start), (offset + len).min(region.end));
                match self.began.get(i) {
                    Some(&began) => buffer.keep(
                        states,
                        r,
                        (lo - region.start) as u32..(hi - region.start) as u32,
                        began,
                        data.map(|d| &d[(lo - offset) as usize..(hi - offset) as usize]),
                    ),
                    None => buffer.poison_region(states, r),
                }
            }
        }
        let mut dirtied = Vec::new();
        engine.record.end_write_span(offset, len, &mut dirtied);
        engine.mirror.enqueue(&dirtied);
    }

    /// Ends a write that was never issued: its regions are released without
    /// turning dirty.
    fn abort(mut self) {
        let regions = self.engine.geometry.regions_of(self.offset, self.len);
        self.engine.record.abort_write(regions);
        self.len = 0;
    }
}

/// How `Engine::start_write` went.
pub(crate) enum WriteStart<'a> {
    /// Every region is in the durable record: issue the write.
    Ready(WriteGuard<'a>),
    /// Some regions must reach the durable record first.
    Pending(PendingWrite<'a>),
}

/// A write waiting for regions to be admitted to the durable record. Its
/// regions count as in flight until it is admitted or dropped.
#[must_use = "a pending write must be admitted"]
pub(crate) struct PendingWrite<'a> {
    pub(super) guard: Option<WriteGuard<'a>>,
    pub(super) misses: Vec<u64>,
}

impl<'a> PendingWrite<'a> {
    /// Admits the missed regions on this thread (sharing the record's group
    /// commit with concurrent callers).
    pub fn admit(mut self) -> Result<WriteGuard<'a>> {
        let guard = self.guard.take().expect("admitted once");
        let outcome = guard.engine.record.admit(&self.misses);
        settle(guard, outcome)
    }

    /// Hands the admission to the record committer thread, which calls `done`
    /// (on its own thread) once the outcome is ready; then `finish` the
    /// ticket. Admissions queued while one is written share the next update.
    pub fn submit(mut self, done: Box<dyn FnOnce() + Send>) -> AdmitTicket<'a> {
        let guard = self.guard.take().expect("submitted once");
        let outcome = guard
            .engine
            .committer
            .submit(std::mem::take(&mut self.misses), done);
        AdmitTicket {
            guard: Some(guard),
            outcome,
            seen: None,
        }
    }
}

impl Drop for PendingWrite<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            g.abort();
        }
    }
}

/// An admission in the hands of the record committer thread.
#[must_use = "a ticket must be finished"]
pub(crate) struct AdmitTicket<'a> {
    guard: Option<WriteGuard<'a>>,
    outcome: std::sync::mpsc::Receiver<Outcome>,
    /// The outcome, once `is_ready` has seen it.
    seen: Option<Outcome>,
}

impl<'a> AdmitTicket<'a> {
    /// Whether the committer has answered (`finish` will not block). For a
    /// caller that cannot wait for the `done` callback and polls instead.
    pub fn is_ready(&mut self) -> bool {
        if self.seen.is_none() {
            self.seen = match self.outcome.try_recv() {
                Ok(o) => Some(o),
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    Some(Err(Failure::eio("the record committer thread is gone")))
                }
            };
        }
        self.seen.is_some()
    }

    /// The write's guard once its regions are durable in the record, or the
    /// reason they are not (the write must then fail). Blocks until the
    /// committer has answered, which it has once `done` was called.
    pub fn finish(mut self) -> Result<WriteGuard<'a>> {
        let guard = self.guard.take().expect("finished once");
        settle(guard, self.wait())
    }

    fn wait(&mut self) -> Result<()> {
        match self.seen.take() {
            Some(o) => o,
            None => self
                .outcome
                .recv()
                .unwrap_or_else(|_| Err(Failure::eio("the record committer thread is gone"))),
        }
        .map_err(Error::RecordUpdate)
    }
}

impl Drop for AdmitTicket<'_> {
    fn drop(&mut self) {
        // Never issued: wait for the committer, then release the regions.
        if let Some(g) = self.guard.take() {
            let _ = self.wait();
            g.abort();
        }
    }
}

/// The guard of an admitted write, or the admission's error with the write's
/// regions released.
fn settle(guard: WriteGuard<'_>, outcome: Result<()>) -> Result<WriteGuard<'_>> {
    match outcome {
        Ok(()) => Ok(guard),
        Err(e) => {
            guard.abort();
            Err(e)
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.end(None);
    }
}
