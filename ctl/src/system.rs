//! tandem as a system service: the config files (`enable`, `disable`), the
//! systemd generator that turns them into units, and the udev rule's helper
//! that names `/dev/tandem/NAME`.
//!
//! `tandemctl enable NAME ARGS` writes `/etc/tandem/NAME.toml` and starts
//! `tandem@NAME.service`. At every boot and `systemctl daemon-reload`, the
//! generator (`tandem-generator`, which runs `tandemctl systemd-generator`) reads the
//! config files: a device whose primary is a block device is wanted by that
//! device's unit (it starts when the primary appears, at boot or later) and
//! ordered after it; one over files is wanted by `tandem.target`. Both wait
//! for the filesystems of their files and record (`RequiresMountsFor=`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tandem::args::{check_name, DeviceArgs};
use tandem::control::RunFiles;
use tandem::units::TimeSpan;

/// The template unit every device runs under.
pub const UNIT_TEMPLATE: &str = "tandem@.service";
/// Where the package installs the units.
pub const UNIT_DIR: &str = "/usr/lib/systemd/system";
/// The generator's name (a script that runs `tandemctl systemd-generator`).
pub const GENERATOR_NAME: &str = "tandem-generator";
/// How long a managed device waits for a missing secondary at start before
/// it starts degraded (mdadm's last-resort timer waits as long).
pub const DEFAULT_DEGRADED_AFTER: &str = "30s";

/// What `enable` did.
#[derive(Debug, Clone, Serialize)]
pub struct Enabled {
    pub name: String,
    pub config: String,
    pub unit: String,
    pub started: bool,
    /// `/dev/tandem/NAME`, once started.
    pub device: Option<String>,
    pub warnings: Vec<String>,
}

/// What `disable` did.
#[derive(Debug, Clone, Serialize)]
pub struct Disabled {
    pub name: String,
    pub config: String,
    pub stopped: bool,
}

/// The unit of device `name`.
pub fn unit_name(name: &str) -> String {
    format!("tandem@{name}.service")
}

/// Writes the config file of `name` and (unless `no_start`) starts it
/// through systemd. A managed device gets defaults fit for boot: its
/// identity from its name (`pair_name`: kernel names such as /dev/sdb may
/// differ at the next boot, and the record must still be recognised) and
/// a degraded start 30 s after a missing secondary. An existing config
/// with other settings is replaced only with `replace`.
pub fn enable(
    name: &str,
    mut args: DeviceArgs,
    config_dir: &Path,
    no_start: bool,
    replace: bool,
) -> Result<Enabled> {
    check_name(name)?;
    args.make_absolute()?;
    if args.pair_name.is_none() {
        args.pair_name = Some(name.to_string());
    }
    if args.degraded_after.is_none() {
        args.degraded_after = Some(DEFAULT_DEGRADED_AFTER.parse::<TimeSpan>()?);
    }
    let config = args.engine_config()?;
    // `--assume-clean` is for the first start only: the record is created
    // clean now, and the config file does not say it (at a later start
    // without a record, the whole device must be copied).
    let assume_clean = std::mem::take(&mut args.assume_clean);
    let path = tandem::config::path(config_dir, name);
    let text = tandem::config::render(name, &args)?;
    // What would be written must read back as these arguments.
    tandem::config::parse(&path, &text)?;
    match std::fs::read_to_string(&path) {
        Ok(old) if old == text => {}
        Ok(_) if !replace => bail!(
            "{} exists with other settings; `tandemctl disable {name}` first, or give \
             --replace to overwrite it",
            path.display()
        ),
        _ => tandem::config::write(config_dir, name, &text)?,
    }
    if assume_clean && !args.paths().create_clean_record(&config)? {
        log::info!(
            "{}: the record exists already; --assume-clean changes nothing",
            args.record.display()
        );
    }
    let mut warnings = path_warnings(&args);
    warnings.extend(signature_warnings(&args));
    if !args.primary.exists() {
        warnings.push(format!(
            "--primary {} does not exist yet: the device starts when it appears",
            args.primary.display()
        ));
    }
    let unit = unit_name(name);
    let mut out = Enabled {
        name: name.into(),
        config: path.display().to_string(),
        unit: unit.clone(),
        started: false,
        device: None,
        warnings,
    };
    if no_start {
        return Ok(out);
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["start", &unit])?;
    out.started = true;
    out.device = Some(format!("/dev/tandem/{name}"));
    Ok(out)
}

