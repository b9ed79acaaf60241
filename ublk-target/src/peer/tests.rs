//! The record held by a peer, over loopback: updates wait for the holder,
//! direct service when it dies, the record handed back when it returns, a
//! stale owner refused, and a holder that survives garbage.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::wire::Hello;
use super::*;
use crate::dev::{Dev, MemDev};
use crate::geometry::Geometry;
use crate::predict::by_name;
use crate::record::{LoadOutcome, Record, RegionFile};
use crate::region::{Clock, RegionView};

const SIZE: u64 = 256 << 20;
const REGION: u64 = 1 << 20;
const IDENTITY: u64 = 0x7a4d_0001;

fn geometry() -> Geometry {
    Geometry::new(SIZE, REGION).unwrap()
}

/// A holder serving on a loopback port until `stop`.
struct Running {
    holder: Arc<Holder>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl Running {
    fn start(dir: &std::path::Path, port: u16) -> Running {
        Running::start_as(dir, port, 2)
    }

    fn start_as(dir: &std::path::Path, port: u16, node: u64) -> Running {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = Arc::new(Holder::new(dir, node).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (holder.clone(), stop.clone());
        let thread = std::thread::spawn(move || h.serve(listener, s).unwrap());
        Running {
            holder,
            stop,
            thread: Some(thread),
            port,
        }
    }

    /// Stops as a dead node does: every connection cut.
    fn kill(mut self) -> u16 {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap();
        self.port
    }
}

struct Owner {
    record: Record,
    status: Arc<std::sync::Mutex<PeerStatus>>,
    local: Arc<MemDev>,
}

fn hello() -> Hello {
    Hello {
        node: 1,
        identity: IDENTITY,
        generation: 0,
        device_size: SIZE,
        region_size: REGION,
    }
}

/// Node A's record, held by the peer at `port` (generation kept in `dir`).
fn owner(dir: &std::path::Path, port: u16) -> Owner {
    let g = geometry();
    let local = Arc::new(MemDev::new("local-record", RegionFile::file_size(&g)));
    let dev: Dev = local.clone();
    let file = RegionFile::create(dev, &g, IDENTITY, false).unwrap();
    let mut store = PeerStore::new(
        &format!("127.0.0.1:{port}"),
        hello(),
        &dir.join("owner.peer"),
        file,
        g.regions(),
        None,
    )
    .unwrap();
    let held = store.fetch(g.regions()).unwrap();
    let mut image = crate::record::Image::repeat(false, g.regions() as usize);
    for r in held.clone().unwrap_or_default() {
        image.set(r as usize, true);
    }
    store.start(&image).unwrap();
    let status = store.status();
    let record = Record::new(
        g,
        16 * REGION,
        by_name("lru", g.regions(), REGION).unwrap(),
        Box::new(store),
        Clock::Manual(Arc::new(AtomicU64::new(0))),
    );
    record.recover(held.unwrap_or_default());
    Owner {
        record,
        status,
        local,
    }
}

impl Owner {
    /// A write to region `r`: admitted (through the store) if it misses.
    fn write(&self, r: u64) -> crate::Result<()> {
        let mut misses = Vec::new();
        self.record.begin_write(r..r + 1, &mut misses);
        let admitted = if misses.is_empty() {
            Ok(())
        } else {
            self.record.admit(&misses)
        };
        match &admitted {
            Ok(()) => {
                let mut dirtied = Vec::new();
                self.record.end_write(r..r + 1, &mut dirtied);
            }
            Err(_) => self.record.abort_write(r..r + 1),
        }
        admitted
    }

    fn holding(&self) -> Holding {
        self.status.lock().unwrap().holding
    }

    /// What the local region file holds durably.
    fn local_regions(&self) -> Vec<u64> {
        let copy = Arc::new(MemDev::from_bytes("copy", self.local.durable_contents()));
        match RegionFile::open(copy, &geometry(), IDENTITY).unwrap() {
            (_, LoadOutcome::Loaded(r)) => r,
            (_, LoadOutcome::Corrupt(why)) => panic!("local record corrupt: {why}"),
        }
    }
}

#[test]
fn a_miss_returns_once_the_peer_holds_it_and_a_hit_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = Running::start(&dir.path().join("b"), 0);
    let a = owner(dir.path(), b.port);
    assert_eq!(a.holding(), Holding::Peer);
    a.write(5).unwrap();
    let held = b.holder.regions(IDENTITY).unwrap();
    assert!(held.contains(&5), "the peer holds the miss: {held:?}");
    let updates = a.record.stats().updates;
    a.write(5).unwrap();
    assert_eq!(a.record.stats().updates, updates, "a hit sends nothing");
    // While paired, the local file says every region: a restart that cannot
    // reach the peer resyncs all, never too little.
    assert_eq!(a.local_regions().len() as u64, geometry().regions());
    assert_eq!(a.status.lock().unwrap().generation, 1);
    assert!(a.status.lock().unwrap().rtt_us.is_some());
    b.kill();
}

#[test]
fn a_dead_peer_means_direct_service_and_a_returning_one_gets_the_record_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = Running::start(&dir.path().join("b"), 0);
    let a = owner(dir.path(), b.port);
    a.write(3).unwrap();
    let port = b.kill();
    // The next miss goes local, with the whole record, before it returns.
    a.write(40).unwrap();
    assert_eq!(a.holding(), Holding::Local);
    let local = a.local_regions();
    assert!(
        local.contains(&3) && local.contains(&40),
        "the local file holds every recorded region: {local:?}"
    );
    assert_eq!(a.status.lock().unwrap().fallbacks, 1);
    assert!(a.status.lock().unwrap().last_error.is_some());
    // The peer comes back (same directory, same port).
    let b = Running::start(&dir.path().join("b"), port);
    std::thread::sleep(super::store::RETRY_EVERY + Duration::from_millis(100));
    a.write(77).unwrap();
    assert_eq!(a.holding(), Holding::Peer, "back to paired mode");
    let held = b.holder.regions(IDENTITY).unwrap();
    for r in [3, 40, 77] {
        assert!(held.contains(&r), "region {r} handed back: {held:?}");
    }
    b.kill();
}

