//! A deterministic simulation of dual-active service, as a property test:
//! two nodes serve the same device over one shared primary, each through a
//! cache of its own (the page cache of `--cache writeback`, or none), each
//! with its record held by the other. It models the rules that dual-active
//! service follows:
//!
//! - **Status check**: before a node serves a read or a write of a region
//!   in the other node's record (its held copy of it says so, or that copy
//!   is not known to be complete), it asks the other node. That node
//!   answers once its writes in flight to the region have completed and its
//!   cache holds nothing dirty of it; the asking node then drops what its
//!   own cache holds clean of the region, and serves.
//! - **Held records invalidate**: a node drops its clean cache of a region
//!   whenever its copy of the other's record gains or loses that region,
//!   and all of it when the pair reconnects.
//! - **Copies with two writers**: a node copies a region that the other's
//!   record lists only under the other's grant: granted once the other has
//!   no write to it in flight and nothing dirty of it cached, and refused
//!   while the other copies it itself. The grant holds back the other's own
//!   copies of the region (never its writes) until the copier ends it, or
//!   until it expires; the copier lands its copy only within a bound of
//!   asking, and not at all once suspended. At the end, a copy is marked
//!   clean on the copier if no write started on it since its claim, and on
//!   the grantor too if none started there since the grant.
//! - **A cut link**: each node sees the link lost after a heartbeat's
//!   silence. The higher node suspends (its cache flushed, its copies
//!   abandoned, its host I/O waiting); the lower node serves directly (its
//!   record in its local file) and, a quiet period later, serves and copies
//!   the regions in the higher node's record without asking. When the link
//!   returns, each node hands its record to the other and the pair is
//!   dual-active again.
//! - **A node dies**: the other takes over its record once its lease has
//!   expired (the whole device if it served directly), copies it, and
//!   serves without asking. The node comes back with a fresh record at a
//!   new generation.
//!
//! After every step, every region whose data may differ between primary
//! and secondary (on the primary, in a cache, in a write in flight) is in
//! the durable record that its writer's recovery would use. Every read that
//! starts after a write to its region has completed, with no other write to
//! the region since or overlapping, returns that write's data. At the end,
//! with every fault healed and every copy done, the devices are identical.
//!
//! Planted bugs show what it is for: a skipped status check, a status
//! answered without flushing the cache, a cache that is never invalidated,
//! a copy that does not ask the other writer, and a higher node that does
//! not suspend on a cut link.

// Regions and nodes index several parallel arrays.
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;

use super::sim::seeded;

const R: usize = 4;
/// The lease timeout, in steps of the simulated clock.
const T: u64 = 8;
const RENEW_EVERY: u64 = 2;
/// A takeover waits the timeout plus half of it, unchanged.
const EXPIRY: u64 = T + T / 2;
/// Silence for this long: the link is lost.
const HEARTBEAT: u64 = 2;
/// The lower node serves the higher node's regions this long after it last
/// heard it: by then the higher node has seen the link lost and suspended.
const QUIET: u64 = 2 * HEARTBEAT + 2;
/// A copier lands a granted copy only within this long of asking.
const COPY_LIMIT: u64 = 2;
/// A grant that is not ended expires after this long.
const GRANT_EXPIRY: u64 = COPY_LIMIT + 2;
/// Host operations a node has in progress at most.
const MAX_OPS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    SkipCheck,
    /// A status check answered with the region's data still cached.
    CheckNoFlush,
    /// A node's clean cache never dropped before it serves.
    NoInvalidate,
    CopyAlone,
    NoSuspend,
}

