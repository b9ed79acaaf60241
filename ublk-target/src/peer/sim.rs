//! A deterministic simulation of the two-appliance protocol, as a property
//! test: node A (the owner: record copy, misses sent to the peer, direct
//! service, lazy removal after the primary flush, lease renewal and
//! self-fencing), node B (the holder: sessions, generations, idempotent
//! updates, the lease watch and the takeover copy), a shared primary with a
//! volatile cache, a secondary, the lease block, and a network that drops,
//! delays, duplicates, reorders and partitions. Either node crashes at any
//! step, and the storage may lose its cache.
//!
//! It models the protocol's rules (the ones `store`, `holder`, `takeover`
//! and `lease` implement), one step at a time, so that every interleaving a
//! seed picks is replayable. After every step:
//! - every region whose data may differ between primary and secondary (in
//!   what a host reads, and in what survives a loss of the storage's cache)
//!   is in some durable record: B's held record or A's local file;
//!
//! and at the end, once every fault is healed and the survivor has copied
//! what its record lists, the two devices are identical.
//!
//! Planted bugs show that it catches what it is for: acknowledging a write
//! before the peer's acknowledgement, a takeover without the lease, a
//! removal before the primary flush, and a holder that keeps one sequence
//! across an owner's restarts (the bug it found in the holder).

// Regions index several parallel arrays (primary, secondary, records).
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use rand::{Rng, SeedableRng};

const R: usize = 6;
/// The lease timeout, in steps of the simulated clock.
const T: u64 = 8;
const RENEW_EVERY: u64 = 2;
/// A takeover waits the timeout plus half of it, unchanged.
const EXPIRY: u64 = T + T / 2;
/// An exchange that takes this long sends A to direct service.
const EXCHANGE_TIMEOUT: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    AckBeforePeerAck,
    TakeoverWithoutLease,
    RemoveBeforeFlush,
    SequenceAcrossSessions,
    /// Direct service not said in the lease: a takeover trusts B's record.
    NoDirectFlag,
}

#[derive(Debug, Clone)]
enum Msg {
    /// A's update: regions set or cleared, in session `session`.
    Update {
        session: u64,
        seq: u64,
        gen: u64,
        set: Vec<(usize, bool)>,
    },
    Done {
        session: u64,
        seq: u64,
    },
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A write to `r` (version `v`) that missed, waiting for B.
    Miss {
        seq: u64,
        since: u64,
        r: usize,
        v: u64,
    },
    /// The whole record handed to B (back to paired mode).
    Pair { seq: u64, since: u64 },
    /// Removals sent to B.
    Remove { seq: u64, since: u64 },
}

#[derive(Debug, Clone)]
struct NodeA {
    up: bool,
    /// Refused by the lease or by B: it never serves again.
    out: bool,
    gen: u64,
    /// A's copy of the record it holds on B (or locally).
    copy: [bool; R],
    dirty: [bool; R],
    /// Evicted, removal not yet sent.
    forgetting: Vec<usize>,
    paired: bool,
    /// The local record file (durable), and the state file's word.
    local: [bool; R],
    state_paired: bool,
    waiting: Option<Waiting>,
    valid_until: u64,
    last_renew: u64,
    session: u64,
    seq: u64,
    retry_at: u64,
}

#[derive(Debug, Clone)]
struct NodeB {
    up: bool,
    /// Durable (a region file, written before each Done).
    held: [bool; R],
    gen: u64,
    session: u64,
    applied: u64,
    /// The lease as last seen, and since when.
    seen: (u8, u64, u64, bool),
    seen_at: u64,
    last_heard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseBlock {
    owner: u8,
    gen: u64,
    counter: u64,
    released: bool,
    /// The owner serves directly: B's record may lack regions.
    direct: bool,
}

struct World {
    bug: Bug,
    now: u64,
    version: u64,
    primary: [u64; R],
    /// What the primary holds durably (its cache may be lost).
    primary_durable: [u64; R],
    secondary: [u64; R],
    lease: LeaseBlock,
    a: NodeA,
    b: NodeB,
    /// In flight: (to B?, message).
    net: Vec<(bool, Msg)>,
    partitioned: bool,
    trace: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Write(usize),
    Copy(usize),
    Evict(usize),
    Destage,
    Flush,
    Tick,
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Partition(bool),
    CrashA,
    RestartA,
    CrashB,
    RestartB,
    CacheLoss,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => (0..R).prop_map(Act::Write),
        3 => (0..R).prop_map(Act::Copy),
        2 => (0..R).prop_map(Act::Evict),
        2 => Just(Act::Destage),
        1 => Just(Act::Flush),
        6 => Just(Act::Tick),
        6 => (0..8usize).prop_map(Act::Deliver),
        1 => (0..8usize).prop_map(Act::Drop),
        1 => (0..8usize).prop_map(Act::Duplicate),
        1 => any::<bool>().prop_map(Act::Partition),
        1 => Just(Act::CrashA),
        1 => Just(Act::RestartA),
        1 => Just(Act::CrashB),
        1 => Just(Act::RestartB),
        1 => Just(Act::CacheLoss),
    ]
}

