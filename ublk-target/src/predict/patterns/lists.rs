//! The eviction order of `predictive`: CAR (CLOCK with adaptive replacement)
//! over written regions, plus a probation list for predictions.
//!
//! - **Probation**: predicted regions not yet seen written. A prediction is
//!   protected for a grace period, long enough for the write it foresees to
//!   come; after that it is evicted before any written region. When probation
//!   holds more than half the capacity, the predictions least likely to come
//!   true (by their tag's precision when made) go first, grace or not.
//! - **Recent** (CAR's T1): regions seen written once.
//! - **Frequent** (CAR's T2): regions seen written again while recorded.
//!
//! Hits never touch these lists (the hit path is one atomic operation). A
//! region's write sequence (`RegionView::seq`) is remembered when it is
//! listed; when an eviction scan finds it changed, the region was written in
//! between: a prediction moves to Recent, a Recent region to Frequent, a
//! Frequent one to the young end. This is CAR's reference bit.
//!
//! Evicted regions are remembered in bounded *ghost* lists, one for written
//! regions and one for predictions (so a flood of wasted predictions does not
//! push out the memory of written ones). A miss on a ghost of Recent
//! (Frequent) means Recent (Frequent) was too small, and CAR's target size for
//! Recent moves accordingly; the region returns straight into Frequent,
//! protected from a scan of one-off writes.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::accuracy::Tag;
use crate::region::Nanos;
use crate::region::RegionView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Probation,
    Recent,
    Frequent,
}

const CLASSES: usize = 3;

impl Class {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    class: Class,
    tick: u64,
    seq: u32,
    /// For predictions: what made it, and its precision then (0..=255).
    tag: Option<Tag>,
    value: u8,
    since: Nanos,
}

/// What a missed region's ghost says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ghost {
    /// Evicted from Recent, or from Frequent.
    Recent,
    Frequent,
    /// A prediction, evicted unused.
    Predicted(Tag),
}

impl Ghost {
    fn index(self) -> usize {
        match self {
            Ghost::Predicted(_) => 0,
            Ghost::Recent => 1,
            Ghost::Frequent => 2,
        }
    }
}

/// Recently evicted regions, oldest first, bounded.
#[derive(Debug, Default)]
struct Ghosts {
    fifo: VecDeque<(u64, u64)>,
    map: HashMap<u64, (Ghost, u64)>,
    stamp: u64,
    counts: [usize; CLASSES],
}

impl Ghosts {
    fn push(&mut self, r: u64, g: Ghost, cap: usize) {
        self.take(r);
        self.stamp += 1;
        self.fifo.push_back((r, self.stamp));
        self.map.insert(r, (g, self.stamp));
        self.counts[g.index()] += 1;
        // Drop the oldest beyond `cap`, and fifo entries of taken ghosts.
        while self.map.len() > cap || self.fifo.len() > 2 * cap {
            let Some((old, stamp)) = self.fifo.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|&(_, s)| s == stamp) {
                self.take(old);
            }
        }
    }

    /// Forgets `r`'s ghost; returns it with its age (evictions since).
    fn take(&mut self, r: u64) -> Option<(Ghost, u64)> {
        let (g, stamp) = self.map.remove(&r)?;
        self.counts[g.index()] -= 1;
        Some((g, self.stamp - stamp))
    }

    fn count(&self, g: Ghost) -> usize {
        self.counts[g.index()]
    }
}

/// The lists and CAR's adaptive target.
#[derive(Debug)]
pub(super) struct Lists {
    entries: HashMap<u64, Entry>,
    order: [BTreeMap<u64, u64>; CLASSES],
    /// Probation by value, then age.
    by_value: BTreeMap<(u8, u64), u64>,
    next_tick: u64,
    /// Ghosts of written regions, and of predictions evicted unused.
    ghosts: Ghosts,
    predicted_ghosts: Ghosts,
    /// Capacity in regions, learned from `victims` calls (the record knows it,
    /// the predictor is not told); 0 until the first eviction.
    capacity: usize,
    /// CAR's target size for Recent.
    target_recent: usize,
    /// How long a prediction is protected from eviction.
    grace: Nanos,
}

impl Lists {
    /// Sets how long predictions are protected from eviction.
    pub(super) fn set_grace(&mut self, grace: Nanos) {
        self.grace = grace;
    }

