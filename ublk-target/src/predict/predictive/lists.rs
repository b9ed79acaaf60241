//! The eviction order of `predictive`: CAR (CLOCK with adaptive replacement)
//! over written regions, plus a probation list for predictions.
//!
//! - **Probation**: predicted regions not yet seen written. Evicted first, but
//!   only beyond a *prediction budget*, so a fresh prediction survives long
//!   enough to be used.
//! - **Recent** (CAR's T1): regions seen written once.
//! - **Frequent** (CAR's T2): regions seen written again while recorded.
//!
//! Hits never touch these lists (the hit path is one atomic operation). A
//! region's write sequence (`RegionView::seq`) is remembered when it is
//! listed; when an eviction scan finds it changed, the region was written in
//! between: a prediction moves to Recent, a Recent region to Frequent, a
//! Frequent one to the young end. This is CAR's reference bit.
//!
//! Evicted regions are remembered in bounded *ghost* lists. A miss on a ghost
//! of Recent (Frequent) means Recent (Frequent) was too small: CAR's target
//! size for Recent moves accordingly, and the region returns straight into
//! Frequent. A miss on the ghost of a prediction evicted unused means
//! predictions were evicted too early: the prediction budget grows; a miss on a
//! written region's ghost shrinks it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::accuracy::Source;
use crate::predict::Nanos;
use crate::record::RegionView;

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
    /// For predictions: who made it, and when.
    source: Option<Source>,
    since: Nanos,
}

/// What a missed region's ghost said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ghost {
    /// Evicted from Recent, or from Frequent.
    Recent,
    Frequent,
    /// A prediction of this source, evicted unused.
    Predicted(Source),
}

/// A prediction resolved: `source` was used (written) or not.
pub(super) type Outcome = (Source, bool);

/// Recently evicted regions, oldest first, bounded.
#[derive(Debug, Default)]
struct Ghosts {
    fifo: VecDeque<(u64, u64)>,
    map: HashMap<u64, (Ghost, u64)>,
    stamp: u64,
    counts: [usize; CLASSES],
}

impl Ghosts {
    fn kind_index(g: Ghost) -> usize {
        match g {
            Ghost::Predicted(_) => 0,
            Ghost::Recent => 1,
            Ghost::Frequent => 2,
        }
    }

    fn push(&mut self, r: u64, g: Ghost, cap: usize) {
        self.take(r);
        self.stamp += 1;
        self.fifo.push_back((r, self.stamp));
        self.map.insert(r, (g, self.stamp));
        self.counts[Self::kind_index(g)] += 1;
        while self.map.len() > cap {
            let Some((old, stamp)) = self.fifo.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|&(_, s)| s == stamp) {
                let (g, _) = self.map.remove(&old).expect("present");
                self.counts[Self::kind_index(g)] -= 1;
            }
        }
        // Stale fifo entries (taken ghosts) are dropped as they reach the front.
        while self.fifo.len() > 2 * cap.max(1) {
            let (old, stamp) = self.fifo.pop_front().expect("non-empty");
            if self.map.get(&old).is_some_and(|&(_, s)| s == stamp) {
                let (g, _) = self.map.remove(&old).expect("present");
                self.counts[Self::kind_index(g)] -= 1;
            }
        }
    }

    fn take(&mut self, r: u64) -> Option<Ghost> {
        let (g, _) = self.map.remove(&r)?;
        self.counts[Self::kind_index(g)] -= 1;
        Some(g)
    }

    fn count(&self, g: Ghost) -> usize {
        self.counts[Self::kind_index(g)]
    }
}

/// The lists, with CAR's adaptive target and the prediction budget.
#[derive(Debug)]
pub(super) struct Lists {
    entries: HashMap<u64, Entry>,
    order: [BTreeMap<u64, u64>; CLASSES],
    next_tick: u64,
    ghosts: Ghosts,
    /// Capacity in regions, learned from `victims` calls (the record knows it,
    /// the predictor is not told).
    capacity: usize,
    /// CAR's target size for Recent.
    target_recent: usize,
    /// Predictions kept before probation is evicted first.
    budget: usize,
}

/// Smallest prediction budget, as a share of capacity (1/64).
const MIN_BUDGET_SHIFT: u32 = 6;

impl Lists {
    pub(super) fn new() -> Self {
        Lists {
            entries: HashMap::new(),
            order: Default::default(),
            next_tick: 0,
            ghosts: Ghosts::default(),
            capacity: 0,
            target_recent: 0,
            budget: 0,
        }
    }

    pub(super) fn len(&self, class: Class) -> usize {
        self.order[class.index()].len()
    }

    pub(super) fn class(&self, r: u64) -> Option<Class> {
        self.entries.get(&r).map(|e| e.class)
    }

    /// The capacity learned so far (0: no eviction yet).
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The prediction budget in regions (meaningful once capacity is known).
    pub(super) fn budget(&self) -> usize {
        self.budget
    }

    /// The write sequence `r` had when last looked at.
    pub(super) fn seq(&self, r: u64) -> Option<u32> {
        self.entries.get(&r).map(|e| e.seq)
    }

    fn place(&mut self, r: u64, class: Class, seq: u32, source: Option<Source>, since: Nanos) {
        self.unlist(r);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order[class.index()].insert(tick, r);
        self.entries.insert(
            r,
            Entry {
                class,
                tick,
                seq,
                source,
                since,
            },
        );
    }

    fn unlist(&mut self, r: u64) -> Option<Entry> {
        let e = self.entries.remove(&r)?;
        self.order[e.class.index()].remove(&e.tick);
        Some(e)
    }

