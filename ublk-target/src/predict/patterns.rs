//! `patterns`: the learned-patterns policy, the first candidate of
//! `predictive` ([`super::adaptive`]). Beside each miss it records the
//! regions that learned patterns say will be written soon, as many as their
//! measured accuracy justifies, and it evicts unused predictions before the
//! written working set.
//!
//! # Sources
//!
//! On a miss at region `m`, candidates come from four sources:
//!
//! - [`streams`]: `m` continues (or starts) a sequential stream: the window
//!   ahead of it, doubling while the stream goes on; a stream seen before is
//!   replayed with its learned length at once.
//! - [`trails`]: the misses that followed `m` within two seconds last time
//!   (Markov on the miss stream, with a time window as depth).
//! - [`footprints`]: regions of `m`'s 64-region chunk written before, nearest
//!   first (spatial history; it also learns from writes that hit).
//! - neighbours: the regions up to [`MAX_NEIGHBOUR`] above and below `m`.
//!
//! # How much to predict
//!
//! Each candidate carries a tag: its source and a log2 bucket of its reach
//! (distance from the miss, position in a window, rank in a trail). Each tag's
//! precision (the decayed share of its predictions that were written before
//! they left the record) is learned from outcomes ([`accuracy`]): a
//! prediction is confirmed when an eviction scan or expiry finds its write
//! sequence moved, and wasted when it is evicted unwritten. A candidate is
//! predicted when its tag's precision reaches a threshold that follows how
//! often evictions are regretted (evicted written regions that miss again
//! while their ghost is remembered): under pressure only predictions likelier
//! to be written than what they may push out are made; when nothing is being
//! evicted (the record has room) the threshold is minimal. A stream's window
//! thus stops at the first position that is not used often enough, a
//! neighbourhood at the first distance; on random writes under pressure
//! little passes and the policy is CAR.
//!
//! # What to evict ([`lists`])
//!
//! Written regions are ordered by CAR (recency and frequency with an adaptive
//! split, ghost lists of evicted regions; a miss on a ghost returns to the
//! frequent side). Predictions wait on a probation list: protected for
//! [`GRACE_NS`], then evicted before any written region; beyond half the
//! capacity the least precise go first.
//!
//! # Resync cost
//!
//! Unconfirmed predictions are at most [`PREDICTION_SHARE`]/256 of the written
//! regions recorded (up to [`ROOMY_PREDICTION_SHARE`]/256 while the record
//! stays under a third of its capacity), and expire after
//! [`PREDICTION_TTL_NS`]; the oldest go first. A prediction made again while
//! still recorded is renewed.
//!
//! # Cost
//!
//! The policy runs only on the slow path. A miss costs O(candidates) with
//! candidates bounded (a window, 16 followers, 64 footprint bits, 64
//! neighbours); an eviction O(log n) per victim; expiry O(1) amortized. Learned
//! tables are bounded ([`table::BoundedMap`]): 32 Ki trails of 16 followers,
//! 64 Ki footprints, 64 Ki run lengths; the lists and ghosts are bounded by the
//! record and its capacity.

mod accuracy;
mod footprints;
mod lists;
mod streams;
mod table;
mod trails;

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::{Guessing, Nanos, Predictor};
use crate::region::RegionView;
use accuracy::{Accuracy, Source, Tag, Threshold};
use footprints::Footprints;
use lists::{Class, Ghost, Lists};
use streams::Streams;
use table::BoundedMap;
use trails::Trails;

/// How long a prediction is protected from eviction.
pub const GRACE_NS: Nanos = 1_000_000_000;
/// An unconfirmed prediction is dropped after this long, room or not.
pub const PREDICTION_TTL_NS: Nanos = 86_400_000_000_000;
/// Unconfirmed predictions are at most this many 256ths of the written
/// regions recorded: the resync they may add.
pub const PREDICTION_SHARE: usize = 384;
/// While the record is far from its capacity, unconfirmed predictions may be
/// up to this many 256ths of the written regions, as long as written and
/// predicted together stay under a third of the capacity: room the user has
/// granted to the resync anyway, and that no written region needs.
pub const ROOMY_PREDICTION_SHARE: usize = 2048;
/// A miss counts as recent (for stream detection) for this long.
const RECENT_NS: Nanos = 30_000_000_000;
/// Recent misses remembered for stream detection.
const RECENT_KEPT: usize = 1 << 12;
/// Largest stream window before the capacity is known, in regions; after,
/// a quarter of the capacity.
const MAX_WINDOW: u64 = 256;
/// Farthest neighbour considered on each side of a miss.
pub const MAX_NEIGHBOUR: u64 = 32;
/// One turned-down candidate is predicted anyway every this many misses (to
/// keep measuring distrusted tags).
pub const EXPLORE_EVERY: u64 = 16;

