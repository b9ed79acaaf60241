//! The peer benchmark: a write that misses the record, with the record held
//! by a peer over loopback against the record in a local file on the same
//! file system, and the link's bare round trip; and the record updates per
//! 1000 writes of both, on the same writes.

use std::net::TcpListener;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tandem::geometry::Geometry;
use tandem::peer::wire::{read_frame, write_frame, Frame, Hello};
use tandem::peer::{Holder, PeerStore};
use tandem::predict::by_name;
use tandem::record::{Record, RecordStore, RegionFile};
use tandem::region::Clock;

use super::*;

/// Regions of the benchmark's device (1 MiB each: 64 GiB).
const REGIONS: u64 = 65536;
const REGION: u64 = 1 << 20;

/// A record over `store` with the default policy and a manual clock.
fn record(store: Box<dyn RecordStore>) -> anyhow::Result<Record> {
    let g = Geometry::new(REGIONS * REGION, REGION)?;
    Ok(Record::new(
        g,
        256 * REGION,
        by_name("predictive", g.regions(), REGION)?,
        store,
        Clock::Manual(Arc::new(AtomicU64::new(0))),
    ))
}

/// `n` writes, 1 in 8 to a new region far away (a miss), the rest near the
/// last ones, each given to every record in `recs` in turn (the first one
/// alternating), so that all of them meet the file system in the same
/// state: an fsync's time drifts by more than a round trip between runs.
/// Returns, per record, the microseconds of each write that needed the
/// record (in write order) and the record's updates per 1000 writes.
fn writes(recs: &[&Record], n: usize) -> anyhow::Result<Vec<(Vec<u32>, f64)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9eef);
    let mut lat = vec![Vec::new(); recs.len()];
    let mut misses = Vec::new();
    let mut dirtied = Vec::new();
    let mut last = 0u64;
    for i in 0..n {
        let r = if rng.gen_bool(0.125) {
            rng.gen_range(0..REGIONS)
        } else {
            (last + rng.gen_range(0..4)) % REGIONS
        };
        last = r;
        for k in 0..recs.len() {
            let k = (k + i) % recs.len();
            let rec = recs[k];
            misses.clear();
            rec.begin_write(r..r + 1, &mut misses);
            if !misses.is_empty() {
                let t0 = Instant::now();
                rec.admit(&misses)?;
                lat[k].push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            dirtied.clear();
            rec.end_write(r..r + 1, &mut dirtied);
            // The mirror copies it at once: the region turns clean.
            if let Ok(c) = rec.states().claim_copy(r) {
                rec.states().finish_copy(r, c, true);
            }
        }
    }
    Ok(lat
        .into_iter()
        .zip(recs)
        .map(|(l, rec)| (l, rec.stats().updates as f64 * 1000.0 / n as f64))
        .collect())
}

/// A holder serving on loopback with its records in `dir`; returns its
/// address and the thread that serves it.
fn start_holder(
    dir: &std::path::Path,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(String, std::thread::JoinHandle<tandem::error::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = format!("127.0.0.1:{}", listener.local_addr()?.port());
    let holder = Arc::new(Holder::new(dir, 2)?);
    let stop = stop.clone();
    Ok((
        address,
        std::thread::spawn(move || holder.serve(listener, stop)),
    ))
}

/// The median of the differences `a[i] - b[i]` (the same misses in both).
fn paired_gap(a: &[u32], b: &[u32]) -> f64 {
    let mut gap: Vec<i64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| i64::from(x) - i64::from(y))
        .collect();
    gap.sort_unstable();
    gap.get(gap.len() / 2).copied().unwrap_or(0) as f64
}

