//! Device commands: add, list, status, wait-synced, del, recover.
//!
//! Each returns data; `main` prints it as text or JSON. The daemon is
//! `tandem-target serve`, started detached with a pipe on which it reports
//! `ok DEV_ID` once `/dev/ublkbN` is live, or `err MESSAGE`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tandem::args::{check_name, DeviceArgs};
use tandem::control::{self, pid_alive, DeviceState, DeviceStatus, Request, RunFiles};
use tandem::status::State;
use tandem::units::format_size;

/// The fd number the daemon sees its ready pipe on.
const READY_FD: i32 = 3;

/// What `add` and `recover` report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Started {
    pub name: String,
    pub device: String,
    pub dev_id: u32,
    pub pid: u32,
    pub log: String,
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub device: String,
    pub pid: u32,
    pub state: String,
    pub dirty_bytes: Option<u64>,
    pub primary: String,
    pub secondary: String,
}

/// Where `tandem-target` is: `$TANDEM_TARGET`, beside this executable, or PATH.
pub fn target_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_TARGET") {
        return p.into();
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let p = dir.join("tandem-target");
        if p.exists() {
            return p;
        }
    }
    "tandem-target".into()
}

/// Refuses to go on without ublk, pointing at the VM.
pub fn check_ublk() -> Result<()> {
    control::check_ublk().map_err(Into::into)
}

/// Validates everything that can be checked before anything is created.
pub fn check_add(name: &str, args: &DeviceArgs, run_dir: &Path) -> Result<()> {
    check_name(name)?;
    args.engine_config()?;
    args.check_paths()?;
    if let Some(st) = RunFiles::new(run_dir, name).read_state()? {
        if pid_alive(st.pid) {
            bail!(
                "device name {name:?} is in use: {} is served by pid {}",
                st.device_path(),
                st.pid
            );
        }
        bail!(
            "device name {name:?} is in use: {} exists without its daemon; \
             `tandemctl recover {name}` reattaches it, `tandemctl del {name}` removes it",
            st.device_path()
        );
    }
    for other in states(run_dir)? {
        let same = |a: &Path, b: &Path| {
            std::fs::canonicalize(a).ok().is_some()
                && std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
        };
        for (what, p) in [
            ("--primary", &args.primary),
            ("--secondary", &args.secondary),
            ("--record", &args.record),
        ] {
            for q in [
                &other.args.primary,
                &other.args.secondary,
                &other.args.record,
            ] {
                if same(p, q) {
                    bail!(
                        "{what} {} is already used by device {:?}",
                        p.display(),
                        other.name
                    );
                }
            }
        }
    }
    check_ublk()
}

/// Starts a daemon for `name` and waits until the device is live. Given again
/// for a device whose daemon died, with the same arguments, it reattaches the
/// device like `recover`.
pub fn add(name: &str, args: &DeviceArgs, run_dir: &Path) -> Result<Started> {
    check_name(name)?;
    if let Some(st) = RunFiles::new(run_dir, name).read_state()? {
        if !pid_alive(st.pid) && st.args == *args {
            return recover(name, run_dir);
        }
        if !pid_alive(st.pid) {
            bail!(
                "device name {name:?} is in use: {} exists without its daemon, started with \
                 other arguments ({}); `tandemctl recover {name}` reattaches it as it was, \
                 `tandemctl del {name}` removes it",
                st.device_path(),
                describe_difference(&st.args, args)
            );
        }
    }
    check_add(name, args, run_dir)?;
    spawn_daemon(name, args, run_dir, false)
}

/// Names the first argument that differs between two settings.
fn describe_difference(was: &DeviceArgs, now: &DeviceArgs) -> String {
    let (a, b) = (was.to_cli_args(), now.to_cli_args());
    for pair in a.chunks(2) {
        if !b.chunks(2).any(|q| q == pair) {
            let key = pair[0].to_string_lossy();
            let old = pair
                .get(1)
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default();
            return format!("{key} was {old}");
        }
    }
    "flags differ".into()
}

