//! How often each prediction source is right, and how far to trust it.
//!
//! A predicted region has one of two outcomes: it is written while recorded
//! (*used*), or it leaves the record unwritten (*wasted*). Each source keeps
//! exponentially decayed counts of both, so a change of workload shows within
//! a few hundred outcomes. The score is the Laplace estimate
//! `(used + 1) / (used + wasted + 2)`: a source starts at 1/2 and needs
//! evidence either way.

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Source {
    /// A sequential stream's window.
    Stream,
    /// Learned "after this miss comes that one" successors.
    Successor,
    /// Regions next to a miss.
    Neighbour,
}

impl Source {
    pub(super) const ALL: [Source; 3] = [Source::Stream, Source::Successor, Source::Neighbour];

    fn index(self) -> usize {
        self as usize
    }
}

/// Weight kept per outcome: about the last 1/(1-DECAY) = 200 outcomes count.
const DECAY: f64 = 0.995;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    used: f64,
    wasted: f64,
}

/// Decayed outcome counts per source.
#[derive(Debug, Clone, Default)]
pub(super) struct Accuracy {
    counts: [Counts; 3],
}

impl Accuracy {
    /// Records the outcome of one prediction of `source`.
    pub(super) fn record(&mut self, source: Source, used: bool) {
        let c = &mut self.counts[source.index()];
        c.used *= DECAY;
        c.wasted *= DECAY;
        if used {
            c.used += 1.0;
        } else {
            c.wasted += 1.0;
        }
    }

    /// The share of `source`'s predictions that were used, in (0, 1).
    pub(super) fn score(&self, source: Source) -> f64 {
        let c = self.counts[source.index()];
        (c.used + 1.0) / (c.used + c.wasted + 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_outcomes_and_forget_old_ones() {
        let mut a = Accuracy::default();
        assert_eq!(a.score(Source::Stream), 0.5);
        for _ in 0..100 {
            a.record(Source::Stream, true);
            a.record(Source::Neighbour, false);
        }
        assert!(a.score(Source::Stream) > 0.95);
        assert!(a.score(Source::Neighbour) < 0.05);
        assert_eq!(a.score(Source::Successor), 0.5, "sources are independent");
        // The workload changes: the stream source loses trust.
        for _ in 0..1000 {
            a.record(Source::Stream, false);
        }
        assert!(a.score(Source::Stream) < 0.05);
    }
}
