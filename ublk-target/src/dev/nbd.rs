//! A secondary on an NBD server: `nbd://HOST[:PORT]/EXPORT` or
//! `nbd+unix:///EXPORT?socket=PATH`, the URIs qemu and libnbd take.
//!
//! A small client of our own, not a crate: the Rust NBD crates are young
//! (`nbd` 0.3 has one request in flight at a time) and libnbd's bindings
//! need the C library, which the static daemon does not link. The engine's
//! device calls block (`BlockDev`), so the client is plain blocking sockets:
//! callers write their request under the connection's lock and wait for
//! their own reply, which one reader thread per connection matches by
//! cookie. Many requests are in flight at once, from many threads.
//!
//! - The fixed newstyle handshake with `NBD_OPT_GO` (falling back to
//!   `NBD_OPT_EXPORT_NAME` on servers without it), asking for the block size
//!   constraints; the export's size and flags are honoured: FLUSH and FUA
//!   when the server takes them, WRITE_ZEROES when it can, several
//!   connections only with `CAN_MULTI_CONN` (a flush on one of them then
//!   covers the writes of all).
//! - Every request has a timeout. A broken connection fails what was in
//!   flight on it and is reconnected on a later request, with backoff.
//! - Writes acknowledged on a connection that broke before a flush covered
//!   them may be lost with the server's cache: `losses` counts such breaks,
//!   and the mirror marks nothing clean across one.
//! - Flushes are group-committed: a caller that comes while a flush is in
//!   flight waits for it and then for the next, which one of the waiters
//!   sends for all of them (each flush costs the server a sync of its whole
//!   store, and many mirror threads want one at once).
//! - A malformed reply (bad magic, unknown cookie, an oversized option
//!   reply) breaks the connection with a message that names it; it never
//!   panics.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{BlockDev, Dev};
use crate::error::{Error, Result};

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// How long one request may wait for its reply before its connection is
/// taken as dead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection and its handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection backoff: from the first to the last, doubling.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connections opened when the server allows several.
const MULTI_CONN: usize = 4;
/// The largest payload of one request when the server names none (the
/// protocol's default maximum).
const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;
/// Reads and writes are cut into requests of at most this many bytes
/// (and the server's maximum), sent together: a large copy over a slow
/// link pays one round trip, not one per request. nbdcopy's default too:
/// the server works on several at once (nbdkit's threads), and with 1 MiB
/// requests the copy to nbdkit over a 10 ms round trip ran at 439-544
/// MiB/s, with 256 KiB at 635-690 (tmpfs behind the server).
const PART: u64 = 256 << 10;
/// Requests one read or write keeps in flight at most.
const PIPELINE: usize = 16;
/// Largest length of one WRITE_ZEROES request.
const MAX_ZEROES: u64 = 1 << 30;
/// Largest option reply accepted during the handshake.
const MAX_OPTION_REPLY: u32 = 64 << 10;

mod proto {
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    pub const OLDSTYLE: u64 = 0x0000_4202_8186_1253;
    pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

    pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const FLAG_NO_ZEROES: u16 = 1 << 1;

    pub const OPT_EXPORT_NAME: u32 = 1;
    pub const OPT_GO: u32 = 7;
    pub const REP_ACK: u32 = 1;
    pub const REP_INFO: u32 = 3;
    pub const REP_ERR: u32 = 1 << 31;
    pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
    pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
    pub const INFO_EXPORT: u16 = 0;
    pub const INFO_BLOCK_SIZE: u16 = 3;

    pub const TF_READ_ONLY: u16 = 1 << 1;
    pub const TF_SEND_FLUSH: u16 = 1 << 2;
    pub const TF_SEND_FUA: u16 = 1 << 3;
    pub const TF_SEND_TRIM: u16 = 1 << 5;
    pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;

    pub const CMD_READ: u16 = 0;
    pub const CMD_WRITE: u16 = 1;
    pub const CMD_DISC: u16 = 2;
    pub const CMD_FLUSH: u16 = 3;
    pub const CMD_WRITE_ZEROES: u16 = 6;
    pub const CMD_FLAG_FUA: u16 = 1 << 0;

    /// The protocol's error numbers, as the local errno.
    pub fn errno(nbd: u32) -> i32 {
        match nbd {
            1 => libc::EPERM,
            12 => libc::ENOMEM,
            22 => libc::EINVAL,
            28 => libc::ENOSPC,
            75 => libc::EOVERFLOW,
            95 => libc::EOPNOTSUPP,
            108 => libc::ESHUTDOWN,
            _ => libc::EIO,
        }
    }
}

