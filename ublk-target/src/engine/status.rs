//! What the engine reports: how it started, its state and its figures.

use std::time::{Duration, Instant};

use super::Engine;
use crate::dev::Cache;
use crate::region::RegionView;
use crate::status::State;

/// What start-up found in the record.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// A new record: a full initial copy (or none with `assume_clean`).
    #[default]
    Created,
    /// An existing record: its regions are resynced.
    Recovered,
    /// The record could not be trusted: full resync.
    Corrupt { reason: String },
    /// Mirror and record are off (benchmark baseline).
    Passthrough,
}

/// The engine's state and figures, for status requests: the daemon sends
/// them inside a `control::DeviceStatus`, whose `state` is the one shown
/// (this one is not serialized). A field added later carries
/// `#[serde(default)]`, so that an older daemon's answer still reads; a
/// status without figures (a daemon that is gone) reads as none.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineStatus {
    #[serde(skip)]
    pub state: State,
    pub device_size: u64,
    pub region_size: u64,
    pub policy: String,
    /// The candidate the policy follows now (`predictive` chooses among
    /// several), and how often its choice changed; absent for a policy
    /// that does not choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_following: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_switches: Option<u64>,
    /// `none` when the primary is opened O_DIRECT, else `writeback` (asked
    /// for, or the file system refused O_DIRECT).
    pub cache: Cache,
    pub capacity_bytes: u64,
    pub record_regions: u64,
    pub record_bytes: u64,
    pub dirty_bytes: u64,
    pub lag_seconds: f64,
    /// Share of recent time with host I/O in flight (0 to 1).
    pub host_busy: f64,
    /// Copies are held back (up to the maximum lag) for heavy host I/O.
    pub mirror_deferring: bool,
    pub writes: u64,
    pub bytes_written: u64,
    pub record_updates: u64,
    pub record_pages_written: u64,
    pub updates_per_1000_writes: f64,
    pub predicted_regions: u64,
    pub predicted_never_written: u64,
    pub bytes_copied: u64,
    /// Of `bytes_copied`, those read back from the primary: the write-data
    /// buffer did not hold them (over budget, resync, or overtaken).
    #[serde(default)]
    pub copy_read_back_bytes: u64,
    /// Of `bytes_copied`, those sent from the write-data buffer.
    #[serde(default)]
    pub copy_from_buffer_bytes: u64,
    /// Bytes of write data the buffer holds now, and its budget (0: off).
    #[serde(default)]
    pub copy_buffer_bytes: u64,
    #[serde(default)]
    pub copy_buffer_budget: u64,
    pub copy_errors: u64,
    pub resync_total_bytes: u64,
    pub resync_done_bytes: u64,
    pub degraded: bool,
    /// The mirror's last copy error while degraded.
    pub last_error: Option<String>,
    /// Its errno, positive (e.g. 5 for EIO, 19 for ENODEV: the secondary is
    /// gone).
    #[serde(default)]
    pub last_errno: Option<i32>,
    /// Why the record cannot be updated (state `record-failed`).
    pub record_error: Option<String>,
    /// Its errno, positive (e.g. 28 for ENOSPC).
    pub record_errno: Option<i32>,
    pub start: StartKind,
    pub uptime_seconds: f64,
    /// CPU time the front end's queue threads spent spinning for completions
    /// (`--poll`), summed over queues.
    pub poll_seconds: f64,
    /// The peer holding the record, when there is one: where the record is
    /// held now, the peer's node and generation, the round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::peer::PeerStatus>,
    /// The device's lease on shared storage, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::lease::LeaseStatus>,
    /// Dual-active service, when the other node serves the device too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual: Option<super::DualStatus>,
    /// Mirroring paused on request (`tandemctl pause`).
    #[serde(default)]
    pub mirror_paused: bool,
    /// The copy bandwidth cap in effect (`--max-copy-rate`, `tandemctl
    /// set`), bytes per second.
    #[serde(default)]
    pub max_copy_rate: Option<u64>,
    /// The maximum lag in effect (`--max-lag`, `tandemctl set`).
    #[serde(default)]
    pub max_lag_seconds: f64,
    /// The bound on the dirty backlog (`--max-dirty`), when there is one.
    #[serde(default)]
    pub max_dirty: Option<super::ThrottleStatus>,
    /// Host read latencies (from the request's arrival to its answer).
    #[serde(default)]
    pub read_latency: crate::stats::LatencyStatus,
    /// Host write latencies.
    #[serde(default)]
    pub write_latency: crate::stats::LatencyStatus,
    /// The running or last `tandemctl verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::VerifyReport>,
    /// The disks that both the primary and the secondary sit on (found in
    /// sysfs when the device started): unless a redundant layer between
    /// covers them, their loss takes both copies. Absent when they share none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_disks: Vec<String>,
}

