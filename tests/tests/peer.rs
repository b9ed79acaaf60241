//! Two node processes over loopback: node A (the `engine-load` child, its
//! record held by a peer) and node B (`peer-holder`), with a proxy between
//! them that the test controls. Under stamped writes with every
//! acknowledgement logged: the link slowed, the link cut (A serves directly,
//! writes go on), the link back (A pairs again), B killed and restarted, and
//! finally A killed. A's restart recovers from what B holds: every
//! acknowledged write is on the primary, the resync covers part of the
//! device, and the two devices end identical.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem::engine::Engine;
use tandem::lease::LeaseConfig;
use tandem::peer::{Holding, TakeoverReport};
use tandem_tests::load::LoadArgs;
use tandem_tests::proxy::Proxy;
use tandem_tests::{check_acknowledged, sigkill, watch_status, Reaper};

const DEVICE: u64 = 64 << 20;
const THREADS: u32 = 4;

/// Node B as its own process; returns it and the port it listens on.
fn holder(dir: &Path) -> (Reaper, u16) {
    let (child, port, _) = holder_with(dir, &[]);
    (child, port)
}

/// Node B watching the leases in `specs` for takeovers; the third value
/// receives each takeover's report.
fn holder_with(dir: &Path, specs: &[String]) -> (Reaper, u16, Receiver<TakeoverReport>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer-holder"))
        .args(["127.0.0.1:0", dir.to_str().unwrap(), "2"])
        .args(specs)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn peer-holder");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("peer-holder said {line:?}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("takeover ") {
                let _ = tx.send(serde_json::from_str(json).expect("a takeover report"));
            }
        }
    });
    (Reaper(child), port, rx)
}

