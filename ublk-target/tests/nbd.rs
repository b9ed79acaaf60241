//! The engine mirroring to real NBD servers on loopback: qemu-nbd over a
//! Unix socket, nbdkit over TCP on 127.0.0.1 (with its error and delay
//! filters, and killed and restarted under writes). Every test ends with
//! the export read back through the client and compared with the primary.
//!
//! The servers are Debian's `qemu-utils` and `nbdkit`; a test whose server
//! is not installed fails and says what to install (CI installs both).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem::dev::{BlockDev, NbdDev, NbdUri};
use tandem::engine::{Data, Paths};
use tandem::status::State;
use tandem::{Engine, EngineConfig, Request};

const REGION: u64 = 256 << 10;
const SIZE: u64 = 32 << 20;
const IO: u64 = 64 << 10;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    uri: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: this test needs Debian's {package} (apt-get install {package})"
    );
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not happen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connects(uri: &str) -> bool {
    NbdDev::connect(&NbdUri::parse(uri).unwrap()).is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// qemu-nbd serving `file` as export `exp` on a Unix socket.
fn qemu_nbd(file: &Path, socket: &Path) -> Server {
    require("qemu-nbd", "qemu-utils");
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "exp", "-t", "-e", "8", "-k"])
        .arg(socket)
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("run qemu-nbd");
    let uri = format!("nbd+unix:///exp?socket={}", socket.display());
    wait_for("qemu-nbd listening", || socket.exists() && connects(&uri));
    Server { child, uri }
}

/// nbdkit's file plugin on 127.0.0.1:`port`, through `filters` (with their
/// parameters in `params`).
fn nbdkit(file: &Path, port: u16, filters: &[&str], params: &[&str]) -> Server {
    require("nbdkit", "nbdkit");
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string());
    for f in filters {
        cmd.arg(format!("--filter={f}"));
    }
    cmd.arg("file").arg(file).args(params).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("run nbdkit");
    let uri = format!("nbd://127.0.0.1:{port}/");
    wait_for("nbdkit listening", || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("nbdkit exited at start: {status}");
        }
        connects(&uri)
    });
    Server { child, uri }
}

struct Setup {
    _dir: tempfile::TempDir,
    paths: Paths,
    /// The file the server exports.
    export: PathBuf,
    dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.img");
    let primary = dir.path().join("p");
    for p in [&primary, &export] {
        std::fs::File::create(p).unwrap().set_len(SIZE).unwrap();
    }
    Setup {
        paths: Paths {
            primary,
            secondary: PathBuf::new(),
            record: dir.path().join("r"),
        },
        export,
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        region_size: REGION,
        assume_clean: true,
        ..EngineConfig::default()
    }
}

fn open(s: &Setup, uri: &str) -> Engine {
    let mut paths = s.paths.clone();
    paths.secondary = uri.into();
    let config = config();
    Engine::open(paths.open(&config).unwrap(), &config).unwrap()
}

/// Writes `n` blocks of `IO` bytes at pseudo-random offsets, each filled
/// with its own pattern; every write must succeed.
fn write_random(e: &Engine, n: u64, seed: u64) {
    let mut x = seed | 1;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (SIZE / IO)) * IO;
        let buf: Vec<u8> = (0..IO).map(|b| (b as u8) ^ (i as u8) ^ (x as u8)).collect();
        e.serve(Request::write(offset, IO, false), Data::From(&buf))
            .unwrap_or_else(|err| panic!("host write {i} at {offset} failed: {err}"));
    }
}

/// Reads the whole export through a fresh client and compares it with the
/// primary.
fn assert_export_matches(primary: &Path, uri: &str) {
    let dev = NbdDev::connect(&NbdUri::parse(uri).unwrap()).unwrap();
    let mut remote = vec![0u8; SIZE as usize];
    dev.read_at(&mut remote, 0).unwrap();
    let local = std::fs::read(primary).unwrap();
    let first = local.iter().zip(&remote).position(|(a, b)| a != b);
    assert!(
        first.is_none(),
        "the export differs from the primary, first at byte {first:?}"
    );
}

fn synced(e: &Engine, within: Duration) {
    assert!(e.wait_synced(within), "not caught up: {:?}", e.status());
}

