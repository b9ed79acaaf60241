//! The arguments that describe one mirrored device, shared by `tandemctl add`
//! and `tandem-target` so both validate them the same way.

use std::path::PathBuf;

use std::time::Duration;

use crate::dev::Cache;
use crate::engine::{EngineConfig, OverMaxDirty, Paths, PeerConfig, DEFAULT_CAPACITY};
use crate::error::{Error, Result};
use crate::geometry::{check_region_size, DEFAULT_REGION_SIZE};
use crate::mirror::{MirrorConfig, DEFAULT_MAX_COPY_BYTES, DEFAULT_MAX_LAG, DEFAULT_THREADS};
use crate::units::{Size, TimeSpan};

/// The longest `--poll` accepted: past it, sleeping costs less than spinning.
const MAX_POLL: Duration = Duration::from_millis(10);

/// Default directory for control sockets and state files.
pub const DEFAULT_RUN_DIR: &str = "/run/tandem";

// Each default, written once: clap and serde (state and config files) both
// take it from here.
fn default_region_size() -> Size {
    Size(DEFAULT_REGION_SIZE)
}
fn default_capacity() -> Size {
    Size(DEFAULT_CAPACITY)
}
fn default_policy() -> String {
    "predictive".into()
}
fn default_queues() -> u16 {
    1
}
fn default_depth() -> u16 {
    128
}
fn default_mirror_threads() -> usize {
    DEFAULT_THREADS
}
fn default_max_copy_size() -> Size {
    Size(DEFAULT_MAX_COPY_BYTES)
}
fn default_lease_timeout() -> TimeSpan {
    TimeSpan(crate::lease::DEFAULT_TIMEOUT)
}
fn default_max_lag() -> TimeSpan {
    TimeSpan(DEFAULT_MAX_LAG)
}
fn default_copy_buffer() -> Size {
    Size(crate::mirror::DEFAULT_COPY_BUFFER)
}
fn default_poll() -> TimeSpan {
    TimeSpan(Duration::from_micros(300))
}

/// `path` made absolute against the working directory (links kept).
pub fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::Config(format!("path {}: {e}", path.display())))
}

