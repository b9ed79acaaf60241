//! The persistent region file: the record's durable image, on a regular file or
//! a small block device, written in place without ever truncating.
//!
//! Layout (integers little-endian; `P` = page count):
//!
//! | offset              | size       | contents                                   |
//! |---------------------|------------|--------------------------------------------|
//! | 0                   | 4 KiB      | header slot 0                              |
//! | 4096                | 4 KiB      | header slot 1                              |
//! | 8192                | `P`×4 KiB  | page slot area 0: slot 0 of page p at 8192 + p×4096 |
//! | 8192 + `P`×4096     | `P`×4 KiB  | page slot area 1: slot 1 of page p         |
//!
//! Header slot (4 KiB): magic `TANDEMRF` (8), format version u32, crc32c u32
//! (over the whole slot, this field excluded), generation, layout id, device
//! identity, device size, region size, region count, page count, regions per
//! page (u64 each), zeroes up to 4 KiB.
//!
//! Page slot (4 KiB): two identical 2 KiB *copies*. A copy: magic `TDPG` (4),
//! crc32c u32 (over the copy, this field excluded), layout id, sequence, page
//! index (u64 each), then 2016 bytes of bitmap: 252 u64 words, bit `i` of word
//! `w` is region `page × REGIONS_PER_PAGE + 64w + i`.
//!
//! Slot 1 holds odd sequences and slot 0 even ones. An update of a page writes
//! the slot that does not hold the newest copy, with the next sequence, so the
//! newest durable copy survives a torn update. On load the valid copy with the
//! highest sequence wins. The second copy within a slot makes the newest copy
//! survive a corrupted bit too: without it, one bad bit in the newest slot
//! would silently bring back the older slot, losing the last update's regions.
//! A torn update spoils at most the slot being written; one corrupted bit
//! spoils at most one copy. Either way a copy at least as new as the last
//! durable update remains. Two faults at once (both copies of a page's newest
//! slot damaged after it became durable) are beyond this: the page falls back
//! to its older slot.
//!
//! The header is rewritten only by `open` (to bump the generation, into the
//! slot not holding the newest header) and by `create`, which first blanks
//! both header slots durably, so an interrupted `create` reads back as corrupt
//! (or as the complete new record), never as a stale mix of layouts.

use std::fmt;
use std::io;

use bitvec::field::BitField;

use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::geometry::Geometry;

use super::{Image, RecordStore};

const SLOT_BYTES: usize = 4096;
const HEADER_BYTES: u64 = 2 * SLOT_BYTES as u64;
const HEADER_MAGIC: [u8; 8] = *b"TANDEMRF";
const FORMAT_VERSION: u32 = 1;

const COPY_BYTES: usize = SLOT_BYTES / 2;
const COPY_HEADER_BYTES: usize = 32;
const PAGE_MAGIC: [u8; 4] = *b"TDPG";
/// Bitmap words in one page of the file.
pub const WORDS_PER_PAGE: usize = (COPY_BYTES - COPY_HEADER_BYTES) / 8;

/// Regions one page of the file covers (one bit each, in a 2 KiB copy).
pub const REGIONS_PER_PAGE: u64 = WORDS_PER_PAGE as u64 * 64;

/// Largest number of page slots read or written in one call (1 MiB).
const MAX_RUN: usize = 256;

/// What opening an existing region file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The file was valid; these regions (sorted) were in the durable record.
    Loaded(Vec<u64>),
    /// The file could not be trusted; the reason, for the operator.
    Corrupt(String),
}

/// The record's durable store on a regular file or a small block device.
///
/// A `RegionFile` returned with [`LoadOutcome::Corrupt`] is inert: every
/// `write_pages` fails, so it cannot overwrite the evidence. Replace it with
/// [`RegionFile::create`].
pub struct RegionFile {
    dev: Dev,
    header: Header,
    /// Per page, the sequence of its newest durable copy (in slot `seq % 2`).
    seq: Vec<u64>,
    /// Set when the file was found corrupt: why, and no writes are allowed.
    corrupt: Option<String>,
    buf: Vec<u8>,
}

impl fmt::Debug for RegionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionFile")
            .field("dev", &self.dev.describe())
            .field("layout", &format_args!("{:#018x}", self.header.layout))
            .field("generation", &self.header.generation)
            .field("pages", &self.header.page_count)
            .field("corrupt", &self.corrupt)
            .finish()
    }
}

impl RegionFile {
    /// Bytes a region file for `geometry` occupies.
    pub fn file_size(geometry: &Geometry) -> u64 {
        HEADER_BYTES + 2 * page_count(geometry.regions()) * SLOT_BYTES as u64
    }

    /// Writes a fresh record over `dev`: every region recorded if `all_set`,
    /// none otherwise. Whatever `dev` held before is forgotten.
    pub fn create(dev: Dev, geometry: &Geometry, identity: u64, all_set: bool) -> Result<Self> {
        let needed = Self::file_size(geometry);
        if dev.size() < needed {
            return Err(Error::Config(format!(
                "record file {} has {} bytes; the record of {} regions needs {} bytes",
                dev.describe(),
                dev.size(),
                geometry.regions(),
                needed
            )));
        }
        let header = Header::new(geometry, identity, new_layout_id(), 0);
        let mut file = RegionFile {
            dev,
            header,
            seq: vec![1; header.page_count as usize],
            corrupt: None,
            buf: Vec::new(),
        };
        // 1. Blank the old headers durably: their pages are about to be overwritten.
        file.write(&vec![0; HEADER_BYTES as usize], 0, "blank the header of")?;
        file.sync()?;
        // 2. Every page, both slots with the same bits; slot s gets sequence s.
        for slot in 0..2u64 {
            let mut start = 0;
            while start < header.page_count {
                let n = (header.page_count - start).min(MAX_RUN as u64);
                let mut buf = std::mem::take(&mut file.buf);
                buf.resize(n as usize * SLOT_BYTES, 0);
                for (i, out) in buf.chunks_exact_mut(SLOT_BYTES).enumerate() {
                    let page = start + i as u64;
                    encode_slot(out, header.layout, page, slot, |w| {
                        if all_set {
                            live_mask(header.region_count, page, w)
                        } else {
                            0
                        }
                    });
                }
                let result = file.write(&buf, slot_offset(&header, start, slot), "write");
                file.buf = buf;
                result?;
                start += n;
            }
        }
        file.sync()?;
        // 3. The header in both slots commits the new layout.
        let mut both = header.encode();
        both.extend_from_within(..);
        file.write(&both, 0, "write the header of")?;
        file.sync()?;
        Ok(file)
    }