#[test]
fn qemu_nbd_over_a_unix_socket_mirrors_every_write() {
    let s = setup();
    let server = qemu_nbd(&s.export, &s.dir.join("nbd.sock"));
    let e = open(&s, &server.uri);
    assert_eq!(e.status().state, State::Live);
    write_random(&e, 400, 7);
    // Zeroes too: WRITE_ZEROES where the server takes it.
    e.serve(Request::write_zeroes(REGION, 2 * REGION), Data::None)
        .unwrap();
    synced(&e, Duration::from_secs(30));
    let st = e.status();
    assert!(st.bytes_copied > 0, "{st:?}");
    e.shutdown().unwrap();
    drop(e);
    assert_export_matches(&s.paths.primary, &server.uri);
}

#[test]
fn nbdkit_killed_and_restarted_under_writes_is_survived() {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &[], &[]);
    let uri = server.uri.clone();
    let e = open(&s, &uri);
    write_random(&e, 100, 11);
    synced(&e, Duration::from_secs(30));

    // The server dies: host writes go on, the device is degraded, the
    // record keeps what was written.
    drop(server);
    write_random(&e, 300, 13);
    wait_for("degraded mode", || e.status().state == State::Degraded);
    write_random(&e, 100, 17);
    let st = e.status();
    assert!(st.dirty_bytes > 0, "{st:?}");
    assert!(!e.wait_synced(Duration::from_millis(300)));

    // Back on the same port: the copy catches up.
    let back = Instant::now();
    let server = nbdkit(&s.export, port, &[], &[]);
    synced(&e, Duration::from_secs(60));
    eprintln!(
        "caught up {:.1} s after the server came back",
        back.elapsed().as_secs_f64()
    );
    assert_ne!(e.status().state, State::Degraded);
    e.shutdown().unwrap();
    drop(e);
    assert_export_matches(&s.paths.primary, &server.uri);
}

#[test]
fn nbdkit_error_filter_failures_are_retried_until_the_copy_lands() {
    let s = setup();
    let port = free_port();
    // Three in a hundred writes and zeroings fail with EIO (a batch that
    // meets one is copied again whole).
    let server = nbdkit(
        &s.export,
        port,
        &["error"],
        &["error=EIO", "error-pwrite-rate=3%", "error-zero-rate=3%"],
    );
    let e = open(&s, &server.uri);
    // The errors are drawn at random: a round of 300 writes met from 0 to 28
    // of them, so rounds go on (up to ten) until one did.
    for round in 0..10 {
        write_random(&e, 300, 19 + round);
        synced(&e, Duration::from_secs(60));
        if e.status().copy_errors > 0 {
            break;
        }
    }
    let st = e.status();
    eprintln!("copy errors retried: {}", st.copy_errors);
    assert!(st.copy_errors > 0, "the filter injected no error: {st:?}");
    e.shutdown().unwrap();
    drop(e);
    drop(server);
    let clean = nbdkit(&s.export, port, &[], &[]);
    assert_export_matches(&s.paths.primary, &clean.uri);
}

#[test]
fn nbdkit_delay_filter_slows_copies_but_not_the_host() {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &["delay"], &["delay-write=20ms"]);
    let e = open(&s, &server.uri);
    let start = Instant::now();
    write_random(&e, 200, 23);
    let host = start.elapsed();
    synced(&e, Duration::from_secs(60));
    eprintln!(
        "host writes {:.2} s, mirror caught up after {:.2} s",
        host.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    e.shutdown().unwrap();
    drop(e);
    assert_export_matches(&s.paths.primary, &server.uri);
}

#[test]
fn an_export_smaller_than_the_primary_is_refused_by_name() {
    let s = setup();
    std::fs::File::options()
        .write(true)
        .open(&s.export)
        .unwrap()
        .set_len(SIZE / 2)
        .unwrap();
    let server = qemu_nbd(&s.export, &s.dir.join("small.sock"));
    let mut paths = s.paths.clone();
    paths.secondary = server.uri.clone().into();
    let err = paths
        .open(&config())
        .and_then(|d| Engine::open(d, &config()))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("smaller") && err.contains(&server.uri),
        "{err}"
    );
}