/// Where an NBD export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed `nbd://` or `nbd+unix://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
    /// The URI as given, for messages and the device's identity.
    pub text: String,
}

/// Whether `spec` names an NBD export rather than a path (`nbd:`, `nbds:`,
/// `nbd+unix:` and the like).
pub fn is_uri(spec: &Path) -> bool {
    spec.to_str().is_some_and(|s| {
        s.split_once("://")
            .is_some_and(|(scheme, _)| scheme.starts_with("nbd"))
    })
}

fn percent_decode(what: &str, text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(Error::Config(format!(
                        "{what}: bad percent escape at {:?}",
                        &text[i..]
                    )))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("{what}: not UTF-8 once decoded")))
}

impl NbdUri {
    /// Parses `nbd://HOST[:PORT][/EXPORT]` (HOST may be `[v6]`) or
    /// `nbd+unix:///[EXPORT]?socket=PATH`; every error names the URI.
    pub fn parse(text: &str) -> Result<NbdUri> {
        let bad = |why: String| Error::Config(format!("secondary {text:?}: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("not a URI (expected nbd://HOST[:PORT]/EXPORT)".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(text, path)?;
        let mut socket = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("socket", v)) if scheme == "nbd+unix" => {
                    socket = Some(PathBuf::from(percent_decode(text, v)?))
                }
                _ => {
                    return Err(bad(format!(
                        "unsupported query parameter {pair:?} (only socket=PATH, with nbd+unix)"
                    )))
                }
            }
        }
        let endpoint = match scheme {
            "nbd" => {
                if authority.is_empty() {
                    return Err(bad("no host (nbd://HOST[:PORT]/EXPORT)".into()));
                }
                let (host, port) =
                    if let Some(v6) = authority.strip_prefix('[') {
                        let (host, after) = v6
                            .split_once(']')
                            .ok_or_else(|| bad("unclosed [ in the host".into()))?;
                        match after {
                            "" => (host, None),
                            p => (
                                host,
                                Some(p.strip_prefix(':').ok_or_else(|| {
                                    bad(format!("unexpected {p:?} after the host"))
                                })?),
                            ),
                        }
                    } else {
                        match authority.rsplit_once(':') {
                            Some((h, p)) => (h, Some(p)),
                            None => (authority, None),
                        }
                    };
                let port = match port {
                    None => DEFAULT_PORT,
                    Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                        bad(format!("port {p:?} is not a number from 1 to 65535"))
                    })?,
                };
                Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                }
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(bad(format!(
                        "a Unix socket URI names no host (nbd+unix:///EXPORT?socket=PATH), not {authority:?}"
                    )));
                }
                Endpoint::Unix(socket.ok_or_else(|| bad("needs ?socket=PATH".into()))?)
            }
            "nbds" | "nbds+unix" => {
                return Err(bad(
                    "TLS (nbds) is not supported; use nbd:// over a tunnel".into()
                ))
            }
            other => {
                return Err(bad(format!(
                "scheme {other:?}: use nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"
            )))
            }
        };
        if export.len() > 4096 {
            return Err(bad("export name longer than 4096 bytes".into()));
        }
        Ok(NbdUri {
            endpoint,
            export,
            text: text.to_string(),
        })
    }
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A connected socket, either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        let stream = match endpoint {
            Endpoint::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
        };
        stream.set_timeouts(Some(timeout), Some(timeout))?;
        Ok(stream)
    }

    /// The socket's own timeouts (every clone shares them).
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// What the handshake learnt about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    /// Requests' offsets and lengths are multiples of this.
    pub min_block: u32,
    pub preferred_block: u32,
    /// Largest payload of one READ or WRITE.
    pub max_payload: u32,
}

