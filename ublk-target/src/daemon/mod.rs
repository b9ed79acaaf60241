//! The daemon: serves one mirrored device as `/dev/ublkbN` through libublk.
//!
//! Start-up is a handshake: the caller (`tandemctl add`) passes a pipe as
//! `--ready-fd` and reads one line back, `ok DEV_ID` once the device is live or
//! `err MESSAGE`. The device is created with `UBLK_F_USER_RECOVERY` and
//! `UBLK_F_USER_RECOVERY_REISSUE`: if the daemon dies, `/dev/ublkbN` stays, host
//! I/O waits, and `serve --recover` reattaches a new daemon. SIGTERM, SIGINT or
//! a `stop` request stop it cleanly: queues drain, the record is made durable,
//! and the device is deleted. SIGHUP does not stop it (a closed terminal, a
//! reload). Under systemd it says READY once the device and its stable name
//! are there (`systemd`).

mod poll;
mod queue;
pub mod systemd;

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};
use nix::sys::signal::{SigSet, Signal};
use tandem::args::{check_name, DeviceArgs};
use tandem::control::{self, pid_alive, DeviceState, DeviceStatus, Request, RunFiles};
use tandem::status::State;
use tandem::Engine;

/// Largest request the device accepts.
const IO_BUF_BYTES: u32 = 512 << 10;

/// How to serve.
pub struct Options {
    pub name: String,
    pub args: DeviceArgs,
    pub run_dir: PathBuf,
    /// Reattach to an existing device whose daemon died.
    pub recover: bool,
    /// Where to report readiness (a pipe from `tandemctl add`).
    pub ready_fd: Option<RawFd>,
}

/// Reports the start-up outcome once.
struct Ready(Option<File>);