    pub(super) fn new(grace: Nanos) -> Self {
        Lists {
            entries: HashMap::default(),
            order: Default::default(),
            by_value: BTreeMap::new(),
            next_tick: 0,
            ghosts: Ghosts::default(),
            predicted_ghosts: Ghosts::default(),
            capacity: 0,
            target_recent: 0,
            grace,
        }
    }

    /// The capacity learned so far (0: no eviction yet).
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(super) fn len(&self, class: Class) -> usize {
        self.order[class.index()].len()
    }

    #[cfg(test)]
    fn class(&self, r: u64) -> Option<Class> {
        self.entries.get(&r).map(|e| e.class)
    }

    /// The write sequence `r` had when last looked at.
    pub(super) fn seq(&self, r: u64) -> Option<u32> {
        self.entries.get(&r).map(|e| e.seq)
    }

    fn place(&mut self, r: u64, class: Class, seq: u32, tag: Option<Tag>, value: u8, since: Nanos) {
        self.unlist(r);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order[class.index()].insert(tick, r);
        if class == Class::Probation {
            self.by_value.insert((value, tick), r);
        }
        self.entries.insert(
            r,
            Entry {
                class,
                tick,
                seq,
                tag,
                value,
                since,
            },
        );
    }

    fn unlist(&mut self, r: u64) -> Option<Entry> {
        let e = self.entries.remove(&r)?;
        self.order[e.class.index()].remove(&e.tick);
        if e.class == Class::Probation {
            self.by_value.remove(&(e.value, e.tick));
        }
        Some(e)
    }

    /// A write missed `r`: consumes its ghost (returned, with the number of
    /// evictions of its kind since), adapts CAR's target and lists `r`.
    pub(super) fn admit_missed(&mut self, r: u64, seq: u32, now: Nanos) -> Option<(Ghost, u64)> {
        let found = self
            .ghosts
            .take(r)
            .or_else(|| self.predicted_ghosts.take(r));
        let ghost = found.map(|(g, _)| g);
        let (recent, frequent) = (
            self.ghosts.count(Ghost::Recent).max(1),
            self.ghosts.count(Ghost::Frequent).max(1),
        );
        let class = match ghost {
            Some(Ghost::Recent) => {
                let step = (frequent / recent).max(1);
                self.target_recent = (self.target_recent + step).min(self.capacity);
                Class::Frequent
            }
            Some(Ghost::Frequent) => {
                let step = (recent / frequent).max(1);
                self.target_recent = self.target_recent.saturating_sub(step);
                Class::Frequent
            }
            Some(Ghost::Predicted(_)) | None => Class::Recent,
        };
        self.place(r, class, seq, None, 0, now);
        found
    }

    /// A prediction tagged `tag`, of precision `value` (0..=255), entered the
    /// record unwritten.
    pub(super) fn admit_predicted(&mut self, r: u64, seq: u32, tag: Tag, value: u8, now: Nanos) {
        self.place(r, Class::Probation, seq, Some(tag), value, now);
    }

    /// The tag and time of the prediction `r`, if it is still unconfirmed.
    pub(super) fn prediction(&self, r: u64) -> Option<(Tag, Nanos)> {
        let e = self.entries.get(&r)?;
        Some((e.tag?, e.since)).filter(|_| e.class == Class::Probation)
    }

    /// Renews the unconfirmed prediction `r` as if made at `now`; returns
    /// whether `r` is one.
    pub(super) fn refresh(&mut self, r: u64, now: Nanos) -> bool {
        match self.prediction(r) {
            Some((tag, _)) => {
                let e = self.entries[&r];
                self.place(r, Class::Probation, e.seq, Some(tag), e.value, now);
                true
            }
            None => false,
        }
    }

    /// If the prediction `r` has been written since it was made, moves it to
    /// Recent and returns its tag.
    pub(super) fn confirm(&mut self, r: u64, view: &dyn RegionView, now: Nanos) -> Option<Tag> {
        let (tag, _) = self.prediction(r)?;
        let seq = view.seq(r);
        if Some(seq) == self.seq(r) {
            return None;
        }
        self.place(r, Class::Recent, seq, None, 0, now);
        Some(tag)
    }

