//! Learned trails: "after a miss on A, these regions missed soon after". For
//! every miss, the misses that follow it within [`FOLLOW_NS`] (up to
//! [`TRAIL_LEN`] of them) are remembered as its trail. When A misses again its
//! trail is predicted: a job that once wrote A and then B, C, D tends to do it
//! again, in whatever order. A Markov predictor on the miss stream whose depth
//! is a time window.
//!
//! A trail only changes when new followers arrive, so what an earlier
//! prediction saved from missing stays in the trail for the next time.

use std::collections::VecDeque;

use super::table::BoundedMap;
use crate::region::Nanos;

/// Followers kept per region.
pub(super) const TRAIL_LEN: usize = 16;
/// A miss follows another if it comes at most this much later.
pub(super) const FOLLOW_NS: Nanos = 2_000_000_000;
/// Regions with a trail kept (each holds `TRAIL_LEN` followers).
const KEPT: usize = 1 << 15;

#[derive(Debug, Clone, Copy)]
struct Trail {
    followers: [u64; TRAIL_LEN],
    len: u8,
    /// Where the next follower goes once full (the oldest is replaced).
    next: u8,
}

impl Trail {
    fn new() -> Self {
        Trail {
            followers: [0; TRAIL_LEN],
            len: 0,
            next: 0,
        }
    }

    fn add(&mut self, r: u64) {
        let len = self.len as usize;
        if self.followers[..len].contains(&r) {
            return;
        }
        if len < TRAIL_LEN {
            self.followers[len] = r;
            self.len += 1;
        } else {
            self.followers[self.next as usize] = r;
            self.next = (self.next + 1) % TRAIL_LEN as u8;
        }
    }
}

#[derive(Debug)]
pub(super) struct Trails {
    table: BoundedMap<Trail>,
    /// The last misses, oldest first.
    recent: VecDeque<(u64, Nanos)>,
}

impl Trails {
    pub(super) fn new() -> Self {
        Trails {
            table: BoundedMap::new(KEPT),
            recent: VecDeque::with_capacity(TRAIL_LEN + 1),
        }
    }

    /// `m` missed at `now`: it follows the recent misses.
    pub(super) fn learn(&mut self, m: u64, now: Nanos) {
        for &(p, t) in &self.recent {
            if p != m && now.saturating_sub(t) <= FOLLOW_NS {
                self.table.entry(p, Trail::new).add(m);
            }
        }
        if self.recent.len() == TRAIL_LEN {
            self.recent.pop_front();
        }
        self.recent.push_back((m, now));
    }

    /// Pushes up to `max` regions of `m`'s trail.
    pub(super) fn predict(&self, m: u64, max: usize, out: &mut Vec<u64>) {
        if let Some(t) = self.table.get(m) {
            out.extend(t.followers[..t.len as usize].iter().take(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn trail(t: &Trails, m: u64) -> Vec<u64> {
        let mut out = Vec::new();
        t.predict(m, TRAIL_LEN, &mut out);
        out
    }

    #[test]
    fn followers_within_the_window_join_the_trail() {
        let mut t = Trails::new();
        t.learn(1, 0);
        t.learn(7, 10 * MS);
        t.learn(3, 20 * MS);
        t.learn(9, 10 * MS + FOLLOW_NS);
        assert_eq!(trail(&t, 1), vec![7, 3], "9 came too late after 1");
        assert_eq!(trail(&t, 7), vec![3, 9]);
        assert_eq!(trail(&t, 3), vec![9]);
        assert!(trail(&t, 9).is_empty());
    }

    #[test]
    fn a_trail_keeps_the_latest_followers() {
        let mut t = Trails::new();
        t.learn(0, 0);
        for r in 1..=TRAIL_LEN as u64 {
            t.learn(r, r * MS);
        }
        // 0's trail is full (1..=16); a second visit brings 17 and 18.
        t.learn(0, 100 * MS);
        t.learn(17, 101 * MS);
        t.learn(18, 102 * MS);
        let mut got = trail(&t, 0);
        got.sort_unstable();
        let want: Vec<u64> = (3..=18).collect();
        assert_eq!(got, want);
    }
}
