//! Lock-free per-region state: one atomic word per region.
//!
//! Word layout (u64):
//!
//! | bits   | meaning                                                        |
//! |--------|----------------------------------------------------------------|
//! | 0..20  | writes in flight to the region                                 |
//! | 20     | `RECORDED`: the region is in the *durable* record              |
//! | 21     | `DIRTY`: the secondary may lack an acknowledged write          |
//! | 22     | `COPYING`: a mirror worker has claimed the region              |
//! | 23     | `GRANTED`: the other node of a dual-active pair copies it      |
//! | 32..64 | write sequence: bumped by every write start, wraps harmlessly  |
//!
//! The hit path is one `fetch_add` that both registers the write as in flight and
//! bumps the sequence; its old value says whether the region was recorded. Every
//! transition that removes information (evicting from the record, marking clean)
//! is a compare-and-swap against a word with no write in flight, so a write that
//! has passed its check can never be overtaken: its `fetch_add` changes the word
//! and the CAS fails.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::region::RegionView;

const INFLIGHT_MASK: u64 = (1 << 20) - 1;
const INFLIGHT_ONE: u64 = 1;
const RECORDED: u64 = 1 << 20;
const DIRTY: u64 = 1 << 21;
const COPYING: u64 = 1 << 22;
const GRANTED: u64 = 1 << 23;
const SEQ_SHIFT: u32 = 32;
const SEQ_ONE: u64 = 1 << SEQ_SHIFT;

/// A snapshot taken when a mirror worker claims a dirty region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyClaim {
    word: u64,
}

/// Why a region could not be claimed for copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefused {
    /// Nothing to copy: the region is clean.
    Clean,
    /// Another worker holds it.
    Claimed,
    /// Writes are in flight: try again shortly.
    Busy,
}

/// Which parts of a region were written since its last copy: one bit per
/// chunk, at most 64 chunks per region, chunks of at least 4 KiB.
pub type ChunkMask = u64;

/// Every chunk of a region.
pub const ALL_CHUNKS: ChunkMask = u64::MAX;

/// The state words of every region, plus counters kept on the slow paths.
pub struct RegionStates {
    words: Box<[AtomicU64]>,
    /// Chunks written since the region's last copy: the mirror copies only
    /// these. Set before a write releases its region, taken by a claim.
    chunks: Box<[AtomicU64]>,
    dirty: AtomicU64,
}

impl RegionStates {
    pub fn new(regions: u64) -> Self {
        let words = (0..regions).map(|_| AtomicU64::new(0)).collect();
        let chunks = (0..regions).map(|_| AtomicU64::new(0)).collect();
        RegionStates {
            words,
            chunks,
            dirty: AtomicU64::new(0),
        }
    }

    fn word(&self, r: u64) -> &AtomicU64 {
        &self.words[r as usize]
    }

    /// Hit path: registers a write to `r` as in flight. Returns whether `r` was
    /// already in the durable record (a hit). One atomic operation.
    #[inline]
    pub fn begin_write(&self, r: u64) -> bool {
        self.begin_write_seq(r).0
    }

    /// Like `begin_write`, and also returns the write's own sequence in `r`
    /// (the one its start made).
    #[inline]
    pub fn begin_write_seq(&self, r: u64) -> (bool, u32) {
        let old = self
            .word(r)
            .fetch_add(INFLIGHT_ONE | SEQ_ONE, Ordering::AcqRel);
        debug_assert!(old & INFLIGHT_MASK != INFLIGHT_MASK, "in-flight overflow");
        (
            old & RECORDED != 0,
            ((old >> SEQ_SHIFT) as u32).wrapping_add(1),
        )
    }

    /// Completes a write to `r` that reached the primary (or may have partly).
    /// Marks the region dirty before releasing it; returns true when the region
    /// turned dirty now (the caller queues it for mirroring).
    #[inline]
    pub fn end_write(&self, r: u64) -> bool {
        self.end_write_chunks(r, ALL_CHUNKS)
    }

    /// Like `end_write`, for a write that touched the chunks in `mask`.
    #[inline]
    pub fn end_write_chunks(&self, r: u64, mask: ChunkMask) -> bool {
        let c = &self.chunks[r as usize];
        if c.load(Ordering::Acquire) & mask != mask {
            c.fetch_or(mask, Ordering::AcqRel);
        }
        let w = self.word(r);
        // While our write is in flight nobody can clear DIRTY (that CAS needs no
        // writes in flight), so a DIRTY seen here stays set.
        let became_dirty = if w.load(Ordering::Acquire) & DIRTY == 0 {
            let old = w.fetch_or(DIRTY, Ordering::AcqRel);
            old & DIRTY == 0
        } else {
            false
        };
        if became_dirty {
            self.dirty.fetch_add(1, Ordering::Relaxed);
        }
        w.fetch_sub(INFLIGHT_ONE, Ordering::Release);
        became_dirty
    }