impl Ready {
    fn new(fd: Option<RawFd>) -> Self {
        // SAFETY: the fd was handed to us on the command line for this purpose
        // and is owned by nothing else in this process.
        Ready(fd.map(|fd| unsafe { File::from_raw_fd(fd) }))
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Serves until stopped; errors before the device is live are reported on
/// the ready fd as well.
pub fn serve(opts: Options) -> Result<()> {
    let mut ready = Ready::new(opts.ready_fd);
    let r = serve_inner(&opts, &mut ready);
    if let Err(e) = &r {
        ready.send(&format!("err {e:#}").replace('\n', " "));
    }
    r
}

/// Serves device `name` from its config file: a device whose daemon died
/// (its state file names a dead pid, its ublk device is still there) is
/// reattached with the arguments it was created with; a state file left
/// without its device (a reboot with a persistent run directory) is removed.
pub fn start(name: &str, config_dir: &Path, run_dir: PathBuf) -> Result<()> {
    check_name(name)?;
    let path = tandem::config::path(config_dir, name);
    let args = tandem::config::load(&path)?;
    let files = RunFiles::new(&run_dir, name);
    let (args, recover) = match files.read_state()? {
        Some(st) if pid_alive(st.pid) && st.pid != std::process::id() => bail!(
            "device {name:?} is already served by pid {} as {}",
            st.pid,
            st.device_path()
        ),
        Some(st) if Path::new(&format!("/dev/ublkc{}", st.dev_id)).exists() => {
            if st.args != args {
                log::warn!(
                    "{name}: {} changed since {} was created; reattaching it as it was \
                     created, the changes apply at its next start",
                    path.display(),
                    st.device_path()
                );
            }
            log::info!("{name}: reattaching {} (its daemon died)", st.device_path());
            (st.args, true)
        }
        Some(st) => {
            log::info!(
                "{name}: {} is gone; removing its stale state file",
                st.device_path()
            );
            files.remove();
            (args, false)
        }
        None => (args, false),
    };
    serve(Options {
        name: name.to_string(),
        args,
        run_dir,
        recover,
        ready_fd: None,
    })
}

/// Checks that the kernel has ublk.
pub fn check_ublk() -> Result<()> {
    control::check_ublk().map_err(Into::into)
}

/// Makes sure the daemon holds nothing on any filesystem that might live on a
/// ublk device: its working directory moves to `/`. (The daemon shares the
/// host's mount namespace on purpose: a private copy of the mount table would
/// keep every filesystem mounted when it started alive after the host
/// unmounts it, its own device's included, and the kernel's delete of such a
/// device waits for that last opener for ever.)
fn hold_no_mounts() -> Result<()> {
    std::env::set_current_dir("/").context("change the working directory to /")
}

fn serve_inner(opts: &Options, ready: &mut Ready) -> Result<()> {
    check_name(&opts.name)?;
    let config = opts.args.engine_config()?;
    opts.args.check_paths()?;
    check_ublk()?;
    control::make_run_dir(&opts.run_dir)?;
    let files = RunFiles::new(&opts.run_dir, &opts.name);
    let previous = files.read_state()?;
    let recover_id = match (&previous, opts.recover) {
        (Some(st), _) if st.pid != std::process::id() && pid_alive(st.pid) => bail!(
            "device name {:?} is in use: {} is served by pid {}",
            opts.name,
            st.device_path(),
            st.pid
        ),
        (Some(st), false) => bail!(
            "device name {:?} is in use: {} exists but its daemon (pid {}) is gone; \
             run `tandemctl recover {}` to reattach it or `tandemctl del {}` to remove it",
            opts.name,
            st.device_path(),
            st.pid,
            opts.name,
            opts.name
        ),
        (Some(st), true) => Some(st.dev_id),
        (None, true) => bail!(
            "nothing to recover: no device named {:?} in {}",
            opts.name,
            opts.run_dir.display()
        ),
        (None, false) => None,
    };

    // Signals go to one thread, which stops the device; block them everywhere
    // else before any thread exists.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("block signals")?;
    hold_no_mounts()?;
    wait_for_secondary(opts);

    // Dual-active: this node's holder listens before the engine opens, so
    // that the other node can hand it its record meanwhile.
    let node = config.peer.as_ref().map_or(0, |p| p.node);
    let dual = config
        .dual
        .as_ref()
        .map(|d| start_holder(d, node))
        .transpose()?;
    let engine = Arc::new(Engine::open(opts.args.paths().open(&config)?, &config)?);
    if let (Some((holder, stop)), Some(pc)) = (&dual, &config.peer) {
        let g = *engine.geometry();
        let hello = tandem::peer::wire::Hello {
            node: pc.node,
            identity: engine.identity(),
            generation: 0,
            device_size: g.device_size(),
            region_size: g.region_size(),
        };
        let link = tandem::peer::checks::CheckLink::new(&pc.address, hello, stop.clone())?;
        engine.go_dual(holder, link)?;
        if let Some(path) = config.dual.as_ref().and_then(|d| d.other_lease.as_ref()) {
            engine.watch_other(holder, path, stop.clone())?;
            log::info!(
                "{}: watching the other node's lease {}",
                opts.name,
                path.display()
            );
        }
        log::info!(
            "{}: dual-active with the node at {}, holding its record here",
            opts.name,
            pc.address
        );
    }
    let start = engine.status();
    log::info!(
        "{}: primary {}, secondary {}, record {} ({:?}), resync {} bytes",
        opts.name,
        opts.args.primary.display(),
        opts.args.secondary.display(),
        opts.args.record.display(),
        start.start,
        start.resync_total_bytes
    );

    let ctrl_flags = (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;
    let (id, dev_flags) = match recover_id {
        Some(id) => {
            let old = UblkCtrl::new_simple(id as i32)
                .map_err(|e| anyhow!("ublk device {id} is gone ({e}); nothing to recover"))?;
            old.start_user_recover()
                .map_err(|e| anyhow!("start user recovery of ublk device {id}: {e}"))?;
            (id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        }
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("tandem")
        .id(id)
        .nr_queues(opts.args.queues)
        .depth(opts.args.depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags(ctrl_flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| anyhow!("create ublk device: {e}"))?;
    // The state file names the device before the kernel announces its
    // disk: the udev rule's helper (`tandemctl udev-name`) finds the name
    // of ublkbN there for /dev/tandem/NAME.
    let early = DeviceState {
        name: opts.name.clone(),
        dev_id: ctrl.dev_info().dev_id,
        pid: std::process::id(),
        args: opts.args.clone(),
    };
    if let Err(e) = files.write_state(&early) {
        if recover_id.is_none() {
            let _ = ctrl.del_dev();
        }
        return Err(e.into());
    }

    let primary = engine.primary().clone();
    let tgt_init = move |dev: &mut UblkDev| {
        let size = primary.size();
        let lbs = primary.logical_block_size().max(512);
        let pbs = primary.physical_block_size().max(lbs);
        dev.tgt.dev_size = size;
        let mut params = sys::ublk_params {
            types: sys::UBLK_PARAM_TYPE_BASIC,
            basic: sys::ublk_param_basic {
                attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
                logical_bs_shift: lbs.trailing_zeros() as u8,
                physical_bs_shift: pbs.trailing_zeros() as u8,
                io_opt_shift: 12,
                io_min_shift: lbs.trailing_zeros() as u8,
                max_sectors: dev.dev_info.max_io_buf_bytes >> 9,
                dev_sectors: size >> 9,
                ..Default::default()
            },
            ..Default::default()
        };
        if primary.supports_discard() {
            params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
            params.discard = sys::ublk_param_discard {
                discard_granularity: pbs,
                max_discard_sectors: u32::MAX >> 9,
                max_write_zeroes_sectors: u32::MAX >> 9,
                max_discard_segments: 1,
                ..Default::default()
            };
        }
        dev.tgt.params = params;
        if let Some(fd) = primary.raw_fd() {
            let n = dev.tgt.nr_fds as usize;
            dev.tgt.fds[n] = fd;
            dev.tgt.nr_fds += 1;
            debug_assert_eq!(dev.tgt.nr_fds as u32, queue::PRIMARY_FIXED_FD + 1);
        }
        Ok(())
    };

    let q_engine = engine.clone();
    let poll = opts.args.poll_window();
    let q_fn = move |qid: u16, dev: &UblkDev| queue::run(qid, dev, q_engine.clone(), poll);

    let stopping = Arc::new(AtomicBool::new(false));
    let recovering = opts.recover;
    let name = opts.name.clone();
    let args = opts.args.clone();
    let run_files = files.clone();
    let d_engine = engine.clone();
    let d_stopping = stopping.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Result<u32, String>>();
    let (n_engine, n_stopping, n_name) = (engine.clone(), stopping.clone(), opts.name.clone());
    let device_fn = move |ctrl: &UblkCtrl| {
        let dev_id = ctrl.dev_info().dev_id;
        let state = DeviceState {
            name: name.clone(),
            dev_id,
            pid: std::process::id(),
            args: args.clone(),
        };
        let r = run_files
            .write_state(&state)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let stop = stopper(dev_id, d_stopping.clone());
                start_control(
                    &run_files.socket,
                    state,
                    d_engine.clone(),
                    recovering,
                    stop.clone(),
                )?;
                start_signal_thread(signals, stop);
                Ok(())
            });
        if r.is_err() {
            let _ = ctrl.kill_dev();
        }
        let _ = tx.send(r.map(|()| dev_id).map_err(|e| format!("{e:#}")));
    };

    // run_target blocks until the queues stop; readiness arrives from device_fn.
    let ready_line = std::thread::scope(|s| -> Result<()> {
        let waiter = s.spawn(move || {
            let r = rx.recv();
            if let Ok(Ok(id)) = &r {
                ready.send(&format!("ok {id}"));
                systemd::ready(&n_name, *id, n_engine, n_stopping);
            }
            r
        });
        let served = ctrl
            .run_target(tgt_init, q_fn, device_fn)
            .map_err(|e| anyhow!("serve ublk device: {e}"));
        let started = waiter.join().expect("ready waiter");
        served?;
        match started {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(anyhow!(e)),
            Err(_) => Err(anyhow!("device did not start")),
        }
    });
    // Reaching here means the queues are down (stop, signal, or a failure).
    stopping.store(true, Ordering::Release);
    systemd::notify(&[sd_notify::NotifyState::Stopping]);
    let shutdown = engine.shutdown();
    if let Some((_, stop)) = &dual {
        if shutdown.is_ok() {
            engine.dual_goodbye();
        }
        stop.store(true, Ordering::Release);
    }
    if let Err(e) = ctrl.del_dev() {
        log::warn!("delete ublk device: {e}");
    }
    files.remove();
    ready_line?;
    shutdown.context("make the record durable at stop")?;
    log::info!("{}: stopped cleanly", opts.name);
    Ok(())
}

/// Dual-active: this node's holder of the other node's record, serving on
/// `--listen` until the returned flag is set.
fn start_holder(
    d: &tandem::engine::DualConfig,
    node: u64,
) -> Result<(Arc<tandem::peer::Holder>, Arc<AtomicBool>)> {
    let holder = Arc::new(tandem::peer::Holder::new(&d.hold_dir, node)?);
    let listener = std::net::TcpListener::bind(&d.listen)
        .with_context(|| format!("--listen {}: listen for the other node", d.listen))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (holder.clone(), stop.clone());
    std::thread::Builder::new()
        .name("tandem-hold".into())
        .spawn(move || {
            if let Err(e) = h.serve(listener, s) {
                log::error!("the holder of the other node's record stopped: {e}");
            }
        })
        .context("start the holder thread")?;
    Ok((holder, stop))
}

/// Deletes ublk device `id` (its daemon is gone).
pub fn delete_device(id: u32) -> Result<()> {
    check_ublk()?;
    let ctrl =
        UblkCtrl::new_simple(id as i32).map_err(|e| anyhow!("open ublk device {id}: {e}"))?;
    ctrl.del_dev()
        .map_err(|e| anyhow!("delete ublk device {id}: {e}"))?;
    Ok(())
}

/// A once-only stop: kills the device from a thread with its own control ring.
fn stopper(dev_id: u32, stopping: Arc<AtomicBool>) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        if stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        log::info!("stopping ublk device {dev_id}");
        std::thread::spawn(move || match UblkCtrl::new_simple(dev_id as i32) {
            Ok(c) => {
                if let Err(e) = c.kill_dev() {
                    log::error!("stop ublk device {dev_id}: {e}");
                }
            }
            Err(e) => log::error!("open ublk device {dev_id} to stop it: {e}"),
        });
    })
}

/// SIGTERM and SIGINT stop the device; SIGHUP is logged and ignored.
fn start_signal_thread(signals: SigSet, stop: Arc<dyn Fn() + Send + Sync>) {
    std::thread::spawn(move || loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                log::info!("received SIGHUP: ignored (SIGTERM or `tandemctl del` stops the device)")
            }
            Ok(sig) => {
                log::info!("received {sig}");
                stop();
                return;
            }
            Err(e) => {
                log::error!("wait for signals: {e}");
                return;
            }
        }
    });
}

