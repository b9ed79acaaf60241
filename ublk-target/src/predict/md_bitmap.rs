//! `md-bitmap`: md raid1's write-intent bitmap as a reference policy. A chunk is
//! set on write and cleared once it has been idle for a while; there is no
//! capacity bound and no prediction.

use std::collections::HashMap;

use super::{Nanos, Predictor};
use crate::region::RegionView;

/// md clears a bit after the chunk has been idle for about 5 s.
pub const IDLE_CLEAR_NS: Nanos = 5_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Chunk {
    seq: u32,
    last_used: Nanos,
}

#[derive(Debug)]
pub struct MdBitmap {
    idle_ns: Nanos,
    chunks: HashMap<u64, Chunk>,
}

impl MdBitmap {
    pub fn new(idle_ns: Nanos) -> Self {
        MdBitmap {
            idle_ns,
            chunks: HashMap::new(),
        }
    }
}

impl Predictor for MdBitmap {
    fn name(&self) -> &'static str {
        "md-bitmap"
    }

    fn admitted(&mut self, r: u64, _predicted: bool, view: &dyn RegionView, now: Nanos) {
        self.chunks.insert(
            r,
            Chunk {
                seq: view.seq(r),
                last_used: now,
            },
        );
    }

    fn victims(&mut self, _want: usize, _view: &dyn RegionView, _now: Nanos, _out: &mut Vec<u64>) {}

    fn evicted(&mut self, r: u64, _written: bool) {
        self.chunks.remove(&r);
    }

    fn expired(&mut self, view: &dyn RegionView, now: Nanos, out: &mut Vec<u64>) {
        for (&r, c) in self.chunks.iter_mut() {
            let seq = view.seq(r);
            if seq != c.seq || view.is_dirty(r) {
                c.seq = seq;
                c.last_used = now;
            } else if now.saturating_sub(c.last_used) >= self.idle_ns {
                out.push(r);
            }
        }
    }

    fn bounded(&self) -> bool {
        false
    }
}
