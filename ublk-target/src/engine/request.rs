//! The engine's one request path.
//!
//! A front end turns each host request into a [`Request`] and asks the engine
//! to [`plan`](Engine::plan) it. The plan is ready at once, waits for the
//! record ([`PendingIo`]: the write's regions must become durable first), or
//! is already done (an error). A ready [`Io`] says how it is to be issued on
//! the primary ([`Issue`]); the front end issues it and hands the result to
//! [`Io::complete`], which ends the write (its regions turn dirty and go to
//! the mirror) and gives the request's outcome.
//!
//! The ublk queues issue on their own ring and wait for the record on an
//! eventfd; [`Engine::serve`] does both on the calling thread. Everything else
//! (range checks, the record, the choice between the primary's file
//! descriptor and the engine's own I/O, the host-I/O gauge, error context and
//! the errno) is this module's, once, for both.

use std::io;

use super::write::{AdmitTicket, PendingWrite, WriteGuard, WriteStart};
use super::Engine;
use crate::dev::Dev;
use crate::error::{Error, Failure, Result};
use crate::record::committer::Outcome;
use crate::stats::GaugeGuard;

/// What a host request asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// Make every completed write durable.
    Flush,
    /// Deallocate a range; it reads back as zeroes.
    Discard,
    WriteZeroes,
}

impl Op {
    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        }
    }

    /// Whether it changes data, so the record and the mirror see it.
    pub const fn changes_data(self) -> bool {
        matches!(self, Op::Write | Op::Discard | Op::WriteZeroes)
    }

    /// Whether it moves data through the request's buffer.
    pub const fn moves_data(self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// One host request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub len: u64,
    /// Force unit access: a write durable when it completes.
    pub fua: bool,
}

impl Request {
    pub fn read(offset: u64, len: u64) -> Request {
        Request::new(Op::Read, offset, len, false)
    }

    pub fn write(offset: u64, len: u64, fua: bool) -> Request {
        Request::new(Op::Write, offset, len, fua)
    }

    pub fn flush() -> Request {
        Request::new(Op::Flush, 0, 0, false)
    }

    pub fn discard(offset: u64, len: u64) -> Request {
        Request::new(Op::Discard, offset, len, false)
    }

    pub fn write_zeroes(offset: u64, len: u64) -> Request {
        Request::new(Op::WriteZeroes, offset, len, false)
    }

    fn new(op: Op, offset: u64, len: u64, fua: bool) -> Request {
        Request {
            op,
            offset,
            len,
            fua,
        }
    }

    /// A request in 512-byte sectors, as the block layer sends it. A flush
    /// has no range (ublk sends it with sector `u64::MAX`). A sector whose
    /// byte offset overflows becomes offset `u64::MAX`, which `plan` refuses
    /// as outside the device, never wrapped to a valid one.
    pub fn from_sectors(op: Op, sector: u64, sectors: u32, fua: bool) -> Request {
        if op == Op::Flush {
            return Request::flush();
        }
        let offset = sector.saturating_mul(512);
        Request::new(op, offset, u64::from(sectors) << 9, fua)
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.op {
            Op::Flush => f.write_str("flush"),
            op => write!(
                f,
                "{} of {} bytes at {}{}",
                op.name(),
                self.len,
                self.offset,
                if self.fua { " (FUA)" } else { "" }
            ),
        }
    }
}

/// How a ready request is issued on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// Read the request's bytes from the primary's file descriptor into its
    /// buffer.
    Read,
    /// Write the request's buffer to the primary's file descriptor; with
    /// `dsync` (`RWF_DSYNC`), durable when it completes.
    Write { dsync: bool },
    /// fdatasync the primary's file descriptor.
    Sync,
    /// The engine does it (`Io::run`), briefly blocking: a transfer that
    /// needs a bounce buffer, or a primary with no file descriptor.
    Run,
    /// The engine does it with no buffer, and it may take long (a discard of
    /// a whole disk): run `Io::job` where blocking harms nobody.
    Detached,
}

/// The buffer a request moves data through, if any.
pub enum Data<'b> {
    /// A read fills it.
    Into(&'b mut [u8]),
    /// A write takes it.
    From(&'b [u8]),
    None,
}

impl Data<'_> {
    /// The same buffer, borrowed again.
    pub fn reborrow(&mut self) -> Data<'_> {
        match self {
            Data::Into(b) => Data::Into(b),
            Data::From(b) => Data::From(b),
            Data::None => Data::None,
        }
    }

    /// What a write takes from it.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Data::Into(b) => b,
            Data::From(b) => b,
            Data::None => &[],
        }
    }
}

impl<'b> From<&'b mut [u8]> for Data<'b> {
    fn from(buf: &'b mut [u8]) -> Self {
        Data::Into(buf)
    }
}

