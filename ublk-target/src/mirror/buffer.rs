//! Copies from the write's own data: what recent writes wrote, kept per
//! region until the mirror copies the region, so that the copy sends it to
//! the secondary instead of reading it back from the primary.
//!
//! Which data is current follows from the region's write sequence, which
//! every write start bumps (`RegionStates::begin_write_seq`). A write keeps,
//! for each region it touched, a piece: its bytes there, the sequence it
//! began with (its own) and the sequence seen once the primary had completed
//! it (`ended`). Two writes whose `began..=ended` intervals meet were in
//! flight together, and which of them the primary holds where they overlap
//! is not known: there the copy reads the primary. Of two writes that were
//! not in flight together, the one that began later is the newer.
//!
//! A write whose data is not kept (the buffer is over its budget, the write
//! failed or was short, a discard, a write-zeroes) keeps a piece without
//! data, a marker: its bytes are read back. A write that finds the buffer
//! over its budget also makes its region give up the data it holds, and
//! the region holds none until its next copy takes its pieces: the memory
//! goes to regions held whole, whose copies read nothing.
//!
//! A copy takes a region's pieces after it took the region's chunks, and
//! leaves a horizon, the sequence just after the take: a write that began
//! before it and completes later may have been in flight with one of the
//! pieces taken, so it is kept as a marker. A chunk is sent from the buffer
//! only when its every byte is covered by pieces whose newest is known and
//! has data; otherwise the copy reads the chunk from the primary, as it
//! does for a region with no pieces (a resync after a restart).
//!
//! Dual-active service turns the buffer off (`switch_off`): the other node
//! writes the shared primary too, and its writes are not here.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::RegionStates;
use crate::region::RegionView;

/// The buffer's budget, by default.
pub const DEFAULT_COPY_BUFFER: u64 = 64 << 20;

/// Pieces one region keeps at most; past it the region's pieces are dropped
/// (and its writes copied from the primary) until its next copy.
const MAX_PIECES: usize = 64;
/// Sequences this far apart are compared as unordered (they wrap at 2^32).
const SEQ_REACH: u32 = 1 << 30;
/// Shards of the region map, so that queues rarely meet on one lock.
const SHARDS: usize = 64;

/// Whether sequence `a` comes before `b` (wrapping).
fn before(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 1 << 31
}

/// The data of one write in one region, counted against the budget while
/// it lives.
struct Kept {
    bytes: Box<[u8]>,
    held: Arc<AtomicU64>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.bytes.len() as u64, Ordering::Relaxed);
    }
}

/// One write's part of a region: bytes `start..end` of the region.
struct Piece {
    start: u32,
    end: u32,
    began: u32,
    ended: u32,
    /// None: a marker (what it wrote is not here).
    data: Option<Kept>,
}

impl Piece {
    /// Whether the two writes were in flight together.
    fn met(&self, o: &Piece) -> bool {
        !before(self.ended, o.began) && !before(o.ended, self.began)
    }
}

/// The pieces of one region.
#[derive(Default)]
struct Slot {
    /// Writes that began at or before this sequence are kept as markers.
    horizon: Option<u32>,
    pieces: Vec<Piece>,
    /// In `WriteBuffer::order`.
    listed: bool,
    /// Since the region's pieces were last taken, a write found the buffer
    /// over its budget (`give_up`) or the pieces were dropped (`poison`):
    /// until the next take the region holds no data.
    partial: bool,
}

impl Slot {
    fn has_data(&self) -> bool {
        self.pieces.iter().any(|p| p.data.is_some())
    }

    /// Drops the data of every piece (they stay as markers) and holds
    /// nothing more until the region's pieces are next taken. Its copy
    /// reads back part of the region anyway, and what it held would wait
    /// for that copy: giving it up trades this region's held chunks for
    /// room for regions held whole, whose copies read nothing and come
    /// first (`oldest_held`).
    fn give_up(&mut self) {
        self.partial = true;
        for p in &mut self.pieces {
            p.data = None;
        }
    }
}

/// A region's pieces as a copy took them.
#[derive(Default)]
pub(crate) struct Taken {
    pieces: Vec<Piece>,
    #[cfg(test)]
    bug: Option<Bug>,
}

/// A planted bug, for the tests that must catch it.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    None,
    /// Writes in flight together are ordered as if one came after the other.
    IgnoreMet,
    /// The horizon a copy leaves is ignored.
    NoHorizon,
}