/// Restarts the daemon of `name` after it died; the device reattaches.
pub fn recover(name: &str, run_dir: &Path) -> Result<Started> {
    check_name(name)?;
    let st = RunFiles::new(run_dir, name)
        .read_state()?
        .ok_or_else(|| anyhow!("no device named {name:?} in {}", run_dir.display()))?;
    if pid_alive(st.pid) {
        bail!(
            "device {name:?} is served by pid {}: nothing to recover",
            st.pid
        );
    }
    check_ublk()?;
    spawn_daemon(name, &st.args, run_dir, true)
}

fn spawn_daemon(name: &str, args: &DeviceArgs, run_dir: &Path, recover: bool) -> Result<Started> {
    control::make_run_dir(run_dir)?;
    let log_path = run_dir.join(format!("{name}.log"));
    let log = control::open_private(&log_path, true)
        .with_context(|| format!("open log {}", log_path.display()))?;
    let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().context("pipe")?;
    let mut argv: Vec<OsString> = vec!["serve".into(), name.into()];
    argv.extend(args.to_cli_args());
    argv.push("--run-dir".into());
    argv.push(run_dir.into());
    argv.push("--ready-fd".into());
    argv.push(READY_FD.to_string().into());
    if recover {
        argv.push("--recover".into());
    }
    let bin = target_binary();
    let w = write_end.as_raw_fd();
    let r = read_end.as_raw_fd();
    let mut cmd = Command::new(&bin);
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, dup2, close) run between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::dup2(w, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(r);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    drop(write_end);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(read_end))
        .read_line(&mut line)
        .context("read the daemon's answer")?;
    let line = line.trim();
    if let Some(id) = line.strip_prefix("ok ") {
        let dev_id: u32 = id
            .parse()
            .with_context(|| format!("daemon said {line:?}"))?;
        // Reap the daemon later: it runs detached in its own session.
        std::thread::spawn(move || child.wait());
        return Ok(Started {
            name: name.into(),
            device: format!("/dev/ublkb{dev_id}"),
            dev_id,
            pid: daemon_pid(run_dir, name)?,
            log: log_path.display().to_string(),
        });
    }
    let _ = child.wait();
    match line.strip_prefix("err ") {
        Some(msg) => bail!("{msg}"),
        None => bail!(
            "tandem-target exited without reporting (see {})",
            log_path.display()
        ),
    }
}

/// The daemon pid from the state file it wrote before reporting ready.
fn daemon_pid(run_dir: &Path, name: &str) -> Result<u32> {
    Ok(RunFiles::new(run_dir, name)
        .read_state()?
        .ok_or_else(|| anyhow!("daemon for {name:?} reported ready but wrote no state file"))?
        .pid)
}

/// Every device recorded in the run directory.
pub fn states(run_dir: &Path) -> Result<Vec<DeviceState>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("read {}", run_dir.display())),
    };
    for e in entries {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if let Some(st) = RunFiles::new(run_dir, name).read_state()? {
            out.push(st);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn list(run_dir: &Path) -> Result<Vec<Listed>> {
    states(run_dir)?
        .into_iter()
        .map(|st| {
            let status = status_of(&st, run_dir)?;
            Ok(Listed {
                name: st.name.clone(),
                device: st.device_path(),
                pid: st.pid,
                state: status.state.to_string(),
                dirty_bytes: status.engine.as_ref().map(|e| e.dirty_bytes),
                primary: st.args.primary.display().to_string(),
                secondary: st.args.secondary.display().to_string(),
            })
        })
        .collect()
}

fn status_of(st: &DeviceState, run_dir: &Path) -> Result<DeviceStatus> {
    if !pid_alive(st.pid) {
        let message = format!(
            "the daemon is gone; host I/O waits until `tandemctl recover {}`",
            st.name
        );
        return Ok(DeviceStatus::of(st, State::Down, Some(message)));
    }
    let socket = RunFiles::new(run_dir, &st.name).socket;
    let v = control::request(&socket, &Request::Status)?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!(
            "the daemon of {:?} refused the status request: {e}",
            st.name
        );
    }
    let version = v.get("version").cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).with_context(|| {
        format!(
            "the daemon of {:?} answered a status (version {version}) this tandemctl cannot read",
            st.name
        )
    })
}