/// An owner that restarts (a new process, its sequence numbers from 1
/// again) while its holder runs on: its updates are held, not taken for
/// late retries of the old process's, and the old connection, if it is
/// still open, can no longer write.
#[test]
fn a_restarted_owner_is_held_again_and_its_old_connection_is_superseded() {
    let dir = tempfile::tempdir().unwrap();
    let b = Running::start(&dir.path().join("b"), 0);
    let a = owner(dir.path(), b.port);
    for r in 0..20 {
        a.write(r).unwrap();
    }
    // The owner's process dies; a new one starts (the old connection stays
    // open meanwhile, as a half-open TCP connection would).
    let again = owner(dir.path(), b.port);
    again.write(50).unwrap();
    let held = b.holder.regions(IDENTITY).unwrap();
    assert!(
        held.contains(&50),
        "the restarted owner's update was dropped: {held:?}"
    );
    // The old process's connection no longer writes.
    let err = a.write(60);
    let held = b.holder.regions(IDENTITY).unwrap();
    assert!(
        !held.contains(&60),
        "a superseded connection wrote: {held:?} ({err:?})"
    );
    b.kill();
}

/// Heartbeats: an idle owner finds a dead peer by itself, holding its
/// record locally before any write needs it, and pairs again by itself
/// when the peer returns; a takeover is learnt from a ping.
#[test]
fn heartbeats_find_a_dead_peer_and_a_takeover_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("b");
    let b = Running::start(&bdir, 0);
    let a = owner(dir.path(), b.port);
    a.write(5).unwrap();
    // Idle and paired: a ping now and then, answered.
    std::thread::sleep(super::store::HEARTBEAT_EVERY + Duration::from_millis(50));
    a.record.tick().unwrap();
    assert_eq!(a.holding(), Holding::Peer);
    let port = b.kill();
    std::thread::sleep(super::store::HEARTBEAT_EVERY + Duration::from_millis(50));
    a.record.tick().unwrap();
    assert_eq!(
        a.holding(),
        Holding::Local,
        "the heartbeat found the peer gone"
    );
    assert!(a.local_regions().contains(&5));
    let b = Running::start(&bdir, port);
    std::thread::sleep(super::store::RETRY_EVERY + Duration::from_millis(50));
    a.record.tick().unwrap();
    assert_eq!(a.holding(), Holding::Peer, "paired again with no write");
    assert!(b.holder.regions(IDENTITY).unwrap().contains(&5));
    // The holder gives the device to another node: the next ping is refused.
    b.holder.surrender(IDENTITY, 2).unwrap();
    std::thread::sleep(super::store::HEARTBEAT_EVERY + Duration::from_millis(50));
    let err = a.record.tick().unwrap_err().to_string();
    assert!(err.contains("generation 1 ended"), "{err}");
    b.kill();
}

