//! Files, patterns and small statistics the benchmarks share.

use super::*;

/// The three files of one mirrored device in `dir`.
pub(crate) fn paths_in(dir: &Path, tag: &str) -> Paths {
    Paths {
        primary: dir.join(format!("bench-{tag}-primary.img")),
        secondary: dir.join(format!("bench-{tag}-secondary.img")),
        record: dir.join(format!("bench-{tag}-record")),
    }
}

pub(crate) fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

pub(crate) fn remove_all(p: &Paths) -> anyhow::Result<()> {
    remove(&p.primary)?;
    remove(&p.secondary)?;
    remove(&p.record)
}

/// Deterministic non-zero bytes, different for every `seed`.
pub(crate) fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `size` bytes of data to `path` (allocating every block), synced,
/// and drops it from the page cache.
pub(crate) fn write_data_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], seed ^ done);
        f.write_all(&buf[..n])?;
        done += n as u64;
    }
    f.sync_all()?;
    drop_cache(&f);
    Ok(())
}

pub(crate) fn create_sparse(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(size)?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn drop_cache(f: &File) {
    // SAFETY: posix_fadvise only takes integers; the fd is open.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Whether two files hold the same first `len` bytes.
pub(crate) fn same_contents(a: &Path, b: &Path, len: u64) -> anyhow::Result<bool> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 8 << 20];
    let mut bb = vec![0u8; 8 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        done += n as u64;
    }
    drop_cache(&fa);
    drop_cache(&fb);
    Ok(true)
}

/// Opens `path` for writing with O_DIRECT when the file system allows.
pub(crate) fn open_direct(path: &Path) -> anyhow::Result<(File, bool)> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e).with_context(|| format!("open {}", path.display())),
    }
}

/// CPU seconds (user + system) this process has used.
pub(crate) fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain old data; getrusage fills it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Median, min and max.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn spread(v: &[f64]) -> Spread {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i])
}

pub(crate) fn df_of(dir: &Path) -> String {
    Command::new("df")
        .args(["-hT", &dir.to_string_lossy()])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// Prints the table of copiers (each copied `size` bytes in `secs[i]`
/// seconds, one entry a round) and the verdict of `copiers[0]` against each
/// of `against`; returns the rows and each ratio, as JSON.
pub(crate) fn copier_table(
    names: &[&str],
    secs: &[Vec<f64>],
    size: u64,
    against: &[(usize, &str)],
) -> (Vec<Value>, Value) {
    println!("| copier | MiB/s median | min | max | seconds median |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut bw = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let rate: Vec<f64> = secs[i].iter().map(|s| size as f64 / MIB / s).collect();
        let r = spread(&rate);
        let s = spread(&secs[i]);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} |",
            r.median, r.min, r.max, s.median
        );
        bw.push(r.median);
        rows.push(json!({ "copier": name, "mib_s": r, "seconds": s }));
    }
    let mut ratios = json!({});
    for &(i, key) in against {
        let ratio = bw[0] / bw[i];
        let verdict = if ratio >= 0.8 {
            "goal >= 0.8: met".to_string()
        } else {
            format!("goal >= 0.8: MISSED by {:.0}%", (0.8 - ratio) / 0.8 * 100.0)
        };
        println!("- engine / {} = {ratio:.3} ({verdict})", names[i]);
        ratios[key] = json!(ratio);
    }
    (rows, ratios)
}
