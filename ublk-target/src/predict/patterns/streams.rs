//! Sequential streams: a write stream moving up through the device misses at
//! the end of what was predicted for it, and is given a window ahead of it
//! that doubles while the stream goes on, and starts small again once it
//! stops (idle for [`STREAM_IDLE_NS`], or pushed out by newer streams).
//!
//! A stream is born when a region misses right after the region below it was
//! written. Each stream's length is remembered under its first region (*run
//! memory*): when that region misses again later, as when a job rewrites the
//! same file, the stream restarts with its whole learned length as window.

use std::ops::Range;

use super::table::BoundedMap;
use crate::region::Nanos;

/// Streams followed at once.
const MAX_STREAMS: usize = 32;
/// A stream not seen for this long has stopped.
pub(super) const STREAM_IDLE_NS: Nanos = 30_000_000_000;
/// Learned run lengths kept.
const RUNS_KEPT: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The first region of the stream.
    start: u64,
    /// The first region not yet predicted.
    next: u64,
    window: u64,
    last: Nanos,
}

/// The window of a new stream, in regions.
pub(super) const FIRST_WINDOW: u64 = 4;

#[derive(Debug)]
pub(super) struct Streams {
    streams: Vec<Stream>,
    runs: BoundedMap<u64>,
}

impl Streams {
    pub(super) fn new() -> Self {
        Streams {
            streams: Vec::new(),
            runs: BoundedMap::new(RUNS_KEPT),
        }
    }

    /// Region `m` missed at `now`; `below_written` says whether `m - 1` was
    /// written recently. Returns the window to predict when the miss continues
    /// or starts a stream; windows never exceed `max_window` regions nor reach
    /// past `regions`.
    pub(super) fn on_miss(
        &mut self,
        m: u64,
        below_written: bool,
        now: Nanos,
        max_window: u64,
        regions: u64,
    ) -> Option<Range<u64>> {
        self.streams
            .retain(|s| now.saturating_sub(s.last) < STREAM_IDLE_NS);
        let found = self
            .streams
            .iter()
            .position(|s| s.start <= m && m <= s.next);
        let stream = match found {
            Some(i) => {
                let s = &mut self.streams[i];
                if m + s.window / 2 >= s.next {
                    // Near or at the end of the window: the stream goes on.
                    s.window = (s.window * 2).min(max_window.max(1));
                }
                i
            }
            None => {
                let learned = self.runs.get(m).copied();
                let start = if below_written { m - 1 } else { m };
                let window = match (learned, below_written) {
                    (Some(len), _) => len.clamp(1, max_window.max(1)),
                    (None, true) => FIRST_WINDOW.min(max_window.max(1)),
                    (None, false) => return None,
                };
                if self.streams.len() >= MAX_STREAMS {
                    let oldest = (0..self.streams.len())
                        .min_by_key(|&i| self.streams[i].last)
                        .expect("non-empty");
                    self.streams.swap_remove(oldest);
                }
                self.streams.push(Stream {
                    start,
                    next: m + 1,
                    window,
                    last: now,
                });
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[stream];
        s.last = now;
        let end = (m + 1 + s.window).min(regions);
        s.next = s.next.max(end);
        let len = m + 1 - s.start;
        let run = self.runs.entry(s.start, || 0);
        *run = (*run).max(len);
        Some(m + 1..end)
    }

    /// The learned run length starting at `r`, if any.
    #[cfg(test)]
    fn run(&self, r: u64) -> Option<u64> {
        self.runs.get(r).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 32;

    fn ahead(s: &mut Streams, m: u64, below: bool, now: Nanos) -> Option<Range<u64>> {
        s.on_miss(m, below, now, MAX, 1 << 20)
    }

    #[test]
    fn the_window_grows_while_the_stream_goes_on() {
        let mut s = Streams::new();
        assert_eq!(
            ahead(&mut s, 10, false, 0),
            None,
            "a lone miss is no stream"
        );
        assert_eq!(ahead(&mut s, 11, true, 1), Some(12..16));
        // The stream writes 12..16 (hits), then misses at the window's end.
        assert_eq!(ahead(&mut s, 16, false, 2), Some(17..25));
        assert_eq!(ahead(&mut s, 25, false, 3), Some(26..42));
        assert_eq!(ahead(&mut s, 42, false, 4), Some(43..75));
        assert_eq!(ahead(&mut s, 75, false, 5), Some(76..108), "capped at max");
    }

    #[test]
    fn a_stopped_stream_starts_small_again() {
        let mut s = Streams::new();
        ahead(&mut s, 11, true, 0);
        ahead(&mut s, 16, false, 1);
        let later = 1 + STREAM_IDLE_NS;
        assert_eq!(ahead(&mut s, 25, false, later), None, "stream is gone");
        assert_eq!(ahead(&mut s, 40, true, later), Some(41..45));
    }

    #[test]
    fn a_run_is_remembered_and_replayed_whole() {
        let mut s = Streams::new();
        ahead(&mut s, 101, true, 0);
        ahead(&mut s, 105, false, 1);
        ahead(&mut s, 109, false, 2);
        assert_eq!(s.run(100), Some(10));
        // Much later the same run starts again at its first region.
        let later = 10 * STREAM_IDLE_NS;
        assert_eq!(ahead(&mut s, 100, false, later), Some(101..111));
    }
}