/// The `patterns` policy (and, without its guesses, `car`).
#[derive(Debug)]
pub struct Patterns {
    regions: u64,
    /// Clean regions the record may hold (0: not told).
    capacity: usize,
    lists: Lists,
    streams: Streams,
    trails: Trails,
    footprints: Footprints,
    accuracy: Accuracy,
    threshold: Threshold,
    /// The predictions of the update being committed, by tag.
    issued: HashMap<u64, Tag>,
    /// Recent misses and when.
    recent: BoundedMap<Nanos>,
    /// Predictions in the order they were made (or renewed), for expiry.
    /// Entries whose time no longer matches the prediction are stale.
    pending: VecDeque<(u64, Nanos)>,
    /// Misses seen, and at the last exploration.
    misses: u64,
    explored_at: u64,
    /// How it guesses; `Off`: not at all (the `car` candidate: its lists
    /// alone).
    guessing: Guessing,
    // Buffers kept between calls.
    candidates: Vec<(u64, Tag)>,
    found: Vec<u64>,
    confirmed: Vec<(u64, Tag)>,
}

impl Patterns {
    pub fn new(regions: u64, _region_size: u64) -> Self {
        Patterns {
            regions,
            capacity: 0,
            lists: Lists::new(GRACE_NS),
            streams: Streams::new(),
            trails: Trails::new(),
            footprints: Footprints::new(),
            accuracy: Accuracy::default(),
            threshold: Threshold::default(),
            issued: HashMap::default(),
            recent: BoundedMap::new(RECENT_KEPT),
            pending: VecDeque::new(),
            misses: 0,
            explored_at: 0,
            guessing: Guessing::Protected,
            candidates: Vec::new(),
            found: Vec::new(),
            confirmed: Vec::new(),
        }
    }

    /// The policy guessing as `guessing` says: `patterns-brief` with brief
    /// guesses, `car` with none (its lists alone).
    pub fn guessing(regions: u64, region_size: u64, guessing: Guessing) -> Self {
        let mut p = Patterns::new(regions, region_size);
        p.set_guessing(guessing);
        p
    }

    /// Whether the region below `m` was written recently: it missed lately,
    /// or it is recorded and dirty or written since last looked at.
    fn below_written(&self, m: u64, view: &dyn RegionView, now: Nanos) -> bool {
        let Some(b) = m.checked_sub(1) else {
            return false;
        };
        if self
            .recent
            .get(b)
            .is_some_and(|&t| now.saturating_sub(t) < RECENT_NS)
        {
            return true;
        }
        view.is_recorded(b)
            && (view.is_dirty(b) || self.lists.seq(b).is_some_and(|s| s != view.seq(b)))
    }

    fn max_window(&self) -> u64 {
        match self.lists.capacity() as u64 {
            0 => MAX_WINDOW,
            cap => (cap / 4).max(2),
        }
    }

    /// Fills `self.candidates` with every source's candidates for miss `m`,
    /// best sources first.
    fn gather(&mut self, m: u64, view: &dyn RegionView, now: Nanos) {
        let below = self.below_written(m, view, now);
        let max_window = self.max_window();
        let c = &mut self.candidates;
        c.clear();
        if let Some(window) = self
            .streams
            .on_miss(m, below, now, max_window, self.regions)
        {
            c.extend(
                window
                    .zip(1..)
                    .map(|(r, i)| (r, Tag::new(Source::Stream, i))),
            );
        }
        let found = &mut self.found;
        found.clear();
        self.trails.predict(m, trails::TRAIL_LEN, found);
        c.extend(
            found
                .iter()
                .zip(1..)
                .map(|(&r, i)| (r, Tag::new(Source::Trail, i))),
        );
        found.clear();
        self.footprints.predict(
            m,
            footprints::CHUNK as usize,
            |r| view.is_recorded(r),
            found,
        );
        c.extend(
            found
                .iter()
                .map(|&r| (r, Tag::new(Source::Footprint, r.abs_diff(m)))),
        );
        for d in 1..=MAX_NEIGHBOUR {
            c.push((m + d, Tag::new(Source::Above, d)));
            if let Some(r) = m.checked_sub(d) {
                c.push((r, Tag::new(Source::Below, d)));
            }
        }
    }

