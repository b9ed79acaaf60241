//! Device config files, `/etc/tandem/NAME.toml`: the arguments of
//! `tandemctl add` as the keys of [`DeviceArgs`] (`region_size = "1MiB"`,
//! the flag's name with `_` for `-`), read with errors that name the file,
//! the key and the value, and written by `tandemctl enable` with only the
//! keys that differ from their defaults. The systemd units start the
//! devices these files describe (`tandem-target start NAME`).

use std::path::{Path, PathBuf};

use crate::args::{check_name, DeviceArgs};
use crate::error::{Error, Result};

/// Where the config files are.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/tandem";

/// The config file of device `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Reads and checks the config file at `path`: every value parses, the
/// paths are absolute, and the arguments pass the validator of
/// `tandemctl add`. The devices themselves are not looked at (they may
/// appear later).
pub fn load(path: &Path) -> Result<DeviceArgs> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("config {}: {e}", path.display())))?;
    parse(path, &text)
}

/// Parses `text`, the contents of the config file at `path` (for the
/// messages).
pub fn parse(path: &Path, text: &str) -> Result<DeviceArgs> {
    let args: DeviceArgs = toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                let shown = text.lines().nth(line - 1).unwrap_or("").trim();
                format!(" line {line}: `{shown}`:")
            }
            None => ":".into(),
        };
        Error::Config(format!(
            "config {}{at} {}",
            path.display(),
            e.message().trim()
        ))
    })?;
    let in_file = |msg: String| Error::Config(format!("config {}: {msg}", path.display()));
    let paths = [
        ("primary", Some(&args.primary)),
        ("secondary", Some(&args.secondary)),
        ("record", Some(&args.record)),
        ("lease", args.lease.as_ref()),
        ("other_lease", args.other_lease.as_ref()),
    ];
    for (key, p) in paths {
        let uri = key == "secondary" && crate::dev::nbd::is_uri(&args.secondary);
        if let Some(p) = p.filter(|p| !p.is_absolute() && !uri) {
            return Err(in_file(format!(
                "{key} = {:?}: must be an absolute path (or, for secondary, an nbd:// URI)",
                p.display().to_string()
            )));
        }
    }
    args.engine_config()
        .map_err(|e| in_file(flags_to_keys(&e.to_string())))?;
    Ok(args)
}

/// Writes the config file of `name` in `dir` (created if missing), durably:
/// a crash leaves the old file or the new one, never a torn one.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    crate::peer::write_durably(&path(dir, name), text)
}

/// The keys every config file has.
const PATHS: [&str; 3] = ["primary", "secondary", "record"];

/// The config file for `args`: a comment naming the device, then the keys
/// whose values differ from the defaults.
pub fn render(name: &str, args: &DeviceArgs) -> Result<String> {
    let encode = |e: toml::ser::Error| Error::Config(format!("encode the config of {name}: {e}"));
    let mut table = toml::Table::try_from(args).map_err(encode)?;
    let mut base = toml::Table::new();
    for key in PATHS {
        if let Some(v) = table.get(key) {
            base.insert(key.into(), v.clone());
        }
    }
    let defaults: DeviceArgs = base
        .try_into()
        .map_err(|e: toml::de::Error| Error::Config(format!("defaults of {name}: {e}")))?;
    let defaults = toml::Table::try_from(&defaults).map_err(encode)?;
    table.retain(|k, v| PATHS.contains(&k) || defaults.get(k) != Some(v));
    let body = toml::to_string(&table).map_err(encode)?;
    Ok(format!(
        "# tandem device {name}: the arguments of `tandemctl add` (see `tandemctl add --help`),\n\
         # keys with '_' for '-'. Started by tandem@{name}.service when its primary appears.\n{body}"
    ))
}

