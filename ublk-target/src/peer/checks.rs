//! Dual-active, the asking side: this node's checks session with the other
//! node's holder, for status checks and copy grants. A request that the
//! link cannot carry is asked again on a new connection, with backoff,
//! until it is answered: while the other node cannot be asked, the regions
//! of its record wait (host I/O is held, never failed).

use std::io::{BufReader, BufWriter};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::{read_frame, write_frame, Frame, Hello};
use crate::error::{Error, Result};

/// How long one answer may take before the connection counts as broken
/// (an answer waits for the other node's writes in flight to a region).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Conn {
    rd: BufReader<TcpStream>,
    wr: BufWriter<TcpStream>,
    seq: u64,
}

/// What a copy request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// Copy it: the other node's write sequence of it at the grant.
    Granted { seq: u64 },
    /// The other node copies it now.
    Busy,
    /// No grant is needed any more: the other node's record no longer
    /// lists the region (it was taken over while this node waited).
    Unneeded,
}

/// The checks session with the other node, shared by this node's threads
/// (one request at a time).
pub struct CheckLink {
    address: String,
    hello: Hello,
    conn: Mutex<Option<Conn>>,
    stop: Arc<AtomicBool>,
    /// When the other node last answered.
    heard: Mutex<Option<Instant>>,
}

