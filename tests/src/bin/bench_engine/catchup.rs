//! The catch-up benchmark: the mirror pool's full copy against dd.

use super::*;

pub(crate) fn catchup_bench(a: &CatchupArgs) -> anyhow::Result<Value> {
    let quick = a.common.quick;
    let size = size_arg(&a.size, 1 << 30, 128 << 20, quick)?;
    let rounds = a.rounds.unwrap_or(if quick { 2 } else { 5 });
    println!(
        "\n## Mirror catch-up: full initial copy of a {} primary (new record, no assume_clean; \
         default mirror config) against dd bs=4M, {rounds} interleaved rounds",
        format_size(size)
    );
    let mut out = Vec::new();
    for dir in &a.dirs {
        let started = Instant::now();
        let paths = paths_in(dir, "catchup");
        let copy = dir.join("bench-catchup-copy.img");
        remove_all(&paths)?;
        remove(&copy)?;
        write_data_file(&paths.primary, size, 7)?;
        let primary = paths.primary.to_string_lossy().to_string();
        let of = format!("of={}", copy.display());
        let if_ = format!("if={primary}");
        let dd_plain: Vec<String> = [&if_, &of, "bs=4M", "oflag=direct", "conv=fsync"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut dd_direct = dd_plain.clone();
        dd_direct.push("iflag=direct".into());
        let tools: [(&str, Option<&Vec<String>>); 3] = [
            ("engine mirror pool", None),
            ("dd oflag=direct conv=fsync", Some(&dd_plain)),
            ("dd iflag=direct oflag=direct conv=fsync", Some(&dd_direct)),
        ];
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut copied = 0;
        for round in 0..rounds {
            for k in 0..tools.len() {
                let i = (round + k) % tools.len();
                let t = match tools[i].1 {
                    None => {
                        remove(&paths.secondary)?;
                        remove(&paths.record)?;
                        create_sparse(&paths.secondary, size)?;
                        let config = EngineConfig::default();
                        let t0 = Instant::now();
                        let engine = Engine::open(paths.open(&config)?, &config)?;
                        ensure!(
                            engine.wait_synced(Duration::from_secs(1800)),
                            "the mirror did not catch up within 30 minutes"
                        );
                        let t = t0.elapsed().as_secs_f64();
                        let s = engine.status();
                        ensure!(
                            s.resync_total_bytes == size,
                            "resync of {}",
                            s.resync_total_bytes
                        );
                        copied = s.bytes_copied;
                        engine.shutdown()?;
                        drop(engine);
                        ensure!(
                            same_contents(&paths.primary, &paths.secondary, size)?,
                            "secondary differs from primary after catch-up"
                        );
                        t
                    }
                    Some(args) => {
                        remove(&copy)?;
                        let t0 = Instant::now();
                        let st = Command::new("dd")
                            .args(args)
                            .arg("status=none")
                            .status()
                            .context("run dd")?;
                        ensure!(st.success(), "dd {args:?}: {st}");
                        t0.elapsed().as_secs_f64()
                    }
                };
                secs[i].push(t);
            }
        }
        remove_all(&paths)?;
        remove(&copy)?;
        println!("\n### {} ({})\n", dir.display(), df_of(dir));
        let names: Vec<&str> = tools.iter().map(|t| t.0).collect();
        let (rows, ratios) = copier_table(
            &names,
            &secs,
            size,
            &[(1, "vs_dd"), (2, "vs_dd_iflag_direct")],
        );
        println!(
            "  (the engine copied {} for a {} device; wall time {:.1} s)",
            format_size(copied),
            format_size(size),
            started.elapsed().as_secs_f64()
        );
        out.push(json!({
            "dir": dir, "filesystem": df_of(dir), "bytes": size, "rounds": rounds,
            "copiers": rows, "ratios": ratios, "engine_bytes_copied": copied,
        }));
    }
    Ok(Value::Array(out))
}