impl ExportInfo {
    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// The fixed newstyle handshake: `NBD_OPT_GO` for `export`, or
/// `NBD_OPT_EXPORT_NAME` when the server does not know GO.
fn handshake(s: &mut Stream, export: &str) -> io::Result<ExportInfo> {
    use proto::*;
    let magic = read_u64(s)?;
    if magic != NBDMAGIC {
        return Err(proto_err(format!(
            "not an NBD server: greeting {magic:#018x}, expected NBDMAGIC"
        )));
    }
    let style = read_u64(s)?;
    if style == OLDSTYLE {
        return Err(proto_err(
            "the server speaks the oldstyle protocol, which has no export names; \
             run it in newstyle mode",
        ));
    }
    if style != IHAVEOPT {
        return Err(proto_err(format!(
            "bad handshake magic {style:#018x}, expected IHAVEOPT"
        )));
    }
    let server_flags = read_u16(s)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto_err(
            "the server does not speak the fixed newstyle handshake",
        ));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { 2 } else { 0 };
    s.write_all(&client_flags.to_be_bytes())?;

    let name = export.as_bytes();
    let mut opt = Vec::with_capacity(16 + 8 + name.len());
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&((4 + name.len() + 2 + 2) as u32).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name);
    opt.extend_from_slice(&1u16.to_be_bytes());
    opt.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    s.write_all(&opt)?;

    let mut export_info: Option<(u64, u16)> = None;
    let mut sizes: Option<(u32, u32, u32)> = None;
    loop {
        let magic = read_u64(s)?;
        if magic != REPLY_MAGIC {
            return Err(proto_err(format!("bad option reply magic {magic:#018x}")));
        }
        let option = read_u32(s)?;
        let kind = read_u32(s)?;
        let len = read_u32(s)?;
        if option != OPT_GO {
            return Err(proto_err(format!(
                "reply to option {option}, but GO ({OPT_GO}) was asked"
            )));
        }
        if len > MAX_OPTION_REPLY {
            return Err(proto_err(format!(
                "option reply of {len} bytes (at most {MAX_OPTION_REPLY} accepted)"
            )));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match kind {
            REP_ACK => break,
            REP_INFO => {
                if data.len() < 2 {
                    return Err(proto_err("an info reply shorter than its type"));
                }
                let info = u16::from_be_bytes([data[0], data[1]]);
                let body = &data[2..];
                match info {
                    INFO_EXPORT if body.len() == 10 => {
                        let size = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                        let flags = u16::from_be_bytes([body[8], body[9]]);
                        export_info = Some((size, flags));
                    }
                    INFO_BLOCK_SIZE if body.len() == 12 => {
                        let w = |i: usize| {
                            u32::from_be_bytes(body[i..i + 4].try_into().expect("4 bytes"))
                        };
                        sizes = Some((w(0), w(4), w(8)));
                    }
                    INFO_EXPORT | INFO_BLOCK_SIZE => {
                        return Err(proto_err(format!(
                            "info reply {info} of {} bytes has the wrong length",
                            body.len()
                        )))
                    }
                    _ => {}
                }
            }
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes),
            REP_ERR_UNKNOWN => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the server has no export {export:?}{}", message(&data)),
                ))
            }
            k if k & REP_ERR != 0 => {
                return Err(proto_err(format!(
                    "the server refused export {export:?} (error {:#x}){}",
                    k & !REP_ERR,
                    message(&data)
                )))
            }
            _ => {}
        }
    }
    let (size, flags) =
        export_info.ok_or_else(|| proto_err("GO acknowledged with no export info"))?;
    let (min, pref, max) = sizes.unwrap_or((1, 4096, DEFAULT_MAX_PAYLOAD));
    if !min.is_power_of_two() || min > 64 << 10 || max < min {
        return Err(proto_err(format!(
            "block size constraints min {min}, preferred {pref}, max {max} are not valid"
        )));
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: min,
        preferred_block: pref,
        max_payload: max.min(DEFAULT_MAX_PAYLOAD),
    })
}

fn message(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

/// The older way in, for servers without `NBD_OPT_GO`.
fn export_name(s: &mut Stream, export: &str, no_zeroes: bool) -> io::Result<ExportInfo> {
    use proto::*;
    let name = export.as_bytes();
    let mut opt = Vec::with_capacity(16 + name.len());
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name);
    s.write_all(&opt)?;
    let size = read_u64(s)?;
    let flags = read_u16(s)?;
    if !no_zeroes {
        let mut zeroes = [0u8; 124];
        s.read_exact(&mut zeroes)?;
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: 1,
        preferred_block: 4096,
        max_payload: DEFAULT_MAX_PAYLOAD,
    })
}

/// One request's reply: the data of a read, or the error.
type Reply = io::Result<Vec<u8>>;