/// One mirrored device: the arguments of `tandemctl add`, and the keys of
/// its state file (and of a config file), with the same typed values. Sizes
/// and durations are [`Size`] and [`TimeSpan`]; a key that is missing takes
/// its default, and an unknown key is an error that names it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct DeviceArgs {
    /// The device or file the host reads and writes.
    #[cfg_attr(feature = "cli", arg(long))]
    pub primary: PathBuf,
    /// Where writes are mirrored; at least as large as the primary.
    #[cfg_attr(feature = "cli", arg(long))]
    pub secondary: PathBuf,
    /// The write-intent record: a small file (created if missing) or block device.
    #[cfg_attr(feature = "cli", arg(long))]
    pub record: PathBuf,
    /// Region size: a power of two from 64KiB to 64MiB.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_region_size()))]
    #[serde(default = "default_region_size")]
    pub region_size: Size,
    /// Bytes of clean regions the record may hold.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_capacity()))]
    #[serde(default = "default_capacity")]
    pub capacity: Size,
    /// Record policy: predictive (follows the best of patterns,
    /// patterns-brief and car, chosen online), one of those alone, lru, or
    /// md-bitmap.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_policy()))]
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Hardware queues of the ublk device.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_queues()))]
    #[serde(default = "default_queues")]
    pub queues: u16,
    /// Depth of each queue.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_depth()))]
    #[serde(default = "default_depth")]
    pub depth: u16,
    /// Threads copying dirty regions to the secondary.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_mirror_threads()))]
    #[serde(default = "default_mirror_threads")]
    pub mirror_threads: usize,
    /// Copy bandwidth cap, bytes per second (e.g. 100MiB); none by default.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub max_copy_rate: Option<Size>,
    /// Largest extent one copy moves.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_max_copy_size()))]
    #[serde(default = "default_max_copy_size")]
    pub max_copy_size: Size,
    /// While host I/O is heavy, how long the mirror may hold a region's copy
    /// back so host writes run at full speed (e.g. 10s, 500ms); 0 copies at
    /// once whatever the load. Light host I/O never holds copies back.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_max_lag()))]
    #[serde(default = "default_max_lag")]
    pub max_lag: TimeSpan,
    /// Host memory for recent writes' data, which the mirror copies to the
    /// secondary from there instead of reading it back from the primary
    /// (e.g. 64MiB, 1GiB); 0 reads every copy back. Past it, writes are
    /// read back until their copies free room.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_copy_buffer()))]
    #[serde(default = "default_copy_buffer")]
    pub copy_buffer: Size,
    /// Host page cache for the data devices: `none` (O_DIRECT) or `writeback`
    /// (writes complete in host memory and are durable at the next flush or
    /// FUA write, like a disk's volatile cache; uses host memory).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Cache::default()))]
    #[serde(default)]
    pub cache: Cache,
    /// How long a queue thread may spin for the next completion before it
    /// sleeps (e.g. 300us, 50us); 0 never spins. It spins only while
    /// completions have been arriving within this time, so idle or light I/O
    /// costs no CPU; dense I/O trades up to one CPU per queue for latency.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_poll()))]
    #[serde(default = "default_poll")]
    pub poll: TimeSpan,
    /// With a new record, trust that primary and secondary are already
    /// identical (e.g. both blank) and skip the initial full copy.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub assume_clean: bool,
    /// Benchmark baseline: serve the primary with mirror and record off. The
    /// next mirrored start of this device copies it whole.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub passthrough: bool,
    /// The peer node that holds this device's record (HOST:PORT of its
    /// `tandem-target hold`): writes that miss wait for its acknowledgement;
    /// while it is unreachable the record is held in `--record`.
    #[cfg_attr(feature = "cli", arg(long, value_name = "HOST:PORT"))]
    #[serde(default)]
    pub peer: Option<String>,
    /// Dual-active: this node serves the device too, over the same shared
    /// primary as the node at `--peer` (whose `--listen` that is). It holds
    /// that node's record (in `RECORD.held/`) and answers its status checks
    /// here (HOST:PORT); reads and writes of regions in that node's record
    /// ask it first.
    #[cfg_attr(feature = "cli", arg(long, value_name = "HOST:PORT"))]
    #[serde(default)]
    pub listen: Option<String>,
    /// The name both nodes of a dual-active pair give the device (letters,
    /// digits, `.`, `_`, `-`; at most 64), so that they agree on its
    /// identity whatever their paths. Needed with `--listen` (unless a
    /// `--lease` gives the identity).
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME"))]
    #[serde(default)]
    pub pair_name: Option<String>,
    /// This node's id, unique in the pair (with `--peer` or `--lease`).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub node_id: Option<u64>,
    /// The device's lease: a small file or block device on storage that
    /// both nodes reach (created blank when missing). Writes are
    /// acknowledged only while this node holds it; the peer takes the device
    /// over only once it has lapsed.
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    #[serde(default)]
    pub lease: Option<PathBuf>,
    /// How long the lease lasts without a renewal (renewed every quarter of
    /// it); the peer waits half as long again before a takeover.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_lease_timeout()))]
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: TimeSpan,
    /// Dual-active: the other node's lease (its `--lease`, by this node's
    /// path to it). Watched while serving: once it expires, this node takes
    /// the other's record over into its own and copies it. Needs `--lease`,
    /// `--listen` and `--pair-name`.
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    #[serde(default)]
    pub other_lease: Option<PathBuf>,
    /// When the secondary is missing at start, wait this long for it (e.g.
    /// 30s), then start degraded: host I/O is served, the record keeps
    /// every written region, and the mirror catches up once the secondary's
    /// path appears. Without it a missing secondary refuses the start.
    #[cfg_attr(feature = "cli", arg(long, value_name = "TIME"))]
    #[serde(default)]
    pub degraded_after: Option<TimeSpan>,
    /// Bound the dirty backlog: the bytes of regions the secondary lacks
    /// (e.g. 256MiB; at least one region). What a backlog over it does is
    /// `--on-max-dirty`'s. None by default: the backlog may grow.
    #[cfg_attr(feature = "cli", arg(long, value_name = "SIZE"))]
    #[serde(default)]
    pub max_dirty: Option<Size>,
    /// What a backlog over `--max-dirty` does: `throttle` (host writes wait
    /// until the mirror has brought it under, so the recovery point stays
    /// bounded; not while the secondary is down or mirroring is paused) or
    /// `pull-ahead` (writes go on and the record grows).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = OverMaxDirty::default()))]
    #[serde(default)]
    pub on_max_dirty: OverMaxDirty,
}