    /// Proposes up to `want` clean regions to evict (appended to `out`), best
    /// first; predictions
    /// found used on the way are moved to Recent and reported in `confirmed`.
    pub(super) fn victims(
        &mut self,
        want: usize,
        view: &dyn RegionView,
        now: Nanos,
        out: &mut Vec<u64>,
        confirmed: &mut Vec<(u64, Tag)>,
    ) {
        self.learn_capacity(want);
        let want = out.len() + want;
        let mut cursor = [0u64; CLASSES];
        let mut value_cursor = (0u8, 0u64);
        let mut proposed = [0usize; CLASSES];
        let mut probation_out = HashSet::default();
        let mut budget = 2 * self.entries.len() + want;
        let first = |s: &Self, c: Class, cursor: &[u64; CLASSES]| {
            s.order[c.index()]
                .range(cursor[c.index()]..)
                .next()
                .map(|(&t, &r)| (t, r))
        };
        while out.len() < want && budget > 0 {
            budget -= 1;
            let live = |s: &Self, c: Class| s.len(c) - proposed[c.index()];
            let oldest = first(self, Class::Probation, &cursor);
            let cheapest = self
                .by_value
                .range(value_cursor..)
                .next()
                .map(|(&(_, t), &r)| (t, r));
            let recent = first(self, Class::Recent, &cursor);
            let frequent = first(self, Class::Frequent, &cursor);
            let pick = if live(self, Class::Probation) > self.capacity / 2 && cheapest.is_some() {
                cheapest.map(|p| (Class::Probation, p))
            } else if oldest
                .is_some_and(|(_, r)| now.saturating_sub(self.entries[&r].since) >= self.grace)
            {
                oldest.map(|p| (Class::Probation, p))
            } else if recent.is_some() && live(self, Class::Recent) >= self.target_recent.max(1) {
                recent.map(|p| (Class::Recent, p))
            } else {
                frequent
                    .map(|p| (Class::Frequent, p))
                    .or(recent.map(|p| (Class::Recent, p)))
                    .or(oldest.map(|p| (Class::Probation, p)))
            };
            let Some((class, (tick, r))) = pick else {
                break;
            };
            let e = self.entries[&r];
            let seq = view.seq(r);
            if seq != e.seq {
                // Written since last seen: CAR's reference bit.
                if let (Class::Probation, Some(tag)) = (class, e.tag) {
                    confirmed.push((r, tag));
                    self.place(r, Class::Recent, seq, None, 0, now);
                } else {
                    self.place(r, Class::Frequent, seq, None, 0, now);
                }
                continue;
            }
            if class == Class::Probation && Some((tick, r)) == cheapest && cheapest != oldest {
                value_cursor = (e.value, tick + 1);
            } else {
                cursor[class.index()] = tick + 1;
            }
            // Dirty regions cannot go; neither can those of the update being
            // committed (not durable yet).
            if view.is_dirty(r) || !view.is_recorded(r) {
                continue;
            }
            if class == Class::Probation {
                // Reachable by both orders: propose once.
                if !probation_out.insert(r) {
                    continue;
                }
            }
            out.push(r);
            proposed[class.index()] += 1;
        }
    }

    fn learn_capacity(&mut self, want: usize) {
        let cap = self.entries.len().saturating_sub(want);
        if self.capacity == 0 {
            self.target_recent = cap / 2;
        }
        self.capacity = cap;
        self.target_recent = self.target_recent.min(cap);
    }