    /// Opens an existing record for the device pair `identity` over
    /// `geometry`, and bumps its generation.
    ///
    /// Any inconsistency (truncation, checksum, version, a geometry or identity
    /// mismatch, a page without a valid copy) is `LoadOutcome::Corrupt`, with an
    /// inert file; only failing I/O is an `Err`.
    pub fn open(dev: Dev, geometry: &Geometry, identity: u64) -> Result<(Self, LoadOutcome)> {
        let (header, slot) = match read_header(&dev, geometry, identity)? {
            Ok(found) => found,
            Err(reason) => return Ok(Self::inert(dev, geometry, identity, reason)),
        };
        let Pages { seq, regions } = match read_pages(&dev, &header)? {
            Ok(loaded) => loaded,
            Err(reason) => return Ok(Self::inert(dev, geometry, identity, reason)),
        };
        let header = Header {
            generation: header.generation + 1,
            ..header
        };
        let file = RegionFile {
            dev,
            header,
            seq,
            corrupt: None,
            buf: Vec::new(),
        };
        let other = 1 - slot;
        file.write(
            &header.encode(),
            other * SLOT_BYTES as u64,
            "write the header of",
        )?;
        file.sync()?;
        Ok((file, LoadOutcome::Loaded(regions)))
    }

    fn inert(dev: Dev, geometry: &Geometry, identity: u64, reason: String) -> (Self, LoadOutcome) {
        let file = RegionFile {
            dev,
            header: Header::new(geometry, identity, 0, 0),
            seq: Vec::new(),
            corrupt: Some(reason.clone()),
            buf: Vec::new(),
        };
        (file, LoadOutcome::Corrupt(reason))
    }

    /// The generation: 0 after `create`, one more at every `open`.
    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    /// The random id of this layout, stamped into every page.
    pub fn layout_id(&self) -> u64 {
        self.header.layout
    }

    fn write(&self, buf: &[u8], offset: u64, what: &str) -> Result<()> {
        self.dev
            .write_at(buf, offset, false)
            .map_err(|e| Error::io(format!("{what} record file {}", self.dev.describe()), e))
    }

    fn sync(&self) -> Result<()> {
        self.dev
            .sync()
            .map_err(|e| Error::io(format!("sync record file {}", self.dev.describe()), e))
    }

    /// The slot the next update of `page` goes to.
    fn next_slot(&self, page: u64) -> u64 {
        (self.seq[page as usize] + 1) % 2
    }
}

impl RecordStore for RegionFile {
    fn regions_per_page(&self) -> u64 {
        REGIONS_PER_PAGE
    }

    /// Writes each listed page to its stale slot, in runs of adjacent slots,
    /// then syncs once. Only a successful sync makes the new copies the newest:
    /// after a failure a retry rewrites the same slots, while the other slots
    /// still hold the last durable copies.
    fn write_pages(&mut self, image: &Image, pages: &[u64]) -> Result<()> {
        if let Some(reason) = &self.corrupt {
            return Err(Error::Corruption {
                path: self.dev.describe(),
                reason: reason.clone(),
            });
        }
        let mut pages = pages.to_vec();
        pages.sort_unstable();
        pages.dedup();
        let Some(&last) = pages.last() else {
            return Ok(());
        };
        if last >= self.header.page_count {
            return Err(Error::io(
                format!(
                    "write page {last} of record file {} with {} pages",
                    self.dev.describe(),
                    self.header.page_count
                ),
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let limit = (image.len() as u64).min(self.header.region_count);
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        let mut i = 0;
        while i < pages.len() && result.is_ok() {
            let slot = self.next_slot(pages[i]);
            let mut j = i + 1;
            while j < pages.len()
                && j - i < MAX_RUN
                && pages[j] == pages[j - 1] + 1
                && self.next_slot(pages[j]) == slot
            {
                j += 1;
            }
            buf.resize((j - i) * SLOT_BYTES, 0);
            for (out, &page) in buf.chunks_exact_mut(SLOT_BYTES).zip(&pages[i..j]) {
                let seq = self.seq[page as usize] + 1;
                encode_slot(out, self.header.layout, page, seq, |w| {
                    image_word(image, limit, page, w)
                });
            }
            result = self.write(&buf, slot_offset(&self.header, pages[i], slot), "write");
            i = j;
        }
        self.buf = buf;
        result?;
        self.sync()?;
        for &page in &pages {
            self.seq[page as usize] += 1;
        }
        Ok(())
    }
}

fn page_count(regions: u64) -> u64 {
    regions.div_ceil(REGIONS_PER_PAGE)
}

fn new_layout_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

fn slot_offset(header: &Header, page: u64, slot: u64) -> u64 {
    HEADER_BYTES + (slot * header.page_count + page) * SLOT_BYTES as u64
}

/// The bits of word `w` of `page` that stand for regions below `regions`.
fn live_mask(regions: u64, page: u64, w: usize) -> u64 {
    let first = page * REGIONS_PER_PAGE + w as u64 * 64;
    match regions.saturating_sub(first) {
        0 => 0,
        n if n >= 64 => u64::MAX,
        n => (1 << n) - 1,
    }
}

/// Word `w` of `page` taken from `image`, regions at or past `limit` clear.
/// Page `page` of `image` as the file stores it: `WORDS_PER_PAGE` words, bit
/// `i` of word `w` for region `page × REGIONS_PER_PAGE + 64w + i`.
pub fn page_words(image: &Image, page: u64) -> Vec<u64> {
    (0..WORDS_PER_PAGE)
        .map(|w| image_word(image, image.len() as u64, page, w))
        .collect()
}

/// Sets page `page` of `image` from its words (as `page_words` gives them);
/// bits past the image's end are ignored.
pub fn set_page_words(image: &mut Image, page: u64, words: &[u64]) {
    let len = image.len() as u64;
    for (w, &word) in words.iter().enumerate().take(WORDS_PER_PAGE) {
        let first = page * REGIONS_PER_PAGE + w as u64 * 64;
        if first >= len {
            break;
        }
        let end = (first + 64).min(len);
        let bits = (end - first) as u32;
        let word = if bits == 64 {
            word
        } else {
            word & ((1 << bits) - 1)
        };
        match whole_word(image, first, end) {
            Some(i) => image.as_raw_mut_slice()[i] = word,
            None => image[first as usize..end as usize].store_le::<u64>(word),
        }
    }
}

fn image_word(image: &Image, limit: u64, page: u64, w: usize) -> u64 {
    let first = page * REGIONS_PER_PAGE + w as u64 * 64;
    if first >= limit {
        return 0;
    }
    let end = (first + 64).min(limit);
    match whole_word(image, first, end) {
        Some(i) => image.as_raw_slice()[i],
        None => image[first as usize..end as usize].load_le::<u64>(),
    }
}

/// The index in the image's storage of the word holding bits `first..end`,
/// when that is one whole storage word (bit-wise loads and stores cost tens
/// of times more, and a record update touches a page of them on each side
/// of the link).
fn whole_word(image: &Image, first: u64, end: u64) -> Option<usize> {
    (end - first == 64 && first.is_multiple_of(64) && image.as_bitptr().bit().into_inner() == 0)
        .then_some((first / 64) as usize)
}

fn get32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn get64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// crc32c of `b` with the four bytes at `at` left out.
fn crc_without(b: &[u8], at: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..at]), &b[at + 4..])
}