impl DeviceArgs {
    /// Makes the three paths absolute (against the working directory, without
    /// resolving links, so `/dev/disk/by-id/...` names stay as given): the
    /// daemon works from `/`, and a restart from another directory must find
    /// the same files.
    pub fn make_absolute(&mut self) -> Result<()> {
        for p in [&mut self.primary, &mut self.secondary, &mut self.record] {
            if !crate::dev::nbd::is_uri(p) {
                *p = absolute(p)?;
            }
        }
        for p in [&mut self.lease, &mut self.other_lease]
            .into_iter()
            .flatten()
        {
            *p = absolute(p)?;
        }
        Ok(())
    }

    /// The one validator: checks every value, naming the bad one, and
    /// returns the engine configuration they make (valid by construction).
    pub fn engine_config(&self) -> Result<EngineConfig> {
        let region_size = self.region_size.bytes();
        check_region_size(region_size).map_err(|_| {
            Error::Config(format!(
                "--region-size {}: must be a power of two from 64KiB to 64MiB",
                self.region_size
            ))
        })?;
        if self.poll.duration() > MAX_POLL {
            return Err(Error::Config(format!(
                "--poll {}: at most {}ms",
                self.poll,
                MAX_POLL.as_millis()
            )));
        }
        if self.queues == 0 || self.queues > 32 {
            return Err(Error::Config(format!(
                "--queues {} is outside 1..=32",
                self.queues
            )));
        }
        if !(1..=4096).contains(&self.depth) {
            return Err(Error::Config(format!(
                "--depth {} is outside 1..=4096",
                self.depth
            )));
        }
        let lease = match (&self.lease, self.node_id) {
            (None, _) => None,
            (Some(p), None) => {
                return Err(Error::Config(format!(
                    "--lease {} needs --node-id (this node's id in the pair)",
                    p.display()
                )))
            }
            (Some(_), Some(0)) => {
                return Err(Error::Config("--node-id 0: node ids start at 1".into()))
            }
            (Some(p), Some(node)) => {
                let timeout = self.lease_timeout.duration();
                if timeout < Duration::from_millis(200) || timeout > Duration::from_secs(600) {
                    return Err(Error::Config(format!(
                        "--lease-timeout {}: must be from 200ms to 10min",
                        self.lease_timeout
                    )));
                }
                Some(crate::lease::LeaseConfig {
                    path: p.clone(),
                    node,
                    timeout,
                    reclaim: self.listen.is_some(),
                })
            }
        };
        let peer = match (&self.peer, self.node_id) {
            (None, None) => None,
            (None, Some(id)) if lease.is_none() => {
                return Err(Error::Config(format!(
                    "--node-id {id} is for a device with --peer or --lease"
                )))
            }
            (None, Some(_)) => None,
            (Some(addr), None) => {
                return Err(Error::Config(format!(
                    "--peer {addr} needs --node-id (this node's id in the pair)"
                )))
            }
            (Some(addr), Some(node)) => {
                crate::peer::check_address(addr)?;
                if self.passthrough {
                    return Err(Error::Config(format!(
                        "--peer {addr} with --passthrough: a passthrough device has no record to hold"
                    )));
                }
                let mut state = self.record.clone().into_os_string();
                state.push(".peer");
                Some(PeerConfig {
                    address: addr.clone(),
                    node,
                    state: state.into(),
                })
            }
        };
        let identity = match &self.pair_name {
            None => None,
            Some(n) => {
                let ok = !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !ok {
                    return Err(Error::Config(format!(
                        "--pair-name {n:?}: letters, digits, '.', '_' and '-', 1 to 64 of them"
                    )));
                }
                Some(crate::engine::named_identity(n))
            }
        };
        if let (Some(addr), None, None) = (&self.listen, &identity, &lease) {
            return Err(Error::Config(format!(
                "--listen {addr} needs --pair-name (or --lease): both nodes must name the device the same"
            )));
        }
        let dual = match (&self.listen, &peer) {
            (None, _) => None,
            (Some(addr), None) => {
                return Err(Error::Config(format!(
                    "--listen {addr} needs --peer and --node-id: dual-active service is with \
                     the node at --peer"
                )))
            }
            (Some(addr), Some(_)) => {
                crate::peer::check_address(addr).map_err(|_| {
                    Error::Config(format!(
                        "--listen {addr:?}: expected HOST:PORT (e.g. 127.0.0.1:7790 or [::1]:7790)"
                    ))
                })?;
                let mut dir = self.record.clone().into_os_string();
                dir.push(".held");
                Some(crate::engine::DualConfig {
                    listen: addr.clone(),
                    hold_dir: dir.into(),
                    other_lease: self.other_lease.clone(),
                })
            }
        };
        if let Some(p) = &self.other_lease {
            let missing = [
                (self.lease.is_none(), "--lease (this node's own)"),
                (dual.is_none(), "--listen (dual-active service)"),
                (
                    self.pair_name.is_none(),
                    "--pair-name (both leases name the device alike)",
                ),
            ];
            if let Some((_, what)) = missing.iter().find(|(m, _)| *m) {
                return Err(Error::Config(format!(
                    "--other-lease {} needs {what}",
                    p.display()
                )));
            }
            if self.lease.as_ref() == Some(p) {
                return Err(Error::Config(format!(
                    "--other-lease {}: the same path as --lease; each node has its own lease",
                    p.display()
                )));
            }
        }
        if let (Some(t), None, None) = (&self.degraded_after, &self.pair_name, &self.lease) {
            return Err(Error::Config(format!(
                "--degraded-after {t} needs --pair-name (or --lease): a device that may start \
                 without its secondary must not take its identity from the secondary's path"
            )));
        }
        if let Some(max) = self.max_dirty {
            if max.bytes() < region_size {
                return Err(Error::Config(format!(
                    "--max-dirty {max} is smaller than one region ({})",
                    self.region_size
                )));
            }
        }
        let config = EngineConfig {
            max_dirty: self.max_dirty.map(Size::bytes),
            on_max_dirty: self.on_max_dirty,
            identity,
            peer,
            dual,
            lease,
            region_size,
            capacity: self.capacity.bytes(),
            policy: self.policy.clone(),
            mirror: MirrorConfig {
                threads: self.mirror_threads,
                max_copy_bytes: self.max_copy_size.bytes(),
                max_rate: self.max_copy_rate.map(Size::bytes),
                max_lag: self.max_lag.duration(),
                copy_buffer: self.copy_buffer.bytes(),
                ..MirrorConfig::default()
            },
            assume_clean: self.assume_clean,
            passthrough: self.passthrough,
            cache: self.cache,
            allow_missing_secondary: self.degraded_after.is_some(),
        };
        config.validate()?;
        Ok(config)
    }