pub(crate) fn peer_bench(a: &PeerArgs) -> anyhow::Result<Value> {
    let n = if a.common.quick { 2000 } else { 20000 };
    let dir = a.dir.join("peer-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // A holder whose records are in memory (tmpfs: its fsync costs
    // nothing), to measure what the link alone adds to an update.
    let shm = std::path::Path::new("/dev/shm");
    ensure!(
        shm.is_dir(),
        "/dev/shm is missing: the benchmark needs a tmpfs for its in-memory holder"
    );
    let mem_dir = shm.join(format!("tandem-peer-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&mem_dir);
    let g = Geometry::new(REGIONS * REGION, REGION)?;
    let region_file = |name: &str| -> anyhow::Result<RegionFile> {
        let dev: tandem::dev::Dev = Arc::new(tandem::dev::FileDev::open(
            &dir.join(name),
            &tandem::dev::OpenOptions {
                direct: false,
                create_size: Some(RegionFile::file_size(&g)),
            },
        )?);
        Ok(RegionFile::create(dev, &g, 7, false)?)
    };
    // Node B, on loopback: its records on the same file system as the
    // local record, or in memory.
    let stop = Arc::new(AtomicBool::new(false));
    let (address, serving) = start_holder(&dir.join("held"), &stop)?;
    let (mem_address, mem_serving) = start_holder(&mem_dir, &stop)?;
    let hello = Hello {
        node: 1,
        identity: 7,
        generation: 0,
        device_size: REGIONS * REGION,
        region_size: REGION,
    };

    // The bare round trip: pings on a session of a device of its own.
    let stream = std::net::TcpStream::connect(&address)?;
    stream.set_nodelay(true)?;
    let mut rd = std::io::BufReader::new(stream.try_clone()?);
    let mut wr = std::io::BufWriter::new(stream);
    write_frame(
        &mut wr,
        1,
        &Frame::Hello(Hello {
            identity: 8,
            ..hello
        }),
    )?;
    read_frame(&mut rd)?;
    // Back to back (both threads awake), and after a pause as long as a
    // record update's fsync (both asleep, as they are between misses): a
    // miss's exchange pays the wake-ups of the second kind.
    let mut ping = |pause: Duration, seq0: u64| -> anyhow::Result<Vec<u32>> {
        let mut v = Vec::new();
        for seq in seq0..seq0 + n as u64 / 8 {
            std::thread::sleep(pause);
            let t0 = Instant::now();
            write_frame(&mut wr, seq, &Frame::Ping)?;
            read_frame(&mut rd)?;
            v.push(t0.elapsed().as_micros() as u32);
        }
        v.sort_unstable();
        Ok(v)
    };
    let hot = ping(Duration::ZERO, 2)?;
    let rtt = ping(Duration::from_micros(250), 1 << 32)?;

    let paired_store = |address: &str, identity: u64| -> anyhow::Result<PeerStore> {
        let mut store = PeerStore::new(
            address,
            Hello { identity, ..hello },
            &dir.join(format!("peer-{identity}.state")),
            region_file(&format!("fallback-{identity}.rec"))?,
            REGIONS,
            None,
        )?;
        store.start(&tandem::record::Image::repeat(false, REGIONS as usize))?;
        Ok(store)
    };
    let bare = record(Box::new(tandem::record::NullStore::default()))?;
    let local = record(Box::new(region_file("local.rec")?))?;
    let mem_store = paired_store(&mem_address, 9)?;
    let store = paired_store(&address, 7)?;
    let statuses = [mem_store.status(), store.status()];
    let in_memory = record(Box::new(mem_store))?;
    let paired = record(Box::new(store))?;
    let mut runs = writes(&[&bare, &local, &in_memory, &paired], n)?;
    let held: Vec<_> = statuses.iter().map(|s| s.lock().unwrap().holding).collect();
    stop.store(true, Ordering::Release);
    serving.join().expect("holder thread")?;
    mem_serving.join().expect("holder thread")?;
    std::fs::remove_dir_all(&dir)?;
    std::fs::remove_dir_all(&mem_dir)?;
    ensure!(
        held.iter().all(|&h| h == tandem::peer::Holding::Peer),
        "a peer stopped holding its record during the run"
    );
    ensure!(
        runs.iter().all(|(l, _)| l.len() == runs[0].0.len()),
        "the records missed on different writes"
    );
    // The same writes missed in every record: the differences of each.
    let [bare_lat, local_lat, mem_lat, peer_lat] = [0, 1, 2, 3].map(|i| runs[i].0.clone());
    let gap = paired_gap(&peer_lat, &local_lat);
    let link = paired_gap(&mem_lat, &bare_lat);
    for (l, _) in &mut runs {
        l.sort_unstable();
    }
    let p = |i: usize, q| percentile(&runs[i].0, q);
    let updates = |i: usize| runs[i].1;
    let rm = percentile(&rtt, 0.5);
    println!(
        "\n## A write that misses the record: held by a peer over loopback against a local file \
         ({}, {n} writes, {} misses, each given to every store in turn)\n",
        df_of(&a.dir),
        local_lat.len(),
    );
    println!("| record store | p50 us | p99 us | updates per 1000 writes |");
    println!("|---|---:|---:|---:|");
    for (i, name) in [
        "none (the record's own work, no I/O)",
        "local record file (write + fdatasync)",
        "held by a peer in memory (the link, no fsync)",
        "held by the peer (the link + the peer's fdatasync)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} |",
            p(i, 0.5),
            p(i, 0.99),
            updates(i)
        );
    }
    println!(
        "| ping after 250 us idle (the link's bare round trip) | {rm:.0} | {:.0} | |",
        percentile(&rtt, 0.99)
    );
    println!(
        "| pings back to back | {:.0} | {:.0} | |",
        percentile(&hot, 0.5),
        percentile(&hot, 0.99)
    );
    println!(
        "- an update's round trip on this link (held in memory - no store, the same misses): {link:.0} us"
    );
    // One round trip, with 10 % for the noise of two medians.
    let within = |rt: f64| gap <= 1.1 * rt.max(1.0);
    println!(
        "- peer miss - local miss (the same misses): {gap:.0} us = {:.2} update round trips ({}), \
         {:.2} bare round trips ({})",
        gap / link.max(1.0),
        if within(link) {
            "within one"
        } else {
            "MISSED: more than one"
        },
        gap / rm.max(1.0),
        if within(rm) {
            "within one"
        } else {
            "MISSED: more than one"
        },
    );
    println!(
        "- updates per 1000 writes, paired / local = {:.3} (goal: equal)",
        updates(3) / updates(1).max(f64::MIN_POSITIVE)
    );
    Ok(json!({
        "writes": n,
        "none": { "p50_us": p(0, 0.5), "p99_us": p(0, 0.99) },
        "local": { "p50_us": p(1, 0.5), "p99_us": p(1, 0.99), "updates_per_1000": updates(1) },
        "peer_in_memory": { "p50_us": p(2, 0.5), "p99_us": p(2, 0.99) },
        "peer": { "p50_us": p(3, 0.5), "p99_us": p(3, 0.99), "updates_per_1000": updates(3) },
        "rtt": { "p50_us": rm, "p99_us": percentile(&rtt, 0.99) },
        "rtt_back_to_back": { "p50_us": percentile(&hot, 0.5), "p99_us": percentile(&hot, 0.99) },
        "update_round_trip_us": link,
        "peer_minus_local_us": gap,
    }))
}