/// The write-data buffer of one device.
pub struct WriteBuffer {
    shards: Box<[Mutex<HashMap<u64, Slot>>]>,
    budget: u64,
    /// The copy's unit: a chunk is sent from here only when pieces cover it
    /// whole.
    chunk: u32,
    held: Arc<AtomicU64>,
    /// Regions holding data, in the order their first data came (stale
    /// entries, whose data has gone, are skipped): the mirror copies these
    /// first when the buffer fills (`oldest_held`).
    order: Mutex<VecDeque<u64>>,
    off: AtomicBool,
    /// A planted bug for the power-loss test (`plant_stale`).
    stale: AtomicBool,
    #[cfg(test)]
    pub(crate) bug: Bug,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteBuffer {
    /// A buffer holding at most `budget` bytes of data (0: none, every
    /// copy reads the primary).
    pub fn new(budget: u64) -> Self {
        WriteBuffer {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            budget,
            chunk: 1,
            held: Arc::new(AtomicU64::new(0)),
            order: Mutex::new(VecDeque::new()),
            off: AtomicBool::new(budget == 0),
            stale: AtomicBool::new(false),
            #[cfg(test)]
            bug: Bug::None,
        }
    }

    /// Whether copies may take data from here.
    pub fn is_on(&self) -> bool {
        !self.off.load(Ordering::Acquire)
    }

    /// Stops keeping data for good and drops what is kept (dual-active: the
    /// other node writes the primary too).
    pub fn switch_off(&self) {
        self.off.store(true, Ordering::Release);
        for s in self.shards.iter() {
            lock(s).clear();
        }
        lock(&self.order).clear();
    }

    /// Plants a bug, for the tests that must catch it: a write over bytes
    /// the buffer already holds is dropped, so that the buffer keeps the
    /// older data. Never call it outside a test.
    #[doc(hidden)]
    pub fn plant_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Bytes of write data held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Sets the copy's chunk size (bytes, a power of two).
    pub fn with_chunk(mut self, chunk: u32) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Whether a piece's data may help fill a whole chunk: it covers one,
    /// starts one, or goes on from data held just before it. A small write
    /// inside a chunk (4 KiB at random in 16 KiB chunks) would only take
    /// memory and copying: its chunk is read back anyway.
    fn worth_holding(&self, slot: &Slot, at: &Range<u32>) -> bool {
        let c = self.chunk;
        let first_whole = at.start.div_ceil(c).saturating_mul(c);
        at.start.is_multiple_of(c)
            || first_whole.saturating_add(c) <= at.end
            || slot
                .pieces
                .iter()
                .any(|p| p.data.is_some() && p.end == at.start)
    }

    /// Whether it holds half its budget or more: copies should stop
    /// waiting, or new writes will find no room.
    pub fn half_full(&self) -> bool {
        self.budget > 0 && self.is_on() && self.held() >= self.budget / 2
    }

    fn shard(&self, r: u64) -> MutexGuard<'_, HashMap<u64, Slot>> {
        lock(&self.shards[(r % SHARDS as u64) as usize])
    }

    /// Keeps what a write wrote to region `r`: bytes `at` of the region,
    /// `data` when the primary holds them, `None` when it may not or they
    /// are not to be kept. `began` is the write's own sequence in `r`. Call
    /// it once the primary has completed the write, before the write
    /// releases the region (before its chunks are set).
    pub fn keep(
        &self,
        states: &RegionStates,
        r: u64,
        at: Range<u32>,
        began: u32,
        data: Option<&[u8]>,
    ) {
        if !self.is_on() || at.is_empty() {
            return;
        }
        let mut shard = self.shard(r);
        let slot = shard.entry(r).or_default();
        // Read under the lock, after the primary completed the write: every
        // write that begins after this began after this one ended.
        let now = states.seq(r);
        let ended = now;
        if slot
            .pieces
            .first()
            .is_some_and(|p| now.wrapping_sub(p.began) > SEQ_REACH)
        {
            self.poison(slot, now);
        }
        if slot
            .horizon
            .is_some_and(|h| now.wrapping_sub(h) > SEQ_REACH)
        {
            // No write stays in flight across this many others.
            slot.horizon = None;
        }
        let trusted = match slot.horizon {
            #[cfg(test)]
            Some(_) if self.bug == Bug::NoHorizon => true,
            Some(h) => before(h, began),
            None => true,
        };
        let data = match data {
            Some(d) if trusted && !slot.partial && self.worth_holding(slot, &at) => {
                let kept = self.hold(d);
                if kept.is_none() {
                    slot.give_up();
                }
                kept
            }
            _ => None,
        };
        let piece = Piece {
            start: at.start,
            end: at.end,
            began,
            ended,
            data,
        };
        if self.stale.load(Ordering::Relaxed)
            && slot
                .pieces
                .iter()
                .any(|p| p.start < piece.end && p.end > piece.start)
        {
            return;
        }
        // Pieces this one covers and is newer than can never be current.
        slot.pieces.retain(|p| {
            !(p.start >= piece.start && p.end <= piece.end && before(p.ended, piece.began))
        });
        if slot.pieces.len() >= MAX_PIECES {
            self.poison(slot, now);
            return;
        }
        let list = piece.data.is_some() && !slot.listed;
        slot.pieces.push(piece);
        if list {
            slot.listed = true;
            lock(&self.order).push_back(r);
            drop(shard);
            // One entry in, up to two stale ones out: the list stays as
            // long as the regions holding data, give or take.
            self.prune(2);
        }
    }

