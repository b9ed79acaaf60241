//! How often each kind of prediction comes true, and which to make.
//!
//! Every prediction carries a [`Tag`]: its source and a *bucket* saying how
//! far it reaches (how far from the miss, how deep in a stream's window, how
//! far down a trail). A predicted region has one of two outcomes: it is
//! written while recorded (*used*), or it leaves the record unwritten
//! (*wasted*). Each tag keeps exponentially decayed counts of both, so a
//! change of workload shows within a few hundred outcomes.
//!
//! A candidate is predicted when its tag's precision reaches the
//! [`Threshold`]; that is how each source's aggressiveness follows its
//! accuracy: a stream window stops at the first position that is not used
//! often enough, a neighbourhood at the first distance. So that a tag that
//! turns good again is noticed, the policy still predicts one turned-down
//! candidate now and then ([`Accuracy::explore_order`]): that of the tag
//! explored longest ago.

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Source {
    /// A sequential stream's window.
    Stream,
    /// The trail of a miss: what missed after it last time.
    Trail,
    /// Regions written before in the area of a miss.
    Footprint,
    /// Regions next to a miss, above it.
    Above,
    /// Regions next to a miss, below it.
    Below,
}

const SOURCES: usize = 5;
/// Buckets per source: reach 1, 2..3, 4..7, ... (log2), capped.
pub(super) const BUCKETS: usize = 12;

/// A prediction's source and reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Tag {
    pub source: Source,
    pub bucket: u8,
}

impl Tag {
    /// The tag of a prediction of `source` reaching `reach` (>= 1) from the miss.
    pub(super) fn new(source: Source, reach: u64) -> Tag {
        let log = 63 - reach.max(1).leading_zeros() as usize;
        Tag {
            source,
            bucket: log.min(BUCKETS - 1) as u8,
        }
    }

    fn index(self) -> usize {
        self.source as usize * BUCKETS + self.bucket as usize
    }
}

/// Weight kept per outcome: about the last 1/(1-DECAY) = 200 outcomes count.
const DECAY: f64 = 0.995;
/// What an unmeasured tag is assumed to score: the prior is this many
/// outcomes at `PRIOR_PRECISION`.
const PRIOR_WEIGHT: f64 = 2.0;
const PRIOR_PRECISION: f64 = 0.25;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    used: f64,
    wasted: f64,
    /// When a turned-down candidate of this tag was last predicted anyway.
    explored: u64,
}

/// Decayed outcome counts per tag.
#[derive(Debug, Clone)]
pub(super) struct Accuracy {
    counts: Vec<Counts>,
}

impl Default for Accuracy {
    fn default() -> Self {
        Accuracy {
            counts: vec![Counts::default(); SOURCES * BUCKETS],
        }
    }
}

impl Accuracy {
    /// Records the outcome of one prediction.
    pub(super) fn record(&mut self, tag: Tag, used: bool) {
        let c = &mut self.counts[tag.index()];
        c.used *= DECAY;
        c.wasted *= DECAY;
        if used {
            c.used += 1.0;
        } else {
            c.wasted += 1.0;
        }
    }

    /// The share of `tag`'s predictions that were used.
    pub(super) fn precision(&self, tag: Tag) -> f64 {
        let c = self.counts[tag.index()];
        (c.used + PRIOR_WEIGHT * PRIOR_PRECISION) / (c.used + c.wasted + PRIOR_WEIGHT)
    }

    /// Whether to predict a candidate tagged `tag` under `threshold`.
    pub(super) fn accept(&self, tag: Tag, threshold: f64) -> bool {
        self.precision(tag) >= threshold
    }

    /// Among turned-down tags, the one to explore first has the lowest key.
    pub(super) fn explore_order(&self, tag: Tag) -> u64 {
        self.counts[tag.index()].explored
    }

    /// A turned-down candidate of `tag` is predicted anyway, at `tick`.
    pub(super) fn explored(&mut self, tag: Tag, tick: u64) {
        self.counts[tag.index()].explored = tick;
    }
}