#[test]
fn an_unknown_export_and_a_closed_port_are_named() {
    let s = setup();
    let server = qemu_nbd(&s.export, &s.dir.join("x.sock"));
    let wrong = server.uri.replace("/exp?", "/nope?");
    let err = NbdDev::connect(&NbdUri::parse(&wrong).unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("nope") && err.contains(&wrong), "{err}");
    let closed = format!("nbd://127.0.0.1:{}/x", free_port());
    let err = NbdDev::connect(&NbdUri::parse(&closed).unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(&closed) && err.contains("refused"), "{err}");
}

/// A server that shakes hands correctly, then answers `reply` to the first
/// request (fault injection no real server does).
fn fake_server(reply: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"NBDMAGIC").unwrap();
        s.write_all(&0x4948_4156_454f_5054u64.to_be_bytes())
            .unwrap();
        s.write_all(&3u16.to_be_bytes()).unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        let info = |s: &mut std::net::TcpStream, kind: u32, data: &[u8]| {
            s.write_all(&0x0003_e889_0455_65a9u64.to_be_bytes())
                .unwrap();
            s.write_all(&7u32.to_be_bytes()).unwrap();
            s.write_all(&kind.to_be_bytes()).unwrap();
            s.write_all(&(data.len() as u32).to_be_bytes()).unwrap();
            s.write_all(data).unwrap();
        };
        let mut export = vec![0u8, 0];
        export.extend_from_slice(&SIZE.to_be_bytes());
        export.extend_from_slice(&(1u16 | 4).to_be_bytes());
        info(&mut s, 3, &export);
        info(&mut s, 1, &[]);
        let mut req = [0u8; 28];
        s.read_exact(&mut req).unwrap();
        s.write_all(&reply).unwrap();
        // Hold the connection until the client closes it.
        let mut rest = BufReader::new(s);
        let mut line = String::new();
        let _ = rest.read_line(&mut line);
    });
    (format!("nbd://127.0.0.1:{port}/"), t)
}

#[test]
fn a_malformed_reply_is_an_error_not_a_crash() {
    for (reply, says) in [
        (vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0], "magic 0xdeadbeef"),
        (
            {
                let mut r = 0x6744_6698u32.to_be_bytes().to_vec();
                r.extend_from_slice(&0u32.to_be_bytes());
                r.extend_from_slice(&999u64.to_be_bytes());
                r
            },
            "cookie 999",
        ),
    ] {
        let (uri, server) = fake_server(reply);
        let dev = NbdDev::connect(&NbdUri::parse(&uri).unwrap()).unwrap();
        let mut buf = vec![0u8; 4096];
        let err = dev.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(err.contains(says), "{says}: {err}");
        drop(dev);
        server.join().unwrap();
    }
}

/// Writes each of the first `n` regions once, in order, and returns the
/// largest dirty backlog seen after a write.
fn fill_regions(e: &Engine, n: u64) -> u64 {
    let buf = vec![0x5a; REGION as usize];
    let mut most = 0;
    for r in 0..n {
        e.serve(Request::write(r * REGION, REGION, false), Data::From(&buf))
            .unwrap_or_else(|err| panic!("host write of region {r} failed: {err}"));
        most = most.max(e.status().dirty_bytes);
    }
    most
}