/// Fills a 4 KiB slot with two copies of `page`, word `w` from `word(w)`.
fn encode_slot(out: &mut [u8], layout: u64, page: u64, seq: u64, word: impl Fn(usize) -> u64) {
    let copy = &mut out[..COPY_BYTES];
    copy[..4].copy_from_slice(&PAGE_MAGIC);
    put64(copy, 8, layout);
    put64(copy, 16, seq);
    put64(copy, 24, page);
    for (w, bytes) in copy[COPY_HEADER_BYTES..].chunks_exact_mut(8).enumerate() {
        bytes.copy_from_slice(&word(w).to_le_bytes());
    }
    let crc = crc_without(copy, 4);
    put32(copy, 4, crc);
    out.copy_within(..COPY_BYTES, COPY_BYTES);
}

/// Why a copy of a page was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyFault {
    Blank,
    BadMagic,
    Checksum,
    OtherLayout,
    OtherPage(u64),
    WrongSlot(u64),
}

impl fmt::Display for CopyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyFault::Blank => write!(f, "blank"),
            CopyFault::BadMagic => write!(f, "bad magic"),
            CopyFault::Checksum => write!(f, "checksum mismatch"),
            CopyFault::OtherLayout => write!(f, "left from an older layout"),
            CopyFault::OtherPage(p) => write!(f, "holds page {p}"),
            CopyFault::WrongSlot(s) => write!(f, "sequence {s} in the wrong slot"),
        }
    }
}

/// The sequence of a valid copy of `page` in `slot`.
fn check_copy(copy: &[u8], layout: u64, page: u64, slot: u64) -> Result<u64, CopyFault> {
    if copy[..4] != PAGE_MAGIC {
        return Err(if copy.iter().all(|&b| b == 0) {
            CopyFault::Blank
        } else {
            CopyFault::BadMagic
        });
    }
    if get32(copy, 4) != crc_without(copy, 4) {
        return Err(CopyFault::Checksum);
    }
    if get64(copy, 8) != layout {
        return Err(CopyFault::OtherLayout);
    }
    let held = get64(copy, 24);
    if held != page {
        return Err(CopyFault::OtherPage(held));
    }
    let seq = get64(copy, 16);
    if seq % 2 != slot {
        return Err(CopyFault::WrongSlot(seq));
    }
    Ok(seq)
}

/// What a check of the file found: `Ok`, or why the file cannot be trusted.
type Verdict<T> = std::result::Result<T, String>;

/// The pages as loaded.
struct Pages {
    /// Per page, the sequence of its newest valid copy.
    seq: Vec<u64>,
    /// The recorded regions, sorted.
    regions: Vec<u64>,
}

/// Reads every page, taking per page the newest valid copy.
fn read_pages(dev: &Dev, header: &Header) -> Result<Verdict<Pages>> {
    let mut seqs = Vec::with_capacity(header.page_count as usize);
    let mut regions = Vec::new();
    let mut bufs = [Vec::new(), Vec::new()];
    let mut start = 0;
    while start < header.page_count {
        let n = (header.page_count - start).min(MAX_RUN as u64) as usize;
        for (slot, buf) in bufs.iter_mut().enumerate() {
            buf.resize(n * SLOT_BYTES, 0);
            dev.read_at(buf, slot_offset(header, start, slot as u64))
                .map_err(|e| Error::io(format!("read record file {}", dev.describe()), e))?;
        }
        for i in 0..n {
            let page = start + i as u64;
            let mut newest: Option<(u64, &[u8])> = None;
            let mut faults: Vec<CopyFault> = Vec::new();
            for (slot, buf) in bufs.iter().enumerate() {
                for copy in buf[i * SLOT_BYTES..][..SLOT_BYTES].chunks_exact(COPY_BYTES) {
                    match (check_copy(copy, header.layout, page, slot as u64), newest) {
                        (Ok(seq), Some((best, _))) if seq <= best => {}
                        (Ok(seq), _) => newest = Some((seq, copy)),
                        (Err(fault), _) if !faults.contains(&fault) => faults.push(fault),
                        (Err(_), _) => {}
                    }
                }
            }
            let Some((seq, copy)) = newest else {
                let first = page * REGIONS_PER_PAGE;
                let end = (first + REGIONS_PER_PAGE).min(header.region_count);
                let faults: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
                return Ok(Err(format!(
                    "page {page} (regions {first}..{end}) has no valid copy ({})",
                    faults.join(", ")
                )));
            };
            seqs.push(seq);
            for (w, bytes) in copy[COPY_HEADER_BYTES..].chunks_exact(8).enumerate() {
                let mut word = get64(bytes, 0);
                let first = page * REGIONS_PER_PAGE + w as u64 * 64;
                if word & !live_mask(header.region_count, page, w) != 0 {
                    return Ok(Err(format!(
                        "page {page} records regions past the last one ({})",
                        header.region_count - 1
                    )));
                }
                while word != 0 {
                    regions.push(first + word.trailing_zeros() as u64);
                    word &= word - 1;
                }
            }
        }
        start += n as u64;
    }
    Ok(Ok(Pages { seq: seqs, regions }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    generation: u64,
    layout: u64,
    identity: u64,
    device_size: u64,
    region_size: u64,
    region_count: u64,
    page_count: u64,
}

/// Why a header slot was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotFault {
    /// The file ends before the slot does.
    Missing,
    Blank,
    BadMagic,
    Version(u32),
    Checksum,
    Layout(String),
}

impl fmt::Display for SlotFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotFault::Missing => write!(f, "missing"),
            SlotFault::Blank => write!(f, "blank"),
            SlotFault::BadMagic => write!(f, "bad magic"),
            SlotFault::Version(v) => write!(
                f,
                "unknown format version {v} (this build reads version {FORMAT_VERSION})"
            ),
            SlotFault::Checksum => write!(f, "checksum mismatch"),
            SlotFault::Layout(why) => write!(f, "inconsistent layout ({why})"),
        }
    }
}

