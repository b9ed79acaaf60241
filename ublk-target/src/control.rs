//! The daemon's control plane: a state file and a Unix socket per device in
//! the run directory, and a one-line JSON request/response protocol.
//!
//! `RUN_DIR/NAME.json` records how the device was started (its arguments, the
//! ublk device id and the daemon's pid) so `tandemctl recover` can restart it;
//! `RUN_DIR/NAME.sock` answers `{"cmd":"status"}` and `{"cmd":"stop"}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::args::DeviceArgs;
use crate::engine::EngineStatus;
use crate::error::{Error, Result};
use crate::status::{State, STATUS_VERSION};

/// What the run directory records about one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceState {
    pub name: String,
    /// The ublk device id: `/dev/ublkbN`.
    pub dev_id: u32,
    /// The daemon serving it.
    pub pid: u32,
    pub args: DeviceArgs,
}

impl DeviceState {
    pub fn device_path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }
}

/// What `status` answers: the device, its state, and the engine's figures
/// (absent while the daemon is gone, with a `message` saying so). The
/// daemon builds it, tandemctl reads it back with the same type; `version`
/// is [`STATUS_VERSION`], and fields added later (peers, roles) must take
/// a default so that older answers still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub version: u32,
    pub name: String,
    pub device: String,
    pub dev_id: u32,
    pub pid: u32,
    pub primary: String,
    pub secondary: String,
    pub record: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(flatten)]
    pub engine: Option<EngineStatus>,
}

impl DeviceStatus {
    /// The status of a device as its state file describes it, without figures.
    pub fn of(state: &DeviceState, shown: State, message: Option<String>) -> Self {
        DeviceStatus {
            version: STATUS_VERSION,
            name: state.name.clone(),
            device: state.device_path(),
            dev_id: state.dev_id,
            pid: state.pid,
            primary: state.args.primary.display().to_string(),
            secondary: state.args.secondary.display().to_string(),
            record: state.args.record.display().to_string(),
            state: shown,
            message,
            engine: None,
        }
    }
}

/// The control socket of the node's record holder (`tandem-target hold`),
/// in the run directory.
pub const HOLDER_SOCKET: &str = "hold.sock";

/// A request to a daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stop,
    /// Give up the device's lease now: no write is acknowledged from then
    /// on (a cluster manager's fence).
    Fence {
        reason: String,
    },
    /// Compare the clean regions, primary against secondary, on a thread of
    /// the daemon's (progress and summary in the status's `verify`).
    Verify {
        #[serde(default)]
        repair: bool,
        /// Bytes per second read from each device.
        #[serde(default)]
        max_rate: Option<u64>,
    },
    /// Change settings of the running device; absent ones stay.
    Set {
        /// Copy bandwidth cap, bytes per second; 0 removes the cap.
        #[serde(default)]
        max_copy_rate: Option<u64>,
        #[serde(default)]
        max_lag: Option<crate::units::TimeSpan>,
    },
    /// Pause mirroring: nothing is copied, the record keeps what is written.
    Pause,
    Resume,
    /// Copy the whole device again.
    Invalidate,
}

