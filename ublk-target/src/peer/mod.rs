//! The second appliance: a node's record held durably by its peer.
//!
//! - `wire`: the link's versioned, checksummed frames.
//! - `holder`: node B's side, which holds its peers' records in region files
//!   and acknowledges each update once it is durable.
//! - `store`: node A's side, a `RecordStore` that waits for the peer's
//!   acknowledgement, and falls back to the local region file (direct
//!   service) while the peer cannot be reached.
//! - `checks`: dual-active, this node's checks session with the other
//!   node (status checks, copy grants), asked again until answered.
//! - `view`: dual-active, this node's view of the other node's record as
//!   held here, which the engine reads on every read and write.
//! - `takeover`: node B's watch on the device's lease, and the copy of the
//!   held record once the owner's lease expired.

pub mod checks;
pub mod holder;
pub mod store;
pub mod takeover;
pub mod view;
pub mod wire;

#[cfg(test)]
mod dual_sim;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use holder::{Answerer, HeldStatus, Holder, HolderStatus, WatchStatus};

/// Dual-active: a node lands a granted copy on the secondary only within
/// this long of asking for the grant.
pub const COPY_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
/// A grant that is not ended expires after this long (its copier can no
/// longer land it).
pub const GRANT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(4);
pub use store::{Holding, PeerStatus, PeerStore};
pub use takeover::{TakeoverReport, TakeoverSpec};
pub use view::HeldView;

use crate::error::{Error, Result};

/// Checks a peer address (`HOST:PORT`, `[IPV6]:PORT`) before anything is
/// started; it is resolved when the node connects.
pub fn check_address(addr: &str) -> Result<()> {
    let port = addr
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if !host.is_empty() && p != 0 => Ok(()),
        _ => Err(Error::Config(format!(
            "--peer {addr:?}: expected HOST:PORT (e.g. 127.0.0.1:7789 or [::1]:7789)"
        ))),
    }
}

/// The first socket address `address` (`HOST:PORT`) names.
fn resolve(address: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("peer address {address:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("peer address {address:?}: no address")))
}

/// Replaces the small file `path` with `text` durably: written to a
/// temporary file, synced, renamed over `path`, and the directory synced.
pub(crate) fn write_durably(path: &std::path::Path, text: &str) -> Result<()> {
    // NAME.tmp beside NAME (not with the extension replaced: two files of one
    // stem, such as ID.owner and ID.stopped, must not share a temporary).
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    std::fs::write(&tmp, text).map_err(|e| io("write", e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
    }
    Ok(())
}
