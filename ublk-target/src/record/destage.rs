//! The record's destager: it evicts clean regions over the capacity (in
//! memory) and writes the removals to the store behind the primary-flush
//! barrier, on a schedule of the record's own clock. The daemon runs it on a
//! thread ([`DestageThread`]); the trace simulator calls [`Destager::step`]
//! with trace time, so both run the same code.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Record;
use crate::error::{Error, Result};
use crate::region::Nanos;

/// How often removals are destaged (sooner when they pass an eighth of the
/// capacity); the destager steps four times as often, evicting.
pub const DESTAGE_INTERVAL: Duration = Duration::from_millis(200);

/// Removals that force a destage before the interval is up, in a record
/// of `capacity_regions`: an eighth of it, at least one. The chooser's
/// shadows (`predict::adaptive`) model the same schedule.
pub fn removals_due(capacity_regions: u64) -> u64 {
    (capacity_regions / 8).max(1)
}

/// When to evict and destage.
#[derive(Debug, Clone)]
pub struct Destager {
    interval: Nanos,
    /// Removals that force a destage before the interval is up.
    threshold: usize,
    last: Nanos,
}

impl Destager {
    /// A destager for `record` that destages every `interval`.
    pub fn new(record: &Record, interval: Duration) -> Self {
        Destager {
            interval: (interval.as_nanos() as Nanos).max(1),
            threshold: removals_due(record.capacity_regions()).min(usize::MAX as u64) as usize,
            last: record.clock().now(),
        }
    }

    /// How often `step` is meant to run.
    pub fn period(&self) -> Nanos {
        (self.interval / 4).max(1)
    }

    /// One step at the record's current time: evicts what the capacity
    /// allows, and destages once per interval, or at once when the removals
    /// pass an eighth of the capacity. Returns whether it destaged.
    pub fn step(&mut self, record: &Record) -> Result<bool> {
        let now = record.clock().now();
        record.evict();
        let due = now.saturating_sub(self.last) >= self.interval;
        if (due && record.needs_destage()) || record.pending_removals() >= self.threshold {
            self.last = now;
            record.destage()?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// A destager on a thread of its own, until `stop`.
pub struct DestageThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DestageThread {
    pub fn start(record: Arc<Record>, interval: Duration) -> Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let mut destager = Destager::new(&record, interval);
        let period = Duration::from_nanos(destager.period());
        let thread = std::thread::Builder::new()
            .name("tandem-destage".into())
            .spawn(move || {
                let (lock, signal) = &*s;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = signal
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if *stopped {
                        break;
                    }
                    if let Err(e) = destager.step(&record) {
                        log::warn!("destaging the record failed (will retry): {e}");
                    }
                    // The peer's heartbeat (the store logs what it means).
                    let _ = record.tick();
                }
            })
            .map_err(|e| Error::io("start the destage thread", e))?;
        Ok(DestageThread {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Ends the thread after its current step.
    pub fn stop(&self) {
        {
            let (lock, signal) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            signal.notify_all();
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for DestageThread {
    fn drop(&mut self) {
        self.stop();
    }
}