/// The status of `name` (the daemon's, or a `down` one without figures).
pub fn status(name: &str, run_dir: &Path) -> Result<DeviceStatus> {
    check_name(name)?;
    let st = RunFiles::new(run_dir, name)
        .read_state()?
        .ok_or_else(|| anyhow!("no device named {name:?} in {}", run_dir.display()))?;
    status_of(&st, run_dir)
}

/// One field of a status, as plain text for scripts: a string without its
/// quotes, `null` as an empty string, anything else as JSON. An unknown field
/// is an error that names it and lists the known ones.
pub fn status_field(status: &DeviceStatus, field: &str) -> Result<String> {
    let top = serde_json::to_value(status).context("encode the status")?;
    // `peer.holding`: a field of an object field.
    let (v, field) = match field.rsplit_once('.') {
        None => (top, field),
        Some((outer, inner)) => match top.get(outer) {
            Some(Value::Object(o)) => (Value::Object(o.clone()), inner),
            Some(Value::Null) => return Ok(String::new()),
            _ => bail!(
                "the status has no object field {outer:?} (for {field:?}); the device may have none"
            ),
        },
    };
    match v.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) => Ok(String::new()),
        Some(other) => Ok(other.to_string()),
        None => {
            let known: Vec<&str> = v
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            bail!(
                "the status has no field {field:?}; it has: {}",
                known.join(", ")
            )
        }
    }
}

/// Human-readable status.
pub fn format_status(v: &DeviceStatus) -> String {
    let mut s = format!(
        "{} ({}): {}\n  primary   {}\n  secondary {}\n  record    {}\n",
        v.name, v.device, v.state, v.primary, v.secondary, v.record
    );
    if let Some(m) = &v.message {
        s.push_str(&format!("  {m}\n"));
    }
    let Some(e) = &v.engine else {
        return s;
    };
    s.push_str(&format!(
        "  record: {} regions, {} (capacity {}), policy {}{}, cache {}\n  dirty {}, lag {:.1}s{}, copied {} ({} from the write buffer, {} read back)\n  \
         writes {}, record updates {} ({:.2} per 1000 writes), queues spun {:.1}s\n  resync {} of {}\n",
        e.record_regions,
        format_size(e.record_bytes),
        format_size(e.capacity_bytes),
        e.policy,
        match (&e.policy_following, e.policy_switches) {
            (Some(f), Some(n)) => format!(" (following {f}, {n} switches)"),
            _ => String::new(),
        },
        e.cache,
        format_size(e.dirty_bytes),
        e.lag_seconds,
        if e.mirror_deferring {
            format!(
                " (copies held back: host I/O busy {:.0}%)",
                e.host_busy * 100.0
            )
        } else {
            String::new()
        },
        format_size(e.bytes_copied),
        format_size(e.copy_from_buffer_bytes),
        format_size(e.copy_read_back_bytes),
        e.writes,
        e.record_updates,
        e.updates_per_1000_writes,
        e.poll_seconds,
        format_size(e.resync_done_bytes),
        format_size(e.resync_total_bytes),
    ));
    if let Some(err) = &e.last_error {
        let errno = e
            .last_errno
            .map(|n| format!(" (errno {n})"))
            .unwrap_or_default();
        s.push_str(&format!("  last mirror error: {err}{errno}\n"));
    }
    if let Some(err) = &e.record_error {
        s.push_str(&format!("  record error: {err}\n"));
    }
    if !e.shared_disks.is_empty() {
        s.push_str(&format!(
            "  warning: primary and secondary are both on {}: unless a redundant layer between covers it, its loss takes both copies\n",
            e.shared_disks.join(", ")
        ));
    }
    if let Some(p) = &e.peer {
        let held = match p.holding {
            tandem::peer::Holding::Peer => "on the peer",
            tandem::peer::Holding::Local => "locally (direct service)",
        };
        let node = p.node.map(|n| format!("node {n}, ")).unwrap_or_default();
        let rtt = p
            .rtt_us
            .map(|us| format!(", round trip {us} us"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {} with peer {} ({node}generation {}): record held {held}{rtt}\n",
            p.role, p.address, p.generation
        ));
        if let Some(err) = &p.last_error {
            s.push_str(&format!("  peer error: {err}\n"));
        }
    }
    if let Some(l) = &e.lease {
        let held = match &l.lost {
            Some(why) => format!("lost: {why}"),
            None if l.valid => format!("valid for {} ms more", l.remaining_ms),
            None => "lapsed (not renewed in time)".into(),
        };
        s.push_str(&format!(
            "  lease {} (node {}, generation {}): {held}; {} renewals, {} failed\n",
            l.path, l.node, l.generation, l.renewals, l.failed_renewals
        ));
    }
    s
}

