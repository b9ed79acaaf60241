//! Node A's side of the link: a `RecordStore` that makes each record update
//! durable on the peer before it returns, so the record committer
//! acknowledges a write that missed only after the peer's acknowledgement.
//! The `Record` above it is A's copy of the record held on the peer: A sends
//! an update only when that copy lacks a region, its predicted regions
//! included, and concurrent misses share one exchange (the group commit).
//!
//! When the peer cannot be reached, A serves directly: before the update
//! that failed returns, the whole record is written to the local region
//! file, and updates go there from then on. Now and then A tries the peer
//! again; once the peer holds the whole record, the local file is set to
//! every region (a restart that cannot reach the peer then resyncs all,
//! never too little) and updates go to the peer again. At no moment is a
//! region that may differ recorded nowhere durable.

use std::io::{BufReader, BufWriter};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::{read_frame, write_frame, Frame, Hello, Page};
use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::record::{page_words, set_page_words, Image, RecordStore, RegionFile, REGIONS_PER_PAGE};

/// How long one exchange may take before the peer counts as unreachable.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node serving directly tries its peer again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// A link with no exchange for this long is checked with a ping.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Where the record is held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holding {
    /// On the peer: every update waits for its acknowledgement.
    Peer,
    /// In the local region file: the peer is unreachable (direct service).
    Local,
}

/// What the link reports, for the status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// This node's role: `owner` (it serves the device; the peer holds its
    /// record). A holder shows its own status (`tandemctl holder`).
    #[serde(default)]
    pub role: String,
    /// The peer's address as configured.
    pub address: String,
    pub holding: Holding,
    /// The peer's node id, once it answered.
    pub node: Option<u64>,
    /// The ownership generation the peer holds for this device.
    pub generation: u64,
    /// Round trip of the last exchange, in microseconds.
    pub rtt_us: Option<u64>,
    /// Why the peer is not holding the record, while it is not.
    pub last_error: Option<String>,
    /// Times the node went to direct service.
    pub fallbacks: u64,
}

/// An open connection to the holder.
struct Link {
    rd: BufReader<TcpStream>,
    wr: BufWriter<TcpStream>,
}

/// The record store of a node whose record is held by a peer.
pub struct PeerStore {
    address: String,
    hello: Hello,
    /// Where the generation and the holding are kept between runs
    /// (`read_state`).
    state_path: PathBuf,
    /// Where the record was held when the last run ended.
    held_before: Holding,
    link: Option<Link>,
    seq: u64,
    local: RegionFile,
    holding: Holding,
    retry_at: Instant,
    /// When the peer last answered.
    last_answer: Instant,
    /// The device's lease, which says when this node serves directly.
    lease: Option<Arc<Lease>>,
    status: Arc<Mutex<PeerStatus>>,
    pages: u64,
}

/// What a node keeps next to its local record about the peer: the
/// ownership generation (0 before the first pairing) and where the record
/// was held last. The file reads `GENERATION peer|local`.
///
/// Order keeps it safe across a crash at any step. Going local, the state
/// says `local` before the record is written locally; going back to the
/// peer, it says `peer` only once the peer holds the whole record and the
/// local file says every region. At start, `peer` means the peer's record
/// is the whole truth (the local file says every region); `local` means the
/// local file is, and the peer's record may add to it.
pub fn read_state(path: &Path) -> Result<(u64, Holding)> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, Holding::Local)),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        Ok(t) => {
            let mut it = t.split_whitespace();
            let generation = it.next().and_then(|g| g.parse().ok());
            let holding = match it.next() {
                Some("peer") => Some(Holding::Peer),
                Some("local") => Some(Holding::Local),
                _ => None,
            };
            match (generation, holding) {
                (Some(g), Some(h)) => Ok((g, h)),
                _ => Err(Error::Config(format!(
                    "{}: {:?} is not \"GENERATION peer|local\"",
                    path.display(),
                    t.trim()
                ))),
            }
        }
    }
}