#[test]
fn a_node_whose_device_was_taken_over_is_refused_and_stops_admitting() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("b");
    let b = Running::start(&bdir, 0);
    let a = owner(dir.path(), b.port);
    a.write(1).unwrap();
    let port = b.kill();
    // Another node took the device over: the holder's generation moved on.
    std::fs::write(bdir.join(format!("{IDENTITY:016x}.owner")), "3 2\n").unwrap();
    let b = Running::start(&bdir, port);
    // The broken link's retry meets the refusal: the miss fails, nothing is
    // served on a stale generation, and the error says why.
    let err = a.write(9).unwrap_err().to_string();
    assert!(err.contains("stale generation 1"), "{err}");
    assert!(!a.record.states().is_recorded(9));
    b.kill();
}

#[test]
fn a_node_serving_directly_stops_once_it_learns_of_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("b");
    let b = Running::start(&bdir, 0);
    let a = owner(dir.path(), b.port);
    a.write(1).unwrap();
    let port = b.kill();
    a.write(2).unwrap();
    assert_eq!(a.holding(), Holding::Local, "serving directly");
    // Meanwhile another node took the device over.
    std::fs::write(bdir.join(format!("{IDENTITY:016x}.owner")), "3 2\n").unwrap();
    let b = Running::start(&bdir, port);
    std::thread::sleep(super::store::RETRY_EVERY + Duration::from_millis(100));
    // The retry meets the refusal: the miss fails instead of being served.
    let err = a.write(9).unwrap_err().to_string();
    assert!(err.contains("stale generation 1"), "{err}");
    assert!(!a.record.states().is_recorded(9));
    b.kill();
}

#[test]
fn a_holder_survives_garbage_and_refuses_a_stale_generation_at_hello() {
    let dir = tempfile::tempdir().unwrap();
    let b = Running::start(&dir.path().join("b"), 0);
    for junk in [&b"GET / HTTP/1.0\r\n\r\n"[..], &[0u8; 64][..], b"TDLK"] {
        let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        s.write_all(junk).unwrap();
        drop(s);
    }
    // Still serving, and correct.
    let a = owner(dir.path(), b.port);
    a.write(2).unwrap();
    assert!(b.holder.regions(IDENTITY).unwrap().contains(&2));
    // An owner with no generation, where one is held: refused at start.
    std::fs::remove_file(dir.path().join("owner.peer")).unwrap();
    let g = geometry();
    let dev: Dev = Arc::new(MemDev::new("r", RegionFile::file_size(&g)));
    let file = RegionFile::create(dev, &g, IDENTITY, false).unwrap();
    let mut store = PeerStore::new(
        &format!("127.0.0.1:{}", b.port),
        hello(),
        &dir.path().join("owner.peer"),
        file,
        g.regions(),
        None,
    )
    .unwrap();
    let err = store.fetch(g.regions()).unwrap_err().to_string();
    assert!(err.contains("stale generation 0"), "{err}");
    // Every connection that ended has left: none holds a descriptor.
    drop((a, store));
    let t0 = std::time::Instant::now();
    while b.holder.open_sessions() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} sessions still open after their owners left",
            b.holder.open_sessions()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    b.kill();
}