/// Blocks until nothing is dirty; shows a progress bar on a terminal and
/// plain lines otherwise.
pub fn wait_synced(name: &str, run_dir: &Path, timeout: Option<Duration>) -> Result<DeviceStatus> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let bar = progress_bar("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})");
    let mut peak = 0u64;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let v = status(name, run_dir)?;
        let state = v.state;
        let Some(e) = v.engine.as_ref().filter(|_| state != State::Down) else {
            bail!("{name}: the daemon is gone; run `tandemctl recover {name}`");
        };
        let (dirty, total, done) = (e.dirty_bytes, e.resync_total_bytes, e.resync_done_bytes);
        peak = peak.max(dirty);
        if dirty == 0 && done >= total {
            if let Some(b) = &bar {
                b.finish_with_message(format!("{name}: synced"));
            } else {
                eprintln!("{name}: synced");
            }
            return Ok(v);
        }
        if let Some(b) = &bar {
            b.set_length(peak);
            b.set_position(peak - dirty);
            b.set_message(format!("{name} {state}"));
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            eprintln!(
                "{name}: {state}, {} dirty, resync {} of {}",
                format_size(dirty),
                format_size(done),
                format_size(total)
            );
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "{name}: not synced after {:?}: {} still dirty",
                timeout.unwrap_or_default(),
                format_size(dirty)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A progress bar on stderr with `template`, when stderr is a terminal
/// (otherwise the callers print a line now and then).
pub fn progress_bar(template: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("a valid progress template")
                .progress_chars("=> "),
        );
        b
    })
}

