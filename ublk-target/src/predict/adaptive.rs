//! `predictive`: the default policy. It follows, of several candidate
//! policies, the one that would have needed the fewest record updates
//! lately, measured online (set dueling, Qureshi et al., ISCA 2007).
//!
//! # Candidates
//!
//! All three are one [`Patterns`] instance (learned streams, trails and
//! footprints over CAR lists), differing in how its guesses are used
//! ([`Guessing`]), so a switch costs nothing:
//!
//! - `patterns`: guesses protected from eviction for a while
//!   ([`super::patterns::GRACE_NS`]); the best where writes repeat
//!   patterns and the record has room.
//! - `patterns-brief`: guesses that go before any written region from the
//!   start; the best where some guesses are written soon but a small record
//!   cannot afford to keep the others.
//! - `car`: no guesses (the CAR lists alone); the best where guesses only
//!   push out regions that would have hit.
//!
//! Plain LRU was a candidate too and was dropped: on every trace the
//! chooser did as well or better without it, since CAR adapts between
//! recency and frequency.
//!
//! # Shadows
//!
//! Each candidate also runs as a shadow: its own instance over its own
//! model of a record, for a sample of the device (aligned chunks of
//! [`CHUNK_REGIONS`] regions chosen by a hash, so that streams and extents
//! stay whole), at the capacity scaled to the sample. The model follows the
//! record's own accounting: an update is paid when the shadow admits a
//! region its durable record lacks, and evicted regions stay durable until
//! the shadow's destage, on the destager's schedule (`record::destage`).
//! The shadows see the writes to sampled regions: misses of the real record
//! as they are committed, and writes that hit it by the write sequences of
//! the sampled regions it holds, compared at each slow-path call (at most
//! every [`SCAN_EVERY_NS`] besides misses, less often while nothing is
//! found written), each such region on its own.
//! Nothing runs on the hit path, and the shadows cost memory only: at most
//! the sampled share of the record per candidate.
//!
//! # Following
//!
//! Each shadow's updates are averaged over about [`HALF_LIFE`] events (an
//! event: a step where some shadow missed). The record follows the best
//! average once it beats the followed one's by [`MARGIN`] and by at least
//! [`MIN_GAP`] updates, so noise does not flip the choice.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{Guessing, Nanos, Patterns, Predictor};
use crate::record::destage::{removals_due, DESTAGE_INTERVAL};
use crate::region::RegionView;

/// Regions per sampled chunk (aligned).
pub const CHUNK_REGIONS: u64 = 64;
/// A shadow models at least this many regions of capacity: the sample is
/// the largest power-of-two share that leaves it that many.
pub const MIN_SHADOW_REGIONS: u64 = 256;
/// The largest sample divisor.
const MAX_DIVISOR: u64 = 64;
/// The sampled record regions are compared at most this often between
/// misses...
pub const SCAN_EVERY_NS: Nanos = 10_000_000;
/// ...and, while they are found unchanged, half as often each time, down
/// to this.
const SCAN_AT_MOST_NS: Nanos = 1_000_000_000;
/// The averaging time constant, in events.
pub const HALF_LIFE: f64 = 64.0;
/// A candidate is followed once its average is this much below the
/// followed one's...
pub const MARGIN: f64 = 0.03;
/// ...and at least this many updates per `HALF_LIFE` events below.
pub const MIN_GAP: f64 = 8.0;
/// The destager's interval, which the shadows model.
const DESTAGE_NS: Nanos = DESTAGE_INTERVAL.as_nanos() as Nanos;

/// What the record follows now, for the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    /// The candidate followed now.
    pub following: &'static str,
    /// Times the choice changed.
    pub switches: u64,
}

/// The candidates, as the ways the one `Patterns` instance guesses.
const CANDIDATES: [Guessing; 3] = [Guessing::Protected, Guessing::Brief, Guessing::Off];