    /// Releases a write that never reached the primary (its record update failed).
    pub fn abort_write(&self, r: u64) {
        self.word(r).fetch_sub(INFLIGHT_ONE, Ordering::Release);
    }

    /// Marks `r` as durably recorded. Returns true when it was not before.
    pub fn set_recorded(&self, r: u64) -> bool {
        self.word(r).fetch_or(RECORDED, Ordering::AcqRel) & RECORDED == 0
    }

    /// Marks `r` recorded and dirty (recovery: the record says it may differ).
    /// Returns true when it turned dirty now.
    pub fn set_recorded_dirty(&self, r: u64) -> bool {
        self.chunks[r as usize].store(ALL_CHUNKS, Ordering::Release);
        let old = self.word(r).fetch_or(RECORDED | DIRTY, Ordering::AcqRel);
        let became = old & DIRTY == 0;
        if became {
            self.dirty.fetch_add(1, Ordering::Relaxed);
        }
        became
    }

    /// Marks `r` recorded and dirty in every chunk, and bumps its sequence so
    /// that a copy claimed before cannot mark it clean: the secondary was
    /// replaced, and whatever a copy in flight wrote went to the old one.
    /// Returns whether the region turned dirty.
    pub fn invalidate(&self, r: u64) -> bool {
        self.chunks[r as usize].store(ALL_CHUNKS, Ordering::Release);
        let old = self
            .word(r)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.wrapping_add(SEQ_ONE) | RECORDED | DIRTY)
            })
            .expect("the update always succeeds");
        let became = old & DIRTY == 0;
        if became {
            self.dirty.fetch_add(1, Ordering::Relaxed);
        }
        became
    }

    /// The word of `r` when it is clean and still: no write in flight, not
    /// being copied or granted. The same word later means that no write
    /// started in between (each bumps the sequence): what was read of the
    /// region then is what both devices hold.
    pub fn still(&self, r: u64) -> Option<u64> {
        let w = self.word(r).load(Ordering::Acquire);
        (w & (DIRTY | COPYING | GRANTED | INFLIGHT_MASK) == 0).then_some(w)
    }

    /// Removes a clean, idle region from the record. Fails (returns false) when
    /// the region is dirty, being copied, has a write in flight, or is not
    /// recorded. Never blocks and does no I/O.
    pub fn try_evict(&self, r: u64) -> bool {
        let w = self.word(r);
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & RECORDED == 0 || cur & (DIRTY | COPYING | INFLIGHT_MASK) != 0 {
                return false;
            }
            match w.compare_exchange_weak(cur, cur & !RECORDED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Claims dirty region `r` for copying. The claim snapshots the word: the copy
    /// may mark the region clean only if the word is unchanged when it finishes.
    pub fn claim_copy(&self, r: u64) -> Result<CopyClaim, ClaimRefused> {
        let w = self.word(r);
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & DIRTY == 0 {
                return Err(ClaimRefused::Clean);
            }
            if cur & (COPYING | GRANTED) != 0 {
                return Err(ClaimRefused::Claimed);
            }
            if cur & INFLIGHT_MASK != 0 {
                return Err(ClaimRefused::Busy);
            }
            let claimed = cur | COPYING;
            match w.compare_exchange_weak(cur, claimed, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(CopyClaim { word: claimed }),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes the chunks written since the last copy of `r` (call it holding a
    /// claim, before reading the primary). Every chunk taken belongs to a write
    /// that completed, so reading the primary afterwards sees its data.
    pub fn take_chunks(&self, r: u64) -> ChunkMask {
        self.chunks[r as usize].swap(0, Ordering::AcqRel)
    }

    /// Gives back chunks taken for a copy that did not become durable.
    pub fn restore_chunks(&self, r: u64, mask: ChunkMask) {
        if mask != 0 {
            self.chunks[r as usize].fetch_or(mask, Ordering::AcqRel);
        }
    }

    /// Ends a copy. With `durable` (the secondary holds the copied data durably)
    /// the region turns clean if no write started since the claim; returns true
    /// then. Otherwise the claim is dropped and the region stays dirty.
    pub fn finish_copy(&self, r: u64, claim: CopyClaim, durable: bool) -> bool {
        let w = self.word(r);
        if durable
            && w.compare_exchange(
                claim.word,
                claim.word & !(DIRTY | COPYING),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.dirty.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        w.fetch_and(!COPYING, Ordering::AcqRel);
        false
    }

    /// Grants the other node of a dual-active pair the copy of `r`: this
    /// node's own copies of it are refused until `end_grant` (its writes go
    /// on, and bump the sequence). Refused (`Claimed`) while this node copies
    /// it itself; granting it again is a no-op.
    pub fn grant(&self, r: u64) -> Result<(), ClaimRefused> {
        let w = self.word(r);
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & COPYING != 0 {
                return Err(ClaimRefused::Claimed);
            }
            match w.compare_exchange_weak(cur, cur | GRANTED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Ends a grant: this node may copy `r` again.
    pub fn end_grant(&self, r: u64) {
        self.word(r).fetch_and(!GRANTED, Ordering::AcqRel);
    }

    /// Whether the other node holds a grant of `r`.
    pub fn is_granted(&self, r: u64) -> bool {
        self.word(r).load(Ordering::Acquire) & GRANTED != 0
    }

    /// Number of dirty regions.
    pub fn dirty_count(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Number of writes in flight to `r`.
    pub fn inflight(&self, r: u64) -> u64 {
        self.word(r).load(Ordering::Acquire) & INFLIGHT_MASK
    }

    /// Iterates the dirty regions (a scan; used for recovery and tests).
    pub fn dirty_regions(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.words.len() as u64).filter(move |&r| self.is_dirty(r))
    }
}

impl RegionView for RegionStates {
    fn regions(&self) -> u64 {
        self.words.len() as u64
    }

    fn seq(&self, r: u64) -> u32 {
        (self.word(r).load(Ordering::Acquire) >> SEQ_SHIFT) as u32
    }

    fn is_recorded(&self, r: u64) -> bool {
        self.word(r).load(Ordering::Acquire) & RECORDED != 0
    }

    fn is_dirty(&self, r: u64) -> bool {
        self.word(r).load(Ordering::Acquire) & DIRTY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_grant_holds_back_copies_but_not_writes() {
        let s = RegionStates::new(2);
        s.set_recorded(0);
        assert!(s.begin_write(0));
        s.end_write(0);
        s.grant(0).unwrap();
        s.grant(0).unwrap();
        assert_eq!(
            s.claim_copy(0),
            Err(ClaimRefused::Claimed),
            "granted to the other node"
        );
        assert!(!s.try_evict(0), "still dirty");
        let seq = s.seq(0);
        assert!(s.begin_write(0), "writes go on under a grant");
        s.end_write(0);
        assert_ne!(s.seq(0), seq);
        s.end_grant(0);
        let c = s.claim_copy(0).unwrap();
        assert_eq!(s.grant(0), Err(ClaimRefused::Claimed), "copied here");
        assert!(s.finish_copy(0, c, true));
        s.grant(0).unwrap();
        assert!(s.is_granted(0) && !s.is_granted(1));
    }

    /// Hammers one region with this node's copies on one thread and the
    /// other node's grants (through `grant`) on another, for `run` or
    /// until both are seen held at once; returns whether they were. Each
    /// side holds its claim a while, watching for the other's.
    fn copy_and_grant_overlap(grant: fn(&RegionStates) -> bool, run: Duration) -> bool {
        let s = Arc::new(RegionStates::new(1));
        s.set_recorded(0);
        assert!(s.begin_write(0));
        s.end_write(0);
        let copying = Arc::new(AtomicBool::new(false));
        let granted = Arc::new(AtomicBool::new(false));
        let overlap = Arc::new(AtomicBool::new(false));
        let held = |mine: &AtomicBool, theirs: &AtomicBool, overlap: &AtomicBool| {
            mine.store(true, Ordering::SeqCst);
            for _ in 0..200 {
                if theirs.load(Ordering::SeqCst) {
                    overlap.store(true, Ordering::SeqCst);
                }
                std::hint::spin_loop();
            }
            mine.store(false, Ordering::SeqCst);
        };
        let end = std::time::Instant::now() + run;
        let copier = {
            let (s, copying, granted, overlap) =
                (s.clone(), copying.clone(), granted.clone(), overlap.clone());
            std::thread::spawn(move || {
                while std::time::Instant::now() < end && !overlap.load(Ordering::SeqCst) {
                    if let Ok(c) = s.claim_copy(0) {
                        held(&copying, &granted, &overlap);
                        s.finish_copy(0, c, false);
                    }
                    std::thread::yield_now();
                }
            })
        };
        while std::time::Instant::now() < end && !overlap.load(Ordering::SeqCst) {
            if grant(&s) {
                held(&granted, &copying, &overlap);
                s.end_grant(0);
            }
            std::thread::yield_now();
        }
        copier.join().unwrap();
        overlap.load(Ordering::SeqCst)
    }

    #[test]
    fn a_grant_and_a_copy_never_overlap() {
        let grant: fn(&RegionStates) -> bool = |s| s.grant(0).is_ok();
        assert!(!copy_and_grant_overlap(grant, Duration::from_millis(500)));
    }

    #[test]
    fn the_overlap_test_catches_a_grant_that_ignores_a_copy() {
        // Planted: the bit set without looking at COPYING.
        let planted: fn(&RegionStates) -> bool = |s| {
            s.word(0).fetch_or(GRANTED, Ordering::AcqRel);
            true
        };
        assert!(
            copy_and_grant_overlap(planted, Duration::from_secs(20)),
            "a grant that ignores a copy in progress was not caught"
        );
    }

    #[test]
    fn miss_then_hit() {
        let s = RegionStates::new(4);
        assert!(!s.begin_write(1));
        s.abort_write(1);
        assert!(s.set_recorded(1));
        assert!(s.begin_write(1));
        assert!(s.end_write(1));
        assert!(s.begin_write(1));
        assert!(!s.end_write(1), "already dirty");
        assert_eq!(s.dirty_count(), 1);
    }

    #[test]
    fn eviction_refuses_dirty_and_inflight() {
        let s = RegionStates::new(2);
        s.set_recorded(0);
        assert!(s.begin_write(0));
        assert!(!s.try_evict(0), "write in flight");
        s.end_write(0);
        assert!(!s.try_evict(0), "dirty");
        let c = s.claim_copy(0).unwrap();
        assert!(!s.try_evict(0), "being copied");
        assert!(s.finish_copy(0, c, true));
        assert!(s.try_evict(0));
        assert!(!s.is_recorded(0));
        assert!(!s.begin_write(0), "evicted region misses");
    }

    #[test]
    fn a_write_during_the_copy_keeps_the_region_dirty() {
        let s = RegionStates::new(1);
        s.set_recorded(0);
        s.begin_write(0);
        s.end_write(0);
        let c = s.claim_copy(0).unwrap();
        assert!(s.begin_write(0));
        s.end_write(0);
        assert!(!s.finish_copy(0, c, true));
        assert!(s.is_dirty(0));
        assert_eq!(s.claim_copy(0).map(|_| ()), Ok(()));
    }

    #[test]
    fn claim_refuses_busy_claimed_and_clean() {
        let s = RegionStates::new(1);
        s.set_recorded(0);
        assert_eq!(s.claim_copy(0), Err(ClaimRefused::Clean));
        s.begin_write(0);
        s.end_write(0);
        s.begin_write(0);
        assert_eq!(s.claim_copy(0), Err(ClaimRefused::Busy));
        s.end_write(0);
        let c = s.claim_copy(0).unwrap();
        assert_eq!(s.claim_copy(0), Err(ClaimRefused::Claimed));
        assert!(!s.finish_copy(0, c, false), "failed copy keeps it dirty");
        assert!(s.is_dirty(0));
    }

    /// Hammers two regions from writer, mirror and evictor threads and checks the
    /// invariant the CAS protocol exists for: a write that passed its check (saw
    /// the region recorded) finds it still recorded until the write ends.
    #[test]
    fn stress_no_eviction_overtakes_a_write() {
        let s = Arc::new(RegionStates::new(2));
        s.set_recorded(0);
        s.set_recorded(1);
        let stop = Arc::new(AtomicBool::new(false));
        // `written[r]`: completed writes, to show the writers made progress.
        let written: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let violations = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for t in 0..3 {
            let (s, stop, written, violations) =
                (s.clone(), stop.clone(), written.clone(), violations.clone());
            handles.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = (i + t) % 2;
                    i += 1;
                    if s.begin_write(r) {
                        // Passed the check: the region must stay recorded.
                        std::hint::spin_loop();
                        if !s.is_recorded(r) {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        s.end_write(r);
                        written[r as usize].fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Miss: re-record (the record's commit would do this).
                        s.abort_write(r);
                        s.set_recorded(r);
                    }
                }
            }));
        }
        {
            let (s, stop) = (s.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for r in 0..2 {
                        if let Ok(c) = s.claim_copy(r) {
                            s.finish_copy(r, c, true);
                        }
                        s.try_evict(r);
                    }
                }
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::Relaxed), 0);
        assert!(written.iter().all(|w| w.load(Ordering::Relaxed) > 0));
        // Quiescent: dirty count matches the words.
        assert_eq!(s.dirty_count(), s.dirty_regions().count() as u64);
    }
}
