//! Node B's side of the link: it holds the records of its peers' devices
//! durably, one region file each in its directory, in the same format as a
//! local record, and answers each update once it is durable.
//!
//! Per device (by identity) the directory holds `IDENTITY.rec`, the region
//! file, and `IDENTITY.owner`, the node that owns the device and the
//! ownership generation. An owner whose generation is lower than the held
//! one is refused: another node took the device over since.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wire::{read_frame, write_frame, Frame, Hello, Page, WireError};
use crate::dev::{Dev, FileDev, OpenOptions};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::record::{
    page_words, set_page_words, Image, LoadOutcome, RecordStore, RegionFile, REGIONS_PER_PAGE,
};

/// A connection that sends nothing for this long is closed (owners ping
/// more often).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node that serves a device answers the other node of a
/// dual-active pair (the engine): status checks and copy grants.
pub trait Answerer: Send + Sync {
    /// The device's geometry: a checking node must agree.
    fn geometry(&self) -> Geometry;
    /// Returns once no write to `region` is in flight here and nothing of
    /// it is cached dirty.
    fn status(&self, region: u64) -> Result<()>;
    /// Grants the copy of `region`, quiet and written back (its write
    /// sequence), or `None`: this node copies it now.
    fn grant(&self, region: u64) -> Result<Option<u64>>;
    /// Ends a grant; returns whether no write started on the region since.
    fn end(&self, region: u64, seq: u64, landed: bool) -> bool;
}

/// Grants of a checks session, ended when the session ends (once they
/// have expired: the copier lands a copy only within `COPY_LIMIT` of
/// asking).
struct Grants {
    answerer: Arc<dyn Answerer>,
    given: HashMap<u64, std::time::Instant>,
}

impl Grants {
    fn expire(&mut self) {
        let answerer = &self.answerer;
        self.given.retain(|&r, at| {
            let live = at.elapsed() < super::GRANT_EXPIRY;
            if !live {
                answerer.end(r, u64::MAX, false);
            }
            live
        });
    }
}

impl Drop for Grants {
    fn drop(&mut self) {
        if self.given.is_empty() {
            return;
        }
        let given = std::mem::take(&mut self.given);
        let answerer = self.answerer.clone();
        let ended = std::thread::Builder::new()
            .name("tandem-grants".into())
            .spawn(move || {
                for (r, at) in given {
                    std::thread::sleep(super::GRANT_EXPIRY.saturating_sub(at.elapsed()));
                    answerer.end(r, u64::MAX, false);
                }
            });
        if let Err(e) = ended {
            log::error!("end the grants of a closed connection: {e}");
        }
    }
}

/// One held record.
struct Held {
    file: RegionFile,
    image: Image,
    /// Dual-active: the engine's view of it, kept equal to `image` once a
    /// session has handed the whole record over (`whole`); until then, and
    /// once its session ends (the owner may serve directly from then on,
    /// adding regions this node does not see), every region counts.
    view: Option<Arc<super::HeldView>>,
    whole: bool,
    /// The node that owns the device (the last hello's).
    owner: u64,
    /// When the owner last sent an update or a ping.
    last_heard: std::time::Instant,
    /// The ownership generation its owner holds (as in `IDENTITY.owner`).
    generation: u64,
    /// The last (generation, sequence) applied in the current session: a
    /// late retry of an older update never overwrites a newer one.
    applied: (u64, u64),
    /// The current session (one more at each hello): only it may write.
    /// An owner's new process numbers its requests from 1 again, and a
    /// connection it left behind must not write after it.
    session: u64,
}

/// The records this node holds for its peers.
pub struct Holder {
    dir: PathBuf,
    node: u64,
    held: Mutex<HashMap<u64, Arc<Mutex<Held>>>>,
    /// Open connections by number, shut down when `serve` stops; each
    /// leaves when its session ends (so its descriptor is closed).
    sessions: Mutex<HashMap<u64, TcpStream>>,
    /// What each takeover watch saw last, by lease path.
    pub(super) watches: Mutex<HashMap<PathBuf, WatchStatus>>,
    /// The takeovers this holder made.
    pub(super) takeovers: Mutex<Vec<super::TakeoverReport>>,
    /// The devices this node serves itself (dual-active), by identity: it
    /// answers the other node's checks about them.
    answerers: Mutex<HashMap<u64, Arc<dyn Answerer>>>,
    /// The engines' views of held records, by identity (dual-active).
    views: Mutex<HashMap<u64, Arc<super::HeldView>>>,
    /// Devices whose other node said bye (a clean stop) since its last
    /// hello: nothing to ask it. Kept on disk too (ID.stopped beside the
    /// held record), so that this node, restarted while the other is still
    /// stopped, serves at once instead of waiting for it.
    stopped: Mutex<std::collections::HashSet<u64>>,
}

