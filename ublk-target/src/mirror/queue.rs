//! The copy queue: regions waiting for their copy, in the order they turned
//! dirty, and the claim of a batch of adjacent dirty regions for one worker.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use super::{lock, Shared};
use crate::record::{ClaimRefused, CopyClaim, RegionStates};
use crate::region::RegionView;

/// Delay before retrying a region that had writes in flight.
pub(super) const BUSY_RETRY: Duration = Duration::from_millis(1);
/// Extents one worker copies before one sync of the secondary.
pub(super) const EXTENTS_PER_SYNC: usize = 8;

/// Claimed extents (runs of adjacent regions with their claims) and when
/// each was queued.
pub(super) type Batch = Vec<(Vec<(u64, CopyClaim)>, Instant)>;

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) region: u64,
    /// When the region was queued: the copy lag is measured from here.
    pub(super) since: Instant,
    pub(super) not_before: Instant,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) entries: VecDeque<Entry>,
    /// Entries waiting for a retry time.
    pub(super) delayed: VecDeque<Entry>,
    /// Queue times of extents being copied now.
    pub(super) copying: Vec<Instant>,
    /// The queue time of each region's live entry. An entry whose time is
    /// not its region's is stale: the region was copied (ahead of its turn,
    /// from the write-data buffer or as a neighbour in a run), turned dirty
    /// again and was queued anew. A stale entry is dropped when it reaches
    /// the head and counts for nothing: not in the lag, and it does not
    /// copy the region early in the name of a write the secondary holds.
    live: HashMap<u64, Instant>,
}

impl Queue {
    /// Queues a region that turned dirty at `since`: whatever entry it had
    /// is stale now.
    pub(super) fn push(&mut self, region: u64, since: Instant) {
        self.live.insert(region, since);
        self.entries.push_back(Entry {
            region,
            since,
            not_before: since,
        });
    }

    /// Queues a region that was dirty already (its copy held back, or to be
    /// copied again): an entry it has keeps its older time.
    pub(super) fn requeue(&mut self, region: u64, now: Instant) {
        if !self.live.contains_key(&region) {
            self.push(region, now);
        }
    }

    /// Puts back an entry that waited (a retry, a copy that failed or was
    /// released) in the order of the queue times, so that an old one is not
    /// left behind younger ones: while copies wait for heavy host I/O, the
    /// queue's head must be due before anything behind it goes, and an
    /// old region at the tail waited a whole extra round.
    pub(super) fn put_back(&mut self, e: Entry) {
        if self.note_live(e) {
            insert_by(&mut self.entries, e, |x| x.since);
        }
    }

    /// Holds an entry back until its `not_before`, in that order (the
    /// workers look only at the front of `delayed`).
    pub(super) fn delay(&mut self, e: Entry) {
        if self.note_live(e) {
            insert_by(&mut self.delayed, e, |x| x.not_before);
        }
    }

    /// An entry whose claim did not last goes back live; a region with a
    /// live entry already keeps the older time of the two (its copy did not
    /// land, so it has been dirty since then). Returns whether `e` is live:
    /// if not, the region's older entry stands for it.
    fn note_live(&mut self, e: Entry) -> bool {
        let t = self.live.entry(e.region).or_insert(e.since);
        *t = (*t).min(e.since);
        *t == e.since
    }

    fn is_live(&self, e: &Entry) -> bool {
        self.live.get(&e.region) == Some(&e.since)
    }

    /// Moves the delayed entries whose time has come (all of them with
    /// `all`) back to the queue, dropping the stale ones.
    fn release_delayed(&mut self, now: Instant, all: bool) {
        while let Some(e) = self.delayed.front().copied() {
            if e.not_before > now && !all {
                break;
            }
            self.delayed.pop_front();
            if self.is_live(&e) {
                self.put_back(e);
            }
        }
    }

    /// The live entry at the head, once the stale ones and those of regions
    /// found clean (copied ahead of their turn) are dropped.
    pub(super) fn head(&mut self, states: &RegionStates) -> Option<Entry> {
        while let Some(e) = self.entries.front().copied() {
            if self.is_live(&e) && states.is_dirty(e.region) {
                return Some(e);
            }
            self.pop_front();
        }
        None
    }

    /// Takes the head for a claim: while claimed, the region has no live
    /// entry (its copy's queue time is in `copying`).
    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        if self.is_live(&e) {
            self.live.remove(&e.region);
        }
        Some(e)
    }

    /// When the oldest write that the secondary may lack was queued: the
    /// oldest live entry of a dirty region, or the oldest copy going on.
    pub(super) fn oldest(&self, states: &RegionStates) -> Option<Instant> {
        self.entries
            .iter()
            .chain(self.delayed.iter())
            .filter(|e| self.is_live(e) && states.is_dirty(e.region))
            .map(|e| e.since)
            .chain(self.copying.iter().copied())
            .min()
    }

    /// Entries held, stale ones included (what the queue costs in memory).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len() + self.delayed.len()
    }
}

/// Inserts `e` after every entry whose `key` is not later than its own.
fn insert_by(entries: &mut VecDeque<Entry>, e: Entry, key: impl Fn(&Entry) -> Instant) {
    let at = entries.partition_point(|x| key(x) <= key(&e));
    entries.insert(at, e);
}

