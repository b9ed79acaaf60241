//! Footprints: which regions of each area of the device have been written.
//! The device is cut into chunks of [`CHUNK`] regions; each keeps one bit per
//! region, set when the region is seen written (a miss, a prediction that came
//! true, an eviction of a written region). When a region misses, the written
//! regions of its chunk nearest to it are predicted: a job coming back to an
//! area tends to write where it, or another job, wrote before. This is the
//! order-free counterpart of trails, and sees writes that hit as well.

use super::table::BoundedMap;

/// Regions per chunk (one bit each in a `u64`).
pub(super) const CHUNK: u64 = 64;
/// Chunks with a footprint kept.
const KEPT: usize = 1 << 16;

#[derive(Debug)]
pub(super) struct Footprints {
    chunks: BoundedMap<u64>,
}

impl Footprints {
    pub(super) fn new() -> Self {
        Footprints {
            chunks: BoundedMap::new(KEPT),
        }
    }

    /// Region `r` was written.
    pub(super) fn written(&mut self, r: u64) {
        *self.chunks.entry(r / CHUNK, || 0) |= 1 << (r % CHUNK);
    }

    /// Pushes up to `max` written regions of `m`'s chunk, nearest first,
    /// skipping those `skip` rejects.
    pub(super) fn predict(
        &self,
        m: u64,
        max: usize,
        mut skip: impl FnMut(u64) -> bool,
        out: &mut Vec<u64>,
    ) {
        let Some(&bits) = self.chunks.get(m / CHUNK) else {
            return;
        };
        let base = m - m % CHUNK;
        let at = m % CHUNK;
        let mut taken = 0;
        for d in 1..CHUNK {
            if taken == max {
                break;
            }
            for i in [at.checked_add(d), at.checked_sub(d)].into_iter().flatten() {
                if i < CHUNK && bits & (1 << i) != 0 && taken < max && !skip(base + i) {
                    out.push(base + i);
                    taken += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicts_the_nearest_written_regions_of_the_chunk() {
        let mut f = Footprints::new();
        for r in [64, 70, 75, 80, 127, 128] {
            f.written(r);
        }
        let mut out = Vec::new();
        f.predict(74, 3, |_| false, &mut out);
        assert_eq!(out, vec![75, 70, 80], "nearest first, own chunk only");
        out.clear();
        f.predict(74, 10, |r| r == 75, &mut out);
        assert_eq!(out, vec![70, 80, 64, 127]);
        out.clear();
        f.predict(300, 10, |_| false, &mut out);
        assert!(out.is_empty(), "nothing known there");
    }
}
