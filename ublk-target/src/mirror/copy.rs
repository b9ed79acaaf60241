//! One batch's copy: the chunks written since the last copy are taken from
//! the write-data buffer where it knows them (`buffer`) and read from the
//! primary where it does not, and written to the secondary, which is then
//! synced; the regions are marked clean only where no write started since
//! the claim.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A region the other node copies now is asked about again after this.
const GRANT_RETRY: Duration = Duration::from_millis(50);

use super::buffer::Taken;
use super::queue::{Batch, Entry};
use super::{lock, Shared};
use crate::dev::Dev;
use crate::error::{Error, Result};
use crate::record::{ChunkMask, CopyClaim};
use crate::region::RegionView;

/// A worker's copy buffer: page-aligned (so O_DIRECT needs no bounce) and
/// reused across copies.
#[derive(Default)]
pub(super) struct CopyBuf(Option<rings::AlignedBuf>);

impl CopyBuf {
    /// At least `len` bytes, reallocated only when too small.
    pub(super) fn get(&mut self, len: usize) -> &mut [u8] {
        if self.0.as_ref().is_none_or(|b| b.len() < len) {
            self.0 = Some(rings::AlignedBuf::zeroed(len));
        }
        &mut self.0.as_mut().expect("allocated above")[..len]
    }
}