impl Shared {
    /// Waits for work (unless `!blocking`): returns claimed extents, each a
    /// run of adjacent claimed regions.
    pub(super) fn next_batch(&self, blocking: bool) -> Option<Batch> {
        let states = self.record.states();
        let max_regions =
            (self.config.max_copy_bytes / self.record.geometry().region_size()).max(1);
        let regions = self.record.geometry().regions();
        let mut q = lock(&self.queue);
        loop {
            if self.stopping() {
                return None;
            }
            if self.paused.load(Ordering::Acquire) {
                if !blocking {
                    return None;
                }
                q = self
                    .wake
                    .wait_timeout(q, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let now = Instant::now();
            // Secondary failing: wait out the backoff.
            let backoff_until = *lock(&self.backoff_until);
            if let Some(until) = backoff_until {
                if until > now && blocking {
                    q = self
                        .wake
                        .wait_timeout(q, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
            }
            q.release_delayed(now, !blocking);
            let mut batch = Vec::new();
            let mut young: Option<Instant> = None;
            let deferring = blocking && !q.entries.is_empty() && self.deferring_now(now);
            let delay = if deferring {
                self.max_lag()
            } else if self.near_max_dirty() {
                // Host writes wait for this backlog (`--max-dirty`): no
                // coalescing delay.
                Duration::ZERO
            } else {
                self.config.copy_delay
            };
            let claim_run = |r: u64, claim: CopyClaim| {
                let mut run = vec![(r, claim)];
                let mut next = r + 1;
                while (run.len() as u64) < max_regions && next < regions {
                    match states.claim_copy(next) {
                        Ok(c) => run.push((next, c)),
                        Err(_) => break,
                    }
                    next += 1;
                }
                run
            };
            // With the write-data buffer half full, the regions whose data
            // it has held longest go first, whatever their place in the
            // queue: their copies read nothing back, and they make room
            // before new writes find none (under a load the mirror cannot
            // keep up with, the queue's head came while the buffer was full
            // and is read back anyway). Their queue entries stay, so the
            // lag still counts from them while they are dirty, and are
            // dropped at the head once they are clean. Not near
            // `--max-dirty`: host writes wait for the backlog, which the
            // queue's long runs bring down fastest. Nor past a head that
            // has waited `--max-lag`: the regions the buffer does not hold
            // (written while it was full) are copied from the queue alone,
            // and under a load that keeps the buffer half full they would
            // wait for ever.
            if self.buffer.half_full()
                && !self.near_max_dirty()
                && q.head(states)
                    .is_none_or(|e| now.saturating_duration_since(e.since) < self.max_lag())
            {
                let mut busy = Vec::new();
                for _ in 0..2 * EXTENTS_PER_SYNC {
                    if batch.len() >= EXTENTS_PER_SYNC {
                        break;
                    }
                    let Some(r) = self.buffer.oldest_held() else {
                        break;
                    };
                    match states.claim_copy(r) {
                        Ok(claim) => {
                            // Alone: its neighbours' data is likely not
                            // held. Its lag counts from its queue entry
                            // (which a worker may drop as claimed), so that
                            // a copy that fails puts it back at that time.
                            let since = q.live.get(&r).copied().unwrap_or(now);
                            q.copying.push(since);
                            batch.push((vec![(r, claim)], since));
                        }
                        Err(ClaimRefused::Busy) => busy.push(r),
                        Err(ClaimRefused::Clean) | Err(ClaimRefused::Claimed) => {}
                    }
                }
                for r in busy.into_iter().rev() {
                    self.buffer.relist(r);
                }
                if !batch.is_empty() {
                    // Not topped up from the queue, whose head would be read
                    // back: the next batch looks at the buffer again first.
                    return Some(batch);
                }
            }
            while batch.len() < EXTENTS_PER_SYNC {
                let Some(e) = q.head(states) else {
                    break;
                };
                let due = e.since + delay;
                if blocking && due > now {
                    // Queued too recently: let more writes to it gather first.
                    young = Some(due);
                    break;
                }
                q.pop_front();
                match states.claim_copy(e.region) {
                    Ok(claim) => {
                        // The run's neighbours have entries of their own,
                        // which a worker may drop as claimed: the extent
                        // counts from the oldest, so that a copy that fails
                        // puts none of them back younger.
                        let run = claim_run(e.region, claim);
                        let since = run
                            .iter()
                            .filter_map(|(n, _)| q.live.get(n).copied())
                            .fold(e.since, Instant::min);
                        q.copying.push(since);
                        batch.push((run, since));
                    }
                    Err(ClaimRefused::Busy) => {
                        q.delay(Entry {
                            not_before: now + BUSY_RETRY,
                            ..e
                        });
                    }
                    Err(ClaimRefused::Clean) | Err(ClaimRefused::Claimed) => {}
                }
            }
            if !batch.is_empty() {
                return Some(batch);
            }
            if !blocking {
                return None;
            }
            let wait = q
                .delayed
                .front()
                .map(|e| e.not_before)
                .into_iter()
                .chain(young)
                .min()
                .map_or(Duration::from_millis(200), |t| {
                    t.saturating_duration_since(now)
                });
            q = self
                .wake
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
