//! The secondary's health: degraded mode with backoff while copies fail,
//! and the watch on its path that notices a device removed or replaced and
//! copies a new one whole.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{lock, Shared};
use crate::dev::{Dev, PathCheck};
use crate::error::{Error, Failure, Result};

/// First retry delay after a secondary failure; doubles up to `MAX_BACKOFF`.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a failing secondary whose path still names it is reopened.
pub(super) const REOPEN_EVERY: Duration = Duration::from_secs(2);

impl Shared {
    pub(super) fn secondary(&self) -> Dev {
        self.secondary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Follows the secondary's path (from the pacer thread): a device
    /// that was removed puts the pool in degraded mode even if writes to the
    /// open handle still succeed (a deleted file); a device that is back, or
    /// a new one, is opened and copied to in full, since what it holds is
    /// unknown. While copies fail with the path unchanged, the device is
    /// reopened every `REOPEN_EVERY` (a handle to a device that went away
    /// fails for ever, even once one with the same number is back).
    pub(super) fn watch_secondary(&self) {
        let secondary = self.secondary();
        let gone = self.secondary_gone.load(Ordering::Acquire);
        let full = match secondary.check_path() {
            PathCheck::Same if !gone => {
                let failing = self.degraded.load(Ordering::Acquire);
                let mut last = lock(&self.last_reopen);
                if !failing || last.elapsed() < REOPEN_EVERY {
                    return;
                }
                *last = Instant::now();
                false
            }
            // Back under the same number, after it was gone.
            PathCheck::Same => true,
            PathCheck::Replaced => {
                self.lose_secondary(format!(
                    "secondary {} was replaced by another device",
                    secondary.describe()
                ));
                true
            }
            PathCheck::Gone(why) => {
                self.lose_secondary(format!("secondary {why}"));
                return;
            }
        };
        if let Err(e) = self.switch_secondary(&secondary, full) {
            log::debug!("secondary not usable yet: {e}");
            if full {
                *lock(&self.last_error) = Some(Failure::from(&e));
            }
        }
    }

    /// Marks the secondary as gone: degraded, copies fail (ENODEV).
    pub(super) fn lose_secondary(&self, why: String) {
        if !self.secondary_gone.swap(true, Ordering::AcqRel) {
            log::warn!("{why}; degraded until it is back");
        }
        self.degraded.store(true, Ordering::Release);
        *lock(&self.last_error) = Some(Failure {
            message: why,
            errno: -libc::ENODEV,
        });
    }

    /// Opens the device at the secondary's path and copies to it from now
    /// on; with `full`, every region is first recorded and marked dirty.
    pub(super) fn switch_secondary(&self, old: &Dev, full: bool) -> Result<()> {
        let new = old.reopen()?;
        let size = self.primary.size();
        if new.size() < size {
            return Err(Error::Config(format!(
                "secondary {} is back with {} bytes, smaller than the primary's {size}",
                new.describe(),
                new.size()
            )));
        }
        let all = if full {
            self.record.record_all()?
        } else {
            Vec::new()
        };
        let was_missing = old.missing().is_some();
        *self.secondary.write().unwrap_or_else(|e| e.into_inner()) = new;
        self.secondary_gone.store(false, Ordering::Release);
        if was_missing && self.degraded.swap(false, Ordering::AcqRel) {
            // Missing since the start: nothing failed but its absence, so
            // the copies of what the record lists say whether it works.
            log::info!(
                "secondary {} appeared; leaving degraded mode and copying what the record lists",
                old.describe()
            );
            *lock(&self.last_error) = None;
        }
        if full {
            log::warn!(
                "secondary {} is back as a new device: copying all {size} bytes",
                old.describe()
            );
            self.enqueue_resync(&all);
        } else {
            log::info!("secondary {} reopened", old.describe());
        }
        // Try at once instead of at the end of the backoff.
        *lock(&self.backoff_until) = None;
        let _q = lock(&self.queue);
        self.wake.notify_all();
        Ok(())
    }

    /// Counts a copy's outcome and follows the secondary's health: a failure
    /// enters degraded mode (once) and backs off, doubling up to
    /// `MAX_BACKOFF`; a success leaves it and resets the backoff.
    pub(super) fn note_result(&self, result: &Result<u64>, extents: u64) {
        match result {
            Ok(n) => {
                self.counters.bytes_copied.fetch_add(*n, Ordering::Relaxed);
                self.counters.copies.fetch_add(extents, Ordering::Relaxed);
                if self.degraded.swap(false, Ordering::AcqRel) {
                    log::info!(
                        "secondary {} is back; leaving degraded mode",
                        self.secondary().describe()
                    );
                }
                *lock(&self.backoff) = MIN_BACKOFF;
                *lock(&self.backoff_until) = None;
            }
            Err(e) => {
                self.counters.copy_errors.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::AcqRel) {
                    log::warn!("mirror copy failed, entering degraded mode: {e}");
                }
                *lock(&self.last_error) = Some(Failure::from(e));
                let mut backoff = lock(&self.backoff);
                *lock(&self.backoff_until) = Some(Instant::now() + *backoff);
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