/// The precision a prediction needs, from how often the record's evictions
/// are regretted: the share of evicted written regions that miss again while
/// their ghost is remembered, times [`REGRET_WEIGHT`]. Under pressure a
/// prediction takes the room of the written region at the cold end, so it is
/// worth making when it is likelier to be written than that region is to
/// come back before it would have been evicted anyway, which is a fraction of
/// the regret rate (the fraction is tuned on the traces). With no evictions
/// (the record has room) the threshold is minimal.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Threshold {
    evicted: f64,
    returned: f64,
}

/// Bounds of the threshold.
const MIN_THRESHOLD: f64 = 1.0 / 64.0;
const MAX_THRESHOLD: f64 = 0.9;
/// Share of the regret rate a prediction must beat.
const REGRET_WEIGHT: f64 = 0.2;
/// Weight kept per eviction.
const THRESHOLD_DECAY: f64 = 0.999;

impl Threshold {
    pub(super) fn value(&self) -> f64 {
        if self.evicted < 1.0 {
            return MIN_THRESHOLD;
        }
        (REGRET_WEIGHT * self.returned / self.evicted).clamp(MIN_THRESHOLD, MAX_THRESHOLD)
    }

    /// The record evicted a region that had been written.
    pub(super) fn evicted_written(&mut self) {
        self.evicted = self.evicted * THRESHOLD_DECAY + 1.0;
        self.returned *= THRESHOLD_DECAY;
    }

    /// A miss on a written region the record evicted.
    pub(super) fn came_back(&mut self) {
        self.returned += 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bucket_by_reach() {
        assert_eq!(Tag::new(Source::Above, 1).bucket, 0);
        assert_eq!(Tag::new(Source::Above, 2).bucket, 1);
        assert_eq!(Tag::new(Source::Above, 3).bucket, 1);
        assert_eq!(Tag::new(Source::Above, 4).bucket, 2);
        assert_eq!(
            Tag::new(Source::Above, u64::MAX).bucket as usize,
            BUCKETS - 1
        );
    }

    #[test]
    fn precision_follows_outcomes_and_forgets_old_ones() {
        let mut a = Accuracy::default();
        let near = Tag::new(Source::Stream, 1);
        let far = Tag::new(Source::Stream, 64);
        assert_eq!(a.precision(near), PRIOR_PRECISION);
        for _ in 0..100 {
            a.record(near, true);
            a.record(far, false);
        }
        assert!(a.precision(near) > 0.95);
        assert!(a.precision(far) < 0.05);
        assert_eq!(a.precision(Tag::new(Source::Trail, 1)), PRIOR_PRECISION);
        // The workload changes: the near bucket loses trust.
        for _ in 0..1000 {
            a.record(near, false);
        }
        assert!(a.precision(near) < 0.05);
    }

    #[test]
    fn the_tag_explored_longest_ago_goes_first() {
        let mut a = Accuracy::default();
        let (near, far) = (Tag::new(Source::Below, 1), Tag::new(Source::Below, 8));
        for _ in 0..100 {
            a.record(near, false);
            a.record(far, false);
        }
        assert!(!a.accept(near, 0.2) && !a.accept(far, 0.2));
        a.explored(near, 5);
        assert!(a.explore_order(far) < a.explore_order(near));
        a.explored(far, 6);
        assert!(a.explore_order(near) < a.explore_order(far));
        assert!(
            a.accept(Tag::new(Source::Trail, 1), 0.2),
            "the prior is enough"
        );
    }

    #[test]
    fn threshold_follows_regretted_evictions() {
        let mut t = Threshold::default();
        assert_eq!(
            t.value(),
            MIN_THRESHOLD,
            "no pressure: predictions are cheap"
        );
        for i in 0..1000 {
            t.evicted_written();
            if i % 2 == 0 {
                t.came_back();
            }
        }
        assert!(
            (t.value() - 0.5 * REGRET_WEIGHT).abs() < 0.02,
            "{}",
            t.value()
        );
        for _ in 0..10_000 {
            t.evicted_written();
        }
        assert_eq!(t.value(), MIN_THRESHOLD);
    }
}
