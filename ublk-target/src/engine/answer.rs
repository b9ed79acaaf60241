//! What a node of a dual-active pair answers the other node about a region
//! (`peer::Answerer`): its status (no write in flight to it, nothing of it
//! cached dirty), and copies granted and ended.

use std::time::{Duration, Instant};

use super::Engine;
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::record::ClaimRefused;
use crate::region::RegionView;

/// How long an answer waits for the writes in flight to a region.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Engine {
    /// Waits until no write to region `r` is in flight.
    fn drain(&self, r: u64) -> Result<()> {
        let states = self.record.states();
        let started = Instant::now();
        let mut pause = Duration::from_micros(20);
        while states.inflight(r) != 0 {
            if started.elapsed() > DRAIN_LIMIT {
                return Err(Error::io(
                    format!(
                        "wait {} s for the writes in flight to region {r}",
                        DRAIN_LIMIT.as_secs()
                    ),
                    std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Writes back what the primary's cache holds dirty (a writeback
    /// cache's pages; with O_DIRECT there is nothing to write back).
    fn write_back(&self) -> Result<()> {
        if self.writeback {
            self.primary
                .sync()
                .map_err(|e| Error::io("write the primary's cache back for the other node", e))?;
        }
        Ok(())
    }

    fn check_region(&self, r: u64) -> Result<()> {
        if r >= self.geometry.regions() {
            return Err(Error::OutOfRange {
                offset: r.saturating_mul(self.geometry.region_size()),
                len: self.geometry.region_size(),
                size: self.geometry.device_size(),
            });
        }
        Ok(())
    }
}

impl crate::peer::Answerer for Engine {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn status(&self, r: u64) -> Result<()> {
        self.check_region(r)?;
        self.drain(r)?;
        self.write_back()
    }

    fn grant(&self, r: u64) -> Result<Option<u64>> {
        self.check_region(r)?;
        let states = self.record.states();
        match states.grant(r) {
            Ok(()) => {}
            Err(ClaimRefused::Claimed) => return Ok(None),
            Err(other) => unreachable!("a grant is refused only while copying, not {other:?}"),
        }
        let quiet = self.drain(r).and_then(|()| self.write_back());
        if let Err(e) = quiet {
            states.end_grant(r);
            self.requeue_if_dirty(r);
            return Err(e);
        }
        Ok(Some(u64::from(states.seq(r))))
    }

    fn end(&self, r: u64, seq: u64, landed: bool) -> bool {
        if self.check_region(r).is_err() {
            return false;
        }
        let states = self.record.states();
        states.end_grant(r);
        let unchanged = u64::from(states.seq(r)) == seq;
        if landed && unchanged {
            // The secondary holds this node's data of it, as of the grant:
            // clean here too, unless a write started since.
            if let Ok(claim) = states.claim_copy(r) {
                let still = u64::from(states.seq(r)) == seq;
                if states.finish_copy(r, claim, still) {
                    self.mirror.note_cleaned(&[r]);
                }
            }
        }
        self.requeue_if_dirty(r);
        unchanged
    }
}

impl Engine {
    /// After the other node's grant of `r`: a region that is still dirty
    /// goes back to this node's mirror (its copies were held back).
    fn requeue_if_dirty(&self, r: u64) {
        if self.record.states().is_dirty(r) {
            self.mirror.requeue(&[r]);
        }
    }
}
