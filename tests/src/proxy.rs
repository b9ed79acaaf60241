//! A TCP proxy on loopback between a node and its peer, that a test
//! controls: it can slow every chunk it forwards, and cut every connection
//! (refusing new ones while cut). The host peer tests use it in-process;
//! the `link-proxy` binary runs it in the VM.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on loopback to the holder's port: it can slow every chunk it
/// forwards, and cut every connection (refusing new ones while cut).
pub struct Proxy {
    pub port: u16,
    pub upstream: Arc<AtomicU16>,
    pub delay_us: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy listening on `listen` (0: any free port) of 127.0.0.1.
    pub fn start_on(listen: u16, upstream: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", listen))?;
        let port = listener.local_addr()?.port();
        let p = Proxy {
            port,
            upstream: Arc::new(AtomicU16::new(upstream)),
            delay_us: Arc::new(AtomicU64::new(0)),
            cut: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (up, delay, cut, conns) = (
            p.upstream.clone(),
            p.delay_us.clone(),
            p.cut.clone(),
            p.conns.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", up.load(Ordering::Acquire)))
                else {
                    drop(client);
                    continue;
                };
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend([c2, s2]);
                for (from, to) in [(c3, s3), (server, client)] {
                    let delay = delay.clone();
                    std::thread::spawn(move || pump(from, to, &delay));
                }
            }
        });
        Ok(p)
    }

    /// A proxy on any free port.
    pub fn start(upstream: u16) -> Proxy {
        Self::start_on(0, upstream).expect("a proxy on a free loopback port")
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
        if cut {
            for s in self
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, delay_us: &AtomicU64) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = delay_us.load(Ordering::Relaxed);
        if d > 0 {
            std::thread::sleep(Duration::from_micros(d));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A TCP proxy on loopback that delays every byte by a fixed one-way time,
/// both ways, without limiting bandwidth: a reader stamps each chunk as it
/// arrives and a writer forwards it once its time has come. Two of them
/// make a link with a round trip of twice the delay (the host kernel may
/// have no netem).
pub struct DelayLine {
    pub port: u16,
}

impl DelayLine {
    pub fn start(upstream: u16, one_way: Duration) -> std::io::Result<DelayLine> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                for (from, to) in [(client, s2), (server, c2)] {
                    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
                    let reader = from.try_clone();
                    std::thread::spawn(move || {
                        let Ok(mut from) = reader else { return };
                        let mut buf = vec![0u8; 256 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0
                                || tx
                                    .send((std::time::Instant::now(), buf[..n].to_vec()))
                                    .is_err()
                            {
                                break;
                            }
                        }
                    });
                    std::thread::spawn(move || {
                        let mut to = to;
                        for (at, data) in rx {
                            let due = at + one_way;
                            let now = std::time::Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            if to.write_all(&data).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Ok(DelayLine { port })
    }
}
