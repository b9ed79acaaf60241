//! Predictors: which regions to add to the record beside a miss, and which clean
//! regions to evict when the record is over capacity.
//!
//! Predictors run only on the record's slow path (a miss being committed, an
//! eviction, a periodic expiry), never on a hit. They learn what hits did from
//! the per-region write sequence (`RegionView::seq`), which every write bumps.

mod adaptive;
mod lru;
mod md_bitmap;
mod patterns;
mod recency;

pub use adaptive::{Adaptive, Choice};
pub use lru::Lru;
pub use md_bitmap::MdBitmap;
pub use patterns::Patterns;
pub use recency::Recency;

use crate::error::{Error, Result};
pub use crate::region::Nanos;
use crate::region::RegionView;

/// How a chooser has a predictor guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guessing {
    /// Guesses, protected from eviction for a while.
    Protected,
    /// Guesses, evicted before any written region from the start.
    Brief,
    /// No guesses; those made earlier lose their protection.
    Off,
}

/// A record policy.
pub trait Predictor: Send {
    /// The policy's name, as chosen on the command line.
    fn name(&self) -> &'static str;

    /// Regions `missed` (sorted, deduplicated) are being added to the record.
    /// Push regions predicted to be written soon into `out`; they join the same
    /// durable update. By default nothing is predicted.
    fn predict(&mut self, missed: &[u64], view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        let _ = (missed, view, now, out);
    }

    /// The record holds at most `regions` clean regions (told once, before
    /// any other call). By default ignored.
    fn set_capacity(&mut self, regions: u64) {
        let _ = regions;
    }

    /// Region `r` entered the record, either missed by a write or `predicted`.
    fn admitted(&mut self, r: u64, predicted: bool, view: &dyn RegionView, now: Nanos);

    /// Proposes up to `want` clean regions to evict, best first. The record
    /// evicts those that are still idle and clean and reports each by `evicted`.
    fn victims(&mut self, want: usize, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>);

    /// Region `r` left the record; `written` says whether it was written while
    /// it was recorded.
    fn evicted(&mut self, r: u64, written: bool);

    /// Regions to drop regardless of capacity (idle timeouts). Default: none.
    fn expired(&mut self, _view: &dyn RegionView, _now: Nanos, _out: &mut Vec<u64>) {}

    /// Whether the record's capacity bounds this policy's clean regions.
    fn bounded(&self) -> bool {
        true
    }

    /// Whether its guesses will be used (a chooser follows this predictor
    /// with or without them). Told no, it stops guessing, and its earlier
    /// guesses lose any protection from eviction. By default ignored.
    fn set_guessing(&mut self, guessing: Guessing) {
        let _ = guessing;
    }

    /// Which candidate a policy that chooses among several follows now;
    /// None for a policy that does not choose.
    fn choice(&self) -> Option<Choice> {
        None
    }
}

/// The names `by_name` accepts.
pub const POLICIES: &[&str] = &[
    "predictive",
    "patterns",
    "patterns-brief",
    "car",
    "lru",
    "md-bitmap",
];

/// Builds the predictor called `name` for a record of `regions` regions.
pub fn by_name(name: &str, regions: u64, region_size: u64) -> Result<Box<dyn Predictor>> {
    match name {
        "predictive" => Ok(Box::new(Adaptive::new(regions, region_size))),
        "patterns" => Ok(Box::new(Patterns::new(regions, region_size))),
        "patterns-brief" => Ok(Box::new(Patterns::guessing(
            regions,
            region_size,
            Guessing::Brief,
        ))),
        "car" => Ok(Box::new(Patterns::guessing(
            regions,
            region_size,
            Guessing::Off,
        ))),
        "lru" => Ok(Box::new(Lru::new())),
        "md-bitmap" => Ok(Box::new(MdBitmap::new(md_bitmap::IDLE_CLEAR_NS))),
        other => Err(Error::Config(format!(
            "unknown policy {other:?}; choose one of {}",
            POLICIES.join(", ")
        ))),
    }
}