impl Header {
    fn new(geometry: &Geometry, identity: u64, layout: u64, generation: u64) -> Self {
        Header {
            generation,
            layout,
            identity,
            device_size: geometry.device_size(),
            region_size: geometry.region_size(),
            region_count: geometry.regions(),
            page_count: page_count(geometry.regions()),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0; SLOT_BYTES];
        b[..8].copy_from_slice(&HEADER_MAGIC);
        put32(&mut b, 8, FORMAT_VERSION);
        put64(&mut b, 16, self.generation);
        put64(&mut b, 24, self.layout);
        put64(&mut b, 32, self.identity);
        put64(&mut b, 40, self.device_size);
        put64(&mut b, 48, self.region_size);
        put64(&mut b, 56, self.region_count);
        put64(&mut b, 64, self.page_count);
        put64(&mut b, 72, REGIONS_PER_PAGE);
        let crc = crc_without(&b, 12);
        put32(&mut b, 12, crc);
        b
    }

    fn decode(b: &[u8]) -> Result<Header, SlotFault> {
        if b[..8] != HEADER_MAGIC {
            return Err(if b.iter().all(|&x| x == 0) {
                SlotFault::Blank
            } else {
                SlotFault::BadMagic
            });
        }
        let version = get32(b, 8);
        if version != FORMAT_VERSION {
            return Err(SlotFault::Version(version));
        }
        if get32(b, 12) != crc_without(b, 12) {
            return Err(SlotFault::Checksum);
        }
        let h = Header {
            generation: get64(b, 16),
            layout: get64(b, 24),
            identity: get64(b, 32),
            device_size: get64(b, 40),
            region_size: get64(b, 48),
            region_count: get64(b, 56),
            page_count: get64(b, 64),
        };
        let per_page = get64(b, 72);
        let why = if per_page != REGIONS_PER_PAGE {
            format!("{per_page} regions per page, this build uses {REGIONS_PER_PAGE}")
        } else if !h.region_size.is_power_of_two() {
            format!("region size {} is not a power of two", h.region_size)
        } else if h.region_count != h.device_size.div_ceil(h.region_size) {
            format!(
                "{} regions of {} bytes for {} bytes",
                h.region_count, h.region_size, h.device_size
            )
        } else if h.page_count != page_count(h.region_count) {
            format!("{} pages for {} regions", h.page_count, h.region_count)
        } else {
            return Ok(h);
        };
        Err(SlotFault::Layout(why))
    }
}

