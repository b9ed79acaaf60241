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
    RecordUpdate(String),
    /// The engine is shutting down.
    #[error("engine is stopped")]
    Stopped,
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The negative errno a ublk completion should carry for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => -(source.raw_os_error().unwrap_or(libc::EIO)),
            Error::Config(_) => -libc::EINVAL,
            Error::OutOfRange { .. } => -libc::EINVAL,
            Error::Corruption { .. } | Error::RecordUpdate(_) => -libc::EIO,
            Error::Stopped => -libc::ENODEV,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