    fn outcome(&mut self, r: u64, tag: Tag, used: bool) {
        self.accuracy.record(tag, used);
        if used {
            self.footprints.written(r);
        }
    }

    /// Drops stale entries from `pending` when they dominate it, so it stays
    /// proportional to the predictions recorded.
    fn compact_pending(&mut self) {
        let live = self.lists.len(Class::Probation);
        if self.pending.len() > 4 * live + 64 {
            let lists = &self.lists;
            self.pending
                .retain(|&(r, t)| lists.prediction(r).is_some_and(|(_, since)| since == t));
        }
    }
}

impl Predictor for Patterns {
    fn name(&self) -> &'static str {
        match self.guessing {
            Guessing::Protected => "patterns",
            Guessing::Brief => "patterns-brief",
            Guessing::Off => "car",
        }
    }

    fn set_capacity(&mut self, regions: u64) {
        self.capacity = usize::try_from(regions).unwrap_or(usize::MAX);
    }

    fn set_guessing(&mut self, guessing: Guessing) {
        // Guesses made so far lose their protection when no more are
        // wanted: they go first.
        self.lists.set_grace(match guessing {
            Guessing::Protected => GRACE_NS,
            Guessing::Brief | Guessing::Off => 0,
        });
        self.guessing = guessing;
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        if self.guessing == Guessing::Off {
            return;
        }
        self.issued.clear();
        let threshold = self.threshold.value();
        // The turned-down candidate whose tag was explored longest ago.
        let mut explore: Option<(u64, Tag)> = None;
        for &m in missed {
            self.misses += 1;
            self.gather(m, view, now);
            self.trails.learn(m, now);
            self.recent.insert(m, now);
            for i in 0..self.candidates.len() {
                let (r, tag) = self.candidates[i];
                if r >= self.regions
                    || self.issued.contains_key(&r)
                    || missed.binary_search(&r).is_ok()
                {
                    continue;
                }
                if view.is_recorded(r) {
                    // Predicted again while unconfirmed: keep it longer.
                    if self.lists.refresh(r, now) {
                        self.pending.push_back((r, now));
                    }
                    continue;
                }
                if self.accuracy.accept(tag, threshold) {
                    self.issued.insert(r, tag);
                    out.push(r);
                } else if self.accuracy.explore_order(tag)
                    < explore.map_or(u64::MAX, |(_, t)| self.accuracy.explore_order(t))
                {
                    explore = Some((r, tag));
                }
            }
        }
        if let Some((r, tag)) = explore {
            if self.misses - self.explored_at >= EXPLORE_EVERY && !self.issued.contains_key(&r) {
                self.explored_at = self.misses;
                self.accuracy.explored(tag, self.misses);
                self.issued.insert(r, tag);
                out.push(r);
            }
        }
        self.compact_pending();
    }

    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, now: Nanos) {
        let seq = view.seq(r);
        if predicted {
            // Not issued by us in this update: cannot happen with the record,
            // but account it to the weakest tag rather than fail.
            let tag = self
                .issued
                .get(&r)
                .copied()
                .unwrap_or(Tag::new(Source::Above, MAX_NEIGHBOUR));
            let value = (self.accuracy.precision(tag) * 255.0) as u8;
            self.lists.admit_predicted(r, seq, tag, value, now);
            self.pending.push_back((r, now));
            return;
        }
        match self.lists.admit_missed(r, seq, now) {
            Some((Ghost::Recent | Ghost::Frequent, _)) => self.threshold.came_back(),
            // Right, but evicted before its write came.
            Some((Ghost::Predicted(tag), _)) => self.accuracy.record(tag, true),
            _ => {}
        }
        self.footprints.written(r);
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        let mut confirmed = std::mem::take(&mut self.confirmed);
        self.lists.victims(want, view, now, out, &mut confirmed);
        for (r, tag) in confirmed.drain(..) {
            self.outcome(r, tag, true);
        }
        self.confirmed = confirmed;
    }

    fn evicted(&mut self, r: u64, written: bool) {
        if written {
            self.footprints.written(r);
            self.threshold.evicted_written();
        }
        if let Some(tag) = self.lists.evicted(r, written) {
            self.outcome(r, tag, written);
        }
    }

    /// Expires the oldest unconfirmed predictions beyond their share of the
    /// record, or older than the TTL; confirms those found written.
    fn expired(&mut self, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        let written = self.lists.len(Class::Recent) + self.lists.len(Class::Frequent);
        let allowed = prediction_allowance(written, self.capacity);
        let mut unconfirmed = self.lists.len(Class::Probation);
        while let Some(&(r, t)) = self.pending.front() {
            let live = self
                .lists
                .prediction(r)
                .is_some_and(|(_, since)| since == t);
            if !live {
                // Confirmed, evicted or renewed since.
                self.pending.pop_front();
                continue;
            }
            let over = unconfirmed > allowed;
            // Predictions of the update being committed are not durable yet
            // and cannot be evicted; they are the newest.
            if (!over && now.saturating_sub(t) < PREDICTION_TTL_NS) || !view.is_recorded(r) {
                break;
            }
            self.pending.pop_front();
            unconfirmed -= 1;
            match self.lists.confirm(r, view, now) {
                Some(tag) => self.outcome(r, tag, true),
                None => out.push(r),
            }
        }
    }
}