/// Waits until the child's write count grows past `than`.
fn writes_grow(latest: &Mutex<Vec<u64>>, than: u64, what: &str) -> u64 {
    let t0 = Instant::now();
    loop {
        let w = latest.lock().unwrap().get(2).copied().unwrap_or(0);
        if w > than + 100 {
            return w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: writes stalled at {w}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_whose_record_is_held_by_its_peer_survives_a_slow_link_a_cut_and_a_dead_peer() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("b");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (mut b, bport) = holder(&bdir);
    let proxy = Proxy::start(bport);
    let load = LoadArgs {
        peer: Some(format!("127.0.0.1:{}", proxy.port)),
        ..LoadArgs::stamped(dir.path(), THREADS)
    };
    let paths = load.paths();
    for p in [&paths.primary, &paths.secondary] {
        std::fs::File::create(p).unwrap().set_len(DEVICE).unwrap();
    }
    let mut a = Reaper(
        Command::new(env!("CARGO_BIN_EXE_engine-load"))
            .args(load.args())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn engine-load"),
    );
    let latest = watch_status(a.0.stdout.take().unwrap()).unwrap_or_else(|e| panic!("{e}"));
    let w = writes_grow(&latest, 0, "paired");
    // A slow link: every forwarded chunk waits 2 ms. Writes that miss wait
    // for it; the rest do not.
    proxy.delay_us.store(2000, Ordering::Relaxed);
    let w = writes_grow(&latest, w, "slow link");
    proxy.delay_us.store(0, Ordering::Relaxed);
    // A cut link: A serves directly, with no write failing.
    proxy.set_cut(true);
    let w = writes_grow(&latest, w, "link cut");
    std::thread::sleep(Duration::from_millis(300));
    proxy.set_cut(false);
    // A tries its peer again every second.
    std::thread::sleep(tandem::peer::store::RETRY_EVERY * 2);
    let w = writes_grow(&latest, w, "link back");
    // B dies, and comes back from its directory on another port.
    sigkill(&mut b.0);
    let w = writes_grow(&latest, w, "peer dead");
    let (mut b, bport) = holder(&bdir);
    proxy.upstream.store(bport, Ordering::Release);
    std::thread::sleep(tandem::peer::store::RETRY_EVERY * 2);
    writes_grow(&latest, w, "peer back");
    std::thread::sleep(Duration::from_millis(200));
    // A dies (a host crash of A's process: no clean stop).
    sigkill(&mut a.0);
    let config = load.config();
    let engine = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    let st = engine.status();
    let peer = st.peer.clone().expect("the status shows the peer");
    println!(
        "A restarted: record held on {:?} (generation {}), resyncs {} KiB of {} KiB",
        peer.holding,
        peer.generation,
        st.resync_total_bytes >> 10,
        DEVICE >> 10
    );
    assert_eq!(peer.holding, Holding::Peer, "{peer:?}");
    let checked = check_acknowledged(&paths.primary, &logs, THREADS);
    assert!(checked > 0);
    assert!(
        st.resync_total_bytes > 0 && st.resync_total_bytes < DEVICE,
        "recovered from the peer's record, not everything: {} of {DEVICE}",
        st.resync_total_bytes
    );
    assert!(engine.wait_synced(Duration::from_secs(60)), "resync");
    engine.shutdown().unwrap();
    drop(engine);
    let p = std::fs::read(&paths.primary).unwrap();
    let s = std::fs::read(&paths.secondary).unwrap();
    assert!(
        p == s[..p.len()],
        "primary and secondary differ after resync"
    );
    println!("{checked} acknowledged blocks intact; primary and secondary identical");
    sigkill(&mut b.0);
}

/// Node A (`engine-load`, with a lease and its record held through the
/// proxy) and node B (`peer-holder` watching A's lease through the same
/// files: two hosts' paths to shared storage), running.
struct Pair {
    load: LoadArgs,
    paths: tandem::engine::Paths,
    lease: std::path::PathBuf,
    bdir: std::path::PathBuf,
    b: Reaper,
    takeovers: Receiver<TakeoverReport>,
    proxy: Proxy,
    a: Reaper,
    latest: Arc<Mutex<Vec<u64>>>,
}

impl Pair {
    fn start(dir: &Path) -> Pair {
        let bdir = dir.join("b");
        std::fs::create_dir(dir.join("logs")).unwrap();
        let lease = dir.join("lease");
        let load = LoadArgs {
            lease: Some(lease.clone()),
            lease_timeout_ms: 2000,
            ..LoadArgs::stamped(dir, THREADS)
        };
        let paths = load.paths();
        for p in [&paths.primary, &paths.secondary] {
            std::fs::File::create(p).unwrap().set_len(DEVICE).unwrap();
        }
        let spec = format!(
            "lease={},primary={},secondary={}",
            lease.display(),
            paths.primary.display(),
            paths.secondary.display()
        );
        let (b, bport, takeovers) = holder_with(&bdir, &[spec]);
        let proxy = Proxy::start(bport);
        let load = LoadArgs {
            peer: Some(format!("127.0.0.1:{}", proxy.port)),
            ..load
        };
        let mut a = Reaper(
            Command::new(env!("CARGO_BIN_EXE_engine-load"))
                .args(load.args())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn engine-load"),
        );
        let latest = watch_status(a.0.stdout.take().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        Pair {
            load,
            paths,
            lease,
            bdir,
            b,
            takeovers,
            proxy,
            a,
            latest,
        }
    }
}

/// A with a lease on the shared storage, B watching it. A cut link with
/// both alive takes nothing over; A's death does: B takes the lease at the
/// next generation, copies what it held, and the devices are identical. A,
/// back, is refused; B serves the device with every acknowledged write.
#[test]
fn b_takes_over_when_a_dies_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        load,
        paths,
        lease,
        bdir,
        mut b,
        takeovers,
        proxy,
        mut a,
        latest,
    } = Pair::start(dir.path());
    let w = writes_grow(&latest, 0, "paired");
    // The link is cut for longer than the lease's expiry: both nodes are alive,
    // A renews its lease, B takes nothing over, A's writes go on.
    proxy.set_cut(true);
    let w = writes_grow(&latest, w, "link cut");
    assert!(
        takeovers.recv_timeout(Duration::from_secs(4)).is_err(),
        "B took the device over while A was alive"
    );
    proxy.set_cut(false);
    std::thread::sleep(tandem::peer::store::RETRY_EVERY * 2);
    writes_grow(&latest, w, "link back");
    std::thread::sleep(Duration::from_millis(200));
    let at_death = latest.lock().unwrap().clone();
    sigkill(&mut a.0);
    let died = Instant::now();
    let report = takeovers
        .recv_timeout(Duration::from_secs(60))
        .expect("B takes the device over");
    let took = died.elapsed();
    println!(
        "takeover {:.2} s after A died (lease 2 s + margin 1 s): waited {} ms, copied {} KiB of {} KiB in {} ms",
        took.as_secs_f64(),
        report.waited_ms,
        report.bytes_resynced >> 10,
        DEVICE >> 10,
        report.copy_ms
    );
    println!(
        "A's record just before its death: {} KiB ({} KiB dirty); B resynced {} KiB",
        at_death[0] >> 10,
        at_death[1] >> 10,
        report.bytes_resynced >> 10
    );
    assert_eq!(
        (report.from_node, report.from_generation, report.generation),
        (1, 1, 2)
    );
    assert!(report.waited_ms >= 3000, "{report:?}");
    assert!(
        report.bytes_resynced > 0 && report.bytes_resynced < DEVICE,
        "B copied what it held, not everything: {report:?}"
    );
    let checked = check_acknowledged(&paths.primary, &dir.path().join("logs"), THREADS);
    assert!(checked > 0);
    let p = std::fs::read(&paths.primary).unwrap();
    let s = std::fs::read(&paths.secondary).unwrap();
    assert!(
        p == s[..p.len()],
        "primary and secondary differ after the takeover"
    );
    // A comes back: its lease is gone, and it must not serve.
    let config = load.config();
    let err = match paths.open(&config) {
        Ok(_) => panic!("A claimed its lease again after the takeover"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("belongs to node 2 at generation 2"), "{err}");
    // A's stale open changed nothing: B serves (promote) from what it holds.
    let mut config_b = load.config();
    config_b.peer = None;
    config_b.lease = Some(LeaseConfig {
        path: lease.clone(),
        node: 2,
        timeout: Duration::from_millis(2000),
        reclaim: false,
    });
    let paths_b = tandem::engine::Paths {
        record: bdir.join(format!("{}.rec", report.identity)),
        ..paths.clone()
    };
    let engine = Engine::open(paths_b.open(&config_b).unwrap(), &config_b).unwrap();
    let st = engine.status();
    assert_eq!(st.lease.as_ref().map(|l| l.generation), Some(2));
    assert_eq!(
        st.resync_total_bytes, 0,
        "the takeover left nothing to copy"
    );
    let mut block = vec![0u8; 4096];
    engine.read(&mut block, 0).unwrap();
    engine.write(&block, 0, true).unwrap();
    engine.shutdown().unwrap();
    println!("{checked} acknowledged blocks intact; B serves at generation 2; A refused");
    sigkill(&mut b.0);
}

/// A dies while serving directly (the link cut): what it added since is in
/// its local file only, so B, taking over, copies the whole device; every
/// acknowledged write is there and the devices are identical.
#[test]
fn a_takeover_after_direct_service_copies_the_whole_device() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        paths,
        lease,
        mut b,
        takeovers,
        proxy,
        mut a,
        latest,
        ..
    } = Pair::start(dir.path());
    let w = writes_grow(&latest, 0, "paired");
    proxy.set_cut(true);
    writes_grow(&latest, w, "link cut");
    let direct = tandem::lease::LeaseArea::open(&lease)
        .unwrap()
        .read()
        .unwrap()
        .unwrap();
    assert!(
        direct.direct,
        "serving directly, the lease says so: {direct:?}"
    );
    sigkill(&mut a.0);
    let report = takeovers
        .recv_timeout(Duration::from_secs(60))
        .expect("B takes the device over");
    println!("A died serving directly: {report:?}");
    assert!(report.whole_device, "{report:?}");
    assert_eq!(report.bytes_resynced, DEVICE);
    let checked = check_acknowledged(&paths.primary, &dir.path().join("logs"), THREADS);
    assert!(checked > 0);
    let p = std::fs::read(&paths.primary).unwrap();
    let s = std::fs::read(&paths.secondary).unwrap();
    assert!(
        p == s[..p.len()],
        "primary and secondary differ after the takeover"
    );
    sigkill(&mut b.0);
}
