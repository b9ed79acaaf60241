//! The predictive write-intent record.
//!
//! A region is *in the record* when the secondary may lack some write to it, or
//! when a write to it is predicted soon. Before a write to region `r` reaches the
//! primary, `r` is in the durable record (write-ahead). A write to a region that
//! is already recorded costs one atomic operation (`RegionStates::begin_write`);
//! a miss adds the region and the predictor's guesses in one durable update that
//! concurrent misses share (group commit).
//!
//! Evicting a clean region is an in-memory compare-and-swap; its removal reaches
//! the store with a later update (or a lazy `flush`).

pub mod committer;
pub mod destage;
mod file;
mod state;

pub use file::{
    page_words, set_page_words, LoadOutcome, RegionFile, REGIONS_PER_PAGE, WORDS_PER_PAGE,
};
pub use state::{ChunkMask, ClaimRefused, CopyClaim, RegionStates, ALL_CHUNKS};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

use bitvec::vec::BitVec;

use crate::error::{Error, Failure, Result};
use crate::geometry::Geometry;
use crate::predict::Predictor;
use crate::region::{Clock, Nanos, RegionView};

/// The in-memory image of the record: one bit per region.
pub type Image = BitVec<u64>;

/// Where the record is made durable.
pub trait RecordStore: Send {
    /// Regions covered by one page of the store.
    fn regions_per_page(&self) -> u64;
    /// Makes `pages` of `image` durable; returns only once they are (one flush).
    fn write_pages(&mut self, image: &Image, pages: &[u64]) -> Result<()>;
    /// Called now and then with what the store holds (or is about to): a
    /// store that talks to a peer sends its heartbeat, or tries the peer
    /// again. Local stores do nothing.
    fn tick(&mut self, _held: &Image) -> Result<()> {
        Ok(())
    }
}

/// A store that keeps nothing and counts what it would write: the trace
/// simulator's store.
#[derive(Debug, Default)]
pub struct NullStore {
    pub pages_written: u64,
}

impl RecordStore for NullStore {
    fn regions_per_page(&self) -> u64 {
        REGIONS_PER_PAGE
    }

    fn write_pages(&mut self, _image: &Image, pages: &[u64]) -> Result<()> {
        self.pages_written += pages.len() as u64;
        Ok(())
    }
}

/// Figures about the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecordStats {
    /// Regions in the record.
    pub regions: u64,
    /// Bytes those regions cover.
    pub bytes: u64,
    /// Regions that are dirty.
    pub dirty_regions: u64,
    /// Durable record updates made.
    pub updates: u64,
    /// Pages those updates wrote.
    pub pages_written: u64,
    /// Regions added because a write missed.
    pub missed_regions: u64,
    /// Regions added by prediction.
    pub predicted_regions: u64,
    /// Predicted regions evicted without being written.
    pub predicted_never_written: u64,
    /// Regions evicted.
    pub evictions: u64,
}

struct Inner {
    /// Regions in the record.
    image: Image,
    /// What the store holds (or is about to): `image` plus regions evicted but
    /// not yet forgotten durably.
    file_image: Image,
    /// Evicted regions whose removal waits for the next `flush`.
    forgetting: Vec<u64>,
    recorded: u64,
    changed: BTreeSet<u64>,
    store: Box<dyn RecordStore>,
    predictor: Box<dyn Predictor>,
    /// Predicted regions still recorded, with their write sequence at admission.
    predicted: HashMap<u64, u32>,
    scratch: Vec<u64>,
    stats: RecordStats,
    /// Why the last write to the store failed, until one succeeds again.
    store_error: Option<Failure>,
}

#[derive(Default)]
struct Pending {
    staged: Vec<u64>,
    /// The batch that staged regions will be committed in.
    open_batch: u64,
    /// Every batch up to this one has finished (committed or failed).
    done_batch: u64,
    committing: bool,
    /// Recently failed batches and why.
    failures: VecDeque<(u64, Failure)>,
}

const FAILURES_KEPT: usize = 256;

