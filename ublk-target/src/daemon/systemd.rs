//! Running under systemd (`tandem@NAME.service`, `Type=notify`): the
//! readiness, status and watchdog notifications (the sd-notify crate: the
//! protocol's one datagram, with no libsystemd to link into a static
//! binary), and logs to the journal with the device's name as identifier
//! (systemd-journal-logger: structured fields over the journal's socket,
//! again without libsystemd). Outside systemd none of this does anything,
//! and logs go to stderr (the private log file of `tandemctl add`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tandem::status::State;
use tandem::units::format_size;
use tandem::Engine;

/// How long READY waits for udev's stable name of the device.
const NAME_WAIT: Duration = Duration::from_secs(30);
/// How often STATUS= is refreshed (and the watchdog fed, at least).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Whether a service manager listens for notifications.
pub fn active() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sets up logging: to the journal, with `tandem-NAME` as the syslog
/// identifier, when stderr is the journal's stream; else to stderr
/// (`RUST_LOG` filters, `info` by default).
pub fn init_logging(name: Option<&str>) {
    if systemd_journal_logger::connected_to_journal() {
        let identifier = match name {
            Some(n) => format!("tandem-{n}"),
            None => "tandem-target".into(),
        };
        let installed = systemd_journal_logger::JournalLog::new()
            .map(|l| l.with_syslog_identifier(identifier))
            .and_then(|l| l.install().map_err(std::io::Error::other));
        if installed.is_ok() {
            log::set_max_level(log::LevelFilter::Info);
            return;
        }
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// Sends one notification; a failure is logged, never fatal.
pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("notify the service manager: {e}");
    }
}

/// One line of status for `systemctl status`: the state and, while
/// resyncing, its progress.
pub fn status_line(engine: &Engine) -> String {
    let st = engine.status();
    let mut line = format!("{}", st.state);
    if st.resync_total_bytes > 0 && st.resync_done_bytes < st.resync_total_bytes {
        let pct = st.resync_done_bytes as f64 * 100.0 / st.resync_total_bytes as f64;
        line += &format!(
            ": resync {pct:.1}% ({} of {})",
            format_size(st.resync_done_bytes),
            format_size(st.resync_total_bytes)
        );
    }
    line += &format!(", {} dirty", format_size(st.dirty_bytes));
    if st.state == State::Degraded {
        if let Some(e) = &st.last_error {
            line += &format!(" ({e})");
        }
    }
    line
}

/// Waits for the device's stable name, `/dev/tandem/NAME` (made by the udev
/// rule), to name `/dev/ublkbID`; `false` after `NAME_WAIT`.
fn wait_stable_name(name: &str, dev_id: u32) -> bool {
    let link = PathBuf::from(format!("/dev/tandem/{name}"));
    let want = PathBuf::from(format!("/dev/ublkb{dev_id}"));
    let start = Instant::now();
    while start.elapsed() < NAME_WAIT {
        if std::fs::canonicalize(&link).is_ok_and(|p| p == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Once the device is live: waits for its stable name, says READY, then
/// refreshes STATUS= and feeds the watchdog (each time the engine answered
/// a status, so a wedged engine stops feeding it) until `stop`.
pub fn ready(name: &str, dev_id: u32, engine: Arc<Engine>, stop: Arc<AtomicBool>) {
    if !active() {
        return;
    }
    let name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name("tandem-notify".into())
        .spawn(move || {
            if !wait_stable_name(&name, dev_id) {
                log::warn!(
                    "/dev/tandem/{name} did not appear within {}s (is the udev rule \
                     installed?); ready as /dev/ublkb{dev_id}",
                    NAME_WAIT.as_secs()
                );
            }
            let status = status_line(&engine);
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            log::info!("{name}: ready as /dev/ublkb{dev_id}: {status}");
            let every =
                sd_notify::watchdog_enabled().map_or(STATUS_EVERY, |w| (w / 3).min(STATUS_EVERY));
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(every);
                let status = status_line(&engine);
                notify(&[NotifyState::Status(&status), NotifyState::Watchdog]);
            }
        });
    if let Err(e) = spawned {
        log::error!("start the service manager's notifications: {e}");
    }
}