/// One held record, for the status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldStatus {
    pub identity: String,
    /// The owning node and its generation.
    pub owner: u64,
    pub generation: u64,
    /// Regions in the held record.
    pub regions: u64,
    /// Milliseconds since the owner was last heard.
    pub last_heard_ms: u64,
}

/// A takeover watch, for the status.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WatchStatus {
    pub lease: String,
    /// `blank`, `alive`, `released`, `expired`, or `error`.
    pub seen: String,
    pub owner: Option<u64>,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

/// What `tandemctl holder` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HolderStatus {
    pub node: u64,
    /// Always `holder`: this node holds its peers' records.
    pub role: String,
    pub dir: String,
    /// Owners connected now.
    pub sessions: usize,
    pub held: Vec<HeldStatus>,
    pub watches: Vec<WatchStatus>,
    pub takeovers: Vec<super::TakeoverReport>,
}

/// The owner record of a held device: `NODE GENERATION`.
fn read_owner(path: &Path) -> Result<Option<(u64, u64)>> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        Ok(text) => {
            let mut it = text.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(node)), Some(Ok(generation))) => Ok(Some((node, generation))),
                _ => Err(Error::Config(format!(
                    "{}: {text:?} is not \"NODE GENERATION\"",
                    path.display()
                ))),
            }
        }
    }
}

/// Replaces the owner record durably.
fn write_owner(path: &Path, node: u64, generation: u64) -> Result<()> {
    super::write_durably(path, &format!("{node} {generation}\n"))
}

impl Holder {
    /// A holder keeping its records in `dir` (created if missing).
    pub fn new(dir: &Path, node: u64) -> Result<Holder> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Holder {
            dir: dir.to_path_buf(),
            node,
            held: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            takeovers: Mutex::new(Vec::new()),
            answerers: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
            stopped: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The engine's view of the record held for `identity`, if it has one.
    fn view_of(&self, identity: u64) -> Option<Arc<super::HeldView>> {
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&identity)
            .cloned()
    }

    /// Dual-active: the other node of device `identity` stopped cleanly,
    /// or has never held a record here (a first start): nothing of it can
    /// be in flight or cached, so the view is loaded empty.
    fn nothing_to_ask(&self, identity: u64, view: &super::HeldView) {
        view.load(&Image::repeat(false, view.regions() as usize));
        log::info!("device {identity:016x}: the other node serves nothing now");
    }

