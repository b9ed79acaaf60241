//! `extent-lru`: records whole aligned extents of several regions and
//! evicts the least recently used extent whole. With 4 MiB extents this is
//! DRBD's activity log over a finer record: a miss records its extent's
//! other regions with it (one update for the extent), and scattered writes
//! that land near each other within an extent cost one update, not several.

use std::collections::{BTreeMap, HashMap};

use super::{Nanos, Predictor};
use crate::region::RegionView;

/// DRBD's activity-log extent, in bytes.
pub const EXTENT_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy)]
struct Extent {
    tick: u64,
    /// Recorded regions of the extent.
    members: u32,
    /// The sum of its members' write sequences when last looked at: a
    /// change means one of them was written since.
    seqs: u64,
}

/// LRU over aligned extents of `per` regions.
#[derive(Debug)]
pub struct ExtentLru {
    /// Regions per extent (a power of two).
    per: u64,
    regions: u64,
    by_tick: BTreeMap<u64, u64>,
    extents: HashMap<u64, Extent>,
    next_tick: u64,
}

impl ExtentLru {
    /// Extents of `EXTENT_BYTES` over regions of `region_size` bytes (at
    /// least one region each).
    pub fn new(regions: u64, region_size: u64) -> Self {
        let per = (EXTENT_BYTES / region_size.max(1))
            .max(1)
            .next_power_of_two();
        ExtentLru {
            per,
            regions,
            by_tick: BTreeMap::new(),
            extents: HashMap::new(),
            next_tick: 0,
        }
    }

    fn members(&self, e: u64) -> std::ops::Range<u64> {
        let first = e * self.per;
        first..(first + self.per).min(self.regions)
    }

    fn seqs(&self, e: u64, view: &dyn RegionView) -> u64 {
        self.members(e)
            .filter(|&r| view.is_recorded(r))
            .map(|r| u64::from(view.seq(r)))
            .sum()
    }

    fn touch(&mut self, e: u64, seqs: u64) {
        let tick = self.next_tick;
        self.next_tick += 1;
        let x = self.extents.entry(e).or_insert(Extent {
            tick,
            members: 0,
            seqs,
        });
        self.by_tick.remove(&x.tick);
        x.tick = tick;
        x.seqs = seqs;
        self.by_tick.insert(tick, e);
    }
}

impl Predictor for ExtentLru {
    fn name(&self) -> &'static str {
        "extent-lru"
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, _now: Nanos, out: &mut Vec<u64>) {
        let mut last = None;
        for &m in missed {
            let e = m / self.per;
            if last == Some(e) {
                continue;
            }
            last = Some(e);
            out.extend(
                self.members(e)
                    .filter(|r| !view.is_recorded(*r) && missed.binary_search(r).is_err()),
            );
        }
    }

    fn admitted(&mut self, r: u64, _predicted: bool, view: &dyn RegionView, _now: Nanos) {
        let e = r / self.per;
        // The new member's sequence joins the sum: counted as seen.
        let seqs = self.extents.get(&e).map_or(0, |x| x.seqs) + u64::from(view.seq(r));
        self.touch(e, seqs);
        if let Some(x) = self.extents.get_mut(&e) {
            x.members += 1;
        }
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, _now: Nanos, out: &mut Vec<u64>) {
        let start = out.len();
        let mut cursor = 0u64;
        let mut budget = self.extents.len();
        while out.len() - start < want && budget > 0 {
            budget -= 1;
            let Some((&tick, &e)) = self.by_tick.range(cursor..).next() else {
                break;
            };
            let seqs = self.seqs(e, view);
            let dirty = self.members(e).any(|r| view.is_dirty(r));
            if seqs != self.extents[&e].seqs || dirty {
                // Used since last seen: a second chance.
                self.touch(e, seqs);
                continue;
            }
            out.extend(self.members(e).filter(|&r| view.is_recorded(r)));
            cursor = tick + 1;
        }
    }

    fn evicted(&mut self, r: u64, _written: bool) {
        let e = r / self.per;
        if let Some(x) = self.extents.get_mut(&e) {
            x.members = x.members.saturating_sub(1);
            if x.members == 0 {
                let tick = x.tick;
                self.extents.remove(&e);
                self.by_tick.remove(&tick);
            }
        }
    }
}