impl<'b> From<&'b [u8]> for Data<'b> {
    fn from(buf: &'b [u8]) -> Self {
        Data::From(buf)
    }
}

/// What `Engine::plan` made of a request.
#[must_use = "a planned request must be issued or dropped"]
pub enum Plan<'a> {
    /// Issue it (see `Io::issue`), then `complete` it.
    Ready(Io<'a>),
    /// Its regions must reach the durable record first.
    Pending(PendingIo<'a>),
    /// Nothing to issue: this is its outcome (a request outside the device,
    /// a record update that failed).
    Done(Result<usize>),
}

/// A request cleared to be issued on the primary.
#[must_use = "an issued request must be completed"]
pub struct Io<'a> {
    engine: &'a Engine,
    req: Request,
    /// A write's passage through the record (None for reads and flushes).
    write: Option<WriteGuard<'a>>,
    /// Host I/O in being, for requests without a write guard (which holds
    /// its own): mirror copies yield to it.
    _host_io: Option<GaugeGuard<'a>>,
}

/// A request waiting for its regions to be admitted to the durable record,
/// or (dual-active) for the other node's answer about them.
#[must_use = "a pending request must be admitted or dropped"]
pub struct PendingIo<'a> {
    engine: &'a Engine,
    req: Request,
    wait: Wait<'a>,
}

enum Wait<'a> {
    Record(PendingWrite<'a>),
    /// Regions the other node's record lists: ask it first.
    Check(Vec<u64>),
    /// The dirty backlog is over `--max-dirty` (`throttle`): wait until
    /// the mirror has brought it under.
    Throttle,
}

/// The gates a request has passed, so that planning it again skips them.
#[derive(Debug, Clone, Copy, Default)]
struct Passed {
    /// The other node was asked about its regions.
    checked: bool,
    /// It waited for the backlog (once is enough: it is not held again).
    throttled: bool,
}

/// A pending request in the hands of the record committer thread, or of
/// the status check thread.
#[must_use = "a ticket must be finished"]
pub struct IoTicket<'a> {
    engine: &'a Engine,
    req: Request,
    ticket: Ticket<'a>,
}

enum Ticket<'a> {
    Record(AdmitTicket<'a>),
    /// A status check, or a wait for the backlog: planned again after.
    Gate {
        outcome: std::sync::mpsc::Receiver<Outcome>,
        seen: Option<Outcome>,
        throttle: bool,
    },
}

impl Engine {
    /// Plans a request: checks its range, waits for a status check of the
    /// regions the other node's record lists (dual-active) and, for a
    /// request that changes data, registers it with the record. Never
    /// blocks.
    pub fn plan(&self, req: Request) -> Plan<'_> {
        self.plan_with(req, Passed::default())
    }

    fn plan_with(&self, req: Request, passed: Passed) -> Plan<'_> {
        let ready = |write, host_io| {
            Plan::Ready(Io {
                engine: self,
                req,
                write,
                _host_io: host_io,
            })
        };
        if req.op == Op::Flush {
            return ready(None, Some(self.host_io.enter()));
        }
        if let Err(e) = self.geometry.check_range(req.offset, req.len) {
            return Plan::Done(Err(e));
        }
        if req.op.changes_data() && !passed.throttled && self.must_throttle() {
            // Before the status check, whose answer must be fresh when the
            // write goes, and before it registers, so the mirror can claim
            // its regions meanwhile.
            return Plan::Pending(PendingIo {
                engine: self,
                req,
                wait: Wait::Throttle,
            });
        }
        if !passed.checked {
            // Before the write registers as in flight: the other node's
            // answer may wait for this node's writes in flight, never for
            // one that waits for it.
            if let Some(regions) = self.to_check(req.offset, req.len) {
                return Plan::Pending(PendingIo {
                    engine: self,
                    req,
                    wait: Wait::Check(regions),
                });
            }
        }
        if !req.op.changes_data() {
            return ready(None, Some(self.host_io.enter()));
        }
        if let Err(e) = self.check_lease() {
            // Fenced: another node may be copying the device, so nothing
            // is written to the primary.
            return Plan::Done(Err(e));
        }
        match self.start_write(req.offset, req.len) {
            WriteStart::Ready(guard) => ready(Some(guard), None),
            WriteStart::Pending(pending) => Plan::Pending(PendingIo {
                engine: self,
                req,
                wait: Wait::Record(pending),
            }),
        }
    }

    /// Serves a request on the calling thread, through the same path as the
    /// ublk queues: plan, admission on the record committer thread, the
    /// issue on the primary (this thread's ring for the primary's file
    /// descriptor), completion. Returns the bytes moved (0 for requests that
    /// move none).
    pub fn serve(&self, req: Request, data: Data<'_>) -> Result<usize> {
        let start = std::time::Instant::now();
        let r = self.serve_timed(req, data);
        self.note_latency(req.op, start.elapsed());
        r
    }

    fn serve_timed(&self, req: Request, mut data: Data<'_>) -> Result<usize> {
        let mut plan = self.plan(req);
        loop {
            plan = match plan {
                Plan::Done(outcome) => return outcome,
                Plan::Pending(p) => p.submit(Box::new(|| {})).finish(),
                Plan::Ready(io) => {
                    let res = io.run(data.reborrow());
                    return io.complete_written(res, data.bytes());
                }
            };
        }
    }
}

