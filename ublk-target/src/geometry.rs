//! How a device is cut into regions: the unit the record tracks.

use crate::error::{Error, Result};

/// Smallest allowed region: 64 KiB.
pub const MIN_REGION_SIZE: u64 = 64 << 10;
/// Largest allowed region: 64 MiB.
pub const MAX_REGION_SIZE: u64 = 64 << 20;
/// Default region: 1 MiB.
pub const DEFAULT_REGION_SIZE: u64 = 1 << 20;

/// A device of `device_size` bytes cut into power-of-two regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    device_size: u64,
    region_shift: u32,
}

impl Geometry {
    /// Validates the region size (a power of two from 64 KiB to 64 MiB).
    pub fn new(device_size: u64, region_size: u64) -> Result<Self> {
        check_region_size(region_size)?;
        Ok(Geometry {
            device_size,
            region_shift: region_size.trailing_zeros(),
        })
    }

    /// A geometry with any power-of-two region size (used by the simulator's
    /// reference policies, whose chunks lie outside the daemon's allowed range).
    pub fn with_any_region(device_size: u64, region_size: u64) -> Result<Self> {
        if !region_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "region size {region_size} is not a power of two"
            )));
        }
        Ok(Geometry {
            device_size,
            region_shift: region_size.trailing_zeros(),
        })
    }

    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Number of regions, the last one possibly partial.
    pub fn regions(&self) -> u64 {
        self.device_size.div_ceil(self.region_size())
    }

    /// The region holding byte `offset`.
    pub fn region_of(&self, offset: u64) -> u64 {
        offset >> self.region_shift
    }

    /// The regions touched by `len` bytes at `offset` (empty for `len == 0`).
    pub fn regions_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        self.region_of(offset)..self.region_of(offset + len - 1) + 1
    }

    /// Byte range of region `r`, clipped to the device.
    pub fn region_bytes(&self, r: u64) -> std::ops::Range<u64> {
        let start = r << self.region_shift;
        start..(start + self.region_size()).min(self.device_size)
    }

    /// Checks that `len` bytes at `offset` lie within the device.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.device_size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.device_size,
            }),
        }
    }
}

/// Refuses a region size that is not a power of two in 64 KiB..=64 MiB.
pub fn check_region_size(region_size: u64) -> Result<()> {
    if !region_size.is_power_of_two() {
        return Err(Error::Config(format!(
            "region size {region_size} is not a power of two"
        )));
    }
    if !(MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&region_size) {
        return Err(Error::Config(format!(
            "region size {region_size} is outside 64KiB..64MiB"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_cover_the_device() {
        let g = Geometry::new(10 << 20 | 4096, 1 << 20).unwrap();
        assert_eq!(g.regions(), 11);
        assert_eq!(g.region_bytes(10), (10 << 20)..(10 << 20 | 4096));
        assert_eq!(g.regions_of(0, 0), 0..0);
        assert_eq!(g.regions_of((1 << 20) - 1, 2), 0..2);
        assert_eq!(g.regions_of(1 << 20, 1 << 20), 1..2);
    }

    #[test]
    fn region_size_is_validated() {
        assert!(Geometry::new(1 << 30, 3 << 20).is_err());
        assert!(Geometry::new(1 << 30, 32 << 10).is_err());
        assert!(Geometry::new(1 << 30, 128 << 20).is_err());
        assert!(Geometry::new(1 << 30, 64 << 10).is_ok());
        assert!(Geometry::new(1 << 30, 64 << 20).is_ok());
    }

    #[test]
    fn range_check_rejects_overflow() {
        let g = Geometry::new(1 << 20, 64 << 10).unwrap();
        assert!(g.check_range(0, 1 << 20).is_ok());
        assert!(g.check_range(1, 1 << 20).is_err());
        assert!(g.check_range(u64::MAX, 2).is_err());
    }
}
