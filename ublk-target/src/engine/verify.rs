//! Online verification (`tandemctl verify`): every region the record says is
//! clean is read from the primary and the secondary and compared, while
//! host I/O goes on. A region is compared only if its state word is the
//! same before and after both reads: clean, no write in flight, no write
//! started in between (a write bumps the word's sequence), so a difference
//! is real and not a write racing the reads. A region that does not stay
//! still is tried again a few times, then counted as skipped. A mismatch is
//! reported with its offsets; with repair, the region goes into the durable
//! record as dirty and the mirror copies it again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::error::{Error, Result};
use crate::region::RegionView;

/// How often a region that is being written is tried again.
const TRIES: u32 = 4;
/// At most this many mismatches are listed (all are counted).
const MAX_LISTED: usize = 1000;

/// One region whose copies differ: the first and last differing bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub region: u64,
    /// Device offset of the first byte that differs.
    pub offset: u64,
    /// Bytes from there to the last byte that differs, inclusive.
    pub len: u64,
}

/// A verification's progress and, once it has ended, its summary.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub running: bool,
    pub repair: bool,
    /// The bandwidth cap, bytes per second read from each device.
    pub max_rate: Option<u64>,
    pub regions: u64,
    /// Regions looked at so far (compared, skipped as dirty, or skipped).
    pub regions_done: u64,
    pub regions_compared: u64,
    pub bytes_compared: u64,
    /// Regions that were dirty (their difference is expected) or listed by
    /// the other node of a dual-active pair.
    pub regions_dirty: u64,
    /// Regions written throughout every try.
    pub regions_skipped: u64,
    pub mismatched_regions: u64,
    pub mismatches: Vec<Mismatch>,
    /// Mismatched regions put in the record for the mirror to copy again.
    pub repaired_regions: u64,
    pub elapsed_seconds: f64,
    /// Why it stopped early (a read error, a failed record update).
    pub error: Option<String>,
}

/// A verification running (or run) on an engine.
pub(super) struct VerifyJob {
    report: Mutex<VerifyReport>,
    stop: AtomicBool,
    done: AtomicU64,
}

impl VerifyJob {
    pub(super) fn report(&self) -> VerifyReport {
        let mut r = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.regions_done = self.done.load(Ordering::Relaxed);
        r
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn update(&self, f: impl FnOnce(&mut VerifyReport)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The first and last offsets where `a` and `b` differ.
fn differing(a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let last = a.iter().zip(b).rposition(|(x, y)| x != y)?;
    Some((first, last))
}

impl Engine {
    /// Starts verifying the clean regions on a thread of its own; an error
    /// if one is running already. `max_rate` caps the bytes per second
    /// read from each device.
    pub fn start_verify(self: &Arc<Self>, repair: bool, max_rate: Option<u64>) -> Result<()> {
        if self.passthrough {
            return Err(Error::Config(
                "a passthrough device has no secondary to verify against".into(),
            ));
        }
        if max_rate == Some(0) {
            return Err(Error::Config("--max-rate 0 would never finish".into()));
        }
        let mut slot = self.verify.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|j| j.report().running) {
            return Err(Error::Config(
                "a verify is running already on this device".into(),
            ));
        }
        let job = Arc::new(VerifyJob {
            report: Mutex::new(VerifyReport {
                running: true,
                repair,
                max_rate,
                regions: self.geometry.regions(),
                ..VerifyReport::default()
            }),
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
        });
        *slot = Some(job.clone());
        let engine = self.clone();
        std::thread::Builder::new()
            .name("tandem-verify".into())
            .spawn(move || {
                let start = Instant::now();
                let r = engine.verify_regions(&job, start);
                job.update(|rep| {
                    rep.running = false;
                    rep.elapsed_seconds = start.elapsed().as_secs_f64();
                    if let Err(e) = r {
                        rep.error = Some(e.to_string());
                    }
                });
                let rep = job.report();
                log::info!(
                    "verify done: {} regions compared, {} mismatched, {} repaired, {} skipped{}",
                    rep.regions_compared,
                    rep.mismatched_regions,
                    rep.repaired_regions,
                    rep.regions_skipped,
                    rep.error
                        .map(|e| format!(", stopped: {e}"))
                        .unwrap_or_default()
                );
            })
            .map_err(|e| Error::io("start the verify thread", e))?;
        Ok(())
    }

    /// The running or last verification's report.
    pub fn verify_report(&self) -> Option<VerifyReport> {
        self.verify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|j| j.report())
    }

    /// Ends a running verification (at stop).
    pub(super) fn stop_verify(&self) {
        if let Some(j) = self
            .verify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            j.stop();
        }
    }

