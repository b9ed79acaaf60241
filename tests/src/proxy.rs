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
