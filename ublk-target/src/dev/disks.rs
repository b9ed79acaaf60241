//! Which disks hold a file or a block device, found in sysfs: from a
//! partition to its disk, and from a device-mapper or md device to the
//! devices beneath it (`slaves`), down to whole disks. The engine warns when
//! the primary and the secondary share one: unless a redundant layer between
//! (an md mirror, say) covers it, that disk's loss takes both copies, and
//! every copy is a second write to it.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How deep stacked devices are followed (dm over md over a partition...).
const MAX_DEPTH: usize = 8;

/// The disks both `a` and `b` sit on, by name (`sda`, `nvme0n1`). Two files
/// on one file system with no block device in sysfs (tmpfs, NFS, a btrfs
/// subvolume) share `file system MAJ:MIN`. Empty when they share nothing,
/// or when either cannot be looked at.
pub fn shared_disks(a: &Path, b: &Path) -> Vec<String> {
    let sys = Path::new("/sys");
    match (device_of(a), device_of(b)) {
        (Some(x), Some(y)) => shared(&disks_of(sys, x), &disks_of(sys, y)),
        _ => Vec::new(),
    }
}

fn shared(x: &BTreeSet<String>, y: &BTreeSet<String>) -> Vec<String> {
    x.intersection(y).cloned().collect()
}

/// The device number (major, minor) of the block device `path` is, or of
/// the file system it is on.
fn device_of(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    let dev = if m.file_type().is_block_device() {
        m.rdev()
    } else {
        m.dev()
    };
    Some((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)))
}

/// The whole disks under device `(major, minor)`, in the sysfs at `sys`.
fn disks_of(sys: &Path, (major, minor): (u64, u64)) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match std::fs::canonicalize(sys.join(format!("dev/block/{major}:{minor}"))) {
        Ok(dir) => collect(&dir, 0, &mut out),
        Err(_) => {
            out.insert(format!("file system {major}:{minor}"));
        }
    }
    out
}