fn write_state(path: &Path, generation: u64, holding: Holding) -> Result<()> {
    let word = match holding {
        Holding::Peer => "peer",
        Holding::Local => "local",
    };
    super::write_durably(path, &format!("{generation} {word}\n"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerStore {
    /// A store for the device `hello` describes (its generation is read from
    /// `state_path`), held by the peer at `address`, falling back to
    /// `local`. Nothing is sent until `start`.
    pub fn new(
        address: &str,
        mut hello: Hello,
        state_path: &Path,
        local: RegionFile,
        regions: u64,
        lease: Option<Arc<Lease>>,
    ) -> Result<PeerStore> {
        let (generation, held_before) = read_state(state_path)?;
        // The lease's generation, when there is a lease, is the one that
        // counts: a takeover raises it on the shared storage.
        hello.generation = lease.as_ref().map_or(generation, |l| l.generation());
        let status = PeerStatus {
            role: "owner".into(),
            address: address.to_string(),
            holding: Holding::Local,
            node: None,
            generation: hello.generation,
            rtt_us: None,
            last_error: None,
            fallbacks: 0,
        };
        Ok(PeerStore {
            address: address.to_string(),
            hello,
            state_path: state_path.to_path_buf(),
            held_before,
            link: None,
            seq: 0,
            local,
            holding: Holding::Local,
            retry_at: Instant::now(),
            last_answer: Instant::now(),
            lease,
            status: Arc::new(Mutex::new(status)),
            pages: regions.div_ceil(REGIONS_PER_PAGE),
        })
    }

    /// Whether the local record file was the truth when the last run
    /// ended (false: it says every region, and the peer holds the truth).
    pub fn local_was_holding(&self) -> bool {
        self.held_before == Holding::Local
    }

    /// The link's figures, shared with the status.
    pub fn status(&self) -> Arc<Mutex<PeerStatus>> {
        self.status.clone()
    }

    /// The regions the peer holds for this device (`None` when it cannot be
    /// reached), to recover from at start.
    pub fn fetch(&mut self, regions: u64) -> Result<Option<Vec<u64>>> {
        if self.link.is_none() {
            if let Err(e) = self.connect() {
                if matches!(e, Error::Stopped) {
                    return Err(self.refused_error());
                }
                log::warn!("peer {}: {e}", self.address);
                self.note_error(e.to_string());
                return Ok(None);
            }
        }
        let seq = self.next_seq();
        let result = (|| -> Result<Vec<u64>> {
            let link = self.link.as_mut().expect("connected");
            write_frame(&mut link.wr, seq, &Frame::Fetch).map_err(|e| link_err("fetch", e))?;
            let mut image = Image::repeat(false, regions as usize);
            loop {
                match read_frame(&mut link.rd) {
                    Ok((s, Frame::Pages(pages))) if s == seq => {
                        for p in pages {
                            set_page_words(&mut image, p.index, &p.words);
                        }
                    }
                    Ok((s, Frame::Done { errno: 0 })) if s == seq => break,
                    Ok((_, other)) => {
                        return Err(Error::Peer(format!(
                            "peer answered a fetch with {}",
                            other.name()
                        )))
                    }
                    Err(e) => return Err(Error::Peer(format!("peer: {e}"))),
                }
            }
            Ok(image.iter_ones().map(|r| r as u64).collect())
        })();
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.link = None;
                self.note_error(e.to_string());
                Ok(None)
            }
        }
    }

    /// Makes `image` (the whole record) durable where it is held from now
    /// on: on the peer if it answers (and the local file set to every
    /// region), else in the local file.
    pub fn start(&mut self, image: &Image) -> Result<()> {
        self.pair_or_local(image)
    }

    /// Hands the peer the whole record, or holds it locally if the peer
    /// cannot be reached. A refusal is an error: the peer holds a newer
    /// generation, so this node no longer owns the device and must not go on.
    fn pair_or_local(&mut self, image: &Image) -> Result<()> {
        match self.try_pair(image) {
            Ok(()) => Ok(()),
            Err(Error::Stopped) => Err(self.refused_error()),
            Err(_) => self.go_local(image),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn note_error(&self, why: String) {
        lock(&self.status).last_error = Some(why);
    }

    fn refused_error(&self) -> Error {
        Error::Fenced(format!(
            "peer {} refused it: {}",
            self.address,
            lock(&self.status).last_error.clone().unwrap_or_default()
        ))
    }

    /// Opens a connection and says hello. A refusal (a stale generation) is
    /// `Error::Stopped`: this node must not go on owning the device.
    fn connect(&mut self) -> Result<()> {
        self.link = None;
        let addr = super::resolve(&self.address)?;
        let stream = TcpStream::connect_timeout(&addr, EXCHANGE_TIMEOUT)
            .map_err(|e| link_err("connect", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| link_err("connect", e))?;
        stream
            .set_read_timeout(Some(EXCHANGE_TIMEOUT))
            .map_err(|e| link_err("connect", e))?;
        stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .map_err(|e| link_err("connect", e))?;
        let mut link = Link {
            rd: BufReader::new(stream.try_clone().map_err(|e| link_err("connect", e))?),
            wr: BufWriter::new(stream),
        };
        let seq = self.next_seq();
        write_frame(&mut link.wr, seq, &Frame::Hello(self.hello))
            .map_err(|e| link_err("hello", e))?;
        match read_frame(&mut link.rd) {
            Ok((s, Frame::Welcome { node, generation })) if s == seq => {
                if generation != self.hello.generation {
                    // Still held locally until the peer has the whole record.
                    write_state(&self.state_path, generation, Holding::Local)?;
                    self.hello.generation = generation;
                }
                let mut st = lock(&self.status);
                st.node = Some(node);
                st.generation = generation;
                drop(st);
                self.link = Some(link);
                Ok(())
            }
            Ok((_, Frame::Refused { reason })) => {
                log::error!("peer {} refused this node: {reason}", self.address);
                self.note_error(reason);
                Err(Error::Stopped)
            }
            Ok((_, other)) => Err(Error::Peer(format!(
                "peer {} answered hello with {}",
                self.address,
                other.name()
            ))),
            Err(e) => Err(Error::Peer(format!("peer {}: {e}", self.address))),
        }
    }

    /// One update on the current link: sent, then its `Done` awaited.
    fn exchange(&mut self, image: &Image, pages: &[u64]) -> Result<()> {
        let seq = self.next_seq();
        let link = self.link.as_mut().ok_or(Error::Stopped)?;
        let frame = Frame::Pages(
            pages
                .iter()
                .map(|&index| Page {
                    index,
                    words: page_words(image, index),
                })
                .collect(),
        );
        let t0 = Instant::now();
        write_frame(&mut link.wr, seq, &frame).map_err(|e| link_err("send an update", e))?;
        loop {
            match read_frame(&mut link.rd) {
                Ok((s, Frame::Done { errno })) if s == seq => {
                    self.last_answer = Instant::now();
                    lock(&self.status).rtt_us = Some(t0.elapsed().as_micros() as u64);
                    return match errno {
                        0 => Ok(()),
                        n => Err(Error::io(
                            format!("peer {} could not hold the update", self.address),
                            std::io::Error::from_raw_os_error(n),
                        )),
                    };
                }
                // An answer to an earlier, abandoned request.
                Ok((s, _)) if s < seq => continue,
                Ok((_, Frame::Refused { reason })) => {
                    self.note_error(reason.clone());
                    return Err(Error::Stopped);
                }
                Ok((_, other)) => {
                    return Err(Error::Peer(format!(
                        "peer {} answered an update with {}",
                        self.address,
                        other.name()
                    )))
                }
                Err(e) => return Err(Error::Peer(format!("peer {}: {e}", self.address))),
            }
        }
    }

    /// A heartbeat on the current link: a ping, its pong awaited.
    fn ping(&mut self) -> Result<()> {
        let seq = self.next_seq();
        let link = self.link.as_mut().ok_or(Error::Stopped)?;
        let t0 = Instant::now();
        write_frame(&mut link.wr, seq, &Frame::Ping).map_err(|e| link_err("send a ping", e))?;
        loop {
            match read_frame(&mut link.rd) {
                Ok((s, Frame::Pong)) if s == seq => {
                    self.last_answer = Instant::now();
                    lock(&self.status).rtt_us = Some(t0.elapsed().as_micros() as u64);
                    return Ok(());
                }
                Ok((s, _)) if s < seq => continue,
                Ok((_, Frame::Refused { reason })) => {
                    self.note_error(reason);
                    return Err(Error::Stopped);
                }
                Ok((_, other)) => {
                    return Err(Error::Peer(format!(
                        "peer {} answered a ping with {}",
                        self.address,
                        other.name()
                    )))
                }
                Err(e) => return Err(Error::Peer(format!("peer {}: {e}", self.address))),
            }
        }
    }

    /// Connects if needed and hands the peer the whole record; then the local
    /// file is set to every region and updates go to the peer.
    fn try_pair(&mut self, image: &Image) -> Result<()> {
        let all: Vec<u64> = (0..self.pages).collect();
        let r = (|| {
            if self.link.is_none() {
                self.connect()?;
            }
            self.exchange(image, &all)
        })();
        if let Err(e) = r {
            self.link = None;
            if !matches!(e, Error::Stopped) {
                // (A refusal noted its own reason.)
                self.note_error(e.to_string());
            }
            return Err(e);
        }
        if self.holding != Holding::Peer {
            // (Already paired, after a reconnect: the local file says every
            // region and the state says `peer` since the pairing.)
            let mut every = image.clone();
            every.fill(true);
            self.local.write_pages(&every, &all)?;
            write_state(&self.state_path, self.hello.generation, Holding::Peer)?;
            if let Some(l) = &self.lease {
                // The peer holds every region again: a takeover may trust
                // its record. (Should this fail, the lease still says
                // direct, and a takeover copies everything: safe.)
                if let Err(e) = l.set_direct(false) {
                    log::warn!("lease: {e}");
                }
            }
            log::info!(
                "peer {} holds the record (generation {})",
                self.address,
                self.hello.generation
            );
        }
        self.holding = Holding::Peer;
        let mut st = lock(&self.status);
        st.holding = Holding::Peer;
        st.last_error = None;
        Ok(())
    }

    /// Direct service: the lease says so first (a takeover then copies the
    /// whole device: the peer's record lacks what is added from now on),
    /// then the whole record goes into the local file, durably.
    fn go_local(&mut self, image: &Image) -> Result<()> {
        let all: Vec<u64> = (0..self.pages).collect();
        if let Some(l) = &self.lease {
            l.set_direct(true)?;
        }
        write_state(&self.state_path, self.hello.generation, Holding::Local)?;
        self.local.write_pages(image, &all)?;
        if self.holding != Holding::Local {
            log::warn!(
                "peer {} is unreachable: serving directly, the record is held locally",
                self.address
            );
            lock(&self.status).fallbacks += 1;
        }
        self.holding = Holding::Local;
        lock(&self.status).holding = Holding::Local;
        self.retry_at = Instant::now() + RETRY_EVERY;
        Ok(())
    }
}

fn link_err(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("peer link: {what}"), e)
}

impl RecordStore for PeerStore {
    fn regions_per_page(&self) -> u64 {
        REGIONS_PER_PAGE
    }

    /// The heartbeat: while paired and idle, a ping now and then (a dead
    /// link is found before a write needs it: the record goes local at
    /// once); while serving directly, the peer tried again.
    fn tick(&mut self, held: &Image) -> Result<()> {
        match self.holding {
            Holding::Peer if self.last_answer.elapsed() >= HEARTBEAT_EVERY => match self.ping() {
                Ok(()) => Ok(()),
                Err(Error::Stopped) => {
                    let e = self.refused_error();
                    log::error!("{e}");
                    Err(e)
                }
                Err(e) => {
                    self.link = None;
                    log::warn!("peer {}: heartbeat: {e}", self.address);
                    self.note_error(format!("heartbeat: {e}"));
                    self.pair_or_local(held)
                }
            },
            Holding::Peer => Ok(()),
            Holding::Local if Instant::now() >= self.retry_at => match self.try_pair(held) {
                Ok(()) => Ok(()),
                Err(Error::Stopped) => Err(self.refused_error()),
                Err(_) => {
                    self.retry_at = Instant::now() + RETRY_EVERY;
                    Ok(())
                }
            },
            Holding::Local => Ok(()),
        }
    }

    fn write_pages(&mut self, image: &Image, pages: &[u64]) -> Result<()> {
        match self.holding {
            Holding::Peer => {
                let r = self.exchange(image, pages);
                match r {
                    Ok(()) => Ok(()),
                    Err(Error::Stopped) => Err(self.refused_error()),
                    Err(e) => {
                        self.link = None;
                        log::warn!("peer {}: {e}", self.address);
                        self.note_error(e.to_string());
                        // One reconnect first: a broken connection with a
                        // live peer is not a reason to leave it.
                        self.pair_or_local(image)
                    }
                }
            }
            Holding::Local => {
                self.local.write_pages(image, pages)?;
                if Instant::now() >= self.retry_at {
                    match self.try_pair(image) {
                        Ok(()) => {}
                        // Taken over while this node served directly.
                        Err(Error::Stopped) => return Err(self.refused_error()),
                        Err(_) => self.retry_at = Instant::now() + RETRY_EVERY,
                    }
                }
                Ok(())
            }
        }
    }
}