/// Stops `name` through systemd (a clean stop: the device is deleted),
/// removes its config file, and reloads systemd so that it does not start
/// again, at boot or when its primary appears.
pub fn disable(name: &str, config_dir: &Path, no_stop: bool) -> Result<Disabled> {
    check_name(name)?;
    let path = tandem::config::path(config_dir, name);
    if !path.exists() {
        bail!(
            "device {name:?} is not enabled: {} does not exist",
            path.display()
        );
    }
    if !no_stop {
        systemctl(&["stop", &unit_name(name)])?;
    }
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    if !no_stop {
        systemctl(&["daemon-reload"])?;
    }
    Ok(Disabled {
        name: name.into(),
        config: path.display().to_string(),
        stopped: !no_stop,
    })
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .with_context(|| format!("run systemctl {} (is systemd running?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The data devices and the record given by names that can change between
/// boots (`/dev/sdb`, `/dev/vdb`, `/dev/nvme0n1`, `/dev/loop0`): each
/// warning names a stable link to the same device where there is one.
pub fn path_warnings(args: &DeviceArgs) -> Vec<String> {
    let mut out = Vec::new();
    for (key, p) in [
        ("--primary", &args.primary),
        ("--secondary", &args.secondary),
    ] {
        if !is_kernel_name(p) {
            continue;
        }
        let better = stable_links(p);
        let hint = match better.first() {
            Some(l) => format!("use {l} instead"),
            None => "prefer a name under /dev/disk/by-id/".into(),
        };
        out.push(format!(
            "{key} {} is a kernel name, which can name another disk after a reboot; {hint}",
            p.display()
        ));
    }
    out
}

/// A path under `/dev` that is not a link and not under a directory of
/// stable names.
fn is_kernel_name(p: &Path) -> bool {
    let stable = ["/dev/disk/", "/dev/mapper/", "/dev/md/", "/dev/tandem/"];
    p.starts_with("/dev")
        && !stable.iter().any(|s| p.starts_with(s))
        && std::fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink())
        && p.parent() == Some(Path::new("/dev"))
}

/// Links under `/dev/disk/by-id` (then by-path, by-uuid) to the device `p`.
fn stable_links(p: &Path) -> Vec<String> {
    let Ok(target) = std::fs::canonicalize(p) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in ["/dev/disk/by-id", "/dev/disk/by-path", "/dev/disk/by-uuid"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut links: Vec<String> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|l| std::fs::canonicalize(l).is_ok_and(|t| t == target))
            .map(|l| l.display().to_string())
            .collect();
        links.sort();
        out.extend(links);
    }
    out
}

/// Signatures the host activates by itself: an LVM physical volume or an
/// md member on the primary or secondary would be assembled under tandem's
/// feet, and writes through it would bypass the record.
const AUTO_ACTIVATED: [(&str, &str); 3] = [
    ("LVM2_member", "LVM may activate its volumes by itself"),
    ("linux_raid_member", "md may assemble it by itself"),
    ("zfs_member", "ZFS may import it by itself"),
];

/// Warnings for the data devices whose signature (read with `blkid -p`,
/// the device itself, not a cache) the host would activate by itself.
pub fn signature_warnings(args: &DeviceArgs) -> Vec<String> {
    signature_warnings_by(args, probe_type)
}

/// `signature_warnings` with the probe given (tests give their own).
fn signature_warnings_by(
    args: &DeviceArgs,
    probe: impl Fn(&Path) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, p) in [
        ("--primary", &args.primary),
        ("--secondary", &args.secondary),
    ] {
        let Some(kind) = probe(p) else { continue };
        if let Some((_, why)) = AUTO_ACTIVATED.iter().find(|(k, _)| *k == kind) {
            out.push(format!(
                "{key} {} carries a {kind} signature: {why}, and writes through that \
                 path would bypass the record; exclude it (e.g. LVM's global_filter, \
                 mdadm.conf's AUTO -all) or wipe the signature",
                p.display()
            ));
        }
    }
    out
}

/// The TYPE that `blkid -p` finds on `p`, if any (and if blkid is there).
fn probe_type(p: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(p)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("TYPE=").map(str::to_string))
}

