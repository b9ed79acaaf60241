//! The dual-active benchmark: two engines serve one primary file (each by
//! its own handle, O_DIRECT), each record held by the other node's holder
//! over loopback, as `--listen` does. Node A writes half the device; then
//! node B reads regions in A's record (each waits for a status check) and
//! regions outside it (no message), interleaved: the check's cost as a
//! ratio of medians. Then B runs a migration-like mix over A's working set
//! and a little more: the share of its requests that needed a check.

use std::net::TcpListener;
use std::sync::Arc;

use tandem::engine::{EngineConfig, PeerConfig};
use tandem::peer::checks::CheckLink;
use tandem::peer::wire::Hello;
use tandem::peer::Holder;

use super::*;

const REGION: u64 = 1 << 20;
const REGIONS: u64 = 256;

struct Node {
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
}

pub(crate) fn dual_bench(a: &PeerArgs) -> anyhow::Result<Value> {
    let n = if a.common.quick { 2000 } else { 20000 };
    let dir = a.dir.join("dual-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Written whole: a read of a hole would cost nothing.
    let chunk = vec![0x5au8; REGION as usize];
    for f in ["primary", "secondary"] {
        let mut file = File::create(dir.join(f))?;
        for _ in 0..REGIONS {
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
    }
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let mut holders = Vec::new();
    let mut stops = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let holder = Arc::new(Holder::new(&dir.join(format!("held-{i}")), i as u64 + 1)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (holder.clone(), stop.clone());
        std::thread::spawn(move || h.serve(listener, s));
        holders.push(holder);
        stops.push(stop);
    }
    let mut nodes = Vec::new();
    for i in 0..2 {
        let other = format!("127.0.0.1:{}", ports[1 - i]);
        let config = EngineConfig {
            region_size: REGION,
            capacity: 2 * REGIONS * REGION,
            assume_clean: true,
            peer: Some(PeerConfig {
                address: other.clone(),
                node: i as u64 + 1,
                state: dir.join(format!("record-{i}.peer")),
            }),
            ..EngineConfig::default()
        };
        let paths = Paths {
            primary: dir.join("primary"),
            secondary: dir.join("secondary"),
            record: dir.join(format!("record-{i}")),
        };
        let engine = Arc::new(Engine::open(paths.open(&config)?, &config)?);
        let hello = Hello {
            node: i as u64 + 1,
            identity: engine.identity(),
            generation: 0,
            device_size: REGIONS * REGION,
            region_size: REGION,
        };
        engine.go_dual(
            &holders[i],
            CheckLink::new(&other, hello, stops[i].clone())?,
        )?;
        nodes.push(Node {
            engine,
            stop: stops[i].clone(),
        });
    }
    let (na, nb) = (&nodes[0], &nodes[1]);
    let loaded = |n: &Node| n.engine.dual_status().is_some_and(|d| d.view_loaded);
    let t0 = Instant::now();
    while !(loaded(na) && loaded(nb)) {
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the nodes did not load each other's records"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A writes the first half: its record, held by B, lists it.
    let mut buf = AlignedBuf::zeroed(4096);
    buf.fill(0xa5);
    for r in 0..REGIONS / 2 {
        na.engine.write(&buf, r * REGION, false)?;
    }
    let listed = nb.engine.dual_status().map_or(0, |d| d.other_regions);
    ensure!(
        listed >= REGIONS / 2,
        "B sees {listed} regions in A's record, not {}",
        REGIONS / 2
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xd0a1);
    let (mut checked, mut free) = (Vec::new(), Vec::new());
    for i in 0..n {
        let theirs = i % 2 == 0;
        let r = if theirs {
            rng.gen_range(0..REGIONS / 2)
        } else {
            rng.gen_range(REGIONS / 2..REGIONS)
        };
        let at = r * REGION + rng.gen_range(0..REGION / 4096) * 4096;
        let t = Instant::now();
        nb.engine.read(&mut buf, at)?;
        let us = t.elapsed().as_micros() as u32;
        if theirs {
            checked.push(us);
        } else {
            free.push(us);
        }
    }
    checked.sort_unstable();
    free.sort_unstable();
    let (c50, f50) = (percentile(&checked, 0.5), percentile(&free, 0.5));
    // A migration-like mix on B: the VM's working set moved from A, plus a
    // little it had not touched; 70 % reads.
    let before = nb.engine.dual_status().map_or(0, |d| d.checked_requests);
    let ops = n / 2;
    for _ in 0..ops {
        let r = rng.gen_range(0..REGIONS / 2 + REGIONS / 8);
        let at = r * REGION + rng.gen_range(0..REGION / 4096) * 4096;
        if rng.gen_bool(0.7) {
            nb.engine.read(&mut buf, at)?;
        } else {
            nb.engine.write(&buf, at, false)?;
        }
    }
    let after = nb.engine.dual_status().map_or(0, |d| d.checked_requests);
    let share = (after - before) as f64 / ops as f64;
    for n in &nodes {
        n.engine.shutdown()?;
        n.engine.dual_goodbye();
        n.stop.store(true, Ordering::Release);
    }
    drop(nodes);
    std::fs::remove_dir_all(&dir)?;
    println!(
        "\n## Dual-active: a read through node B of a region in node A's record against one outside it \
         ({}, O_DIRECT, {n} reads of 4 KiB, interleaved)\n",
        df_of(&a.dir)
    );
    println!("| read through B | p50 us | p99 us |");
    println!("|---|---:|---:|");
    println!(
        "| region outside A's record (no message) | {f50:.0} | {:.0} |",
        percentile(&free, 0.99)
    );
    println!(
        "| region in A's record (status check first) | {c50:.0} | {:.0} |",
        percentile(&checked, 0.99)
    );
    println!(
        "- the status check's cost: median {:.2}x a read that needs none (+{:.0} us)",
        c50 / f50.max(1.0),
        c50 - f50
    );
    println!(
        "- a migration-like mix on B (70 % reads over A's working set and 1/4 more, {ops} requests): \
         {:.1} % needed a check",
        share * 100.0
    );
    Ok(json!({
        "reads": n,
        "unchecked": { "p50_us": f50, "p99_us": percentile(&free, 0.99) },
        "checked": { "p50_us": c50, "p99_us": percentile(&checked, 0.99) },
        "check_ratio": c50 / f50.max(1.0),
        "migration_mix_requests": ops,
        "migration_mix_checked_share": share,
    }))
}
