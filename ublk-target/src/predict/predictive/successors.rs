//! Learned successors: "after a miss on A came a miss on B". The misses that
//! no stream explains form a sequence; for each of them the next few distinct
//! successors seen are kept (most recent first). When A misses again, its
//! successors are predicted, and theirs, a few levels deep: a job that once
//! touched A, B, C in turn is likely to do it again.

use super::table::BoundedMap;

/// Successors kept per region.
pub(super) const WIDTH: usize = 2;
/// Regions with learned successors kept.
const KEPT: usize = 1 << 18;

const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct Successors {
    table: BoundedMap<[u64; WIDTH]>,
    prev: Option<u64>,
}

impl Successors {
    pub(super) fn new() -> Self {
        Successors {
            table: BoundedMap::new(KEPT),
            prev: None,
        }
    }

    /// `m` missed, not explained by a stream: learn it as the successor of the
    /// previous such miss.
    pub(super) fn learn(&mut self, m: u64) {
        if let Some(p) = self.prev.replace(m) {
            if p == m {
                return;
            }
            let succ = self.table.entry(p, || [NONE; WIDTH]);
            if succ[0] == m {
                return;
            }
            let at = succ.iter().position(|&s| s == m).unwrap_or(WIDTH - 1);
            succ.copy_within(0..at, 1);
            succ[0] = m;
        }
    }

    /// Pushes the successors of `m` up to `depth` levels, `width` per region.
    pub(super) fn predict(&self, m: u64, depth: usize, width: usize, out: &mut Vec<u64>) {
        let mut level = vec![m];
        for _ in 0..depth {
            let mut next = Vec::new();
            for &r in &level {
                if let Some(succ) = self.table.get(r) {
                    for &s in succ.iter().take(width).filter(|&&s| s != NONE) {
                        if s != m && !out.contains(&s) {
                            out.push(s);
                            next.push(s);
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_and_replays_chains() {
        let mut s = Successors::new();
        for m in [5, 9, 2, 7] {
            s.learn(m);
        }
        let mut out = Vec::new();
        s.predict(5, 1, 1, &mut out);
        assert_eq!(out, vec![9]);
        out.clear();
        s.predict(5, 3, 1, &mut out);
        assert_eq!(out, vec![9, 2, 7]);
    }

    #[test]
    fn keeps_the_most_recent_distinct_successors() {
        let mut s = Successors::new();
        for m in [1, 2, 1, 3, 1, 4, 1, 3] {
            s.learn(m);
        }
        let mut out = Vec::new();
        s.predict(1, 1, WIDTH, &mut out);
        assert_eq!(out, vec![3, 4]);
    }
}
