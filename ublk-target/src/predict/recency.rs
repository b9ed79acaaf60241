//! A recency order over recorded regions, refreshed lazily from write sequences.
//!
//! Hits do not touch this structure (the hit path is one atomic operation), so
//! recency is learned when victims are sought: a region whose write sequence
//! moved since it was last looked at, or that is dirty, was used since and gets
//! a second chance at the most-recent end. This is CLOCK over a tick order.

use std::collections::{BTreeMap, HashMap};

use crate::region::RegionView;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tick: u64,
    seq: u32,
}

/// Regions ordered from least to most recently seen in use.
#[derive(Debug, Default)]
pub struct Recency {
    by_tick: BTreeMap<u64, u64>,
    entries: HashMap<u64, Entry>,
    next_tick: u64,
}

impl Recency {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, r: u64) -> bool {
        self.entries.contains_key(&r)
    }

    /// Inserts or moves `r` to the most-recent end, remembering sequence `seq`.
    pub fn touch(&mut self, r: u64, seq: u32) {
        self.remove(r);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.by_tick.insert(tick, r);
        self.entries.insert(r, Entry { tick, seq });
    }

    /// Removes `r`; returns whether it was present.
    pub fn remove(&mut self, r: u64) -> bool {
        match self.entries.remove(&r) {
            Some(e) => {
                self.by_tick.remove(&e.tick);
                true
            }
            None => false,
        }
    }

    /// The sequence remembered for `r`.
    pub fn seq(&self, r: u64) -> Option<u32> {
        self.entries.get(&r).map(|e| e.seq)
    }

    /// Least recently used first: pushes up to `want` regions that were not
    /// written (and are not dirty) since last seen, refreshing those that were.
    pub fn victims(&mut self, want: usize, view: &dyn RegionView, out: &mut Vec<u64>) {
        let mut cursor = 0u64;
        let mut budget = self.entries.len();
        while out.len() < want && budget > 0 {
            budget -= 1;
            let Some((&tick, &r)) = self.by_tick.range(cursor..).next() else {
                break;
            };
            let seq = view.seq(r);
            if seq != self.entries[&r].seq || view.is_dirty(r) {
                self.touch(r, seq);
                continue;
            }
            out.push(r);
            cursor = tick + 1;
        }
    }

    /// Iterates regions from least to most recent.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_tick.values().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RegionStates;

    #[test]
    fn written_regions_get_a_second_chance() {
        let states = RegionStates::new(4);
        let mut rec = Recency::new();
        for r in 0..4 {
            states.set_recorded(r);
            rec.touch(r, states.seq(r));
        }
        // Region 0 is written and copied: used since it was last seen.
        states.begin_write(0);
        states.end_write(0);
        let c = states.claim_copy(0).unwrap();
        states.finish_copy(0, c, true);
        let mut out = Vec::new();
        rec.victims(2, &states, &mut out);
        assert_eq!(out, vec![1, 2]);
        out.clear();
        rec.victims(4, &states, &mut out);
        assert_eq!(out, vec![1, 2, 3, 0]);
    }

    #[test]
    fn dirty_regions_are_never_proposed() {
        let states = RegionStates::new(2);
        let mut rec = Recency::new();
        for r in 0..2 {
            states.set_recorded(r);
            rec.touch(r, states.seq(r));
        }
        states.begin_write(1);
        states.end_write(1);
        let mut out = Vec::new();
        rec.victims(2, &states, &mut out);
        assert_eq!(out, vec![0]);
    }
}