impl World {
    fn new(bug: Bug) -> World {
        let mut w = World {
            bug,
            now: 0,
            version: 0,
            primary: [0; R],
            primary_durable: [0; R],
            secondary: [0; R],
            lease: LeaseBlock {
                owner: 1,
                gen: 1,
                counter: 1,
                released: false,
                direct: false,
            },
            a: NodeA {
                up: true,
                out: false,
                gen: 1,
                copy: [false; R],
                dirty: [false; R],
                forgetting: Vec::new(),
                paired: true,
                local: [true; R],
                state_paired: true,
                waiting: None,
                valid_until: T,
                last_renew: 0,
                session: 1,
                seq: 0,
                retry_at: 0,
            },
            b: NodeB {
                up: true,
                held: [false; R],
                gen: 1,
                session: 1,
                applied: 0,
                seen: (1, 1, 1, false),
                seen_at: 0,
                last_heard: 0,
            },
            net: Vec::new(),
            partitioned: false,
            trace: Vec::new(),
        };
        w.trace.push("start: A owns generation 1, paired".into());
        w
    }

    fn a_may_write(&self) -> bool {
        self.a.up && !self.a.out && self.now < self.a.valid_until
    }

    fn send(&mut self, to_b: bool, m: Msg) {
        self.net.push((to_b, m));
    }

    fn next_seq(&mut self) -> u64 {
        self.a.seq += 1;
        self.a.seq
    }

    /// What A's record holds, removals pending included (its file image).
    fn a_image(&self) -> [bool; R] {
        let mut img = self.a.copy;
        for &r in &self.a.forgetting {
            img[r] = true;
        }
        img
    }

    fn issue_write(&mut self, r: usize, v: u64) {
        self.primary[r] = v;
        self.a.dirty[r] = true;
    }

    fn step(&mut self, act: Act) {
        self.trace.push(format!("t={} {act:?}", self.now));
        match act {
            Act::Write(r) => self.write(r),
            Act::Copy(r) => {
                if self.a_may_write() && self.a.dirty[r] {
                    self.secondary[r] = self.primary[r];
                    self.a.dirty[r] = false;
                }
            }
            Act::Evict(r) => {
                let busy = matches!(self.a.waiting, Some(Waiting::Miss { r: w, .. }) if w == r);
                if self.a.up && self.a.copy[r] && !self.a.dirty[r] && !busy {
                    self.a.copy[r] = false;
                    self.a.forgetting.push(r);
                }
            }
            Act::Destage => self.destage(),
            Act::Flush => self.primary_durable = self.primary,
            Act::Tick => self.tick(),
            Act::Deliver(i) => {
                if !self.net.is_empty() {
                    let (to_b, m) = self.net.remove(i % self.net.len());
                    if !self.partitioned {
                        if to_b {
                            self.b_receives(m)
                        } else {
                            self.a_receives(m)
                        }
                    }
                }
            }
            Act::Drop(i) => {
                if !self.net.is_empty() {
                    let n = self.net.len();
                    self.net.remove(i % n);
                }
            }
            Act::Duplicate(i) => {
                if !self.net.is_empty() {
                    let m = self.net[i % self.net.len()].clone();
                    self.net.push(m);
                }
            }
            Act::Partition(p) => self.partitioned = p,
            Act::CrashA => {
                self.a.up = false;
                self.a.waiting = None;
            }
            Act::RestartA => self.restart_a(),
            Act::CrashB => self.b.up = false,
            Act::RestartB => self.b.up = true,
            Act::CacheLoss => {
                // A power loss of the storage: what was not flushed is gone,
                // and so is the node serving from it (a restart resyncs
                // what its record lists).
                self.primary = self.primary_durable;
                self.a.up = false;
                self.a.waiting = None;
            }
        }
    }

