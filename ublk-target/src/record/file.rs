//! The persistent region file. (Being written.)

use crate::dev::Dev;
use crate::error::Result;
use crate::geometry::Geometry;

use super::{Image, RecordStore};

/// Regions one 4 KiB page of the file covers.
pub const REGIONS_PER_PAGE: u64 = 32512;

/// What opening an existing region file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The file was valid; these regions were in the durable record.
    Loaded(Vec<u64>),
    /// The file could not be trusted; the reason, for the operator.
    Corrupt(String),
}

/// The record's durable store on a regular file or a small block device.
pub struct RegionFile {
    _dev: Dev,
}

impl RegionFile {
    pub fn create(_dev: Dev, _geometry: &Geometry, _identity: u64, _all_set: bool) -> Result<Self> {
        todo!()
    }

    pub fn open(_dev: Dev, _geometry: &Geometry, _identity: u64) -> Result<(Self, LoadOutcome)> {
        todo!()
    }
}

impl RecordStore for RegionFile {
    fn regions_per_page(&self) -> u64 {
        REGIONS_PER_PAGE
    }

    fn write_pages(&mut self, _image: &Image, _pages: &[u64]) -> Result<()> {
        todo!()
    }
}
