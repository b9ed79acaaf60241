//! Operations on a running device: `verify` (an online comparison of the
//! clean regions, with progress and a JSON summary), `set` (runtime
//! settings), `pause`, `resume` and `invalidate`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tandem::args::check_name;
use tandem::control::{self, pid_alive, Request, RunFiles};
use tandem::engine::VerifyReport;
use tandem::units::{format_size, TimeSpan};

/// Sends `req` to the daemon of `name`; its `error`, if any, is the error.
pub fn ask(name: &str, run_dir: &Path, req: &Request) -> Result<Value> {
    check_name(name)?;
    let files = RunFiles::new(run_dir, name);
    let Some(st) = files.read_state()? else {
        bail!("no device named {name:?} in {}", run_dir.display());
    };
    if !pid_alive(st.pid) {
        bail!("{name}: the daemon is gone; run `tandemctl recover {name}`");
    }
    let v = control::request(&files.socket, req)?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("{name}: {e}");
    }
    Ok(v)
}

/// Runs a verification and waits for its end, showing its progress on
/// stderr (a bar on a terminal, a line every few seconds otherwise).
pub fn verify(
    name: &str,
    run_dir: &Path,
    repair: bool,
    max_rate: Option<u64>,
) -> Result<VerifyReport> {
    ask(name, run_dir, &Request::Verify { repair, max_rate })?;
    let bar = crate::device::progress_bar("{msg} [{bar:40}] {pos}/{len} regions ({eta})");
    let mut last_line = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let st = crate::device::status(name, run_dir)?;
        let Some(rep) = st.engine.and_then(|e| e.verify) else {
            bail!("{name}: the daemon stopped during the verify");
        };
        let msg = format!("{name} verify: {} mismatched", rep.mismatched_regions);
        if !rep.running {
            if let Some(b) = &bar {
                b.finish_with_message(msg);
            } else {
                eprintln!("{msg}, done");
            }
            return Ok(rep);
        }
        if let Some(b) = &bar {
            b.set_length(rep.regions);
            b.set_position(rep.regions_done);
            b.set_message(msg);
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!(
                "{msg}, {} of {} regions, {} compared",
                rep.regions_done,
                rep.regions,
                format_size(rep.bytes_compared)
            );
        }
    }
}

/// The exit status a verify's report asks for: an error when mismatches
/// were found and not repaired, or when it stopped early.
pub fn verify_outcome(name: &str, rep: &VerifyReport) -> Result<()> {
    if let Some(e) = &rep.error {
        bail!("{name}: verify stopped early: {e}");
    }
    if rep.mismatched_regions > rep.repaired_regions {
        bail!(
            "{name}: {} region(s) differ between primary and secondary; \
             `tandemctl verify {name} --repair` copies them again",
            rep.mismatched_regions - rep.repaired_regions
        );
    }
    Ok(())
}

/// A copy rate for `set`: `none` removes the cap.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    match text {
        "none" | "off" | "0" => Ok(0),
        _ => crate::parse_size(text).map_err(|e| format!("{e} (or `none` for no cap)")),
    }
}

/// Changes the settings of the running device.
pub fn set(
    name: &str,
    run_dir: &Path,
    max_copy_rate: Option<u64>,
    max_lag: Option<TimeSpan>,
) -> Result<Value> {
    if max_copy_rate.is_none() && max_lag.is_none() {
        bail!("nothing to set: give --max-copy-rate or --max-lag");
    }
    ask(
        name,
        run_dir,
        &Request::Set {
            max_copy_rate,
            max_lag,
        },
    )
    .context("set")
}