    /// Dual-active: the view of the record held for `identity` (of
    /// `regions` regions), kept equal to it from now on; every region
    /// counts until the other node has said hello.
    pub fn view(&self, identity: u64, regions: u64) -> Arc<super::HeldView> {
        let view = self
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(identity)
            .or_insert_with(|| Arc::new(super::HeldView::new(regions)))
            .clone();
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&identity)
            .cloned();
        match held {
            Some(h) => {
                let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                if h.whole {
                    view.load(&h.image);
                }
                h.view = Some(view.clone());
            }
            // Never held here: the other node has not served the device
            // with this node (a first start of the pair).
            None if !self.paths(identity).0.exists() => self.nothing_to_ask(identity, &view),
            // Held before, and the other node's last word was a clean stop.
            None if self.stopped_path(identity).exists() => {
                self.stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(identity);
                self.nothing_to_ask(identity, &view);
            }
            None => {}
        }
        view
    }

    /// Answers the other node's status checks and copy requests about
    /// device `identity` with `answerer` (this node serves it too).
    pub fn answer_for(&self, identity: u64, answerer: Arc<dyn Answerer>) {
        self.answerers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(identity, answerer);
    }

    /// The holder's status: what it holds, for whom, what it watches.
    pub fn status(&self) -> HolderStatus {
        let mut held: Vec<HeldStatus> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, h)| {
                let h = h.lock().unwrap_or_else(|e| e.into_inner());
                HeldStatus {
                    identity: format!("{id:016x}"),
                    owner: h.owner,
                    generation: h.generation,
                    regions: h.image.count_ones() as u64,
                    last_heard_ms: h.last_heard.elapsed().as_millis() as u64,
                }
            })
            .collect();
        held.sort_by(|a, b| a.identity.cmp(&b.identity));
        let mut watches: Vec<WatchStatus> = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        watches.sort_by(|a, b| a.lease.cmp(&b.lease));
        HolderStatus {
            node: self.node,
            role: "holder".into(),
            dir: self.dir.display().to_string(),
            sessions: self.open_sessions(),
            held,
            watches,
            takeovers: self
                .takeovers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The mark of a clean stop of device `identity`'s other node.
    fn stopped_path(&self, identity: u64) -> PathBuf {
        self.dir.join(format!("{identity:016x}.stopped"))
    }

    /// Device `identity`'s other node stopped cleanly (`true`, on its bye)
    /// or serves again (`false`, on its hello): in memory and on disk.
    fn mark_stopped(&self, identity: u64, stopped: bool) {
        let mut set = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.stopped_path(identity);
        if stopped {
            set.insert(identity);
            if let Err(e) = super::write_durably(&path, "stopped cleanly\n") {
                log::warn!(
                    "device {identity:016x}: {e} (a restart of this node will wait for the other)"
                );
            }
        } else if set.remove(&identity) || path.exists() {
            // Gone before the session goes on: a restart from here on waits.
            let gone = std::fs::remove_file(&path)
                .and_then(|()| std::fs::File::open(&self.dir).and_then(|d| d.sync_all()));
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("device {identity:016x}: remove {}: {e}", path.display()),
            }
        }
    }

    fn paths(&self, identity: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{identity:016x}.rec")),
            self.dir.join(format!("{identity:016x}.owner")),
        )
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// Ends the owner's hold on `identity` for a takeover at `generation`:
    /// the owner record names this node, and every session of an older
    /// generation is refused from its next request. Returns the held
    /// record's path, for the copy (it is no longer written by the holder).
    pub fn surrender(&self, identity: u64, generation: u64) -> Result<PathBuf> {
        let (rec_path, owner_path) = self.paths(identity);
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.remove(&identity) {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            h.generation = generation;
            // The old owner's sessions no longer feed the view (one that
            // ends late must not make every region count again).
            h.view = None;
            h.whole = false;
        }
        write_owner(&owner_path, self.node, generation)?;
        Ok(rec_path)
    }

    /// Dual-active takeover: ends the other node's hold on `identity` as
    /// `surrender` does, and hands back the regions its record listed,
    /// removing the record (the other node, back, starts a new one here).
    /// Every region when no record is held here or it cannot be trusted.
    pub fn take_record(
        &self,
        identity: u64,
        generation: u64,
        geometry: &Geometry,
    ) -> Result<Vec<u64>> {
        let path = self.surrender(identity, generation)?;
        let all = || (0..geometry.regions()).collect();
        if !path.exists() {
            log::warn!("no record of device {identity:016x} is held here: taking every region");
            return Ok(all());
        }
        let (_, image) = open_record(&path, geometry, identity)?;
        std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
        Ok(image.iter_ones().map(|r| r as u64).collect())
    }

    /// Connections being served now.
    pub fn open_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The regions held for `identity`, read from the directory (for a
    /// takeover, and for tests); `None` when nothing is held for it.
    pub fn regions(&self, identity: u64) -> Option<Vec<u64>> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = held
            .get(&identity)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(h.image.iter_ones().map(|r| r as u64).collect())
    }

    /// Opens (or creates) the record for the device an owner says hello
    /// about, after checking its generation. Returns the record, the
    /// generation the owner now holds, and the new session's number.
    fn open(&self, hello: &Hello) -> std::result::Result<(Arc<Mutex<Held>>, u64, u64), String> {
        let geometry = Geometry::new(hello.device_size, hello.region_size)
            .map_err(|e| format!("device geometry: {e}"))?;
        let (rec_path, owner_path) = self.paths(hello.identity);
        // The owner is read under the map's lock: a takeover changes both
        // under it (`surrender`).
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let owner = read_owner(&owner_path).map_err(|e| e.to_string())?;
        let generation = match owner {
            // A first pairing (with a lease, at the lease's generation).
            None => hello.generation.max(1),
            Some((_, held)) if hello.generation < held || (hello.generation == 0 && held > 0) => {
                return Err(format!(
                    "stale generation {} for device {:016x}: this node holds generation {held} \
                     (the device was taken over or handed on since)",
                    hello.generation, hello.identity
                ))
            }
            Some((_, held)) => held.max(hello.generation),
        };
        let h = match map.get(&hello.identity) {
            Some(h) => h.clone(),
            None => {
                let (file, image) =
                    open_record(&rec_path, &geometry, hello.identity).map_err(|e| e.to_string())?;
                let h = Arc::new(Mutex::new(Held {
                    file,
                    image,
                    owner: hello.node,
                    last_heard: std::time::Instant::now(),
                    generation,
                    applied: (0, 0),
                    session: 0,
                    view: None,
                    whole: false,
                }));
                map.insert(hello.identity, h.clone());
                h
            }
        };
        let mut g = h.lock().unwrap_or_else(|e| e.into_inner());
        if g.image.len() as u64 != geometry.regions() {
            return Err(format!(
                "device {:016x} has {} regions here, {} at the owner",
                hello.identity,
                g.image.len(),
                geometry.regions()
            ));
        }
        if owner != Some((hello.node, generation)) {
            write_owner(&owner_path, hello.node, generation).map_err(|e| e.to_string())?;
        }
        if g.view.is_none() {
            g.view = self.view_of(hello.identity);
        }
        // A new session: the view waits for the whole record.
        g.whole = false;
        self.mark_stopped(hello.identity, false);
        if let Some(v) = &g.view {
            v.forget();
        }
        g.generation = generation;
        g.owner = hello.node;
        g.last_heard = std::time::Instant::now();
        g.session += 1;
        g.applied = (0, 0);
        let session = g.session;
        drop(g);
        Ok((h, generation, session))
    }

    /// Accepts owners on `listener` until `stop` is set, a thread per
    /// connection.
    pub fn serve(self: &Arc<Self>, listener: TcpListener, stop: Arc<AtomicBool>) -> Result<()> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set the listener non-blocking", e))?;
        let mut next = 0u64;
        while !stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, from)) => {
                    next += 1;
                    let id = next;
                    if let Ok(s) = stream.try_clone() {
                        self.sessions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id, s);
                    }
                    let me = self.clone();
                    std::thread::Builder::new()
                        .name("tandem-holder".into())
                        .spawn(move || {
                            if let Err(e) = me.session(stream) {
                                log::warn!("peer {from}: {e}; connection closed");
                            }
                            me.sessions
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&id);
                        })
                        .map_err(|e| Error::io("spawn a holder thread", e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::io("accept a peer", e)),
            }
        }
        // Stopped: as if this node died, every owner loses its connection.
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = s.1.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }

    /// One owner's connection: a hello, then updates, fetches and pings.
    fn session(&self, stream: TcpStream) -> std::result::Result<(), WireError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_nonblocking(false)?;
        let mut rd = BufReader::new(stream.try_clone()?);
        let mut wr = BufWriter::new(stream);
        // A connection closed before its hello (a probe) is no error.
        let Some((seq, first)) = next_frame(&mut rd)? else {
            return Ok(());
        };
        let hello = match first {
            Frame::Hello(hello) => hello,
            Frame::Checks(hello) => return self.checks(hello, seq, rd, wr),
            other => {
                let reason = format!("expected hello, got {}", other.name());
                return Err(refuse(&mut wr, seq, "hello", reason));
            }
        };
        let (held, generation, session) = match self.open(&hello) {
            Ok(x) => x,
            Err(reason) => {
                log::warn!("node {} refused: {reason}", hello.node);
                write_frame(&mut wr, seq, &Frame::Refused { reason })?;
                return Ok(());
            }
        };
        log::info!(
            "holding the record of device {:016x} for node {} (generation {generation})",
            hello.identity,
            hello.node
        );
        write_frame(
            &mut wr,
            seq,
            &Frame::Welcome {
                node: self.node,
                generation,
            },
        )?;
        let _ended = SessionEnd {
            holder: self,
            identity: hello.identity,
            held: &held,
            session,
        };
        loop {
            let Some((seq, frame)) = next_frame(&mut rd)? else {
                return Ok(());
            };
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            if h.session != session && h.generation == generation {
                let reason = format!(
                    "this connection of node {} was superseded by a newer one",
                    hello.node
                );
                drop(h);
                write_frame(&mut wr, seq, &Frame::Refused { reason })?;
                return Ok(());
            }
            if h.generation != generation {
                // Taken over (or handed on) since the hello: every request
                // of the old generation is refused.
                let reason = format!(
                    "generation {generation} ended: this node now holds generation {} of device {:016x}",
                    h.generation, hello.identity
                );
                drop(h);
                write_frame(&mut wr, seq, &Frame::Refused { reason })?;
                return Ok(());
            }
            h.last_heard = std::time::Instant::now();
            let answer = match frame {
                Frame::Pages(pages) => Frame::Done {
                    errno: apply(&mut h, (generation, seq), &pages),
                },
                Frame::Fetch => {
                    let pages = (h.image.len() as u64).div_ceil(REGIONS_PER_PAGE);
                    let all = (0..pages)
                        .map(|index| Page {
                            index,
                            words: page_words(&h.image, index),
                        })
                        .collect();
                    drop(h);
                    write_frame(&mut wr, seq, &Frame::Pages(all))?;
                    Frame::Done { errno: 0 }
                }
                Frame::Ping => Frame::Pong,
                other => {
                    drop(h);
                    let reason = format!("unexpected {} frame from an owner", other.name());
                    return Err(refuse(&mut wr, seq, other.name(), reason));
                }
            };
            write_frame(&mut wr, seq, &answer)?;
        }
    }
}