/// The write-intent record of one device.
pub struct Record {
    geometry: Geometry,
    states: RegionStates,
    capacity_regions: u64,
    rpp: u64,
    inner: Mutex<Inner>,
    pending: Mutex<Pending>,
    batch_done: Condvar,
    clock: Clock,
    barrier: Option<Barrier>,
}

/// Runs before removals are written: makes the primary durable, so a region
/// leaves the durable record only once the data the mirror copied from it
/// cannot roll back on the primary.
pub type Barrier = Box<dyn Fn() -> Result<()> + Send + Sync>;

impl Record {
    /// A record over `geometry` whose clean regions are bounded by
    /// `capacity_bytes`, durable through `store`.
    pub fn new(
        geometry: Geometry,
        capacity_bytes: u64,
        mut predictor: Box<dyn Predictor>,
        store: Box<dyn RecordStore>,
        clock: Clock,
    ) -> Self {
        let regions = geometry.regions();
        let rpp = store.regions_per_page();
        let capacity_regions = capacity_bytes / geometry.region_size();
        predictor.set_capacity(capacity_regions);
        Record {
            geometry,
            states: RegionStates::new(regions),
            capacity_regions,
            rpp,
            inner: Mutex::new(Inner {
                image: BitVec::repeat(false, regions as usize),
                file_image: BitVec::repeat(false, regions as usize),
                forgetting: Vec::new(),
                recorded: 0,
                changed: BTreeSet::new(),
                store,
                predictor,
                predicted: HashMap::new(),
                scratch: Vec::new(),
                stats: RecordStats::default(),
                store_error: None,
            }),
            pending: Mutex::new(Pending {
                open_batch: 1,
                ..Pending::default()
            }),
            batch_done: Condvar::new(),
            clock,
            barrier: None,
        }
    }

