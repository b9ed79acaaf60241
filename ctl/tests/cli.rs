//! tandemctl as a user runs it: the real binary, real files, no ublk needed.
//! Cases that depend on whether this kernel has ublk say which way they ran.

use std::path::Path;
use std::process::{Command, Output};

fn tandemctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .args(args)
        .output()
        .expect("run tandemctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn files(dir: &Path, primary: u64, secondary: u64) -> (String, String, String) {
    let p = dir.join("p.img");
    let s = dir.join("s.img");
    std::fs::File::create(&p).unwrap().set_len(primary).unwrap();
    std::fs::File::create(&s)
        .unwrap()
        .set_len(secondary)
        .unwrap();
    (
        p.display().to_string(),
        s.display().to_string(),
        dir.join("r.rec").display().to_string(),
    )
}

/// `tandemctl add NAME` over the given paths, in run directory `run`.
fn add_args<'a>(name: &'a str, p: &'a str, s: &'a str, r: &'a str, run: &'a str) -> Vec<&'a str> {
    vec![
        "add",
        name,
        "--primary",
        p,
        "--secondary",
        s,
        "--record",
        r,
        "--run-dir",
        run,
    ]
}

#[test]
fn bad_input_is_refused_naming_the_value_and_nothing_is_created() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let run = run.to_str().unwrap();
    let (p, s, r) = files(d.path(), 8 << 20, 4 << 20);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--region-size", "3MiB"], vec!["3MiB"]),
        (vec!["--capacity", "lots"], vec!["lots"]),
        (vec!["--policy", "magic"], vec!["magic"]),
        (
            vec!["--cache", "sometimes"],
            vec!["--cache", "sometimes", "writeback"],
        ),
        (vec!["--max-lag", "later"], vec!["--max-lag", "later"]),
        (vec![], vec!["smaller", "8388608", "4194304"]),
    ];
    for (extra, needles) in cases {
        let mut args = add_args("t1", &p, &s, &r, run);
        args.extend(extra.iter());
        let o = tandemctl(&args);
        assert!(!o.status.success(), "{args:?} was accepted");
        for n in needles {
            assert!(
                stderr(&o).contains(n),
                "{:?} does not mention {n:?}",
                stderr(&o)
            );
        }
    }
    let o = tandemctl(&add_args("t1", &p, &p, &r, run));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
    let o = tandemctl(&add_args("t1", "/nonexistent/p", &s, &r, run));
    assert!(stderr(&o).contains("/nonexistent/p"), "{}", stderr(&o));
    assert!(!Path::new(&r).exists(), "a refused add created the record");
    assert!(!Path::new(run).join("t1.json").exists());
}

#[test]
fn add_without_ublk_says_so_and_points_to_the_vm() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let (p, s, r) = files(d.path(), 8 << 20, 8 << 20);
    let o = tandemctl(&add_args("t2", &p, &s, &r, run.to_str().unwrap()));
    if Path::new("/dev/ublk-control").exists() {
        eprintln!(
            "NOTE: this kernel has ublk; the no-ublk message is checked in the VM suite instead"
        );
        return;
    }
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("no ublk") && e.contains("scripts/demo"), "{e}");
    assert!(!Path::new(&r).exists(), "nothing is created without ublk");
}

#[test]
fn status_list_and_del_of_unknown_devices() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().to_str().unwrap();
    let o = tandemctl(&["list", "--json", "--run-dir", run]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    for cmd in ["status", "del", "recover", "wait-synced"] {
        let o = tandemctl(&[cmd, "nosuch", "--run-dir", run]);
        assert!(!o.status.success(), "{cmd} of an unknown device succeeded");
        assert!(
            stderr(&o).contains("no device named \"nosuch\""),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    let o = tandemctl(&["status", "bad/name", "--run-dir", run]);
    assert!(stderr(&o).contains("device name"), "{}", stderr(&o));
}
