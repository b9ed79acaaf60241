//! One ublk queue: an async task per tag that fetches a request, hands it to
//! the engine, submits what the engine plans on the queue's own io_uring, and
//! commits the result. A thin adapter: the engine decides how each request is
//! issued and what its outcome is; every request is completed, with a
//! negative errno on failure.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::{
    ublk_reap_io_events_with_update_queue, ublk_submit_sqe_async, ublk_wake_task,
};
use libublk::{sys, BufDesc, UblkError, UblkUringData};
use std::os::fd::{AsFd, AsRawFd};

use tandem::engine::{ublk_result, Data, Issue, Op, PendingIo, Plan, Request};
use tandem::Engine;

use super::poll::{self, PollPolicy};

/// Index of the primary among the queue ring's registered files (0 is the
/// ublk character device).
pub const PRIMARY_FIXED_FD: u32 = 1;

/// Serves queue `qid` until the device stops, spinning for completions for
/// up to `poll` while they come close together (see `poll`).
pub fn run(qid: u16, dev: &UblkDev, engine: Arc<Engine>, poll: Duration) {
    if let Err(e) = init_ring(dev) {
        log::error!("queue {qid}: io_uring setup failed: {e}");
        return;
    }
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            log::error!("queue {qid}: setup failed: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    // Requests this queue is serving (fetched from the kernel, not yet
    // committed back): how deep the queue runs, for the spin policy.
    let in_flight = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let q = q.clone();
        let engine = engine.clone();
        let in_flight = in_flight.clone();
        tasks.push(exe.spawn(async move {
            match io_task(&q, tag, &engine, &in_flight).await {
                Err(UblkError::QueueIsDown) | Ok(()) => {}
                Err(e) => log::error!("queue {qid} tag {tag}: {e}"),
            }
        }));
    }
    let exe2 = exe.clone();
    let policy = std::cell::RefCell::new(PollPolicy::new(poll));
    smol::block_on(exe.run(async move {
        let run_ops = || while exe2.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        let wait =
            || async { poll::wait_events(&q, &mut policy.borrow_mut(), in_flight.get(), &engine) };
        let reap = |timed_out| {
            ublk_reap_io_events_with_update_queue(&q, timed_out, None, |cqe| {
                ublk_wake_task(cqe.user_data(), cqe)
            })
        };
        if let Err(e) = libublk::run_uring_tasks(wait, reap, run_ops, done).await {
            log::error!("queue {qid}: event loop failed: {e}");
        }
    }));
}

/// Builds this thread's queue ring before libublk would build its default one.
/// Only this thread submits to it (`SINGLE_ISSUER`), and completions run when
/// it waits for them (`DEFER_TASKRUN`) instead of interrupting it: fewer
/// wake-ups and inter-CPU kicks per request. Kernels before 6.1 lack
/// `DEFER_TASKRUN`; there the ring is built as libublk would.
fn init_ring(dev: &UblkDev) -> Result<(), UblkError> {
    libublk::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let (sq, cq) = (u32::from(dev.tgt.sq_depth), u32::from(dev.tgt.cq_depth));
            let ring = io_uring::IoUring::builder()
                .setup_cqsize(cq)
                .setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun()
                // Flags deferred completions in the ring, so that an enter
                // that does not wait (libublk's, while the queue stops) still
                // runs them: else a stopping queue never sees its aborts.
                .setup_taskrun_flag()
                .build(sq)
                .or_else(|e| {
                    log::info!("io_uring without DEFER_TASKRUN ({e}): completions interrupt");
                    io_uring::IoUring::builder()
                        .setup_cqsize(cq)
                        .setup_coop_taskrun()
                        .build(sq)
                })
                .map_err(UblkError::IOError)?;
            cell.set(std::cell::RefCell::new(ring))
                .map_err(|_| UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })
}

async fn io_task(
    q: &UblkQueue<'_>,
    tag: u16,
    engine: &Engine,
    in_flight: &Cell<usize>,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        in_flight.set(in_flight.get() + 1);
        let start = std::time::Instant::now();
        let (op, res) = serve(q, tag, buf.as_mut_slice(), engine).await;
        if let Some(op) = op {
            engine.note_latency(op, start.elapsed());
        }
        in_flight.set(in_flight.get() - 1);
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
    }
}

/// Submits one SQE on the queue's ring and waits for it.
async fn submit(sqe: io_uring::squeue::Entry) -> i32 {
    ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
        .await
        .unwrap_or(-libc::EIO)
}

/// Serves one request through the engine (plan, admission, issue,
/// completion); returns bytes transferred or a negative errno.
async fn serve(q: &UblkQueue<'_>, tag: u16, buf: &mut [u8], engine: &Engine) -> (Option<Op>, i32) {
    let iod = q.get_iod(tag);
    let op = match iod.op_flags & 0xff {
        sys::UBLK_IO_OP_READ => Op::Read,
        sys::UBLK_IO_OP_WRITE => Op::Write,
        sys::UBLK_IO_OP_FLUSH => Op::Flush,
        sys::UBLK_IO_OP_DISCARD => Op::Discard,
        sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => return (None, -libc::EOPNOTSUPP),
    };
    (Some(op), serve_op(q, tag, buf, engine, op).await)
}