    /// Sets the barrier run before removals are written (see [`Barrier`]).
    pub fn with_barrier(mut self, barrier: Barrier) -> Self {
        self.barrier = Some(barrier);
        self
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn states(&self) -> &RegionStates {
        &self.states
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Capacity for clean regions, in regions.
    pub fn capacity_regions(&self) -> u64 {
        self.capacity_regions
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hit path: registers a write over `regions`; pushes the regions that are
    /// not in the durable record to `misses`. One atomic operation per region.
    #[inline]
    pub fn begin_write(&self, regions: Range<u64>, misses: &mut Vec<u64>) {
        for r in regions {
            if !self.states.begin_write(r) {
                misses.push(r);
            }
        }
    }

    /// Like `begin_write`, and notes each region's write sequence in
    /// `began` (as many as it holds).
    #[inline]
    pub fn begin_write_seqs(&self, regions: Range<u64>, misses: &mut Vec<u64>, began: &mut [u32]) {
        for (i, r) in regions.enumerate() {
            let (hit, seq) = self.states.begin_write_seq(r);
            if !hit {
                misses.push(r);
            }
            if let Some(b) = began.get_mut(i) {
                *b = seq;
            }
        }
    }

    /// Ends a write begun with `begin_write`; pushes regions that turned dirty.
    #[inline]
    pub fn end_write(&self, regions: Range<u64>, dirtied: &mut Vec<u64>) {
        for r in regions {
            if self.states.end_write(r) {
                dirtied.push(r);
            }
        }
    }

    /// Ends a write of `len` bytes at `offset` begun with `begin_write`,
    /// recording which chunks of each region it touched; pushes regions that
    /// turned dirty.
    #[inline]
    pub fn end_write_span(&self, offset: u64, len: u64, dirtied: &mut Vec<u64>) {
        for r in self.geometry.regions_of(offset, len) {
            if self
                .states
                .end_write_chunks(r, self.chunk_mask(r, offset, len))
            {
                dirtied.push(r);
            }
        }
    }

    /// log2 of the chunk size: a 64th of a region, at least 4 KiB.
    pub fn chunk_shift(&self) -> u32 {
        self.geometry.region_shift().saturating_sub(6).max(12)
    }

    /// The chunks of region `r` that `len` bytes at `offset` touch.
    pub fn chunk_mask(&self, r: u64, offset: u64, len: u64) -> ChunkMask {
        let region = self.geometry.region_bytes(r);
        let lo = offset.max(region.start);
        let hi = (offset + len).min(region.end);
        if lo >= hi {
            return 0;
        }
        let shift = self.chunk_shift();
        let first = (lo - region.start) >> shift;
        let last = (hi - 1 - region.start) >> shift;
        let bits = last - first + 1;
        let ones = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        ones << first
    }

    /// Ends a write begun with `begin_write` that was never issued.
    pub fn abort_write(&self, regions: Range<u64>) {
        for r in regions {
            self.states.abort_write(r);
        }
    }

    /// Slow path: makes `missed` durable in the record, together with the
    /// predictor's guesses. Concurrent callers share one update: whoever finds
    /// no update in progress commits everything staged so far; the others wait.
    pub fn admit(&self, missed: &[u64]) -> Result<()> {
        let mut p = self.lock_pending();
        p.staged.extend_from_slice(missed);
        let mine = p.open_batch;
        loop {
            if p.done_batch >= mine {
                return match p.failures.iter().find(|(b, _)| *b == mine) {
                    Some((_, why)) => Err(Error::RecordUpdate(why.clone())),
                    None => Ok(()),
                };
            }
            if !p.committing {
                p.committing = true;
                let batch = p.open_batch;
                p.open_batch += 1;
                let staged = std::mem::take(&mut p.staged);
                drop(p);
                let result = self.commit_regions(staged);
                p = self.lock_pending();
                p.committing = false;
                p.done_batch = batch;
                if let Err(e) = result {
                    p.failures.push_back((batch, Failure::from(&e)));
                    if p.failures.len() > FAILURES_KEPT {
                        p.failures.pop_front();
                    }
                }
                self.batch_done.notify_all();
                continue;
            }
            p = self.batch_done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stages `missed` for the next `commit` without waiting (the simulator
    /// drives commits itself to model their timing).
    pub fn stage(&self, missed: &[u64]) {
        self.lock_pending().staged.extend_from_slice(missed);
    }

    /// Whether regions are staged and not yet committed.
    pub fn has_staged(&self) -> bool {
        !self.lock_pending().staged.is_empty()
    }

    /// Commits everything staged as one update.
    pub fn commit(&self) -> Result<()> {
        let staged = std::mem::take(&mut self.lock_pending().staged);
        self.commit_regions(staged)
    }

    fn commit_regions(&self, mut missed: Vec<u64>) -> Result<()> {
        missed.sort_unstable();
        missed.dedup();
        let now = self.clock.now();
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        let mut admitted: Vec<(u64, bool)> = Vec::with_capacity(missed.len());
        for &r in &missed {
            if !inner.image[r as usize] {
                self.set_image(inner, r, true);
                inner.stats.missed_regions += 1;
                admitted.push((r, false));
            } else if !self.states.is_recorded(r) {
                // Set by an update that failed: its page is still pending.
                admitted.push((r, false));
            }
        }
        let mut guesses = std::mem::take(&mut inner.scratch);
        guesses.clear();
        if !missed.is_empty() {
            inner
                .predictor
                .predict(&missed, &self.states, now, &mut guesses);
        }
        let regions = self.geometry.regions();
        for &g in &guesses {
            if g < regions && !inner.image[g as usize] {
                self.set_image(inner, g, true);
                inner.stats.predicted_regions += 1;
                inner.predicted.insert(g, self.states.seq(g));
                admitted.push((g, true));
            }
        }
        inner.scratch = guesses;
        for &(r, predicted) in &admitted {
            // A region missed by one write and guessed for another is missed.
            if !predicted {
                inner.predicted.remove(&r);
            }
            inner.predictor.admitted(r, predicted, &self.states, now);
        }
        self.evict_locked(inner, now);
        self.write_changed(inner)?;
        for &(r, _) in &admitted {
            self.states.set_recorded(r);
        }
        Ok(())
    }

    /// Adds `r` to the record, or evicts it: the store learns of an eviction
    /// only at the next `flush`, after the barrier.
    fn set_image(&self, inner: &mut Inner, r: u64, on: bool) {
        inner.image.set(r as usize, on);
        if on {
            inner.recorded += 1;
            if !inner.file_image[r as usize] {
                inner.file_image.set(r as usize, true);
                inner.changed.insert(r / self.rpp);
            }
        } else {
            inner.recorded -= 1;
            inner.forgetting.push(r);
        }
    }

    fn write_changed(&self, inner: &mut Inner) -> Result<()> {
        if inner.changed.is_empty() {
            return Ok(());
        }
        let pages: Vec<u64> = inner.changed.iter().copied().collect();
        if let Err(e) = inner.store.write_pages(&inner.file_image, &pages) {
            inner.store_error = Some(Failure::from(&e));
            return Err(e);
        }
        inner.store_error = None;
        inner.changed.clear();
        inner.stats.updates += 1;
        inner.stats.pages_written += pages.len() as u64;
        Ok(())
    }

    /// Evicts in memory: expired regions, then clean regions over capacity.
    fn evict_locked(&self, inner: &mut Inner, now: Nanos) {
        let mut victims = std::mem::take(&mut inner.scratch);
        victims.clear();
        inner.predictor.expired(&self.states, now, &mut victims);
        if inner.predictor.bounded() {
            let dirty = self.states.dirty_count();
            let clean = inner.recorded.saturating_sub(dirty);
            if clean > self.capacity_regions {
                let want = (clean - self.capacity_regions) as usize;
                inner
                    .predictor
                    .victims(want, &self.states, now, &mut victims);
            }
        }
        for &r in &victims {
            if let Some(written) = self.remove_idle(inner, r) {
                inner.stats.evictions += 1;
                if !written {
                    inner.stats.predicted_never_written += 1;
                }
            }
        }
        inner.scratch = victims;
    }

    /// Removes `r` from the record if it is recorded, clean and idle, and tells
    /// the predictor. Returns whether it was written while recorded.
    fn remove_idle(&self, inner: &mut Inner, r: u64) -> Option<bool> {
        if !inner.image[r as usize] || !self.states.try_evict(r) {
            return None;
        }
        self.set_image(inner, r, false);
        let written = match inner.predicted.remove(&r) {
            Some(seq) => seq != self.states.seq(r),
            None => true,
        };
        inner.predictor.evicted(r, written);
        Some(written)
    }

    /// Evicts what the capacity and the policy allow, in memory only; the
    /// removals reach the store with a later update or `destage`.
    pub fn evict(&self) {
        let now = self.clock.now();
        let mut inner = self.lock_inner();
        self.evict_locked(&mut inner, now);
    }

    /// Drops every clean, idle region from the record (in memory; `flush`
    /// writes it). Used at a clean stop so the next start resyncs only what is
    /// still dirty.
    pub fn forget_clean(&self) {
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        let recorded: Vec<u64> = inner.image.iter_ones().map(|r| r as u64).collect();
        for r in recorded {
            self.remove_idle(inner, r);
        }
    }

    /// Destages: writes the pending removals to the store, after the
    /// barrier. Never needed for safety: a stale entry only costs resync.
    pub fn destage(&self) -> Result<()> {
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        if !inner.forgetting.is_empty() {
            if let Some(barrier) = &self.barrier {
                barrier()?;
            }
            for r in std::mem::take(&mut inner.forgetting) {
                if !inner.image[r as usize] && inner.file_image[r as usize] {
                    inner.file_image.set(r as usize, false);
                    inner.changed.insert(r / self.rpp);
                }
            }
        }
        self.write_changed(inner)
    }

    /// Lets the store send a heartbeat (see `RecordStore::tick`), with the
    /// image it holds: removals are in it only once past the barrier.
    pub fn tick(&self) -> Result<()> {
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        inner.store.tick(&inner.file_image)
    }

    /// Why the record's last write to its store failed, while no later one
    /// has succeeded: writes that miss the record are refused meanwhile.
    pub fn store_error(&self) -> Option<Failure> {
        self.lock_inner().store_error.clone()
    }

    /// Evicted regions whose removal has not reached the store yet.
    pub fn pending_removals(&self) -> usize {
        self.lock_inner().forgetting.len()
    }

    /// Whether removals (or a failed update) are waiting to be written.
    pub fn needs_destage(&self) -> bool {
        let inner = self.lock_inner();
        !inner.changed.is_empty() || !inner.forgetting.is_empty()
    }

    /// Start-up after a crash: `regions` were in the durable record, so they may
    /// differ between primary and secondary. They become recorded and dirty.
    /// Returns the regions that turned dirty (to queue for copying).
    pub fn recover(&self, regions: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let now = self.clock.now();
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        let mut dirtied = Vec::new();
        for r in regions {
            if r >= self.geometry.regions() {
                continue;
            }
            if !inner.image[r as usize] {
                // Already durable: loaded from the store (or written just now).
                inner.image.set(r as usize, true);
                inner.file_image.set(r as usize, true);
                inner.recorded += 1;
            }
            if self.states.set_recorded_dirty(r) {
                dirtied.push(r);
            }
            inner.predictor.admitted(r, false, &self.states, now);
        }
        dirtied
    }

    /// Puts every region in the durable record, then marks each dirty: the
    /// secondary was replaced and may hold anything, so all of it is copied
    /// again. Nothing turns dirty unless the record update is durable.
    /// Returns every region, to queue for copying.
    pub fn record_all(&self) -> Result<Vec<u64>> {
        self.record_dirty(0..self.geometry.regions())
    }

    /// Puts `regions` in the durable record, then marks each dirty with its
    /// sequence bumped (a copy claimed before cannot mark it clean): another
    /// writer's data may be in them (a dual-active takeover of the other
    /// node's record). Nothing turns dirty unless the record update is
    /// durable. Returns the regions, to queue for copying.
    pub fn record_dirty(&self, regions: impl IntoIterator<Item = u64>) -> Result<Vec<u64>> {
        let now = self.clock.now();
        let mut inner = self.lock_inner();
        let inner = &mut *inner;
        let regions: Vec<u64> = regions
            .into_iter()
            .filter(|&r| r < self.geometry.regions())
            .collect();
        for &r in &regions {
            if !inner.image[r as usize] {
                self.set_image(inner, r, true);
                inner.predicted.remove(&r);
                inner.predictor.admitted(r, false, &self.states, now);
            }
        }
        self.write_changed(inner)?;
        for &r in &regions {
            self.states.invalidate(r);
        }
        Ok(regions)
    }

    /// The regions the store holds or is being written with (includes evicted
    /// regions not yet forgotten durably).
    pub fn stored_regions(&self) -> Vec<u64> {
        self.lock_inner()
            .file_image
            .iter_ones()
            .map(|r| r as u64)
            .collect()
    }

    /// The regions in the record (the in-memory image).
    pub fn recorded_regions(&self) -> Vec<u64> {
        self.lock_inner()
            .image
            .iter_ones()
            .map(|r| r as u64)
            .collect()
    }

    /// Bytes covered by `count` regions of which the last region of the
    /// device is one when `with_last` (it may be partial).
    pub fn bytes_of(&self, count: u64, with_last: bool) -> u64 {
        let full = count * self.geometry.region_size();
        if with_last && count > 0 {
            let last = self.geometry.region_bytes(self.geometry.regions() - 1);
            full - (self.geometry.region_size() - (last.end - last.start))
        } else {
            full
        }
    }

    pub fn stats(&self) -> RecordStats {
        let inner = self.lock_inner();
        let with_last = inner.image.last().is_some_and(|b| *b);
        RecordStats {
            regions: inner.recorded,
            bytes: self.bytes_of(inner.recorded, with_last),
            dirty_regions: self.states.dirty_count(),
            ..inner.stats
        }
    }

    /// The policy's name.
    pub fn policy(&self) -> &'static str {
        self.lock_inner().predictor.name()
    }

    /// Which candidate the policy follows now, when it chooses among several.
    pub fn policy_choice(&self) -> Option<crate::predict::Choice> {
        self.lock_inner().predictor.choice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::{by_name, Lru};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn record(cap_regions: u64, policy: &str) -> Record {
        let g = Geometry::new(64 << 20, 1 << 20).unwrap();
        Record::new(
            g,
            cap_regions << 20,
            by_name(policy, g.regions(), g.region_size()).unwrap(),
            Box::new(NullStore::default()),
            Clock::Manual(Arc::new(AtomicU64::new(0))),
        )
    }

    fn write(rec: &Record, r: u64) {
        let mut misses = Vec::new();
        rec.begin_write(r..r + 1, &mut misses);
        if !misses.is_empty() {
            rec.admit(&misses).unwrap();
        }
        assert!(rec.states().is_recorded(r), "write-ahead");
        let mut dirtied = Vec::new();
        rec.end_write(r..r + 1, &mut dirtied);
    }

    fn mirror(rec: &Record, r: u64) {
        let c = rec.states().claim_copy(r).unwrap();
        assert!(rec.states().finish_copy(r, c, true));
    }

    #[test]
    fn a_miss_costs_one_update_a_hit_none() {
        let rec = record(8, "lru");
        write(&rec, 3);
        assert_eq!(rec.stats().updates, 1);
        write(&rec, 3);
        assert_eq!(rec.stats().updates, 1);
        assert_eq!(rec.stats().regions, 1);
        assert_eq!(rec.stats().dirty_regions, 1);
    }

    #[test]
    fn clean_regions_are_bounded_dirty_ones_are_not() {
        let rec = record(4, "lru");
        for r in 0..10 {
            write(&rec, r);
        }
        // Nothing mirrored: all ten stay (degraded mode grows the record).
        assert_eq!(rec.stats().regions, 10);
        for r in 0..10 {
            mirror(&rec, r);
        }
        rec.evict();
        assert_eq!(rec.stats().regions, 4);
        // The most recently used survive.
        assert_eq!(rec.recorded_regions(), vec![6, 7, 8, 9]);
        // Evictions were in memory; the file learns with the next update.
        assert!(rec.needs_destage());
        rec.destage().unwrap();
        assert!(!rec.needs_destage());
    }

    #[test]
    fn md_bitmap_clears_after_idle_time() {
        let rec = record(1, "md-bitmap");
        let Clock::Manual(t) = rec.clock().clone() else {
            unreachable!()
        };
        write(&rec, 1);
        write(&rec, 2);
        mirror(&rec, 1);
        mirror(&rec, 2);
        t.store(1_000_000_000, Ordering::Relaxed);
        rec.evict();
        assert_eq!(rec.stats().regions, 2, "unbounded, not yet idle");
        t.store(7_000_000_000, Ordering::Relaxed);
        rec.evict();
        assert_eq!(rec.stats().regions, 0);
    }

    #[test]
    fn group_commit_shares_updates() {
        let rec = Arc::new(record(1024, "lru"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..8 {
                        write(&rec, t * 8 + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = rec.stats();
        assert_eq!(s.regions, 64);
        assert!(s.updates <= 64);
    }

    #[test]
    fn failed_update_fails_the_write_and_is_retried() {
        struct Failing(u32);
        impl RecordStore for Failing {
            fn regions_per_page(&self) -> u64 {
                REGIONS_PER_PAGE
            }
            fn write_pages(&mut self, _: &Image, _: &[u64]) -> Result<()> {
                if self.0 > 0 {
                    self.0 -= 1;
                    return Err(Error::io("record", std::io::Error::from_raw_os_error(5)));
                }
                Ok(())
            }
        }
        let g = Geometry::new(8 << 20, 1 << 20).unwrap();
        let rec = Record::new(
            g,
            8 << 20,
            Box::new(Lru::new()),
            Box::new(Failing(1)),
            Clock::monotonic(),
        );
        let mut misses = Vec::new();
        rec.begin_write(2..3, &mut misses);
        assert!(rec.admit(&misses).is_err());
        rec.abort_write(2..3);
        assert!(!rec.states().is_recorded(2), "not durable, not recorded");
        misses.clear();
        rec.begin_write(2..3, &mut misses);
        assert_eq!(misses, vec![2]);
        rec.admit(&misses).unwrap();
        assert!(rec.states().is_recorded(2));
    }
}