/// How many unconfirmed predictions may be recorded beside `written`
/// written regions, in a record of `capacity` regions (0: not known yet).
fn prediction_allowance(written: usize, capacity: usize) -> usize {
    let base = written * PREDICTION_SHARE / 256;
    let roomy =
        (written * ROOMY_PREDICTION_SHARE / 256).min((capacity / 3).saturating_sub(written));
    base.max(roomy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RegionStates;

    const S: Nanos = 1_000_000_000;

    /// Drives a predictor the way the record does, over `RegionStates`.
    struct Harness<P: Predictor = Patterns> {
        p: P,
        states: RegionStates,
        recorded: std::collections::BTreeSet<u64>,
        /// Predicted regions and their write sequence when admitted (as the
        /// record keeps them, to tell whether they were written).
        predicted: HashMap<u64, u32>,
        capacity: usize,
        updates: u64,
    }

    impl Harness {
        fn new(regions: u64, capacity: usize) -> Self {
            Harness::with(Patterns::new(regions, 1 << 20), regions, capacity)
        }
    }

    impl<P: Predictor> Harness<P> {
        fn with(p: P, regions: u64, capacity: usize) -> Self {
            Harness {
                p,
                states: RegionStates::new(regions),
                recorded: Default::default(),
                predicted: HashMap::default(),
                capacity,
                updates: 0,
            }
        }

        /// A write to `r` at `now`, mirrored at once; returns the regions
        /// predicted if it missed.
        fn write(&mut self, r: u64, now: Nanos) -> Vec<u64> {
            let hit = self.states.begin_write(r);
            let mut guesses = Vec::new();
            if !hit {
                self.updates += 1;
                self.p.predict(&[r], &self.states, now, &mut guesses);
                guesses.retain(|g| !self.recorded.contains(g) && *g != r);
                guesses.sort_unstable();
                guesses.dedup();
                self.recorded.insert(r);
                self.predicted.remove(&r);
                self.p.admitted(r, false, &self.states, now);
                for &g in &guesses {
                    self.recorded.insert(g);
                    self.predicted.insert(g, self.states.seq(g));
                    self.p.admitted(g, true, &self.states, now);
                }
                self.states.set_recorded(r);
                for &g in &guesses {
                    self.states.set_recorded(g);
                }
            }
            self.states.end_write(r);
            let c = self.states.claim_copy(r).unwrap();
            self.states.finish_copy(r, c, true);
            self.trim(now);
            guesses
        }

        fn trim(&mut self, now: Nanos) {
            let mut victims = Vec::new();
            self.p.expired(&self.states, now, &mut victims);
            let over = self.recorded.len().saturating_sub(self.capacity);
            if over > 0 {
                self.p.victims(over, &self.states, now, &mut victims);
            }
            for v in victims {
                if self.recorded.contains(&v) && self.states.try_evict(v) {
                    self.recorded.remove(&v);
                    // Written, unless an unchanged prediction.
                    let unwritten = self
                        .predicted
                        .remove(&v)
                        .is_some_and(|seq| seq == self.states.seq(v));
                    self.p.evicted(v, !unwritten);
                }
            }
        }
    }

    /// A xorshift sequence of regions below `n`.
    fn random_regions(n: u64) -> impl Iterator<Item = u64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        })
    }

    #[test]
    fn a_sequential_stream_gets_a_growing_window() {
        let mut h = Harness::new(10_000, 4096);
        let mut misses = 0;
        for r in 100..1100 {
            if !h.states.is_recorded(r) {
                misses += 1;
            }
            h.write(r, r * 1_000_000);
        }
        assert!(misses < 40, "{misses} misses for a 1000-region stream");
    }

    #[test]
    fn a_trail_is_replayed_on_the_next_visit() {
        let mut h = Harness::new(100_000, 64);
        let scattered = [5_000u64, 61_000, 17_000, 88_000, 23_000, 40_000];
        for (i, &r) in scattered.iter().enumerate() {
            h.write(r, i as u64 * 10_000_000);
        }
        // Push them out with unrelated writes far apart in time.
        for i in 0..200u64 {
            h.write(90_000 + i * 40, 100 * S + i * 5 * S);
        }
        assert!(scattered.iter().all(|&r| !h.states.is_recorded(r)));
        let guesses = h.write(scattered[0], 10_000 * S);
        for r in &scattered[1..] {
            assert!(guesses.contains(r), "{r} not replayed: {guesses:?}");
        }
    }

    #[test]
    fn unused_predictions_are_bounded_by_the_written_set() {
        let mut h = Harness::new(100_000, 50_000);
        for i in 0..200u64 {
            h.write(i * 300, i * S);
            let unconfirmed = h.p.lists.len(Class::Probation);
            let written = h.p.lists.len(Class::Recent) + h.p.lists.len(Class::Frequent);
            assert!(unconfirmed <= written * PREDICTION_SHARE / 256 + 2 * MAX_NEIGHBOUR as usize);
        }
    }

    #[test]
    fn random_writes_cost_no_more_updates_than_lru() {
        // Uniformly random writes over 16 times the capacity: nothing is
        // predictable; predictions must not make things worse than LRU.
        let (regions, capacity) = (1 << 14, 1 << 10);
        let mut p = Harness::new(regions, capacity);
        let mut lru = Harness::with(crate::predict::Lru::new(), regions, capacity);
        for (i, r) in random_regions(regions).take(40_000).enumerate() {
            let now = i as u64 * 100_000_000;
            p.write(r, now);
            lru.write(r, now);
        }
        assert!(
            p.updates * 100 <= lru.updates * 102,
            "predictive {} lru {}",
            p.updates,
            lru.updates
        );
    }

    #[test]
    fn predictions_may_take_more_room_while_the_record_is_far_from_full() {
        let share = |w: usize| w * PREDICTION_SHARE / 256;
        assert_eq!(prediction_allowance(100, 0), share(100), "capacity unknown");
        assert_eq!(
            prediction_allowance(100, 30_000),
            100 * ROOMY_PREDICTION_SHARE / 256,
            "far from full"
        );
        // Near a third of the capacity the roomy share shrinks to what is left
        // below it, and never below the base share.
        assert_eq!(prediction_allowance(900, 3_000), share(900));
        assert_eq!(prediction_allowance(200, 3_000), 1_000 - 200);
        assert_eq!(prediction_allowance(2_000, 3_000), share(2_000));

        // Scattered misses, each with its neighbours predicted: with a large
        // capacity more of them stay recorded than the base share allows.
        let run = |capacity: usize| {
            let mut h = Harness::new(1 << 20, capacity);
            h.p.set_capacity(capacity as u64);
            for i in 0..100u64 {
                h.write(i * 1000, i * S);
            }
            h.p.lists.len(Class::Probation)
        };
        let (small, large) = (run(400), run(1 << 20));
        assert!(small <= share(100) + 2 * MAX_NEIGHBOUR as usize, "{small}");
        assert!(
            large > share(100) * 2,
            "{large} unconfirmed with room to spare"
        );
        assert!(large <= 100 * ROOMY_PREDICTION_SHARE / 256 + 2 * MAX_NEIGHBOUR as usize);
    }

    #[test]
    fn predictions_expire_after_the_ttl() {
        let mut h = Harness::new(10_000, 10_000);
        for r in [10, 500, 1000] {
            h.write(r, 0);
        }
        assert!(h.p.lists.len(Class::Probation) > 0);
        h.trim(PREDICTION_TTL_NS + S);
        assert_eq!(h.p.lists.len(Class::Probation), 0);
        assert_eq!(h.recorded.len(), 3, "written regions stay");
    }
}
