//! The link's frames: a fixed header (magic, version, type, sequence, payload
//! length, crc32c) and a typed payload.
//!
//! Header, 24 bytes, little-endian:
//!
//! | offset | size | field                                               |
//! |-------:|-----:|-----------------------------------------------------|
//! | 0      | 4    | magic `TDLK`                                        |
//! | 4      | 2    | version (1)                                         |
//! | 6      | 2    | type                                                |
//! | 8      | 8    | sequence: a request's number; an answer repeats it  |
//! | 16     | 4    | payload length (at most `MAX_PAYLOAD`)              |
//! | 20     | 4    | crc32c over bytes 0-19 and the payload              |
//!
//! A frame that is short, too long, of another magic or version, of an
//! unknown type, with a bad checksum or a payload that does not parse is an
//! error that names what was wrong; the reader closes the connection.

use std::io::{self, Read, Write};

/// `TDLK`: a tandem link frame.
pub const MAGIC: [u8; 4] = *b"TDLK";
pub const VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 24;
/// Largest payload: 1024 record pages of 2016 bytes and their numbers fit.
pub const MAX_PAYLOAD: u32 = 4 << 20;

/// Who is speaking, about which device, at which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub node: u64,
    /// The device's identity (`pair_identity`): both ends must agree.
    pub identity: u64,
    /// The owner's generation of the record: a holder refuses a lower one.
    pub generation: u64,
    /// The device's size and region size: both ends must agree.
    pub device_size: u64,
    pub region_size: u64,
}

/// One page of a record: its index and its bitmap words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub index: u64,
    pub words: Vec<u64>,
}

/// Every message of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a session: the owner to the holder.
    Hello(Hello),
    /// The holder accepts: its own node id, and the generation it now holds.
    Welcome {
        node: u64,
        generation: u64,
    },
    /// Make these pages of the owner's record durable, then `Done`.
    Pages(Vec<Page>),
    /// The request with this frame's sequence is durable (errno 0) or failed
    /// (a positive errno).
    Done {
        errno: i32,
    },
    /// Refused, with why (a stale generation, another device): the
    /// connection closes after it.
    Refused {
        reason: String,
    },
    /// Are you there? Answered by `Pong` with the same sequence.
    Ping,
    Pong,
    /// Send me the whole record you hold (answered by `Pages`, then `Done`).
    Fetch,
    /// Opens a session of status checks and copy grants (dual-active), not
    /// of record updates: answered by `Welcome` or `Refused`.
    Checks(Hello),
    /// Dual-active: is the region safe to serve? Answered by `Done` once the
    /// answering node has no write in flight to it and nothing of it cached.
    Check {
        region: u64,
    },
    /// Dual-active: may I copy the region? Answered by `Grant` or `Busy`.
    CopyBegin {
        region: u64,
    },
    /// Copy it: your write sequence of it now (quiet, cache written back).
    Grant {
        seq: u64,
    },
    /// I copy it myself: try later.
    Busy,
    /// The granted copy is over (`landed`: it reached the secondary).
    CopyEnd {
        region: u64,
        seq: u64,
        landed: bool,
    },
    /// Whether no write started on the region since the grant.
    Ended {
        unchanged: bool,
    },
    /// Dual-active: this node stopped cleanly (nothing of it in flight or
    /// cached): until its next hello there is nothing to ask it. Answered
    /// by `Done`.
    Bye,
}

const HELLO: u16 = 1;
const WELCOME: u16 = 2;
const PAGES: u16 = 3;
const DONE: u16 = 4;
const REFUSED: u16 = 5;
const PING: u16 = 6;
const PONG: u16 = 7;
const FETCH: u16 = 8;
const CHECKS: u16 = 9;
const CHECK: u16 = 10;
const COPY_BEGIN: u16 = 11;
const GRANT: u16 = 12;
const BUSY: u16 = 13;
const COPY_END: u16 = 14;
const ENDED: u16 = 15;
const BYE: u16 = 16;

