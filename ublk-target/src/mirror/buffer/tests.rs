//! The write-data buffer against a model of one region: writes that begin,
//! land on the primary in any order (writes in flight together may land
//! either way round) and complete; copies that claim, take the chunks and
//! the pieces, fill from the buffer or read the primary, and end, with
//! writes between each step. Whenever the region is clean and still, the
//! secondary must hold what the primary holds. Planted bugs must be caught.

use std::ops::Range;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{Bug, Taken, WriteBuffer};
use crate::record::{ChunkMask, CopyClaim, RegionStates};
use crate::region::RegionView;

/// One 64 KiB region of 4 KiB chunks, written in 1 KiB units.
const REGION: usize = 64 << 10;
const CHUNK: usize = 4 << 10;
const UNIT: usize = 1 << 10;

#[derive(Debug, Clone)]
enum Step {
    /// A write of `units` KiB at unit `at` begins (if fewer than 4 are in
    /// flight).
    Begin { at: usize, units: usize },
    /// The `n`th write in flight (modulo their number) lands on the primary.
    Land(usize),
    /// The `n`th landed write (modulo) completes; `fail` keeps no data.
    Complete { n: usize, fail: bool },
    /// The copy claims the region.
    Claim,
    /// The copy takes the chunks and pieces and gathers what it sends.
    Take,
    /// The copy lands on the secondary and ends (`ok`), or fails.
    End { ok: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Half the writes in the first two chunks, so that they overlap.
        4 => (prop_oneof![0..8usize, 0..REGION / UNIT], 1..=8usize).prop_map(|(at, units)| {
            Step::Begin {
                at,
                units: units.min(REGION / UNIT - at),
            }
        }),
        4 => (0..4usize).prop_map(Step::Land),
        4 => (0..4usize, prop::bool::weighted(0.1)).prop_map(|(n, fail)| Step::Complete { n, fail }),
        2 => Just(Step::Claim),
        2 => Just(Step::Take),
        2 => prop::bool::weighted(0.9).prop_map(|ok| Step::End { ok }),
    ]
}

struct Write {
    range: Range<usize>,
    began: u32,
    data: Vec<u8>,
    landed: bool,
}

#[derive(Default)]
enum Copy {
    #[default]
    Idle,
    Claimed(CopyClaim),
    /// What it will write to the secondary, by chunk.
    Taken(CopyClaim, ChunkMask, Vec<(usize, Vec<u8>)>),
}

struct World {
    states: RegionStates,
    buffer: WriteBuffer,
    primary: Vec<u8>,
    secondary: Vec<u8>,
    writes: Vec<Write>,
    copy: Copy,
    stamp: u8,
    /// Bytes sent from the buffer (the test must exercise that path).
    from_buffer: usize,
}

impl World {
    fn new(bug: Bug, budget: u64) -> World {
        let mut buffer = WriteBuffer::new(budget);
        buffer.bug = bug;
        World {
            states: RegionStates::new(1),
            buffer,
            primary: vec![0; REGION],
            secondary: vec![0; REGION],
            writes: Vec::new(),
            copy: Copy::Idle,
            stamp: 0,
            from_buffer: 0,
        }
    }

    fn mask(range: &Range<usize>) -> ChunkMask {
        let (first, last) = (range.start / CHUNK, (range.end - 1) / CHUNK);
        (first..=last).fold(0, |m, c| m | 1 << c)
    }