/// A candidate's shadow: its own instance over a model of the sampled
/// part of a record.
struct Shadow {
    p: Patterns,
    /// Regions its record holds; `Some(seq)` for a prediction not yet seen
    /// written (its sequence when admitted).
    held: HashMap<u64, Option<u32>>,
    /// Regions evicted since the shadow's last destage: still in its
    /// durable record, so admitting one again writes nothing.
    forgotten: HashSet<u64>,
    last_destage: Nanos,
    capacity: u64,
    /// Updates averaged over events.
    score: f64,
    out: Vec<u64>,
}

/// The real record's view with a shadow's membership.
struct ShadowView<'a> {
    real: &'a dyn RegionView,
    held: &'a HashMap<u64, Option<u32>>,
}

impl RegionView for ShadowView<'_> {
    fn regions(&self) -> u64 {
        self.real.regions()
    }
    fn seq(&self, r: u64) -> u32 {
        self.real.seq(r)
    }
    fn is_recorded(&self, r: u64) -> bool {
        self.held.contains_key(&r)
    }
    fn is_dirty(&self, r: u64) -> bool {
        self.held.contains_key(&r) && self.real.is_dirty(r)
    }
}

impl Shadow {
    fn new(regions: u64, region_size: u64, guessing: Guessing) -> Self {
        Shadow {
            p: Patterns::guessing(regions, region_size, guessing),
            held: HashMap::default(),
            forgotten: HashSet::default(),
            last_destage: 0,
            capacity: 0,
            score: 0.0,
            out: Vec::new(),
        }
    }

    fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
        self.p.set_capacity(capacity);
    }

    /// The sampled regions `written` (sorted) were written: returns whether
    /// this shadow missed (paid an update).
    fn step(
        &mut self,
        written: &[u64],
        sampled: impl Fn(u64) -> bool,
        view: &dyn RegionView,
        now: Nanos,
    ) -> bool {
        let mut misses: Vec<u64> = Vec::new();
        for &r in written {
            match self.held.get_mut(&r) {
                None => misses.push(r),
                // Written: no longer an unconfirmed prediction.
                Some(e) => *e = None,
            }
        }
        if misses.is_empty() {
            return false;
        }
        // The destager's schedule (`record::destage`): removals are written
        // once per interval, or at once past an eighth of the capacity.
        if now.saturating_sub(self.last_destage) >= DESTAGE_NS
            || self.forgotten.len() as u64 >= removals_due(self.capacity)
        {
            self.forgotten.clear();
            self.last_destage = now;
        }
        self.out.clear();
        {
            let v = ShadowView {
                real: view,
                held: &self.held,
            };
            self.p.predict(&misses, &v, now, &mut self.out);
        }
        let regions = view.regions();
        let mut paid = false;
        for &m in &misses {
            self.held.insert(m, None);
            paid |= !self.forgotten.remove(&m);
        }
        let mut admitted: Vec<(u64, bool)> = misses.iter().map(|&m| (m, false)).collect();
        for &g in &self.out {
            if g < regions && sampled(g) && !self.held.contains_key(&g) {
                self.held.insert(g, Some(view.seq(g)));
                paid |= !self.forgotten.remove(&g);
                admitted.push((g, true));
            }
        }
        let mut victims = std::mem::take(&mut self.out);
        victims.clear();
        {
            let v = ShadowView {
                real: view,
                held: &self.held,
            };
            for &(r, predicted) in &admitted {
                self.p.admitted(r, predicted, &v, now);
            }
            self.p.expired(&v, now, &mut victims);
            let held = self.held.len() as u64;
            if held > self.capacity {
                self.p
                    .victims((held - self.capacity) as usize, &v, now, &mut victims);
            }
        }
        for &r in &victims {
            if let Some(e) = self.held.remove(&r) {
                let written = e.is_none_or(|seq| seq != view.seq(r));
                self.p.evicted(r, written);
                self.forgotten.insert(r);
            }
        }
        self.out = victims;
        paid
    }
}

