//! The takeover benchmark: node A (the `engine-load` child, its record held
//! by node B in this process, a lease on the same file system) is killed
//! under load; B's watch takes the device over. Reported: the time from the
//! kill to the takeover against the lease's expiry (its timeout plus half),
//! the bytes B copied against A's record just before the kill and against
//! the device, and that the devices end identical.

use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;

use tandem::peer::{Holder, TakeoverReport, TakeoverSpec};
use tandem_tests::load::{LoadArgs as ChildArgs, Mix};

use super::*;

/// The lease timeout of the benchmark's owner.
const LEASE_MS: u64 = 2000;

pub(crate) fn takeover_bench(a: &PeerArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let rounds = if quick { 1 } else { 3 };
    let child_exe = std::env::current_exe()?.with_file_name("engine-load");
    ensure!(
        child_exe.exists(),
        "{} is missing: build it with cargo build --release -p tandem-tests --bins",
        child_exe.display()
    );
    println!(
        "\n## Takeover: node A killed under load (90% random 4 KiB writes, 10% streams), node B \
         takes its device over ({} device in {} ({}), lease {LEASE_MS} ms: expiry {} ms)\n",
        format_size(size),
        a.dir.display(),
        df_of(&a.dir),
        LEASE_MS * 3 / 2
    );
    println!("| round | A's record before the kill | B copied | of the device | kill to lease taken | over the expiry | copy | kill to done |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for round in 0..rounds {
        let dir = a.dir.join(format!("bench-takeover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b"))?;
        let paths = paths_in(&dir, "takeover");
        write_data_file(&paths.primary, size, 5)?;
        std::fs::copy(&paths.primary, &paths.secondary)?;
        let lease = dir.join("lease");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let holder = Arc::new(Holder::new(&dir.join("b"), 2)?);
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let (h, s) = (holder.clone(), stop.clone());
            std::thread::spawn(move || h.serve(listener, s))
        };
        let (tx, rx) = mpsc::channel::<TakeoverReport>();
        let watching = {
            let (h, s) = (holder.clone(), stop.clone());
            let spec = TakeoverSpec {
                lease: lease.clone(),
                primary: paths.primary.clone(),
                secondary: paths.secondary.clone(),
            };
            std::thread::spawn(move || {
                h.watch(&spec, &s, |r| {
                    let _ = tx.send(r.clone());
                })
            })
        };
        let load = ChildArgs {
            primary: paths.primary.clone(),
            secondary: paths.secondary.clone(),
            record: paths.record.clone(),
            mix: Mix::Streams,
            log_dir: None,
            threads: 8,
            seed: round + 1,
            region_size: 1 << 20,
            capacity: 64 << 20,
            peer: Some(format!("127.0.0.1:{port}")),
            lease: Some(lease.clone()),
            lease_timeout_ms: LEASE_MS,
            ..ChildArgs::stamped(&dir, 8)
        };
        let mut child = Command::new(&child_exe)
            .args(load.args())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", child_exe.display()))?;
        let latest =
            tandem_tests::watch_status(child.stdout.take().unwrap()).map_err(|e| anyhow!(e))?;
        std::thread::sleep(Duration::from_secs(if quick { 1 } else { 3 }));
        let before = latest.lock().unwrap().clone();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let killed = Instant::now();
        child.wait()?;
        let report = rx
            .recv_timeout(Duration::from_secs(600))
            .context("B did not take the device over")?;
        let took = killed.elapsed();
        stop.store(true, Ordering::Release);
        serving.join().expect("holder thread")?;
        watching.join().expect("watch thread")?;
        ensure!(
            same_contents(&paths.primary, &paths.secondary, size)?,
            "primary and secondary differ after the takeover"
        );
        let record_before = before.first().copied().unwrap_or(0);
        let taken = took.as_millis() as i64 - report.copy_ms as i64;
        let over = taken - (LEASE_MS * 3 / 2) as i64;
        println!(
            "| {} | {} | {} | {:.1} % | {taken} ms | {over} ms | {} ms | {} ms |",
            round + 1,
            format_size(record_before),
            format_size(report.bytes_resynced),
            100.0 * report.bytes_resynced as f64 / size as f64,
            report.copy_ms,
            took.as_millis(),
        );
        rows.push(json!({
            "record_bytes_before_kill": record_before,
            "bytes_resynced": report.bytes_resynced,
            "device_bytes": size,
            "kill_to_takeover_ms": took.as_millis() as u64,
            "waited_ms": report.waited_ms,
            "copy_ms": report.copy_ms,
            "expiry_ms": LEASE_MS * 3 / 2,
        }));
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "- the lease is taken after its expiry ({} ms) since the owner's last renewal (up to {} ms \
         before the kill), plus the settle before B reads its write back ({} ms) and the watch's \
         polling; then B copies what it held",
        LEASE_MS * 3 / 2,
        LEASE_MS / 4,
        LEASE_MS / 4
    );
    println!("- after every takeover the primary and the secondary were identical");
    Ok(json!({ "lease_ms": LEASE_MS, "rounds": rows }))
}