#[test]
fn max_dirty_throttle_bounds_the_backlog_and_pull_ahead_does_not() {
    let s = setup();
    let port = free_port();
    // A secondary far slower than the host: 30 ms a write.
    let server = nbdkit(&s.export, port, &["delay"], &["delay-write=30ms"]);
    let max = 4 * REGION;
    let mut seen = Vec::new();
    for policy in [
        tandem::engine::OverMaxDirty::Throttle,
        tandem::engine::OverMaxDirty::PullAhead,
    ] {
        let mut paths = s.paths.clone();
        paths.secondary = server.uri.clone().into();
        let _ = std::fs::remove_file(&paths.record);
        let config = EngineConfig {
            max_dirty: Some(max),
            on_max_dirty: policy,
            mirror: tandem::mirror::MirrorConfig {
                copy_delay: Duration::ZERO,
                ..Default::default()
            },
            ..config()
        };
        let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
        let t0 = Instant::now();
        let most = fill_regions(&e, SIZE / REGION);
        let secs = t0.elapsed().as_secs_f64();
        let st = e.status();
        let bound = st.max_dirty.clone().expect("the status shows the bound");
        eprintln!(
            "{policy}: most dirty {} KiB (bound {} KiB), {} writes throttled for {:.2} s, \
             host writes took {secs:.2} s, recovery point now {:.2} s",
            most >> 10,
            max >> 10,
            bound.throttled_writes,
            bound.throttled_seconds,
            st.lag_seconds
        );
        assert_eq!(bound.max_dirty_bytes, max);
        assert_eq!(bound.on_max_dirty, policy);
        seen.push((most, bound.throttled_writes));
        synced(&e, Duration::from_secs(60));
        e.shutdown().unwrap();
        drop(e);
        assert_export_matches(&s.paths.primary, &server.uri);
    }
    let (throttled, pulled) = (seen[0], seen[1]);
    // One write in flight at a time: at most one region over the bound.
    assert!(
        throttled.0 <= max + REGION,
        "throttle let the backlog reach {} bytes",
        throttled.0
    );
    assert!(throttled.1 > 0, "no write was throttled");
    assert!(
        pulled.0 > 2 * max,
        "pull-ahead kept the backlog at {}",
        pulled.0
    );
    assert_eq!(pulled.1, 0, "pull-ahead throttled writes");
}

#[test]
fn throttle_never_holds_writes_while_the_secondary_is_down() {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &[], &[]);
    let mut paths = s.paths.clone();
    paths.secondary = server.uri.clone().into();
    let config = EngineConfig {
        max_dirty: Some(2 * REGION),
        ..config()
    };
    let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    drop(server);
    // Writes until the mirror has noticed, then all of the device: none waits for ever.
    write_random(&e, 50, 29);
    wait_for("degraded mode", || e.status().state == State::Degraded);
    let t0 = Instant::now();
    fill_regions(&e, SIZE / REGION);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "degraded writes were held for {:?}",
        t0.elapsed()
    );
    assert!(e.status().dirty_bytes > 2 * REGION);
    let server = nbdkit(&s.export, port, &[], &[]);
    synced(&e, Duration::from_secs(60));
    e.shutdown().unwrap();
    drop(e);
    assert_export_matches(&s.paths.primary, &server.uri);
}

#[test]
fn a_connection_lost_with_writes_unflushed_counts_a_loss_and_a_flushed_one_does_not() {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &[], &[]);
    let dev = NbdDev::connect(&NbdUri::parse(&server.uri).unwrap()).unwrap();
    let block = vec![7u8; 1 << 20];

    // Written and flushed, then the server dies: nothing was at risk.
    dev.write_at(&block, 0, false).unwrap();
    dev.sync().unwrap();
    let before = dev.losses();
    drop(server);
    let mut buf = vec![0u8; 4096];
    wait_for("the client to see the server gone", || {
        dev.read_at(&mut buf, 0).is_err()
    });
    assert_eq!(dev.losses(), before, "a flushed connection lost nothing");

    // Written, not flushed, and the server dies: the write may be lost, and
    // a flush on the next connection must not count as covering it.
    let server = nbdkit(&s.export, port, &[], &[]);
    wait_for("a reconnection", || dev.read_at(&mut buf, 0).is_ok());
    dev.write_at(&block, 1 << 20, false).unwrap();
    let before = dev.losses();
    drop(server);
    wait_for("the client to see the server gone", || {
        dev.read_at(&mut buf, 0).is_err()
    });
    let _server = nbdkit(&s.export, port, &[], &[]);
    wait_for("a reconnection", || dev.sync().is_ok());
    assert!(
        dev.losses() > before,
        "writes unflushed on a lost connection were not counted"
    );
    assert!(dev.reconnects() >= 2, "{} reconnects", dev.reconnects());
}

/// What a `fault_link` does once armed.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Forwards nothing more, closes nothing: a route that drops every
    /// packet (what is sent fills the sockets' buffers).
    Swallow,
    /// Drops every connection the moment the client sends its next
    /// request, unforwarded: a server that crashes on receiving it.
    CrashOnRequest,
}

