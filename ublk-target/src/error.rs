//! The engine's one error type: a stable kind, context, and a source.

use std::io;

/// Errors raised by the engine, the record and the devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on a device or file failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A configuration value was rejected; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The record file could not be trusted (bad magic, checksum, size, truncation).
    #[error("record file {path} is corrupt: {reason}")]
    Corruption { path: String, reason: String },
    /// A request fell outside the device.
    #[error("request at offset {offset} length {len} is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The record update could not be made durable, so the write was not issued.
    #[error("record update failed: {0}")]
    RecordUpdate(Failure),
    /// The engine is shutting down.
    #[error("engine is stopped")]
    Stopped,
    /// The peer holding the record failed to answer as the protocol says.
    #[error("{0}")]
    Peer(String),
    /// The peer refused this node: it no longer owns the device (another
    /// node took it over), so it must not go on serving writes that miss.
    #[error("this node no longer owns the device: {0}")]
    Fenced(String),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// A stable name of the error's kind, for machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Config(_) => "config",
            Error::Corruption { .. } => "corruption",
            Error::OutOfRange { .. } => "out_of_range",
            Error::RecordUpdate(_) => "record",
            Error::Stopped => "stopped",
            Error::Peer(_) => "peer",
            Error::Fenced(_) => "fenced",
        }
    }

    /// The negative errno a ublk completion should carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => -(source.raw_os_error().unwrap_or(libc::EIO)),
            Error::Config(_) => -libc::EINVAL,
            Error::OutOfRange { .. } => -libc::EINVAL,
            Error::Corruption { .. } => -libc::EIO,
            Error::RecordUpdate(f) => f.errno,
            Error::Stopped => -libc::ENODEV,
            Error::Peer(_) | Error::Fenced(_) => -libc::EIO,
        }
    }
}

/// A failure shared by several callers (one failed record update fails every
/// write that waited for it), or handed across a thread: the message and the
/// errno of the error it came from, so ENOSPC stays ENOSPC.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub message: String,
    /// Negative, as a ublk completion carries it.
    pub errno: i32,
}

impl Failure {
    /// A failure with no errno of its own: EIO.
    pub fn eio(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            errno: -libc::EIO,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        match e {
            // Already shared: keep it as it is, without a second prefix.
            Error::RecordUpdate(f) => f.clone(),
            e => Failure {
                message: e.to_string(),
                errno: e.errno(),
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