impl Engine {
    pub fn status(&self) -> EngineStatus {
        let rs = self.record.stats();
        let choice = self.record.policy_choice();
        let ms = self.mirror_stats();
        let writes = self.writes.get();
        let record_error = self.record.store_error();
        let state = if self.passthrough {
            State::Passthrough
        } else if self.lease.as_ref().is_some_and(|l| !l.valid()) {
            State::Fenced
        } else if record_error.is_some() {
            State::RecordFailed
        } else if ms.degraded {
            State::Degraded
        } else if ms.resync_done_bytes < ms.resync_total_bytes {
            State::Resyncing
        } else {
            State::Live
        };
        EngineStatus {
            state,
            device_size: self.geometry.device_size(),
            region_size: self.geometry.region_size(),
            policy: self.record.policy().to_string(),
            policy_following: choice.as_ref().map(|c| c.following.to_string()),
            policy_switches: choice.map(|c| c.switches),
            cache: if self.primary.direct() {
                Cache::None
            } else {
                Cache::Writeback
            },
            capacity_bytes: self.capacity,
            record_regions: rs.regions,
            record_bytes: rs.bytes,
            dirty_bytes: self.record.bytes_of(
                rs.dirty_regions,
                self.record.states().is_dirty(self.geometry.regions() - 1),
            ),
            lag_seconds: ms.lag_seconds,
            host_busy: ms.host_busy,
            mirror_deferring: ms.deferring,
            mirror_paused: ms.paused,
            max_copy_rate: ms.max_copy_rate,
            max_lag_seconds: ms.max_lag_seconds,
            max_dirty: self.throttle_status(),
            verify: self.verify_report(),
            shared_disks: self.shared_disks.clone(),
            read_latency: self.read_latency.status(),
            write_latency: self.write_latency.status(),
            writes,
            bytes_written: self.bytes_written.get(),
            record_updates: rs.updates,
            record_pages_written: rs.pages_written,
            updates_per_1000_writes: if writes == 0 {
                0.0
            } else {
                rs.updates as f64 * 1000.0 / writes as f64
            },
            predicted_regions: rs.predicted_regions,
            predicted_never_written: rs.predicted_never_written,
            bytes_copied: ms.bytes_copied,
            copy_read_back_bytes: ms.read_back_bytes,
            copy_from_buffer_bytes: ms.from_buffer_bytes,
            copy_buffer_bytes: ms.copy_buffer_bytes,
            copy_buffer_budget: ms.copy_buffer_budget,
            copy_errors: ms.copy_errors,
            resync_total_bytes: ms.resync_total_bytes,
            resync_done_bytes: ms.resync_done_bytes,
            degraded: ms.degraded,
            last_errno: ms.last_error.as_ref().map(|f| -f.errno),
            last_error: ms.last_error.map(|f| f.message),
            record_errno: record_error.as_ref().map(|f| -f.errno),
            record_error: record_error.map(|f| f.message),
            start: self.start.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            poll_seconds: self.poll_ns.get() as f64 / 1e9,
            peer: self
                .peer
                .as_ref()
                .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            lease: self.lease.as_ref().map(|l| l.status()),
            dual: self.dual_status(),
        }
    }

    /// Waits until nothing is dirty; false on timeout.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.record.states().dirty_count() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
