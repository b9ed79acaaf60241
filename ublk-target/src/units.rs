//! Sizes and durations as people write them (`4096`, `64KiB`, `1MiB`, `1G`;
//! `10s`, `500ms`, `300us`), and the typed values the configuration holds:
//! [`Size`] and [`TimeSpan`] parse, display back the same way, and serialize
//! as those strings, so a state file or a config file reads like the command
//! line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        parse_size(text).map(Size)
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that divides the size exactly: `1MiB`, `1536KiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    /// A string as on the command line, or a plain number of bytes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A length of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeSpan(pub std::time::Duration);

impl TimeSpan {
    pub const fn duration(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for TimeSpan {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        parse_duration(text).map(TimeSpan)
    }
}

impl fmt::Display for TimeSpan {
    /// The largest unit that keeps it whole: `10s`, `500ms`, `300us`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            f.write_str("0")
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{}s", self.0.as_secs_f64())
        }
    }
}

impl Serialize for TimeSpan {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeSpan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

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
    fn typed_values_display_as_they_parse() {
        for text in [
            "4095", "4KiB", "64KiB", "1MiB", "1536KiB", "1GiB", "2TiB", "0",
        ] {
            let v: Size = text.parse().unwrap();
            assert_eq!(v.to_string(), text);
            assert_eq!(v.to_string().parse::<Size>().unwrap(), v);
        }
        assert_eq!("1M".parse::<Size>().unwrap().to_string(), "1MiB");
        for text in ["10s", "500ms", "300us", "0", "2500ms"] {
            let v: TimeSpan = text.parse().unwrap();
            assert_eq!(v.to_string(), text);
        }
        assert_eq!("2.5s".parse::<TimeSpan>().unwrap().to_string(), "2500ms");
        // Serialized as the same strings; sizes also read from plain numbers.
        let s = Size(1 << 20);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"1MiB\"");
        assert_eq!(serde_json::from_str::<Size>("\"1MiB\"").unwrap(), s);
        assert_eq!(serde_json::from_str::<Size>("1048576").unwrap(), s);
        let e = serde_json::from_str::<Size>("\"1 parsec\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 parsec"), "{e}");
        let t = TimeSpan(std::time::Duration::from_millis(10));
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"10ms\"");
        assert_eq!(serde_json::from_str::<TimeSpan>("\"10ms\"").unwrap(), t);
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1 << 20), "1.00 MiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
