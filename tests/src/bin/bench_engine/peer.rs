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
/// last ones; returns the microseconds of each write that needed the
/// record, and the record's updates per 1000 writes.
fn writes(rec: &Record, n: usize) -> anyhow::Result<(Vec<u32>, f64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9eef);
    let mut lat = Vec::new();
    let mut misses = Vec::new();
    let mut dirtied = Vec::new();
    let mut last = 0u64;
    for _ in 0..n {
        let r = if rng.gen_bool(0.125) {
            rng.gen_range(0..REGIONS)
        } else {
            (last + rng.gen_range(0..4)) % REGIONS
        };
        last = r;
        misses.clear();
        rec.begin_write(r..r + 1, &mut misses);
        if !misses.is_empty() {
            let t0 = Instant::now();
            rec.admit(&misses)?;
            lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        dirtied.clear();
        rec.end_write(r..r + 1, &mut dirtied);
        // The mirror copies it at once: the region turns clean.
        if let Ok(c) = rec.states().claim_copy(r) {
            rec.states().finish_copy(r, c, true);
        }
    }
    lat.sort_unstable();
    Ok((lat, rec.stats().updates as f64 * 1000.0 / n as f64))
}

pub(crate) fn peer_bench(a: &PeerArgs) -> anyhow::Result<Value> {
    let n = if a.common.quick { 2000 } else { 20000 };
    let dir = a.dir.join("peer-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
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
    // The holder: node B, on loopback, its records on the same file system.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let holder = Arc::new(Holder::new(&dir.join("held"), 2)?);
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (holder.clone(), stop.clone());
    let serving = std::thread::spawn(move || h.serve(listener, s));
    let hello = Hello {
        node: 1,
        identity: 7,
        generation: 0,
        device_size: REGIONS * REGION,
        region_size: REGION,
    };
    let address = format!("127.0.0.1:{port}");

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

    let local = record(Box::new(region_file("local.rec")?))?;
    let (local_lat, local_updates) = writes(&local, n)?;
    let mut store = PeerStore::new(
        &address,
        hello,
        &dir.join("peer.state"),
        region_file("fallback.rec")?,
        REGIONS,
        None,
    )?;
    store.start(&tandem::record::Image::repeat(false, REGIONS as usize))?;
    let status = store.status();
    let paired = record(Box::new(store))?;
    let (peer_lat, peer_updates) = writes(&paired, n)?;
    let held = status.lock().unwrap().holding;
    stop.store(true, Ordering::Release);
    serving.join().expect("holder thread")?;
    std::fs::remove_dir_all(&dir)?;
    ensure!(
        held == tandem::peer::Holding::Peer,
        "the peer stopped holding the record during the run"
    );

    let p = |v: &[u32], q| percentile(v, q);
    let (lm, pm, rm) = (p(&local_lat, 0.5), p(&peer_lat, 0.5), p(&rtt, 0.5));
    println!(
        "\n## A write that misses the record: held by a peer over loopback against a local file \
         ({}, {n} writes, {} and {} misses)\n",
        df_of(&a.dir),
        local_lat.len(),
        peer_lat.len()
    );
    println!("| | p50 us | p99 us | updates per 1000 writes |");
    println!("|---|---:|---:|---:|");
    println!(
        "| local record file (fsync) | {lm:.0} | {:.0} | {local_updates:.1} |",
        p(&local_lat, 0.99)
    );
    println!(
        "| record held by the peer (its fsync + the link) | {pm:.0} | {:.0} | {peer_updates:.1} |",
        p(&peer_lat, 0.99)
    );
    println!(
        "| the link's round trip (ping after 250 us idle) | {rm:.0} | {:.0} | |",
        p(&rtt, 0.99)
    );
    println!(
        "| the link's round trip (pings back to back) | {:.0} | {:.0} | |",
        p(&hot, 0.5),
        p(&hot, 0.99)
    );
    // One round trip, with 10 % for the noise of two medians.
    let rtts = (pm - lm) / rm.max(1.0);
    println!(
        "- peer miss - local miss = {:.0} us = {rtts:.2} round trips of {rm:.0} us: {}",
        pm - lm,
        if rtts.abs() <= 1.1 {
            "within one round trip (goal: met)"
        } else {
            "MISSED: more than one round trip apart"
        }
    );
    println!(
        "- updates per 1000 writes, paired / local = {:.3} (goal: equal)",
        peer_updates / local_updates.max(f64::MIN_POSITIVE)
    );
    Ok(json!({
        "writes": n,
        "local": { "p50_us": lm, "p99_us": p(&local_lat, 0.99), "updates_per_1000": local_updates },
        "peer": { "p50_us": pm, "p99_us": p(&peer_lat, 0.99), "updates_per_1000": peer_updates },
        "rtt": { "p50_us": rm, "p99_us": p(&rtt, 0.99) },
        "rtt_back_to_back": { "p50_us": p(&hot, 0.5), "p99_us": p(&hot, 0.99) },
    }))
}
