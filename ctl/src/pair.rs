//! The two-appliance commands: show a device's lease, promote this node to
//! serve a device its peer owned, and fence a device (the hook a cluster
//! manager calls, as Pacemaker demotes or fences DRBD).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tandem::args::{check_name, DeviceArgs};
use tandem::control::{self, Request};
use tandem::lease::{Block, LeaseArea, Seen, Watch};
use tandem::peer::{Holder, HolderStatus, TakeoverSpec};

use crate::device::{self, Started};

/// What a lease says (`None`: blank, never claimed).
pub fn lease(path: &Path) -> Result<Option<Block>> {
    Ok(LeaseArea::open(path)?.read()?)
}

/// A lease block in words.
pub fn format_lease(path: &Path, b: &Option<Block>) -> String {
    match b {
        None => format!("{}: blank (no node has claimed it)\n", path.display()),
        Some(b) => format!(
            "{}: device {:016x} ({} bytes, regions of {}), owned by node {} at generation {}, \
             {} (renewal {}, timeout {} ms)\n",
            path.display(),
            b.identity,
            b.device_size,
            b.region_size,
            b.owner,
            b.generation,
            if b.released {
                "released (stopped cleanly)"
            } else {
                "held"
            },
            b.counter,
            b.timeout_ms
        ),
    }
}

/// Serves on this node a device whose lease another node owned: once the
/// lease is this node's (the holder took the device over, or it is taken
/// over here once the owner's lease expires: never while it lives), the
/// record held in `holder_dir` becomes the device's record and the device
/// is added as `tandemctl add` does.
pub fn promote(
    name: &str,
    args: &DeviceArgs,
    holder_dir: &Path,
    run_dir: &Path,
    wait: Duration,
) -> Result<Started> {
    check_name(name)?;
    let lease_path = args.lease.as_ref().ok_or_else(|| {
        anyhow!("promote needs --lease (the device's lease on the shared storage)")
    })?;
    let node = args
        .node_id
        .ok_or_else(|| anyhow!("promote needs --node-id (this node's id in the pair)"))?;
    let mut watch = Watch::new(lease_path)?;
    let deadline = Instant::now() + wait;
    let block = loop {
        match watch.poll()? {
            Seen::Blank => bail!(
                "lease {} is blank: no node served this device; use `tandemctl add`",
                lease_path.display()
            ),
            // This node's own lease, left by a finished takeover (released)
            // or by a daemon of this node that died (expired).
            Seen::Released(b) | Seen::Expired(b) if b.owner == node => break b,
            Seen::Alive(b) if b.owner == node => {
                if Instant::now() >= deadline {
                    bail!(
                        "this node (node {node}) holds the lease and renews it: a takeover is \
                         still copying, or the device is served here already; gave up after {wait:?}"
                    );
                }
                std::thread::sleep((b.timeout() / 8).max(Duration::from_millis(10)));
            }
            Seen::Released(b) => bail!(
                "node {} stopped the device cleanly and still owns it (generation {}): \
                 nothing to take over; start it there, or have it hand the device on",
                b.owner,
                b.generation
            ),
            Seen::Expired(b) => {
                let spec = TakeoverSpec {
                    lease: lease_path.clone(),
                    primary: args.primary.clone(),
                    secondary: args.secondary.clone(),
                };
                let waited = watch.unchanged_for();
                let holder = Holder::new(holder_dir, node)?;
                let report = holder
                    .take_over(&spec, &b, waited)
                    .with_context(|| format!("take the device over from node {}", b.owner))?;
                eprintln!(
                    "took the device over from node {} (generation {}): {} bytes copied",
                    report.from_node, report.generation, report.bytes_resynced
                );
                continue;
            }
            Seen::Alive(b) => {
                if Instant::now() >= deadline {
                    bail!(
                        "node {} holds the lease of this device (generation {}, renewed): it is \
                         alive, so this node must not serve it; gave up after {wait:?}",
                        b.owner,
                        b.generation
                    );
                }
                std::thread::sleep((b.timeout() / 8).max(Duration::from_millis(10)));
            }
        }
    };
    // The record the takeover left (clean once its copy finished; the
    // daemon resyncs whatever it still lists) becomes the device's.
    let held = holder_dir.join(format!("{:016x}.rec", block.identity));
    if held.exists() {
        copy_durably(&held, &args.record)?;
    } else if !args.record.exists() {
        eprintln!(
            "no record of device {:016x} in {}: the device starts with a full resync",
            block.identity,
            holder_dir.display()
        );
    }
    device::add(name, args, run_dir)
}

fn copy_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| {
        format!(
            "copy the held record {} to {}",
            from.display(),
            to.display()
        )
    })?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("sync {}", to.display()))?;
    Ok(())
}

/// Fences a running device now: its daemon gives up the lease and
/// acknowledges no write from then on (the device stays, its writes fail).
pub fn fence(name: &str, run_dir: &Path, reason: &str) -> Result<serde_json::Value> {
    crate::ops::ask(
        name,
        run_dir,
        &Request::Fence {
            reason: reason.to_string(),
        },
    )
}

/// The status of this node's record holder.
pub fn holder(run_dir: &Path) -> Result<HolderStatus> {
    let socket = run_dir.join(control::HOLDER_SOCKET);
    let v = control::request(&socket, &Request::Status)
        .with_context(|| format!("no record holder answers on {}", socket.display()))?;
    serde_json::from_value(v).context("the holder answered a status this tandemctl cannot read")
}

/// A holder's status in words.
pub fn format_holder(st: &HolderStatus) -> String {
    let mut s = format!(
        "node {} ({}), records in {}, {} owner(s) connected\n",
        st.node, st.role, st.dir, st.sessions
    );
    for h in &st.held {
        s.push_str(&format!(
            "  device {}: owned by node {} at generation {}, {} regions held, heard {} ms ago\n",
            h.identity, h.owner, h.generation, h.regions, h.last_heard_ms
        ));
    }
    for w in &st.watches {
        let owner = w
            .owner
            .map(|o| format!(" (node {o}, generation {})", w.generation.unwrap_or(0)))
            .unwrap_or_default();
        s.push_str(&format!("  lease {}: {}{owner}\n", w.lease, w.seen));
        if let Some(e) = &w.error {
            s.push_str(&format!("    error: {e}\n"));
        }
    }
    for t in &st.takeovers {
        s.push_str(&format!(
            "  took device {} over from node {} at generation {}: {} bytes copied in {} ms\n",
            t.identity, t.from_node, t.generation, t.bytes_resynced, t.copy_ms
        ));
    }
    s
}