/// Stops the daemon of `name` cleanly and deletes the device.
pub fn del(name: &str, run_dir: &Path, timeout: Duration) -> Result<()> {
    check_name(name)?;
    let files = RunFiles::new(run_dir, name);
    let st = files
        .read_state()?
        .ok_or_else(|| anyhow!("no device named {name:?} in {}", run_dir.display()))?;
    if pid_alive(st.pid) {
        control::request(&files.socket, &Request::Stop)?;
        let deadline = Instant::now() + timeout;
        while pid_alive(st.pid) {
            if Instant::now() >= deadline {
                bail!(
                    "{name}: daemon pid {} did not stop within {timeout:?}",
                    st.pid
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        // No daemon: remove the orphaned device.
        check_ublk()?;
        let out = Command::new(target_binary())
            .args(["del-dev", &st.dev_id.to_string()])
            .output()
            .context("run tandem-target del-dev")?;
        if !out.status.success() {
            bail!(
                "delete {}: {}",
                st.device_path(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    files.remove();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A daemon's answer as JSON (with a field from a newer daemon), read
    /// back the way tandemctl reads it.
    fn live(deferring: bool) -> DeviceStatus {
        let engine = tandem::engine::EngineStatus {
            policy: "predictive".into(),
            cache: tandem::dev::Cache::Writeback,
            record_regions: 3,
            record_bytes: 3 << 20,
            capacity_bytes: 1 << 30,
            dirty_bytes: 2 << 20,
            lag_seconds: 1.25,
            writes: 10,
            record_updates: 1,
            updates_per_1000_writes: 100.0,
            host_busy: 0.87,
            mirror_deferring: deferring,
            poll_seconds: 2.54,
            ..Default::default()
        };
        let mut v = serde_json::to_value(DeviceStatus {
            version: 1,
            name: "vm1".into(),
            device: "/dev/ublkb0".into(),
            dev_id: 0,
            pid: 7,
            primary: "/p".into(),
            secondary: "/s".into(),
            record: "/r".into(),
            state: State::Live,
            message: None,
            engine: Some(engine),
        })
        .unwrap();
        v["a_field_from_a_newer_daemon"] = json!({"peer": "b"});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_status_reads_back_with_its_figures_and_ignores_what_it_does_not_know() {
        let v = live(false);
        assert_eq!(v.state, State::Live);
        let e = v.engine.as_ref().expect("figures");
        assert_eq!(e.dirty_bytes, 2 << 20);
        assert_eq!(e.cache, tandem::dev::Cache::Writeback);
        // What the daemon serializes reads back as the same status.
        let again: DeviceStatus =
            serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(again, v);
        assert_eq!(serde_json::to_value(&v).unwrap()["state"], "live");
    }

    #[test]
    fn a_status_without_figures_reads_as_none() {
        let v: DeviceStatus = serde_json::from_value(json!({
            "version": 1, "name": "vm1", "device": "/dev/ublkb0", "dev_id": 0, "pid": 7,
            "state": "down", "primary": "/p", "secondary": "/s", "record": "/r",
            "message": "the daemon is gone",
        }))
        .unwrap();
        assert_eq!(v.state, State::Down);
        assert!(v.engine.is_none());
        let text = format_status(&v);
        assert!(
            text.contains("vm1 (/dev/ublkb0): down") && text.contains("gone"),
            "{text}"
        );
        assert!(!text.contains("record:"), "{text}");
    }

    #[test]
    fn one_status_field_as_plain_text() {
        let v = live(false);
        assert_eq!(status_field(&v, "state").unwrap(), "live");
        assert_eq!(status_field(&v, "dirty_bytes").unwrap(), "2097152");
        assert_eq!(status_field(&v, "last_error").unwrap(), "");
        assert_eq!(status_field(&v, "version").unwrap(), "1");
        // A field of an object field; a device without a peer has none.
        let e = status_field(&v, "peer.holding").unwrap_err().to_string();
        assert!(e.contains("\"peer\""), "{e}");
        let e = status_field(&v, "stat").unwrap_err().to_string();
        assert!(e.contains("\"stat\"") && e.contains("dirty_bytes"), "{e}");
    }

    #[test]
    fn status_warns_when_both_devices_are_on_one_disk() {
        let mut v = live(false);
        v.engine.as_mut().unwrap().shared_disks = vec!["sda".into()];
        let text = format_status(&v);
        assert!(
            text.contains("warning: primary and secondary are both on sda"),
            "{text}"
        );
    }

    #[test]
    fn status_says_when_copies_are_held_back() {
        let held = format_status(&live(true));
        assert!(
            held.contains("dirty 2.00 MiB, lag 1.2s (copies held back: host I/O busy 87%)"),
            "{held}"
        );
        assert!(
            held.contains("policy predictive, cache writeback\n"),
            "{held}"
        );
        assert!(held.contains("queues spun 2.5s\n"), "{held}");
        let eager = format_status(&live(false));
        assert!(!eager.contains("held back"), "{eager}");
        assert!(!eager.contains("warning"), "{eager}");
        assert!(
            eager.contains("dirty 2.00 MiB, lag 1.2s, copied"),
            "{eager}"
        );
    }
}
