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
    /// Check that this kernel can serve ublk devices.
    Check,
    /// Delete ublk device ID whose daemon is gone (used by `tandemctl del`).
    DelDev { id: u32 },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
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
        Cmd::Check => daemon::check_ublk().map(|()| println!("ublk is available")),
        Cmd::DelDev { id } => daemon::delete_device(id),
    };
    if let Err(e) = r {
        eprintln!("tandem-target: {e:#}");
        std::process::exit(1);
    }
}