/// A link on loopback to `upstream` that forwards until armed, then fails
/// as `fault` says. Returns its port and the switch that arms it.
fn fault_link(upstream: u16, fault: Fault) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicBool::new(false));
    let all: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let a = armed.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            all.lock()
                .unwrap()
                .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
            for (mut from, mut to, upward) in [
                (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                ),
                (server, client, false),
            ] {
                let (a, all) = (a.clone(), all.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if a.load(Ordering::Acquire) {
                            match fault {
                                // Holds both sockets open, reading no more.
                                Fault::Swallow => {
                                    std::thread::sleep(Duration::from_secs(3600));
                                    return;
                                }
                                Fault::CrashOnRequest if upward => {
                                    for s in all.lock().unwrap().iter() {
                                        let _ = s.shutdown(Shutdown::Both);
                                    }
                                    return;
                                }
                                Fault::CrashOnRequest => {}
                            }
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, armed)
}

/// An nbdkit export reached through a `fault_link`, with requests timing
/// out after `timeout`: the setup, the server, the client and the link's
/// switch.
fn behind_fault(
    fault: Fault,
    timeout: Duration,
) -> (
    Setup,
    Server,
    NbdDev,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &[], &[]);
    let (link, armed) = fault_link(port, fault);
    let uri = NbdUri::parse(&format!("nbd://127.0.0.1:{link}/")).unwrap();
    let dev = NbdDev::connect_with(&uri, timeout).unwrap();
    (s, server, dev, armed)
}

#[test]
fn a_link_that_drops_everything_fails_requests_within_their_timeout() {
    let timeout = Duration::from_secs(2);
    let (_s, _server, dev, swallow) = behind_fault(Fault::Swallow, timeout);
    let block = vec![3u8; 8 << 20];
    dev.write_at(&block, 0, false).unwrap();
    dev.sync().unwrap();
    swallow.store(true, std::sync::atomic::Ordering::Release);
    // Far more than the sockets' buffers take: a send would block until
    // TCP gave up (many minutes) without a timeout of its own.
    let t0 = Instant::now();
    let err = dev
        .write_at(&vec![4u8; SIZE as usize], 0, false)
        .unwrap_err();
    let took = t0.elapsed();
    eprintln!("a write into the black hole failed after {took:?}: {err}");
    assert!(
        took < timeout * 3,
        "the write took {took:?} to fail, with a request timeout of {timeout:?}"
    );
    let t0 = Instant::now();
    assert!(
        dev.sync().is_err(),
        "a flush through the black hole succeeded"
    );
    assert!(
        t0.elapsed() < timeout * 3,
        "the flush took {:?}",
        t0.elapsed()
    );
}

#[test]
fn concurrent_syncs_share_flushes_and_each_covers_its_writes() {
    let s = setup();
    let port = free_port();
    let server = nbdkit(&s.export, port, &[], &[]);
    let dev = std::sync::Arc::new(NbdDev::connect(&NbdUri::parse(&server.uri).unwrap()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for i in 0..16u64 {
                    let at = (t * 16 + i) * IO;
                    dev.write_at(&vec![(t * 16 + i) as u8; IO as usize], at, false)
                        .unwrap();
                    dev.sync().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let flushes = dev.flushes_sent();
    eprintln!("128 syncs from 8 threads sent {flushes} flushes");
    assert!(flushes > 0 && flushes <= 128, "{flushes} flushes");
    let mut buf = vec![0u8; IO as usize];
    for k in 0..128u64 {
        dev.read_at(&mut buf, k * IO).unwrap();
        assert!(
            buf.iter().all(|&b| b == k as u8),
            "block {k} reads back wrong"
        );
    }
}

#[test]
fn a_connection_lost_while_its_flush_is_out_counts_a_loss() {
    let (_s, _server, dev, armed) = behind_fault(Fault::CrashOnRequest, Duration::from_secs(5));
    // Acknowledged, not yet flushed; the server "crashes" on the flush
    // that would cover it, and every connection goes.
    dev.write_at(&vec![5u8; 1 << 20], 0, false).unwrap();
    let before = dev.losses();
    armed.store(true, std::sync::atomic::Ordering::Release);
    assert!(dev.sync().is_err(), "a flush to a crashed server succeeded");
    assert!(
        dev.losses() > before,
        "the write the lost flush should have covered was not counted as a loss"
    );
}