    /// The longest a queue thread spins for a completion (`--poll`).
    pub fn poll_window(&self) -> Duration {
        self.poll.duration()
    }

    /// The command-line arguments that parse back into these (for starting
    /// the daemon with the same settings).
    pub fn to_cli_args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        let mut opt = |k: &str, val: std::ffi::OsString| {
            v.push(format!("--{k}").into());
            v.push(val);
        };
        opt("primary", self.primary.clone().into());
        opt("secondary", self.secondary.clone().into());
        opt("record", self.record.clone().into());
        opt("region-size", self.region_size.to_string().into());
        opt("capacity", self.capacity.to_string().into());
        opt("policy", self.policy.clone().into());
        opt("queues", self.queues.to_string().into());
        opt("depth", self.depth.to_string().into());
        opt("mirror-threads", self.mirror_threads.to_string().into());
        opt("max-copy-size", self.max_copy_size.to_string().into());
        opt("max-lag", self.max_lag.to_string().into());
        opt("copy-buffer", self.copy_buffer.to_string().into());
        opt("cache", self.cache.to_string().into());
        opt("poll", self.poll.to_string().into());
        if let Some(rate) = &self.max_copy_rate {
            opt("max-copy-rate", rate.to_string().into());
        }
        if let Some(t) = &self.degraded_after {
            opt("degraded-after", t.to_string().into());
        }
        if let Some(max) = &self.max_dirty {
            opt("max-dirty", max.to_string().into());
        }
        opt("on-max-dirty", self.on_max_dirty.to_string().into());
        if self.assume_clean {
            v.push("--assume-clean".into());
        }
        if self.passthrough {
            v.push("--passthrough".into());
        }
        if let Some(peer) = &self.peer {
            v.push("--peer".into());
            v.push(peer.into());
        }
        if let Some(listen) = &self.listen {
            v.push("--listen".into());
            v.push(listen.into());
        }
        if let Some(name) = &self.pair_name {
            v.push("--pair-name".into());
            v.push(name.into());
        }
        if let Some(id) = self.node_id {
            v.push("--node-id".into());
            v.push(id.to_string().into());
        }
        if let Some(p) = &self.other_lease {
            v.push("--other-lease".into());
            v.push(p.into());
        }
        if let Some(lease) = &self.lease {
            v.push("--lease".into());
            v.push(lease.into());
            v.push("--lease-timeout".into());
            v.push(self.lease_timeout.to_string().into());
        }
        v
    }

    /// Whether the secondary is missing and may stay so for a degraded
    /// start (`--degraded-after`); without that, a missing secondary is an
    /// error of `check_paths`.
    pub fn secondary_missing(&self) -> bool {
        self.degraded_after.is_some() && !crate::dev::present(&self.secondary)
    }

    pub fn paths(&self) -> Paths {
        Paths {
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
            record: self.record.clone(),
        }
    }

    /// Checks the paths without creating anything: the data devices exist and
    /// differ, the secondary is large enough. Names the bad value.
    pub fn check_paths(&self) -> Result<()> {
        let meta = |what: &str, p: &PathBuf| {
            std::fs::metadata(p).map_err(|e| Error::Config(format!("{what} {}: {e}", p.display())))
        };
        meta("--primary", &self.primary)?;
        let remote = crate::dev::nbd::is_uri(&self.secondary);
        // An NBD export's presence is known from the one connection below.
        let secondary_missing = !remote && self.secondary_missing();
        if remote {
            crate::dev::NbdUri::parse(&self.secondary.to_string_lossy())?;
        } else if !secondary_missing {
            meta("--secondary", &self.secondary)?;
            self.paths().check_distinct()?;
        }
        let size = |p: &PathBuf| -> Result<u64> {
            use crate::dev::OpenOptions;
            Ok(crate::dev::open_data(p, &OpenOptions::default())?.size())
        };
        let ps = size(&self.primary)?;
        let ss = if secondary_missing {
            u64::MAX
        } else {
            match size(&self.secondary) {
                // Unreachable, and the device may start degraded without it.
                Err(_) if remote && self.degraded_after.is_some() => u64::MAX,
                ss => ss?,
            }
        };
        if ps == 0 {
            return Err(Error::Config(format!(
                "--primary {} is empty (0 bytes)",
                self.primary.display()
            )));
        }
        if ss < ps {
            return Err(Error::Config(format!(
                "--secondary {} has {ss} bytes, smaller than --primary {} with {ps} bytes",
                self.secondary.display(),
                self.primary.display()
            )));
        }
        if let Some(parent) = self.record.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(Error::Config(format!(
                    "--record {}: directory {} does not exist",
                    self.record.display(),
                    parent.display()
                )));
            }
        }
        Ok(())
    }
}