/// The `predictive` policy: follows the best of its candidates.
pub struct Adaptive {
    regions: u64,
    /// The real instance, told of everything the record does.
    real: Patterns,
    shadows: Vec<Shadow>,
    followed: usize,
    switches: u64,
    /// One chunk in `divisor` is sampled.
    divisor: u64,
    /// Sampled regions the record holds, and their sequence last compared.
    watched: HashMap<u64, u32>,
    last_scan: Option<Nanos>,
    /// The interval between scans now.
    scan_every: Nanos,
    /// Regions of the step being taken (kept between calls).
    written: Vec<u64>,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("following", &self.shadows[self.followed].p.name())
            .field("switches", &self.switches)
            .field("divisor", &self.divisor)
            .finish()
    }
}

impl Adaptive {
    pub fn new(regions: u64, region_size: u64) -> Self {
        let shadows = CANDIDATES
            .iter()
            .map(|&guessing| Shadow::new(regions, region_size, guessing))
            .collect();
        let mut a = Adaptive {
            regions,
            real: Patterns::new(regions, region_size),
            shadows,
            followed: 0,
            switches: 0,
            divisor: 1,
            watched: HashMap::default(),
            last_scan: None,
            scan_every: SCAN_EVERY_NS,
            written: Vec::new(),
        };
        a.set_capacity(u64::MAX);
        a
    }

    /// Follows candidate `i`.
    fn follow(&mut self, i: usize) {
        self.followed = i;
        self.real.set_guessing(CANDIDATES[i]);
    }

    fn sampled(divisor: u64, r: u64) -> bool {
        divisor <= 1 || {
            let chunk = r / CHUNK_REGIONS;
            // Fibonacci hashing: the top bits of the product are well mixed.
            (chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).is_multiple_of(divisor)
        }
    }

    /// The shadows see the writes since the last look: sampled recorded
    /// regions whose sequence moved (each on its own: between slow-path
    /// calls they were written at different times, and a shadow that missed
    /// two of them would have paid two updates), then `missed` (sorted), the
    /// regions of one commit.
    fn observe(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos) {
        let divisor = self.divisor;
        let due = self
            .last_scan
            .is_none_or(|t| now.saturating_sub(t) >= self.scan_every);
        if !missed.is_empty() || due {
            self.last_scan = Some(now);
            let mut moved = std::mem::take(&mut self.written);
            moved.clear();
            for (&r, seq) in self.watched.iter_mut() {
                let s = view.seq(r);
                if s != *seq {
                    *seq = s;
                    moved.push(r);
                }
            }
            moved.sort_unstable();
            self.scan_every = if moved.is_empty() && missed.is_empty() {
                (self.scan_every * 2).min(SCAN_AT_MOST_NS)
            } else {
                SCAN_EVERY_NS
            };
            for &r in &moved {
                self.duel_step(&[r], view, now);
            }
            self.written = moved;
        }
        let mut batch = std::mem::take(&mut self.written);
        batch.clear();
        batch.extend(
            missed
                .iter()
                .copied()
                .filter(|&m| Self::sampled(divisor, m)),
        );
        if !batch.is_empty() {
            self.duel_step(&batch, view, now);
        }
        self.written = batch;
    }

    /// One step of the duel: the shadows see `written` (sorted), each pays
    /// an update if it missed, and the record follows the best lately.
    fn duel_step(&mut self, written: &[u64], view: &dyn RegionView, now: Nanos) {
        let divisor = self.divisor;
        let missed_by: Vec<bool> = self
            .shadows
            .iter_mut()
            .map(|s| s.step(written, |r| Self::sampled(divisor, r), view, now))
            .collect();
        if !missed_by.contains(&true) {
            return;
        }
        let keep = 1.0 - 1.0 / HALF_LIFE;
        for (i, s) in self.shadows.iter_mut().enumerate() {
            s.score = s.score * keep + f64::from(u8::from(missed_by[i]));
        }
        let (best, best_score) = self
            .shadows
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.score))
            .fold((self.followed, f64::INFINITY), |b, x| {
                if x.1 < b.1 {
                    x
                } else {
                    b
                }
            });
        let current = self.shadows[self.followed].score;
        if best != self.followed
            && best_score < current * (1.0 - MARGIN)
            && current - best_score >= MIN_GAP
        {
            log::debug!(
                "record policy: following {} instead of {} ({best_score:.1} against {current:.1} \
                 updates lately)",
                self.shadows[best].p.name(),
                self.shadows[self.followed].p.name()
            );
            self.follow(best);
            self.switches += 1;
        }
    }
}