impl CheckLink {
    /// A link to the holder at `address` about the device of `hello`; it
    /// connects on first use.
    pub fn new(address: &str, hello: Hello, stop: Arc<AtomicBool>) -> Result<CheckLink> {
        super::check_address(address)?;
        Ok(CheckLink {
            address: address.to_string(),
            hello,
            conn: Mutex::new(None),
            stop,
            heard: Mutex::new(None),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long ago the other node last answered, if ever.
    pub fn heard_ago(&self) -> Option<Duration> {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Returns once the other node has no write in flight to `region` and
    /// nothing of it cached dirty, or once `needed` says the check no
    /// longer is (asked before each try: the other node was taken over).
    pub fn check(&self, region: u64, needed: &dyn Fn() -> bool) -> Result<()> {
        match self.ask(Frame::Check { region }, needed)? {
            None | Some(Frame::Done { errno: 0 }) => Ok(()),
            Some(Frame::Done { errno }) => Err(Error::io(
                format!("node at {} could not settle region {region}", self.address),
                std::io::Error::from_raw_os_error(errno),
            )),
            Some(other) => Err(self.unexpected("a check", &other)),
        }
    }

    /// Asks to copy `region` (`needed` as for `check`).
    pub fn copy_begin(&self, region: u64, needed: &dyn Fn() -> bool) -> Result<Copy> {
        match self.ask(Frame::CopyBegin { region }, needed)? {
            None => Ok(Copy::Unneeded),
            Some(Frame::Grant { seq }) => Ok(Copy::Granted { seq }),
            Some(Frame::Busy) => Ok(Copy::Busy),
            Some(Frame::Done { errno }) => Err(Error::io(
                format!("node at {} could not grant region {region}", self.address),
                std::io::Error::from_raw_os_error(errno),
            )),
            Some(other) => Err(self.unexpected("a copy request", &other)),
        }
    }

    /// Ends a granted copy; returns whether no write started on the region
    /// at the other node since the grant (true once `needed` says the grant
    /// no longer matters: the takeover that made it so bumped the region's
    /// sequence here, so the copy cannot mark it clean anyway).
    pub fn copy_end(
        &self,
        region: u64,
        seq: u64,
        landed: bool,
        needed: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let frame = Frame::CopyEnd {
            region,
            seq,
            landed,
        };
        match self.ask(frame, needed)? {
            None => Ok(true),
            Some(Frame::Ended { unchanged }) => Ok(unchanged),
            Some(other) => Err(self.unexpected("a copy's end", &other)),
        }
    }

    /// Tells the other node that this one stopped cleanly (once: at a stop
    /// nobody waits for a node that is gone).
    pub fn bye(&self) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if conn.is_none() {
            *conn = Some(self.connect()?);
        }
        let c = conn.as_mut().expect("connected above");
        c.seq += 1;
        let io = |e: std::io::Error| Error::io(format!("say bye to node at {}", self.address), e);
        write_frame(&mut c.wr, c.seq, &Frame::Bye).map_err(io)?;
        match read_frame(&mut c.rd) {
            Ok((_, Frame::Done { errno: 0 })) => Ok(()),
            Ok((_, f)) => Err(self.unexpected("bye", &f)),
            Err(e) => Err(Error::Peer(format!("node at {}: {e}", self.address))),
        }
    }

    /// Whether the other node's holder answers now (it is running).
    pub fn reachable(&self) -> bool {
        super::resolve(&self.address)
            .and_then(|a| {
                TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).map_err(|e| Error::io("connect", e))
            })
            .is_ok()
    }

    fn unexpected(&self, what: &str, f: &Frame) -> Error {
        Error::Peer(format!(
            "node at {} answered {what} with {}",
            self.address,
            f.name()
        ))
    }

    /// Sends `frame` and returns its answer, on a new connection when the
    /// last one broke, until answered, stopped, or no longer `needed`
    /// (`None`). A refusal is final.
    fn ask(&self, frame: Frame, needed: &dyn Fn() -> bool) -> Result<Option<Frame>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut pause = Duration::from_millis(10);
        let mut said = false;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(Error::Stopped);
            }
            if !needed() {
                return Ok(None);
            }
            if conn.is_none() {
                match self.connect() {
                    Ok(c) => *conn = Some(c),
                    Err(e) => {
                        if !said {
                            log::warn!("{e}: regions of its record wait until it answers");
                            said = true;
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            c.seq += 1;
            let seq = c.seq;
            let answer = write_frame(&mut c.wr, seq, &frame)
                .map_err(|e| e.to_string())
                .and_then(|()| read_frame(&mut c.rd).map_err(|e| e.to_string()));
            match answer {
                Ok((s, Frame::Refused { reason })) if s == seq => {
                    *conn = None;
                    return Err(Error::Peer(format!(
                        "node at {} refused {}: {reason}",
                        self.address,
                        frame.name()
                    )));
                }
                Ok((s, f)) if s == seq => {
                    *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    if said {
                        log::info!("node at {} answers again", self.address);
                    }
                    return Ok(Some(f));
                }
                Ok((s, f)) => {
                    log::warn!(
                        "node at {} answered request {s} with {} where {seq} was asked: reconnecting",
                        self.address,
                        f.name()
                    );
                    *conn = None;
                }
                Err(e) => {
                    if !said {
                        log::warn!(
                            "node at {}: {e}; asking again on a new connection",
                            self.address
                        );
                        said = true;
                    }
                    *conn = None;
                }
            }
        }
    }

    fn connect(&self) -> Result<Conn> {
        let addr = super::resolve(&self.address)?;
        let link = |e: std::io::Error| Error::io(format!("connect to node at {}", self.address), e);
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(link)?;
        stream.set_nodelay(true).map_err(link)?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(link)?;
        stream
            .set_write_timeout(Some(ANSWER_TIMEOUT))
            .map_err(link)?;
        let mut c = Conn {
            rd: BufReader::new(stream.try_clone().map_err(link)?),
            wr: BufWriter::new(stream),
            seq: 1,
        };
        write_frame(&mut c.wr, 1, &Frame::Checks(self.hello)).map_err(link)?;
        match read_frame(&mut c.rd) {
            Ok((1, Frame::Welcome { .. })) => Ok(c),
            // Not final: the other node may not serve the device yet.
            Ok((_, Frame::Refused { reason })) => Err(Error::Peer(format!(
                "node at {} refused this node's checks: {reason}",
                self.address
            ))),
            Ok((_, other)) => Err(Error::Peer(format!(
                "node at {} answered a checks hello with {}",
                self.address,
                other.name()
            ))),
            Err(e) => Err(Error::Peer(format!("node at {}: {e}", self.address))),
        }
    }
}
