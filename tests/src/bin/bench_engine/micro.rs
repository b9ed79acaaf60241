//! Criterion's figures of the record's hit and miss paths, read back for the report.

use super::*;

/// Reads `DIR/GROUP/BENCH/new/estimates.json` for every benchmark criterion
/// ran, prints their medians, and checks the hit-path goal.
pub(crate) fn criterion_report(dir: &Path) -> anyhow::Result<Value> {
    let mut found = Vec::new();
    for group in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let group = group?.path();
        if !group.is_dir() || group.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        for bench in std::fs::read_dir(&group)? {
            let bench = bench?.path();
            let est = bench.join("new/estimates.json");
            let bench_json = bench.join("new/benchmark.json");
            let (Ok(e), Ok(b)) = (std::fs::read(&est), std::fs::read(&bench_json)) else {
                continue;
            };
            let e: Value = serde_json::from_slice(&e)?;
            let b: Value = serde_json::from_slice(&b)?;
            let id = b["full_id"].as_str().unwrap_or_default().to_string();
            // Criterion's own figure (its "time:" line): the slope of the
            // linear sampling when there is one, else the mean.
            let est = if e["slope"].is_object() {
                &e["slope"]
            } else {
                &e["mean"]
            };
            let ns = est["point_estimate"].as_f64().unwrap_or(f64::NAN);
            let lo = est["confidence_interval"]["lower_bound"]
                .as_f64()
                .unwrap_or(ns);
            let hi = est["confidence_interval"]["upper_bound"]
                .as_f64()
                .unwrap_or(ns);
            let median = e["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            found.push((id, ns, lo, hi, median));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    println!("\n## Record (criterion, ns per write; goal: hit path <= 100 ns)\n");
    println!("| benchmark | ns/write | 95% CI | median of samples | goal |");
    println!("|---|---:|---:|---:|---|");
    let mut out = Vec::new();
    for (id, ns, lo, hi, median) in &found {
        let goal = if id.starts_with("hit/") || id.starts_with("engine_hit/") {
            let worst = ns.max(*median);
            if worst <= 100.0 {
                "<= 100 ns: met".to_string()
            } else {
                format!("<= 100 ns: MISSED by {:.0}%", worst - 100.0)
            }
        } else {
            String::new()
        };
        println!("| {id} | {ns:.1} | {lo:.1}..{hi:.1} | {median:.1} | {goal} |");
        out.push(json!({ "id": id, "ns": ns, "ci_ns": [lo, hi], "median_ns": median }));
    }
    Ok(Value::Array(out))
}
