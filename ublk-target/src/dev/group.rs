//! Group commit of a sync: callers that come while one is in flight share
//! the next one. A sync in flight was begun before they came, so it may not
//! cover what they wrote; the next one, begun after, covers all of them.

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Syncs begun, and ended, so far.
    begun: u64,
    ended: u64,
    /// How the last one ended: its error's errno (if it had one), kind
    /// and message.
    last: Option<(Option<i32>, io::ErrorKind, String)>,
    busy: bool,
}

/// Group-committed syncs of one device.
#[derive(Default)]
pub(crate) struct GroupSync {
    state: Mutex<State>,
    ended: Condvar,
    /// A planted bug, for the test that must catch it.
    #[cfg(test)]
    join_in_flight: bool,
}

impl GroupSync {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once a sync begun after this call has ended, running `sync`
    /// itself when no other caller does: one that finds a sync in flight
    /// waits for it to end, and the first waiter then runs the next one for
    /// all that waited. A failed sync fails every caller it covered.
    pub(crate) fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut s = self.lock();
        // The first sync begun from now on covers this caller.
        #[cfg(test)]
        let want = s.begun + u64::from(!(self.join_in_flight && s.busy));
        #[cfg(not(test))]
        let want = s.begun + 1;
        while s.busy && s.ended < want {
            s = self.ended.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.ended >= want {
            return match &s.last {
                None => Ok(()),
                // The errno stays (an ENOSPC from the server is not an EIO).
                Some((Some(errno), _, _)) => Err(io::Error::from_raw_os_error(*errno)),
                Some((None, kind, why)) => Err(io::Error::new(*kind, why.clone())),
            };
        }
        s.busy = true;
        s.begun += 1;
        let this = s.begun;
        drop(s);
        let r = sync();
        let mut s = self.lock();
        s.busy = false;
        s.ended = this;
        s.last = r
            .as_ref()
            .err()
            .map(|e| (e.raw_os_error(), e.kind(), e.to_string()));
        drop(s);
        self.ended.notify_all();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Many threads write (a counter) and sync; a sync makes durable what
    /// was written when it began. Returns (callers, syncs run, callers
    /// whose write was not durable when their sync returned).
    fn hammer(g: GroupSync) -> (u64, u64, u64) {
        let g = Arc::new(g);
        let written = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (g, written, durable, runs, lost) = (
                    g.clone(),
                    written.clone(),
                    durable.clone(),
                    runs.clone(),
                    lost.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        g.sync(|| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let covers = written.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(300));
                            durable.fetch_max(covers, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        if durable.load(Ordering::SeqCst) < mine {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        (
            320,
            runs.load(Ordering::SeqCst),
            lost.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn every_caller_is_covered_and_callers_share_syncs() {
        let (callers, runs, lost) = hammer(GroupSync::default());
        assert_eq!(lost, 0, "a caller returned before a sync covered it");
        assert!(
            runs < callers,
            "{runs} syncs for {callers} callers: none shared"
        );
    }

    #[test]
    fn a_caller_joining_the_sync_in_flight_is_caught() {
        let planted = GroupSync {
            join_in_flight: true,
            ..GroupSync::default()
        };
        let (_, _, lost) = hammer(planted);
        assert!(lost > 0, "the planted bug went unnoticed");
    }

    #[test]
    fn a_failed_sync_fails_the_callers_it_covered() {
        let g = Arc::new(GroupSync::default());
        let gate = Arc::new(std::sync::Barrier::new(2));
        let (g2, gate2) = (g.clone(), gate.clone());
        let first = std::thread::spawn(move || {
            g2.sync(|| {
                gate2.wait();
                std::thread::sleep(Duration::from_millis(50));
                Ok(())
            })
        });
        gate.wait();
        // Comes while the first is in flight: runs the next sync itself,
        // which fails.
        let e = g
            .sync(|| Err(io::Error::other("the server said EIO")))
            .unwrap_err();
        assert!(e.to_string().contains("EIO"));
        first.join().unwrap().unwrap();
        assert!(g.sync(|| Ok(())).is_ok(), "a later sync starts afresh");
    }
}
