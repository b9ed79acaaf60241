//! Both data devices on one disk: the engine says so in its status (and its
//! log), since that disk's loss then takes both copies unless a redundant
//! layer between covers it. On two file systems it says nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tandem::engine::Paths;
use tandem::{Engine, EngineConfig};

const SIZE: u64 = 4 << 20;

fn status_of(primary: &Path, secondary: &Path, record: &Path) -> tandem::EngineStatus {
    for p in [primary, secondary] {
        std::fs::File::create(p).unwrap().set_len(SIZE).unwrap();
    }
    let paths = Paths {
        primary: primary.into(),
        secondary: secondary.into(),
        record: record.into(),
    };
    let config = EngineConfig {
        region_size: 64 << 10,
        assume_clean: true,
        ..EngineConfig::default()
    };
    let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    let st = e.status();
    e.shutdown().unwrap();
    st
}

#[test]
fn the_status_names_the_disk_both_devices_are_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = status_of(&d.join("p"), &d.join("s"), &d.join("r"));
    eprintln!(
        "two files in one directory: shared_disks {:?}",
        st.shared_disks
    );
    assert!(!st.shared_disks.is_empty(), "{:?}", st.shared_disks);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["shared_disks"], serde_json::json!(st.shared_disks));

    let shm = Path::new("/dev/shm");
    let apart =
        std::fs::metadata(shm).is_ok_and(|m| m.dev() != std::fs::metadata(d).unwrap().dev());
    if !apart {
        eprintln!("SKIPPED part: /dev/shm is not another file system here");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    let st = status_of(&d.join("p2"), &other.path().join("s2"), &d.join("r2"));
    assert!(st.shared_disks.is_empty(), "{:?}", st.shared_disks);
    let json = serde_json::to_value(&st).unwrap();
    assert!(json.get("shared_disks").is_none(), "{json}");
}
