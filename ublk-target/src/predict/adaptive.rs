//! `predictive`: the default policy. It follows, of several candidate
//! policies, the one that would have needed the fewest record updates
//! lately, measured online (set dueling, Qureshi et al., ISCA 2007).
//!
//! # Candidates
//!
//! - `patterns` ([`Patterns`]): learned streams, trails and footprints, with
//!   CAR eviction; the best where writes repeat patterns.
//! - `lru` ([`Lru`]): written regions only, least recently used out; the
//!   best on a small record under scattered writes, where every prediction
//!   pushes out a region that would have hit.
//! - `car`: `patterns` without its guesses (its CAR lists alone); the best
//!   where guesses only push out regions that would have hit.
//!
//! # Shadows
//!
//! Each candidate also runs as a shadow: its own instance over its own
//! model of a record, for a sample of the device (aligned chunks of
//! [`CHUNK_REGIONS`] regions chosen by a hash, so that streams and extents
//! stay whole), at the capacity scaled to the sample. The shadows see the
//! writes to sampled regions: misses of the real record as they are
//! committed, and writes that hit it by the write sequences of the sampled
//! regions it holds, compared at each slow-path call (at most every
//! [`SCAN_EVERY_NS`] besides misses). A shadow that misses pays one update.
//! Nothing runs on the hit path, and the shadows cost memory only: at most
//! the sampled share of the record per candidate.
//!
//! # Following
//!
//! Each shadow's updates are averaged over about [`HALF_LIFE`] events (an
//! event: a step where some shadow missed). The record follows the best
//! average once it beats the followed one's by [`MARGIN`] and by at least
//! [`MIN_GAP`] updates, so noise does not flip the choice. Every candidate's
//! real instance hears of every region the record admits and evicts, and of
//! every miss (to keep learning), so that a switch finds it ready; only the
//! followed one's predictions and victims are used.

use std::collections::HashMap;

use super::{Lru, Nanos, Patterns, Predictor};
use crate::region::RegionView;

/// Regions per sampled chunk (aligned).
pub const CHUNK_REGIONS: u64 = 64;
/// A shadow models at least this many regions of capacity: the sample is
/// the largest power-of-two share that leaves it that many.
pub const MIN_SHADOW_REGIONS: u64 = 256;
/// The largest sample divisor.
const MAX_DIVISOR: u64 = 64;
/// The sampled record regions are compared at most this often between misses.
pub const SCAN_EVERY_NS: Nanos = 10_000_000;
/// The averaging time constant, in events.
pub const HALF_LIFE: f64 = 64.0;
/// A candidate is followed once its average is this much below the
/// followed one's...
pub const MARGIN: f64 = 0.03;
/// ...and at least this many updates per `HALF_LIFE` events below.
pub const MIN_GAP: f64 = 8.0;

/// What the record follows now, for the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    /// The candidate followed now.
    pub following: &'static str,
    /// Times the choice changed.
    pub switches: u64,
}

/// A candidate: how to build it, which real instance it follows with, and
/// whether that instance's guesses are used.
struct Candidate {
    build: fn(u64, u64) -> Box<dyn Predictor>,
    real: usize,
    guesses: bool,
}

/// The candidates: `car` is `patterns` with its guesses dropped, so both
/// follow with one real instance and a switch between them costs nothing.
/// Whole 4 MiB extents were tried as a candidate and dropped: their
/// guesses (a whole extent a miss) have no bound on the resync they add,
/// which `patterns` keeps to a share of the written regions.
fn candidates() -> Vec<Candidate> {
    vec![
        Candidate {
            build: |n, size| Box::new(Patterns::new(n, size)),
            real: 0,
            guesses: true,
        },
        Candidate {
            build: |n, size| Box::new(Patterns::without_predictions(n, size)),
            real: 0,
            guesses: false,
        },
        Candidate {
            build: |_, _| Box::new(Lru::new()),
            real: 1,
            guesses: true,
        },
    ]
}

/// A candidate's shadow: its own instance over a model of the sampled
/// part of a record.
struct Shadow {
    p: Box<dyn Predictor>,
    /// The real instance it follows with, and whether its guesses are used.
    real: usize,
    guesses: bool,
    /// Regions its record holds; `Some(seq)` for a prediction not yet seen
    /// written (its sequence when admitted).
    held: HashMap<u64, Option<u32>>,
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
        self.out.clear();
        {
            let v = ShadowView {
                real: view,
                held: &self.held,
            };
            self.p.predict(&misses, &v, now, &mut self.out);
        }
        let regions = view.regions();
        for &m in &misses {
            self.held.insert(m, None);
        }
        let mut admitted: Vec<(u64, bool)> = misses.iter().map(|&m| (m, false)).collect();
        for &g in &self.out {
            if g < regions && sampled(g) && !self.held.contains_key(&g) {
                self.held.insert(g, Some(view.seq(g)));
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
            }
        }
        self.out = victims;
        true
    }
}

