//! Metrics: one endpoint per host (`tandemctl metrics --listen`), in the
//! Prometheus text format (0.0.4), covering every device
//! in the run directory. Each scrape asks every daemon for its status, so
//! the figures are as fresh as the scrape; a device whose daemon is gone is
//! there with `tandem_up 0`. The encoding is prometheus-client's (a custom
//! collector, since the figures live in the daemons, not here); the HTTP
//! side is tiny_http's (one thread, GET /metrics).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tandem::control::DeviceStatus;
use tandem::engine::EngineStatus;
use tandem::status::State;

/// The port of `--listen`'s default (on loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9947";

type Labels = Vec<(String, String)>;

/// The states a device can be in, one `tandem_state` series each.
const STATES: [State; 8] = [
    State::Live,
    State::Resyncing,
    State::Recovering,
    State::Degraded,
    State::RecordFailed,
    State::Fenced,
    State::Passthrough,
    State::Down,
];

/// A figure of the engine's status.
type Figure = fn(&EngineStatus) -> f64;

/// Gauges: name, help, figure.
const GAUGES: [(&str, &str, Figure); 18] = [
    (
        "tandem_dirty_bytes",
        "Bytes of regions the secondary may lack",
        |e| e.dirty_bytes as f64,
    ),
    (
        "tandem_lag_seconds",
        "Age of the oldest write the secondary lacks",
        |e| e.lag_seconds,
    ),
    (
        "tandem_recovery_point_seconds",
        "The recovery point: seconds of writes the secondary lacks (the age of the oldest)",
        |e| e.lag_seconds,
    ),
    (
        "tandem_max_dirty_bytes",
        "The bound on the dirty backlog (--max-dirty; 0 without one)",
        |e| {
            e.max_dirty
                .as_ref()
                .map_or(0.0, |m| m.max_dirty_bytes as f64)
        },
    ),
    (
        "tandem_over_max_dirty",
        "1 while the dirty backlog is over --max-dirty",
        |e| f64::from(u8::from(e.max_dirty.as_ref().is_some_and(|m| m.over))),
    ),
    (
        "tandem_copy_buffer_bytes",
        "Bytes of write data held to copy from instead of reading the primary back",
        |e| e.copy_buffer_bytes as f64,
    ),
    (
        "tandem_copy_buffer_budget_bytes",
        "Budget of the write-data buffer (--copy-buffer; 0 when off)",
        |e| e.copy_buffer_budget as f64,
    ),
    (
        "tandem_record_bytes",
        "Bytes of regions in the write-intent record",
        |e| e.record_bytes as f64,
    ),
    (
        "tandem_record_capacity_bytes",
        "Bytes of clean regions the record may hold",
        |e| e.capacity_bytes as f64,
    ),
    (
        "tandem_record_updates_per_1000_writes",
        "Synchronous record updates per 1000 host writes since the start",
        |e| e.updates_per_1000_writes,
    ),
    (
        "tandem_record_policy_switches",
        "Times the record policy changed the candidate it follows",
        |e| e.policy_switches.unwrap_or(0) as f64,
    ),
    (
        "tandem_resync_total_bytes",
        "Bytes the current resync copies",
        |e| e.resync_total_bytes as f64,
    ),
    (
        "tandem_resync_done_bytes",
        "Bytes the current resync has copied",
        |e| e.resync_done_bytes as f64,
    ),
    (
        "tandem_resync_progress_ratio",
        "Share of the current resync done (1 when none runs)",
        |e| {
            if e.resync_total_bytes == 0 {
                1.0
            } else {
                e.resync_done_bytes as f64 / e.resync_total_bytes as f64
            }
        },
    ),
    (
        "tandem_degraded",
        "1 while the secondary fails or is missing",
        |e| f64::from(u8::from(e.degraded)),
    ),
    (
        "tandem_shared_disk",
        "1 when the primary and the secondary sit on one disk (the status names it)",
        |e| f64::from(u8::from(!e.shared_disks.is_empty())),
    ),
    (
        "tandem_mirror_paused",
        "1 while mirroring is paused on request",
        |e| f64::from(u8::from(e.mirror_paused)),
    ),
    (
        "tandem_host_busy_ratio",
        "Share of recent time with host I/O in flight",
        |e| e.host_busy,
    ),
];

