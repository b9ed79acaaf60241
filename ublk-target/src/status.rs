//! A device's state as the status reports it: one enum, the same for the
//! daemon that builds the status and the tools that read it.

use serde::{Deserialize, Serialize};

/// The version of the status JSON (its `version` key). Readers ignore keys
/// they do not know, so fields can be added (peers, roles) without a new
/// version; a key that changes meaning gets one.
pub const STATUS_VERSION: u32 = 1;

/// What a device is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Mirroring, nothing to catch up on beyond the normal lag.
    #[default]
    Live,
    /// Copying what the record lists (after a start or a new secondary).
    Resyncing,
    /// Resyncing after the daemon reattached to a device whose daemon died.
    Recovering,
    /// The secondary fails; the record tracks what it lacks, host I/O goes on.
    Degraded,
    /// The record cannot be updated: writes that would need an update are
    /// refused with an error, writes to recorded regions go on.
    RecordFailed,
    /// The device's lease is lost or lapsed: writes are refused and nothing
    /// is marked clean (another node may own the device now).
    Fenced,
    /// Serving the primary alone, record and mirror off (benchmark baseline).
    Passthrough,
    /// The daemon is gone; host I/O waits for `tandemctl recover`.
    Down,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Resyncing => "resyncing",
            State::Recovering => "recovering",
            State::Degraded => "degraded",
            State::RecordFailed => "record-failed",
            State::Fenced => "fenced",
            State::Passthrough => "passthrough",
            State::Down => "down",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_json() {
        for s in [
            State::Live,
            State::Resyncing,
            State::Recovering,
            State::Degraded,
            State::RecordFailed,
            State::Passthrough,
            State::Down,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        }
    }
}