/// The names of the devices configured in `dir` (files `NAME.toml` whose
/// stem is a valid device name), sorted; none when `dir` does not exist.
pub fn names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e
            .map_err(|e| Error::io(format!("read {}", dir.display()), e))?
            .path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        if let Some(name) = p.file_stem().and_then(|s| s.to_str()) {
            if check_name(name).is_ok() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A validator message names command-line flags (`--region-size 3MiB`);
/// in a file, the same message names keys (`region_size 3MiB`).
fn flags_to_keys(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("--") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        let flag = &after[2..];
        let end = flag
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(flag.len());
        // A flag starts a word; a `--` inside a value (a path) stays.
        let at_word = out.is_empty() || out.ends_with([' ', '(', '`']);
        if end == 0 || !at_word {
            out.push_str("--");
            rest = flag;
        } else {
            out.push_str(&flag[..end].replace('-', "_"));
            rest = &flag[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/tandem/vm0.toml";

    fn minimal() -> String {
        "primary = \"/dev/disk/by-id/a\"\nsecondary = \"/dev/disk/by-id/b\"\n\
         record = \"/var/lib/tandem/vm0.rec\"\n"
            .into()
    }

    fn err(text: &str) -> String {
        parse(Path::new(FILE), text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let a = parse(Path::new(FILE), &minimal()).unwrap();
        assert_eq!(a.region_size.to_string(), "1MiB");
        assert_eq!(a.policy, "predictive");
        assert_eq!(a.degraded_after, None);
    }

    #[test]
    fn bad_values_name_the_file_the_key_and_the_value() {
        for (line, want) in [
            ("region_size = \"3MiB\"", "region_size 3MiB"),
            ("region_size = \"lots\"", "lots"),
            ("queues = 0", "queues 0"),
            ("capacty = \"1GiB\"", "capacty"),
            ("max_lag = \"soon\"", "soon"),
            ("cache = \"sometimes\"", "sometimes"),
            ("lease = \"/l\"", "node_id"),
            ("degraded_after = \"30s\"", "pair_name"),
        ] {
            let e = err(&format!("{}{line}\n", minimal()));
            assert!(e.contains(FILE) && e.contains(want), "{line}: {e}");
            assert!(!e.contains("--"), "{line}: flags named in a file: {e}");
        }
        // A value that does not parse shows its line.
        let e = err(&format!("{}region_size = \"lots\"\n", minimal()));
        assert!(e.contains("line 4") && e.contains("region_size"), "{e}");
        let e = err("primary = \"dev/sdb\"\nsecondary = \"/b\"\nrecord = \"/r\"\n");
        assert!(
            e.contains("primary") && e.contains("dev/sdb") && e.contains("absolute"),
            "{e}"
        );
        assert!(err("secondary = \"/b\"\nrecord = \"/r\"\n").contains("primary"));
    }

    #[test]
    fn render_writes_what_differs_and_reads_back() {
        let mut a = parse(Path::new(FILE), &minimal()).unwrap();
        let plain = render("vm0", &a).unwrap();
        assert_eq!(
            plain.lines().filter(|l| !l.starts_with('#')).count(),
            3,
            "{plain}"
        );
        a.capacity = "64MiB".parse().unwrap();
        a.degraded_after = Some("30s".parse().unwrap());
        a.pair_name = Some("vm0".into());
        a.max_copy_rate = Some("100MiB".parse().unwrap());
        let text = render("vm0", &a).unwrap();
        assert!(text.contains("capacity = \"64MiB\""), "{text}");
        assert!(text.contains("degraded_after = \"30s\""), "{text}");
        assert!(!text.contains("policy"), "{text}");
        assert_eq!(parse(Path::new(FILE), &text).unwrap(), a);
    }

    #[test]
    fn names_lists_the_config_files() {
        let d = tempfile::tempdir().unwrap();
        assert!(names(&d.path().join("none")).unwrap().is_empty());
        for f in ["b.toml", "a.toml", "notes.txt", ".hidden.toml"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(names(d.path()).unwrap(), ["a", "b"]);
        assert_eq!(path(d.path(), "a"), d.path().join("a.toml"));
    }

    #[test]
    fn flags_become_keys() {
        assert_eq!(
            flags_to_keys("--lease /l needs --node-id (this node's id)"),
            "lease /l needs node_id (this node's id)"
        );
        assert_eq!(flags_to_keys("a -- b"), "a -- b");
        assert_eq!(
            flags_to_keys("--primary /dev/disk/by-id/x--y-z: gone"),
            "primary /dev/disk/by-id/x--y-z: gone"
        );
    }
}