/// Counters: name (without `_total`), help, figure.
type Count = fn(&EngineStatus) -> u64;

const COUNTERS: [(&str, &str, Count); 9] = [
    ("tandem_writes", "Host writes", |e| e.writes),
    ("tandem_written_bytes", "Bytes written by the host", |e| {
        e.bytes_written
    }),
    ("tandem_record_updates", "Synchronous record updates", |e| {
        e.record_updates
    }),
    ("tandem_record_pages_written", "Record pages written", |e| {
        e.record_pages_written
    }),
    (
        "tandem_copied_bytes",
        "Bytes the mirror copied to the secondary",
        |e| e.bytes_copied,
    ),
    (
        "tandem_copy_read_back_bytes",
        "Copied bytes read back from the primary",
        |e| e.copy_read_back_bytes,
    ),
    (
        "tandem_copy_from_buffer_bytes",
        "Copied bytes sent from the write-data buffer",
        |e| e.copy_from_buffer_bytes,
    ),
    ("tandem_copy_errors", "Failed mirror copies", |e| {
        e.copy_errors
    }),
    (
        "tandem_throttled_writes",
        "Host writes that waited for the dirty backlog (--max-dirty with throttle)",
        |e| e.max_dirty.as_ref().map_or(0, |m| m.throttled_writes),
    ),
];

/// Every device's status at scrape time.
#[derive(Debug)]
struct Devices {
    run_dir: PathBuf,
}

impl Devices {
    fn statuses(&self) -> Vec<DeviceStatus> {
        let states = match crate::device::states(&self.run_dir) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: {e:#}");
                return Vec::new();
            }
        };
        states
            .iter()
            .filter_map(|st| match crate::device::status(&st.name, &self.run_dir) {
                Ok(s) => Some(s),
                // Starting: its state file is there before its control socket.
                Err(_) if tandem::control::pid_alive(st.pid) && !st_socket(&self.run_dir, st) => {
                    None
                }
                // Gone, or alive and not answering: tandem_up 0.
                Err(e) => Some(DeviceStatus::of(st, State::Down, Some(format!("{e:#}")))),
            })
            .collect()
    }
}

/// Whether the daemon of `st` has its control socket yet.
fn st_socket(run_dir: &Path, st: &tandem::control::DeviceState) -> bool {
    tandem::control::RunFiles::new(run_dir, &st.name)
        .socket
        .exists()
}

