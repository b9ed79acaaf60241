//! Files and block devices, with I/O through `rings`. (Being written.)

use std::path::Path;

use crate::error::Result;

/// How to open a device.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Bypass the page cache where the file system allows (O_DIRECT).
    pub direct: bool,
    /// Create a regular file of `create_size` bytes when it does not exist.
    pub create_size: Option<u64>,
}

/// A regular file or block device.
pub struct FileDev {}

impl FileDev {
    pub fn open(_path: &Path, _opts: &OpenOptions) -> Result<Self> {
        todo!()
    }
}
