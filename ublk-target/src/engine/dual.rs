//! Dual-active service: this engine serves the device while the other node
//! serves it too, over the same shared primary. Before a read or a write of
//! a region that the other node's record may list (its `HeldView`, kept by
//! this node's holder), the request waits for a status check: the checker
//! thread asks the other node (`CheckLink`), which answers once its writes
//! in flight to the region have completed and its cache is written back;
//! then this node drops what its own cache holds clean of the region, and
//! the request is planned again, without the check. Regions the other's
//! record does not list are served with no message. This engine answers the
//! other node's checks in turn (`engine::answer`).
//!
//! When the other node dies, this one takes its record over (`watch_other`):
//! once the other's lease has expired, this node takes that lease, puts
//! every region of the record it held into its own record (all of them if
//! the other served directly), dirty, so its mirror copies them; then
//! nothing of the other node needs asking, and its lease is released. The
//! other node, back, claims its lease again and starts a new record here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Engine;
use crate::error::{Error, Failure, Result};
use crate::lease::{Block, Lease, LeaseConfig, Seen, Watch};
use crate::peer::checks::CheckLink;
use crate::peer::{HeldView, Holder};
use crate::record::committer::{Done, Outcome};
use crate::record::Image;
use crate::stats::Counter;

/// What the engine keeps of dual-active service.
pub(crate) struct Dual {
    pub(super) view: Arc<HeldView>,
    pub(super) link: Arc<CheckLink>,
    tx: Mutex<Sender<Job>>,
    /// Requests that waited for a check, and the regions checked.
    pub(super) checked_requests: Counter,
    pub(super) checked_regions: Counter,
    /// What the watch of the other node's lease saw last, and the
    /// takeovers of its record.
    watch: Mutex<Option<OtherLease>>,
    takeovers: Mutex<Vec<DualTakeover>>,
}

/// The other node's lease as this node watches it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OtherLease {
    pub path: String,
    /// `blank`, `alive`, `released`, `expired`, or `error`.
    pub seen: String,
    pub owner: Option<u64>,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

/// A takeover of the other node's record, after its lease expired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DualTakeover {
    /// The node that died, and the generation it held.
    pub from_node: u64,
    pub from_generation: u64,
    /// The generation this node took the other's lease at.
    pub generation: u64,
    /// How long the lease was seen unchanged first.
    pub waited_ms: u64,
    /// Regions taken into this node's record (and copied by its mirror).
    pub regions: u64,
    /// The other node served directly: every region was taken.
    pub whole_device: bool,
}

struct Job {
    regions: Vec<u64>,
    reply: Sender<Outcome>,
    done: Done,
}

/// The figures of dual-active service, for the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DualStatus {
    /// HOST:PORT of the other node's holder.
    pub other: String,
    /// Whether this node's view of the other's record is loaded (until it
    /// is, every region is checked).
    pub view_loaded: bool,
    /// Regions the other node's record lists.
    pub other_regions: u64,
    /// Host requests that waited for a status check, and regions checked.
    pub checked_requests: u64,
    pub checked_regions: u64,
    /// Milliseconds since the other node last answered.
    pub last_answer_ms: Option<u64>,
    /// The other node's lease, when this node watches it (`--other-lease`).
    #[serde(default)]
    pub other_lease: Option<OtherLease>,
    /// Takeovers of the other node's record, oldest first.
    #[serde(default)]
    pub takeovers: Vec<DualTakeover>,
}

impl Engine {
    /// Serves the device dual-active with the other node at `link`: this
    /// node's `holder` holds the other's record (and keeps the view of it
    /// that every request reads), and answers the other's checks with this
    /// engine.
    pub fn go_dual(self: &Arc<Self>, holder: &Arc<Holder>, link: CheckLink) -> Result<()> {
        let g = self.geometry;
        let view = holder.view(self.identity, g.regions());
        let primary = self.primary.clone();
        view.on_change(Box::new(move |r| {
            let (offset, len) = match r {
                Some(r) => (r * g.region_size(), g.region_size()),
                None => (0, g.device_size()),
            };
            if let Err(e) = primary.drop_cache(offset, len) {
                log::warn!("drop the cache of {}: {e}", primary.describe());
            }
        }));
        holder.answer_for(self.identity, self.clone());
        if view.is_fresh() && holder.regions(self.identity).is_none() && link.reachable() {
            // A first start of the pair, but the other node runs already:
            // wait for its record rather than trust that it has none.
            view.forget();
        }
        let link = Arc::new(link);
        self.mirror.gate_with(Arc::new(Gate {
            view: view.clone(),
            link: link.clone(),
        }));
        let (tx, rx) = mpsc::channel::<Job>();
        let (l, p) = (link.clone(), self.primary.clone());
        std::thread::Builder::new()
            .name("tandem-checks".into())
            .spawn({
                let v = view.clone();
                move || run(&rx, &l, &v, &p, g)
            })
            .map_err(|e| Error::io("start the status check thread", e))?;
        let dual = Dual {
            view,
            link,
            tx: Mutex::new(tx),
            checked_requests: Counter::default(),
            checked_regions: Counter::default(),
            watch: Mutex::new(None),
            takeovers: Mutex::new(Vec::new()),
        };
        if self.dual.set(dual).is_err() {
            return Err(Error::Config(
                "the device already serves dual-active".into(),
            ));
        }
        Ok(())
    }