impl<'a> Io<'a> {
    pub fn request(&self) -> Request {
        self.req
    }

    /// How to issue it: on the primary's file descriptor when the primary
    /// has one and the request keeps its alignment (O_DIRECT), else by the
    /// engine (`run`, or `job` for what may take long).
    pub fn issue(&self) -> Issue {
        let primary = &self.engine.primary;
        let fd = primary.raw_fd().is_some();
        match self.req.op {
            Op::Discard | Op::WriteZeroes => Issue::Detached,
            Op::Flush if fd => Issue::Sync,
            Op::Read if fd && self.aligned() => Issue::Read,
            Op::Write if fd && self.aligned() => Issue::Write {
                dsync: self.req.fua,
            },
            _ => Issue::Run,
        }
    }

    /// Whether the request keeps the primary's O_DIRECT alignment (the
    /// front end's buffers are page-aligned; offset and length must be too).
    fn aligned(&self) -> bool {
        match self.engine.primary.dio_alignment() {
            None => true,
            Some(a) => {
                let a = u64::from(a);
                self.req.offset.is_multiple_of(a) && self.req.len.is_multiple_of(a)
            }
        }
    }

    /// Issues the request on the calling thread, whatever `issue` says.
    /// Returns what a ring would: the bytes moved, or a negative errno.
    pub fn run(&self, data: Data<'_>) -> i32 {
        let (p, req) = (&self.engine.primary, self.req);
        let len = req.len as usize;
        let moved = |r: io::Result<()>, n: usize| match r {
            Ok(()) => i32::try_from(n).unwrap_or(i32::MAX),
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        match (req.op, data) {
            (Op::Read, Data::Into(buf)) if buf.len() >= len => {
                moved(p.read_at(&mut buf[..len], req.offset), len)
            }
            (Op::Write, Data::From(buf)) if buf.len() >= len => {
                moved(p.write_at(&buf[..len], req.offset, req.fua), len)
            }
            (Op::Write, Data::Into(buf)) if buf.len() >= len => {
                moved(p.write_at(&buf[..len], req.offset, req.fua), len)
            }
            (Op::Read | Op::Write, _) => -libc::EINVAL,
            (Op::Flush, _) => moved(p.sync(), 0),
            (Op::Discard | Op::WriteZeroes, _) => self.job()(),
        }
    }

    /// The work of a request that moves no data, to run on another thread:
    /// the result is what `run` would return.
    pub fn job(&self) -> impl FnOnce() -> i32 + Send + 'static {
        let dev: Dev = self.engine.primary.clone();
        let req = self.req;
        move || {
            let r = match req.op {
                Op::Discard => dev.discard(req.offset, req.len),
                Op::WriteZeroes => dev.write_zeroes(req.offset, req.len),
                Op::Flush => dev.sync(),
                Op::Read | Op::Write => return -libc::EINVAL,
            };
            match r {
                Ok(()) => 0,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            }
        }
    }

    /// Ends the request with what the primary returned (bytes moved, or a
    /// negative errno): a write's regions turn dirty and are queued for the
    /// mirror, succeeded or not. Returns the request's outcome; a transfer
    /// that moved less than asked fails with EIO, never as a success.
    pub fn complete(self, res: i32) -> Result<usize> {
        self.complete_written(res, &[])
    }

    /// Like `complete`, for a write whose buffer is `data`: once the
    /// primary has it all, the mirror may copy it from there instead of
    /// reading it back.
    pub fn complete_written(self, res: i32, data: &[u8]) -> Result<usize> {
        let Io {
            engine, req, write, ..
        } = self;
        let want = if req.op.moves_data() { req.len } else { 0 };
        if let Some(guard) = write {
            let whole =
                req.op == Op::Write && u64::try_from(res) == Ok(want) && data.len() as u64 >= want;
            guard.complete(whole.then(|| &data[..want as usize]));
        }
        let failed = |errno: i32| {
            Err(Error::io(
                format!("{req} on the primary {}", engine.primary.describe()),
                io::Error::from_raw_os_error(errno),
            ))
        };
        match u64::try_from(res) {
            Err(_) => failed(-res),
            Ok(n) if n != want => failed(libc::EIO),
            // A write, or a flush, is acknowledged only under a valid lease.
            Ok(_) if req.op != Op::Read => engine.check_lease().map(|()| want as usize),
            Ok(_) => Ok(want as usize),
        }
    }
}