struct Waiter {
    tx: mpsc::SyncSender<Reply>,
    /// Bytes of data that follow the reply (a read's length).
    read_len: u32,
}

#[derive(Default)]
struct Inflight {
    waiters: HashMap<u64, Waiter>,
    /// Why the connection broke; no request is taken once set.
    broken: Option<String>,
}

/// One connection in transmission mode.
struct Conn {
    writer: Mutex<Stream>,
    /// A handle to shut the socket down with, whoever holds the writer.
    control: Stream,
    inflight: Mutex<Inflight>,
    next_cookie: AtomicU64,
    broken: AtomicBool,
    /// Writes sent on this connection that a completed flush may not
    /// cover: set before each write is sent, cleared when a flush is sent
    /// with no write in flight here.
    unflushed: AtomicBool,
    /// Writes sent and not yet answered.
    writes_in_flight: AtomicU64,
    losses: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Marks the connection broken (once), fails every request in flight
    /// on it, and counts a loss if acknowledged writes were not yet flushed.
    fn break_with(&self, why: &str) {
        self.break_as(io::ErrorKind::ConnectionAborted, why);
    }

    /// Like `break_with`, the requests in flight failing with `kind`.
    fn break_as(&self, kind: io::ErrorKind, why: &str) {
        let waiters = {
            let mut inflight = lock(&self.inflight);
            if inflight.broken.is_some() {
                return;
            }
            inflight.broken = Some(why.to_string());
            std::mem::take(&mut inflight.waiters)
        };
        self.broken.store(true, Ordering::Release);
        if self.unflushed.load(Ordering::Acquire) {
            self.losses.fetch_add(1, Ordering::AcqRel);
        }
        self.control.shutdown();
        for (_, w) in waiters {
            let _ = w.tx.try_send(Err(io::Error::new(kind, why.to_string())));
        }
    }

    /// The reader thread: matches each reply to its request by cookie.
    fn read_replies(self: Arc<Self>, mut s: Stream, what: String) {
        let why = loop {
            match self.read_reply(&mut s) {
                Ok(()) => continue,
                Err(e) => break e,
            }
        };
        let why = if self.broken.load(Ordering::Acquire) {
            why.to_string()
        } else {
            format!("connection to {what} lost: {why}")
        };
        self.break_with(&why);
    }

    fn read_reply(&self, s: &mut Stream) -> io::Result<()> {
        let magic = read_u32(s)?;
        if magic != proto::SIMPLE_REPLY_MAGIC {
            return Err(proto_err(format!(
                "malformed reply from the server: magic {magic:#010x}, expected {:#010x}",
                proto::SIMPLE_REPLY_MAGIC
            )));
        }
        let error = read_u32(s)?;
        let cookie = read_u64(s)?;
        let waiter = lock(&self.inflight).waiters.remove(&cookie);
        let Some(waiter) = waiter else {
            return Err(proto_err(format!(
                "malformed reply from the server: cookie {cookie} matches no request in flight"
            )));
        };
        let reply = if error != 0 {
            Err(io::Error::from_raw_os_error(proto::errno(error)))
        } else {
            let mut data = vec![0u8; waiter.read_len as usize];
            s.read_exact(&mut data)?;
            Ok(data)
        };
        let _ = waiter.tx.try_send(reply);
        Ok(())
    }