/// A device name: used for the control socket and state file.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "device name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DeviceArgs {
        DeviceArgs {
            primary: "p".into(),
            secondary: "s".into(),
            record: "r".into(),
            region_size: "1MiB".parse().unwrap(),
            capacity: "1GiB".parse().unwrap(),
            policy: "predictive".into(),
            queues: 1,
            depth: 128,
            mirror_threads: 2,
            max_copy_rate: None,
            max_copy_size: "4MiB".parse().unwrap(),
            max_lag: "10s".parse().unwrap(),
            copy_buffer: "64MiB".parse().unwrap(),
            cache: Cache::None,
            poll: "300us".parse().unwrap(),
            assume_clean: false,
            passthrough: false,
            peer: None,
            listen: None,
            pair_name: None,
            node_id: None,
            lease: None,
            lease_timeout: default_lease_timeout(),
            other_lease: None,
            degraded_after: None,
            max_dirty: None,
            on_max_dirty: OverMaxDirty::Throttle,
        }
    }

    #[test]
    fn bad_values_are_named() {
        type Edit = Box<dyn Fn(&mut DeviceArgs)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|a| a.region_size = Size(3 << 20)), "3MiB"),
            (Box::new(|a| a.region_size = Size(32 << 10)), "32KiB"),
            (Box::new(|a| a.capacity = Size(4096)), "capacity 4096"),
            (Box::new(|a| a.policy = "magic".into()), "magic"),
            (Box::new(|a| a.queues = 0), "--queues 0"),
            (Box::new(|a| a.depth = 0), "--depth 0"),
            (Box::new(|a| a.mirror_threads = 0), "mirror threads 0"),
            (Box::new(|a| a.max_copy_rate = Some(Size(0))), "rate 0"),
            (Box::new(|a| a.poll = "1s".parse().unwrap()), "--poll 1s"),
            (Box::new(|a| a.node_id = Some(4)), "--node-id 4"),
            (
                Box::new(|a| {
                    a.listen = Some("127.0.0.1:7790".into());
                    a.pair_name = Some("vm7".into());
                }),
                "--listen 127.0.0.1:7790 needs --peer",
            ),
            (
                Box::new(|a| {
                    a.listen = Some("127.0.0.1:7790".into());
                    a.peer = Some("127.0.0.1:7789".into());
                    a.node_id = Some(1);
                }),
                "--listen 127.0.0.1:7790 needs --pair-name",
            ),
            (
                Box::new(|a| a.pair_name = Some("a b".into())),
                "--pair-name \"a b\"",
            ),
            (
                Box::new(|a| {
                    a.pair_name = Some("vm7".into());
                    a.listen = Some("anywhere".into());
                    a.peer = Some("127.0.0.1:7789".into());
                    a.node_id = Some(1);
                }),
                "--listen \"anywhere\": expected HOST:PORT",
            ),
            (
                Box::new(|a| a.peer = Some("[::1]:7789".into())),
                "--peer [::1]:7789 needs --node-id",
            ),
            (
                Box::new(|a| {
                    a.peer = Some("peer-host".into());
                    a.node_id = Some(1);
                }),
                "\"peer-host\": expected HOST:PORT",
            ),
            (
                Box::new(|a| {
                    a.peer = Some("127.0.0.1:0".into());
                    a.node_id = Some(1);
                }),
                "\"127.0.0.1:0\"",
            ),
            (
                Box::new(|a| {
                    a.peer = Some("127.0.0.1:7789".into());
                    a.node_id = Some(1);
                    a.passthrough = true;
                }),
                "with --passthrough",
            ),
            (
                Box::new(|a| a.lease = Some("/shared/lease".into())),
                "--lease /shared/lease needs --node-id",
            ),
            (
                Box::new(|a| {
                    a.lease = Some("/shared/lease".into());
                    a.node_id = Some(1);
                    a.lease_timeout = "50ms".parse().unwrap();
                }),
                "--lease-timeout 50ms",
            ),
            (
                Box::new(|a| {
                    a.lease = Some("/shared/lease".into());
                    a.node_id = Some(0);
                }),
                "--node-id 0",
            ),
            (
                Box::new(|a| {
                    a.pair_name = Some("vm7".into());
                    a.listen = Some("127.0.0.1:7790".into());
                    a.peer = Some("127.0.0.1:7789".into());
                    a.node_id = Some(1);
                    a.other_lease = Some("/shared/lease-b".into());
                }),
                "--other-lease /shared/lease-b needs --lease",
            ),
            (
                Box::new(|a| {
                    a.lease = Some("/shared/lease-a".into());
                    a.node_id = Some(1);
                    a.other_lease = Some("/shared/lease-b".into());
                }),
                "--other-lease /shared/lease-b needs --listen",
            ),
            (
                Box::new(|a| {
                    a.pair_name = Some("vm7".into());
                    a.listen = Some("127.0.0.1:7790".into());
                    a.peer = Some("127.0.0.1:7789".into());
                    a.node_id = Some(1);
                    a.lease = Some("/shared/lease-a".into());
                    a.other_lease = Some("/shared/lease-a".into());
                }),
                "the same path as --lease",
            ),
        ];
        for (edit, needle) in cases {
            let mut a = args();
            edit(&mut a);
            let e = a.engine_config().unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should name {needle:?}");
        }
        assert!(args().engine_config().is_ok());
        // A good peer: its state file sits beside the record.
        let mut a = args();
        a.peer = Some("[::1]:7789".into());
        a.node_id = Some(1);
        let peer = a.engine_config().unwrap().peer.unwrap();
        assert_eq!(peer.node, 1);
        assert!(peer.state.to_string_lossy().ends_with(".peer"));
    }

    #[cfg(feature = "cli")]
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        a: DeviceArgs,
    }

    #[cfg(feature = "cli")]
    #[test]
    fn values_that_do_not_parse_are_named_on_the_command_line() {
        let base = ["x", "--primary", "p", "--secondary", "s", "--record", "r"];
        for (flag, bad) in [
            ("--capacity", "lots"),
            ("--region-size", "1.5MiB"),
            ("--max-lag", "later"),
            ("--cache", "sometimes"),
            ("--poll", "eager"),
            ("--max-copy-rate", "fast"),
            ("--max-dirty", "plenty"),
            ("--on-max-dirty", "panic"),
        ] {
            let mut argv: Vec<&str> = base.to_vec();
            argv.extend([flag, bad]);
            let e = <P as clap::Parser>::try_parse_from(argv)
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains(bad) && e.contains(flag), "{e}");
        }
    }

    #[test]
    fn max_dirty_is_at_least_a_region() {
        let mut a = args();
        a.max_dirty = Some("64KiB".parse().unwrap());
        let e = a.engine_config().unwrap_err().to_string();
        assert!(e.contains("--max-dirty 64KiB") && e.contains("1MiB"), "{e}");
        a.max_dirty = Some("8MiB".parse().unwrap());
        let c = a.engine_config().unwrap();
        assert_eq!(c.max_dirty, Some(8 << 20));
        assert_eq!(c.on_max_dirty, OverMaxDirty::Throttle);
    }

    #[test]
    fn values_that_do_not_parse_are_named_in_files() {
        // A file (the state file here; a config file later) with a bad value
        // or an unknown key is refused with the key and the value named.
        let mut v = serde_json::to_value(args()).unwrap();
        v["capacity"] = "lots".into();
        let e = serde_json::from_value::<DeviceArgs>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lots"), "{e}");
        let mut v = serde_json::to_value(args()).unwrap();
        v["capacty"] = "1GiB".into();
        let e = serde_json::from_value::<DeviceArgs>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("capacty"), "{e}");
    }

    #[cfg(feature = "cli")]
    #[test]
    fn cli_args_round_trip() {
        let mut a = args();
        a.max_copy_rate = Some("10MiB".parse().unwrap());
        a.max_lag = "250ms".parse().unwrap();
        a.copy_buffer = "0".parse().unwrap();
        a.cache = Cache::Writeback;
        a.poll = "0".parse().unwrap();
        a.assume_clean = true;
        a.passthrough = true;
        a.max_dirty = Some("256MiB".parse().unwrap());
        a.on_max_dirty = OverMaxDirty::PullAhead;
        let mut argv: Vec<std::ffi::OsString> = vec!["x".into()];
        argv.extend(a.to_cli_args());
        let p = <P as clap::Parser>::try_parse_from(argv).unwrap();
        assert_eq!(p.a, a);
    }

    #[test]
    fn state_files_written_before_max_lag_cache_and_poll_existed_still_load() {
        let mut v = serde_json::to_value(args()).unwrap();
        for key in ["max_lag", "cache", "poll", "copy_buffer"] {
            v.as_object_mut().unwrap().remove(key).unwrap();
        }
        let a: DeviceArgs = serde_json::from_value(v).unwrap();
        assert_eq!(a.max_lag.to_string(), "10s");
        assert_eq!(a.cache, Cache::None);
        assert_eq!(a.poll.to_string(), "300us");
        assert_eq!(a, args());
        // Sizes written as strings by older versions read as the same values.
        let mut v = serde_json::to_value(args()).unwrap();
        v["capacity"] = "1024MiB".into();
        let a: DeviceArgs = serde_json::from_value(v).unwrap();
        assert_eq!(a, args());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("vm-disk_1.a").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_checked_before_anything_is_created() {
        let d = tempfile::tempdir().unwrap();
        let mut a = args();
        a.primary = d.path().join("p");
        a.secondary = d.path().join("s");
        a.record = d.path().join("r");
        let e = a.check_paths().unwrap_err().to_string();
        assert!(e.contains("--primary") && e.contains("/p"), "{e}");
        std::fs::File::create(&a.primary)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        std::fs::File::create(&a.secondary)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let e = a.check_paths().unwrap_err().to_string();
        assert!(
            e.contains("smaller") && e.contains("2097152") && e.contains("1048576"),
            "{e}"
        );
        let mut same = a.clone();
        same.secondary = a.primary.clone();
        assert!(same
            .check_paths()
            .unwrap_err()
            .to_string()
            .contains("same file"));
        std::fs::File::create(&a.secondary)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        a.check_paths().unwrap();
        assert!(!a.record.exists(), "checking created nothing");

        // A secondary on an NBD server: its URI stays as given, a bad one
        // is named, an unreachable one is an error that names it.
        let mut remote = a.clone();
        remote.secondary = "nbd://h:99999/x".into();
        remote.make_absolute().unwrap();
        assert_eq!(remote.secondary, PathBuf::from("nbd://h:99999/x"));
        let e = remote.check_paths().unwrap_err().to_string();
        assert!(e.contains("nbd://h:99999/x") && e.contains("port"), "{e}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        remote.secondary = format!("nbd://127.0.0.1:{port}/x").into();
        let e = remote.check_paths().unwrap_err().to_string();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        remote.degraded_after = Some("1s".parse().unwrap());
        assert!(remote.secondary_missing(), "unreachable counts as missing");
    }
}