    fn write(&mut self, r: usize) {
        if !self.a_may_write() {
            return;
        }
        self.version += 1;
        let v = self.version;
        if self.a.copy[r] {
            // A hit: no message.
            self.issue_write(r, v);
            return;
        }
        if self.a.waiting.is_some() {
            // A miss queued behind the exchange in flight (the store is
            // busy): not issued, not acknowledged.
            return;
        }
        if !self.a.paired {
            // Direct service: the local file first.
            self.a.local[r] = true;
            self.a.copy[r] = true;
            self.issue_write(r, v);
            return;
        }
        let seq = self.next_seq();
        let (session, gen) = (self.a.session, self.a.gen);
        self.send(
            true,
            Msg::Update {
                session,
                seq,
                gen,
                set: vec![(r, true)],
            },
        );
        self.a.waiting = Some(Waiting::Miss {
            seq,
            since: self.now,
            r,
            v,
        });
        if self.bug == Bug::AckBeforePeerAck {
            self.issue_write(r, v);
        }
    }

    fn destage(&mut self) {
        if !self.a.up || self.a.forgetting.is_empty() || self.a.waiting.is_some() {
            return;
        }
        if self.bug != Bug::RemoveBeforeFlush {
            // The barrier: what the mirror copied is durable on the primary.
            self.primary_durable = self.primary;
        }
        // A region written again since its eviction stays (as the record
        // forgets only what is still out of its image).
        let copy = self.a.copy;
        let gone: Vec<usize> = std::mem::take(&mut self.a.forgetting)
            .into_iter()
            .filter(|&r| !copy[r])
            .collect();
        if self.a.paired {
            let seq = self.next_seq();
            let (session, gen) = (self.a.session, self.a.gen);
            let set = gone.iter().map(|&r| (r, false)).collect();
            self.send(
                true,
                Msg::Update {
                    session,
                    seq,
                    gen,
                    set,
                },
            );
            self.a.waiting = Some(Waiting::Remove {
                seq,
                since: self.now,
            });
        } else {
            for r in gone {
                self.a.local[r] = false;
            }
        }
    }

    /// Direct service: the lease says so (a takeover then copies the whole
    /// device), then the whole record goes into the local file, durably.
    fn go_local(&mut self) {
        if self.bug != Bug::NoDirectFlag && self.lease.owner == 1 && self.lease.gen == self.a.gen {
            self.lease.direct = true;
            self.lease.counter += 1;
        }
        self.a.state_paired = false;
        self.a.local = self.a_image();
        self.a.paired = false;
        self.a.retry_at = self.now + 2;
    }

    fn tick(&mut self) {
        self.now += 1;
        // A renews its lease: read, check, write.
        if self.a.up && !self.a.out && self.now - self.a.last_renew >= RENEW_EVERY {
            if self.lease.owner == 1 && self.lease.gen == self.a.gen {
                self.lease.counter += 1;
                self.a.last_renew = self.now;
                self.a.valid_until = self.now + T;
            } else {
                self.a.out = true;
                self.trace.push("  A: lease taken over, fenced".into());
            }
        }
        // A's exchange in flight times out: direct service.
        if self.a.up {
            match self.a.waiting {
                Some(Waiting::Miss { since, r, v, .. }) if self.now - since >= EXCHANGE_TIMEOUT => {
                    self.a.waiting = None;
                    self.a.copy[r] = true;
                    self.go_local();
                    if self.a_may_write() {
                        self.issue_write(r, v);
                    }
                    self.trace
                        .push("  A: peer timed out, serving directly".into());
                }
                Some(Waiting::Remove { since, .. } | Waiting::Pair { since, .. })
                    if self.now - since >= EXCHANGE_TIMEOUT =>
                {
                    self.a.waiting = None;
                    self.go_local();
                }
                None if !self.a.paired && !self.a.out && self.now >= self.a.retry_at => {
                    // Try the peer again: a new connection (a new session),
                    // the whole record.
                    self.a.session += 1;
                    let seq = self.next_seq();
                    let img = self.a_image();
                    let (session, gen) = (self.a.session, self.a.gen);
                    let set = (0..R).map(|r| (r, img[r])).collect();
                    self.send(
                        true,
                        Msg::Update {
                            session,
                            seq,
                            gen,
                            set,
                        },
                    );
                    self.a.waiting = Some(Waiting::Pair {
                        seq,
                        since: self.now,
                    });
                    self.a.retry_at = self.now + 2;
                }
                _ => {}
            }
        }
        // B watches the lease.
        if self.b.up {
            let l = self.lease;
            let seen = (l.owner, l.gen, l.counter, l.released || l.direct);
            if seen != self.b.seen {
                self.b.seen = seen;
                self.b.seen_at = self.now;
            }
            let expired = l.owner == 1 && !l.released && self.now - self.b.seen_at >= EXPIRY;
            let silent = l.owner == 1 && self.now - self.b.last_heard >= 4;
            if expired || (self.bug == Bug::TakeoverWithoutLease && silent) {
                self.take_over();
            }
        }
    }

