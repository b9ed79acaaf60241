//! Shared pieces of tandem's end-to-end tests: the engine under load that
//! they kill (`load`), the acknowledged-write log it keeps, and the block
//! stamps it writes.

pub mod load;
pub mod proxy;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::ChildStdout;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Block size of the stamped writes (`load::Mix::Stamped`).
pub const BLOCK: u64 = 4096;

/// One acknowledged write: `block` holds `stamp` (thread and sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub block: u32,
    pub thread: u32,
    pub seq: u64,
}

impl Ack {
    const LEN: usize = 16;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[0..4].copy_from_slice(&self.block.to_le_bytes());
        b[4..8].copy_from_slice(&self.thread.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Ack {
        Ack {
            block: u32::from_le_bytes(b[0..4].try_into().unwrap()),
            thread: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            seq: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        }
    }

    /// Appends this entry with one `write` call (atomic for an O_APPEND file).
    pub fn append(&self, log: &mut std::fs::File) -> io::Result<()> {
        log.write_all(&self.encode())
    }
}

/// Reads a log; a torn last entry (the writer was killed mid-append) is ignored.
pub fn read_log(path: &Path) -> io::Result<Vec<Ack>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    Ok(bytes.chunks_exact(Ack::LEN).map(Ack::decode).collect())
}

/// The contents of a block written by `thread` as its write number `seq`:
/// the header repeated, so a torn or misplaced block is recognisable.
pub fn block_data(block: u32, thread: u32, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK as usize);
    while v.len() < BLOCK as usize {
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&thread.to_le_bytes());
        v.extend_from_slice(&seq.to_le_bytes());
    }
    v
}

/// Parses a block written by `block_data`: `None` for a never-written (zero)
/// block, an error for anything inconsistent.
pub fn parse_block(data: &[u8]) -> Result<Option<(u32, u32, u64)>, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let block = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let thread = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(data[8..16].try_into().unwrap());
    if data != block_data(block, thread, seq).as_slice() {
        return Err(format!(
            "torn or mixed block (header block {block} thread {thread} seq {seq})"
        ));
    }
    Ok(Some((block, thread, seq)))
}

/// Checks that the primary holds every write the stamped writers logged as
/// acknowledged (the last one of each block, or a later one); returns how
/// many blocks were checked. Panics with the block that lost its write.
pub fn check_acknowledged(primary: &Path, log_dir: &Path, threads: u32) -> usize {
    let data = std::fs::read(primary).unwrap();
    let mut last: HashMap<u32, (u32, u64)> = HashMap::new();
    for t in 0..threads {
        for a in read_log(&log_dir.join(format!("ack-{t}"))).unwrap() {
            let e = last.entry(a.block).or_insert((a.thread, a.seq));
            if a.seq > e.1 {
                *e = (a.thread, a.seq);
            }
        }
    }
    for (&block, &(thread, seq)) in &last {
        let off = (u64::from(block) * BLOCK) as usize;
        let got = parse_block(&data[off..off + BLOCK as usize])
            .unwrap_or_else(|e| panic!("block {block}: {e}"));
        let (b, t, s) = got.unwrap_or_else(|| {
            panic!("block {block}: acknowledged write {thread}/{seq} lost (block is zero)")
        });
        assert_eq!(
            (b, t),
            (block, thread),
            "block {block} holds another block's data"
        );
        assert!(
            s >= seq,
            "block {block}: acknowledged seq {seq} lost, primary holds older seq {s}"
        );
    }
    last.len()
}

/// Kills a child with SIGKILL and reaps it; panics if it had ended by
/// itself before (a failed write ends the load child: see its stderr).
pub fn sigkill(child: &mut std::process::Child) {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: kill(2) on our own child's pid, which it stays until reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().expect("reap the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child ended by itself ({status}) before the kill: see its stderr"
    );
}

/// A child killed when the guard drops (a test that fails midway leaves no
/// process behind, holding its pipes open).
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits for a child's `ready` line, then follows its `status N N ...` lines
/// on a thread; the handle returns the numbers of the last one (empty if none
/// came) once the child's stdout closes.
pub fn follow_status(stdout: ChildStdout) -> Result<JoinHandle<Vec<u64>>, String> {
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("child failed to start: {line:?}"));
    }
    Ok(std::thread::spawn(move || {
        let mut last = Vec::new();
        for l in out.lines().map_while(Result::ok) {
            if let Some(rest) = l.strip_prefix("status ") {
                last = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            }
        }
        last
    }))
}

/// Like `follow_status`, but the numbers of the latest `status` line can be
/// read at any time while the child runs.
pub fn watch_status(stdout: ChildStdout) -> Result<Arc<Mutex<Vec<u64>>>, String> {
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("child failed to start: {line:?}"));
    }
    let latest = Arc::new(Mutex::new(Vec::new()));
    let l = latest.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("status ") {
                *l.lock().unwrap() = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
            }
        }
    });
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip_and_torn_detection() {
        let mut d = block_data(7, 2, 99);
        assert_eq!(parse_block(&d), Ok(Some((7, 2, 99))));
        d[100] ^= 1;
        assert!(parse_block(&d).is_err());
        assert_eq!(parse_block(&vec![0; BLOCK as usize]), Ok(None));
    }

    #[test]
    fn log_round_trip_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let a = Ack {
            block: 1,
            thread: 2,
            seq: 3,
        };
        a.append(&mut f).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(read_log(&p).unwrap(), vec![a]);
    }
}