    fn apply(&mut self, s: Step) -> Result<(), String> {
        match s {
            Step::Begin { at, units } => {
                if self.writes.len() < 4 {
                    self.stamp = self.stamp.wrapping_add(1).max(1);
                    let range = at * UNIT..(at + units) * UNIT;
                    let (_, began) = self.states.begin_write_seq(0);
                    let data = vec![self.stamp; range.len()];
                    self.writes.push(Write {
                        range,
                        began,
                        data,
                        landed: false,
                    });
                }
            }
            Step::Land(n) => {
                let unlanded = self.writes.iter().filter(|w| !w.landed).count().max(1);
                if let Some(w) = self
                    .writes
                    .iter_mut()
                    .filter(|w| !w.landed)
                    .nth(n % unlanded)
                {
                    w.landed = true;
                    self.primary[w.range.clone()].copy_from_slice(&w.data);
                }
            }
            Step::Complete { n, fail } => {
                let landed = self.writes.iter().filter(|w| w.landed).count().max(1);
                if let Some(i) = self
                    .writes
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.landed)
                    .map(|(i, _)| i)
                    .nth(n % landed)
                {
                    let w = self.writes.remove(i);
                    let at = w.range.start as u32..w.range.end as u32;
                    let data = (!fail).then_some(&w.data[..]);
                    self.buffer.keep(&self.states, 0, at, w.began, data);
                    self.states.end_write_chunks(0, Self::mask(&w.range));
                }
            }
            Step::Claim => {
                if matches!(self.copy, Copy::Idle) {
                    if let Ok(c) = self.states.claim_copy(0) {
                        self.copy = Copy::Claimed(c);
                    }
                }
            }
            Step::Take => {
                if let Copy::Claimed(c) = self.copy {
                    let mask = self.states.take_chunks(0);
                    let taken: Taken = self.buffer.take(&self.states, 0);
                    let mut send = Vec::new();
                    for ch in (0..REGION / CHUNK).filter(|c| mask >> c & 1 == 1) {
                        let at = ch * CHUNK;
                        let mut out = vec![0; CHUNK];
                        if taken.fill(at as u32..(at + CHUNK) as u32, &mut out) {
                            self.from_buffer += CHUNK;
                        } else {
                            out.copy_from_slice(&self.primary[at..at + CHUNK]);
                        }
                        send.push((at, out));
                    }
                    self.copy = Copy::Taken(c, mask, send);
                }
            }
            Step::End { ok } => match std::mem::take(&mut self.copy) {
                Copy::Taken(c, mask, send) => {
                    if ok {
                        for (at, d) in send {
                            self.secondary[at..at + CHUNK].copy_from_slice(&d);
                        }
                    } else {
                        self.states.restore_chunks(0, mask);
                    }
                    if self.states.finish_copy(0, c, ok) {
                        self.buffer.forget(0);
                    }
                }
                Copy::Claimed(c) => {
                    self.states.finish_copy(0, c, false);
                }
                Copy::Idle => {}
            },
        }
        self.check()
    }

    /// A clean region with nothing in flight matches the primary.
    fn check(&self) -> Result<(), String> {
        if !self.states.is_dirty(0)
            && self.writes.is_empty()
            && matches!(self.copy, Copy::Idle)
            && self.primary != self.secondary
        {
            let at = (0..REGION)
                .find(|&i| self.primary[i] != self.secondary[i])
                .unwrap();
            return Err(format!(
                "clean, but byte {at} is {} on the primary and {} on the secondary",
                self.primary[at], self.secondary[at]
            ));
        }
        Ok(())
    }

    /// Lands and completes what is in flight, copies until clean.
    fn settle(&mut self) -> Result<(), String> {
        if let Copy::Claimed(_) = self.copy {
            self.apply(Step::Take)?;
        }
        self.apply(Step::End { ok: true })?;
        while !self.writes.is_empty() {
            self.apply(Step::Land(0))?;
            self.apply(Step::Complete { n: 0, fail: false })?;
        }
        for _ in 0..3 {
            self.apply(Step::Claim)?;
            self.apply(Step::Take)?;
            self.apply(Step::End { ok: true })?;
        }
        if self.states.is_dirty(0) {
            return Err("still dirty after three copies with nothing in flight".into());
        }
        self.check()
    }
}

fn run(bug: Bug, budget: u64, steps: &[Step]) -> Result<usize, String> {
    let mut w = World::new(bug, budget);
    for s in steps {
        w.apply(s.clone())?;
    }
    w.settle()?;
    if w.buffer.held() != 0 && w.buffer.slots() == 0 {
        return Err(format!("{} bytes held with no slot", w.buffer.held()));
    }
    Ok(w.from_buffer)
}