/// The udev rule's helper: the name of the kernel's block device `kernel`
/// (`ublkb3`, `ublkb3p1`) as `/dev/tandem/` gives it (`NAME`,
/// `NAME-part1`), from the state file the daemon writes before the disk
/// appears. `None` for a device that tandem does not serve.
pub fn udev_name(kernel: &str, run_dir: &Path) -> Result<Option<String>> {
    let Some(rest) = kernel.strip_prefix("ublkb") else {
        return Ok(None);
    };
    let (id, part) = match rest.split_once('p') {
        Some((id, part)) => (id, Some(part)),
        None => (rest, None),
    };
    let Ok(id) = id.parse::<u32>() else {
        return Ok(None);
    };
    if part.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Ok(None);
    }
    for st in crate::device::states(run_dir)? {
        if st.dev_id == id {
            return Ok(Some(match part {
                Some(p) => format!("{}-part{p}", st.name),
                None => st.name,
            }));
        }
    }
    Ok(None)
}

/// `systemd-escape --path`: the unit name part for a path.
pub fn escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let parts: Vec<&str> = s.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return "-".into();
    }
    let joined = parts.join("/");
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The systemd generator: for each config file in `config_dir`, the units
/// of its device in `out_dir` (the generator's normal directory). A config
/// file that does not load still gets its unit wanted by `tandem.target`,
/// so that its error (naming the file, the key and the value) shows in
/// `systemctl status` instead of the device silently not starting.
pub fn generate(config_dir: &Path, out_dir: &Path, unit_dir: &Path) -> Result<Vec<String>> {
    let template = unit_dir.join(UNIT_TEMPLATE);
    let mut made = Vec::new();
    let names = tandem::config::names(config_dir)?;
    if names.is_empty() {
        return Ok(made);
    }
    let link = |dir: &Path, unit: &str, target: &Path| -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let l = dir.join(unit);
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(target, &l).with_context(|| format!("link {}", l.display()))
    };
    link(
        &out_dir.join("multi-user.target.wants"),
        "tandem.target",
        &unit_dir.join("tandem.target"),
    )?;
    for name in names {
        let unit = unit_name(&name);
        let config = tandem::config::path(config_dir, &name);
        let args = match tandem::config::load(&config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{GENERATOR_NAME}: {e}");
                link(&out_dir.join("tandem.target.wants"), &unit, &template)?;
                made.push(unit);
                continue;
            }
        };
        let mut conf = format!(
            "# Generated by {GENERATOR_NAME} from {}\n[Unit]\nSourcePath={}\n",
            config.display(),
            config.display()
        );
        let mut mounts = vec![args.record.parent().unwrap_or(Path::new("/")).to_path_buf()];
        if args.primary.starts_with("/dev/") {
            let dev = format!("{}.device", escape_path(&args.primary));
            conf += &format!("After={dev}\nRequires={dev}\n");
            link(&out_dir.join(format!("{dev}.wants")), &unit, &template)?;
        } else {
            mounts.push(args.primary.clone());
            link(&out_dir.join("tandem.target.wants"), &unit, &template)?;
        }
        // Not the secondary's: a device starts degraded without it.
        for m in mounts {
            conf += &format!("RequiresMountsFor={}\n", m.display());
        }
        if args.peer.is_some() || args.listen.is_some() || tandem::dev::nbd::is_uri(&args.secondary)
        {
            // Two nodes, or a secondary on an NBD server: the link needs
            // the network.
            conf += "Wants=network-online.target\nAfter=network-online.target\n";
        }
        let dropin = out_dir.join(format!("{unit}.d"));
        std::fs::create_dir_all(&dropin).with_context(|| format!("create {}", dropin.display()))?;
        let f = dropin.join("50-tandem-generator.conf");
        std::fs::write(&f, conf).with_context(|| format!("write {}", f.display()))?;
        made.push(unit);
    }
    Ok(made)
}