impl Holder {
    /// A checks session: the other node of a dual-active pair asks about
    /// regions of a device this node serves too.
    fn checks(
        &self,
        hello: Hello,
        seq: u64,
        mut rd: impl std::io::Read,
        mut wr: impl Write,
    ) -> std::result::Result<(), WireError> {
        let answerer = self
            .answerers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hello.identity)
            .cloned();
        let Some(answerer) = answerer else {
            let reason = format!(
                "node {} does not serve device {:016x}: it has nothing to check",
                self.node, hello.identity
            );
            return Err(refuse(&mut wr, seq, "checks", reason));
        };
        let g = answerer.geometry();
        if (g.device_size(), g.region_size()) != (hello.device_size, hello.region_size) {
            let reason = format!(
                "device {:016x} is {} bytes in regions of {} here, {} bytes in regions of {} at node {}",
                hello.identity,
                g.device_size(),
                g.region_size(),
                hello.device_size,
                hello.region_size,
                hello.node
            );
            return Err(refuse(&mut wr, seq, "checks", reason));
        }
        // No generation is checked: an answer only tells what this node
        // does, and a node whose device was taken over cannot write (its
        // record updates are refused).
        write_frame(
            &mut wr,
            seq,
            &Frame::Welcome {
                node: self.node,
                generation: hello.generation,
            },
        )?;
        let regions = g.regions();
        let mut grants = Grants {
            answerer: answerer.clone(),
            given: HashMap::new(),
        };
        loop {
            let Some((seq, frame)) = next_frame(&mut rd)? else {
                return Ok(());
            };
            grants.expire();
            let region = match frame {
                Frame::Check { region }
                | Frame::CopyBegin { region }
                | Frame::CopyEnd { region, .. } => Some(region),
                _ => None,
            };
            if let Some(r) = region.filter(|&r| r >= regions) {
                let reason = format!("region {r} of a device of {regions} regions");
                return Err(refuse(&mut wr, seq, frame.name(), reason));
            }
            let errno = |e: Error| Frame::Done { errno: -e.errno() };
            let answer = match frame {
                Frame::Check { region } => match answerer.status(region) {
                    Ok(()) => Frame::Done { errno: 0 },
                    Err(e) => errno(e),
                },
                Frame::CopyBegin { region } => match answerer.grant(region) {
                    Ok(Some(seq)) => {
                        grants.given.insert(region, std::time::Instant::now());
                        Frame::Grant { seq }
                    }
                    Ok(None) => Frame::Busy,
                    Err(e) => errno(e),
                },
                Frame::CopyEnd {
                    region,
                    seq,
                    landed,
                } => {
                    grants.given.remove(&region);
                    Frame::Ended {
                        unchanged: answerer.end(region, seq, landed),
                    }
                }
                Frame::Ping => Frame::Pong,
                Frame::Bye => {
                    self.mark_stopped(hello.identity, true);
                    if let Some(v) = self.view_of(hello.identity) {
                        self.nothing_to_ask(hello.identity, &v);
                    }
                    Frame::Done { errno: 0 }
                }
                other => {
                    let reason = format!("unexpected {} frame in a checks session", other.name());
                    return Err(refuse(&mut wr, seq, other.name(), reason));
                }
            };
            write_frame(&mut wr, seq, &answer)?;
        }
    }
}