    /// Drops up to `n` stale entries from the front of `order`.
    fn prune(&self, n: usize) {
        for _ in 0..n {
            let Some(r) = lock(&self.order).pop_front() else {
                return;
            };
            let mut shard = self.shard(r);
            match shard.get_mut(&r) {
                Some(slot) if slot.has_data() => {
                    // Still holding: it keeps its place.
                    drop(shard);
                    lock(&self.order).push_front(r);
                    return;
                }
                Some(slot) => slot.listed = false,
                None => {}
            }
        }
    }

    /// The region whose data has been held longest, taken off the list
    /// (`relist` puts it back when it cannot be copied now).
    pub(crate) fn oldest_held(&self) -> Option<u64> {
        loop {
            let r = lock(&self.order).pop_front()?;
            let mut shard = self.shard(r);
            if let Some(slot) = shard.get_mut(&r) {
                slot.listed = false;
                if slot.has_data() {
                    return Some(r);
                }
            }
        }
    }

    /// Puts region `r` back at the front of the list, when it holds data.
    pub(crate) fn relist(&self, r: u64) {
        let mut shard = self.shard(r);
        if let Some(slot) = shard.get_mut(&r) {
            if slot.has_data() && !slot.listed {
                slot.listed = true;
                lock(&self.order).push_front(r);
            }
        }
    }

    /// Drops a region's pieces: writes begun so far are read back.
    pub fn poison_region(&self, states: &RegionStates, r: u64) {
        if !self.is_on() {
            return;
        }
        let mut shard = self.shard(r);
        let slot = shard.entry(r).or_default();
        self.poison(slot, states.seq(r));
    }

    fn poison(&self, slot: &mut Slot, now: u32) {
        slot.pieces.clear();
        slot.horizon = Some(now);
        slot.partial = true;
    }

    /// A copy of the data within the budget, or None when over it.
    fn hold(&self, d: &[u8]) -> Option<Kept> {
        let len = d.len() as u64;
        // Added only if it fits: an add taken back again would make a
        // write that raced it near the budget fail, and give up its region.
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |was| {
                (was + len <= self.budget).then_some(was + len)
            })
            .ok()?;
        Some(Kept {
            bytes: d.into(),
            held: self.held.clone(),
        })
    }

    /// Takes region `r`'s pieces for its copy. Call it holding the copy's
    /// claim, after taking the region's chunks: a write that set its chunks
    /// before has kept its piece before.
    pub(crate) fn take(&self, states: &RegionStates, r: u64) -> Taken {
        if !self.is_on() {
            return Taken::default();
        }
        let mut shard = self.shard(r);
        let slot = shard.entry(r).or_default();
        let pieces = std::mem::take(&mut slot.pieces);
        slot.partial = false;
        // Read after the pieces are gone: a write that begins after this
        // began after every piece taken had ended.
        slot.horizon = Some(states.seq(r));
        Taken {
            pieces,
            #[cfg(test)]
            bug: Some(self.bug),
        }
    }

    /// Region `r` turned clean: its slot goes, unless a write has kept a
    /// piece since (it began after the copy, which then did not clean it,
    /// or after the clean marking).
    pub(crate) fn forget(&self, r: u64) {
        if !self.is_on() {
            return;
        }
        let mut shard = self.shard(r);
        if shard.get(&r).is_some_and(|s| s.pieces.is_empty()) {
            shard.remove(&r);
        }
    }

    /// Regions with a slot (for tests and the status).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

impl Taken {
    /// Fills `out` with the current data of region bytes `range`; false
    /// (with `out` in any state) when some byte is not known here.
    pub(crate) fn fill(&self, range: Range<u32>, out: &mut [u8]) -> bool {
        debug_assert_eq!(out.len(), range.len());
        let over: Vec<&Piece> = self
            .pieces
            .iter()
            .filter(|p| p.start < range.end && p.end > range.start)
            .collect();
        if over.is_empty() {
            return false;
        }
        // Cut the range where a piece starts or ends; each cut has one set
        // of pieces over it.
        let mut cuts: Vec<u32> = vec![range.start, range.end];
        for p in &over {
            cuts.extend([p.start, p.end].into_iter().filter(|c| range.contains(c)));
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let mut here: Vec<&Piece> = over
                .iter()
                .copied()
                .filter(|p| p.start <= lo && p.end >= hi)
                .collect();
            if here.is_empty() {
                return false;
            }
            let base = here[0].began.wrapping_sub(SEQ_REACH);
            here.sort_unstable_by_key(|p| p.began.wrapping_sub(base));
            #[cfg(test)]
            let check = self.bug != Some(Bug::IgnoreMet);
            #[cfg(not(test))]
            let check = true;
            if check && here.windows(2).any(|w| w[0].met(w[1])) {
                return false;
            }
            let newest = here.last().expect("not empty");
            let Some(data) = &newest.data else {
                return false;
            };
            let from = (lo - newest.start) as usize;
            let to = (hi - range.start) as usize;
            let at = (lo - range.start) as usize;
            out[at..to].copy_from_slice(&data.bytes[from..from + (hi - lo) as usize]);
        }
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

#[cfg(test)]
mod tests;