    fn take_over(&mut self) {
        // After direct service B's record may lack regions: all of them.
        let all = self.lease.direct;
        self.trace.push(format!(
            "  B: takes the device over{}",
            if all { " (whole device)" } else { "" }
        ));
        if self.bug != Bug::TakeoverWithoutLease {
            self.lease = LeaseBlock {
                owner: 2,
                gen: self.lease.gen + 1,
                counter: 1,
                released: false,
                direct: false,
            };
        }
        self.b.gen = self.lease.gen.max(self.b.gen + 1);
        // Every held region copied from the primary, the copy made durable,
        // the primary flushed, then cleared.
        for r in 0..R {
            if self.b.held[r] || all {
                self.secondary[r] = self.primary[r];
            }
        }
        self.primary_durable = self.primary;
        self.b.held = [false; R];
        if self.bug != Bug::TakeoverWithoutLease {
            self.lease.released = true;
        }
    }

    fn b_receives(&mut self, m: Msg) {
        if !self.b.up {
            return;
        }
        let Msg::Update {
            session,
            seq,
            gen,
            set,
        } = m
        else {
            return;
        };
        self.b.last_heard = self.now;
        if gen < self.b.gen {
            self.send(false, Msg::Refused);
            return;
        }
        if session > self.b.session {
            // A hello: a new session numbers from 1 again.
            self.b.session = session;
            if self.bug != Bug::SequenceAcrossSessions {
                self.b.applied = 0;
            }
        } else if session < self.b.session {
            // A superseded connection: refused.
            self.send(false, Msg::Refused);
            return;
        }
        if seq > self.b.applied {
            for (r, on) in set {
                self.b.held[r] = on;
            }
            self.b.applied = seq;
        }
        self.send(false, Msg::Done { session, seq });
    }

    fn a_receives(&mut self, m: Msg) {
        if !self.a.up {
            return;
        }
        match m {
            Msg::Refused => {
                // Only a current exchange's refusal counts (a late one of a
                // superseded connection is not read by the new process).
                if self.a.waiting.is_some() {
                    self.a.out = true;
                    self.a.waiting = None;
                    self.trace.push("  A: refused, fenced".into());
                }
            }
            Msg::Done { session, seq } if session == self.a.session => match self.a.waiting {
                Some(Waiting::Miss { seq: s, r, v, .. }) if s == seq => {
                    self.a.waiting = None;
                    self.a.copy[r] = true;
                    if self.a_may_write() && self.bug != Bug::AckBeforePeerAck {
                        self.issue_write(r, v);
                    }
                }
                Some(Waiting::Remove { seq: s, .. }) if s == seq => self.a.waiting = None,
                Some(Waiting::Pair { seq: s, .. }) if s == seq => {
                    self.a.waiting = None;
                    self.a.paired = true;
                    self.a.local = [true; R];
                    self.a.state_paired = true;
                    if self.lease.owner == 1 && self.lease.gen == self.a.gen {
                        self.lease.direct = false;
                        self.lease.counter += 1;
                    }
                    self.trace.push("  A: paired again".into());
                }
                _ => {}
            },
            Msg::Done { .. } => {}
            Msg::Update { .. } => {}
        }
    }

