//! `tandem-target`: the daemon serving one mirrored `/dev/ublkbN`.
//!
//! Usually started by `tandemctl add` (which daemonizes it and waits for the
//! device to be live); `serve` runs in the foreground.

mod daemon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tandem::args::{DeviceArgs, DEFAULT_RUN_DIR};

#[derive(Parser)]
#[command(
    name = "tandem-target",
    version,
    about = "Serves a mirrored block device through ublk"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve device NAME in the foreground until stopped.
    Serve {
        /// Device name (for tandemctl, the control socket and the state file).
        name: String,
        #[command(flatten)]
        args: Box<DeviceArgs>,
        /// Directory for the control socket and state file.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Reattach to the existing device NAME whose daemon died.
        #[arg(long)]
        recover: bool,
        /// Report `ok DEV_ID` or `err MESSAGE` on this file descriptor.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
    /// Serve device NAME as its config file (`CONFIG_DIR/NAME.toml`) says, in
    /// the foreground until stopped: what `tandem@NAME.service` runs. A
    /// device whose daemon died is reattached (user recovery); under systemd
    /// it notifies READY once `/dev/tandem/NAME` is there.
    Start {
        /// Device name: its config file is `CONFIG_DIR/NAME.toml`.
        name: String,
        /// Directory of the config files.
        #[arg(long, default_value = tandem::config::DEFAULT_CONFIG_DIR, env = "TANDEM_CONFIG_DIR")]
        config_dir: PathBuf,
        /// Directory for the control socket and state file.
        #[arg(long, default_value = DEFAULT_RUN_DIR, env = "TANDEM_RUN_DIR")]
        run_dir: PathBuf,
    },
    /// Check that this kernel can serve ublk devices.
    Check,
    /// Write the man pages (tandem-target.1 and one per command) into DIR.
    #[command(hide = true)]
    GenDocs { dir: PathBuf },
    /// Delete ublk device ID whose daemon is gone (used by `tandemctl del`).
    DelDev { id: u32 },
    /// Hold the records of peer nodes' devices (the second appliance), in
    /// the foreground until SIGTERM or SIGINT.
    Hold {
        /// Address to listen on, HOST:PORT (e.g. [::1]:7789).
        #[arg(long)]
        listen: String,
        /// Directory for the held records, one region file per device.
        #[arg(long)]
        dir: PathBuf,
        /// This node's id, unique in the pair.
        #[arg(long)]
        node_id: u64,
        /// A device to take over when its owner's lease expires:
        /// lease=PATH,primary=PATH,secondary=PATH (this node's paths to the
        /// shared storage). Repeat for each device.
        #[arg(long, value_name = "SPEC")]
        takeover: Vec<tandem::peer::TakeoverSpec>,
        /// Where the holder's control socket (`hold.sock`) goes, for
        /// `tandemctl holder`.
        #[arg(long, default_value = tandem::args::DEFAULT_RUN_DIR, env = "TANDEM_RUN_DIR")]
        run_dir: PathBuf,
    },
}

/// A panic on any thread ends the process at once, after the message is
/// logged. A queue thread that died quietly would leave its requests
/// unanswered while the daemon still looks alive; a dead daemon is what the
/// device's user recovery and the service's restart are built for (the
/// record then lists every region that may differ).
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        log::error!("{info}; the daemon stops now (recover the device to go on)");
        log::logger().flush();
        std::process::abort();
    }));
}

fn main() {
    let cli = Cli::parse();
    daemon::systemd::init_logging(match &cli.cmd {
        Cmd::Serve { name, .. } | Cmd::Start { name, .. } => Some(name),
        _ => None,
    });
    abort_on_panic();
    let r = match cli.cmd {
        Cmd::Serve {
            name,
            mut args,
            run_dir,
            recover,
            ready_fd,
        } => args
            .make_absolute()
            .and_then(|()| tandem::args::absolute(&run_dir))
            .map_err(anyhow::Error::from)
            .and_then(|run_dir| {
                daemon::serve(daemon::Options {
                    name,
                    args: *args,
                    run_dir,
                    recover,
                    ready_fd,
                })
            }),
        Cmd::Start {
            name,
            config_dir,
            run_dir,
        } => tandem::args::absolute(&run_dir)
            .map_err(anyhow::Error::from)
            .and_then(|run_dir| daemon::start(&name, &config_dir, run_dir)),
        Cmd::GenDocs { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| {
                use clap::CommandFactory;
                clap_mangen::generate_to(Cli::command(), &dir)
            })
            .map_err(|e| anyhow::anyhow!("write man pages to {}: {e}", dir.display())),
        Cmd::Check => daemon::check_ublk().map(|()| println!("ublk is available")),
        Cmd::DelDev { id } => daemon::delete_device(id),
        Cmd::Hold {
            listen,
            dir,
            node_id,
            takeover,
            run_dir,
        } => hold(&listen, &dir, node_id, takeover, &run_dir),
    };
    if let Err(e) = r {
        eprintln!("tandem-target: {e:#}");
        std::process::exit(1);
    }
}

/// Serves the holder until SIGTERM or SIGINT.
fn hold(
    listen: &str,
    dir: &std::path::Path,
    node: u64,
    takeover: Vec<tandem::peer::TakeoverSpec>,
    run_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use nix::sys::signal::{SigSet, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    tandem::peer::check_address(listen)?;
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    let holder = Arc::new(tandem::peer::Holder::new(dir, node)?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("block signals")?;
    let s = stop.clone();
    std::thread::spawn(move || {
        loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => log::info!("SIGHUP: ignored"),
                Ok(sig) => {
                    log::info!("{sig}: stopping");
                    break;
                }
                Err(_) => break,
            }
        }
        s.store(true, Ordering::Release);
    });
    tandem::control::make_run_dir(run_dir)?;
    let (h, s) = (holder.clone(), stop.clone());
    tandem::control::serve(
        &run_dir.join(tandem::control::HOLDER_SOCKET),
        Arc::new(move |req| match req {
            tandem::control::Request::Status => {
                serde_json::to_value(h.status()).expect("a holder status serializes")
            }
            tandem::control::Request::Stop => {
                s.store(true, Ordering::Release);
                serde_json::json!({"stopping": true})
            }
            tandem::control::Request::Fence { .. } => {
                serde_json::json!({"error": "a holder serves no device and has no lease to give up"})
            }
            _ => serde_json::json!({"error": "a holder serves no device: ask the device's daemon"}),
        }),
    )?;
    for spec in takeover {
        let (holder, stop) = (holder.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tandem-takeover".into())
            .spawn(move || {
                if let Err(e) = holder.watch(&spec, &stop, |_| {}) {
                    log::error!("takeover watch on {}: {e}", spec.lease.display());
                }
            })
            .context("spawn a takeover watch")?;
    }
    log::info!(
        "node {node} holds peer records in {} on {}",
        dir.display(),
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    holder.serve(listener, stop)?;
    Ok(())
}