    /// Looks up (and forgets) the ghost of a region about to be admitted.
    pub(super) fn ghost(&mut self, r: u64) -> Option<Ghost> {
        self.ghosts.take(r)
    }

    /// A write missed `r`; `ghost` is what `ghost(r)` said. Adapts CAR's target
    /// and the prediction budget, and lists `r`.
    pub(super) fn admit_missed(&mut self, r: u64, seq: u32, ghost: Option<Ghost>, now: Nanos) {
        let cap = self.capacity;
        let class = match ghost {
            Some(Ghost::Recent) => {
                let step = (self.ghosts.count(Ghost::Frequent) / self.ghosts.count(Ghost::Recent).max(1)).max(1);
                self.target_recent = (self.target_recent + step).min(cap);
                self.shrink_budget();
                Class::Frequent
            }
            Some(Ghost::Frequent) => {
                let step = (self.ghosts.count(Ghost::Recent) / self.ghosts.count(Ghost::Frequent).max(1)).max(1);
                self.target_recent = self.target_recent.saturating_sub(step);
                self.shrink_budget();
                Class::Frequent
            }
            Some(Ghost::Predicted(_)) => {
                self.budget = (self.budget + 1).min(cap / 2);
                Class::Recent
            }
            None => Class::Recent,
        };
        self.place(r, class, seq, None, now);
    }

    fn shrink_budget(&mut self) {
        let floor = (self.capacity >> MIN_BUDGET_SHIFT).max(1);
        self.budget = self.budget.saturating_sub(1).max(floor);
    }

    /// `source` predicted `r`, which entered the record unwritten.
    pub(super) fn admit_predicted(&mut self, r: u64, seq: u32, source: Source, now: Nanos) {
        self.place(r, Class::Probation, seq, Some(source), now);
    }

    /// If the prediction `r` has been written since it was made, moves it to
    /// Recent and returns its source.
    pub(super) fn confirm(&mut self, r: u64, view: &dyn RegionView, now: Nanos) -> Option<Source> {
        let e = *self.entries.get(&r)?;
        if e.class != Class::Probation || view.seq(r) == e.seq {
            return None;
        }
        self.place(r, Class::Recent, view.seq(r), None, now);
        e.source
    }

    /// When the prediction `r` was made and by whom, if it is still unconfirmed.
    pub(super) fn prediction(&self, r: u64) -> Option<(Source, Nanos)> {
        let e = self.entries.get(&r)?;
        (e.class == Class::Probation).then(|| (e.source.expect("predictions have a source"), e.since))
    }

    /// Proposes up to `want` clean regions to evict, best first; predictions
    /// found used on the way are reported in `confirmed`.
    pub(super) fn victims(
        &mut self,
        want: usize,
        view: &dyn RegionView,
        now: Nanos,
        out: &mut Vec<u64>,
        confirmed: &mut Vec<Source>,
    ) {
        self.learn_capacity(want);
        let mut cursor = [0u64; CLASSES];
        let mut proposed = [0usize; CLASSES];
        let mut budget = 2 * self.entries.len() + want;
        while out.len() < want && budget > 0 {
            budget -= 1;
            let live = |c: Class, s: &Self| s.order[c.index()].len() - proposed[c.index()];
            let has = |c: Class, s: &Self| {
                s.order[c.index()].range(cursor[c.index()]..).next().is_some()
            };
            let class = if live(Class::Probation, self) > self.budget && has(Class::Probation, self) {
                Class::Probation
            } else if live(Class::Recent, self) >= self.target_recent.max(1) && has(Class::Recent, self) {
                Class::Recent
            } else if has(Class::Frequent, self) {
                Class::Frequent
            } else if has(Class::Recent, self) {
                Class::Recent
            } else if has(Class::Probation, self) {
                Class::Probation
            } else {
                break;
            };
            let i = class.index();
            let (&tick, &r) = self.order[i]
                .range(cursor[i]..)
                .next()
                .expect("checked above");
            let e = self.entries[&r];
            let seq = view.seq(r);
            if seq != e.seq {
                // Written since last seen: CAR's reference bit.
                match class {
                    Class::Probation => {
                        confirmed.push(e.source.expect("predictions have a source"));
                        self.place(r, Class::Recent, seq, None, now);
                    }
                    Class::Recent | Class::Frequent => self.place(r, Class::Frequent, seq, None, now),
                }
                continue;
            }
            cursor[i] = tick + 1;
            if view.is_dirty(r) {
                continue;
            }
            out.push(r);
            proposed[i] += 1;
        }
    }

    fn learn_capacity(&mut self, want: usize) {
        let cap = self.entries.len().saturating_sub(want);
        if self.capacity == 0 {
            self.target_recent = cap / 2;
            self.budget = cap / 8;
        }
        self.capacity = cap;
        self.target_recent = self.target_recent.min(cap);
        self.budget = self.budget.clamp((cap >> MIN_BUDGET_SHIFT).max(1), (cap / 2).max(1));
    }

    /// `r` left the record. Returns the outcome when it was a prediction.
    pub(super) fn evicted(&mut self, r: u64, written: bool) -> Option<Outcome> {
        let e = self.unlist(r)?;
        let cap = self.capacity.max(1);
        match e.class {
            Class::Probation => {
                let source = e.source.expect("predictions have a source");
                if !written {
                    self.ghosts.push(r, Ghost::Predicted(source), cap);
                } else {
                    self.ghosts.push(r, Ghost::Recent, cap);
                }
                Some((source, written))
            }
            Class::Recent => {
                self.ghosts.push(r, Ghost::Recent, cap);
                None
            }
            Class::Frequent => {
                self.ghosts.push(r, Ghost::Frequent, cap);
                None
            }
        }
    }
}