/// Creates the run directory, readable by its owner alone (mode 0700): its
/// state files, logs and sockets say what every device is. An existing
/// directory is tightened to 0700 too, unless it is a shared sticky one such
/// as /tmp, which is left alone.
pub fn make_run_dir(run_dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e| Error::io(format!("create run directory {}", run_dir.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(io)?;
    let mode = std::fs::metadata(run_dir).map_err(io)?.permissions().mode();
    if mode & 0o1000 == 0 && mode & 0o077 != 0 {
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Opens (creating or appending to) a file only its owner may read: the
/// run directory's state files and logs.
pub fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(0o600)
        .open(path)?;
    // A file made before by an older version may be wider: narrow it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// The files of device `name` in `run_dir`.
#[derive(Debug, Clone)]
pub struct RunFiles {
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl RunFiles {
    pub fn new(run_dir: &Path, name: &str) -> Self {
        RunFiles {
            state: run_dir.join(format!("{name}.json")),
            socket: run_dir.join(format!("{name}.sock")),
        }
    }

    pub fn read_state(&self) -> Result<Option<DeviceState>> {
        match std::fs::read(&self.state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Config(format!(
                    "state file {} is unreadable: {e}",
                    self.state.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", self.state.display()), e)),
        }
    }

    /// Writes the state file atomically (temporary file, then rename).
    pub fn write_state(&self, state: &DeviceState) -> Result<()> {
        let tmp = self.state.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(state).expect("state serializes");
        open_private(&tmp, false)
            .and_then(|mut f| f.write_all(&body))
            .and_then(|()| std::fs::rename(&tmp, &self.state))
            .map_err(|e| Error::io(format!("write {}", self.state.display()), e))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The ublk control device; present when the kernel has ublk loaded.
pub const UBLK_CONTROL: &str = "/dev/ublk-control";

/// Refuses to go on without ublk, saying how to get it or where to try tandem.
pub fn check_ublk() -> Result<()> {
    if !Path::new(UBLK_CONTROL).exists() {
        return Err(Error::Config(format!(
            "this kernel has no ublk: {UBLK_CONTROL} is missing. Load it with \
             `modprobe ublk_drv` (a kernel built with CONFIG_BLK_DEV_UBLK), or try tandem \
             in the bundled VM: scripts/demo"
        )));
    }
    Ok(())
}

/// Whether process `pid` is alive.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends one request to the daemon at `socket` and returns its JSON answer.
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let io = |e| Error::io(format!("control socket {}", socket.display()), e);
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| {
        Error::Config(format!(
            "control socket {} answered something that is not JSON ({e}): {answer:?}",
            socket.display()
        ))
    })
}

/// Serves requests on `socket` on a background thread until the process ends.
pub fn serve(
    socket: &Path,
    handler: Arc<dyn Fn(Request) -> serde_json::Value + Send + Sync>,
) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| Error::io(format!("listen on {}", socket.display()), e))?;
    std::thread::Builder::new()
        .name("tandem-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let _ = answer(conn, &*handler);
                });
            }
        })
        .map_err(|e| Error::io("start control thread", e))?;
    Ok(())
}

fn answer(conn: UnixStream, handler: &dyn Fn(Request) -> serde_json::Value) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handler(req),
        Err(e) => serde_json::json!({"error": format!("bad request {line:?}: {e}")}),
    };
    let mut out = serde_json::to_string(&reply).expect("reply serializes");
    out.push('\n');
    (&conn).write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer_over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::new(dir.path(), "d0");
        serve(
            &files.socket,
            Arc::new(|req| match req {
                Request::Status => serde_json::json!({"state": "live"}),
                Request::Stop => serde_json::json!({"stopping": true}),
                Request::Fence { reason } => serde_json::json!({ "fenced": reason }),
                other => serde_json::json!({ "other": other }),
            }),
        )
        .unwrap();
        let v = request(&files.socket, &Request::Status).unwrap();
        assert_eq!(v["state"], "live");
        let v = request(&files.socket, &Request::Stop).unwrap();
        assert_eq!(v["stopping"], true);
        let fence = Request::Fence {
            reason: "node lost quorum".into(),
        };
        assert_eq!(
            request(&files.socket, &fence).unwrap()["fenced"],
            "node lost quorum"
        );
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::new(dir.path(), "d1");
        assert_eq!(files.read_state().unwrap(), None);
        let st = DeviceState {
            name: "d1".into(),
            dev_id: 3,
            pid: std::process::id(),
            args: DeviceArgs {
                primary: "/p".into(),
                secondary: "/s".into(),
                record: "/r".into(),
                region_size: "1MiB".parse().unwrap(),
                capacity: "1GiB".parse().unwrap(),
                policy: "lru".into(),
                queues: 1,
                depth: 64,
                mirror_threads: 1,
                max_copy_rate: None,
                max_copy_size: "4MiB".parse().unwrap(),
                max_lag: "10s".parse().unwrap(),
                copy_buffer: "16MiB".parse().unwrap(),
                cache: crate::dev::Cache::None,
                poll: "50us".parse().unwrap(),
                assume_clean: true,
                passthrough: false,
                peer: None,
                listen: None,
                pair_name: None,
                node_id: Some(2),
                lease: Some("/shared/lease".into()),
                lease_timeout: "3s".parse().unwrap(),
                other_lease: Some("/shared/lease-b".into()),
                degraded_after: Some("30s".parse().unwrap()),
                max_dirty: Some("64MiB".parse().unwrap()),
                on_max_dirty: crate::engine::OverMaxDirty::PullAhead,
            },
        };
        files.write_state(&st).unwrap();
        assert_eq!(files.read_state().unwrap(), Some(st.clone()));
        assert_eq!(st.device_path(), "/dev/ublkb3");
        assert!(pid_alive(std::process::id()));
        files.remove();
        assert_eq!(files.read_state().unwrap(), None);
    }
}
