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

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::Engine;
use crate::error::{Error, Failure, Result};
use crate::peer::checks::CheckLink;
use crate::peer::{HeldView, Holder};
use crate::record::committer::{Done, Outcome};
use crate::stats::Counter;

/// What the engine keeps of dual-active service.
pub(crate) struct Dual {
    pub(super) view: Arc<HeldView>,
    pub(super) link: Arc<CheckLink>,
    tx: Mutex<Sender<Job>>,
    /// Requests that waited for a check, and the regions checked.
    pub(super) checked_requests: Counter,
    pub(super) checked_regions: Counter,
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
            .spawn(move || run(&rx, &l, &p, g))
            .map_err(|e| Error::io("start the status check thread", e))?;
        let dual = Dual {
            view,
            link,
            tx: Mutex::new(tx),
            checked_requests: Counter::default(),
            checked_regions: Counter::default(),
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
        })
    }
}

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
        Ok(match self.link.copy_begin(r)? {
            crate::peer::checks::Copy::Granted { seq } => Some(seq),
            crate::peer::checks::Copy::Busy => None,
        })
    }

    fn end(&self, r: u64, seq: u64, landed: bool) -> Result<bool> {
        self.link.copy_end(r, seq, landed)
    }
}

/// The check thread: takes every queued job, asks about their regions once
/// each, drops this node's clean cache of them, and answers each job.
fn run(
    rx: &Receiver<Job>,
    link: &CheckLink,
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
                link.check(r)?;
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
