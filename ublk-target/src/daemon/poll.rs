//! How a queue thread waits for its next completion: it spins on the ring
//! for a short while when completions have been arriving close together, and
//! sleeps otherwise.
//!
//! A sleeping queue thread costs each request two wake-ups: one when the
//! request arrives from the kernel, one when the primary's write completes.
//! Spinning through those short gaps takes both off the write's latency.
//! The policy below spins only while the recent gaps fit in the window
//! (`--poll`), so an idle or lightly loaded device costs no CPU, and only
//! while few requests are in flight on the queue ([`SPIN_MAX_IN_FLIGHT`]):
//! a deep queue's next completion comes soon anyway, one wake-up collects
//! several, and a spinning thread takes CPU the requests in flight need.

use std::time::{Duration, Instant};

use libublk::io::UblkQueue;
use libublk::UblkError;
use tandem::Engine;

/// How long a queue thread sleeps with nothing in flight before it checks
/// for idleness (libublk's idle handling), in seconds.
const IDLE_SECS: u64 = 20;

/// `IORING_ENTER_GETEVENTS`: the enter also runs deferred completions.
const ENTER_GETEVENTS: u32 = 1;

/// Decides whether to spin, from a moving average of recent waits.
#[derive(Debug, Clone)]
pub struct PollPolicy {
    window: Duration,
    /// Moving average of recent waits, in nanoseconds (each wait counted at
    /// most `GAP_CAP` windows, so one long idle spell is forgotten quickly).
    gap_ns: f64,
}

/// The most requests in flight on a queue for which its thread spins.
/// Measured under emulation (scripts/bench-vm, tandem against tandem-sleep):
/// spinning gained about 10% at QD1 and cost 6-16% at QD32.
pub const SPIN_MAX_IN_FLIGHT: usize = 2;

/// A long wait counts as this many windows in the average.
const GAP_CAP: f64 = 4.0;
/// Weight of the newest wait in the average.
const GAP_WEIGHT: f64 = 1.0 / 8.0;

impl PollPolicy {
    /// `window`: the longest spin; zero never spins. Starts as if idle.
    pub fn new(window: Duration) -> Self {
        PollPolicy {
            window,
            gap_ns: GAP_CAP * window.as_nanos() as f64,
        }
    }

    /// How long to spin before sleeping, with `in_flight` requests being
    /// served on the queue: the window while recent waits fit in it and the
    /// queue is shallow, else zero.
    pub fn spin_for(&self, in_flight: usize) -> Duration {
        if !self.window.is_zero()
            && in_flight <= SPIN_MAX_IN_FLIGHT
            && self.gap_ns <= self.window.as_nanos() as f64
        {
            self.window
        } else {
            Duration::ZERO
        }
    }

    /// Records how long the last wait for a completion took.
    pub fn observe(&mut self, waited: Duration) {
        let cap = GAP_CAP * self.window.as_nanos() as f64;
        let w = (waited.as_nanos() as f64).min(cap);
        self.gap_ns += GAP_WEIGHT * (w - self.gap_ns);
    }
}

/// Submits what the queue's tasks queued and waits for at least one
/// completion: first spinning (as `policy` allows with `in_flight` requests
/// being served; the spin is counted in the engine's `poll_seconds`), then
/// asleep. Returns whether the sleep timed out.
pub fn wait_events(
    q: &UblkQueue<'_>,
    policy: &mut PollPolicy,
    in_flight: usize,
    engine: &Engine,
) -> Result<bool, UblkError> {
    let start = Instant::now();
    if q.is_stopping() {
        // Collect the aborted commands without waiting, as libublk does, but
        // run deferred completions too: the aborts arrive that way.
        enter_nowait()?;
        return Err(UblkError::QueueIsDown);
    }
    let spin = policy.spin_for(in_flight);
    if !spin.is_zero() {
        loop {
            let ready = enter_nowait()?;
            let spent = start.elapsed();
            if ready || spent >= spin {
                engine.note_poll(spent);
                if ready {
                    policy.observe(spent);
                    return Ok(false);
                }
                break;
            }
            std::hint::spin_loop();
        }
    }
    let r = libublk::uring_poll_io_fn::<io_uring::squeue::Entry>(
        q,
        Some(io_uring::types::Timespec::new().sec(IDLE_SECS)),
        1,
    );
    policy.observe(start.elapsed());
    r
}

/// Submits what is queued and runs deferred completions without waiting;
/// returns whether any completion is ready.
fn enter_nowait() -> Result<bool, UblkError> {
    libublk::with_task_io_ring_mut(|r| {
        let queued = r.submission().len() as u32;
        // SAFETY: no argument is passed (a null pointer of size 0), and
        // `queued` entries are initialised in the submission queue, as
        // io_uring_enter requires.
        unsafe {
            r.submitter()
                .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
                .map_err(UblkError::IOError)?;
        }
        Ok(!r.completion().is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(300);

    #[test]
    fn zero_window_never_spins() {
        let mut p = PollPolicy::new(Duration::ZERO);
        for _ in 0..100 {
            p.observe(Duration::ZERO);
        }
        assert_eq!(p.spin_for(1), Duration::ZERO);
    }

    #[test]
    fn an_idle_start_sleeps_until_completions_come_close_together() {
        let mut p = PollPolicy::new(W);
        assert_eq!(p.spin_for(1), Duration::ZERO, "starts as idle");
        let mut n = 0;
        while p.spin_for(1).is_zero() {
            p.observe(Duration::from_micros(100));
            n += 1;
            assert!(n < 50, "dense completions never started the spin");
        }
        assert_eq!(p.spin_for(1), W);
        // From idle to spinning takes a burst, not a single close pair.
        assert!(n > 3, "spun after only {n} close completions");
    }

    #[test]
    fn light_io_never_spins() {
        let mut p = PollPolicy::new(W);
        for _ in 0..1000 {
            p.observe(Duration::from_millis(2));
            assert_eq!(p.spin_for(1), Duration::ZERO);
        }
    }

    #[test]
    fn spinning_stops_when_io_thins_and_resumes_after_idle() {
        let mut p = PollPolicy::new(W);
        for _ in 0..100 {
            p.observe(Duration::from_micros(150));
        }
        assert_eq!(p.spin_for(1), W);
        // Gaps longer than the window: a handful is enough to stop.
        let mut n = 0;
        while !p.spin_for(1).is_zero() {
            p.observe(Duration::from_millis(5));
            n += 1;
        }
        assert!(n <= 8, "kept spinning for {n} long gaps");
        // A long idle spell counts as a few windows only, so dense I/O gets
        // the spin back within a short burst.
        p.observe(Duration::from_secs(20));
        let mut n = 0;
        while p.spin_for(1).is_zero() {
            p.observe(Duration::from_micros(100));
            n += 1;
        }
        assert!(n < 20, "took {n} close completions after idle");
    }

    #[test]
    fn deep_queues_never_spin() {
        let mut p = PollPolicy::new(W);
        for _ in 0..100 {
            p.observe(Duration::from_micros(50));
        }
        for depth in 0..=SPIN_MAX_IN_FLIGHT {
            assert_eq!(p.spin_for(depth), W, "{depth} in flight");
        }
        for depth in [SPIN_MAX_IN_FLIGHT + 1, 32, 128] {
            assert_eq!(p.spin_for(depth), Duration::ZERO, "{depth} in flight");
        }
    }

    #[test]
    fn gaps_just_under_the_window_keep_it_spinning() {
        let mut p = PollPolicy::new(W);
        for _ in 0..1000 {
            p.observe(W - Duration::from_micros(10));
        }
        assert_eq!(p.spin_for(1), W);
    }
}