/// Finds the newest valid header, checks it against `geometry`, `identity`
/// and the file's size. Returns it with its slot, or why it cannot be used.
fn read_header(dev: &Dev, geometry: &Geometry, identity: u64) -> Result<Verdict<(Header, u64)>> {
    let size = dev.size();
    let mut buf = vec![0; SLOT_BYTES];
    let mut found: Option<(Header, u64)> = None;
    let mut faults = Vec::new();
    for slot in 0..2u64 {
        let offset = slot * SLOT_BYTES as u64;
        if size < offset + SLOT_BYTES as u64 {
            faults.push(SlotFault::Missing);
            continue;
        }
        dev.read_at(&mut buf, offset)
            .map_err(|e| Error::io(format!("read record file {}", dev.describe()), e))?;
        match (Header::decode(&buf), found) {
            (Ok(h), Some((best, _))) if h.generation <= best.generation => {}
            (Ok(h), _) => found = Some((h, slot)),
            (Err(fault), _) => faults.push(fault),
        }
    }
    let Some((h, slot)) = found else {
        use SlotFault::*;
        return Ok(Err(match (&faults[0], &faults[1]) {
            (Missing, Missing) => format!(
                "record file is {size} bytes, too short to hold a header ({SLOT_BYTES} bytes)"
            ),
            (Blank | Missing, Blank | Missing) => {
                "record file has no header: it is blank (never created, or its creation \
                 was interrupted)"
                    .to_string()
            }
            (BadMagic, BadMagic) => {
                "not a tandem record file (bad magic in both header slots)".to_string()
            }
            (Checksum, Checksum) => "header checksum mismatch in both slots".to_string(),
            (a, b) if a == b => format!("both header slots: {a}"),
            (a, b) => format!("no valid header (slot 0: {a}; slot 1: {b})"),
        }));
    };
    let mut why = Vec::new();
    if h.device_size != geometry.device_size() {
        why.push(format!(
            "record is for a device of {} bytes, primary has {}",
            h.device_size,
            geometry.device_size()
        ));
    }
    if h.region_size != geometry.region_size() {
        why.push(format!(
            "record uses regions of {} bytes, the configured region size is {}",
            h.region_size,
            geometry.region_size()
        ));
    }
    if h.identity != identity {
        why.push(format!(
            "record belongs to another device pair (identity {:#018x}, this pair is {:#018x})",
            h.identity, identity
        ));
    }
    if !why.is_empty() {
        return Ok(Err(why.join("; ")));
    }
    let needed = RegionFile::file_size(geometry);
    if size < needed {
        return Ok(Err(format!(
            "record file is truncated: {size} bytes, its layout needs {needed}"
        )));
    }
    Ok(Ok((h, slot)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use bitvec::vec::BitVec;

    use super::*;
    use crate::dev::{BlockDev, Faults, MemDev};

    const ID: u64 = 0x7a4d_e11a_0000_0001;

    /// One page of 1024 regions: a 16 KiB file.
    fn small() -> Geometry {
        Geometry::new(64 << 20, 64 << 10).unwrap()
    }

    /// Three pages, the last one partial, and a partial last region: 32 KiB.
    fn three_pages() -> Geometry {
        Geometry::new((2 * REGIONS_PER_PAGE + 500) * (64 << 10) + 4096, 64 << 10).unwrap()
    }

    proptest::proptest! {
        /// Page words read and set word-wise agree with bit-wise loads and
        /// stores, for images of any length and for an image whose bits do
        /// not start a storage word.
        #[test]
        fn page_words_agree_with_bitwise(
            len in 1usize..(2 * REGIONS_PER_PAGE as usize + 300),
            seed: u64,
            offset in 0usize..3,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let image: Image = (0..len).map(|_| rng.gen_bool(0.3)).collect();
            // A copy that starts `offset` bits into its first word.
            let shifted: Image = BitVec::from_bitslice(&{
                let mut b: Image = BitVec::repeat(false, offset);
                b.extend_from_bitslice(&image);
                b
            }[offset..]);
            let pages = (len as u64).div_ceil(REGIONS_PER_PAGE);
            for page in 0..pages {
                let want: Vec<u64> = (0..WORDS_PER_PAGE)
                    .map(|w| {
                        let first = (page * REGIONS_PER_PAGE) as usize + w * 64;
                        if first >= len {
                            return 0;
                        }
                        image[first..(first + 64).min(len)].load_le::<u64>()
                    })
                    .collect();
                proptest::prop_assert_eq!(&page_words(&image, page), &want);
                proptest::prop_assert_eq!(&page_words(&shifted, page), &want);
                let mut back = Image::repeat(false, len);
                set_page_words(&mut back, page, &want);
                let mut back_shifted = shifted.clone();
                back_shifted.fill(false);
                set_page_words(&mut back_shifted, page, &want);
                let start = (page * REGIONS_PER_PAGE) as usize;
                let end = (start + REGIONS_PER_PAGE as usize).min(len);
                proptest::prop_assert_eq!(&back[start..end], &image[start..end]);
                proptest::prop_assert_eq!(&back_shifted[start..end], &image[start..end]);
            }
        }
    }

    fn mem(size: u64) -> Arc<MemDev> {
        Arc::new(MemDev::new("record", size))
    }

    /// A device whose durable contents are `bytes`.
    fn device_with(bytes: &[u8]) -> Arc<MemDev> {
        let d = mem(bytes.len() as u64);
        if !bytes.is_empty() {
            d.write_at(bytes, 0, false).unwrap();
            d.sync().unwrap();
        }
        d
    }

    fn image(g: &Geometry, regions: &BTreeSet<u64>) -> Image {
        let mut image: Image = BitVec::repeat(false, g.regions() as usize);
        for &r in regions {
            image.set(r as usize, true);
        }
        image
    }

    fn pages_of(regions: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let pages: BTreeSet<u64> = regions.into_iter().map(|r| r / REGIONS_PER_PAGE).collect();
        pages.into_iter().collect()
    }

    fn outcome(d: &Arc<MemDev>, g: &Geometry, identity: u64) -> LoadOutcome {
        RegionFile::open(d.clone(), g, identity).unwrap().1
    }

    fn load(d: &Arc<MemDev>, g: &Geometry) -> (RegionFile, BTreeSet<u64>) {
        match RegionFile::open(d.clone(), g, ID).unwrap() {
            (f, LoadOutcome::Loaded(r)) => {
                assert!(r.windows(2).all(|w| w[0] < w[1]), "sorted");
                (f, r.into_iter().collect())
            }
            (_, LoadOutcome::Corrupt(why)) => panic!("unexpectedly corrupt: {why}"),
        }
    }

    fn set(regions: &[u64]) -> BTreeSet<u64> {
        regions.iter().copied().collect()
    }

    /// Moves `file` from `from` to `to` with one update of the pages that differ.
    fn update(file: &mut RegionFile, g: &Geometry, from: &BTreeSet<u64>, to: &BTreeSet<u64>) {
        let pages = pages_of(from.symmetric_difference(to).copied());
        file.write_pages(&image(g, to), &pages).unwrap();
    }

    /// A file over `three_pages()` after several updates, so that the pages'
    /// newest copies sit in different slots. Returns its regions.
    fn used_file(d: &Arc<MemDev>) -> BTreeSet<u64> {
        let g = three_pages();
        let mut f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        let last = g.regions() - 1;
        let steps = [
            set(&[0, 7, REGIONS_PER_PAGE + 1, last]),
            set(&[
                0,
                7,
                63,
                64,
                REGIONS_PER_PAGE + 1,
                2 * REGIONS_PER_PAGE,
                last,
            ]),
            set(&[7, 63, 64, 2 * REGIONS_PER_PAGE, last]),
            set(&[
                7,
                63,
                64,
                REGIONS_PER_PAGE - 1,
                REGIONS_PER_PAGE + 2,
                2 * REGIONS_PER_PAGE,
                last,
            ]),
        ];
        let mut now = BTreeSet::new();
        for s in &steps {
            update(&mut f, &g, &now, s);
            now = s.clone();
        }
        now
    }

    #[test]
    fn layout_constants_agree() {
        assert_eq!(REGIONS_PER_PAGE, 16128);
        assert_eq!(COPY_HEADER_BYTES + WORDS_PER_PAGE * 8, COPY_BYTES);
        assert_eq!(RegionFile::file_size(&small()), 16 << 10);
        assert_eq!(RegionFile::file_size(&three_pages()), 32 << 10);
    }

    #[test]
    fn round_trip_and_generation_bumps() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let mut f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        assert_eq!(f.generation(), 0);
        let last = g.regions() - 1;
        let want = set(&[0, 5, 63, 64, REGIONS_PER_PAGE - 1, REGIONS_PER_PAGE, last]);
        update(&mut f, &g, &BTreeSet::new(), &want);
        drop(f);
        for generation in 1..4 {
            let (f, got) = load(&d, &g);
            assert_eq!(got, want);
            assert_eq!(f.generation(), generation);
        }
        let (mut f, _) = load(&d, &g);
        let fewer = set(&[5, REGIONS_PER_PAGE]);
        update(&mut f, &g, &want, &fewer);
        let layout = f.layout_id();
        drop(f);
        let (f, got) = load(&d, &g);
        assert_eq!(got, fewer);
        assert_eq!(f.layout_id(), layout);
        assert_eq!(f.generation(), 5);
    }

    #[test]
    fn create_all_set_records_every_region() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let f = RegionFile::create(d.clone(), &g, ID, true).unwrap();
        drop(f);
        let (_, got) = load(&d, &g);
        assert_eq!(got, (0..g.regions()).collect());
    }

    #[test]
    fn an_update_costs_only_its_pages_and_one_sync() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let mut f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        let before = d.contents();
        let ops = d.op_counts();
        // Pages 0 and 1 go to the same slot area next to each other: one write.
        let s = set(&[1, REGIONS_PER_PAGE + 1]);
        f.write_pages(&image(&g, &s), &[1, 0, 1]).unwrap();
        let after = d.op_counts();
        assert_eq!((after.0 - ops.0, after.1 - ops.1), (1, 1));
        let page2 = |b: &[u8]| {
            let h = f.header;
            (0..2)
                .flat_map(|s| {
                    let o = slot_offset(&h, 2, s) as usize;
                    b[o..o + SLOT_BYTES].to_vec()
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(page2(&before), page2(&d.contents()), "page 2 untouched");
        assert_eq!(
            &before[..HEADER_BYTES as usize],
            &d.contents()[..HEADER_BYTES as usize]
        );
        // Now pages 0 and 2 (not adjacent): two writes, one sync.
        let ops = d.op_counts();
        f.write_pages(&image(&g, &s), &[0, 2]).unwrap();
        let after = d.op_counts();
        assert_eq!((after.0 - ops.0, after.1 - ops.1), (2, 1));
        // Nothing to write: no I/O at all.
        f.write_pages(&image(&g, &s), &[]).unwrap();
        assert_eq!(d.op_counts(), after);
        assert!(
            f.write_pages(&image(&g, &s), &[3]).is_err(),
            "page out of range"
        );
    }

    #[test]
    fn image_bits_past_the_region_count_are_not_written() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let mut f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        let mut longer: Image = BitVec::repeat(true, 3 * REGIONS_PER_PAGE as usize);
        longer.set(3, false);
        f.write_pages(&longer, &[0, 1, 2]).unwrap();
        drop(f);
        let (_, got) = load(&d, &g);
        let want: BTreeSet<u64> = (0..g.regions()).filter(|&r| r != 3).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let g = three_pages();
        let full = RegionFile::file_size(&g);
        let d = mem(full);
        let regions = used_file(&d);
        let bytes = d.durable_contents();
        for len in 0..full as usize {
            match outcome(&device_with(&bytes[..len]), &g, ID) {
                LoadOutcome::Corrupt(_) => {}
                LoadOutcome::Loaded(r) => panic!("file cut to {len} bytes loaded {r:?}"),
            }
        }
        let mut longer = bytes.clone();
        longer.resize(full as usize + 12345, 0xa5);
        let (_, got) = load(&device_with(&longer), &g);
        assert_eq!(got, regions, "a larger file is fine");
        let LoadOutcome::Corrupt(why) = outcome(&device_with(&bytes[..9000]), &g, ID) else {
            unreachable!()
        };
        assert!(why.contains("truncated") && why.contains("9000"), "{why}");
        let LoadOutcome::Corrupt(why) = outcome(&device_with(&bytes[..100]), &g, ID) else {
            unreachable!()
        };
        assert!(why.contains("too short"), "{why}");
    }

    /// One flipped bit anywhere: the newest copy of every page and a header
    /// survive, so the file loads exactly (stronger than "contains the
    /// durable set", which is what safety needs).
    #[test]
    fn every_single_bit_flip_loads_the_durable_set() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let regions = used_file(&d);
        let mut bytes = d.durable_contents();
        // Both slots of every page hold valid copies, with different bits.
        let (f, _) = load(&d, &g);
        for page in 0..3 {
            let copies: Vec<&[u8]> = (0..2)
                .map(|s| {
                    let o = slot_offset(&f.header, page, s) as usize;
                    &bytes[o..o + COPY_BYTES]
                })
                .collect();
            for (s, c) in copies.iter().enumerate() {
                assert!(check_copy(c, f.layout_id(), page, s as u64).is_ok());
            }
            assert_ne!(copies[0][32..], copies[1][32..], "page {page} slots differ");
        }
        for pos in 0..bytes.len() {
            let bit = 1 << (pos % 8);
            bytes[pos] ^= bit;
            match outcome(&device_with(&bytes), &g, ID) {
                LoadOutcome::Loaded(r) => {
                    assert_eq!(
                        r.into_iter().collect::<BTreeSet<_>>(),
                        regions,
                        "flip at {pos}"
                    )
                }
                LoadOutcome::Corrupt(why) => panic!("flip at {pos}: {why}"),
            }
            bytes[pos] ^= bit;
        }
    }

    #[test]
    fn a_page_without_a_valid_copy_is_corrupt() {
        let g = small();
        let d = mem(RegionFile::file_size(&g));
        let mut f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        update(&mut f, &g, &BTreeSet::new(), &set(&[1]));
        let h = f.header;
        drop(f);
        let mut bytes = d.durable_contents();
        // Every copy of the only page damaged: corrupt.
        for s in 0..2 {
            for c in 0..2 {
                bytes[slot_offset(&h, 0, s) as usize + c * COPY_BYTES + 40] ^= 1;
            }
        }
        let LoadOutcome::Corrupt(why) = outcome(&device_with(&bytes), &g, ID) else {
            panic!("loaded a page without a valid copy")
        };
        assert!(why.contains("page 0") && why.contains("checksum"), "{why}");
    }

    /// The regions of page `p` in `s`.
    fn page_part(s: &BTreeSet<u64>, p: u64) -> BTreeSet<u64> {
        s.range(p * REGIONS_PER_PAGE..(p + 1) * REGIONS_PER_PAGE)
            .copied()
            .collect()
    }

    #[test]
    fn torn_updates_keep_every_durable_region() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let before = used_file(&d);
        let base = d.durable_contents();
        let last = g.regions() - 1;
        // Adds and removes in all three pages; the pages' stale slots differ,
        // so the update is three writes and a sync.
        let after: BTreeSet<u64> = set(&[
            7,
            64,
            100,
            REGIONS_PER_PAGE - 1,
            REGIONS_PER_PAGE + 9,
            2 * REGIONS_PER_PAGE + 1,
            last,
        ]);
        let pages = vec![0, 1, 2];
        let probe = device_with(&base);
        let (mut f, _) = load(&probe, &g);
        let ops = probe.op_counts();
        f.write_pages(&image(&g, &after), &pages).unwrap();
        let (w, s) = probe.op_counts();
        let update_ops = w - ops.0 + s - ops.1;
        assert_eq!(update_ops, 4, "three writes and a sync");
        type Keep = (&'static str, fn(usize) -> bool);
        let keeps: [Keep; 5] = [
            ("none", |_| false),
            ("all", |_| true),
            ("even", |i| i % 2 == 0),
            ("odd", |i| i % 2 == 1),
            ("first", |i| i == 0),
        ];
        let check = |d: &Arc<MemDev>, what: &str, done: bool| {
            let (_, got) = load(d, &g);
            for p in 0..3 {
                let (old, new, got) = (
                    page_part(&before, p),
                    page_part(&after, p),
                    page_part(&got, p),
                );
                assert!(
                    got == new || (!done && got == old),
                    "{what}: page {p} loaded {got:?}, before {old:?}, after {new:?}"
                );
            }
        };
        for k in 0..=update_ops {
            for torn in [0, 1, 31, 511, 2048, 2049, 4095, 4096, 1 << 20] {
                for (name, keep) in keeps {
                    let what = format!("fail after {k} ops, {torn} bytes torn, keep {name}");
                    let d = device_with(&base);
                    let (mut f, _) = load(&d, &g);
                    d.set_faults(Faults {
                        fail_after: Some(k),
                        torn_bytes: Some(torn),
                        fail_reads: false,
                        errno: None,
                    });
                    let result = f.write_pages(&image(&g, &after), &pages);
                    assert_eq!(result.is_ok(), k == update_ops, "{what}");
                    d.crash(keep);
                    check(&d, &what, result.is_ok());

                    // Restart without power loss: whatever landed is read.
                    let d = device_with(&base);
                    let (mut f, _) = load(&d, &g);
                    d.set_faults(Faults {
                        fail_after: Some(k),
                        torn_bytes: Some(torn),
                        fail_reads: false,
                        errno: None,
                    });
                    let result = f.write_pages(&image(&g, &after), &pages);
                    d.set_faults(Faults::default());
                    check(&d, &format!("{what}, restart"), result.is_ok());

                    // A retry after the failure rewrites the same slots and,
                    // once synced, is what a crash leaves.
                    let d = device_with(&base);
                    let (mut f, _) = load(&d, &g);
                    d.set_faults(Faults {
                        fail_after: Some(k),
                        torn_bytes: Some(torn),
                        fail_reads: false,
                        errno: None,
                    });
                    let _ = f.write_pages(&image(&g, &after), &pages);
                    d.set_faults(Faults::default());
                    f.write_pages(&image(&g, &after), &pages).unwrap();
                    d.crash(keep);
                    check(&d, &format!("{what}, retried"), true);

                    // A retry that fails as well still tears only the stale
                    // slots: the durable copies are never the target.
                    let d = device_with(&base);
                    let (mut f, _) = load(&d, &g);
                    d.set_faults(Faults {
                        fail_after: Some(k),
                        torn_bytes: Some(torn),
                        fail_reads: false,
                        errno: None,
                    });
                    let first = f.write_pages(&image(&g, &after), &pages);
                    d.set_faults(Faults {
                        fail_after: Some(0),
                        torn_bytes: Some(1),
                        fail_reads: false,
                        errno: None,
                    });
                    assert!(f.write_pages(&image(&g, &after), &pages).is_err());
                    d.crash(keep);
                    check(&d, &format!("{what}, retry failed"), first.is_ok());
                }
            }
        }
    }

    /// Per page, the slot holding its newest valid copy in `bytes`.
    fn newest_slots(bytes: &[u8], header: &Header) -> Vec<u64> {
        (0..header.page_count)
            .map(|page| {
                let mut best: Option<(u64, u64)> = None;
                for slot in 0..2 {
                    let o = slot_offset(header, page, slot) as usize;
                    for copy in bytes[o..o + SLOT_BYTES].chunks_exact(COPY_BYTES) {
                        match (check_copy(copy, header.layout, page, slot), best) {
                            (Ok(seq), Some((s, _))) if seq <= s => {}
                            (Ok(seq), _) => best = Some((seq, slot)),
                            (Err(_), _) => {}
                        }
                    }
                }
                best.expect("a valid copy").1
            })
            .collect()
    }

    /// Whatever tear a device makes (any subset of sectors), an update can only
    /// damage the slots it writes: so it must never write the slot holding a
    /// page's newest durable copy, also when retrying after failures.
    #[test]
    fn updates_never_write_the_newest_durable_slot() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        used_file(&d);
        let (mut f, mut now) = load(&d, &g);
        let header = f.header;
        let last = g.regions() - 1;
        for round in 0..40u64 {
            let mut next = now.clone();
            for r in [round % 97, REGIONS_PER_PAGE + round % 5, last - round % 3] {
                if !next.remove(&r) {
                    next.insert(r);
                }
            }
            let pages = pages_of(now.symmetric_difference(&next).copied());
            let durable = d.durable_contents();
            let protected = newest_slots(&durable, &header);
            // Fail at the sync (every write landed), at a write, or not at all.
            let fail_after = match round % 4 {
                0 | 1 => Some(pages.len() as u64),
                2 => Some(round % 2),
                _ => None,
            };
            d.set_faults(Faults {
                fail_after,
                torn_bytes: Some(4096),
                fail_reads: false,
                errno: None,
            });
            let ok = f.write_pages(&image(&g, &next), &pages).is_ok();
            d.set_faults(Faults::default());
            let current = d.contents();
            for (page, &slot) in protected.iter().enumerate() {
                let o = slot_offset(&header, page as u64, slot) as usize;
                assert_eq!(
                    durable[o..o + SLOT_BYTES],
                    current[o..o + SLOT_BYTES],
                    "round {round}: page {page}'s durable slot {slot} was written"
                );
            }
            if ok {
                now = next;
            }
        }
        drop(f);
        d.crash(|_| false);
        let (_, got) = load(&d, &g);
        assert_eq!(got, now);
    }

    /// Opens a copy of `base` that fails after `fail_after` writes and syncs,
    /// the failing write torn after `torn` bytes; crashes it (keeping its
    /// unsynced writes or not) and loads what is left.
    fn open_interrupted(
        base: &[u8],
        g: &Geometry,
        fail_after: u64,
        torn: usize,
        keep: bool,
    ) -> BTreeSet<u64> {
        let d = device_with(base);
        d.set_faults(Faults {
            fail_after: Some(fail_after),
            torn_bytes: Some(torn),
            fail_reads: false,
            errno: None,
        });
        assert!(RegionFile::open(d.clone(), g, ID).is_err());
        d.crash(|_| keep);
        load(&d, g).1
    }

    #[test]
    fn an_interrupted_open_keeps_a_valid_header() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let regions = used_file(&d);
        let both = d.durable_contents();
        // Both header slots valid (the open may fail at either of its first
        // two operations), or one of them blank.
        let mut cases = vec![("both headers", both.clone(), 2)];
        for blank in 0..2 {
            let mut base = both.clone();
            base[blank * SLOT_BYTES..][..SLOT_BYTES].fill(0);
            cases.push((
                if blank == 0 {
                    "slot 0 blank"
                } else {
                    "slot 1 blank"
                },
                base,
                1,
            ));
        }
        for (what, base, ops) in cases {
            for k in 0..ops {
                // A tear splitting the new checksum from the new generation
                // (14, 16) spoils the slot written: it must not be the valid one.
                for torn in [0, 1, 12, 14, 16, 20, 2048, 4095, 4096] {
                    for keep in [false, true] {
                        let got = open_interrupted(&base, &g, k, torn, keep);
                        assert_eq!(got, regions, "{what}, failing after {k} ops, {torn} torn");
                    }
                }
            }
        }
    }

    #[test]
    fn an_interrupted_create_is_corrupt_or_complete_never_a_mix() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let old = used_file(&d);
        let base = d.durable_contents();
        for all_set in [true, false] {
            let probe = device_with(&base);
            let ops = probe.op_counts();
            RegionFile::create(probe.clone(), &g, ID, all_set).unwrap();
            let (w, s) = probe.op_counts();
            let create_ops = w - ops.0 + s - ops.1;
            // Blank headers, sync, two slot areas, sync, headers, sync.
            assert_eq!(create_ops, 7);
            let header_write = create_ops - 2;
            let fresh: BTreeSet<u64> = if all_set {
                (0..g.regions()).collect()
            } else {
                BTreeSet::new()
            };
            for k in 0..create_ops {
                for torn in [0, 1, 2048, 4095, 4096, 4097, 8191, 1 << 20] {
                    for keep in [0, 1, 2, 3] {
                        let d = device_with(&base);
                        d.set_faults(Faults {
                            fail_after: Some(k),
                            torn_bytes: Some(torn),
                            fail_reads: false,
                            errno: None,
                        });
                        let what = format!("all_set {all_set}, fail after {k}, {torn} torn");
                        assert!(RegionFile::create(d.clone(), &g, ID, all_set).is_err());
                        d.crash(|i| match keep {
                            0 => false,
                            1 => true,
                            2 => i % 2 == 0,
                            _ => i % 2 == 1,
                        });
                        match outcome(&d, &g, ID) {
                            LoadOutcome::Corrupt(_) => {}
                            LoadOutcome::Loaded(r) => {
                                let r: BTreeSet<u64> = r.into_iter().collect();
                                assert!(
                                    r == old || (k >= header_write && r == fresh),
                                    "{what}: loaded {r:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mismatches_are_corrupt_and_say_why() {
        let g = small();
        let d = mem(RegionFile::file_size(&g) * 2);
        drop(RegionFile::create(d.clone(), &g, ID, false).unwrap());
        let corrupt = |g: &Geometry, identity: u64| match outcome(&d, g, identity) {
            LoadOutcome::Corrupt(why) => why,
            LoadOutcome::Loaded(r) => panic!("loaded {r:?}"),
        };
        let why = corrupt(&g, ID + 1);
        assert!(why.contains("another device pair"), "{why}");
        let why = corrupt(&Geometry::new(128 << 20, 64 << 10).unwrap(), ID);
        assert!(
            why.contains("device of 67108864 bytes, primary has 134217728"),
            "{why}"
        );
        let why = corrupt(&Geometry::new(64 << 20, 128 << 10).unwrap(), ID);
        assert!(why.contains("regions of 65536 bytes"), "{why}");
        assert!(why.contains("131072"), "{why}");
        // The matching geometry still loads.
        let (_, got) = load(&d, &g);
        assert!(got.is_empty());
    }

    #[test]
    fn foreign_blank_and_future_files_are_corrupt() {
        let g = small();
        let size = RegionFile::file_size(&g);
        let corrupt = |d: &Arc<MemDev>| match outcome(d, &g, ID) {
            LoadOutcome::Corrupt(why) => why,
            LoadOutcome::Loaded(r) => panic!("loaded {r:?}"),
        };
        let why = corrupt(&mem(size));
        assert!(why.contains("blank"), "{why}");
        let why = corrupt(&device_with(&vec![0x5a; size as usize]));
        assert!(why.contains("bad magic"), "{why}");

        let d = mem(size);
        drop(RegionFile::create(d.clone(), &g, ID, false).unwrap());
        let mut bytes = d.durable_contents();
        for slot in 0..2 {
            let b = &mut bytes[slot * SLOT_BYTES..][..SLOT_BYTES];
            put32(b, 8, 2);
            let crc = crc_without(b, 12);
            put32(b, 12, crc);
        }
        let why = corrupt(&device_with(&bytes));
        assert!(why.contains("unknown format version 2"), "{why}");

        let mut bytes = d.durable_contents();
        bytes[100] ^= 1;
        bytes[SLOT_BYTES + 100] ^= 1;
        assert_eq!(
            corrupt(&device_with(&bytes)),
            "header checksum mismatch in both slots"
        );
    }

    #[test]
    fn regions_past_the_last_one_are_corrupt() {
        let g = three_pages();
        let d = mem(RegionFile::file_size(&g));
        let f = RegionFile::create(d.clone(), &g, ID, false).unwrap();
        let header = f.header;
        drop(f);
        // A well-formed copy (valid checksum) recording region `regions()`.
        let mut bytes = d.durable_contents();
        let past = g.regions() - 2 * REGIONS_PER_PAGE;
        for slot in 0..2 {
            let o = slot_offset(&header, 2, slot) as usize;
            for copy in bytes[o..o + SLOT_BYTES].chunks_exact_mut(COPY_BYTES) {
                copy[COPY_HEADER_BYTES + past as usize / 8] |= 1 << (past % 8);
                let crc = crc_without(copy, 4);
                put32(copy, 4, crc);
            }
        }
        let LoadOutcome::Corrupt(why) = outcome(&device_with(&bytes), &g, ID) else {
            panic!("loaded a region past the device")
        };
        assert!(why.contains("past the last one"), "{why}");
    }

    #[test]
    fn pages_from_another_layout_are_rejected() {
        let g = small();
        let size = RegionFile::file_size(&g);
        let a = mem(size);
        let mut f = RegionFile::create(a.clone(), &g, ID, false).unwrap();
        update(&mut f, &g, &BTreeSet::new(), &set(&[3]));
        let b = mem(size);
        drop(RegionFile::create(b.clone(), &g, ID, false).unwrap());
        // b's header over a's pages: same geometry and identity, other layout.
        let mut bytes = a.durable_contents();
        bytes[..HEADER_BYTES as usize]
            .copy_from_slice(&b.durable_contents()[..HEADER_BYTES as usize]);
        let LoadOutcome::Corrupt(why) = outcome(&device_with(&bytes), &g, ID) else {
            panic!("pages of another layout loaded")
        };
        assert!(why.contains("older layout"), "{why}");
    }

    #[test]
    fn read_errors_are_errors_and_a_small_device_is_refused() {
        let g = small();
        let d = mem(RegionFile::file_size(&g));
        drop(RegionFile::create(d.clone(), &g, ID, false).unwrap());
        d.set_faults(Faults {
            fail_reads: true,
            ..Faults::default()
        });
        assert!(matches!(
            RegionFile::open(d.clone(), &g, ID),
            Err(Error::Io { .. })
        ));

        let tiny = mem(RegionFile::file_size(&g) - 1);
        let err = RegionFile::create(tiny, &g, ID, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("16383") && err.contains("16384"), "{err}");
    }

    #[test]
    fn a_corrupt_file_refuses_writes() {
        let g = small();
        let d = mem(RegionFile::file_size(&g));
        let (mut f, outcome) = RegionFile::open(d.clone(), &g, ID).unwrap();
        assert!(matches!(outcome, LoadOutcome::Corrupt(_)));
        let err = f.write_pages(&image(&g, &set(&[1])), &[0]).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
        assert_eq!(d.op_counts(), (0, 0), "nothing written");
    }
}