/// With `--degraded-after`, a secondary missing at start is waited for that
/// long (the progress goes to the service manager's status); then the
/// engine opens without it, degraded.
fn wait_for_secondary(opts: &Options) {
    let (Some(wait), path) = (opts.args.degraded_after, &opts.args.secondary) else {
        return;
    };
    if tandem::dev::present(path) {
        return;
    }
    let start = std::time::Instant::now();
    log::warn!(
        "{}: secondary {} is missing: waiting up to {wait} for it, then starting degraded",
        opts.name,
        path.display()
    );
    let mut last = None;
    let mut there = false;
    while !there && start.elapsed() < wait.duration() {
        let left = wait.duration().saturating_sub(start.elapsed()).as_secs();
        if last != Some(left) {
            last = Some(left);
            systemd::notify(&[sd_notify::NotifyState::Status(&format!(
                "waiting for secondary {} ({left}s, then degraded)",
                path.display()
            ))]);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        there = tandem::dev::present(path);
    }
    if there {
        log::info!(
            "{}: secondary {} appeared after {:.1}s",
            opts.name,
            path.display(),
            start.elapsed().as_secs_f64()
        );
    }
}

fn start_control(
    socket: &Path,
    state: DeviceState,
    engine: Arc<Engine>,
    recovering: bool,
    stop: Arc<dyn Fn() + Send + Sync>,
) -> Result<()> {
    control::serve(
        socket,
        Arc::new(move |req| match req {
            Request::Status => status_json(&state, &engine, recovering),
            Request::Stop => {
                stop();
                serde_json::json!({"name": state.name, "stopping": true})
            }
            Request::Verify { repair, max_rate } => match engine.start_verify(repair, max_rate) {
                Ok(()) => serde_json::json!({"name": state.name, "verifying": true}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
            Request::Set {
                max_copy_rate,
                max_lag,
            } => {
                let m = engine.mirror();
                let r = max_copy_rate
                    .map(|rate| m.set_max_rate((rate > 0).then_some(rate)))
                    .transpose();
                match r {
                    Ok(_) => {
                        if let Some(lag) = max_lag {
                            m.set_max_lag(lag.duration());
                        }
                        let s = m.stats();
                        log::info!(
                            "{}: settings changed: max copy rate {}, max lag {:.3}s",
                            state.name,
                            s.max_copy_rate
                                .map_or("none".into(), tandem::units::format_size),
                            s.max_lag_seconds
                        );
                        serde_json::json!({
                            "name": state.name,
                            "max_copy_rate": s.max_copy_rate,
                            "max_lag_seconds": s.max_lag_seconds,
                        })
                    }
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            }
            Request::Pause | Request::Resume => {
                let paused = matches!(req, Request::Pause);
                engine.mirror().set_paused(paused);
                serde_json::json!({"name": state.name, "mirror_paused": paused})
            }
            Request::Invalidate => match engine.invalidate() {
                Ok(n) => serde_json::json!({"name": state.name, "regions": n}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
            Request::Fence { reason } => match engine.lease() {
                Some(lease) => {
                    lease.fence(format!("fenced by request: {reason}"));
                    serde_json::json!({"name": state.name, "fenced": true})
                }
                None => serde_json::json!({
                    "error": format!("device {:?} has no lease (--lease) to give up", state.name)
                }),
            },
        }),
    )?;
    Ok(())
}

/// The status `tandemctl status` shows: the device's, with the engine's
/// figures; a resync after a reattach shows as `recovering`.
pub fn status_json(state: &DeviceState, engine: &Engine, recovering: bool) -> serde_json::Value {
    let st = engine.status();
    let shown = if st.state == State::Resyncing && recovering {
        State::Recovering
    } else {
        st.state
    };
    let status = DeviceStatus {
        engine: Some(st),
        ..DeviceStatus::of(state, shown, None)
    };
    serde_json::to_value(&status).expect("status serializes")
}
