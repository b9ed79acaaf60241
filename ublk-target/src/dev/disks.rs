//! Which disks hold a file or a block device, found in sysfs: from a
//! partition to its disk, and from a device-mapper or md device to the
//! devices beneath it (`slaves`), down to whole disks. The engine warns when
//! the primary and the secondary share one: the mirror then does not survive
//! that disk's loss, and every copy is a second write to it.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How deep stacked devices are followed (dm over md over a partition...).
const MAX_DEPTH: usize = 8;

/// The disks both `a` and `b` sit on, by name (`sda`, `nvme0n1`; a device
/// with no sysfs entry, such as tmpfs, is `device MAJ:MIN`). Empty when
/// they share none, or when either cannot be looked at.
pub fn shared_disks(a: &Path, b: &Path) -> Vec<String> {
    shared_in(Path::new("/sys"), a, b)
}

fn shared_in(sys: &Path, a: &Path, b: &Path) -> Vec<String> {
    match (disks_in(sys, a), disks_in(sys, b)) {
        (Some(x), Some(y)) => x.intersection(&y).cloned().collect(),
        _ => Vec::new(),
    }
}

/// The disks under `path`: those of the block device it is, or of the file
/// system it is on. None if `path` cannot be looked at.
fn disks_in(sys: &Path, path: &Path) -> Option<BTreeSet<String>> {
    let m = std::fs::metadata(path).ok()?;
    let dev = if m.file_type().is_block_device() {
        m.rdev()
    } else {
        m.dev()
    };
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let mut out = BTreeSet::new();
    match std::fs::canonicalize(sys.join(format!("dev/block/{major}:{minor}"))) {
        Ok(dir) => collect(&dir, 0, &mut out),
        Err(_) => {
            out.insert(format!("device {major}:{minor}"));
        }
    }
    Some(out)
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
    }

    impl Sysfs {
        fn new() -> Self {
            let s = Sysfs {
                root: tempfile::tempdir().unwrap(),
            };
            for d in ["dev/block", "devices/pci/block", "devices/virtual/block"] {
                std::fs::create_dir_all(s.root.path().join(d)).unwrap();
            }
            s
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

        /// Makes `dir` the device of the file system `file` is on.
        fn hold(&self, file: &Path, dir: &Path) {
            let dev = std::fs::metadata(file).unwrap().dev();
            let link = self.root.path().join(format!(
                "dev/block/{}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ));
            let _ = std::fs::remove_file(&link);
            symlink(dir, link).unwrap();
        }

        fn disks(&self, file: &Path) -> Vec<String> {
            disks_in(self.root.path(), file)
                .unwrap()
                .into_iter()
                .collect()
        }
    }

    /// A file in a temporary directory.
    fn a_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        (dir, file)
    }

    #[test]
    fn a_partition_is_on_its_disk_and_a_stack_on_the_disks_beneath_it() {
        let (dir, file) = a_file();
        let sys = Sysfs::new();

        sys.hold(&file, &sys.disk("nvme0n1"));
        assert_eq!(sys.disks(&file), ["nvme0n1"]);

        sys.hold(&file, &sys.partition("sda", "sda2"));
        assert_eq!(sys.disks(&file), ["sda"]);

        // An LVM volume on an md mirror of two partitions.
        let md = sys.stacked(
            "md0",
            &[&sys.partition("sdb", "sdb1"), &sys.partition("sdc", "sdc1")],
        );
        sys.hold(&file, &sys.stacked("dm-3", &[&md]));
        assert_eq!(sys.disks(&file), ["sdb", "sdc"]);

        // A device with no sysfs entry (tmpfs, overlay) is named by number.
        let empty = Sysfs::new();
        let dev = std::fs::metadata(&file).unwrap().dev();
        assert_eq!(
            empty.disks(&file),
            [format!(
                "device {}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            )]
        );
        assert_eq!(disks_in(sys.root.path(), &dir.path().join("missing")), None);
    }

    #[test]
    fn a_loop_of_slaves_ends() {
        let (_dir, file) = a_file();
        let sys = Sysfs::new();
        let a = sys.stacked("dm-0", &[]);
        let b = sys.stacked("dm-1", &[&a]);
        symlink(&b, a.join("slaves/dm-1")).unwrap();
        sys.hold(&file, &a);
        assert!(!sys.disks(&file).is_empty());
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
