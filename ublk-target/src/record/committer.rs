//! A thread that makes record admissions durable for callers that must not
//! block: the ublk queue threads. A queue task hands its missed regions over,
//! goes on serving other requests, and is woken (by the `done` callback) once
//! the update is durable. Admissions queued while an update is being written
//! are committed together as the next one.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::Record;
use crate::error::Failure;

/// What an admission came to: `Err` carries why the update failed, with its
/// errno.
pub type Outcome = std::result::Result<(), Failure>;

/// Called on the committer thread once the admission's outcome is ready.
pub type Done = Box<dyn FnOnce() + Send>;

struct Job {
    missed: Vec<u64>,
    reply: Sender<Outcome>,
    done: Done,
}

/// The committer thread of one record; started on first use.
pub struct Committer {
    record: Arc<Record>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stopped: bool,
}

impl Committer {
    pub fn new(record: Arc<Record>) -> Self {
        Committer {
            record,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Queues `missed` for the record; `done` runs on the committer thread
    /// once the outcome can be received from the returned channel. After
    /// `stop`, or if the thread cannot start, the outcome is an error and
    /// `done` runs at once on the caller's thread.
    pub fn submit(&self, missed: Vec<u64>, done: Done) -> Receiver<Outcome> {
        let (reply, outcome) = mpsc::channel();
        let mut job = Job {
            missed,
            reply,
            done,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(why) = self.ensure_started(&mut inner) {
            drop(inner);
            let _ = job.reply.send(Err(why));
            (job.done)();
            return outcome;
        }
        let tx = inner.tx.as_ref().expect("started above");
        if let Err(mpsc::SendError(back)) = tx.send(job) {
            job = back;
            drop(inner);
            let _ = job
                .reply
                .send(Err(Failure::eio("the record committer thread is gone")));
            (job.done)();
        }
        outcome
    }

    fn ensure_started(&self, inner: &mut Inner) -> std::result::Result<(), Failure> {
        if inner.stopped {
            return Err(Failure {
                message: "the device is stopping".into(),
                errno: -libc::ENODEV,
            });
        }
        if inner.tx.is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let record = self.record.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-record".into())
            .spawn(move || run(&record, &rx))
            .map_err(|e| Failure {
                message: format!("start the record committer thread: {e}"),
                errno: -e.raw_os_error().unwrap_or(libc::EAGAIN),
            })?;
        inner.tx = Some(tx);
        inner.thread = Some(thread);
        Ok(())
    }

    /// Commits what is queued, then ends the thread. Later submissions fail.
    pub fn stop(&self) {
        let thread = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.stopped = true;
            inner.tx = None;
            inner.thread.take()
        };
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes every queued job, commits their regions as one update, and answers
/// each; until every sender is gone.
fn run(record: &Record, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let missed: Vec<u64> = jobs.iter().flat_map(|j| j.missed.iter().copied()).collect();
        let outcome = record.admit(&missed).map_err(|e| Failure::from(&e));
        for job in jobs {
            let _ = job.reply.send(outcome.clone());
            (job.done)();
        }
    }
}