/// Serves one request of kind `op`.
async fn serve_op(q: &UblkQueue<'_>, tag: u16, buf: &mut [u8], engine: &Engine, op: Op) -> i32 {
    let iod = q.get_iod(tag);
    let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
    let req = Request::from_sectors(op, iod.start_sector, iod.nr_sectors, fua);
    if op.moves_data() && req.len > buf.len() as u64 {
        log::error!("tag {tag}: {req} is larger than the queue's buffer");
        return -libc::EINVAL;
    }
    let mut plan = engine.plan(req);
    loop {
        plan = match plan {
            Plan::Done(outcome) => return ublk_result(&req, outcome),
            Plan::Pending(p) => admit(p).await,
            Plan::Ready(io) => {
                let len = req.len as usize;
                let res = match io.issue() {
                    Issue::Read => transfer(false, buf.as_mut_ptr(), len, req.offset, 0).await,
                    Issue::Write { dsync } => {
                        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                        transfer(true, buf.as_mut_ptr(), len, req.offset, flags).await
                    }
                    Issue::Sync => {
                        submit(
                            opcode::Fsync::new(types::Fixed(PRIMARY_FIXED_FD))
                                .flags(types::FsyncFlags::DATASYNC)
                                .build(),
                        )
                        .await
                    }
                    Issue::Run => io.run(Data::Into(&mut buf[..len])),
                    Issue::Detached => off_thread(io.job()).await,
                };
                // Only a write's data is in the buffer (a discard's length
                // is not bounded by it).
                let written: &[u8] = if op == Op::Write { &buf[..len] } else { &[] };
                return ublk_result(&req, io.complete_written(res, written));
            }
        };
    }
}

/// A non-blocking eventfd another thread rings when an answer is ready.
fn bell() -> nix::Result<Arc<nix::sys::eventfd::EventFd>> {
    nix::sys::eventfd::EventFd::from_flags(
        nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .map(Arc::new)
}

/// Waits for `bell` with a poll on the queue's ring, while the queue serves
/// other requests. If the ring cannot poll it, checks `ready` on a short
/// ring timer instead: the queue thread never blocks.
async fn wait_bell(bell: &nix::sys::eventfd::EventFd, mut ready: impl FnMut() -> bool) {
    let fd = types::Fd(bell.as_fd().as_raw_fd());
    let res = submit(opcode::PollAdd::new(fd, libc::POLLIN as u32).build()).await;
    if res < 0 {
        log::warn!(
            "poll on an eventfd failed (errno {}): checking on a timer",
            -res
        );
        let tick = types::Timespec::new().nsec(BELL_CHECK_NS);
        while !ready() {
            submit(opcode::Timeout::new(&tick).build()).await;
        }
    }
}

/// Runs `work` (which returns a ublk result: bytes or a negative errno) on
/// a thread of its own and waits for it without blocking the queue thread.
async fn off_thread(work: impl FnOnce() -> i32 + Send + 'static) -> i32 {
    let bell = match bell() {
        Ok(b) => b,
        Err(e) => {
            log::warn!("no eventfd ({e}): running on the queue thread");
            return work();
        }
    };
    let answer = Arc::new(std::sync::atomic::AtomicI32::new(i32::MIN));
    let (ring, out) = (bell.clone(), answer.clone());
    let spawned = std::thread::Builder::new()
        .name("tandem-offload".into())
        .spawn(move || {
            out.store(work(), std::sync::atomic::Ordering::Release);
            if let Err(e) = ring.write(1) {
                log::error!("wake a queue task after an offloaded request: {e}");
            }
        });
    if let Err(e) = spawned {
        return -e.raw_os_error().unwrap_or(libc::EAGAIN);
    }
    let done = || answer.load(std::sync::atomic::Ordering::Acquire) != i32::MIN;
    wait_bell(&bell, done).await;
    // The poll saw the bell, which rings after the answer is stored.
    while !done() {
        std::hint::spin_loop();
    }
    answer.load(std::sync::atomic::Ordering::Acquire)
}

/// Admits a request's missed regions on the record committer thread while
/// the queue serves other requests: the committer rings an eventfd, which
/// this task waits for on the queue's ring (`wait_bell`). Falls back to
/// admitting on this thread if no eventfd can be made.
async fn admit(pending: PendingIo<'_>) -> Plan<'_> {
    let bell = match bell() {
        Ok(b) => b,
        Err(e) => {
            log::warn!("no eventfd ({e}): admitting on the queue thread");
            return pending.admit();
        }
    };
    let ring = bell.clone();
    let mut ticket = pending.submit(Box::new(move || {
        if let Err(e) = ring.write(1) {
            log::error!("wake a queue task after a record update: {e}");
        }
    }));
    wait_bell(&bell, || ticket.is_ready()).await;
    ticket.finish()
}

/// How often a task whose eventfd poll failed checks for its answer.
const BELL_CHECK_NS: u32 = 100_000;

/// Tries a transfer again after EAGAIN this many times before failing it.
const EAGAIN_RETRIES: u32 = 64;

/// Reads or writes all of `len` bytes at `offset` on the primary through the
/// queue's ring: a short transfer is resubmitted for the rest, EAGAIN is
/// retried, and only an error (or a read past the end) fails the request.
/// Returns `len` or a negative errno.
async fn transfer(write: bool, buf: *mut u8, len: usize, offset: u64, flags: i32) -> i32 {
    let mut done = 0usize;
    let mut again = 0u32;
    while done < len {
        // SAFETY: `done < len`, so the pointer stays inside the request's
        // buffer of `len` bytes, which outlives the submission (the caller
        // awaits it).
        let at = unsafe { buf.add(done) };
        let n = (len - done) as u32;
        let fd = types::Fixed(PRIMARY_FIXED_FD);
        let pos = offset + done as u64;
        let sqe = if write {
            opcode::Write::new(fd, at, n)
                .offset(pos)
                .rw_flags(flags)
                .build()
        } else {
            opcode::Read::new(fd, at, n).offset(pos).build()
        };
        match submit(sqe).await {
            r if r == -libc::EAGAIN && again < EAGAIN_RETRIES => again += 1,
            r if r < 0 => return r,
            // Nothing moved: past the end of the primary.
            0 => return -libc::EIO,
            r => done += r as usize,
        }
    }
    len as i32
}
