//! `predictive`: the default policy. (Being rewritten; see the submodules.)

mod accuracy;
mod lists;
mod streams;
mod successors;
mod table;

use std::collections::{HashMap, VecDeque};

use super::{Nanos, Predictor};
use crate::record::RegionView;
use accuracy::{Accuracy, Source};
use lists::{Class, Ghost, Lists};
use streams::{StreamMiss, Streams, Windows};
use successors::Successors;
use table::BoundedMap;

/// An unconfirmed prediction is dropped after this long.
const PREDICTION_TTL_NS: Nanos = 600_000_000_000;
/// A miss counts as recent (for stream detection) for this long.
const RECENT_NS: Nanos = 30_000_000_000;
/// Largest stream window before capacity is known.
const MAX_WINDOW: u64 = 256;
/// One prediction in this many is made even by a distrusted source, to keep
/// measuring it.
const EXPLORE_EVERY: u64 = 16;

#[derive(Debug)]
pub struct Predictive {
    regions: u64,
    lists: Lists,
    streams: Streams,
    successors: Successors,
    accuracy: Accuracy,
    /// The guesses of the update being committed, by source.
    issued: HashMap<u64, Source>,
    /// Recent misses and when.
    recent: BoundedMap<Nanos>,
    /// Predictions in the order they were made, for expiry.
    pending: VecDeque<(u64, Nanos)>,
    confirmed: Vec<Source>,
    explore: u64,
    dbg: Dbg,
}

#[derive(Debug, Default)]
struct Dbg {
    misses: u64,
    stream_cont: u64,
    stream_new: u64,
    ghost: [u64; 4],
    issued: [u64; 3],
    used: [u64; 3],
    wasted: [u64; 3],
    expired: u64,
}

impl Drop for Predictive {
    fn drop(&mut self) {
        if std::env::var_os("PREDICT_DEBUG").is_some() {
            eprintln!("{:?} scores {:?} cap {} budget {}", self.dbg,
                Source::ALL.map(|s| (self.accuracy.score(s) * 100.0) as u32), self.lists.capacity(), self.lists.budget());
        }
    }
}

impl Predictive {
    pub fn new(regions: u64, _region_size: u64) -> Self {
        Predictive {
            regions,
            lists: Lists::new(),
            streams: Streams::new(),
            successors: Successors::new(),
            accuracy: Accuracy::default(),
            issued: HashMap::new(),
            recent: BoundedMap::new(1 << 12),
            pending: VecDeque::new(),
            confirmed: Vec::new(),
            explore: 0,
            dbg: Dbg::default(),
        }
    }

    /// Whether the region below `m` was written recently.
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
        if !view.is_recorded(b) {
            return false;
        }
        view.is_dirty(b) || self.lists.seq(b).is_some_and(|s| s != view.seq(b))
    }

    fn windows(&self) -> Windows {
        let score = self.accuracy.score(Source::Stream);
        let cap = self.lists.capacity() as u64;
        let max = if cap == 0 { MAX_WINDOW } else { (cap / 4).max(2) };
        let max = ((max as f64 * score * score) as u64).max(2);
        Windows {
            first: if score > 0.5 { 4 } else { 2 },
            max,
        }
    }

    fn issue(&mut self, r: u64, source: Source, out: &mut Vec<u64>) {
        if r < self.regions && !self.issued.contains_key(&r) {
            self.dbg.issued[source as usize] += 1;
            self.issued.insert(r, source);
            out.push(r);
        }
    }

    fn trusted(&mut self, source: Source, threshold: f64) -> bool {
        self.accuracy.score(source) >= threshold || {
            self.explore += 1;
            self.explore % EXPLORE_EVERY == 0
        }
    }
}

impl Predictor for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        self.issued.clear();
        for &m in missed {
            self.issued.insert(m, Source::Stream);
        }
        let windows = self.windows();
        for &m in missed {
            let below = self.below_written(m, view, now);
            match self.streams.on_miss(m, below, now, windows, self.regions) {
                StreamMiss::Ahead { window, new } => {
                    if new { self.dbg.stream_new += 1 } else { self.dbg.stream_cont += 1 }
                    for r in window {
                        self.issue(r, Source::Stream, out);
                    }
                }
                StreamMiss::None => {
                    self.successors.learn(m);
                    let mut predicted = false;
                    if self.trusted(Source::Successor, 0.2) {
                        let score = self.accuracy.score(Source::Successor);
                        let depth = 1 + (score * 6.0) as usize;
                        let mut succ = Vec::new();
                        self.successors
                            .predict(m, depth, successors::WIDTH, &mut succ);
                        for s in succ {
                            predicted = true;
                            self.issue(s, Source::Successor, out);
                            if let Some(len) = self.streams.run(s) {
                                for r in s + 1..s + 1 + len.min(windows.max) {
                                    self.issue(r, Source::Successor, out);
                                }
                            }
                        }
                    }
                    if !predicted && self.trusted(Source::Neighbour, 0.3) {
                        let radius = if self.accuracy.score(Source::Neighbour) > 0.5 { 2 } else { 1 };
                        for r in m.saturating_sub(radius)..=m + radius {
                            if r != m {
                                self.issue(r, Source::Neighbour, out);
                            }
                        }
                    }
                }
            }
            self.recent.insert(m, now);
        }
        for &m in missed {
            self.issued.remove(&m);
        }
    }

    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, now: Nanos) {
        let seq = view.seq(r);
        if predicted {
            let source = self.issued.get(&r).copied().unwrap_or(Source::Neighbour);
            self.lists.admit_predicted(r, seq, source, now);
            self.pending.push_back((r, now));
        } else {
            let ghost = self.lists.ghost(r);
            self.dbg.misses += 1;
            self.dbg.ghost[match ghost { None => 0, Some(Ghost::Recent) => 1, Some(Ghost::Frequent) => 2, Some(Ghost::Predicted(_)) => 3 }] += 1;
            if let Some(Ghost::Predicted(source)) = ghost {
                // Right, but evicted before it was written.
                self.accuracy.record(source, true);
            }
            self.lists.admit_missed(r, seq, ghost, now);
        }
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        let mut confirmed = std::mem::take(&mut self.confirmed);
        self.lists.victims(want, view, now, out, &mut confirmed);
        for s in confirmed.drain(..) {
            self.dbg.used[s as usize] += 1;
            self.accuracy.record(s, true);
        }
        self.confirmed = confirmed;
    }

    fn evicted(&mut self, r: u64, written: bool) {
        if let Some((source, used)) = self.lists.evicted(r, written) {
            if used { self.dbg.used[source as usize] += 1 } else { self.dbg.wasted[source as usize] += 1 }
            self.accuracy.record(source, used);
        }
    }

    fn expired(&mut self, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        while let Some(&(r, t)) = self.pending.front() {
            if now.saturating_sub(t) < PREDICTION_TTL_NS {
                break;
            }
            self.pending.pop_front();
            match self.lists.prediction(r) {
                Some((_, since)) if since == t => {
                    if let Some(source) = self.lists.confirm(r, view, now) {
                        self.accuracy.record(source, true);
                    } else {
                        self.dbg.expired += 1;
                        out.push(r);
                    }
                }
                _ => {}
            }
        }
        let _ = Class::Probation;
    }
}
