//! The `predictive` policy's chooser on synthetic traces where one candidate
//! is known to be best: it must end up following that candidate, and need
//! about as few record updates as that candidate alone.

use rand::{Rng, SeedableRng};
use tandemctl::simulate::{simulate, Config, Policy, PolicyResult, Trace, TraceWrite};

const MIB: u64 = 1 << 20;
const CAPACITY: u64 = 64 * MIB;
/// The device is 100 times the capacity.
const DEVICE: u64 = 100 * CAPACITY;

fn config() -> Config {
    Config {
        region_size: MIB,
        capacity: CAPACITY,
        destage_latency_ns: 100_000,
    }
}

fn trace(writes: impl IntoIterator<Item = (u64, u64)>) -> Trace {
    let writes: Vec<TraceWrite> = writes
        .into_iter()
        .enumerate()
        .map(|(i, (offset, len))| TraceWrite {
            // One write a millisecond.
            ts_ns: i as u64 * 1_000_000,
            offset,
            len,
        })
        .collect();
    Trace {
        writes,
        reads: 0,
        device_end: DEVICE,
    }
}

const CANDIDATES: [Policy; 3] = [Policy::Patterns, Policy::PatternsBrief, Policy::Car];

/// Replays `t` under the chooser, each candidate alone and plain LRU (a
/// reference, not a candidate); returns the chooser's result, the
/// candidates' and LRU's, printed as a table.
fn duel(what: &str, t: &Trace) -> (PolicyResult, Vec<PolicyResult>, PolicyResult) {
    let chooser = simulate(t, Policy::Predictive, &config()).unwrap();
    let alone: Vec<PolicyResult> = CANDIDATES
        .iter()
        .map(|&p| simulate(t, p, &config()).unwrap())
        .collect();
    let lru = simulate(t, Policy::Lru, &config()).unwrap();
    println!("{what}:");
    for r in std::iter::once(&chooser).chain(&alone).chain([&lru]) {
        println!(
            "  {:11} {:8} updates  following {:?} switches {:?}",
            r.policy, r.record_updates, r.following, r.switches
        );
    }
    (chooser, alone, lru)
}

/// The candidates within 2 % of the fewest updates alone must be `best`
/// (else the trace does not test what it says); the chooser must end up
/// following one of them, needing at most `slack` times the fewest updates,
/// and no more than LRU.
fn assert_converges(what: &str, t: &Trace, best: &[&str], slack: f64) {
    let (chooser, alone, lru) = duel(what, t);
    let fewest = alone.iter().map(|r| r.record_updates).min().unwrap();
    let near: Vec<&str> = alone
        .iter()
        .filter(|r| r.record_updates as f64 <= fewest as f64 * 1.02)
        .map(|r| r.policy)
        .collect();
    assert!(
        near.iter().all(|p| best.contains(p)),
        "{what}: {near:?} were best alone, not {best:?}: the trace does not test what it says"
    );
    let following = chooser.following.expect("the chooser says what it follows");
    assert!(
        near.contains(&following),
        "{what}: the chooser ended following {following}, not one of {near:?}"
    );
    assert!(
        chooser.record_updates as f64 <= fewest as f64 * slack,
        "{what}: the chooser needed {} updates, the best candidate alone {fewest} (slack {slack})",
        chooser.record_updates
    );
    assert!(
        chooser.record_updates <= lru.record_updates,
        "{what}: the chooser needed {} updates, plain LRU {}",
        chooser.record_updates,
        lru.record_updates
    );
}

#[test]
fn sequential_writes_follow_the_learned_patterns() {
    // Four streams of 128 KiB writes, each through its own quarter.
    let quarter = DEVICE / 4;
    let t = trace((0..40_000u64).map(|i| {
        let stream = i % 4;
        (stream * quarter + (i / 4) * (128 << 10), 128 << 10)
    }));
    assert_converges("sequential", &t, &["patterns"], 1.05);
}

#[test]
fn uniform_random_writes_cost_no_more_than_the_best_candidate() {
    // 4 KiB at random over a device 100 times the capacity: nearly every
    // write misses whatever the policy; the chooser must not add to it.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let t = trace((0..40_000).map(|_| (rng.gen_range(0..DEVICE / 4096) * 4096, 4096)));
    assert_converges(
        "uniform random",
        &t,
        &["patterns", "patterns-brief", "car"],
        1.02,
    );
}

#[test]
fn a_hot_set_under_scattered_writes_keeps_no_guesses() {
    // Nine writes in ten to a hot set of 48 regions, which fits the
    // capacity of 64; the tenth anywhere. Protected guesses beside the
    // scattered writes push hot regions out; CAR keeps the frequent ones
    // (and LRU lets the scattered writes push them out).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let hot: Vec<u64> = (0..48).map(|_| rng.gen_range(0..DEVICE / MIB)).collect();
    let t = trace((0..40_000).map(|_| {
        if rng.gen_range(0..10) < 9 {
            let r = hot[rng.gen_range(0..hot.len())];
            (r * MIB + rng.gen_range(0..256) * 4096, 4096)
        } else {
            (rng.gen_range(0..DEVICE / 4096) * 4096, 4096)
        }
    }));
    assert_converges("hot set", &t, &["patterns-brief", "car"], 1.05);
}
