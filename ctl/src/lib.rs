//! tandemctl as a library: the command line (`Cli`), its argument parsers, and
//! one module per subcommand. `main.rs` only parses, calls and prints, so every
//! command is testable without spawning a process.
//!
//! - [`device`]: add, list, status, wait-synced, del, recover.
//! - [`events`]: the stream of state changes.
//! - [`metrics`]: the host's metrics endpoint (Prometheus text format).
//! - [`ops`]: verify, set, pause, resume, invalidate (a running device).
//! - [`pair`]: lease, promote, fence (two appliances).
//! - [`simulate`]: replays a block trace through the record and its policies.
//! - [`system`]: config files, systemd (enable, disable, the generator) and
//!   the udev rule's helper.

pub mod device;
pub mod events;
pub mod metrics;
pub mod ops;
pub mod pair;
pub mod simulate;
pub mod system;

use std::path::PathBuf;

use clap::{Args, Parser};

/// tandemctl: control tool for tandem mirrored devices.
#[derive(Debug, Parser)]
#[command(name = "tandemctl", version, about)]
pub enum Cli {
    /// Create a mirrored device: start its daemon and print the device path
    /// once it is live.
    Add {
        /// Device name (used by the other commands).
        name: String,
        #[command(flatten)]
        args: Box<tandem::args::DeviceArgs>,
        #[command(flatten)]
        common: Common,
    },
    /// Manage a device through systemd: write its config file
    /// (`CONFIG_DIR/NAME.toml`, the same arguments as `add`) and start
    /// `tandem@NAME.service`. It starts again at every boot once its
    /// primary appears, as `/dev/tandem/NAME`.
    Enable {
        /// Device name (used by the other commands).
        name: String,
        #[command(flatten)]
        args: Box<tandem::args::DeviceArgs>,
        /// Directory of the config files.
        #[arg(long, default_value = tandem::config::DEFAULT_CONFIG_DIR, env = "TANDEM_CONFIG_DIR")]
        config_dir: PathBuf,
        /// Only write the config file (it starts at the next boot, or when
        /// its primary appears after a `systemctl daemon-reload`).
        #[arg(long)]
        no_start: bool,
        /// Replace an existing config file with other settings.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a device managed through systemd (a clean stop: the device is
    /// deleted) and remove its config file: it no longer starts at boot.
    Disable {
        name: String,
        /// Directory of the config files.
        #[arg(long, default_value = tandem::config::DEFAULT_CONFIG_DIR, env = "TANDEM_CONFIG_DIR")]
        config_dir: PathBuf,
        /// Only remove the config file; leave the running device alone.
        #[arg(long)]
        no_stop: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Compare the regions the record says are clean, primary against
    /// secondary, while I/O goes on; progress on stderr, a JSON summary on
    /// stdout. Exits 1 when regions differ (and are not repaired).
    Verify {
        name: String,
        /// Put mismatched regions in the record as dirty: the mirror copies
        /// them again.
        #[arg(long)]
        repair: bool,
        /// Read at most this many bytes per second from each device (e.g.
        /// 50MiB).
        #[arg(long, value_parser = parse_size)]
        max_rate: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Change settings of a running device (until its daemon restarts; the
    /// config file or `add`'s arguments give them for good).
    Set {
        name: String,
        /// Copy bandwidth cap (e.g. 100MiB), or `none`.
        #[arg(long, value_parser = ops::parse_rate)]
        max_copy_rate: Option<u64>,
        /// How long copies may wait for heavy host I/O (e.g. 10s, 0).
        #[arg(long)]
        max_lag: Option<tandem::units::TimeSpan>,
        #[command(flatten)]
        common: Common,
    },
    /// Pause mirroring: nothing is copied; the record keeps every written
    /// region, so `resume` catches up.
    Pause {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Resume mirroring after `pause`.
    Resume {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Copy the whole device to the secondary again (a full resync).
    Invalidate {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print a line for every change of state of the devices on this host
    /// (`exists` for each first, then `state`, `created`, `removed`,
    /// `peer-lost`, `mirror-paused`, `verify-done`, ...), until killed.
    Events {
        /// Print the devices as they are (the `exists` lines) and exit.
        #[arg(long)]
        once: bool,
        /// How often the daemons are asked, in milliseconds.
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Serve the metrics of every device on this host over HTTP (GET
    /// /metrics, the Prometheus/OpenMetrics text format), or print them
    /// once.
    Metrics {
        /// Address to serve on, HOST:PORT.
        #[arg(long, default_value = metrics::DEFAULT_LISTEN)]
        listen: String,
        /// Print one scrape to stdout and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The systemd generator (run by systemd, through
    /// /usr/lib/systemd/system-generators/tandem-generator): writes the units
    /// of the devices configured in /etc/tandem into the first directory.
    /// Never fails the boot: problems are printed, and it exits 0.
    #[command(hide = true)]
    SystemdGenerator {
        /// NORMAL_DIR [EARLY_DIR LATE_DIR], as systemd gives them.
        dirs: Vec<std::path::PathBuf>,
    },
    /// Write the man pages (tandemctl.1 and one per command) and the shell
    /// completions (bash, zsh, fish) into DIR, from this command line's
    /// definitions (for packaging).
    #[command(hide = true)]
    GenDocs { dir: PathBuf },
    /// The udev rule's helper: prints the name under /dev/tandem/ of a
    /// kernel block device that tandem serves (`ublkb3` gives `NAME`,
    /// `ublkb3p1` gives `NAME-part1`); exits 1 for any other.
    #[command(hide = true)]
    UdevName {
        /// The kernel's name of the block device (udev's %k).
        kernel: String,
        #[command(flatten)]
        common: Common,
    },
    /// List devices.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Show a device's state, record and mirror figures.
    Status {
        name: String,
        /// Print only this field of the JSON status, as plain text (a string
        /// without quotes, `null` as an empty line), for scripts. Repeat it
        /// for several fields of one snapshot, one line each, in that order.
        #[arg(long, value_name = "FIELD")]
        field: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Wait until nothing is dirty (secondary caught up, resync done).
    WaitSynced {
        name: String,
        /// Give up after this many seconds (default: wait for ever).
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a device's daemon cleanly and delete the device.
    Del {
        name: String,
        /// Seconds to wait for the daemon to stop.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Restart the daemon of a device whose daemon died; the device stays,
    /// host I/O resumes, and the record drives the resync.
    Recover {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Show what a device's lease says: its owner, generation, whether it
    /// is held or released.
    Lease {
        /// The lease file or device.
        path: PathBuf,
        /// Print JSON instead of text (`null` for a blank lease).
        #[arg(long)]
        json: bool,
    },
    /// Serve here a device that the peer node owned: once its lease is this
    /// node's (taken over by the holder, or here once the owner's lease has
    /// expired: never while it is alive), the record held for it becomes
    /// `--record` and the device is added as `add` does.
    Promote {
        name: String,
        /// The holder's directory (`tandem-target hold --dir`).
        #[arg(long)]
        holder_dir: PathBuf,
        /// Seconds to wait for the owner's lease to expire.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        #[command(flatten)]
        args: Box<tandem::args::DeviceArgs>,
        #[command(flatten)]
        common: Common,
    },
    /// Show this node's record holder (`tandem-target hold`): the records it
    /// holds for its peers, the leases it watches, the takeovers it made.
    Holder {
        #[command(flatten)]
        common: Common,
    },
    /// Fence a device now: its daemon gives up the lease and acknowledges
    /// no write from then on (for a cluster manager, as Pacemaker fences
    /// DRBD). `tandemctl del` then stops it.
    Fence {
        name: String,
        /// Why, for the device's log and status.
        #[arg(long, default_value = "tandemctl fence")]
        reason: String,
        #[command(flatten)]
        common: Common,
    },
    /// Replay the writes of a block trace through record policies and report
    /// how many synchronous record updates each needs and how large the record
    /// grows (what a crash would resync).
    Simulate(SimulateArgs),
}

/// Options every device command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Directory of the daemons' control sockets and state files.
    #[arg(long, default_value = tandem::args::DEFAULT_RUN_DIR, env = "TANDEM_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tandemctl simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Trace file: CSV `ts_us,op,offset_bytes,len_bytes`, op `R` or `W`.
    #[arg(long)]
    pub trace: PathBuf,
    /// Policy to replay: one of `simulate::POLICY_NAMES`, or `all`.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Region size of the `lru` and `predictive` policies.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub region_size: u64,
    /// Capacity for clean regions, in bytes (`lru`, `predictive`, `drbd-al`).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub capacity: u64,
    /// Time one durable record update takes, in microseconds.
    #[arg(long, default_value_t = 100)]
    pub destage_latency_us: u64,
    /// Print a JSON array, one object per policy, instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The errors of tandemctl: a kind, the context, the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A trace line could not be understood.
    #[error("{path}:{line}: {reason}")]
    Trace {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// An argument was rejected; the message names it.
    #[error("{0}")]
    Usage(String),
    /// The tandem library refused or failed.
    #[error(transparent)]
    Tandem(#[from] tandem::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Cli {
    /// Whether the command asked for JSON output (its errors are JSON too).
    pub fn json(&self) -> bool {
        match self {
            Cli::Add { common, .. }
            | Cli::List { common }
            | Cli::Status { common, .. }
            | Cli::WaitSynced { common, .. }
            | Cli::Del { common, .. }
            | Cli::Recover { common, .. }
            | Cli::Promote { common, .. }
            | Cli::Fence { common, .. }
            | Cli::Holder { common }
            | Cli::Enable { common, .. }
            | Cli::Disable { common, .. }
            | Cli::UdevName { common, .. }
            | Cli::Verify { common, .. }
            | Cli::Set { common, .. }
            | Cli::Pause { common, .. }
            | Cli::Resume { common, .. }
            | Cli::Invalidate { common, .. }
            | Cli::Metrics { common, .. }
            | Cli::Events { common, .. } => common.json,
            Cli::Lease { json, .. } => *json,
            Cli::SystemdGenerator { .. } | Cli::GenDocs { .. } => false,
            Cli::Simulate(a) => a.json,
        }
    }
}

/// An error as JSON: `error` (the message), `kind` (stable: `config`, `io`,
/// `corruption`, `out_of_range`, `record`, `stopped`, `usage`, `trace`, or
/// `other`) and, where one is known, `errno` (positive).
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let mut kind = "other";
    let mut errno = None;
    for cause in e.chain() {
        if let Some(t) = cause.downcast_ref::<tandem::Error>() {
            kind = t.kind();
            errno = Some(-t.errno());
            break;
        }
        if let Some(c) = cause.downcast_ref::<Error>() {
            kind = match c {
                Error::Io { .. } => "io",
                Error::Trace { .. } => "trace",
                Error::Usage(_) => "usage",
                Error::Tandem(t) => t.kind(),
            };
            if let Error::Tandem(t) = c {
                errno = Some(-t.errno());
            }
            if let Error::Io { source, .. } = c {
                errno = source.raw_os_error();
            }
            break;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            kind = "io";
            errno = io.raw_os_error();
            break;
        }
    }
    serde_json::json!({ "error": format!("{e:#}"), "kind": kind, "errno": errno })
}

/// Parses a size in bytes for clap: `tandem::units::parse_size`, the parser
/// the daemon's arguments use too (`4096`, `64KiB`, `1M`, `1GiB`, ...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    tandem::units::parse_size(text).map_err(|e| match e {
        tandem::Error::Config(msg) => msg,
        other => other.to_string(),
    })
}

/// The man pages and shell completions of tandemctl, into `dir` (`man/`,
/// `completions/`), generated from the clap definitions.
pub fn gen_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let cmd = Cli::command().name("tandemctl");
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("write man pages to {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "tandemctl", &comp)
            .with_context(|| format!("write {shell} completions to {}", comp.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn bad_sizes_name_the_value() {
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "1MB",
            "1 parsec",
            "-1",
            "99999999999999999999",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn errors_as_json_keep_their_kind_and_errno() {
        let e = anyhow::Error::from(tandem::Error::io(
            "open record /x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ))
        .context("add vm1");
        let v = error_json(&e);
        assert_eq!(v["kind"], "io");
        assert_eq!(v["errno"], libc::ENOSPC);
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("add vm1") && msg.contains("open record /x"),
            "{msg}"
        );
        let v = error_json(&anyhow::Error::from(tandem::Error::Config(
            "--queues 0".into(),
        )));
        assert_eq!(v["kind"], "config");
        assert_eq!(v["errno"], libc::EINVAL);
        let v = error_json(&anyhow::anyhow!("no device named \"x\""));
        assert_eq!(v["kind"], "other");
        assert!(v["errno"].is_null());
        // Every command knows whether it was asked for JSON.
        let cli = Cli::try_parse_from(["tandemctl", "status", "vm1", "--json"]).unwrap();
        assert!(cli.json());
        let cli = Cli::try_parse_from(["tandemctl", "list"]).unwrap();
        assert!(!cli.json());
    }

    #[test]
    fn cli_parses_simulate() {
        let Cli::Simulate(a) = Cli::try_parse_from([
            "tandemctl",
            "simulate",
            "--trace",
            "t.csv",
            "--region-size",
            "64KiB",
            "--json",
        ])
        .unwrap() else {
            panic!("not parsed as simulate");
        };
        assert_eq!(a.region_size, 64 << 10);
        assert_eq!(a.capacity, 1 << 30);
        assert_eq!(a.destage_latency_us, 100);
        assert_eq!(a.policy, "all");
        assert!(a.json);
        let e = Cli::try_parse_from(["tandemctl", "simulate", "--trace", "t", "--capacity", "1X"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"1X\""), "{e}");
    }
}
