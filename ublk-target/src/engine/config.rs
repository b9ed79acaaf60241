//! How an engine runs: its configuration, with one default and one
//! validation.

use crate::dev::Cache;
use crate::error::{Error, Result};
use crate::geometry::{check_region_size, DEFAULT_REGION_SIZE};
use crate::mirror::MirrorConfig;
use crate::predict;

/// Default capacity for clean regions in the record: 1 GiB.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub region_size: u64,
    /// Bytes of clean regions the record may hold.
    pub capacity: u64,
    /// Record policy name (`predictive`, `lru`, `md-bitmap`).
    pub policy: String,
    pub mirror: MirrorConfig,
    /// With a new record file: trust that primary and secondary are already
    /// identical (e.g. both blank) and skip the initial full copy.
    pub assume_clean: bool,
    /// Benchmark baseline: serve the primary with mirror and record checks off.
    /// The record is rewritten with every region set, so the next mirrored
    /// start copies the whole device.
    pub passthrough: bool,
    /// Whether the data devices are used through the host page cache.
    pub cache: Cache,
    /// The peer that holds the record, if any.
    pub peer: Option<PeerConfig>,
    /// Dual-active service with that peer.
    pub dual: Option<DualConfig>,
    /// The device's lease on shared storage, for a device two nodes reach.
    pub lease: Option<crate::lease::LeaseConfig>,
    /// The device's identity given by name (`--pair-name`), so that two
    /// nodes whose paths differ agree on it; else it comes from the paths
    /// (or the lease).
    pub identity: Option<u64>,
    /// A secondary missing at open starts the engine degraded instead of
    /// failing (`--degraded-after`, once its wait is over).
    pub allow_missing_secondary: bool,
    /// The bound on the dirty backlog in bytes (`--max-dirty`), and what a
    /// backlog over it does.
    pub max_dirty: Option<u64>,
    pub on_max_dirty: super::OverMaxDirty,
}

/// Dual-active service (`--listen`): where this node holds the other's
/// record and answers its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualConfig {
    /// HOST:PORT this node's holder listens on.
    pub listen: String,
    /// The directory of the other node's held record.
    pub hold_dir: std::path::PathBuf,
    /// The other node's lease, watched for a takeover (`--other-lease`).
    pub other_lease: Option<std::path::PathBuf>,
}

/// Where the record is held when a peer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// HOST:PORT of the peer's holder.
    pub address: String,
    /// This node's id.
    pub node: u64,
    /// The file beside the local record that keeps the ownership generation
    /// and where the record was held last (`peer::store::read_state`).
    pub state: std::path::PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            region_size: DEFAULT_REGION_SIZE,
            capacity: DEFAULT_CAPACITY,
            policy: "predictive".into(),
            mirror: MirrorConfig::default(),
            assume_clean: false,
            passthrough: false,
            cache: Cache::default(),
            peer: None,
            dual: None,
            identity: None,
            lease: None,
            allow_missing_secondary: false,
            max_dirty: None,
            on_max_dirty: super::OverMaxDirty::default(),
        }
    }
}

impl EngineConfig {
    /// Refuses bad values, naming them.
    pub fn validate(&self) -> Result<()> {
        check_region_size(self.region_size)?;
        if self.capacity < self.region_size {
            return Err(Error::Config(format!(
                "capacity {} is smaller than one region ({} bytes)",
                self.capacity, self.region_size
            )));
        }
        if !predict::POLICIES.contains(&self.policy.as_str()) {
            return Err(Error::Config(format!(
                "unknown policy {:?}; choose one of {}",
                self.policy,
                predict::POLICIES.join(", ")
            )));
        }
        if self.mirror.threads == 0 || self.mirror.threads > 64 {
            return Err(Error::Config(format!(
                "mirror threads {} is outside 1..=64",
                self.mirror.threads
            )));
        }
        if self.mirror.max_copy_bytes < self.region_size {
            return Err(Error::Config(format!(
                "max copy size {} is smaller than the region size {}",
                self.mirror.max_copy_bytes, self.region_size
            )));
        }
        if self.mirror.max_rate == Some(0) {
            return Err(Error::Config("max copy rate 0 would never copy".into()));
        }
        Ok(())
    }
}