impl Predictor for Adaptive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn set_capacity(&mut self, regions: u64) {
        self.real.set_capacity(regions);
        let chunks = self.regions.div_ceil(CHUNK_REGIONS);
        let mut divisor = 1;
        while divisor < MAX_DIVISOR
            && regions / (divisor * 2) >= MIN_SHADOW_REGIONS
            && chunks / (divisor * 2) >= 16
        {
            divisor *= 2;
        }
        self.divisor = divisor;
        let shadow_capacity = (regions / divisor).max(1);
        for s in &mut self.shadows {
            s.set_capacity(shadow_capacity);
        }
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.observe(missed, view, now);
        self.real.predict(missed, view, now, out);
    }

    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, now: Nanos) {
        if Self::sampled(self.divisor, r) {
            self.watched.insert(r, view.seq(r));
        }
        self.real.admitted(r, predicted, view, now);
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.real.victims(want, view, now, out);
    }

    fn evicted(&mut self, r: u64, written: bool) {
        self.watched.remove(&r);
        self.real.evicted(r, written);
    }

    fn expired(&mut self, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.observe(&[], view, now);
        self.real.expired(view, now, out);
    }

    fn choice(&self) -> Option<Choice> {
        Some(Choice {
            following: self.shadows[self.followed].p.name(),
            switches: self.switches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RegionStates;

    fn car_shadow(capacity: u64) -> Shadow {
        let mut s = Shadow::new(1024, 1 << 20, Guessing::Off);
        s.set_capacity(capacity);
        s
    }

    const MS: Nanos = 1_000_000;

    #[test]
    fn a_region_evicted_since_the_shadows_last_destage_comes_back_free() {
        let states = RegionStates::new(1024);
        let all = |_| true;
        let mut s = car_shadow(16);
        for r in 0..16 {
            assert!(
                s.step(&[r], all, &states, r * MS),
                "a new region costs an update"
            );
        }
        // The 17th evicts one, which stays in the durable record until the
        // shadow destages.
        assert!(s.step(&[100], all, &states, 16 * MS));
        let gone: Vec<u64> = (0..16).filter(|r| !s.held.contains_key(r)).collect();
        assert_eq!(gone.len(), 1, "one region evicted: {gone:?}");
        assert!(
            !s.step(&gone, all, &states, 17 * MS),
            "written back before the destage: still durable, no update"
        );
        let gone: Vec<u64> = (0..16)
            .chain([100])
            .filter(|r| !s.held.contains_key(r))
            .collect();
        assert_eq!(gone.len(), 1, "one region evicted: {gone:?}");
        // A destage interval later the removal is durable: it costs again.
        assert!(s.step(&gone, all, &states, 17 * MS + DESTAGE_NS));
    }

    #[test]
    fn regions_found_written_between_calls_are_steps_of_their_own() {
        let states = RegionStates::new(1024);
        let mut a = Adaptive::new(1024, 1 << 20);
        a.set_capacity(64);
        assert_eq!(a.divisor, 1, "a record this small is sampled whole");
        // The record holds three regions that no shadow has seen.
        for r in [10, 20, 30] {
            states.set_recorded(r);
            a.admitted(r, false, &states, 0);
        }
        for r in [10, 20, 30] {
            assert!(states.begin_write(r));
            states.end_write(r);
        }
        let mut out = Vec::new();
        a.expired(&states, SCAN_EVERY_NS, &mut out);
        // Three writes at different times: three updates for a shadow that
        // missed them all, averaged as three events.
        let keep = 1.0 - 1.0 / HALF_LIFE;
        let three = 1.0 + keep + keep * keep;
        for s in &a.shadows {
            assert!(
                (s.score - three).abs() < 1e-9,
                "{}: score {} (one batch would give 1)",
                s.p.name(),
                s.score
            );
        }
    }
}
