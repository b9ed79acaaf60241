//! A bounded lag (`--max-dirty`): what happens when the secondary or its
//! link cannot keep up and the dirty backlog reaches the bound.
//!
//! - `throttle`: a write planned while the backlog is over the bound waits
//!   (`Plan::Pending`, never blocking a queue thread) until the mirror has
//!   brought it back under, so the recovery point stays bounded; md's
//!   write-behind limit does this. A degraded or paused mirror cannot bring
//!   it down, so then nothing waits: host I/O is never held for a secondary
//!   that is not there.
//! - `pull-ahead`: writes go on and the record grows (DRBD's congestion
//!   policy); the status says the backlog is over its bound.
//!
//! Waiting writes are released by a thread of their own that looks at the
//! backlog every `POLL` while any wait: a write never waits for a wake-up
//! that was missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::record::committer::Outcome;
use crate::stats::Counter;

/// How often waiting writes look at the backlog again.
const POLL: Duration = Duration::from_millis(2);

/// What a backlog over `--max-dirty` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverMaxDirty {
    /// Host writes wait until the backlog is under the bound again.
    #[default]
    Throttle,
    /// Host writes go on; the record grows.
    PullAhead,
}

impl OverMaxDirty {
    pub const ALL: [OverMaxDirty; 2] = [OverMaxDirty::Throttle, OverMaxDirty::PullAhead];

    pub const fn name(self) -> &'static str {
        match self {
            OverMaxDirty::Throttle => "throttle",
            OverMaxDirty::PullAhead => "pull-ahead",
        }
    }
}

impl std::fmt::Display for OverMaxDirty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OverMaxDirty {
    type Err = crate::Error;
    fn from_str(text: &str) -> crate::Result<Self> {
        OverMaxDirty::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                crate::Error::Config(format!(
                    "on-max-dirty {text:?}: choose throttle or pull-ahead"
                ))
            })
    }
}

type Done = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Waiting {
    waiters: Vec<(Sender<Outcome>, Done, Instant)>,
    stop: bool,
}

/// The throttle of one engine.
pub(crate) struct Throttle {
    pub(crate) max_dirty: u64,
    pub(crate) policy: OverMaxDirty,
    waiting: Mutex<Waiting>,
    wake: Condvar,
    /// Writes that waited, and the nanoseconds they waited in all.
    pub(crate) throttled: Counter,
    pub(crate) throttled_ns: Counter,
    over: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Throttle {
    pub(crate) fn new(max_dirty: u64, policy: OverMaxDirty) -> Arc<Throttle> {
        Arc::new(Throttle {
            max_dirty,
            policy,
            waiting: Mutex::default(),
            wake: Condvar::new(),
            throttled: Counter::default(),
            throttled_ns: Counter::default(),
            over: AtomicBool::new(false),
        })
    }

    /// Whether the backlog was over the bound when last looked at.
    pub(crate) fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Whether a write must wait: the policy throttles and `hold` (the
    /// backlog is over the bound and the mirror can bring it down) says so.
    pub(crate) fn must_wait(&self, over: bool, mirror_working: bool) -> bool {
        self.over.store(over, Ordering::Relaxed);
        self.policy == OverMaxDirty::Throttle && over && mirror_working
    }

    /// Queues a waiting write; `done` is called (on the throttle's thread)
    /// once it may go, after which the receiver holds its outcome.
    pub(crate) fn submit(&self, done: Done) -> Receiver<Outcome> {
        let (tx, rx) = mpsc::channel();
        let mut w = lock(&self.waiting);
        if w.stop {
            drop(w);
            let _ = tx.send(Ok(()));
            done();
            return rx;
        }
        w.waiters.push((tx, done, Instant::now()));
        self.throttled.add(1);
        self.wake.notify_one();
        rx
    }

    /// The releasing thread: while writes wait, lets them all go as soon
    /// as `must_wait` says no more (the backlog fell, or the mirror cannot
    /// copy).
    pub(crate) fn run(&self, must_wait: impl Fn() -> bool) {
        let mut w = lock(&self.waiting);
        loop {
            if w.stop {
                break;
            }
            if w.waiters.is_empty() {
                w = self.wake.wait(w).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            drop(w);
            let hold = must_wait();
            w = lock(&self.waiting);
            if hold {
                w = self
                    .wake
                    .wait_timeout(w, POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let released = std::mem::take(&mut w.waiters);
            drop(w);
            release(released, &self.throttled_ns);
            w = lock(&self.waiting);
        }
        let released = std::mem::take(&mut w.waiters);
        drop(w);
        release(released, &self.throttled_ns);
    }

    /// Ends `run` and lets every waiting write go.
    pub(crate) fn stop(&self) {
        lock(&self.waiting).stop = true;
        self.wake.notify_all();
    }
}

impl super::Engine {
    /// Whether a write planned now waits for the backlog.
    pub(super) fn must_throttle(&self) -> bool {
        let Some((t, _)) = &self.throttle else {
            return false;
        };
        let over = self.record.states().dirty_count() * self.geometry.region_size() > t.max_dirty;
        t.must_wait(over, self.mirror.is_working())
    }

    /// Hands a write to the throttle's thread; `done` is called once it may go.
    pub(super) fn submit_throttle(&self, done: Done) -> Receiver<Outcome> {
        match &self.throttle {
            Some((t, _)) => t.submit(done),
            None => {
                let (tx, rx) = mpsc::channel();
                let _ = tx.send(Ok(()));
                done();
                rx
            }
        }
    }

    /// The bound's figures for the status: (max_dirty, policy, over it
    /// now, writes throttled, seconds they waited).
    pub(super) fn throttle_status(&self) -> Option<ThrottleStatus> {
        let (t, _) = self.throttle.as_ref()?;
        Some(ThrottleStatus {
            max_dirty_bytes: t.max_dirty,
            on_max_dirty: t.policy,
            over: t.over(),
            throttled_writes: t.throttled.get(),
            throttled_seconds: t.throttled_ns.get() as f64 / 1e9,
        })
    }
}

/// The bounded lag's state, in the status (`max_dirty`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThrottleStatus {
    pub max_dirty_bytes: u64,
    pub on_max_dirty: OverMaxDirty,
    /// The backlog was over the bound when last looked at.
    pub over: bool,
    /// Host writes that waited for the backlog, and how long in all.
    pub throttled_writes: u64,
    pub throttled_seconds: f64,
}

fn release(waiters: Vec<(Sender<Outcome>, Done, Instant)>, ns: &Counter) {
    for (tx, done, since) in waiters {
        ns.add(since.elapsed().as_nanos() as u64);
        let _ = tx.send(Ok(()));
        done();
    }
}
