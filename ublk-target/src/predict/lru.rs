//! `lru`: records only written regions and evicts the least recently used.
//! With 4 MiB regions this is the policy of DRBD's activity log.

use super::{Nanos, Predictor, Recency};
use crate::region::RegionView;

#[derive(Debug, Default)]
pub struct Lru {
    order: Recency,
}

impl Lru {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Predictor for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn admitted(&mut self, r: u64, _predicted: bool, view: &dyn RegionView, _now: Nanos) {
        self.order.touch(r, view.seq(r));
    }

    fn victims(&mut self, want: usize, view: &dyn RegionView, _now: Nanos, out: &mut Vec<u64>) {
        self.order.victims(want, view, out);
    }

    fn evicted(&mut self, r: u64, _written: bool) {
        self.order.remove(r);
    }
}
