//! Byte sizes as people write them: `4096`, `64KiB`, `1MiB`, `1G`.

use crate::error::{Error, Result};

/// Parses a size with an optional binary unit (K, KiB, M, MiB, G, GiB, T, TiB;
/// case-insensitive). The error names the value.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let bad = |why: &str| Error::Config(format!("invalid size {text:?}: {why}"));
    if num.is_empty() {
        return Err(bad(
            "expected a number, optionally followed by KiB, MiB, GiB or TiB",
        ));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad("unknown unit; use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| bad("too large for 64 bits"))
}

/// Parses a duration: a number of seconds, optionally with a unit (`us`, `ms`,
/// `s`, `min`), e.g. `10`, `2.5s`, `500ms`, `300us`. The error names the value.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: &str| Error::Config(format!("invalid duration {text:?}: {why}"));
    let n: f64 = num.parse().map_err(|_| {
        bad("expected a number of seconds, optionally followed by us, ms, s or min")
    })?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" => 1.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "min" => 60.0,
        _ => return Err(bad("unknown unit; use us, ms, s or min")),
    };
    std::time::Duration::try_from_secs_f64(n * scale).map_err(|_| bad("out of range"))
}

/// Formats bytes with the largest binary unit that keeps two decimals honest.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1min").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("300us").unwrap(), Duration::from_micros(300));
        assert_eq!(parse_duration("50µs").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "soon", "-1", "1h", "1e999"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
    }

    #[test]
    fn errors_name_the_value() {
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "1MB",
            "-1",
            "99999999999999999999",
            "16777216TiB",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1 << 20), "1.00 MiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