    /// Sends a request that changes data: counted in flight and unflushed
    /// before it is sent, so that a break while it is in flight counts as
    /// a loss too (the server may have taken it), and a flush sent before
    /// its answer does not count as covering it.
    fn send_write(
        self: &Arc<Self>,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> io::Result<Sent> {
        self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        self.unflushed.store(true, Ordering::SeqCst);
        match self.send(cmd, flags, offset, len, payload) {
            Ok(mut sent) => {
                sent.write = true;
                Ok(sent)
            }
            Err(e) => {
                self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Sends one request; its reply is waited for with `Sent::wait`, so
    /// that one caller can have several in flight.
    fn send(
        self: &Arc<Self>,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> io::Result<Sent> {
        let (tx, rx) = mpsc::sync_channel(1);
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let read_len = if cmd == proto::CMD_READ { len } else { 0 };
        {
            let mut inflight = lock(&self.inflight);
            if let Some(why) = &inflight.broken {
                return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
            }
            inflight.waiters.insert(cookie, Waiter { tx, read_len });
        }
        let mut header = [0u8; 28];
        header[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        header[4..6].copy_from_slice(&flags.to_be_bytes());
        header[6..8].copy_from_slice(&cmd.to_be_bytes());
        header[8..16].copy_from_slice(&cookie.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&len.to_be_bytes());
        let sent = {
            let mut w = lock(&self.writer);
            w.write_all(&header)
                .and_then(|()| payload.map_or(Ok(()), |p| w.write_all(p)))
        };
        if let Err(e) = sent {
            // The stream is out of step now: the connection goes, and
            // every request in flight on it fails.
            let (kind, why) = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => (
                    io::ErrorKind::TimedOut,
                    "send to the server: no progress within the request timeout".to_string(),
                ),
                kind => (kind, format!("send to the server: {e}")),
            };
            self.break_as(kind, &why);
            return Err(io::Error::new(kind, why));
        }
        Ok(Sent {
            conn: self.clone(),
            rx,
            write: false,
            at: Instant::now(),
        })
    }
}

/// A request sent, its reply still to come.
struct Sent {
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Reply>,
    /// A write (`send_write`): no longer in flight once answered.
    write: bool,
    /// When it was sent: its timeout runs from then.
    at: Instant,
}

impl Sent {
    fn wait(self, timeout: Duration) -> Reply {
        let reply = self
            .rx
            .recv_timeout(timeout.saturating_sub(self.at.elapsed()));
        if self.write {
            self.conn.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        match reply {
            Ok(reply) => reply,
            Err(_) => {
                let why = format!(
                    "no reply from the server within {} s",
                    timeout.as_secs_f64()
                );
                self.conn.break_as(io::ErrorKind::TimedOut, &why);
                Err(io::Error::new(io::ErrorKind::TimedOut, why))
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.control.shutdown();
    }
}

/// A connection slot: its connection, or when to try again.
struct Slot {
    conn: Option<Arc<Conn>>,
    retry_at: Instant,
    backoff: Duration,
    last_error: String,
}

/// An NBD export as a block device.
pub struct NbdDev {
    uri: NbdUri,
    info: ExportInfo,
    slots: Vec<Mutex<Slot>>,
    next_slot: AtomicUsize,
    losses: Arc<AtomicU64>,
    timeout: Duration,
    reconnects: AtomicU64,
    flushes: super::group::GroupSync,
    /// FLUSH requests sent, for the tests.
    flushes_sent: AtomicU64,
}

impl NbdDev {
    /// Connects to the export (several connections if it allows them).
    pub fn connect(uri: &NbdUri) -> Result<NbdDev> {
        Self::connect_with(uri, REQUEST_TIMEOUT)
    }

    /// Like `connect`, each request waiting at most `timeout` for its reply.
    pub fn connect_with(uri: &NbdUri, timeout: Duration) -> Result<NbdDev> {
        let losses = Arc::new(AtomicU64::new(0));
        let (first, info) = open_conn(uri, &losses, timeout)
            .map_err(|e| Error::io(format!("secondary {uri}"), e))?;
        if info.has(proto::TF_READ_ONLY) {
            return Err(Error::Config(format!(
                "secondary {uri}: the export is read-only"
            )));
        }
        if !info.has(proto::TF_SEND_FLUSH) {
            log::warn!(
                "secondary {uri}: the server takes no FLUSH; its writes are trusted to be \
                 durable once acknowledged"
            );
        }
        let n = if info.has(proto::TF_CAN_MULTI_CONN) {
            MULTI_CONN
        } else {
            1
        };
        let mut slots = vec![Mutex::new(Slot {
            conn: Some(first),
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
            last_error: String::new(),
        })];
        for _ in 1..n {
            let (conn, more) = open_conn(uri, &losses, timeout)
                .map_err(|e| Error::io(format!("secondary {uri}"), e))?;
            if more.size != info.size {
                return Err(Error::Config(format!(
                    "secondary {uri}: the export's size changed from {} to {} bytes between connections",
                    info.size, more.size
                )));
            }
            slots.push(Mutex::new(Slot {
                conn: Some(conn),
                retry_at: Instant::now(),
                backoff: MIN_BACKOFF,
                last_error: String::new(),
            }));
        }
        log::info!(
            "secondary {uri}: {} bytes, {n} connection{}, flags {:#x}, block sizes {}/{}/{}",
            info.size,
            if n == 1 { "" } else { "s" },
            info.flags,
            info.min_block,
            info.preferred_block,
            info.max_payload
        );
        Ok(NbdDev {
            uri: uri.clone(),
            info,
            slots,
            next_slot: AtomicUsize::new(0),
            losses,
            timeout,
            reconnects: AtomicU64::new(0),
            flushes: Default::default(),
            flushes_sent: AtomicU64::new(0),
        })
    }

    /// What the handshake said about the export.
    pub fn info(&self) -> ExportInfo {
        self.info
    }

    /// Connections made again after one broke.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// FLUSH requests sent so far.
    pub fn flushes_sent(&self) -> u64 {
        self.flushes_sent.load(Ordering::Relaxed)
    }

    /// A live connection: the next slot's, reconnected when it broke and
    /// its backoff has passed.
    fn conn(&self, slot: usize) -> io::Result<Arc<Conn>> {
        let mut s = lock(&self.slots[slot]);
        if let Some(c) = s.conn.clone() {
            if !c.broken.load(Ordering::Acquire) {
                return Ok(c);
            }
            s.last_error = lock(&c.inflight).broken.clone().unwrap_or_default();
            s.conn = None;
            s.retry_at = Instant::now() + s.backoff;
        }
        let now = Instant::now();
        if now < s.retry_at {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "not connected ({}); reconnecting in {} ms",
                    s.last_error,
                    (s.retry_at - now).as_millis()
                ),
            ));
        }
        match open_conn(&self.uri, &self.losses, self.timeout) {
            Ok((conn, info)) if info.size == self.info.size => {
                log::info!("secondary {}: reconnected", self.uri);
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                s.backoff = MIN_BACKOFF;
                s.conn = Some(conn.clone());
                Ok(conn)
            }
            Ok((_, info)) => {
                s.last_error = format!(
                    "the export is back with {} bytes, not {}",
                    info.size, self.info.size
                );
                s.retry_at = now + MAX_BACKOFF;
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    s.last_error.clone(),
                ))
            }
            Err(e) => {
                s.last_error = format!("reconnect: {e}");
                s.retry_at = now + s.backoff;
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                Err(io::Error::new(e.kind(), s.last_error.clone()))
            }
        }
    }

    fn pick(&self) -> io::Result<Arc<Conn>> {
        let n = self.slots.len();
        let first = self.next_slot.fetch_add(1, Ordering::Relaxed) % n;
        let mut err = None;
        for i in 0..n {
            match self.conn((first + i) % n) {
                Ok(c) => return Ok(c),
                Err(e) => err = Some(e),
            }
        }
        Err(err.expect("at least one slot"))
    }

    fn check_aligned(&self, offset: u64, len: u64) -> io::Result<()> {
        let min = u64::from(self.info.min_block);
        if !offset.is_multiple_of(min) || !len.is_multiple_of(min) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} length {len} is not a multiple of the export's block size {min}"
                ),
            ));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.info.size)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} length {len} is beyond the export's {} bytes",
                    self.info.size
                ),
            ));
        }
        Ok(())
    }

    /// The largest payload of one request, a multiple of the block size.
    fn max_payload(&self) -> u64 {
        let min = u64::from(self.info.min_block);
        (u64::from(self.info.max_payload) / min * min).max(min)
    }

    /// Passes a request's outcome on; a timeout first breaks every
    /// connection. The connections share the link and the server, so one
    /// with no answer for a whole request timeout says the others are as
    /// good as gone, and waiting out a timeout on each of them in turn
    /// would only delay the degraded state.
    fn settle<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            if e.kind() == io::ErrorKind::TimedOut {
                for slot in &self.slots {
                    let conn = lock(slot).conn.clone();
                    if let Some(c) = conn {
                        // Not TimedOut: their requests' failures must not
                        // break the connections made after this.
                        c.break_with(&e.to_string());
                    }
                }
            }
        }
        result
    }

    /// Sends one request per part (`send` with a connection, the part's
    /// index and the part), each on the next connection, all before any
    /// reply is waited for; stops at the first that cannot be sent. Returns
    /// the requests sent and that first error.
    fn send_parts<'p>(
        &self,
        parts: impl Iterator<Item = &'p [u8]>,
        send: impl Fn(&Arc<Conn>, usize, &[u8]) -> io::Result<Sent>,
    ) -> (Vec<Sent>, io::Result<()>) {
        let mut sent = Vec::new();
        for (i, p) in parts.enumerate() {
            match self.pick().and_then(|c| send(&c, i, p)) {
                Ok(s) => sent.push(s),
                Err(e) => return (sent, Err(e)),
            }
        }
        (sent, Ok(()))
    }

    /// The size of one request of a large read or write.
    fn part_size(&self) -> usize {
        let min = u64::from(self.info.min_block);
        (self.max_payload().min(PART) / min * min).max(min) as usize
    }

    /// Flushes on `conn`; the writes acknowledged before it are durable
    /// once it succeeds, on every connection.
    fn flush(&self, conn: &Arc<Conn>) -> io::Result<()> {
        let live: Vec<Arc<Conn>> = self
            .slots
            .iter()
            .filter_map(|s| lock(s).conn.clone())
            .collect();
        // Covered: the writes answered before the flush is sent. A write
        // still in flight keeps its connection unflushed; one sent after
        // this point sets the flag again itself.
        let had: Vec<bool> = live
            .iter()
            .map(|c| {
                let had = c.unflushed.swap(false, Ordering::SeqCst);
                if c.writes_in_flight.load(Ordering::SeqCst) > 0 {
                    c.unflushed.store(true, Ordering::SeqCst);
                }
                had
            })
            .collect();
        self.flushes_sent.fetch_add(1, Ordering::Relaxed);
        match conn
            .send(proto::CMD_FLUSH, 0, 0, 0, None)
            .and_then(|s| s.wait(self.timeout))
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // A connection that broke while this flush was out had
                // its writes uncovered, but its flag was clear: the break
                // counted no loss. Count it here.
                let lost = live
                    .iter()
                    .zip(&had)
                    .any(|(c, &had)| had && c.broken.load(Ordering::Acquire));
                for c in &live {
                    c.unflushed.store(true, Ordering::SeqCst);
                }
                if lost {
                    self.losses.fetch_add(1, Ordering::AcqRel);
                }
                self.settle(Err(e))
            }
        }
    }
}

