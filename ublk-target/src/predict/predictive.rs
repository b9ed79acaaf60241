//! `predictive`: the default policy. Adds, beside each miss, the regions that
//! sequential streams and learned miss successors say will be written next, and
//! evicts unused predictions before anything that was really written.

use std::collections::HashMap;

use super::{Nanos, Predictor, Recency};
use crate::record::RegionView;

const MAX_STREAM_WINDOW: u64 = 64;

#[derive(Debug)]
pub struct Predictive {
    regions: u64,
    /// Regions that were written (or missed) while recorded.
    main: Recency,
    /// Predicted regions not yet seen written: evicted first.
    probation: Recency,
    /// Sequential streams: the region a stream is expected to miss next, and the
    /// window to prefetch when it does.
    streams: HashMap<u64, u64>,
    /// The miss that followed each miss last time.
    successor: HashMap<u64, u64>,
    last_miss: Option<u64>,
}

impl Predictive {
    pub fn new(regions: u64, _region_size: u64) -> Self {
        Predictive {
            regions,
            main: Recency::new(),
            probation: Recency::new(),
            streams: HashMap::new(),
            successor: HashMap::new(),
            last_miss: None,
        }
    }
}

impl Predictor for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, _now: Nanos, out: &mut Vec<u64>) {
        for &m in missed {
            let window = match self.streams.remove(&m) {
                Some(w) => Some(w),
                None if m > 0 && view.is_recorded(m - 1) && self.main.contains(m - 1) => Some(2),
                None => None,
            };
            if let Some(w) = window {
                let end = (m + 1 + w).min(self.regions);
                out.extend(m + 1..end);
                self.streams
                    .insert(end, (w * 2).min(MAX_STREAM_WINDOW));
            }
            if let Some(&s) = self.successor.get(&m) {
                out.push(s);
            }
            if let Some(prev) = self.last_miss {
                if prev != m {
                    self.successor.insert(prev, m);
                }
            }
            self.last_miss = Some(m);
        }
    }

    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, _now: Nanos) {
        if predicted {
            self.probation.touch(r, view.seq(r));
        } else {
            self.probation.remove(r);
            self.main.touch(r, view.seq(r));
        }
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, _now: Nanos, out: &mut Vec<u64>) {
        // Predictions that came true move to the main order.
        let promoted: Vec<u64> = self
            .probation
            .iter()
            .filter(|&r| self.probation.seq(r) != Some(view.seq(r)) || view.is_dirty(r))
            .collect();
        for r in promoted {
            self.probation.remove(r);
            self.main.touch(r, view.seq(r));
        }
        self.probation.victims(want, view, out);
        if out.len() < want {
            self.main.victims(want, view, out);
        }
    }

    fn evicted(&mut self, r: u64, _written: bool) {
        self.probation.remove(r);
        self.main.remove(r);
    }
}
