//! A secondary missing at start (`--degraded-after`): the engine serves
//! degraded, the record keeps what is written, and once the secondary's
//! path is back the mirror copies what the record lists, nothing more.

use std::time::{Duration, Instant};

use tandem::engine::{Data, Paths};
use tandem::status::State;
use tandem::{Engine, EngineConfig, Request};

const REGION: u64 = 64 << 10;
const SIZE: u64 = 4 << 20;

fn write(e: &Engine, offset: u64, byte: u8) {
    let buf = vec![byte; REGION as usize];
    e.serve(Request::write(offset, REGION, false), Data::From(&buf))
        .unwrap();
}

#[test]
fn a_missing_secondary_starts_degraded_and_catches_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        primary: dir.path().join("p"),
        secondary: dir.path().join("s"),
        record: dir.path().join("r"),
    };
    for p in [&paths.primary, &paths.secondary] {
        std::fs::File::create(p).unwrap().set_len(SIZE).unwrap();
    }
    let config = EngineConfig {
        region_size: REGION,
        assume_clean: true,
        identity: Some(tandem::engine::named_identity("vm0")),
        allow_missing_secondary: true,
        ..EngineConfig::default()
    };
    // A first life with both devices: region 1 written and copied.
    let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    write(&e, REGION, 1);
    assert!(e.wait_synced(Duration::from_secs(10)));
    e.shutdown().unwrap();
    drop(e);

    // The secondary is missing at the next start.
    let away = dir.path().join("s.away");
    std::fs::rename(&paths.secondary, &away).unwrap();
    let strict = EngineConfig {
        allow_missing_secondary: false,
        ..config.clone()
    };
    let refused = paths.open(&strict).err().expect("refused").to_string();
    assert!(refused.contains("secondary"), "{refused}");
    let e = Engine::open(paths.open(&config).unwrap(), &config).unwrap();
    let st = e.status();
    assert_eq!(st.state, State::Degraded);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|m| m.contains("missing")),
        "{:?}",
        st.last_error
    );
    write(&e, 5 * REGION, 5);
    std::thread::sleep(Duration::from_millis(300));
    assert!(e.status().dirty_bytes >= REGION, "the write stays recorded");
    assert!(!e.wait_synced(Duration::from_millis(200)));

    // It appears: the watch reopens it and the record's regions are copied.
    std::fs::rename(&away, &paths.secondary).unwrap();
    let start = Instant::now();
    assert!(
        e.wait_synced(Duration::from_secs(20)),
        "caught up: {:?}",
        e.status()
    );
    let st = e.status();
    assert_ne!(st.state, State::Degraded, "{st:?}");
    assert!(
        st.bytes_copied < SIZE,
        "only what the record lists is copied: {} bytes",
        st.bytes_copied
    );
    eprintln!(
        "caught up {:.1}s after the secondary appeared, {} bytes copied",
        start.elapsed().as_secs_f64(),
        st.bytes_copied
    );
    e.shutdown().unwrap();
    assert_eq!(
        std::fs::read(&paths.primary).unwrap(),
        std::fs::read(&paths.secondary).unwrap()
    );
}