/// The error a request of several parts reports: the first, unless a
/// later one timed out (which `NbdDev::settle` must see).
fn worse(result: io::Result<()>, e: io::Error) -> io::Result<()> {
    match result {
        Err(first)
            if first.kind() == io::ErrorKind::TimedOut || e.kind() != io::ErrorKind::TimedOut =>
        {
            Err(first)
        }
        _ => Err(e),
    }
}

/// Connects and shakes hands; starts the connection's reader thread.
fn open_conn(
    uri: &NbdUri,
    losses: &Arc<AtomicU64>,
    timeout: Duration,
) -> io::Result<(Arc<Conn>, ExportInfo)> {
    let mut s = Stream::connect(&uri.endpoint, CONNECT_TIMEOUT)?;
    let info = handshake(&mut s, &uri.export)?;
    // Transmission: a request's own timeout governs the wait for its
    // reply, and sending it may not stall longer either (a link that
    // drops everything fills the socket's buffer, and a send would then
    // wait for TCP to give up, many minutes later).
    s.set_timeouts(None, Some(timeout))?;
    let reader = s.try_clone()?;
    let control = s.try_clone()?;
    let conn = Arc::new(Conn {
        writer: Mutex::new(s),
        control,
        inflight: Mutex::new(Inflight::default()),
        next_cookie: AtomicU64::new(1),
        broken: AtomicBool::new(false),
        unflushed: AtomicBool::new(false),
        writes_in_flight: AtomicU64::new(0),
        losses: losses.clone(),
    });
    let c = conn.clone();
    let what = uri.text.clone();
    std::thread::Builder::new()
        .name("nbd-reply".into())
        .spawn(move || c.read_replies(reader, what))?;
    Ok((conn, info))
}

