//! What the record and the predictors share, below both: the view of a
//! region's state that predictors read, and the record's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Nanoseconds on the record's clock (monotonic time, or trace time when simulating).
pub type Nanos = u64;

/// A read-only view of region state, for predictors.
pub trait RegionView {
    /// Number of regions.
    fn regions(&self) -> u64;
    /// The write sequence of region `r`: changes whenever a write starts.
    fn seq(&self, r: u64) -> u32;
    /// Whether `r` is in the durable record.
    fn is_recorded(&self, r: u64) -> bool;
    /// Whether `r` holds writes the secondary may lack.
    fn is_dirty(&self, r: u64) -> bool;
}

/// The record's time source.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Real time since the given start.
    Monotonic(Instant),
    /// Time set by the caller (trace time in the simulator).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    pub fn now(&self) -> Nanos {
        match self {
            Clock::Monotonic(start) => start.elapsed().as_nanos() as Nanos,
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }
}