    fn restart_a(&mut self) {
        if self.a.up || self.a.out {
            return;
        }
        self.a.up = true;
        self.a.waiting = None;
        self.a.forgetting.clear();
        self.a.seq = 0;
        self.a.session += 1;
        // The lease: this node's own, at its generation, or it must not serve.
        if self.lease.owner != 1 || self.lease.gen != self.a.gen {
            self.a.out = true;
            self.trace.push("  A: restart refused by the lease".into());
            return;
        }
        self.lease.counter += 1;
        self.a.last_renew = self.now;
        self.a.valid_until = self.now + T;
        let reachable = self.b.up && !self.partitioned && self.b.gen == self.a.gen;
        let recovered = match (self.a.state_paired, reachable) {
            (true, true) => self.b.held,
            (false, true) => {
                let mut r = self.a.local;
                for i in 0..R {
                    r[i] |= self.b.held[i];
                }
                r
            }
            (_, false) => self.a.local,
        };
        self.a.copy = recovered;
        self.a.dirty = recovered;
        if reachable {
            // Paired at once: the whole record to B (a new session), then
            // the local file says every region.
            self.b.session = self.a.session;
            if self.bug != Bug::SequenceAcrossSessions {
                self.b.applied = 0;
            }
            self.b.held = recovered;
            self.a.paired = true;
            self.a.local = [true; R];
            self.a.state_paired = true;
            self.lease.direct = false;
        } else {
            self.go_local();
        }
        self.trace
            .push(format!("  A: restarted, resyncs {recovered:?}"));
    }

    /// The regions some durable record lists.
    fn recorded(&self) -> [bool; R] {
        let mut rec = self.b.held;
        for r in 0..R {
            rec[r] |= self.a.local[r];
        }
        rec
    }

    /// Every region that may differ is in a durable record.
    fn check(&self) -> Result<(), String> {
        let rec = self.recorded();
        for r in 0..R {
            for (what, p) in [
                ("read", self.primary[r]),
                ("durable", self.primary_durable[r]),
            ] {
                if p != self.secondary[r] && !rec[r] {
                    return Err(format!(
                        "region {r} differs ({what} primary v{p}, secondary v{}) and no durable record lists it",
                        self.secondary[r]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Heals every fault, lets the survivor finish, and checks the end.
    fn finish(&mut self) -> Result<(), String> {
        self.partitioned = false;
        self.b.up = true;
        self.restart_a();
        for _ in 0..64 {
            while !self.net.is_empty() {
                self.step(Act::Deliver(0));
                self.check()?;
            }
            for r in 0..R {
                self.step(Act::Copy(r));
            }
            self.step(Act::Tick);
            self.check()?;
            let a_serving = self.a.up && !self.a.out;
            if a_serving && self.a.dirty.iter().all(|d| !d) {
                break;
            }
            if !a_serving && self.lease.owner == 2 {
                break;
            }
        }
        if self.a.up && !self.a.out && self.a.dirty.iter().any(|&d| d) {
            return Err("A never finished its copy".into());
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
fn run(bug: Bug, acts: &[Act]) -> Result<(), String> {
    let mut w = World::new(bug);
    let fail = |w: &World, e: String| {
        let tail: Vec<&String> = w.trace.iter().rev().take(30).collect();
        Err(format!("{e}\n  last steps (newest first): {tail:#?}"))
    };
    for &a in acts {
        w.step(a);
        if let Err(e) = w.check() {
            return fail(&w, e);
        }
    }
    match w.finish() {
        Ok(()) => Ok(()),
        Err(e) => fail(&w, e),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10000))]

    #[test]
    fn the_protocol_never_leaves_a_difference_unrecorded(acts in prop::collection::vec(act(), 0..120)) {
        if let Err(e) = run(Bug::None, &acts) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Values of `strategy`, one a call, the same ones for the same seed.
pub(super) fn seeded<S: Strategy>(strategy: S, seed: u64) -> impl FnMut() -> S::Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &rng.gen::<[u8; 32]>(),
        ),
    );
    move || strategy.new_tree(&mut runner).unwrap().current()
}

/// Random runs of a planted bug until one breaks a rule.
fn caught(bug: Bug) -> String {
    let mut next = seeded(prop::collection::vec(act(), 20..160), 7);
    for _ in 0..20_000 {
        let acts = next();
        if let Err(e) = run(bug, &acts) {
            return e;
        }
    }
    panic!("{bug:?} was never caught");
}

#[test]
fn it_catches_an_ack_before_the_peers_ack() {
    let e = caught(Bug::AckBeforePeerAck);
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn it_catches_a_takeover_without_the_lease() {
    let e = caught(Bug::TakeoverWithoutLease);
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn it_catches_a_removal_before_the_flush() {
    let e = caught(Bug::RemoveBeforeFlush);
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn it_catches_one_sequence_across_an_owners_sessions() {
    let e = caught(Bug::SequenceAcrossSessions);
    assert!(e.contains("differ"), "{e}");
}

#[test]
fn it_catches_a_takeover_that_trusts_a_record_left_by_direct_service() {
    let e = caught(Bug::NoDirectFlag);
    assert!(e.contains("differ"), "{e}");
}