impl BlockDev for NbdDev {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_aligned(offset, buf.len() as u64)?;
        let part = self.part_size();
        for (w, window) in buf.chunks_mut(part * PIPELINE).enumerate() {
            let at = offset + (w * part * PIPELINE) as u64;
            let (sent, mut result) = self.send_parts(window.chunks(part), |c, i, p| {
                c.send(
                    proto::CMD_READ,
                    0,
                    at + (i * part) as u64,
                    p.len() as u32,
                    None,
                )
            });
            for (p, s) in window.chunks_mut(part).zip(sent) {
                match s.wait(self.timeout) {
                    Ok(data) if data.len() == p.len() => p.copy_from_slice(&data),
                    Ok(_) => result = worse(result, proto_err("short read reply")),
                    Err(e) => result = worse(result, e),
                }
            }
            self.settle(result)?;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check_aligned(offset, buf.len() as u64)?;
        let native_fua = fua && self.info.has(proto::TF_SEND_FUA);
        let flags = if native_fua { proto::CMD_FLAG_FUA } else { 0 };
        let part = self.part_size();
        for (w, window) in buf.chunks(part * PIPELINE).enumerate() {
            let at = offset + (w * part * PIPELINE) as u64;
            let (sent, mut result) = self.send_parts(window.chunks(part), |c, i, p| {
                c.send_write(
                    proto::CMD_WRITE,
                    flags,
                    at + (i * part) as u64,
                    p.len() as u32,
                    Some(p),
                )
            });
            // Every reply is waited for, the first error returned.
            for s in sent {
                if let Err(e) = s.wait(self.timeout) {
                    result = worse(result, e);
                }
            }
            self.settle(result)?;
        }
        if fua && !native_fua {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if !self.info.has(proto::TF_SEND_FLUSH) {
            return Ok(());
        }
        // One connection, or several with CAN_MULTI_CONN: a flush on any
        // covers the writes acknowledged on all of them.
        self.flushes
            .sync(|| self.pick().and_then(|c| self.flush(&c)))
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // A TRIM need not read back as zeroes; WRITE_ZEROES may punch a
        // hole and must.
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_aligned(offset, len)?;
        if self.info.has(proto::TF_SEND_WRITE_ZEROES) {
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(MAX_ZEROES);
                self.settle(self.pick().and_then(|c| {
                    c.send_write(proto::CMD_WRITE_ZEROES, 0, at, n as u32, None)?
                        .wait(self.timeout)
                        .map(drop)
                }))?;
                at += n;
            }
            return Ok(());
        }
        let zero = vec![0u8; self.max_payload().min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zero.len() as u64) as usize;
            self.write_at(&zero[..n], at, false)?;
            at += n as u64;
        }
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        self.info.has(proto::TF_SEND_WRITE_ZEROES) || self.info.has(proto::TF_SEND_TRIM)
    }

    fn logical_block_size(&self) -> u32 {
        self.info.min_block.max(512)
    }

    fn physical_block_size(&self) -> u32 {
        self.info.preferred_block.clamp(512, 64 << 10)
    }

    fn remote(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.uri.text.clone()
    }

    fn reopen(&self) -> Result<Dev> {
        Ok(Arc::new(NbdDev::connect_with(&self.uri, self.timeout)?))
    }

    fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }
}