fn search(bug: Bug, budget: u64, cases: u32) -> Result<usize, String> {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    // A planted bug's search runs from a fixed seed: a random one missed
    // the horizon bug in 50 000 cases once, which failed the test at random.
    let mut runner = if bug == Bug::None {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        )
    };
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let outcome = runner.run(&prop::collection::vec(step(), 1..80), |steps| {
        let n = run(bug, budget, &steps).map_err(TestCaseError::fail)?;
        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    outcome
        .map(|()| sent.into_inner())
        .map_err(|e| e.to_string())
}

#[test]
fn copies_from_the_buffer_never_leave_the_secondary_stale() {
    let sent = search(Bug::None, 1 << 20, 3000).unwrap();
    assert!(sent > 0, "no copy was sent from the buffer");
    // A budget of two writes: most are markers.
    search(Bug::None, 16 << 10, 1000).unwrap();
}

#[test]
fn writes_in_flight_together_ordered_by_completion_are_caught() {
    let e = search(Bug::IgnoreMet, 1 << 20, 3000).expect_err("the planted bug went unseen");
    assert!(e.contains("clean, but byte"), "{e}");
}

#[test]
fn a_horizon_ignored_is_caught() {
    let e = search(Bug::NoHorizon, 1 << 20, 50_000).expect_err("the planted bug went unseen");
    assert!(e.contains("clean, but byte"), "{e}");
}

#[test]
fn the_budget_holds_and_is_given_back() {
    let states = RegionStates::new(4);
    let b = WriteBuffer::new(8 << 10);
    for r in 0..4 {
        let (_, began) = states.begin_write_seq(r);
        b.keep(&states, r, 0..4096, began, Some(&[7; 4096]));
    }
    assert_eq!(b.held(), 8 << 10, "two writes fit, two are markers");
    let t = b.take(&states, 0);
    let mut out = vec![0; 4096];
    assert!(t.fill(0..4096, &mut out));
    assert_eq!(out, vec![7; 4096]);
    drop(t);
    assert_eq!(b.held(), 4 << 10);
    let t = b.take(&states, 2);
    assert!(!t.fill(0..4096, &mut out), "a marker is read back");
    b.switch_off();
    assert_eq!(b.held(), 0);
    assert!(!b.is_on());
}

#[test]
fn a_region_the_full_buffer_cannot_hold_whole_gives_up_its_data_until_its_copy() {
    let states = RegionStates::new(2);
    let b = WriteBuffer::new(12 << 10);
    let keep = |r: u64, at: Range<u32>| {
        let (_, began) = states.begin_write_seq(r);
        b.keep(&states, r, at, began, Some(&[r as u8 + 1; 4096]));
        b.held()
    };
    assert_eq!(keep(0, 0..4096), 4 << 10);
    assert_eq!(keep(1, 0..4096), 8 << 10);
    assert_eq!(keep(1, 4096..8192), 12 << 10);
    assert_eq!(
        keep(0, 4096..8192),
        8 << 10,
        "region 0 meets the full buffer: its copy reads back, and what it held is given back"
    );
    assert_eq!(
        keep(0, 8192..12288),
        8 << 10,
        "until its copy, region 0 holds nothing, though there is room"
    );
    assert_eq!(
        keep(1, 8192..12288),
        12 << 10,
        "the room goes to region 1, held whole"
    );
    assert_eq!(
        b.oldest_held(),
        Some(1),
        "region 0 is not copied from the buffer first"
    );
    assert_eq!(b.oldest_held(), None);
    let mut out = vec![0; 12288];
    let t1 = b.take(&states, 1);
    assert!(
        t1.fill(0..12288, &mut out),
        "region 1 is sent whole from the buffer"
    );
    assert_eq!(out, vec![2; 12288]);
    drop(t1);
    let t0 = b.take(&states, 0);
    assert!(!t0.fill(0..4096, &mut out[..4096]), "region 0 is read back");
    drop(t0);
    assert_eq!(b.held(), 0);
    assert_eq!(
        keep(0, 0..4096),
        4 << 10,
        "after its copy, region 0 is held again"
    );
    b.poison_region(&states, 0);
    assert_eq!(b.held(), 0, "dropped pieces give their bytes back");
    assert_eq!(
        keep(0, 4096..8192),
        0,
        "a region whose pieces were dropped holds nothing"
    );
    drop(b.take(&states, 0));
    assert_eq!(keep(0, 4096..8192), 4 << 10, "until they are next taken");
}

#[test]
fn an_overwritten_piece_is_dropped_at_once() {
    let states = RegionStates::new(1);
    let b = WriteBuffer::new(1 << 20);
    for _ in 0..1000 {
        let (_, began) = states.begin_write_seq(0);
        b.keep(&states, 0, 0..8192, began, Some(&[1; 8192]));
    }
    assert_eq!(b.held(), 8192, "a hot block rewritten is held once");
}

#[test]
fn a_write_in_flight_across_a_take_is_read_back() {
    // V and W are in flight together after the claim; V lands last and
    // completes before the take, W after it.
    let steps = [
        Step::Begin { at: 0, units: 4 },
        Step::Land(0),
        Step::Complete { n: 0, fail: false },
        Step::Claim,
        Step::Begin { at: 0, units: 4 },
        Step::Begin { at: 0, units: 4 },
        Step::Land(1),
        Step::Land(0),
        Step::Complete { n: 0, fail: false },
        Step::Take,
        Step::Complete { n: 0, fail: false },
    ];
    run(Bug::None, 1 << 20, &steps).unwrap();
    let e = run(Bug::NoHorizon, 1 << 20, &steps).expect_err("the planted bug went unseen");
    assert!(e.contains("clean, but byte"), "{e}");
}

#[test]
fn data_that_cannot_fill_a_chunk_is_not_held() {
    let states = RegionStates::new(1);
    let b = WriteBuffer::new(1 << 20).with_chunk(4096);
    let keep = |at: std::ops::Range<u32>| {
        let (_, began) = states.begin_write_seq(0);
        let data = vec![3; at.len()];
        b.keep(&states, 0, at, began, Some(&data));
        b.held()
    };
    assert_eq!(keep(9216..10240), 0, "1 KiB inside a chunk: a marker");
    assert_eq!(keep(1024..6144), 0, "5 KiB over a chunk edge, none whole");
    assert_eq!(keep(12288..13312), 1024, "a chunk's start is held");
    assert_eq!(keep(13312..14336), 2048, "and what goes on from it");
    assert_eq!(keep(15360..20480), 7168, "a whole chunk inside");
}