impl Frame {
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).expect("every frame has a known type")
    }

    fn kind(&self) -> u16 {
        match self {
            Frame::Hello(_) => HELLO,
            Frame::Welcome { .. } => WELCOME,
            Frame::Pages(_) => PAGES,
            Frame::Done { .. } => DONE,
            Frame::Refused { .. } => REFUSED,
            Frame::Ping => PING,
            Frame::Pong => PONG,
            Frame::Fetch => FETCH,
            Frame::Checks(_) => CHECKS,
            Frame::Check { .. } => CHECK,
            Frame::CopyBegin { .. } => COPY_BEGIN,
            Frame::Grant { .. } => GRANT,
            Frame::Busy => BUSY,
            Frame::CopyEnd { .. } => COPY_END,
            Frame::Ended { .. } => ENDED,
            Frame::Bye => BYE,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let u64s = |p: &mut Vec<u8>, vals: &[u64]| {
            for v in vals {
                p.extend_from_slice(&v.to_le_bytes());
            }
        };
        match self {
            Frame::Hello(h) | Frame::Checks(h) => u64s(
                &mut p,
                &[
                    h.node,
                    h.identity,
                    h.generation,
                    h.device_size,
                    h.region_size,
                ],
            ),
            Frame::Welcome { node, generation } => u64s(&mut p, &[*node, *generation]),
            Frame::Pages(pages) => {
                let words = pages.first().map_or(0, |pg| pg.words.len());
                p.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                p.extend_from_slice(&(words as u32).to_le_bytes());
                for pg in pages {
                    debug_assert_eq!(pg.words.len(), words, "pages of one size");
                    u64s(&mut p, &[pg.index]);
                    u64s(&mut p, &pg.words);
                }
            }
            Frame::Done { errno } => p.extend_from_slice(&errno.to_le_bytes()),
            Frame::Refused { reason } => p.extend_from_slice(reason.as_bytes()),
            Frame::Check { region } | Frame::CopyBegin { region } => u64s(&mut p, &[*region]),
            Frame::Grant { seq } => u64s(&mut p, &[*seq]),
            Frame::CopyEnd {
                region,
                seq,
                landed,
            } => {
                u64s(&mut p, &[*region, *seq]);
                p.push(u8::from(*landed));
            }
            Frame::Ended { unchanged } => p.push(u8::from(*unchanged)),
            Frame::Ping | Frame::Pong | Frame::Fetch | Frame::Busy | Frame::Bye => {}
        }
        p
    }

    /// The frame's bytes, header included.
    pub fn encode(&self, seq: u64) -> Vec<u8> {
        let payload = self.payload();
        let mut b = Vec::with_capacity(HEADER_BYTES + payload.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.kind().to_le_bytes());
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b), &payload);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&payload);
        b
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("bad magic {0:02x?} (expected {MAGIC:02x?}): not a tandem link")]
    Magic([u8; 4]),
    #[error("link version {0} (this node speaks {VERSION})")]
    Version(u16),
    #[error("payload length {0} exceeds {MAX_PAYLOAD}")]
    TooLong(u32),
    #[error("checksum {got:#010x}, computed {want:#010x}: the frame is corrupt")]
    Checksum { got: u32, want: u32 },
    #[error("unknown frame type {0}")]
    Type(u16),
    #[error("{frame} frame: {why}")]
    Payload { frame: &'static str, why: String },
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, seq: u64, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode(seq))?;
    w.flush()
}

/// Reads one frame: its sequence and contents.
pub fn read_frame(r: &mut impl Read) -> Result<(u64, Frame), WireError> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h)?;
    let magic: [u8; 4] = h[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::Magic(magic));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = u16::from_le_bytes([h[6], h[7]]);
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong(len));
    }
    let got = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let want = crc32c::crc32c_append(crc32c::crc32c(&h[..20]), &payload);
    if got != want {
        return Err(WireError::Checksum { got, want });
    }
    Ok((seq, decode(kind, &payload)?))
}

