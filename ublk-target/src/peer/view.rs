//! Dual-active: this node's view of the other node's record, as its holder
//! holds it. The engine reads it on every read and write (one atomic load
//! a region) to learn whether the other node may have written the region
//! without it being mirrored yet, and so must be asked first; the holder
//! sets it before it acknowledges each update of that record.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use bitvec::field::BitField;

use crate::record::Image;

/// Called when the view changes: `Some(region)` for one region, `None`
/// for all of them (the view loaded or forgotten). The engine drops what
/// its cache holds clean of them.
pub type OnChange = Box<dyn Fn(Option<u64>) + Send + Sync>;

/// The other node's record as held here, one bit a region.
pub struct HeldView {
    bits: Box<[AtomicU64]>,
    regions: u64,
    /// Loaded from the held record: until then (and after `forget`) every
    /// region may be the other node's.
    fresh: AtomicBool,
    on_change: OnceLock<OnChange>,
}

impl HeldView {
    pub fn new(regions: u64) -> HeldView {
        HeldView {
            bits: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            regions,
            fresh: AtomicBool::new(false),
            on_change: OnceLock::new(),
        }
    }

    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// Whether the other node's record may list region `r`.
    #[inline]
    pub fn lists(&self, r: u64) -> bool {
        !self.fresh.load(Ordering::Acquire)
            || self.bits[(r / 64) as usize].load(Ordering::Acquire) & (1 << (r % 64)) != 0
    }

    /// The regions of `range` that the other node's record may list.
    pub fn listed(&self, range: Range<u64>) -> Vec<u64> {
        range.filter(|&r| self.lists(r)).collect()
    }

    /// Whether the view is the held record (else every region counts).
    pub fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Acquire)
    }

    /// Sets what to call when the view changes (once).
    pub fn on_change(&self, f: OnChange) {
        let _ = self.on_change.set(f);
    }

    fn changed(&self, r: Option<u64>) {
        if let Some(f) = self.on_change.get() {
            f(r);
        }
    }

    fn set(&self, r: u64, on: bool) -> bool {
        let (w, bit) = (&self.bits[(r / 64) as usize], 1u64 << (r % 64));
        let old = if on {
            w.fetch_or(bit, Ordering::AcqRel)
        } else {
            w.fetch_and(!bit, Ordering::AcqRel)
        };
        (old & bit != 0) != on
    }

    /// The held record, whole: the view is fresh from now on.
    pub(crate) fn load(&self, image: &Image) {
        for r in 0..self.regions.min(image.len() as u64) {
            self.set(r, image[r as usize]);
        }
        self.fresh.store(true, Ordering::Release);
        self.changed(None);
    }

    /// The held record changed in `regions` (to what `image` says now),
    /// compared 64 regions at a time.
    pub(crate) fn update(&self, image: &Image, regions: Range<u64>) {
        let end = regions.end.min(self.regions).min(image.len() as u64);
        let mut first = regions.start - regions.start % 64;
        while first < end {
            let last = (first + 64).min(end);
            let want: u64 = image[first as usize..last as usize].load_le();
            let w = &self.bits[(first / 64) as usize];
            let flipped = w.swap(want, Ordering::AcqRel) ^ want;
            let mut f = flipped;
            while f != 0 {
                let bit = f.trailing_zeros();
                self.changed(Some(first + u64::from(bit)));
                f &= f - 1;
            }
            first = last;
        }
    }

    /// The held record is no longer known (taken over, or handed on):
    /// every region counts until it is loaded again.
    pub fn forget(&self) {
        self.fresh.store(false, Ordering::Release);
        self.changed(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_region_counts_until_loaded_and_changes_are_told() {
        let v = HeldView::new(130);
        assert!(v.lists(0) && v.lists(129), "not loaded: every region");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        v.on_change(Box::new(move |r| s.lock().unwrap().push(r)));
        let mut image = Image::repeat(false, 130);
        image.set(64, true);
        image.set(129, true);
        v.load(&image);
        assert_eq!(v.listed(0..130), vec![64, 129]);
        image.set(64, false);
        image.set(3, true);
        v.update(&image, 0..130);
        assert_eq!(v.listed(0..130), vec![3, 129]);
        assert_eq!(*seen.lock().unwrap(), vec![None, Some(3), Some(64)]);
        v.forget();
        assert!(v.lists(5));
    }
}