    /// `r` left the record, `written` or not while recorded. Returns the tag
    /// when it was an unconfirmed prediction.
    pub(super) fn evicted(&mut self, r: u64, written: bool) -> Option<Tag> {
        let e = self.unlist(r)?;
        let cap = self.capacity.max(1);
        match (e.class, e.tag) {
            (Class::Probation, Some(tag)) if !written => {
                self.predicted_ghosts.push(r, Ghost::Predicted(tag), cap)
            }
            (Class::Frequent, _) => self.ghosts.push(r, Ghost::Frequent, cap),
            _ => self.ghosts.push(r, Ghost::Recent, cap),
        }
        e.tag.filter(|_| e.class == Class::Probation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::patterns::accuracy::Source;
    use crate::record::RegionStates;

    const S: Nanos = 1_000_000_000;

    fn write(states: &RegionStates, r: u64) {
        states.begin_write(r);
        states.end_write(r);
        let c = states.claim_copy(r).unwrap();
        states.finish_copy(r, c, true);
    }

    fn setup(n: u64) -> (RegionStates, Lists) {
        let states = RegionStates::new(n);
        for r in 0..n {
            states.set_recorded(r);
        }
        (states, Lists::new(10 * S))
    }

    fn victims(
        l: &mut Lists,
        states: &RegionStates,
        want: usize,
        now: Nanos,
    ) -> (Vec<u64>, Vec<(u64, Tag)>) {
        let (mut out, mut confirmed) = (Vec::new(), Vec::new());
        l.victims(want, states, now, &mut out, &mut confirmed);
        (out, confirmed)
    }

    #[test]
    fn stale_predictions_go_first_fresh_ones_are_protected() {
        let (states, mut l) = setup(8);
        let tag = Tag::new(Source::Stream, 1);
        for r in 0..4 {
            l.admit_missed(r, states.seq(r), 0);
        }
        l.admit_predicted(4, states.seq(4), tag, 128, 0);
        l.admit_predicted(5, states.seq(5), tag, 128, 5 * S);
        // At 12 s, prediction 4 is past its grace period, 5 is not.
        let (out, _) = victims(&mut l, &states, 2, 12 * S);
        assert_eq!(out, vec![4, 0]);
    }

    #[test]
    fn beyond_half_the_capacity_the_least_precise_predictions_go_first() {
        let (states, mut l) = setup(8);
        let tag = Tag::new(Source::Footprint, 1);
        l.admit_missed(0, states.seq(0), 0);
        for (r, value) in [(1, 200), (2, 10), (3, 90), (4, 50), (5, 30)] {
            l.admit_predicted(r, states.seq(r), tag, value, 0);
        }
        // Capacity 4: five predictions, all within their grace period.
        let (out, _) = victims(&mut l, &states, 2, S);
        assert_eq!(out, vec![2, 5]);
    }

    #[test]
    fn a_written_prediction_is_confirmed_and_kept() {
        let (states, mut l) = setup(8);
        let tag = Tag::new(Source::Trail, 2);
        l.admit_missed(0, states.seq(0), 0);
        l.admit_predicted(1, states.seq(1), tag, 128, 0);
        write(&states, 1);
        let (out, confirmed) = victims(&mut l, &states, 1, 20 * S);
        assert_eq!(confirmed, vec![(1, tag)]);
        assert_eq!(out, vec![0]);
        assert_eq!(l.class(1), Some(Class::Recent));
        assert_eq!(l.prediction(1), None);
    }

    #[test]
    fn rewritten_regions_are_protected_from_a_scan() {
        let (states, mut l) = setup(8);
        for r in 0..6 {
            l.admit_missed(r, states.seq(r), 0);
        }
        write(&states, 0);
        write(&states, 1);
        // Regions 0 and 1 were written again: they move to Frequent.
        let (out, _) = victims(&mut l, &states, 3, S);
        assert_eq!(out, vec![2, 3, 4]);
        assert_eq!(l.class(0), Some(Class::Frequent));
        for r in [2, 3, 4] {
            assert_eq!(l.evicted(r, true), None);
        }
        // A miss on an evicted Recent region returns it to Frequent.
        assert_eq!(
            l.admit_missed(3, states.seq(3), 2 * S).map(|g| g.0),
            Some(Ghost::Recent)
        );
        assert_eq!(l.class(3), Some(Class::Frequent));
    }

    #[test]
    fn a_prediction_evicted_unused_leaves_a_ghost_with_its_tag() {
        let (states, mut l) = setup(4);
        let tag = Tag::new(Source::Above, 3);
        l.admit_predicted(2, states.seq(2), tag, 128, 0);
        assert_eq!(l.evicted(2, false), Some(tag));
        assert_eq!(
            l.admit_missed(2, states.seq(2), S),
            Some((Ghost::Predicted(tag), 0))
        );
    }

    #[test]
    fn dirty_regions_are_never_proposed() {
        let (states, mut l) = setup(4);
        l.admit_missed(0, states.seq(0), 0);
        l.admit_missed(1, states.seq(1), 0);
        states.begin_write(0);
        states.end_write(0);
        let (out, _) = victims(&mut l, &states, 2, S);
        assert_eq!(out, vec![1]);
    }
}