fn device_label(s: &DeviceStatus) -> Labels {
    vec![("device".into(), s.name.clone())]
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, f64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        let mut family = m.encode_family(labels)?;
        // Whole numbers read best as integers.
        if v.fract() == 0.0 && v.abs() < 9e15 {
            family.encode_gauge(&(*v as i64))?;
        } else {
            family.encode_gauge(v)?;
        }
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Devices {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let all = self.statuses();
        let up: Vec<(Labels, f64)> = all
            .iter()
            .map(|s| (device_label(s), f64::from(u8::from(s.engine.is_some()))))
            .collect();
        gauge(
            &mut enc,
            "tandem_up",
            "1 while the device's daemon answers",
            &up,
        )?;
        // An info metric as a gauge of 1: Prometheus's text format (and
        // promtool) knows no `info` type.
        let mut info = Vec::new();
        for s in &all {
            let mut l = device_label(s);
            l.push(("ublk".into(), s.device.clone()));
            l.push(("primary".into(), s.primary.clone()));
            l.push(("secondary".into(), s.secondary.clone()));
            l.push(("record".into(), s.record.clone()));
            if let Some(e) = &s.engine {
                l.push(("policy".into(), e.policy.clone()));
                if let Some(f) = &e.policy_following {
                    l.push(("following".into(), f.clone()));
                }
            }
            info.push((l, 1.0));
        }
        gauge(
            &mut enc,
            "tandem_device_info",
            "The device: its ublk device, primary, secondary, record, policy and the candidate it follows",
            &info,
        )?;
        let mut states = Vec::new();
        for s in &all {
            for st in STATES {
                let mut l = device_label(s);
                l.push(("state".into(), st.to_string()));
                states.push((l, f64::from(u8::from(s.state == st))));
            }
        }
        gauge(
            &mut enc,
            "tandem_state",
            "1 for the device's state, 0 for the others",
            &states,
        )?;
        let live: Vec<(&DeviceStatus, &EngineStatus)> = all
            .iter()
            .filter_map(|s| s.engine.as_ref().map(|e| (s, e)))
            .collect();
        for (name, help, f) in GAUGES {
            let values: Vec<(Labels, f64)> =
                live.iter().map(|(s, e)| (device_label(s), f(e))).collect();
            gauge(&mut enc, name, help, &values)?;
        }
        for (name, help, f) in COUNTERS {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, e) in &live {
                m.encode_family(&device_label(s))?
                    .encode_counter::<Labels, u64, f64>(&f(e), None)?;
            }
        }
        for (name, help, pick) in [
            (
                "tandem_read_latency_seconds",
                "Host read latency, from the request's arrival to its answer",
                (|e: &EngineStatus| &e.read_latency) as fn(&EngineStatus) -> &_,
            ),
            (
                "tandem_write_latency_seconds",
                "Host write latency, from the request's arrival to its answer",
                |e: &EngineStatus| &e.write_latency,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (s, e) in &live {
                let h: &tandem::stats::LatencyStatus = pick(e);
                // The encoder sums the buckets itself: each bucket's own
                // count, then +Inf's (what lies above the last bound).
                let mut own = Vec::with_capacity(h.buckets.len() + 1);
                let mut below = 0;
                for &(le, cumulative) in &h.buckets {
                    own.push((le, cumulative - below));
                    below = cumulative;
                }
                own.push((f64::INFINITY, h.count - below));
                m.encode_family(&device_label(s))?
                    .encode_histogram::<Labels>(h.sum_seconds, h.count, &own, None)?;
            }
        }
        Ok(())
    }
}

/// The metrics of every device in `run_dir`, as one scrape answers them.
pub fn render(run_dir: &Path) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Devices {
        run_dir: run_dir.to_path_buf(),
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|_| anyhow!("encode the metrics"))?;
    Ok(classic(&out))
}

