//! `tandemctl events`: a stream of state changes, one line each (text or
//! JSON), in the manner of `drbdsetup events2`: first an `exists` line for
//! every device, then a line whenever something changes. The daemons are
//! polled (every 250 ms by default), so a change that is undone between two
//! polls is not seen; what is seen is in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use tandem::control::DeviceStatus;
use tandem::peer::Holding;
use tandem::status::State;

/// What `events` follows of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub state: State,
    /// Why, when degraded, fenced or down.
    pub message: Option<String>,
    pub holding: Option<Holding>,
    pub peer: Option<String>,
    pub paused: bool,
    pub verifying: bool,
    pub verify_mismatched: u64,
    pub takeovers: usize,
}

impl Snapshot {
    pub fn of(s: &DeviceStatus) -> Snapshot {
        let e = s.engine.as_ref();
        Snapshot {
            state: s.state,
            message: s
                .message
                .clone()
                .or_else(|| e.and_then(|e| e.record_error.clone().or(e.last_error.clone()))),
            holding: e.and_then(|e| e.peer.as_ref().map(|p| p.holding)),
            peer: e.and_then(|e| e.peer.as_ref().map(|p| p.address.clone())),
            paused: e.is_some_and(|e| e.mirror_paused),
            verifying: e.and_then(|e| e.verify.as_ref()).is_some_and(|v| v.running),
            verify_mismatched: e
                .and_then(|e| e.verify.as_ref())
                .map_or(0, |v| v.mismatched_regions),
            takeovers: e
                .and_then(|e| e.dual.as_ref())
                .map_or(0, |d| d.takeovers.len()),
        }
    }
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Seconds since the epoch, with milliseconds.
    pub time: f64,
    pub name: String,
    /// `exists`, `created`, `removed`, `state`, `peer-lost`, `peer-connected`,
    /// `mirror-paused`, `mirror-resumed`, `verify-started`, `verify-done`,
    /// `takeover`.
    pub event: String,
    /// The device's state after the change.
    pub state: State,
    /// The state before, for `state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event {
    /// The text line: time, device, event, details.
    pub fn line(&self) -> String {
        let mut l = format!("{:.3} {} {}", self.time, self.name, self.event);
        match self.from {
            Some(f) => l += &format!(" {f} -> {}", self.state),
            None => l += &format!(" {}", self.state),
        }
        if let Some(m) = &self.message {
            l += &format!(": {m}");
        }
        l
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// The events between two polls (`before` is `None` for the first).
pub fn diff(
    before: Option<&BTreeMap<String, Snapshot>>,
    after: &BTreeMap<String, Snapshot>,
    time: f64,
) -> Vec<Event> {
    let mut out = Vec::new();
    let ev = |name: &str, event: &str, s: &Snapshot, from, message| Event {
        time,
        name: name.to_string(),
        event: event.into(),
        state: s.state,
        from,
        message,
    };
    let Some(before) = before else {
        for (name, s) in after {
            out.push(ev(name, "exists", s, None, s.message.clone()));
        }
        return out;
    };
    for (name, old) in before {
        if !after.contains_key(name) {
            out.push(ev(name, "removed", old, None, None));
        }
    }
    for (name, s) in after {
        let Some(old) = before.get(name) else {
            out.push(ev(name, "created", s, None, s.message.clone()));
            continue;
        };
        if old.state != s.state {
            out.push(ev(name, "state", s, Some(old.state), s.message.clone()));
        }
        if old.holding != s.holding {
            let peer = s.peer.clone().unwrap_or_default();
            match s.holding {
                Some(Holding::Local) => out.push(ev(
                    name,
                    "peer-lost",
                    s,
                    None,
                    Some(format!("{peer} unreachable: the record is held locally")),
                )),
                Some(Holding::Peer) => out.push(ev(
                    name,
                    "peer-connected",
                    s,
                    None,
                    Some(format!("{peer} holds the record")),
                )),
                None => {}
            }
        }
        if old.paused != s.paused {
            let e = if s.paused {
                "mirror-paused"
            } else {
                "mirror-resumed"
            };
            out.push(ev(name, e, s, None, None));
        }
        if !old.verifying && s.verifying {
            out.push(ev(name, "verify-started", s, None, None));
        }
        if old.verifying && !s.verifying {
            let m = format!("{} region(s) mismatched", s.verify_mismatched);
            out.push(ev(name, "verify-done", s, None, Some(m)));
        }
        if s.takeovers > old.takeovers {
            let m = "took the other node's record over".to_string();
            out.push(ev(name, "takeover", s, None, Some(m)));
        }
    }
    out
}

/// Every device's snapshot now: a daemon that is gone is `down`; one alive
/// that does not answer (starting, busy) stays as `last` saw it.
pub fn poll(
    run_dir: &Path,
    last: Option<&BTreeMap<String, Snapshot>>,
) -> Result<BTreeMap<String, Snapshot>> {
    let mut out = BTreeMap::new();
    for st in crate::device::states(run_dir)? {
        let s = match crate::device::status(&st.name, run_dir) {
            Ok(s) => Snapshot::of(&s),
            // Alive and not answering (starting, or busy): as it was last
            // seen; not seen yet, it is left for the next poll.
            Err(_) if tandem::control::pid_alive(st.pid) => {
                match last.and_then(|l| l.get(&st.name)) {
                    Some(prev) => prev.clone(),
                    None => continue,
                }
            }
            Err(e) => Snapshot::of(&DeviceStatus::of(&st, State::Down, Some(format!("{e:#}")))),
        };
        out.insert(st.name.clone(), s);
    }
    Ok(out)
}

/// Streams the events to `emit` until it returns false; with `once`, only
/// the `exists` lines.
pub fn stream(
    run_dir: &Path,
    every: Duration,
    once: bool,
    mut emit: impl FnMut(&Event) -> bool,
) -> Result<()> {
    let mut last = poll(run_dir, None)?;
    for e in diff(None, &last, now()) {
        if !emit(&e) {
            return Ok(());
        }
    }
    if once {
        return Ok(());
    }
    loop {
        std::thread::sleep(every);
        let next = poll(run_dir, Some(&last))?;
        for e in diff(Some(&last), &next, now()) {
            if !emit(&e) {
                return Ok(());
            }
        }
        last = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: State) -> Snapshot {
        Snapshot {
            state,
            message: None,
            holding: None,
            peer: None,
            paused: false,
            verifying: false,
            verify_mismatched: 0,
            takeovers: 0,
        }
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{} {}", e.name, e.event))
            .collect()
    }

    #[test]
    fn changes_become_events_in_order() {
        let mut a = BTreeMap::new();
        a.insert("vm0".to_string(), snap(State::Live));
        a.insert("vm1".to_string(), snap(State::Resyncing));
        assert_eq!(names(&diff(None, &a, 1.0)), ["vm0 exists", "vm1 exists"]);
        assert!(diff(Some(&a), &a, 2.0).is_empty(), "nothing changed");

        let mut b = a.clone();
        b.remove("vm1");
        let mut vm0 = snap(State::Degraded);
        vm0.message = Some("secondary /dev/x is gone".into());
        vm0.paused = true;
        vm0.verifying = true;
        vm0.holding = Some(Holding::Local);
        vm0.peer = Some("[::1]:7789".into());
        b.insert("vm0".into(), vm0);
        b.insert("vm2".into(), snap(State::Live));
        let ev = diff(Some(&a), &b, 3.0);
        assert_eq!(
            names(&ev),
            [
                "vm1 removed",
                "vm0 state",
                "vm0 peer-lost",
                "vm0 mirror-paused",
                "vm0 verify-started",
                "vm2 created"
            ]
        );
        assert_eq!(
            ev[1].line(),
            "3.000 vm0 state live -> degraded: secondary /dev/x is gone"
        );
        let json = serde_json::to_value(&ev[1]).unwrap();
        assert_eq!(json["from"], "live");
        assert_eq!(json["state"], "degraded");

        let mut c = b.clone();
        let vm0 = c.get_mut("vm0").unwrap();
        vm0.verifying = false;
        vm0.verify_mismatched = 2;
        vm0.holding = Some(Holding::Peer);
        vm0.takeovers = 1;
        let ev = diff(Some(&b), &c, 4.0);
        assert_eq!(
            names(&ev),
            ["vm0 peer-connected", "vm0 verify-done", "vm0 takeover"]
        );
        assert!(ev[1].line().contains("2 region(s) mismatched"));
    }
}