/// The `predictive` policy: follows the best of its candidates.
pub struct Adaptive {
    regions: u64,
    /// Real instances, told of everything the record does.
    real: Vec<Box<dyn Predictor>>,
    shadows: Vec<Shadow>,
    followed: usize,
    switches: u64,
    /// One chunk in `divisor` is sampled.
    divisor: u64,
    /// Sampled regions the record holds, and their sequence last compared.
    watched: HashMap<u64, u32>,
    last_scan: Option<Nanos>,
    written: Vec<u64>,
    discard: Vec<u64>,
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
        let cands = candidates();
        let mut real: Vec<Box<dyn Predictor>> = Vec::new();
        for c in &cands {
            if c.real == real.len() {
                real.push((c.build)(regions, region_size));
            }
        }
        let shadows = cands
            .into_iter()
            .map(|c| Shadow {
                p: (c.build)(regions, region_size),
                real: c.real,
                guesses: c.guesses,
                held: HashMap::new(),
                capacity: 0,
                score: 0.0,
                out: Vec::new(),
            })
            .collect();
        let mut a = Adaptive {
            regions,
            real,
            shadows,
            followed: 0,
            switches: 0,
            divisor: 1,
            watched: HashMap::new(),
            last_scan: None,
            written: Vec::new(),
            discard: Vec::new(),
        };
        a.set_capacity(u64::MAX);
        a
    }

    /// Follows candidate `i`: its real instance guesses only if the
    /// candidate does; the others keep guessing (to keep learning).
    fn follow(&mut self, i: usize) {
        self.followed = i;
        let (real, guesses) = (self.shadows[i].real, self.shadows[i].guesses);
        for (k, p) in self.real.iter_mut().enumerate() {
            p.set_guessing(k != real || guesses);
        }
    }

    fn sampled(divisor: u64, r: u64) -> bool {
        divisor <= 1 || {
            let chunk = r / CHUNK_REGIONS;
            // Fibonacci hashing: the top bits of the product are well mixed.
            (chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).is_multiple_of(divisor)
        }
    }

    /// The shadows see the writes since the last look: `missed` (sorted)
    /// now, and sampled recorded regions whose sequence moved.
    fn observe(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos) {
        let divisor = self.divisor;
        self.written.clear();
        self.written.extend(
            missed
                .iter()
                .copied()
                .filter(|&m| Self::sampled(divisor, m)),
        );
        let due = self
            .last_scan
            .is_none_or(|t| now.saturating_sub(t) >= SCAN_EVERY_NS);
        if !missed.is_empty() || due {
            self.last_scan = Some(now);
            for (&r, seq) in self.watched.iter_mut() {
                let s = view.seq(r);
                if s != *seq {
                    *seq = s;
                    self.written.push(r);
                }
            }
        }
        if self.written.is_empty() {
            return;
        }
        self.written.sort_unstable();
        self.written.dedup();
        let written = std::mem::take(&mut self.written);
        let missed_by: Vec<bool> = self
            .shadows
            .iter_mut()
            .map(|s| s.step(&written, |r| Self::sampled(divisor, r), view, now))
            .collect();
        self.written = written;
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
        for p in &mut self.real {
            p.set_capacity(regions);
        }
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
            s.capacity = shadow_capacity;
            s.p.set_capacity(shadow_capacity);
        }
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.observe(missed, view, now);
        let (followed, guesses) = {
            let s = &self.shadows[self.followed];
            (s.real, s.guesses)
        };
        for (i, p) in self.real.iter_mut().enumerate() {
            if i == followed && guesses {
                p.predict(missed, view, now, out);
            } else {
                // Heard, so that it keeps learning; its guesses are not used.
                self.discard.clear();
                p.predict(missed, view, now, &mut self.discard);
            }
        }
    }

    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, now: Nanos) {
        if Self::sampled(self.divisor, r) {
            self.watched.insert(r, view.seq(r));
        }
        for p in &mut self.real {
            p.admitted(r, predicted, view, now);
        }
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.real[self.shadows[self.followed].real].victims(want, view, now, out);
    }

    fn evicted(&mut self, r: u64, written: bool) {
        self.watched.remove(&r);
        for p in &mut self.real {
            p.evicted(r, written);
        }
    }

    fn expired(&mut self, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.observe(&[], view, now);
        self.real[self.shadows[self.followed].real].expired(view, now, out);
    }

    fn choice(&self) -> Option<Choice> {
        Some(Choice {
            following: self.shadows[self.followed].p.name(),
            switches: self.switches,
        })
    }
}