/// OpenMetrics text as Prometheus's classic text format (0.0.4), which
/// every scraper and `promtool check metrics` read: a counter's HELP and
/// TYPE name its `_total` samples, and there is no `# EOF` line.
fn classic(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                out += &format!("{p}{name}{total} {tail}\n");
            }
            None => {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listen` until killed.
pub fn serve(listen: &str, run_dir: &Path) -> Result<()> {
    tandem::peer::check_address(listen)
        .map_err(|_| anyhow!("--listen {listen:?}: expected HOST:PORT (e.g. 127.0.0.1:9947)"))?;
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow!("--listen {listen}: {e}"))
        .context("serve the metrics")?;
    eprintln!(
        "tandemctl: metrics of {} on http://{listen}/metrics",
        run_dir.display()
    );
    for req in server.incoming_requests() {
        let response = if req.url() == "/metrics" && *req.method() == tiny_http::Method::Get {
            match render(run_dir) {
                Ok(body) => tiny_http::Response::from_string(body).with_header(
                    "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                        .parse::<tiny_http::Header>()
                        .expect("a valid header"),
                ),
                Err(e) => {
                    tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500)
                }
            }
        } else {
            tiny_http::Response::from_string("only GET /metrics is served here\n")
                .with_status_code(404)
        };
        if let Err(e) = req.respond(response) {
            log::warn!("metrics: answer a scrape: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tandem::control::{DeviceState, Request, RunFiles};

    /// A run directory with device `vm0` answered by a stand-in daemon (this
    /// process), and `gone`, whose daemon is dead.
    fn run_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let args = tandem::config::parse(
            Path::new("t.toml"),
            "primary = \"/p\"\nsecondary = \"/s\"\nrecord = \"/r\"\n",
        )
        .unwrap();
        let st = DeviceState {
            name: "vm0".into(),
            dev_id: 0,
            pid: std::process::id(),
            args: args.clone(),
        };
        let files = RunFiles::new(d.path(), "vm0");
        files.write_state(&st).unwrap();
        let latency = tandem::stats::Latency::default();
        latency.record(std::time::Duration::from_micros(80));
        latency.record(std::time::Duration::from_millis(3));
        let engine = EngineStatus {
            dirty_bytes: 1 << 20,
            writes: 2,
            bytes_written: 8192,
            resync_total_bytes: 4 << 20,
            resync_done_bytes: 1 << 20,
            shared_disks: vec!["sda".into()],
            write_latency: latency.status(),
            read_latency: tandem::stats::Latency::default().status(),
            ..EngineStatus::default()
        };
        let status = DeviceStatus {
            engine: Some(engine),
            ..DeviceStatus::of(&st, State::Resyncing, None)
        };
        let answer = serde_json::to_value(&status).unwrap();
        tandem::control::serve(
            &files.socket,
            Arc::new(move |req| match req {
                Request::Status => answer.clone(),
                _ => serde_json::json!({"error": "no"}),
            }),
        )
        .unwrap();
        let dead = DeviceState {
            name: "gone".into(),
            dev_id: 1,
            pid: 0x7fff_fff0,
            args,
        };
        RunFiles::new(d.path(), "gone").write_state(&dead).unwrap();
        d
    }

    #[test]
    fn every_device_is_scraped_and_promtool_accepts_it() {
        let d = run_dir();
        let text = render(d.path()).unwrap();
        for want in [
            "tandem_up{device=\"vm0\"} 1",
            "tandem_up{device=\"gone\"} 0",
            "tandem_state{device=\"vm0\",state=\"resyncing\"} 1",
            "tandem_state{device=\"gone\",state=\"down\"} 1",
            "tandem_dirty_bytes{device=\"vm0\"} 1048576",
            "tandem_resync_progress_ratio{device=\"vm0\"} 0.25",
            "tandem_shared_disk{device=\"vm0\"} 1",
            "tandem_written_bytes_total{device=\"vm0\"} 8192",
            "tandem_write_latency_seconds_bucket{le=\"0.0001\",device=\"vm0\"} 1",
            "tandem_write_latency_seconds_count{device=\"vm0\"} 2",
            "tandem_write_latency_seconds_bucket{le=\"0.0025\",device=\"vm0\"} 1",
            "tandem_write_latency_seconds_bucket{le=\"0.005\",device=\"vm0\"} 2",
            "tandem_write_latency_seconds_bucket{le=\"5.0\",device=\"vm0\"} 2",
            "tandem_write_latency_seconds_bucket{le=\"+Inf\",device=\"vm0\"} 2",
            "# TYPE tandem_written_bytes_total counter",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("tandem_dirty_bytes{device=\"gone\"}"));
        // Checked by the real tool where it is installed (CI installs it).
        let f = d.path().join("scrape.txt");
        std::fs::write(&f, &text).unwrap();
        match std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", f.display()))
            .output()
        {
            Ok(out) if out.status.code() != Some(127) => assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            _ => eprintln!("SKIP promtool check: promtool is not installed here"),
        }
    }
}