#[test]
fn an_engine_recovers_from_what_its_peer_holds_and_from_everything_without_it() {
    use crate::engine::{pair_identity, Devices, Engine, EngineConfig, PeerConfig};
    let dir = tempfile::tempdir().unwrap();
    let b = Running::start(&dir.path().join("b"), 0);
    const DEV: u64 = 32 << 20;
    let primary = Arc::new(MemDev::new("primary", DEV));
    let secondary = Arc::new(MemDev::new("secondary", DEV));
    let g = Geometry::new(DEV, REGION).unwrap();
    let record = Arc::new(MemDev::new("record", RegionFile::file_size(&g)));
    let identity = pair_identity("primary", "secondary");
    let config = EngineConfig {
        region_size: REGION,
        capacity: 4 * REGION,
        policy: "lru".into(),
        assume_clean: true,
        peer: Some(PeerConfig {
            address: format!("127.0.0.1:{}", b.port),
            node: 1,
            state: dir.path().join("record.peer"),
        }),
        ..EngineConfig::default()
    };
    let open = |new: bool| {
        Engine::open_manual(
            Devices {
                primary: primary.clone(),
                secondary: secondary.clone(),
                record: record.clone(),
                record_is_new: new,
                shared_disks: Vec::new(),
                identity,
                lease: None,
            },
            &config,
        )
        .unwrap()
    };
    let e = open(true);
    e.write(&[7; 4096], 3 * REGION, false).unwrap();
    assert!(b.holder.regions(identity).unwrap().contains(&3));
    let st = e.status();
    let peer = st.peer.expect("the status shows the peer");
    assert_eq!(peer.holding, Holding::Peer);
    assert_eq!(peer.node, Some(2));
    // A crash: no clean stop. The next start recovers what the peer holds,
    // not the local file's every-region.
    drop(e);
    let e = open(false);
    let st = e.status();
    assert!(
        st.resync_total_bytes >= REGION && st.resync_total_bytes < DEV,
        "resynced {} of {DEV}",
        st.resync_total_bytes
    );
    assert!(e.record().states().is_dirty(3));
    drop(e);
    // Without the peer, the local file is all there is: every region.
    b.kill();
    let e = open(false);
    assert_eq!(e.status().resync_total_bytes, DEV);
    assert_eq!(e.status().peer.unwrap().holding, Holding::Local);
}

/// Dual-active: an engine that serves the device answers the other node's
/// checks and copy requests through its holder.
mod answers {
    use super::*;
    use crate::engine::{Devices, Engine, EngineConfig, Plan, Request};
    use crate::peer::wire::{read_frame, write_frame, Frame};

    fn engine() -> Engine {
        let g = geometry();
        let devices = Devices {
            primary: Arc::new(MemDev::new("primary", SIZE)),
            secondary: Arc::new(MemDev::new("secondary", SIZE)),
            record: Arc::new(MemDev::new("record", RegionFile::file_size(&g))),
            record_is_new: true,
            shared_disks: Vec::new(),
            identity: IDENTITY,
            lease: None,
        };
        let config = EngineConfig {
            region_size: REGION,
            capacity: 8 * REGION,
            policy: "lru".into(),
            assume_clean: true,
            ..EngineConfig::default()
        };
        Engine::open_manual(devices, &config).unwrap()
    }

    /// A checks session of node 1 with the holder at `port`.
    struct Asker {
        rd: std::io::BufReader<TcpStream>,
        wr: std::io::BufWriter<TcpStream>,
        seq: u64,
    }

    impl Asker {
        fn open(port: u16, identity: u64) -> std::result::Result<Asker, String> {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut a = Asker {
                rd: std::io::BufReader::new(s.try_clone().unwrap()),
                wr: std::io::BufWriter::new(s),
                seq: 0,
            };
            match a.ask(Frame::Checks(Hello {
                identity,
                ..hello()
            })) {
                Frame::Welcome { .. } => Ok(a),
                Frame::Refused { reason } => Err(reason),
                other => panic!("hello answered by {other:?}"),
            }
        }

        fn send(&mut self, f: Frame) -> u64 {
            self.seq += 1;
            write_frame(&mut self.wr, self.seq, &f).unwrap();
            self.seq
        }

        fn answer(&mut self, seq: u64) -> Frame {
            let (s, f) = read_frame(&mut self.rd).unwrap();
            assert_eq!(s, seq, "answered in order");
            f
        }

        fn ask(&mut self, f: Frame) -> Frame {
            let seq = self.send(f);
            self.answer(seq)
        }
    }

    fn serving() -> (tempfile::TempDir, Running, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let run = Running::start(dir.path(), 0);
        let engine = Arc::new(engine());
        run.holder.answer_for(IDENTITY, engine.clone());
        (dir, run, engine)
    }