impl Drop for NbdDev {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some(c) = lock(slot).conn.take() {
                if c.broken.load(Ordering::Acquire) {
                    continue;
                }
                // Tell the server we are leaving; the reader thread then ends.
                let mut header = [0u8; 28];
                header[0..4].copy_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
                header[6..8].copy_from_slice(&proto::CMD_DISC.to_be_bytes());
                let _ = lock(&c.writer).write_all(&header);
                c.break_with("disconnected");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_like_qemus() {
        let u = NbdUri::parse("nbd://127.0.0.1:10810/disk").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk");
        let u = NbdUri::parse("nbd://[::1]/a%20b").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "a b");
        let u = NbdUri::parse("nbd://host").unwrap();
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd+unix:///x?socket=/run/s.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/run/s.sock".into()));
        assert_eq!(u.export, "x");
        for (bad, says) in [
            ("nbd://h:0/x", "port \"0\""),
            ("nbd://h:99999/x", "port \"99999\""),
            ("nbd:///x", "no host"),
            ("nbd+unix:///x", "socket=PATH"),
            ("nbd+unix://h/x?socket=/s", "no host"),
            ("nbds://h/x", "TLS"),
            ("nbd://h/x?tls=on", "\"tls=on\""),
            ("nbd://[::1/x", "unclosed"),
            ("nbd://h/%zz", "percent"),
            ("http://h/x", "scheme \"http\""),
        ] {
            let e = NbdUri::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
        assert!(is_uri(Path::new("nbd://h/x")));
        assert!(is_uri(Path::new("nbd+unix:///x?socket=/s")));
        assert!(!is_uri(Path::new("/dev/nbd0")));
        assert!(!is_uri(Path::new("./nbd:/x")));
    }
}