impl<'a> PendingIo<'a> {
    pub fn request(&self) -> Request {
        self.req
    }

    /// Admits the regions on this thread (sharing the record's group commit
    /// with concurrent callers), or asks the other node about them.
    pub fn admit(self) -> Plan<'a> {
        let (engine, req) = (self.engine, self.req);
        match self.wait {
            Wait::Record(pending) => admitted(engine, req, pending.admit()),
            Wait::Check(regions) => {
                let outcome = engine.submit_check(regions, Box::new(|| {})).recv();
                gated(engine, req, outcome.ok(), false)
            }
            Wait::Throttle => {
                let outcome = engine.submit_throttle(Box::new(|| {})).recv();
                gated(engine, req, outcome.ok(), true)
            }
        }
    }

    /// Hands the admission to the record committer thread (or the regions
    /// to the status check thread), which calls `done` (on its own thread)
    /// once the outcome is ready; admissions queued while one is written
    /// share the next update, and checks queued while one is asked the
    /// next exchange.
    pub fn submit(self, done: Box<dyn FnOnce() + Send>) -> IoTicket<'a> {
        let ticket = match self.wait {
            Wait::Record(pending) => Ticket::Record(pending.submit(done)),
            Wait::Check(regions) => Ticket::Gate {
                outcome: self.engine.submit_check(regions, done),
                seen: None,
                throttle: false,
            },
            Wait::Throttle => Ticket::Gate {
                outcome: self.engine.submit_throttle(done),
                seen: None,
                throttle: true,
            },
        };
        IoTicket {
            engine: self.engine,
            req: self.req,
            ticket,
        }
    }
}

impl<'a> IoTicket<'a> {
    /// Whether the committer has answered (`finish` will not block).
    pub fn is_ready(&mut self) -> bool {
        match &mut self.ticket {
            Ticket::Record(t) => t.is_ready(),
            Ticket::Gate { outcome, seen, .. } => {
                if seen.is_none() {
                    *seen = match outcome.try_recv() {
                        Ok(o) => Some(o),
                        Err(std::sync::mpsc::TryRecvError::Empty) => None,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            Some(Err(Failure::eio("the status check thread is gone")))
                        }
                    };
                }
                seen.is_some()
            }
        }
    }

    /// Ready to issue once the regions are durable in the record, or done
    /// with the reason they are not; after a status check, planned again.
    /// Blocks until the committer (or the check thread) answered.
    pub fn finish(self) -> Plan<'a> {
        let (engine, req) = (self.engine, self.req);
        match self.ticket {
            Ticket::Record(t) => admitted(engine, req, t.finish()),
            Ticket::Gate {
                outcome,
                seen,
                throttle,
            } => {
                let o = seen.or_else(|| outcome.recv().ok());
                gated(engine, req, o, throttle)
            }
        }
    }
}

/// The request planned again once the other node has answered about its
/// regions (or, `throttle`, once the backlog let it go), or done with why
/// it could not be asked. A throttled request is checked afresh.
fn gated(engine: &Engine, req: Request, outcome: Option<Outcome>, throttle: bool) -> Plan<'_> {
    let passed = Passed {
        checked: !throttle,
        throttled: true,
    };
    match outcome {
        Some(Ok(())) => engine.plan_with(req, passed),
        Some(Err(f)) => Plan::Done(Err(Error::io(
            format!("status check before the {req}: {}", f.message),
            io::Error::from_raw_os_error(-f.errno),
        ))),
        None => Plan::Done(Err(Error::Peer(format!(
            "status check before the {req}: the check thread is gone"
        )))),
    }
}

fn admitted<'a>(engine: &'a Engine, req: Request, guard: Result<WriteGuard<'a>>) -> Plan<'a> {
    match guard {
        Ok(guard) => Plan::Ready(Io {
            engine,
            req,
            write: Some(guard),
            _host_io: None,
        }),
        Err(e) => Plan::Done(Err(e)),
    }
}

/// A request's outcome as a ublk completion carries it: the bytes moved, or
/// a negative errno (the error is logged with the request).
pub fn ublk_result(req: &Request, outcome: Result<usize>) -> i32 {
    match outcome {
        Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
        Err(e) => {
            log::error!("{req}: {e}");
            e.errno()
        }
    }
}