    #[test]
    fn a_check_waits_for_the_write_in_flight() {
        let (_dir, run, engine) = serving();
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        assert_eq!(a.ask(Frame::Check { region: 3 }), Frame::Done { errno: 0 });
        // A write to region 3, issued and not completed.
        let buf = vec![7u8; 4096];
        let mut plan = engine.plan(Request::write(3 * REGION, 4096, false));
        let io = loop {
            plan = match plan {
                Plan::Pending(p) => p.submit(Box::new(|| {})).finish(),
                Plan::Ready(io) => break io,
                Plan::Done(r) => panic!("{:?}", r.err()),
            };
        };
        let seq = a.send(Frame::Check { region: 3 });
        // No answer while the write is in flight.
        a.rd.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let early = std::io::Read::read(&mut a.rd, &mut byte);
        assert!(
            early.is_err(),
            "the check was answered while a write to its region was in flight"
        );
        a.rd.get_ref().set_read_timeout(None).unwrap();
        let res = io.run(crate::engine::Data::From(&buf));
        io.complete(res).unwrap();
        assert_eq!(a.answer(seq), Frame::Done { errno: 0 });
        run.kill();
    }

    #[test]
    fn a_grant_holds_back_this_nodes_copy_and_marks_clean_when_quiet() {
        let (_dir, run, engine) = serving();
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        let states = engine.record().states();
        engine.write(&vec![1u8; 4096], 5 * REGION, false).unwrap();
        assert!(states.is_dirty(5));
        let Frame::Grant { seq } = a.ask(Frame::CopyBegin { region: 5 }) else {
            panic!("not granted")
        };
        assert!(
            !engine.pump_mirror(),
            "this node copied a region granted to the other"
        );
        // Ended with no write since: clean here too.
        let end = Frame::CopyEnd {
            region: 5,
            seq,
            landed: true,
        };
        assert_eq!(a.ask(end), Frame::Ended { unchanged: true });
        assert!(!states.is_dirty(5));
        // A write during the grant: neither side may mark it clean.
        engine.write(&vec![2u8; 4096], 5 * REGION, false).unwrap();
        let Frame::Grant { seq } = a.ask(Frame::CopyBegin { region: 5 }) else {
            panic!("not granted")
        };
        engine.write(&vec![3u8; 4096], 5 * REGION, false).unwrap();
        let end = Frame::CopyEnd {
            region: 5,
            seq,
            landed: true,
        };
        assert_eq!(a.ask(end), Frame::Ended { unchanged: false });
        assert!(states.is_dirty(5));
        // The grant over, this node copies it again.
        assert!(engine.pump_mirror());
        assert!(!states.is_dirty(5));
        // A region this node copies now is refused to the other.
        engine.write(&vec![4u8; 4096], 6 * REGION, false).unwrap();
        let claim = states.claim_copy(6).unwrap();
        assert_eq!(a.ask(Frame::CopyBegin { region: 6 }), Frame::Busy);
        states.finish_copy(6, claim, false);
        run.kill();
    }

    #[test]
    fn a_grant_left_by_a_closed_connection_expires() {
        let (_dir, run, engine) = serving();
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        engine.write(&vec![1u8; 4096], 2 * REGION, false).unwrap();
        assert!(matches!(
            a.ask(Frame::CopyBegin { region: 2 }),
            Frame::Grant { .. }
        ));
        drop(a);
        std::thread::sleep(GRANT_EXPIRY / 2);
        assert!(
            engine.record().states().is_granted(2),
            "a grant ended before its copier's time to land ran out"
        );
        let t0 = std::time::Instant::now();
        while engine.record().states().is_granted(2) && t0.elapsed() < GRANT_EXPIRY * 2 {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !engine.record().states().is_granted(2),
            "the grant never ended"
        );
        assert!(engine.pump_mirror(), "the region is copied here again");
        run.kill();
    }