    fn verify_regions(&self, job: &VerifyJob, start: Instant) -> Result<()> {
        let g = self.geometry;
        let states = self.record.states();
        let rate = job.report().max_rate;
        let size = g.region_size() as usize;
        let mut a = rings::AlignedBuf::zeroed(size);
        let mut b = rings::AlignedBuf::zeroed(size);
        let mut read_bytes = 0u64;
        for r in 0..g.regions() {
            if job.stop.load(Ordering::Acquire) {
                return Err(Error::Config("the device is stopping".into()));
            }
            let offset = r * g.region_size();
            let len = (g.device_size() - offset).min(g.region_size()) as usize;
            let mut outcome = None;
            for _ in 0..TRIES {
                let listed = self.dual.get().is_some_and(|d| d.view.lists(r));
                let Some(word) = states.still(r).filter(|_| !listed) else {
                    if listed || states.is_dirty(r) {
                        outcome = Some(None);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let secondary = self.mirror.secondary();
                self.primary
                    .read_at(&mut a[..len], offset)
                    .map_err(|e| Error::io(format!("verify: read primary at {offset}"), e))?;
                secondary
                    .read_at(&mut b[..len], offset)
                    .map_err(|e| Error::io(format!("verify: read secondary at {offset}"), e))?;
                // Listed by the other node since: its write may have raced
                // the reads.
                let listed = self.dual.get().is_some_and(|d| d.view.lists(r));
                if !listed && states.still(r) == Some(word) {
                    outcome = Some(Some(differing(&a[..len], &b[..len])));
                    break;
                }
            }
            match outcome {
                None => job.update(|rep| rep.regions_skipped += 1),
                Some(None) => job.update(|rep| rep.regions_dirty += 1),
                Some(Some(diff)) => {
                    job.update(|rep| {
                        rep.regions_compared += 1;
                        rep.bytes_compared += len as u64;
                    });
                    if let Some((first, last)) = diff {
                        self.verify_mismatch(
                            job,
                            r,
                            offset + first as u64,
                            (last - first + 1) as u64,
                        )?;
                    }
                }
            }
            job.done.store(r + 1, Ordering::Relaxed);
            read_bytes += len as u64;
            if let Some(rate) = rate {
                let due = Duration::from_secs_f64(read_bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if r % 64 == 0 {
                job.update(|rep| rep.elapsed_seconds = start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    fn verify_mismatch(&self, job: &VerifyJob, r: u64, offset: u64, len: u64) -> Result<()> {
        let repair = job.report().repair;
        log::warn!(
            "verify: region {r} differs between primary and secondary at bytes {offset}..{}{}",
            offset + len,
            if repair { ": copying it again" } else { "" }
        );
        job.update(|rep| {
            rep.mismatched_regions += 1;
            if rep.mismatches.len() < MAX_LISTED {
                rep.mismatches.push(Mismatch {
                    region: r,
                    offset,
                    len,
                });
            }
        });
        if repair {
            let dirtied = self.record.record_dirty([r])?;
            self.mirror.enqueue_resync(&dirtied);
            job.update(|rep| rep.repaired_regions += 1);
        }
        Ok(())
    }

    /// Puts every region in the durable record as dirty: the mirror copies
    /// the whole device again (`tandemctl invalidate`).
    pub fn invalidate(&self) -> Result<u64> {
        if self.passthrough {
            return Err(Error::Config(
                "a passthrough device has no secondary to resync".into(),
            ));
        }
        let all = self.record.record_all()?;
        self.mirror.enqueue_resync(&all);
        log::warn!(
            "invalidated on request: copying all {} regions again",
            all.len()
        );
        Ok(all.len() as u64)
    }

    /// The mirror pool's settings that can change while running.
    pub fn mirror(&self) -> &crate::mirror::MirrorPool {
        &self.mirror
    }
}

#[cfg(test)]
mod tests {
    use super::differing;

    #[test]
    fn differing_finds_the_first_and_last_bytes() {
        assert_eq!(differing(b"abcd", b"abcd"), None);
        assert_eq!(differing(b"abcd", b"xbcd"), Some((0, 0)));
        assert_eq!(differing(b"abcd", b"axcy"), Some((1, 3)));
    }
}