impl Shared {
    /// Copies claimed extents, syncs the secondary once, and settles the claims.
    /// Only the chunks written since each region's last copy are moved.
    pub(super) fn copy_batch(&self, batch: Batch, buf: &mut CopyBuf) {
        // The claims were taken just now (`next_batch` returns as it takes
        // them): a write that leaves a region dirty after its copy began
        // after this, to within the microseconds between the two.
        let claimed = Instant::now();
        let states = self.record.states();
        // `gone` first, then the handle: `switch_secondary` stores the new
        // handle before it clears `gone`, so a batch that sees `gone` clear
        // copies to the new device. Read the other way round, a batch claimed
        // after every region was marked dirty for the new device could copy
        // to the old one and mark its regions clean.
        let gone = self.secondary_gone.load(Ordering::Acquire);
        let secondary = self.secondary();
        if gone {
            // Writes to the old handle may still succeed (a deleted file), but
            // they reach nothing that will be read: nothing is copied.
            let err = Error::io(
                format!("secondary {} is gone", secondary.describe()),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            );
            self.finish(batch, Err(err), &[], claimed);
            return;
        }
        // Dual-active: the regions the other node's record lists are copied
        // only under its grant, landed only within the grant's time.
        let asked = Instant::now();
        let grants = match self.grants(&batch) {
            Ok(Some(g)) => g,
            Ok(None) => {
                self.release_after(batch, GRANT_RETRY);
                return;
            }
            Err(e) => {
                self.finish(batch, Err(e), &[], claimed);
                return;
            }
        };
        // A remote secondary that lost acknowledged writes (a connection
        // broke before a flush covered them) during this batch: its sync
        // says nothing about them, so nothing is marked clean.
        let losses = secondary.losses();
        let mut copied = 0u64;
        let mut result = Ok(());
        let mut taken: Vec<(u64, ChunkMask)> = Vec::new();
        let mut kept: Vec<(u64, Taken)> = Vec::new();
        'runs: for (run, _) in &batch {
            if self.stopping() {
                // Stopping: leave the rest dirty (and recorded) for the next start.
                for &(r, mask) in &taken {
                    states.restore_chunks(r, mask);
                }
                self.end_grants(&grants, false);
                self.release(batch);
                return;
            }
            // A granted region is copied whole: the other node marks it
            // clean on its side too once this copy lands, and the chunks it
            // wrote are not among this node's.
            let granted = |r: u64| grants.iter().any(|&(g, _)| g == r);
            for (start, end) in self.dirty_extents(run, &mut taken, &mut kept, &granted) {
                if !grants.is_empty() && asked.elapsed() > crate::peer::COPY_LIMIT {
                    result = Err(Error::Peer(format!(
                        "a granted copy was not landed within {} s of asking: copied again",
                        crate::peer::COPY_LIMIT.as_secs()
                    )));
                    break 'runs;
                }
                result = self
                    .copy(&secondary, start, end, buf, &kept)
                    .map(|n| copied += n);
                if result.is_err() {
                    break 'runs;
                }
            }
        }
        let result = result
            .and_then(|()| {
                secondary
                    .sync()
                    .map_err(|e| Error::io(format!("sync secondary {}", secondary.describe()), e))
            })
            .and_then(|()| {
                if secondary.losses() == losses {
                    Ok(())
                } else {
                    Err(Error::io(
                        format!(
                            "secondary {}: a connection broke before its writes were flushed",
                            secondary.describe()
                        ),
                        std::io::Error::from_raw_os_error(libc::EIO),
                    ))
                }
            })
            .and_then(|()| match self.fence.get() {
                Some(lease) => lease.check(),
                None => Ok(()),
            });
        if result.is_err() {
            for &(r, mask) in &taken {
                states.restore_chunks(r, mask);
            }
        }
        // Clean only where no write started at the other node either.
        let changed = self.end_grants(&grants, result.is_ok());
        for &r in &changed {
            if let Some(&(_, mask)) = taken.iter().find(|(t, _)| *t == r) {
                states.restore_chunks(r, mask);
            }
        }
        self.finish(batch, result.map(|()| copied), &changed, claimed);
    }

    /// The other node's grants for the batch's regions that its record
    /// lists: `None` when one is busy (the grants given are ended).
    fn grants(&self, batch: &Batch) -> Result<Option<Vec<(u64, u64)>>> {
        let Some(gate) = self.gate.get() else {
            return Ok(Some(Vec::new()));
        };
        let mut given = Vec::new();
        for (run, _) in batch {
            for &(r, _) in run.iter().filter(|(r, _)| gate.theirs(*r)) {
                match gate.begin(r) {
                    Ok(Some(seq)) => given.push((r, seq)),
                    Ok(None) => {
                        self.end_grants(&given, false);
                        return Ok(None);
                    }
                    Err(e) => {
                        self.end_grants(&given, false);
                        return Err(e);
                    }
                }
            }
        }
        Ok(Some(given))
    }

    /// Ends the grants; returns the regions written at the other node since
    /// (or whose end could not be told): they are not clean.
    fn end_grants(&self, grants: &[(u64, u64)], landed: bool) -> Vec<u64> {
        let Some(gate) = self.gate.get() else {
            return Vec::new();
        };
        grants
            .iter()
            .filter(|&&(r, seq)| match gate.end(r, seq, landed) {
                Ok(unchanged) => !unchanged,
                Err(e) => {
                    log::warn!("end the other node's grant of region {r}: {e}");
                    true
                }
            })
            .map(|&(r, _)| r)
            .collect()
    }

    /// Takes the written chunks of a claimed run (noting them in `taken`)
    /// and then the pieces the write-data buffer holds of it (in `kept`),
    /// and returns the byte extents to copy, adjacent chunks merged; every
    /// chunk of the regions `whole` names.
    pub(super) fn dirty_extents(
        &self,
        run: &[(u64, CopyClaim)],
        taken: &mut Vec<(u64, ChunkMask)>,
        kept: &mut Vec<(u64, Taken)>,
        whole: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, u64)> {
        let g = self.record.geometry();
        let shift = self.record.chunk_shift();
        let states = self.record.states();
        let mut extents: Vec<(u64, u64)> = Vec::new();
        for &(r, _) in run {
            let mut mask = states.take_chunks(r);
            if whole(r) {
                mask = crate::record::ALL_CHUNKS;
            }
            taken.push((r, mask));
            // After the chunks: a write that set its chunks before kept its
            // piece before.
            let pieces = self.buffer.take(states, r);
            if !pieces.is_empty() {
                kept.push((r, pieces));
            }
            let region = g.region_bytes(r);
            let mut bits = mask;
            while bits != 0 {
                let i = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = region.start + (i << shift);
                let end = (start + (1 << shift)).min(region.end);
                if start >= end {
                    continue;
                }
                match extents.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => extents.push((start, end)),
                }
            }
        }
        extents
    }

    /// Copies bytes `start..end` to the secondary (not yet durable): each
    /// chunk from the pieces `kept` when they know it, else read from the
    /// primary.
    pub(super) fn copy(
        &self,
        secondary: &Dev,
        start: u64,
        end: u64,
        buf: &mut CopyBuf,
        kept: &[(u64, Taken)],
    ) -> Result<u64> {
        let len = (end - start) as usize;
        let buf = buf.get(len);
        let wait = lock(&self.throttle).as_mut().map(|t| t.take(len as u64));
        if let Some(wait) = wait {
            if !wait.is_zero() {
                // Interruptible: a stop does not wait out the bandwidth cap.
                let g = lock(&self.stop_lock);
                if !self.stopping() {
                    drop(self.stop_signal.wait_timeout(g, wait));
                }
            }
        }
        self.fill(start, end, buf, kept)?;
        secondary.write_at(&buf[..len], start, false).map_err(|e| {
            Error::io(
                format!("write secondary {} at {start}", secondary.describe()),
                e,
            )
        })?;
        Ok(len as u64)
    }

    /// Fills `buf` with bytes `start..end`: chunk by chunk from the pieces
    /// kept where they know the chunk, the rest read from the primary in
    /// runs.
    fn fill(&self, start: u64, end: u64, buf: &mut [u8], kept: &[(u64, Taken)]) -> Result<()> {
        let g = self.record.geometry();
        let chunk = 1u64 << self.record.chunk_shift();
        let mut unread: Option<u64> = None;
        let mut from_buffer = 0;
        let read = |from: u64, to: u64, buf: &mut [u8]| {
            let part = &mut buf[(from - start) as usize..(to - start) as usize];
            self.primary.read_at(part, from).map_err(|e| {
                Error::io(
                    format!("read primary {} at {from}", self.primary.describe()),
                    e,
                )
            })
        };
        let mut pos = start;
        while pos < end {
            let next = ((pos / chunk + 1) * chunk).min(end);
            let r = g.region_of(pos);
            let base = g.region_bytes(r).start;
            let out = &mut buf[(pos - start) as usize..(next - start) as usize];
            let known = kept
                .iter()
                .find(|(k, _)| *k == r)
                .is_some_and(|(_, t)| t.fill((pos - base) as u32..(next - base) as u32, out));
            if known {
                from_buffer += next - pos;
                if let Some(from) = unread.take() {
                    read(from, pos, buf)?;
                }
            } else {
                unread.get_or_insert(pos);
            }
            pos = next;
        }
        if let Some(from) = unread {
            read(from, end, buf)?;
        }
        let c = &self.counters;
        c.from_buffer.fetch_add(from_buffer, Ordering::Relaxed);
        c.read_back
            .fetch_add(end - start - from_buffer, Ordering::Relaxed);
        Ok(())
    }

    /// Drops the claims of a batch that was not copied; its regions stay dirty.
    pub(super) fn release(&self, batch: Batch) {
        self.release_after(batch, Duration::ZERO);
    }

    /// Like `release`, the regions copied again no sooner than `wait`.
    fn release_after(&self, batch: Batch, wait: Duration) {
        let states = self.record.states();
        let mut q = lock(&self.queue);
        for (run, since) in &batch {
            for &(r, claim) in run {
                states.finish_copy(r, claim, false);
                q.delay(Entry {
                    region: r,
                    since: *since,
                    not_before: Instant::now() + wait,
                });
            }
            if let Some(i) = q.copying.iter().position(|t| t == since) {
                q.copying.swap_remove(i);
            }
        }
    }

    /// Settles a batch's claims: clean where the copy is durable, no write
    /// started since the claim, and the region is not in `changed` (written
    /// at the other node during its grant). A region that stays dirty
    /// although the copy landed was written after `claimed`: its lag counts
    /// from then (from the copy's end, it would read short by the copy's
    /// time, seconds over a slow link).
    pub(super) fn finish(
        &self,
        batch: Batch,
        result: Result<u64>,
        changed: &[u64],
        claimed: Instant,
    ) {
        let states = self.record.states();
        let durable = result.is_ok();
        let mut requeue = Vec::new();
        let mut cleaned = Vec::new();
        for (run, since) in &batch {
            for &(r, claim) in run {
                if states.finish_copy(r, claim, durable && !changed.contains(&r)) {
                    self.buffer.forget(r);
                    cleaned.push(r);
                } else {
                    requeue.push(Entry {
                        region: r,
                        since: if durable { claimed } else { *since },
                        not_before: Instant::now(),
                    });
                }
            }
        }
        self.note_result(&result, batch.len() as u64);
        self.count_resynced(&cleaned);
        {
            let mut q = lock(&self.queue);
            for (_, since) in &batch {
                if let Some(i) = q.copying.iter().position(|t| t == since) {
                    q.copying.swap_remove(i);
                }
            }
            for e in requeue {
                // A region written during its copy is still dirty: copy it again.
                if states.is_dirty(e.region) {
                    q.put_back(e);
                }
            }
        }
        self.wake.notify_all();
        if !cleaned.is_empty() {
            self.record.evict();
        }
    }
}