/// Reads little-endian fields off a payload.
struct Fields<'a> {
    frame: &'static str,
    rest: &'a [u8],
}

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Payload {
                frame: self.frame,
                why: format!("{} bytes where {n} more were expected", self.rest.len()),
            });
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    /// A flag: one byte, 0 or 1.
    fn flag(&mut self, what: &str) -> Result<bool, WireError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::Payload {
                frame: self.frame,
                why: format!("{what} is {v}, not 0 or 1"),
            }),
        }
    }

    fn end(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::Payload {
                frame: self.frame,
                why: format!("{} bytes left over", self.rest.len()),
            })
        }
    }
}

/// The name of a frame type, `None` for a type this node does not know.
fn kind_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        HELLO => "hello",
        WELCOME => "welcome",
        PAGES => "pages",
        DONE => "done",
        REFUSED => "refused",
        PING => "ping",
        PONG => "pong",
        FETCH => "fetch",
        CHECKS => "checks",
        CHECK => "check",
        COPY_BEGIN => "copy-begin",
        GRANT => "grant",
        BUSY => "busy",
        COPY_END => "copy-end",
        ENDED => "ended",
        BYE => "bye",
        _ => return None,
    })
}

fn decode(kind: u16, payload: &[u8]) -> Result<Frame, WireError> {
    let name = kind_name(kind).ok_or(WireError::Type(kind))?;
    let mut f = Fields {
        frame: name,
        rest: payload,
    };
    let hello = |f: &mut Fields| -> Result<Hello, WireError> {
        Ok(Hello {
            node: f.u64()?,
            identity: f.u64()?,
            generation: f.u64()?,
            device_size: f.u64()?,
            region_size: f.u64()?,
        })
    };
    let frame = match kind {
        HELLO => Frame::Hello(hello(&mut f)?),
        CHECKS => Frame::Checks(hello(&mut f)?),
        CHECK => Frame::Check { region: f.u64()? },
        COPY_BEGIN => Frame::CopyBegin { region: f.u64()? },
        GRANT => Frame::Grant { seq: f.u64()? },
        BUSY => Frame::Busy,
        BYE => Frame::Bye,
        COPY_END => Frame::CopyEnd {
            region: f.u64()?,
            seq: f.u64()?,
            landed: f.flag("landed")?,
        },
        ENDED => Frame::Ended {
            unchanged: f.flag("unchanged")?,
        },
        WELCOME => Frame::Welcome {
            node: f.u64()?,
            generation: f.u64()?,
        },
        PAGES => {
            let count = f.u32()? as usize;
            let words = f.u32()? as usize;
            // Checked before allocating: the length bounds both.
            let need = count.checked_mul(8 * (words + 1));
            if need != Some(f.rest.len()) {
                return Err(WireError::Payload {
                    frame: name,
                    why: format!(
                        "{count} pages of {words} words do not fill {} bytes",
                        f.rest.len()
                    ),
                });
            }
            let mut pages = Vec::with_capacity(count);
            for _ in 0..count {
                let index = f.u64()?;
                let words = (0..words).map(|_| f.u64()).collect::<Result<_, _>>()?;
                pages.push(Page { index, words });
            }
            Frame::Pages(pages)
        }
        DONE => Frame::Done {
            errno: f.u32()? as i32,
        },
        REFUSED => {
            let bytes = f.take(f.rest.len())?.to_vec();
            let reason = String::from_utf8(bytes).map_err(|e| WireError::Payload {
                frame: name,
                why: format!("the reason is not UTF-8: {e}"),
            })?;
            Frame::Refused { reason }
        }
        PING => Frame::Ping,
        PONG => Frame::Pong,
        FETCH => Frame::Fetch,
        _ => unreachable!("every named type is decoded"),
    };
    f.end()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(node, identity, generation, device_size, region_size)| {
                    Frame::Hello(Hello {
                        node,
                        identity,
                        generation,
                        device_size,
                        region_size,
                    })
                }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(node, generation)| Frame::Welcome { node, generation }),
            (0usize..4, 0usize..6).prop_flat_map(|(n, w)| {
                proptest::collection::vec(
                    (any::<u64>(), proptest::collection::vec(any::<u64>(), w))
                        .prop_map(|(index, words)| Page { index, words }),
                    n,
                )
                .prop_map(Frame::Pages)
            }),
            any::<i32>().prop_map(|errno| Frame::Done { errno }),
            ".{0,40}".prop_map(|reason| Frame::Refused { reason }),
            Just(Frame::Ping),
            Just(Frame::Pong),
            Just(Frame::Fetch),
            (any::<u64>(), any::<u64>()).prop_map(|(node, identity)| Frame::Checks(Hello {
                node,
                identity,
                generation: 3,
                device_size: 1 << 30,
                region_size: 1 << 20,
            })),
            any::<u64>().prop_map(|region| Frame::Check { region }),
            any::<u64>().prop_map(|region| Frame::CopyBegin { region }),
            any::<u64>().prop_map(|seq| Frame::Grant { seq }),
            Just(Frame::Busy),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(region, seq, landed)| {
                Frame::CopyEnd {
                    region,
                    seq,
                    landed,
                }
            }),
            any::<bool>().prop_map(|unchanged| Frame::Ended { unchanged }),
            Just(Frame::Bye),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in frames(), seq in any::<u64>()) {
            let bytes = frame.encode(seq);
            let (s, back) = read_frame(&mut &bytes[..]).unwrap();
            prop_assert_eq!(s, seq);
            prop_assert_eq!(back, frame);
        }

        #[test]
        fn any_flipped_bit_is_refused(frame in frames(), seq in any::<u64>(), bit in any::<usize>()) {
            let mut bytes = frame.encode(seq);
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            // Never a different frame: an error (or, for a flipped length, a
            // short read), never a panic.
            prop_assert!(read_frame(&mut &bytes[..]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_frame(&mut &bytes[..]);
        }

        #[test]
        fn a_well_framed_but_bad_payload_is_named(kind in 1u16..17, payload in proptest::collection::vec(any::<u8>(), 0..60)) {
            // A valid header and checksum around an arbitrary payload.
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC);
            b.extend_from_slice(&VERSION.to_le_bytes());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&7u64.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&b), &payload);
            b.extend_from_slice(&crc.to_le_bytes());
            b.extend_from_slice(&payload);
            match read_frame(&mut &b[..]) {
                Ok((_, f)) => prop_assert_eq!(f.encode(7), b, "what parses re-encodes the same"),
                Err(WireError::Payload { frame, .. }) => prop_assert!(!frame.is_empty()),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    #[test]
    fn errors_name_the_bad_value() {
        let mut b = Frame::Ping.encode(1);
        b[4] = 9;
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        let mut b = Frame::Ping.encode(1);
        b[6] = 99;
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        // The type is checked after the checksum, which the change spoils.
        assert!(e.contains("checksum"), "{e}");
        let mut b = Frame::Ping.encode(1);
        b[0] = b'X';
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        assert!(e.contains("not a tandem link"), "{e}");
        // A known header around an unknown type, checksum and all.
        let mut b = Frame::Ping.encode(1);
        b[6..8].copy_from_slice(&99u16.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        assert!(e.contains("unknown frame type 99"), "{e}");
        let mut b = Frame::Ping.encode(1);
        b[16..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
        // A flag that is neither 0 nor 1.
        let mut b = Frame::Ended { unchanged: true }.encode(1);
        b[24] = 7;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..20]), &b[24..]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        let e = read_frame(&mut &b[..]).unwrap_err().to_string();
        assert!(e.contains("ended frame: unchanged is 7"), "{e}");
    }
}