    /// The regions of a request at `offset` that must be checked first.
    pub(super) fn to_check(&self, offset: u64, len: u64) -> Option<Vec<u64>> {
        let dual = self.dual.get()?;
        if skip_checks() {
            return None;
        }
        let listed = dual.view.listed(self.geometry.regions_of(offset, len));
        (!listed.is_empty()).then_some(listed)
    }

    /// Hands `regions` to the check thread; `done` runs once the outcome
    /// can be received.
    pub(super) fn submit_check(&self, regions: Vec<u64>, done: Done) -> Receiver<Outcome> {
        let (reply, outcome) = mpsc::channel();
        let Some(dual) = self.dual.get() else {
            let _ = reply.send(Ok(()));
            done();
            return outcome;
        };
        dual.checked_requests.add(1);
        dual.checked_regions.add(regions.len() as u64);
        let job = Job {
            regions,
            reply,
            done,
        };
        let sent = dual.tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            let _ = job
                .reply
                .send(Err(Failure::eio("the status check thread is gone")));
            (job.done)();
        }
        outcome
    }

    /// Tells the other node that this one stopped cleanly (after
    /// `shutdown`): it need not ask about anything until this node is back.
    pub fn dual_goodbye(&self) {
        if let Some(d) = self.dual.get() {
            if let Err(e) = d.link.bye() {
                log::warn!("tell the other node this one stopped: {e}");
            }
        }
    }

    /// Dual-active figures, when the device serves dual-active.
    pub fn dual_status(&self) -> Option<DualStatus> {
        let d = self.dual.get()?;
        Some(DualStatus {
            other: d.link.address().to_string(),
            view_loaded: d.view.is_fresh(),
            other_regions: if d.view.is_fresh() {
                d.view.listed(0..d.view.regions()).len() as u64
            } else {
                d.view.regions()
            },
            checked_requests: d.checked_requests.get(),
            checked_regions: d.checked_regions.get(),
            last_answer_ms: d.link.heard_ago().map(|t| t.as_millis() as u64),
            other_lease: lock(&d.watch).clone(),
            takeovers: lock(&d.takeovers).clone(),
        })
    }

    /// Watches the other node's lease at `path` (its `--lease`, by this
    /// node's path) until `stop`, taking its record over once the lease
    /// expires. Needs `go_dual` first.
    pub fn watch_other(
        self: &Arc<Self>,
        holder: &Arc<Holder>,
        path: &Path,
        stop: Arc<AtomicBool>,
    ) -> Result<()> {
        if self.dual.get().is_none() {
            return Err(Error::Config(
                "--other-lease: the device does not serve dual-active".into(),
            ));
        }
        let mut watch = Watch::new(path)?;
        let weak = Arc::downgrade(self);
        let holder = holder.clone();
        std::thread::Builder::new()
            .name("tandem-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let Some(engine) = weak.upgrade() else { return };
                    let pause = engine.watch_once(&mut watch, &holder);
                    drop(engine);
                    std::thread::sleep(pause);
                }
            })
            .map_err(|e| Error::io("start the lease watch thread", e))?;
        Ok(())
    }

    /// One look at the other node's lease; returns how long to wait before
    /// the next.
    fn watch_once(&self, watch: &mut Watch, holder: &Holder) -> Duration {
        let dual = self.dual.get().expect("watch_other checked it");
        let path = watch.path().display().to_string();
        let note = |seen: &str, b: Option<&Block>, error: Option<String>| {
            *lock(&dual.watch) = Some(OtherLease {
                path: path.clone(),
                seen: seen.into(),
                owner: b.map(|b| b.owner),
                generation: b.map(|b| b.generation),
                error,
            });
        };
        let seen = match watch.poll() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("watch the other node's lease {path}: {e}");
                note("error", None, Some(e.to_string()));
                return Duration::from_millis(500);
            }
        };
        let (word, b) = match &seen {
            Seen::Blank => {
                note("blank", None, None);
                return Duration::from_millis(200);
            }
            Seen::Alive(b) => ("alive", b),
            Seen::Released(b) => ("released", b),
            Seen::Expired(b) => ("expired", b),
        };
        note(word, Some(b), None);
        let pause = (b.timeout() / 8).clamp(Duration::from_millis(10), Duration::from_millis(500));
        if let Seen::Expired(b) = &seen {
            if b.identity != self.identity {
                note(
                    "error",
                    Some(b),
                    Some(format!(
                        "the lease is for device {:016x}, this one is {:016x}",
                        b.identity, self.identity
                    )),
                );
            } else if b.owner != holder.node() {
                match self.take_over_other(holder, watch.path(), b, watch.unchanged_for()) {
                    Ok(t) => lock(&dual.takeovers).push(t),
                    Err(e) => {
                        log::error!("take over the record of node {}: {e}", b.owner);
                        note("expired", Some(b), Some(e.to_string()));
                    }
                }
            }
        }
        pause
    }

    /// Takes the record of the node whose lease `seen` expired into this
    /// node's own (see the module's comment).
    fn take_over_other(
        &self,
        holder: &Holder,
        path: &Path,
        seen: &Block,
        waited: Duration,
    ) -> Result<DualTakeover> {
        let dual = self.dual.get().expect("watch_other checked it");
        let lc = LeaseConfig {
            path: PathBuf::from(path),
            node: holder.node(),
            timeout: seen.timeout(),
            reclaim: false,
        };
        let lease = Lease::take_over(&lc, seen)?;
        log::warn!(
            "node {} died (its lease unchanged for {} ms): taking its record over at generation {}",
            seen.owner,
            waited.as_millis(),
            lease.generation()
        );
        let held = holder.take_record(self.identity, lease.generation(), &self.geometry)?;
        let regions: Vec<u64> = if seen.direct {
            log::warn!(
                "node {} served directly: its record here may lack regions; taking every region",
                seen.owner
            );
            (0..self.geometry.regions()).collect()
        } else {
            held
        };
        // Durable in this node's record before anything of the other node
        // stops being asked about: a crash from here on resyncs them.
        let dirtied = self.record.record_dirty(regions)?;
        self.mirror.enqueue_resync(&dirtied);
        // The other node's writes have landed (its lease lapsed past the
        // margin) and its record is in this one's: nothing needs asking.
        dual.view
            .load(&Image::repeat(false, self.geometry.regions() as usize));
        lease.release();
        let t = DualTakeover {
            from_node: seen.owner,
            from_generation: seen.generation,
            generation: lease.generation(),
            waited_ms: waited.as_millis() as u64,
            regions: dirtied.len() as u64,
            whole_device: seen.direct,
        };
        log::warn!(
            "took over the record of node {}: {} regions to copy; serving without asking it",
            t.from_node,
            t.regions
        );
        Ok(t)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sequence of a copy that needed no grant after all (the other node's
/// record was taken over while it waited for one).
const NO_GRANT: u64 = u64::MAX;

/// The mirror's copies of regions that the other node's record lists ask
/// it for a grant first.
struct Gate {
    view: Arc<HeldView>,
    link: Arc<CheckLink>,
}

impl crate::mirror::CopyGate for Gate {
    fn theirs(&self, r: u64) -> bool {
        !skip_checks() && self.view.lists(r)
    }

    fn begin(&self, r: u64) -> Result<Option<u64>> {
        Ok(match self.link.copy_begin(r, &|| self.view.lists(r))? {
            crate::peer::checks::Copy::Granted { seq } => Some(seq),
            crate::peer::checks::Copy::Busy => None,
            crate::peer::checks::Copy::Unneeded => Some(NO_GRANT),
        })
    }

    fn end(&self, r: u64, seq: u64, landed: bool) -> Result<bool> {
        if seq == NO_GRANT {
            return Ok(true);
        }
        self.link.copy_end(r, seq, landed, &|| self.view.lists(r))
    }
}

/// The check thread: takes every queued job, asks about their regions once
/// each, drops this node's clean cache of them, and answers each job.
fn run(
    rx: &Receiver<Job>,
    link: &CheckLink,
    view: &HeldView,
    primary: &crate::dev::Dev,
    g: crate::geometry::Geometry,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut regions: Vec<u64> = jobs
            .iter()
            .flat_map(|j| j.regions.iter().copied())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let outcome = regions
            .iter()
            .try_for_each(|&r| {
                link.check(r, &|| view.lists(r))?;
                primary
                    .drop_cache(r * g.region_size(), g.region_size())
                    .map_err(|e| Error::io(format!("drop the cache of {}", primary.describe()), e))
            })
            .map_err(|e| Failure::from(&e));
        for job in jobs {
            let _ = job.reply.send(outcome.clone());
            (job.done)();
        }
    }
}

/// The test-only switch that skips every status check, for the test that
/// shows what the check is for (a read through the other node then
/// returns stale data): `TANDEM_TEST_SKIP_CHECKS=1` in the daemon's
/// environment. Logged loudly when on.
fn skip_checks() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| {
        let on = std::env::var_os("TANDEM_TEST_SKIP_CHECKS").is_some_and(|v| v == "1");
        if on {
            log::error!("TANDEM_TEST_SKIP_CHECKS=1: status checks are OFF (a test switch; reads may be stale)");
        }
        on
    })
}