/// Ends a record session: unless a newer one took over, the view of the
/// record waits for the next whole record (the owner may serve directly).
struct SessionEnd<'a> {
    holder: &'a Holder,
    identity: u64,
    held: &'a Mutex<Held>,
    session: u64,
}

impl Drop for SessionEnd<'_> {
    fn drop(&mut self) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.session == self.session {
            h.whole = false;
            if let Some(v) = &h.view {
                let bye = self
                    .holder
                    .stopped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&self.identity);
                if bye {
                    self.holder.nothing_to_ask(self.identity, v);
                } else {
                    v.forget();
                }
            }
        }
    }
}

/// The next frame of a session, `None` once the other end closed it.
fn next_frame(rd: &mut impl std::io::Read) -> std::result::Result<Option<(u64, Frame)>, WireError> {
    match read_frame(rd) {
        Ok(f) => Ok(Some(f)),
        Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tells the owner why its frame is refused; returns the error that ends
/// the session (the refusal's own send failing, if it does).
fn refuse(wr: &mut impl Write, seq: u64, frame: &'static str, reason: String) -> WireError {
    match write_frame(
        wr,
        seq,
        &Frame::Refused {
            reason: reason.clone(),
        },
    ) {
        Err(e) => WireError::Io(e),
        Ok(()) => WireError::Payload { frame, why: reason },
    }
}

/// Applies an update to a held record; returns 0 once durable, or the
/// positive errno of the failure.
fn apply(h: &mut Held, at: (u64, u64), pages: &[Page]) -> i32 {
    if at <= h.applied {
        // A late copy of an update already overtaken: what it carried is
        // already durable or superseded.
        return 0;
    }
    let count = (h.image.len() as u64).div_ceil(REGIONS_PER_PAGE);
    if let Some(bad) = pages.iter().find(|p| p.index >= count) {
        log::warn!("update of page {} of a record of {count} pages", bad.index);
        return libc::EINVAL;
    }
    let before = h.image.clone();
    for p in pages {
        set_page_words(&mut h.image, p.index, &p.words);
    }
    let indices: Vec<u64> = pages.iter().map(|p| p.index).collect();
    match h.file.write_pages(&h.image, &indices) {
        Ok(()) => {
            if pages.len() as u64 == count {
                h.whole = true;
            }
            if let Some(v) = &h.view {
                // Before the answer: the other node's write is issued only
                // after it, and this node asks about the region from now.
                if pages.len() as u64 == count {
                    v.load(&h.image);
                } else {
                    for &p in &indices {
                        v.update(&h.image, p * REGIONS_PER_PAGE..(p + 1) * REGIONS_PER_PAGE);
                    }
                }
            }
            h.applied = at;
            0
        }
        Err(e) => {
            log::error!("hold a peer's record: {e}");
            // Not durable: the owner will retry; keep what is durable.
            h.image = before;
            -e.errno()
        }
    }
}

/// Opens the region file at `path` for `geometry`, creating it when it does
/// not exist; a corrupt one is replaced by a record of every region (the
/// owner then resyncs the whole device, never less).
fn open_record(path: &Path, geometry: &Geometry, identity: u64) -> Result<(RegionFile, Image)> {
    let size = RegionFile::file_size(geometry);
    let exists = path.exists();
    let dev: Dev = Arc::new(FileDev::open(
        path,
        &OpenOptions {
            direct: false,
            create_size: (!exists).then_some(size),
        },
    )?);
    let mut image = Image::repeat(false, geometry.regions() as usize);
    if !exists {
        return Ok((RegionFile::create(dev, geometry, identity, false)?, image));
    }
    match RegionFile::open(dev.clone(), geometry, identity)? {
        (file, LoadOutcome::Loaded(regions)) => {
            for r in regions {
                image.set(r as usize, true);
            }
            Ok((file, image))
        }
        (_, LoadOutcome::Corrupt(reason)) => {
            log::error!(
                "held record {} cannot be trusted ({reason}): holding every region",
                path.display()
            );
            image.fill(true);
            Ok((RegionFile::create(dev, geometry, identity, true)?, image))
        }
    }
}