/// Adds the whole disks under the sysfs block directory `dir`.
fn collect(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    let name = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned());
    if depth < MAX_DEPTH && dir.join("partition").exists() {
        if let Some(disk) = dir.parent() {
            return collect(disk, depth + 1, out);
        }
    }
    let below: Vec<PathBuf> = std::fs::read_dir(dir.join("slaves"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::canonicalize(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if below.is_empty() || depth >= MAX_DEPTH {
        out.extend(name(dir));
    } else {
        for d in below {
            collect(&d, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs tree laid out as the kernel's: `dev/block/MAJ:MIN` links to
    /// the device's directory; a partition's directory sits in its disk's
    /// and holds a `partition` file; a dm or md device's `slaves` links to
    /// the devices beneath it.
    struct Sysfs {
        root: tempfile::TempDir,
        next_minor: std::cell::Cell<u64>,
    }

    impl Sysfs {
        fn new() -> Self {
            let s = Sysfs {
                root: tempfile::tempdir().unwrap(),
                next_minor: 0.into(),
            };
            for d in ["dev/block", "devices/pci/block", "devices/virtual/block"] {
                std::fs::create_dir_all(s.root.path().join(d)).unwrap();
            }
            s
        }

        /// Gives `dir` a device number, as the kernel's `dev/block` does.
        fn number(&self, dir: &Path) -> (u64, u64) {
            let minor = self.next_minor.get();
            self.next_minor.set(minor + 1);
            let link = self.root.path().join(format!("dev/block/8:{minor}"));
            symlink(dir, link).unwrap();
            (8, minor)
        }

        fn disk(&self, name: &str) -> PathBuf {
            let d = self.root.path().join("devices/pci/block").join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        }

        fn partition(&self, disk: &str, name: &str) -> PathBuf {
            let d = self.disk(disk).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("partition"), "1\n").unwrap();
            d
        }

        fn stacked(&self, name: &str, below: &[&Path]) -> PathBuf {
            let d = self.root.path().join("devices/virtual/block").join(name);
            std::fs::create_dir_all(d.join("slaves")).unwrap();
            for b in below {
                symlink(b, d.join("slaves").join(b.file_name().unwrap())).unwrap();
            }
            d
        }

        fn disks(&self, dir: &Path) -> Vec<String> {
            disks_of(self.root.path(), self.number(dir))
                .into_iter()
                .collect()
        }

        fn shared(&self, a: &Path, b: &Path) -> Vec<String> {
            let sys = self.root.path();
            shared(
                &disks_of(sys, self.number(a)),
                &disks_of(sys, self.number(b)),
            )
        }
    }

    #[test]
    fn a_partition_is_on_its_disk_and_a_stack_on_the_disks_beneath_it() {
        let sys = Sysfs::new();
        assert_eq!(sys.disks(&sys.disk("nvme0n1")), ["nvme0n1"]);
        assert_eq!(
            sys.disks(&sys.partition("nvme0n1", "nvme0n1p2")),
            ["nvme0n1"]
        );
        assert_eq!(sys.disks(&sys.partition("sda", "sda2")), ["sda"]);
        // An LVM volume on an md mirror of two partitions, and a partition
        // of another md device.
        let sdb1 = sys.partition("sdb", "sdb1");
        let md0 = sys.stacked("md0", &[&sdb1, &sys.partition("sdc", "sdc1")]);
        assert_eq!(sys.disks(&sys.stacked("dm-3", &[&md0])), ["sdb", "sdc"]);
        let md1 = sys.stacked("md1", &[&sys.partition("sdd", "sdd1")]);
        let md1p1 = md1.join("md1p1");
        std::fs::create_dir_all(&md1p1).unwrap();
        std::fs::write(md1p1.join("partition"), "1\n").unwrap();
        assert_eq!(sys.disks(&md1p1), ["sdd"]);
        // A device with no sysfs entry (tmpfs, NFS) is a file system.
        assert_eq!(
            disks_of(sys.root.path(), (0, 45))
                .into_iter()
                .collect::<Vec<_>>(),
            ["file system 0:45"]
        );
    }

    #[test]
    fn what_two_devices_share() {
        let sys = Sysfs::new();
        let (sda1, sda2) = (sys.partition("sda", "sda1"), sys.partition("sda", "sda2"));
        assert_eq!(sys.shared(&sda1, &sda2), ["sda"]);
        let (sdb1, sdc1) = (sys.partition("sdb", "sdb1"), sys.partition("sdc", "sdc1"));
        assert_eq!(sys.shared(&sdb1, &sdc1), Vec::<String>::new());
        // Two LVM volumes on one volume group over sdb1 and sdc1, and a
        // volume over sdb1 alone against a partition of sdb.
        let lv1 = sys.stacked("dm-1", &[&sdb1, &sdc1]);
        let lv2 = sys.stacked("dm-2", &[&sdc1]);
        assert_eq!(sys.shared(&lv1, &lv2), ["sdc"]);
        let lv3 = sys.stacked("dm-3", &[&sdb1]);
        assert_eq!(sys.shared(&lv3, &sys.partition("sdb", "sdb2")), ["sdb"]);
        assert_eq!(sys.shared(&lv3, &lv2), Vec::<String>::new());
    }

    #[test]
    fn a_loop_of_slaves_ends() {
        let sys = Sysfs::new();
        let a = sys.stacked("dm-0", &[]);
        let b = sys.stacked("dm-1", &[&a]);
        symlink(&b, a.join("slaves/dm-1")).unwrap();
        let found = sys.disks(&a);
        assert!(
            found.iter().all(|d| d == "dm-0" || d == "dm-1") && !found.is_empty(),
            "{found:?}"
        );
    }

    #[test]
    fn two_files_in_one_directory_share_its_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let shared = shared_disks(&a, &b);
        assert!(!shared.is_empty(), "{shared:?}");
        assert_eq!(
            shared_disks(&a, &dir.path().join("missing")),
            Vec::<String>::new()
        );
        // A file on another file system (tmpfs, when /dev/shm is one) shares
        // nothing with the temporary directory's disk.
        let shm = Path::new("/dev/shm");
        let other_fs = std::fs::metadata(shm)
            .is_ok_and(|m| m.dev() != std::fs::metadata(dir.path()).unwrap().dev());
        if other_fs {
            let c = tempfile::NamedTempFile::new_in(shm).unwrap();
            assert_eq!(shared_disks(&a, c.path()), Vec::<String>::new());
        } else {
            eprintln!("SKIPPED part: /dev/shm is not another file system here");
        }
    }
}