#[derive(Debug, Clone)]
enum Msg {
    Check {
        id: u64,
        r: usize,
    },
    Status {
        id: u64,
    },
    Update {
        id: u64,
        set: Vec<(usize, bool)>,
    },
    Done {
        id: u64,
    },
    CopyBegin {
        id: u64,
        r: usize,
    },
    Grant {
        id: u64,
        seq: u64,
    },
    Busy {
        id: u64,
    },
    CopyEnd {
        id: u64,
        r: usize,
        seq: u64,
        landed: bool,
    },
    Ended {
        id: u64,
        unchanged: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cached {
    v: u64,
    dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write {
        v: u64,
    },
    /// A read: what it must return (if anything is known), and the count
    /// of write starts to its region when it started.
    Read {
        expect: Option<u64>,
        starts: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Checking(u64),
    Recording,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    r: usize,
    kind: Kind,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyStage {
    /// Asked the other node (request `id`).
    Begin(u64),
    /// Free to read: the grant's request and the other's sequence, if any.
    Read(Option<(u64, u64)>),
    /// Read `data`; to land on the secondary.
    Land(u64, Option<(u64, u64)>),
    /// Ended at the other node (request `id`): waiting for its answer.
    End(u64, bool),
}

#[derive(Debug, Clone, Copy)]
struct Copy {
    r: usize,
    /// The region's write sequence at the claim.
    snap: u64,
    /// When it asked: the landing's deadline counts from here.
    asked: u64,
    stage: CopyStage,
}

#[derive(Debug, Clone)]
struct Exchange {
    id: u64,
    set: Vec<(usize, bool)>,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    r: usize,
    copy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseBlock {
    owner: usize,
    gen: u64,
    counter: u64,
    released: bool,
    direct: bool,
}

#[derive(Debug, Clone)]
struct Node {
    up: bool,
    gen: u64,
    /// Its record in memory (its copy of what the other holds).
    own: [bool; R],
    dirty: [bool; R],
    /// Write starts per region (a copy's claim snapshot).
    seq: [u64; R],
    forgetting: Vec<usize>,
    /// Writes issued, not completed: (region, data).
    inflight: Vec<(usize, u64)>,
    cache: [Option<Cached>; R],
    /// The other node's record, durable here.
    held: [bool; R],
    /// `held` is complete (it may lack regions after a restart).
    held_fresh: bool,
    /// The other node's record was taken over here: no checks.
    peer_gone: bool,
    /// The record is held by the other node (else by the local file).
    paired: bool,
    local: [bool; R],
    state_paired: bool,
    exchange: Option<Exchange>,
    ops: Vec<Op>,
    copy: Option<Copy>,
    /// The other node copies this region under this node's grant.
    granted: [Option<(u64, u64)>; R],
    answering: Vec<Pending>,
    heard: u64,
    lost: bool,
    suspended: bool,
    last_renew: u64,
    /// The other node's lease as last seen, and since when.
    seen: Option<LeaseBlock>,
    seen_at: u64,
    next_id: u64,
}

impl Node {
    fn new() -> Node {
        Node {
            up: true,
            gen: 1,
            own: [false; R],
            dirty: [false; R],
            seq: [0; R],
            forgetting: Vec::new(),
            inflight: Vec::new(),
            cache: [None; R],
            held: [false; R],
            held_fresh: true,
            peer_gone: false,
            paired: true,
            local: [true; R],
            state_paired: true,
            exchange: None,
            ops: Vec::new(),
            copy: None,
            granted: [None; R],
            answering: Vec::new(),
            heard: 0,
            lost: false,
            suspended: false,
            last_renew: 0,
            seen: None,
            seen_at: 0,
            next_id: 0,
        }
    }

    fn image(&self) -> [bool; R] {
        let mut img = self.own;
        for &r in &self.forgetting {
            img[r] = true;
        }
        img
    }

    fn writing(&self, r: usize) -> bool {
        self.inflight.iter().any(|&(w, _)| w == r)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Write(usize, usize),
    Read(usize, usize),
    Progress(usize, usize),
    Complete(usize, usize),
    Writeback(usize, usize),
    DropClean(usize, usize),
    Flush(usize),
    Copy(usize, usize),
    CopyStep(usize),
    Evict(usize, usize),
    Destage(usize),
    Deliver(usize),
    Tick,
    Cut,
    Heal,
    Crash(usize),
    Restart(usize),
}

fn act() -> impl Strategy<Value = Act> {
    let n = 0..2usize;
    let r = 0..R;
    prop_oneof![
        20 => (n.clone(), r.clone()).prop_map(|(n, r)| Act::Write(n, r)),
        16 => (n.clone(), r.clone()).prop_map(|(n, r)| Act::Read(n, r)),
        32 => (n.clone(), 0..MAX_OPS).prop_map(|(n, i)| Act::Progress(n, i)),
        20 => (n.clone(), 0..MAX_OPS).prop_map(|(n, i)| Act::Complete(n, i)),
        8 => (n.clone(), r.clone()).prop_map(|(n, r)| Act::Writeback(n, r)),
        8 => (n.clone(), r.clone()).prop_map(|(n, r)| Act::DropClean(n, r)),
        4 => n.clone().prop_map(Act::Flush),
        12 => (n.clone(), r.clone()).prop_map(|(n, r)| Act::Copy(n, r)),
        16 => n.clone().prop_map(Act::CopyStep),
        8 => (n.clone(), r).prop_map(|(n, r)| Act::Evict(n, r)),
        8 => n.clone().prop_map(Act::Destage),
        40 => (0..8usize).prop_map(Act::Deliver),
        20 => Just(Act::Tick),
        1 => Just(Act::Cut),
        4 => Just(Act::Heal),
        1 => n.clone().prop_map(Act::Crash),
        4 => n.prop_map(Act::Restart),
    ]
}

struct World {
    bug: Bug,
    writeback: bool,
    now: u64,
    version: u64,
    primary: [u64; R],
    secondary: [u64; R],
    leases: [LeaseBlock; 2],
    nodes: [Node; 2],
    /// In flight: (to, epoch, message).
    net: Vec<(usize, u64, Msg)>,
    epoch: u64,
    link_up: bool,
    /// The connection broke (a cut dropped what it carried): nothing more
    /// arrives on it, and each node sees the link lost, until a reconnect.
    broken: bool,
    /// Write operations in progress per region, whether two overlapped,
    /// the data of the last completed write (when known) and how many
    /// writes to the region have started.
    writers: [u32; R],
    spoiled: [bool; R],
    last_done: [Option<u64>; R],
    starts: [u64; R],
    /// Which node completed the last write to each region.
    last_writer: [usize; R],
    seen: Seen,
    trace: Vec<String>,
}

/// How often a run reached what the properties are about.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Reads checked against a write completed through the other node.
    cross_reads: u64,
    grants: u64,
    suspends: u64,
    quiet_serves: u64,
    reconnects: u64,
    takeovers: u64,
}

impl World {
    fn new(bug: Bug, writeback: bool) -> World {
        let lease = |owner| LeaseBlock {
            owner,
            gen: 1,
            counter: 1,
            released: false,
            direct: false,
        };
        World {
            bug,
            writeback,
            now: 0,
            version: 0,
            primary: [0; R],
            secondary: [0; R],
            leases: [lease(0), lease(1)],
            nodes: [Node::new(), Node::new()],
            net: Vec::new(),
            epoch: 1,
            link_up: true,
            broken: false,
            writers: [0; R],
            spoiled: [false; R],
            last_done: [Some(0); R],
            starts: [0; R],
            last_writer: [0; R],
            seen: Seen::default(),
            trace: vec!["start: both nodes serve, paired".into()],
        }
    }

    fn send(&mut self, to: usize, m: Msg) {
        self.net.push((to, self.epoch, m));
    }

    /// Drops what node `n`'s cache holds clean of `r`, before serving it.
    fn invalidate(&mut self, n: usize, r: usize) {
        if self.bug != Bug::NoInvalidate {
            self.drop_clean(n, r);
        }
    }

    fn drop_clean(&mut self, n: usize, r: usize) {
        if matches!(self.nodes[n].cache[r], Some(Cached { dirty: false, .. })) {
            self.nodes[n].cache[r] = None;
        }
    }

    fn write_back(&mut self, n: usize, r: usize) {
        if let Some(c) = self.nodes[n].cache[r] {
            if c.dirty {
                self.primary[r] = c.v;
                self.nodes[n].cache[r] = Some(Cached { dirty: false, ..c });
            }
        }
    }

    fn flush(&mut self, n: usize) {
        for r in 0..R {
            self.write_back(n, r);
        }
    }

    /// What node `n` reads of `r`: its cache, else the primary (cached).
    fn view(&mut self, n: usize, r: usize) -> u64 {
        if let Some(c) = self.nodes[n].cache[r] {
            return c.v;
        }
        let v = self.primary[r];
        if self.writeback {
            self.nodes[n].cache[r] = Some(Cached { v, dirty: false });
        }
        v
    }

    /// The other node's record may list `r`.
    fn theirs(&self, n: usize, r: usize) -> bool {
        let node = &self.nodes[n];
        !node.peer_gone && (node.held[r] || !node.held_fresh)
    }

    fn needs_check(&self, n: usize, r: usize) -> bool {
        self.bug != Bug::SkipCheck && self.theirs(n, r)
    }

    /// The other node cannot be touching the shared storage: it was taken
    /// over, or (for the lower node) it has had a quiet period to suspend.
    fn quiescent(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        // A node that serves directly says so in its lease: it has not
        // suspended (it took this node's record over, or does not know
        // this node is back).
        let other_direct = self.leases[1 - n].direct;
        let serves_on = n == 0 || self.bug == Bug::NoSuspend;
        node.peer_gone
            || (node.lost
                && serves_on
                && (!other_direct || self.bug == Bug::NoSuspend)
                && self.now - node.heard >= QUIET)
    }

    fn may_serve(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.up && !node.suspended
    }

    fn step(&mut self, act: Act) -> Result<(), String> {
        self.trace.push(format!("t={} {act:?}", self.now));
        match act {
            Act::Write(n, r) => {
                if self.nodes[n].up && self.nodes[n].ops.len() < MAX_OPS {
                    self.version += 1;
                    if self.writers[r] > 0 {
                        // Overlapping writes: either may win.
                        self.spoiled[r] = true;
                    }
                    self.writers[r] += 1;
                    let kind = Kind::Write { v: self.version };
                    self.nodes[n].ops.push(Op {
                        r,
                        kind,
                        stage: Stage::Start,
                    });
                }
            }
            Act::Read(n, r) => {
                if self.nodes[n].up && self.nodes[n].ops.len() < MAX_OPS {
                    let expect = if self.writers[r] == 0 {
                        self.last_done[r]
                    } else {
                        None
                    };
                    let kind = Kind::Read {
                        expect,
                        starts: self.starts[r],
                    };
                    self.nodes[n].ops.push(Op {
                        r,
                        kind,
                        stage: Stage::Start,
                    });
                }
            }
            Act::Progress(n, i) => return self.progress(n, i),
            Act::Complete(n, i) => self.complete(n, i),
            Act::Writeback(n, r) => self.write_back(n, r),
            Act::DropClean(n, r) => self.drop_clean(n, r),
            Act::Flush(n) => self.flush(n),
            Act::Copy(n, r) => self.claim(n, r),
            Act::CopyStep(n) => self.copy_step(n),
            Act::Evict(n, r) => {
                let node = &self.nodes[n];
                let waiting = node.ops.iter().any(|o| o.r == r);
                let copying = node.copy.is_some_and(|c| c.r == r);
                if node.up
                    && node.own[r]
                    && !node.dirty[r]
                    && !node.writing(r)
                    && !waiting
                    && !copying
                {
                    self.nodes[n].own[r] = false;
                    self.nodes[n].forgetting.push(r);
                }
            }
            Act::Destage(n) => self.destage(n),
            Act::Deliver(i) => {
                if !self.net.is_empty() {
                    let (to, epoch, m) = self.net.remove(i % self.net.len());
                    if self.link_up && !self.broken && epoch == self.epoch && self.nodes[to].up {
                        self.receive(to, m);
                    }
                }
            }
            Act::Tick => self.tick(),
            Act::Cut => {
                self.link_up = false;
                self.broken = true;
                self.net.clear();
            }
            Act::Heal => self.link_up = true,
            Act::Crash(n) => self.crash(n),
            Act::Restart(n) => self.restart(n),
        }
        self.serve_pending();
        Ok(())
    }

    fn progress(&mut self, n: usize, i: usize) -> Result<(), String> {
        if !self.may_serve(n) || self.nodes[n].ops.is_empty() {
            return Ok(());
        }
        let i = i % self.nodes[n].ops.len();
        let op = self.nodes[n].ops[i];
        let r = op.r;
        match op.stage {
            Stage::Start => {
                if self.needs_check(n, r) && !self.quiescent(n) {
                    let id = self.nodes[n].id();
                    self.send(1 - n, Msg::Check { id, r });
                    self.nodes[n].ops[i].stage = Stage::Checking(id);
                } else {
                    if self.needs_check(n, r) {
                        self.invalidate(n, r);
                    }
                    self.nodes[n].ops[i].stage = Stage::Recording;
                }
            }
            Stage::Checking(_) => {
                if self.quiescent(n) {
                    self.seen.quiet_serves += 1;
                    self.invalidate(n, r);
                    self.nodes[n].ops[i].stage = Stage::Recording;
                }
            }
            Stage::Recording => match op.kind {
                Kind::Read { expect, starts } => {
                    self.nodes[n].ops.remove(i);
                    let got = self.view(n, r);
                    if let Some(want) = expect {
                        if starts == self.starts[r] {
                            if got != want {
                                return Err(format!(
                                    "a read of region {r} through node {n} returned v{got}, \
                                     but the last completed write to it was v{want}"
                                ));
                            }
                            if self.last_writer[r] != n && want != 0 {
                                self.seen.cross_reads += 1;
                            }
                        }
                    }
                }
                Kind::Write { v, .. } => {
                    if !self.nodes[n].own[r] {
                        if !self.nodes[n].paired {
                            // Direct service: the local file first.
                            self.nodes[n].local[r] = true;
                            self.nodes[n].own[r] = true;
                        } else {
                            self.start_exchange(n);
                            return Ok(());
                        }
                    }
                    self.nodes[n].ops.remove(i);
                    let node = &mut self.nodes[n];
                    node.seq[r] += 1;
                    node.inflight.push((r, v));
                    self.starts[r] += 1;
                }
            },
        }
        Ok(())
    }

    /// One record update at a time: every write waiting for the record.
    fn start_exchange(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.exchange.is_some() {
            return;
        }
        let mut set: Vec<(usize, bool)> = node
            .ops
            .iter()
            .filter(|o| o.stage == Stage::Recording && matches!(o.kind, Kind::Write { .. }))
            .filter(|o| !node.own[o.r])
            .map(|o| (o.r, true))
            .collect();
        set.dedup();
        if set.is_empty() {
            return;
        }
        let id = self.nodes[n].id();
        self.nodes[n].exchange = Some(Exchange {
            id,
            set: set.clone(),
        });
        self.send(1 - n, Msg::Update { id, set });
    }

    fn complete(&mut self, n: usize, i: usize) {
        let node = &self.nodes[n];
        if !node.up || node.inflight.is_empty() {
            return;
        }
        let (r, v) = self.nodes[n].inflight.remove(i % node.inflight.len());
        if self.writeback && !self.nodes[n].suspended {
            self.nodes[n].cache[r] = Some(Cached { v, dirty: true });
        } else {
            self.primary[r] = v;
            if self.writeback {
                self.nodes[n].cache[r] = Some(Cached { v, dirty: false });
            }
        }
        self.nodes[n].dirty[r] = true;
        self.writers[r] -= 1;
        self.last_done[r] = if self.spoiled[r] { None } else { Some(v) };
        self.last_writer[r] = n;
        if self.writers[r] == 0 {
            self.spoiled[r] = false;
        }
    }

    fn claim(&mut self, n: usize, r: usize) {
        let node = &self.nodes[n];
        if !self.may_serve(n)
            || !node.dirty[r]
            || node.writing(r)
            || node.copy.is_some()
            || node.granted[r].is_some()
        {
            return;
        }
        let snap = node.seq[r];
        let stage = if self.theirs(n, r) && self.bug != Bug::CopyAlone {
            if self.quiescent(n) {
                CopyStage::Read(None)
            } else if node.lost {
                return;
            } else {
                let id = self.nodes[n].id();
                self.send(1 - n, Msg::CopyBegin { id, r });
                CopyStage::Begin(id)
            }
        } else {
            CopyStage::Read(None)
        };
        self.nodes[n].copy = Some(Copy {
            r,
            snap,
            asked: self.now,
            stage,
        });
    }

    fn copy_step(&mut self, n: usize) {
        let Some(c) = self.nodes[n].copy else { return };
        if !self.may_serve(n) {
            return;
        }
        let r = c.r;
        match c.stage {
            CopyStage::Begin(_) | CopyStage::End(..) => {}
            CopyStage::Read(grant) => {
                self.drop_clean(n, r);
                let data = self.view(n, r);
                self.set_copy_stage(n, CopyStage::Land(data, grant));
            }
            CopyStage::Land(data, grant) => {
                let in_time = grant.is_none() || self.now - c.asked <= COPY_LIMIT;
                if in_time {
                    self.secondary[r] = data;
                }
                match grant {
                    Some((id, seq)) => {
                        self.send(
                            1 - n,
                            Msg::CopyEnd {
                                id,
                                r,
                                seq,
                                landed: in_time,
                            },
                        );
                        self.set_copy_stage(n, CopyStage::End(id, in_time));
                    }
                    None => {
                        let node = &mut self.nodes[n];
                        if in_time && node.seq[r] == c.snap {
                            node.dirty[r] = false;
                        }
                        node.copy = None;
                    }
                }
            }
        }
    }

    fn set_copy_stage(&mut self, n: usize, stage: CopyStage) {
        if let Some(c) = self.nodes[n].copy.as_mut() {
            c.stage = stage;
        }
    }

    fn destage(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !self.may_serve(n) || node.forgetting.is_empty() || node.exchange.is_some() {
            return;
        }
        // The barrier: what the mirror copied is on the primary.
        self.flush(n);
        let node = &mut self.nodes[n];
        let own = node.own;
        let gone: Vec<usize> = std::mem::take(&mut node.forgetting)
            .into_iter()
            .filter(|&r| !own[r])
            .collect();
        if node.paired {
            let id = node.id();
            let set: Vec<(usize, bool)> = gone.iter().map(|&r| (r, false)).collect();
            node.exchange = Some(Exchange {
                id,
                set: set.clone(),
            });
            self.send(1 - n, Msg::Update { id, set });
        } else {
            for r in gone {
                node.local[r] = false;
            }
        }
    }

    fn receive(&mut self, n: usize, m: Msg) {
        self.nodes[n].heard = self.now;
        match m {
            Msg::Check { id, r } => self.nodes[n].answering.push(Pending { id, r, copy: false }),
            Msg::CopyBegin { id, r } => {
                if self.nodes[n].copy.is_some_and(|c| c.r == r) {
                    self.send(1 - n, Msg::Busy { id });
                } else {
                    self.nodes[n].answering.push(Pending { id, r, copy: true });
                }
            }
            Msg::Status { id } => {
                let at = self.nodes[n]
                    .ops
                    .iter()
                    .position(|o| o.stage == Stage::Checking(id));
                if let Some(i) = at {
                    let r = self.nodes[n].ops[i].r;
                    self.invalidate(n, r);
                    self.nodes[n].ops[i].stage = Stage::Recording;
                }
            }
            Msg::Update { id, set } => {
                for (r, on) in set {
                    self.hold(n, r, on);
                }
                self.send(1 - n, Msg::Done { id });
            }
            Msg::Done { id } => {
                let node = &mut self.nodes[n];
                if node.exchange.as_ref().is_some_and(|e| e.id == id) {
                    let e = node.exchange.take().expect("checked");
                    for (r, on) in e.set {
                        if on {
                            node.own[r] = true;
                        }
                    }
                }
            }
            Msg::Grant { id, seq } => {
                if self.nodes[n]
                    .copy
                    .is_some_and(|c| c.stage == CopyStage::Begin(id))
                {
                    self.set_copy_stage(n, CopyStage::Read(Some((id, seq))));
                }
            }
            Msg::Busy { id } => {
                if self.nodes[n]
                    .copy
                    .is_some_and(|c| c.stage == CopyStage::Begin(id))
                {
                    self.nodes[n].copy = None;
                }
            }
            Msg::CopyEnd { id, r, seq, landed } => {
                let node = &mut self.nodes[n];
                if node.granted[r].is_some_and(|(g, _)| g == id) {
                    node.granted[r] = None;
                }
                let unchanged = node.seq[r] == seq;
                if landed && unchanged && !node.writing(r) {
                    node.dirty[r] = false;
                }
                self.send(1 - n, Msg::Ended { id, unchanged });
            }
            Msg::Ended { id, unchanged } => {
                let node = &mut self.nodes[n];
                if let Some(c) = node.copy {
                    if let CopyStage::End(e, landed) = c.stage {
                        if e == id {
                            if landed && unchanged && node.seq[c.r] == c.snap {
                                node.dirty[c.r] = false;
                            }
                            node.copy = None;
                        }
                    }
                }
            }
        }
    }

    /// Node `n`'s copy of the other's record gains or loses `r`.
    fn hold(&mut self, n: usize, r: usize, on: bool) {
        if self.nodes[n].held[r] != on {
            self.nodes[n].held[r] = on;
            self.invalidate(n, r);
        }
    }

    /// Answers checks and copy requests whose region has no write in flight
    /// here: the cache's dirty data of it written back first.
    fn serve_pending(&mut self) {
        for n in 0..2 {
            if !self.nodes[n].up {
                continue;
            }
            let mut i = 0;
            while i < self.nodes[n].answering.len() {
                let p = self.nodes[n].answering[i].clone();
                if self.nodes[n].writing(p.r) {
                    i += 1;
                    continue;
                }
                self.nodes[n].answering.remove(i);
                if p.copy || self.bug != Bug::CheckNoFlush {
                    self.write_back(n, p.r);
                }
                if !p.copy {
                    self.send(1 - n, Msg::Status { id: p.id });
                } else if self.nodes[n].copy.is_some_and(|c| c.r == p.r) {
                    self.send(1 - n, Msg::Busy { id: p.id });
                } else {
                    self.nodes[n].granted[p.r] = Some((p.id, self.now));
                    self.seen.grants += 1;
                    let seq = self.nodes[n].seq[p.r];
                    self.send(1 - n, Msg::Grant { id: p.id, seq });
                }
            }
        }
    }

    /// Direct service: the lease says so, then the record goes into the
    /// local file, durably.
    fn go_local(&mut self, n: usize) {
        let gen = self.nodes[n].gen;
        let l = &mut self.leases[n];
        if l.owner == n && l.gen == gen {
            l.direct = true;
            l.counter += 1;
        }
        let node = &mut self.nodes[n];
        if let Some(e) = node.exchange.take() {
            for (r, on) in e.set {
                if on {
                    node.own[r] = true;
                }
            }
        }
        node.state_paired = false;
        node.local = node.image();
        node.paired = false;
    }

    fn tick(&mut self) {
        self.now += 1;
        for n in 0..2 {
            if !self.nodes[n].up {
                continue;
            }
            // Renewals.
            let l = &mut self.leases[n];
            if l.owner == n
                && l.gen == self.nodes[n].gen
                && self.now - self.nodes[n].last_renew >= RENEW_EVERY
            {
                l.counter += 1;
                self.nodes[n].last_renew = self.now;
            }
            // Grants that were not ended expire.
            for r in 0..R {
                if let Some((_, at)) = self.nodes[n].granted[r] {
                    if self.now - at > GRANT_EXPIRY {
                        self.nodes[n].granted[r] = None;
                    }
                }
            }
        }
        // Heartbeats, and a lost link seen.
        let both = self.nodes[0].up && self.nodes[1].up;
        for n in 0..2 {
            if !self.nodes[n].up {
                continue;
            }
            if both && self.link_up && !self.broken && !self.nodes[n].lost {
                self.nodes[n].heard = self.now;
            }
            if !self.nodes[n].lost && self.now - self.nodes[n].heard >= HEARTBEAT {
                self.nodes[n].lost = true;
                self.trace.push(format!("  node {n}: link lost"));
                if n == 1 && self.bug != Bug::NoSuspend && !self.nodes[n].peer_gone {
                    self.suspend(n);
                }
            }
            // A lost link: the exchange in flight ends in direct service.
            let node = &self.nodes[n];
            let may_direct = n == 0 || node.peer_gone || self.bug == Bug::NoSuspend;
            if node.lost && node.paired && may_direct && self.now - node.heard >= HEARTBEAT {
                self.go_local(n);
                self.trace.push(format!("  node {n}: serves directly"));
            }
        }
        if both && self.link_up && (self.nodes[0].lost || self.nodes[1].lost) {
            self.reconnect();
        }
        // Each node watches the other's lease.
        for n in 0..2 {
            let o = 1 - n;
            if !self.nodes[n].up {
                continue;
            }
            let l = self.leases[o];
            if self.nodes[n].seen != Some(l) {
                self.nodes[n].seen = Some(l);
                self.nodes[n].seen_at = self.now;
            }
            if l.owner == o && !l.released && self.now - self.nodes[n].seen_at >= EXPIRY {
                self.take_over(n);
            }
        }
    }

    fn suspend(&mut self, n: usize) {
        self.nodes[n].suspended = true;
        self.flush(n);
        // A copy not yet landed is abandoned (one granted stays granted
        // until it expires).
        if let Some(c) = self.nodes[n].copy {
            if !matches!(c.stage, CopyStage::End(..)) {
                self.nodes[n].copy = None;
            }
        }
        self.seen.suspends += 1;
        self.trace.push(format!("  node {n}: suspended"));
    }

    /// The link is back: each node hands its record to the other, and both
    /// serve again, paired.
    fn reconnect(&mut self) {
        self.epoch += 1;
        self.broken = false;
        self.net.clear();
        for n in 0..2 {
            let img = self.nodes[1 - n].image();
            for r in 0..R {
                self.hold(n, r, img[r]);
                self.invalidate(n, r);
            }
            let node = &mut self.nodes[n];
            node.held_fresh = true;
            node.peer_gone = false;
            node.lost = false;
            node.suspended = false;
            node.heard = self.now;
            node.answering.clear();
            if !node.paired {
                node.paired = true;
                node.local = [true; R];
                node.state_paired = true;
                let gen = node.gen;
                let l = &mut self.leases[n];
                if l.owner == n && l.gen == gen {
                    l.direct = false;
                    l.counter += 1;
                }
            }
        }
        // What was asked in the old connection is asked again.
        for n in 0..2 {
            for i in 0..self.nodes[n].ops.len() {
                if let Stage::Checking(_) = self.nodes[n].ops[i].stage {
                    self.nodes[n].ops[i].stage = Stage::Start;
                }
            }
            if let Some(e) = self.nodes[n].exchange.clone() {
                self.send(
                    1 - n,
                    Msg::Update {
                        id: e.id,
                        set: e.set,
                    },
                );
            }
            // A copy asked or ended in the old connection is not marked
            // clean (its grant expires): it copies again.
            if self.nodes[n]
                .copy
                .is_some_and(|c| matches!(c.stage, CopyStage::Begin(_) | CopyStage::End(..)))
            {
                self.nodes[n].copy = None;
            }
        }
        self.seen.reconnects += 1;
        self.trace.push("  reconnected: records exchanged".into());
    }

    fn take_over(&mut self, n: usize) {
        let o = 1 - n;
        let all = self.leases[o].direct;
        self.seen.takeovers += 1;
        self.trace.push(format!(
            "  node {n}: takes node {o}'s record over{}",
            if all { " (whole device)" } else { "" }
        ));
        self.leases[o] = LeaseBlock {
            owner: n,
            gen: self.leases[o].gen + 1,
            counter: 1,
            released: false,
            direct: false,
        };
        // Its own record cannot reach the dead node: the local file. Then
        // the dead node's regions join it, dirty (durably, before they
        // leave the held record), and its mirror copies them through its
        // own cache: a copy straight from the primary would miss what
        // this node's cache holds dirty of them (the simulation found it).
        if self.nodes[n].paired {
            self.go_local(n);
        }
        let held = self.nodes[n].held;
        let node = &mut self.nodes[n];
        for r in 0..R {
            if held[r] || all {
                node.own[r] = true;
                node.local[r] = true;
                node.dirty[r] = true;
                // A copy in flight began before: it must not clean it.
                node.seq[r] += 1;
            }
        }
        for r in 0..R {
            self.hold(n, r, false);
            self.invalidate(n, r);
        }
        let node = &mut self.nodes[n];
        node.held_fresh = true;
        node.peer_gone = true;
        node.suspended = false;
        self.leases[o].released = true;
    }

    fn crash(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        self.trace.push(format!("  node {n} dies"));
        let node = &mut self.nodes[n];
        node.up = false;
        // What its cache held dirty, and its writes in flight, are lost.
        let mut lost = [false; R];
        for r in 0..R {
            if matches!(node.cache[r], Some(Cached { dirty: true, .. })) {
                lost[r] = true;
            }
            node.cache[r] = None;
        }
        for &(r, _) in &node.inflight {
            lost[r] = true;
            self.writers[r] -= 1;
        }
        for op in &node.ops {
            if let Kind::Write { .. } = op.kind {
                self.writers[op.r] -= 1;
            }
        }
        node.inflight.clear();
        node.ops.clear();
        node.copy = None;
        node.exchange = None;
        node.forgetting.clear();
        node.answering.clear();
        node.granted = [None; R];
        for r in 0..R {
            if lost[r] {
                self.last_done[r] = None;
                self.starts[r] += 1;
            }
            if self.writers[r] == 0 {
                self.spoiled[r] = false;
            }
        }
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].up {
            return;
        }
        let o = 1 - n;
        let l = self.leases[n];
        let node = &mut self.nodes[n];
        node.up = true;
        node.last_renew = self.now;
        node.seen = None;
        node.seen_at = self.now;
        node.held_fresh = false;
        node.peer_gone = false;
        node.suspended = false;
        // Not heard since it died: a quiet period from now.
        node.lost = true;
        node.heard = self.now;
        node.next_id += 1000;
        if l.owner == n && l.gen == node.gen {
            self.leases[n].counter += 1;
            let reachable = self.link_up && self.nodes[o].up;
            let held_there = self.nodes[o].held;
            let node = &mut self.nodes[n];
            let recovered = match (node.state_paired, reachable) {
                (true, true) => held_there,
                (false, true) => {
                    let mut r = node.local;
                    for i in 0..R {
                        r[i] |= held_there[i];
                    }
                    r
                }
                (_, false) => node.local,
            };
            node.own = recovered;
            node.dirty = recovered;
            self.trace
                .push(format!("  node {n} restarts, resyncs {recovered:?}"));
        } else if l.released {
            // Taken over: a fresh record at a new generation.
            let gen = l.gen + 1;
            self.leases[n] = LeaseBlock {
                owner: n,
                gen,
                counter: 1,
                released: false,
                direct: false,
            };
            let node = &mut self.nodes[n];
            node.gen = gen;
            node.own = [false; R];
            node.dirty = [false; R];
            node.local = [false; R];
            node.state_paired = false;
            self.trace
                .push(format!("  node {n} restarts fresh at generation {gen}"));
        } else {
            self.nodes[n].up = false;
            return;
        }
        self.go_local(n);
        if n == 1 {
            self.suspend(n);
        }
        if self.link_up && self.nodes[o].up {
            self.nodes[o].lost = true;
            self.reconnect();
        }
    }

    /// The durable record that recovery of node `n`'s regions would use.
    fn recorded(&self, n: usize) -> [bool; R] {
        let mut rec = self.nodes[1 - n].held;
        if !self.nodes[n].state_paired {
            for r in 0..R {
                rec[r] |= self.nodes[n].local[r];
            }
        }
        rec
    }

    /// Every region whose data may differ is in a durable record.
    fn check(&self) -> Result<(), String> {
        let (a, b) = (self.recorded(0), self.recorded(1));
        for r in 0..R {
            let mut values = vec![("primary", self.primary[r])];
            for node in &self.nodes {
                if let Some(Cached { v, dirty: true }) = node.cache[r] {
                    values.push(("a dirty cache", v));
                }
                for &(w, v) in &node.inflight {
                    if w == r {
                        values.push(("a write in flight", v));
                    }
                }
            }
            for (what, v) in values {
                if v != self.secondary[r] && !a[r] && !b[r] {
                    return Err(format!(
                        "region {r} differs ({what} v{v}, secondary v{}) and no durable record lists it",
                        self.secondary[r]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Heals every fault, lets both nodes finish, and checks the end.
    fn finish(&mut self) -> Result<(), String> {
        self.step(Act::Heal)?;
        for n in 0..2 {
            self.step(Act::Restart(n))?;
        }
        for _ in 0..40 {
            self.step(Act::Tick)?;
            for n in 0..2 {
                for _ in 0..MAX_OPS * 3 {
                    self.step(Act::Progress(n, 0))?;
                    while !self.net.is_empty() {
                        self.step(Act::Deliver(0))?;
                    }
                    self.step(Act::Complete(n, 0))?;
                    self.check()?;
                }
                self.step(Act::Flush(n))?;
                for r in 0..R {
                    self.step(Act::Copy(n, r))?;
                    for _ in 0..4 {
                        while !self.net.is_empty() {
                            self.step(Act::Deliver(0))?;
                        }
                        self.step(Act::CopyStep(n))?;
                    }
                    self.check()?;
                }
            }
            let idle = self.nodes.iter().all(|n| {
                n.up && n.ops.is_empty() && n.inflight.is_empty() && n.dirty.iter().all(|d| !d)
            });
            if idle {
                break;
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if node.dirty.iter().any(|&d| d) || !node.ops.is_empty() {
                return Err(format!(
                    "node {n} never finished: dirty {:?}, {} ops",
                    node.dirty,
                    node.ops.len()
                ));
            }
        }
        if self.primary != self.secondary {
            return Err(format!(
                "primary {:?} and secondary {:?} differ at the end",
                self.primary, self.secondary
            ));
        }
        Ok(())
    }
}

/// Runs `acts`; the error names the broken rule, with the trace.
fn run(bug: Bug, writeback: bool, acts: &[Act]) -> Result<(), String> {
    run_seen(bug, writeback, acts).map(|_| ())
}

fn run_seen(bug: Bug, writeback: bool, acts: &[Act]) -> Result<Seen, String> {
    let mut w = World::new(bug, writeback);
    let fail = |w: &World, e: String| {
        let tail: Vec<&String> = w.trace.iter().rev().take(40).collect();
        Err(format!("{e}\n  last steps (newest first): {tail:#?}"))
    };
    for &a in acts {
        if let Err(e) = w.step(a).and_then(|()| w.check()) {
            return fail(&w, e);
        }
    }
    match w.finish() {
        Ok(()) => Ok(w.seen),
        Err(e) => fail(&w, e),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40000))]

    #[test]
    fn dual_active_reads_what_the_other_node_wrote_and_mirrors_both(
        acts in prop::collection::vec(act(), 0..150),
        writeback in any::<bool>(),
    ) {
        if let Err(e) = run(Bug::None, writeback, &acts) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The run in which the simulation found that a takeover copying the dead
/// node's regions straight from the primary misses what the survivor's
/// cache holds dirty of them (its copy had marked the region clean).
#[test]
fn a_takeover_copies_through_the_survivors_cache() {
    use Act::*;
    let acts = [
        Tick,
        Read(1, 0),
        Write(1, 3),
        Write(0, 3),
        Progress(0, 0),
        Progress(1, 1),
        Tick,
        Progress(1, 1),
        Tick,
        Crash(1),
        Tick,
        Tick,
        Tick,
        Deliver(0),
        Tick,
        Tick,
        Tick,
        Tick,
        Progress(0, 0),
        Tick,
        Complete(0, 0),
        Tick,
        Copy(0, 3),
        Tick,
        CopyStep(0),
        CopyStep(0),
        Tick,
    ];
    run(Bug::None, true, &acts).unwrap();
}

/// Random runs of a planted bug (with a writeback cache) until one breaks
/// a rule.
fn caught(bug: Bug) -> String {
    let mut next = seeded(prop::collection::vec(act(), 20..200), 11);
    for _ in 0..20_000 {
        let acts = next();
        if let Err(e) = run(bug, true, &acts) {
            eprintln!("{bug:?}: {}", e.lines().next().unwrap_or_default());
            return e;
        }
    }
    panic!("{bug:?} was never caught");
}

/// The random runs reach what the properties are about, in both cache
/// modes: reads of what the other node wrote, grants, a suspension, the
/// quiet period, reconnects and takeovers.
#[test]
fn the_runs_reach_every_path() {
    for writeback in [false, true] {
        let mut next = seeded(prop::collection::vec(act(), 50..200), 3);
        let mut all = Seen::default();
        for _ in 0..2000 {
            let acts = next();
            let s = run_seen(Bug::None, writeback, &acts).unwrap();
            all.cross_reads += s.cross_reads;
            all.grants += s.grants;
            all.suspends += s.suspends;
            all.quiet_serves += s.quiet_serves;
            all.reconnects += s.reconnects;
            all.takeovers += s.takeovers;
        }
        eprintln!("writeback {writeback}: {all:?}");
        let Seen {
            cross_reads,
            grants,
            suspends,
            quiet_serves,
            reconnects,
            takeovers,
        } = all;
        for (what, n) in [
            ("cross-node reads", cross_reads),
            ("grants", grants),
            ("suspensions", suspends),
            ("quiet serves", quiet_serves),
            ("reconnects", reconnects),
            ("takeovers", takeovers),
        ] {
            assert!(
                n >= 20,
                "only {n} {what} in 2000 runs (writeback {writeback})"
            );
        }
    }
}

#[test]
fn it_catches_a_skipped_status_check() {
    let e = caught(Bug::SkipCheck);
    assert!(e.contains("returned"), "{e}");
}

#[test]
fn it_catches_a_status_answered_with_data_still_cached() {
    let e = caught(Bug::CheckNoFlush);
    assert!(e.contains("returned"), "{e}");
}

#[test]
fn it_catches_a_cache_that_is_never_invalidated() {
    let e = caught(Bug::NoInvalidate);
    assert!(e.contains("returned"), "{e}");
}

#[test]
fn it_catches_a_copy_that_does_not_ask_the_other_writer() {
    let e = caught(Bug::CopyAlone);
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn it_catches_a_higher_node_that_does_not_suspend_on_a_cut_link() {
    caught(Bug::NoSuspend);
}