/// The generator's entry point (NORMAL_DIR [EARLY_DIR LATE_DIR]). It
/// never fails the boot: problems are printed (systemd logs them).
pub fn generator_main(dirs: &[PathBuf]) {
    let Some(out) = dirs.first() else {
        eprintln!("{GENERATOR_NAME}: usage: {GENERATOR_NAME} NORMAL_DIR [EARLY_DIR LATE_DIR]");
        return;
    };
    let config_dir = std::env::var_os("TANDEM_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tandem::config::DEFAULT_CONFIG_DIR.into());
    if let Err(e) = generate(&config_dir, out, Path::new(UNIT_DIR)) {
        eprintln!("{GENERATOR_NAME}: {e:#}");
    }
}

/// The device a running daemon serves, for `enable`'s report.
pub fn served_device(name: &str, run_dir: &Path) -> Option<String> {
    RunFiles::new(run_dir, name)
        .read_state()
        .ok()
        .flatten()
        .map(|st| st.device_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> DeviceArgs {
        let text = format!(
            "primary = \"{0}/p\"\nsecondary = \"{0}/s\"\nrecord = \"{0}/r.rec\"\n",
            dir.display()
        );
        tandem::config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn escaping_matches_systemd_escape() {
        for (p, want) in [
            ("/dev/sdb", "dev-sdb"),
            (
                "/dev/disk/by-id/virtio-disk0",
                "dev-disk-by\\x2did-virtio\\x2ddisk0",
            ),
            ("/dev/loop0", "dev-loop0"),
            ("/var/lib/tandem/", "var-lib-tandem"),
            ("/", "-"),
            ("/a b/.c", "a\\x20b-.c"),
        ] {
            assert_eq!(escape_path(Path::new(p)), want, "{p}");
        }
        // The real tool agrees, where it is installed.
        if let Ok(out) = Command::new("systemd-escape")
            .args(["--path", "/dev/disk/by-id/virtio-disk0", "/a b/.c"])
            .output()
        {
            let real = String::from_utf8_lossy(&out.stdout);
            let ours = format!(
                "{} {}",
                escape_path(Path::new("/dev/disk/by-id/virtio-disk0")),
                escape_path(Path::new("/a b/.c"))
            );
            assert_eq!(real.trim(), ours);
        }
    }

    #[test]
    fn enable_writes_a_config_that_loads_and_disable_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("etc");
        let e = enable("vm0", args(d.path()), &conf, true, false).unwrap();
        assert!(!e.started);
        let loaded = tandem::config::load(&conf.join("vm0.toml")).unwrap();
        assert_eq!(loaded.pair_name.as_deref(), Some("vm0"));
        assert_eq!(loaded.degraded_after.unwrap().to_string(), "30s");
        assert!(!loaded.assume_clean);
        // The same again is fine; other settings need --replace.
        enable("vm0", args(d.path()), &conf, true, false).unwrap();
        let mut other = args(d.path());
        other.capacity = "64MiB".parse().unwrap();
        let err = enable("vm0", other.clone(), &conf, true, false).unwrap_err();
        assert!(format!("{err:#}").contains("--replace"), "{err:#}");
        enable("vm0", other, &conf, true, true).unwrap();
        let loaded = tandem::config::load(&conf.join("vm0.toml")).unwrap();
        assert_eq!(loaded.capacity.to_string(), "64MiB");
        // A bad value is refused before anything is written.
        let mut bad = args(d.path());
        bad.region_size = "3MiB".parse().unwrap();
        assert!(enable("vm1", bad, &conf, true, false).is_err());
        assert!(!conf.join("vm1.toml").exists());
        disable("vm0", &conf, true).unwrap();
        assert!(!conf.join("vm0.toml").exists());
        let err = disable("vm0", &conf, true).unwrap_err();
        assert!(format!("{err:#}").contains("not enabled"), "{err:#}");
    }

    #[test]
    fn assume_clean_makes_a_clean_record_now_and_is_not_saved() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("etc");
        let mut a = args(d.path());
        for p in [&a.primary, &a.secondary] {
            std::fs::File::create(p).unwrap().set_len(8 << 20).unwrap();
        }
        a.assume_clean = true;
        enable("vm0", a.clone(), &conf, true, false).unwrap();
        let text = std::fs::read_to_string(conf.join("vm0.toml")).unwrap();
        assert!(!text.contains("assume_clean"), "{text}");
        assert!(
            a.record.metadata().unwrap().len() > 0,
            "the record was made"
        );
        // The engine finds a record with nothing to resync.
        let loaded = tandem::config::load(&conf.join("vm0.toml")).unwrap();
        let config = loaded.engine_config().unwrap();
        let e =
            tandem::Engine::open_manual(loaded.paths().open(&config).unwrap(), &config).unwrap();
        assert_eq!(e.status().resync_total_bytes, 0);
        assert_eq!(e.status().start, tandem::engine::StartKind::Recovered);
        // Without the record, the next start copies everything.
        drop(e);
        std::fs::remove_file(&a.record).unwrap();
        let e =
            tandem::Engine::open_manual(loaded.paths().open(&config).unwrap(), &config).unwrap();
        assert_eq!(e.status().resync_total_bytes, 8 << 20);
    }

    #[test]
    fn the_generator_makes_a_unit_per_device() {
        let d = tempfile::tempdir().unwrap();
        let (conf, out, units) = (
            d.path().join("etc"),
            d.path().join("out"),
            d.path().join("lib"),
        );
        assert!(generate(&conf, &out, &units).unwrap().is_empty());
        assert!(!out.exists(), "nothing generated without config files");
        let mut block = args(d.path());
        block.primary = "/dev/disk/by-id/virtio-disk0".into();
        block.peer = Some("[::1]:7789".into());
        block.node_id = Some(1);
        // Written directly: enable would refuse a primary that is missing.
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("a.toml"),
            tandem::config::render("a", &block).unwrap(),
        )
        .unwrap();
        std::fs::write(
            conf.join("b.toml"),
            tandem::config::render("b", &args(d.path())).unwrap(),
        )
        .unwrap();
        std::fs::write(conf.join("c.toml"), "primary = 1\n").unwrap();
        let mut remote = args(d.path());
        remote.secondary = "nbd://[::1]:10809/disk".into();
        std::fs::write(
            conf.join("d.toml"),
            tandem::config::render("d", &remote).unwrap(),
        )
        .unwrap();
        let made = generate(&conf, &out, &units).unwrap();
        assert_eq!(
            made,
            [
                "tandem@a.service",
                "tandem@b.service",
                "tandem@c.service",
                "tandem@d.service"
            ]
        );
        let remote =
            std::fs::read_to_string(out.join("tandem@d.service.d/50-tandem-generator.conf"))
                .unwrap();
        assert!(remote.contains("After=network-online.target"), "{remote}");
        let dev = "dev-disk-by\\x2did-virtio\\x2ddisk0.device";
        let wanted = out.join(format!("{dev}.wants/tandem@a.service"));
        assert_eq!(
            std::fs::read_link(&wanted).unwrap(),
            units.join(UNIT_TEMPLATE)
        );
        let a = std::fs::read_to_string(out.join("tandem@a.service.d/50-tandem-generator.conf"))
            .unwrap();
        assert!(a.contains(&format!("Requires={dev}")), "{a}");
        assert!(a.contains("After=network-online.target"), "{a}");
        assert!(
            a.contains(&format!("RequiresMountsFor={}", d.path().display())),
            "{a}"
        );
        // Over files: wanted by tandem.target, after their filesystems.
        assert!(
            std::fs::symlink_metadata(out.join("tandem.target.wants/tandem@b.service")).is_ok()
        );
        let b = std::fs::read_to_string(out.join("tandem@b.service.d/50-tandem-generator.conf"))
            .unwrap();
        assert!(
            b.contains(&format!("RequiresMountsFor={}/p", d.path().display())),
            "{b}"
        );
        assert!(!b.contains("network-online"), "{b}");
        // A broken config is still started, so that its error shows.
        assert!(
            std::fs::symlink_metadata(out.join("tandem.target.wants/tandem@c.service")).is_ok()
        );
        assert!(
            std::fs::symlink_metadata(out.join("multi-user.target.wants/tandem.target")).is_ok()
        );
    }

    #[test]
    fn udev_names_come_from_the_state_files() {
        let d = tempfile::tempdir().unwrap();
        let st = tandem::control::DeviceState {
            name: "vm0".into(),
            dev_id: 3,
            pid: 1,
            args: args(d.path()),
        };
        RunFiles::new(d.path(), "vm0").write_state(&st).unwrap();
        let n = |k: &str| udev_name(k, d.path()).unwrap();
        assert_eq!(n("ublkb3").as_deref(), Some("vm0"));
        assert_eq!(n("ublkb3p2").as_deref(), Some("vm0-part2"));
        for other in ["ublkb4", "ublkc3", "sda", "ublkb3p", "ublkb3px", "ublkb"] {
            assert_eq!(n(other), None, "{other}");
        }
    }

    #[test]
    fn signatures_the_host_activates_are_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let a = args(d.path());
        let probe = |p: &Path| match p.file_name().and_then(|n| n.to_str()) {
            Some("p") => Some("LVM2_member".to_string()),
            Some("s") => Some("ext4".to_string()),
            _ => None,
        };
        let w = signature_warnings_by(&a, probe);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("--primary") && w[0].contains("LVM2_member"),
            "{w:?}"
        );
        // The real probe on a blank file finds nothing.
        std::fs::write(&a.primary, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(probe_type(&a.primary), None);
    }

    #[test]
    fn kernel_names_are_told_apart_from_stable_ones() {
        let d = tempfile::tempdir().unwrap();
        let mut a = args(d.path());
        assert!(path_warnings(&a).is_empty(), "files are stable");
        a.primary = "/dev/null".into();
        let w = path_warnings(&a);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("--primary /dev/null") && w[0].contains("reboot"),
            "{w:?}"
        );
        a.primary = "/dev/disk/by-id/x".into();
        assert!(path_warnings(&a).is_empty());
    }
}