    #[test]
    fn the_view_follows_the_held_record_before_each_answer() {
        let dir = tempfile::tempdir().unwrap();
        let run = Running::start(dir.path(), 0);
        let regions = SIZE / REGION;
        let view = run.holder.view(IDENTITY, regions);
        // Never held here: a first start of the pair, nothing to ask.
        assert!(view.is_fresh() && !view.lists(9));
        let changed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = changed.clone();
        view.on_change(Box::new(move |r| c.lock().unwrap().push(r)));
        let owner = owner(dir.path(), run.port);
        assert!(view.is_fresh(), "the whole record was handed over");
        let told = changed.lock().unwrap().len();
        assert!(
            told > 0 && changed.lock().unwrap()[0].is_none(),
            "loaded whole first"
        );
        owner.write(9).unwrap();
        // The update is acknowledged: the view has it already (the record
        // is one page here, so the update is the whole record).
        assert!(view.lists(9));
        assert!(!view.lists(10));
        assert!(
            changed.lock().unwrap().len() > told,
            "the change was not told"
        );
        // The owner's connection ends: every region counts again.
        drop(owner);
        let t0 = std::time::Instant::now();
        while view.is_fresh() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !view.is_fresh() && view.lists(10),
            "the view outlived its session"
        );
        // The other node says bye (a clean stop): nothing to ask it.
        run.holder.answer_for(IDENTITY, Arc::new(engine()));
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        assert_eq!(a.ask(Frame::Bye), Frame::Done { errno: 0 });
        assert!(
            view.is_fresh() && !view.lists(9),
            "bye did not empty the view"
        );
        let port = run.kill();
        // This node restarts while the other is still stopped: the clean
        // stop was kept, so nothing is waited for.
        let restarted = Holder::new(dir.path(), 2).unwrap();
        assert!(
            restarted.view(IDENTITY, regions).is_fresh(),
            "a restart forgot the other node's clean stop"
        );
        // Once the other node serves again, a restart must wait for it.
        let run = Running::start(dir.path(), port);
        let _view = run.holder.view(IDENTITY, regions);
        drop(super::owner(dir.path(), run.port));
        run.kill();
        let restarted = Holder::new(dir.path(), 2).unwrap();
        let view = restarted.view(IDENTITY, regions);
        assert!(
            !view.is_fresh() && view.lists(9),
            "a restart trusted a clean stop that a hello had ended"
        );
    }

    #[test]
    fn bad_checks_are_refused_with_the_reason() {
        let (_dir, run, _engine) = serving();
        let e = Asker::open(run.port, IDENTITY + 1).err().unwrap();
        assert!(e.contains("does not serve device"), "{e}");
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        let regions = SIZE / REGION;
        match a.ask(Frame::Check { region: regions }) {
            Frame::Refused { reason } => {
                assert!(
                    reason.contains(&format!(
                        "region {regions} of a device of {regions} regions"
                    )),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        match a.ask(Frame::Pages(Vec::new())) {
            Frame::Refused { reason } => {
                assert!(reason.contains("unexpected pages frame"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The holder serves on.
        let mut a = Asker::open(run.port, IDENTITY).unwrap();
        assert_eq!(a.ask(Frame::Check { region: 0 }), Frame::Done { errno: 0 });
        run.kill();
    }
}

/// Dual-active over loopback: two engines serve one shared primary, each
/// record held by the other node, and a request to a region in the other's
/// record waits for its answer.
mod dual {
    use super::*;
    use crate::engine::{Devices, Engine, EngineConfig, PeerConfig, Plan, Request};

    struct Node {
        engine: Arc<Engine>,
        run: Running,
        _dir: tempfile::TempDir,
    }

    /// Nodes 1 and 2 over one shared primary and secondary, each holder on
    /// its own port; and the secondary.
    fn pair() -> (Node, Node, Arc<MemDev>) {
        pair_with(None)
    }

    /// The lease of node `n` (1 or 2) in `dir`.
    fn lease_config(dir: &std::path::Path, n: u64) -> crate::lease::LeaseConfig {
        crate::lease::LeaseConfig {
            path: dir.join(format!("lease-{n}")),
            node: n,
            timeout: Duration::from_millis(400),
            reclaim: true,
        }
    }

    /// `pair`, each node with its own lease in `leases` when given.
    fn pair_with(leases: Option<&std::path::Path>) -> (Node, Node, Arc<MemDev>) {
        let primary = Arc::new(MemDev::new("shared-primary", SIZE));
        let secondary = Arc::new(MemDev::new("secondary", SIZE));
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let runs = [
            Running::start_as(&dirs[0].path().join("held"), 0, 1),
            Running::start_as(&dirs[1].path().join("held"), 0, 2),
        ];
        let g = geometry();
        let engines: Vec<Arc<Engine>> = (0..2)
            .map(|i| {
                let other = runs[1 - i].port;
                let config = EngineConfig {
                    region_size: REGION,
                    capacity: 8 * REGION,
                    policy: "lru".into(),
                    assume_clean: true,
                    peer: Some(PeerConfig {
                        address: format!("127.0.0.1:{other}"),
                        node: i as u64 + 1,
                        state: dirs[i].path().join("record.peer"),
                    }),
                    ..EngineConfig::default()
                };
                let devices = Devices {
                    primary: primary.clone(),
                    secondary: secondary.clone(),
                    record: Arc::new(MemDev::new("record", RegionFile::file_size(&g))),
                    record_is_new: true,
                    shared_disks: Vec::new(),
                    identity: IDENTITY,
                    lease: leases.map(|dir| {
                        let lc = lease_config(dir, i as u64 + 1);
                        crate::lease::Lease::claim(&lc, IDENTITY, SIZE, REGION).unwrap()
                    }),
                };
                Arc::new(Engine::open_manual(devices, &config).unwrap())
            })
            .collect();
        for i in 0..2 {
            let other = runs[1 - i].port;
            let hello = Hello {
                node: i as u64 + 1,
                ..hello()
            };
            let link = checks::CheckLink::new(
                &format!("127.0.0.1:{other}"),
                hello,
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
            engines[i].go_dual(&runs[i].holder, link).unwrap();
        }
        let [d0, d1] = dirs;
        let [r0, r1] = runs;
        let mut e = engines.into_iter();
        let nodes = (
            Node {
                engine: e.next().unwrap(),
                run: r0,
                _dir: d0,
            },
            Node {
                engine: e.next().unwrap(),
                run: r1,
                _dir: d1,
            },
        );
        (nodes.0, nodes.1, secondary)
    }

    fn checked(n: &Node) -> u64 {
        n.engine.dual_status().unwrap().checked_requests
    }

    #[test]
    fn a_read_through_the_other_node_waits_for_its_write() {
        let (a, b, _) = pair();
        // A writes region 3: its record, held by B, lists it.
        a.engine
            .write(&vec![0xa1; 4096], 3 * REGION, false)
            .unwrap();
        let view = b.run.holder.view(IDENTITY, SIZE / REGION);
        assert!(view.is_fresh() && view.lists(3) && !view.lists(4));
        // B reads it after asking A; a region A never wrote needs no check.
        let before = checked(&b);
        let mut buf = vec![0u8; 4096];
        b.engine.read(&mut buf, 3 * REGION).unwrap();
        assert_eq!(buf, vec![0xa1; 4096]);
        assert_eq!(checked(&b), before + 1);
        b.engine.read(&mut buf, 4 * REGION).unwrap();
        assert_eq!(
            checked(&b),
            before + 1,
            "a region A's record does not list was checked"
        );
        // A write in flight at A: B's read waits for it.
        let mut plan = a.engine.plan(Request::write(3 * REGION, 4096, false));
        let io = loop {
            plan = match plan {
                Plan::Pending(p) => p.admit(),
                Plan::Ready(io) => break io,
                Plan::Done(r) => panic!("{:?}", r.err()),
            };
        };
        let reader = {
            let e = b.engine.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                e.read(&mut buf, 3 * REGION).unwrap();
                buf
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !reader.is_finished(),
            "B read while A's write was in flight"
        );
        let data = vec![0xa2; 4096];
        let res = io.run(crate::engine::Data::From(&data));
        io.complete(res).unwrap();
        assert_eq!(reader.join().unwrap(), data);
        // And the other way: B writes region 7, A asks before its read.
        b.engine
            .write(&vec![0xb1; 4096], 7 * REGION, false)
            .unwrap();
        let before = checked(&a);
        a.engine.read(&mut buf, 7 * REGION).unwrap();
        assert_eq!(buf, vec![0xb1; 4096]);
        assert_eq!(checked(&a), before + 1);
        a.run.kill();
        b.run.kill();
    }

    #[test]
    fn a_region_both_nodes_wrote_is_copied_under_the_others_grant() {
        let (a, b, secondary) = pair();
        a.engine
            .write(&vec![0xa1; 4096], 3 * REGION, false)
            .unwrap();
        // In another chunk of the region than A's write: A's copy must land
        // it too, since it marks B's side clean.
        b.engine
            .write(&vec![0xb1; 4096], 3 * REGION + REGION / 2, false)
            .unwrap();
        let (sa, sb) = (a.engine.record().states(), b.engine.record().states());
        assert!(sa.is_dirty(3) && sb.is_dirty(3));
        // B copies the region itself now: A is told busy, and copies later.
        let claim = sb.claim_copy(3).unwrap();
        a.engine.pump_mirror();
        assert!(sa.is_dirty(3), "A copied a region B was copying");
        sb.finish_copy(3, claim, false);
        std::thread::sleep(Duration::from_millis(100));
        // Granted: A's copy lands both writes, and both sides turn clean.
        assert!(a.engine.pump_mirror());
        assert!(!sa.is_dirty(3), "A's granted copy did not mark it clean");
        assert!(
            !sb.is_dirty(3),
            "B's data was copied but B still has it dirty"
        );
        let mut got = vec![0u8; 4096];
        crate::dev::BlockDev::read_at(&*secondary, &mut got, 3 * REGION).unwrap();
        assert_eq!(got, vec![0xa1; 4096]);
        crate::dev::BlockDev::read_at(&*secondary, &mut got, 3 * REGION + REGION / 2).unwrap();
        assert_eq!(got, vec![0xb1; 4096], "B's chunk was not copied");
        a.run.kill();
        b.run.kill();
    }

    /// Node A dies with region 3 in its record: until its lease expires,
    /// B holds its requests (A may have served directly since its record
    /// was last heard of); then B takes A's lease and record over, serves
    /// without asking, and copies A's region itself. A, back, claims its
    /// lease again at the next generation.
    #[test]
    fn the_survivor_takes_the_dead_nodes_record_over_and_serves() {
        let leases = tempfile::tempdir().unwrap();
        let (a, b, secondary) = pair_with(Some(leases.path()));
        let a_lease = lease_config(leases.path(), 1);
        b.engine
            .watch_other(
                &b.run.holder,
                &a_lease.path,
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
        a.engine
            .write(&vec![0xa1; 4096], 3 * REGION, false)
            .unwrap();
        assert!(b.run.holder.view(IDENTITY, SIZE / REGION).lists(3));
        // A dies: its holder and its connections gone, its lease no longer
        // renewed.
        let Node { engine, run, .. } = a;
        run.kill();
        drop(engine);
        let reader = {
            let e = b.engine.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                e.read(&mut buf, 3 * REGION).unwrap();
                buf
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !reader.is_finished() && b.engine.dual_status().unwrap().takeovers.is_empty(),
            "B served a region of A's record before A's lease expired"
        );
        let t0 = std::time::Instant::now();
        let takeover = loop {
            if let Some(t) = b.engine.dual_status().unwrap().takeovers.first() {
                break t.clone();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no takeover");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(reader.join().unwrap(), vec![0xa1; 4096]);
        assert_eq!(
            (
                takeover.from_node,
                takeover.generation,
                takeover.whole_device
            ),
            (1, 2, false)
        );
        assert!(
            takeover.regions >= 1 && takeover.waited_ms >= 600,
            "{takeover:?}"
        );
        // Region 3 is B's to copy now, and no region needs asking.
        let sb = b.engine.record().states();
        assert!(sb.is_dirty(3));
        while b.engine.pump_mirror() {}
        assert!(!sb.is_dirty(3));
        let mut got = vec![0u8; 4096];
        crate::dev::BlockDev::read_at(&*secondary, &mut got, 3 * REGION).unwrap();
        assert_eq!(got, vec![0xa1; 4096]);
        let before = checked(&b);
        b.engine.read(&mut got, 5 * REGION).unwrap();
        assert_eq!(checked(&b), before, "B asked the dead node");
        // B released A's lease; A claims it back, never without reclaim.
        let block = crate::lease::LeaseArea::open(&a_lease.path)
            .unwrap()
            .read()
            .unwrap()
            .unwrap();
        assert_eq!(
            (block.owner, block.generation, block.released),
            (2, 2, true)
        );
        let refused = crate::lease::LeaseConfig {
            reclaim: false,
            ..a_lease.clone()
        };
        assert!(crate::lease::Lease::claim(&refused, IDENTITY, SIZE, REGION).is_err());
        let back = crate::lease::Lease::claim(&a_lease, IDENTITY, SIZE, REGION).unwrap();
        assert_eq!(back.generation(), 3);
        b.run.kill();
    }
}
