#!/usr/bin/env python3
"""The results of scripts/bench-vm: reads the VM's console log (fio's JSON
between BENCH-JSON-BEGIN/END markers, the CPU figures of every run), prints
the Markdown tables (medians with min and max, the ratios against the goals,
where the CPU went) and writes the JSON file.

Usage: bench-vm-report.py CONSOLE_LOG JSON_OUT ROUNDS RUNTIME RAMP DEVICES
       WORKLOADS VM_RC FIO_VERSION
Exit status 1 when a run is missing or failed."""
import json, re, statistics, sys

log_path, json_out, rounds, runtime, ramp, devices, workloads, vm_rc, fio_version = sys.argv[1:]
rounds, runtime, ramp, vm_rc = int(rounds), int(runtime), int(ramp), int(vm_rc)
devices, workloads = devices.split(","), workloads.split(",")

problems = []          # reasons for a non-zero exit
results = {}           # (device, workload) -> list of per-round dicts
setup_fail = []
catchup = {}           # (device, workload) -> list of {round, seconds, dirty_bytes}
polled = {}            # (device, workload) -> CPU seconds the queue threads spun, per round
cpu = {}               # (device, workload) -> per round {name: ticks} (guest-busy, guest-total, threads)
# Daemon thread names (a trailing -N dropped) and the group each counts in.
THREAD_GROUPS = {"tandem-target": "queues", "tandem-mirror": "mirror", "tandem-destage": "destage",
                 "tandem-record": "record", "tandem-control": "control",
                 "tandem-pacer": "mirror", "tandem-offload": "queues"}
kernel = None
done = None
lines = open(log_path, errors="replace").read().splitlines()
i = 0
kmsg = re.compile(r"^\[\s*\d+\.\d+\]")
while i < len(lines):
    line = lines[i]
    if line.startswith("tandem-init: kernel "):
        kernel = line.split()[2].rstrip(",")
    if line.startswith("BENCH-JSON-BEGIN "):
        _, rnd, dev, wl = line.split()[:4]
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("BENCH-JSON-END"):
            body.append(lines[i])
            i += 1
        text = "\n".join(body)
        try:
            data = json.loads(text)
        except ValueError:
            # A kernel message may have landed in the middle of the JSON.
            try:
                data = json.loads("\n".join(l for l in body if not kmsg.match(l)))
            except ValueError as e:
                problems.append(f"round {rnd} {dev} {wl}: fio output is not JSON ({e})")
                i += 1
                continue
        job = data["jobs"][0]
        if job.get("error"):
            problems.append(f"round {rnd} {dev} {wl}: fio job error {job['error']}")
        rw = [job[k] for k in ("read", "write") if job.get(k, {}).get("total_ios", 0) > 0]
        ios = sum(d["total_ios"] for d in rw)
        lat_us = (sum(d["lat_ns"]["mean"] * d["total_ios"] for d in rw) / ios / 1000) if ios else 0.0
        p99 = max((d.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) for d in rw), default=0) / 1000
        results.setdefault((dev, wl), []).append({
            "round": int(rnd),
            "iops": sum(job[k]["iops"] for k in ("read", "write", "trim") if k in job),
            "mbps": sum(job[k]["bw_bytes"] for k in ("read", "write", "trim") if k in job) / 1e6,
            "lat_mean_us": lat_us,
            "clat_p99_us": p99,
        })
    elif line.startswith("BENCH-CATCHUP "):
        _, rnd, dev, wl, secs, dirty, busy, defer = line.split()[:8]
        catchup.setdefault((dev, wl), []).append({"round": int(rnd), "seconds": float(secs),
                                                  "dirty_bytes": int(dirty), "busy": int(busy),
                                                  "deferring": defer == "true"})
    elif line.startswith("BENCH-POLL "):
        _, rnd, dev, wl, secs = line.split()[:5]
        polled.setdefault((dev, wl), []).append(float(secs))
    elif line.startswith("BENCH-CPU "):
        f = line.split()
        ticks = {}
        for kv in f[4:]:
            name, _, n = kv.partition("=")
            if n.lstrip("-").isdigit():
                ticks[name] = int(n)
        cpu.setdefault((f[2], f[3]), []).append(ticks)
    elif line.startswith("BENCH-SETUP-FAIL "):
        setup_fail.append(line[len("BENCH-SETUP-FAIL "):])
        problems.append("device could not be set up: " + line[len("BENCH-SETUP-FAIL "):])
    elif line.startswith("BENCH-RUN-FAIL "):
        problems.append("run failed: " + line[len("BENCH-RUN-FAIL "):])
    elif line.startswith("BENCH-FATAL"):
        problems.append(line)
    elif line.startswith("BENCH-DONE"):
        done = line
    i += 1

if vm_rc != 0:
    problems.append(f"the VM run exited with status {vm_rc} (see the console log {log_path})")
if done is None:
    problems.append("the guest never printed BENCH-DONE: the benchmark did not finish")
missing = []
for dev in devices:
    for wl in workloads:
        got = {r["round"] for r in results.get((dev, wl), [])}
        for r in range(1, rounds + 1):
            if r not in got:
                missing.append(f"{dev}/{wl}/round {r}")
if missing:
    problems.append(f"{len(missing)} of {rounds * len(devices) * len(workloads)} runs gave no result: "
                    + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))

med = statistics.median
rows = []
for dev in devices:
    for wl in workloads:
        rs = sorted(results.get((dev, wl), []), key=lambda r: r["round"])
        if not rs:
            continue
        iops = [r["iops"] for r in rs]
        rows.append({
            "device": dev, "workload": wl,
            "iops_median": round(med(iops), 1), "iops_min": round(min(iops), 1),
            "iops_max": round(max(iops), 1),
            "mbps_median": round(med([r["mbps"] for r in rs]), 2),
            "lat_mean_us_median": round(med([r["lat_mean_us"] for r in rs]), 1),
            "clat_p99_us_median": round(med([r["clat_p99_us"] for r in rs]), 1),
            "rounds": len(rs),
            "iops_per_round": [round(r["iops"], 1) for r in rs],
        })
        cs = catchup.get((dev, wl))
        if cs:
            # What the run left for the mirror: dirty bytes when fio stopped and
            # the seconds until the secondary was identical (median of rounds).
            rows[-1]["dirty_bytes_after_median"] = int(med([c["dirty_bytes"] for c in cs]))
            rows[-1]["catchup_s_median"] = round(med([c["seconds"] for c in cs]), 2)
            rows[-1]["catchup_s_max"] = round(max(c["seconds"] for c in cs), 2)
            # Halfway through the run: host I/O busy share, copies held back.
            rows[-1]["host_busy_pct_median"] = med([c["busy"] for c in cs])
            rows[-1]["deferring_rounds"] = sum(c["deferring"] for c in cs)
        ps = polled.get((dev, wl))
        if ps:
            # Share of one CPU the queue threads spent spinning over the run
            # (ramp included, as the daemon counts it).
            rows[-1]["poll_cpu_share_median"] = round(med(ps) / (runtime + ramp), 3)
        ts = cpu.get((dev, wl))
        if ts:
            # Where the CPU went during the run (ramp included), medians over
            # rounds: the guest's busy share of its CPUs, and each group of
            # daemon threads as a share of one CPU and in µs per I/O.
            rows[-1]["guest_cpu_busy_median"] = round(med(
                [t["guest-busy"] / t["guest-total"] for t in ts if t.get("guest-total")] or [0]), 3)
            per_round = []  # per round: {group: CPU seconds}
            for t in ts:
                g = {}
                for name, n in t.items():
                    if not name.startswith("guest-"):
                        group = THREAD_GROUPS.get(re.sub(r"-\d+$", "", name), "other")
                        g[group] = g.get(group, 0) + n / 100
                per_round.append(g)
            names = sorted({n for g in per_round for n in g})
            if names:
                secs = runtime + ramp
                groups = {n: med([g.get(n, 0) for g in per_round]) for n in names}
                rows[-1]["daemon_cpu_share_median"] = {n: round(v / secs, 3) for n, v in groups.items()}
                ios = rows[-1]["iops_median"] * secs
                rows[-1]["daemon_cpu_us_per_io"] = round(sum(groups.values()) * 1e6 / ios, 1) if ios else None
by = {(r["device"], r["workload"]): r for r in rows}

print()
print(f"fio runs of {runtime} s (+{ramp} s ramp), {rounds} round(s), interleaved; "
      f"kernel {kernel or '?'}; {fio_version or 'fio'}")
hdr = f"{'device':<16} {'workload':<18} {'IOPS median':>11} {'min':>9} {'max':>9} {'MB/s':>8} {'lat µs':>8} {'p99 µs':>8}"
print(hdr)
print("-" * len(hdr))
for r in rows:
    print(f"{r['device']:<16} {r['workload']:<18} {r['iops_median']:>11.0f} {r['iops_min']:>9.0f} "
          f"{r['iops_max']:>9.0f} {r['mbps_median']:>8.1f} {r['lat_mean_us_median']:>8.0f} "
          f"{r['clat_p99_us_median']:>8.0f}")

ratios = []
def ratio(num, den, wl, goal):
    a, b = by.get((num, wl)), by.get((den, wl))
    if not a or not b or not b["iops_median"]:
        return
    value = a["iops_median"] / b["iops_median"]
    # The same ratio within each round (devices of one round ran minutes apart).
    per_round = []
    ra = {x["round"]: x["iops"] for x in results[(num, wl)]}
    rb = {x["round"]: x["iops"] for x in results[(den, wl)]}
    for k in sorted(set(ra) & set(rb)):
        if rb[k]:
            per_round.append(ra[k] / rb[k])
    ratios.append({
        "ratio": f"{num}/{den}", "workload": wl, "value": round(value, 3),
        "per_round_min": round(min(per_round), 3) if per_round else None,
        "per_round_max": round(max(per_round), 3) if per_round else None,
        "goal": goal,
        "status": None if goal is None else ("PASS" if value >= goal else "MISS"),
    })

for t, p in (("tandem", "passthrough"), ("tandem-writeback", "passthrough-writeback")):
    for wl in workloads:
        ratio(t, p, wl, 0.85 if wl.endswith("-qd1") else 0.9)
for t in ("tandem", "tandem-writeback"):
    for wl in workloads:
        if wl.startswith("randwrite-4k"):
            ratio(t, "md-write-behind", wl, 1.5)
for wl in workloads:
    ratio("tandem", "md-bitmap", wl, None)
for wl in workloads:
    ratio("passthrough", "loop", wl, None)
for a, b in (("tandem", "tandem-sleep"), ("passthrough", "passthrough-sleep")):
    for wl in workloads:
        ratio(a, b, wl, None)
for dev in ("tandem", "md-write-behind"):
    for wl in workloads:
        ratio(dev, "disk", wl, None)
for a, b in (("tandem-paired", "tandem"), ("tandem-paired-churn", "tandem-churn"),
             ("tandem-dual", "tandem-shared"), ("tandem-dual-both", "tandem-shared")):
    for wl in workloads:
        ratio(a, b, wl, None)

lagging = [r for r in rows if "catchup_s_median" in r]
if lagging:
    print()
    print("tandem's mirror: host I/O busy and copies held back halfway through the run; "
          "dirty when fio stopped; seconds until in sync after it (not timed above)")
    for r in lagging:
        print(f"  {r['device']:<16} {r['workload']:<18} busy {r['host_busy_pct_median']:3.0f}%  held back "
              f"{r['deferring_rounds']}/{r['rounds']}  dirty {r['dirty_bytes_after_median'] / 2**20:7.1f} MiB  "
              f"catch-up {r['catchup_s_median']:6.2f} s (max {r['catchup_s_max']:.2f})")

spinning = [r for r in rows if "poll_cpu_share_median" in r]
if spinning:
    print()
    print("queue threads spinning for completions (--poll): share of one CPU over the run")
    for r in spinning:
        print(f"  {r['device']:<18} {r['workload']:<18} {100 * r['poll_cpu_share_median']:5.1f}%")

busy = [r for r in rows if "guest_cpu_busy_median" in r]
if busy:
    print()
    print("CPU during each run (medians over rounds): the guest's CPUs busy; the daemon's threads as a")
    print("share of one CPU, and the daemon's CPU time per I/O (ramp included)")
    for r in busy:
        d = r.get("daemon_cpu_share_median", {})
        threads = "  ".join(f"{g} {100 * v:4.1f}%" for g, v in d.items())
        per_io = f"  {r['daemon_cpu_us_per_io']:6.1f} µs/io" if r.get("daemon_cpu_us_per_io") else ""
        print(f"  {r['device']:<18} {r['workload']:<18} guest {100 * r['guest_cpu_busy_median']:5.1f}%{per_io}  {threads}")

if ratios:
    print()
    print("ratios of IOPS medians (per-round range in brackets; goals from the issue):")
    for q in ratios:
        rng = "" if q["per_round_min"] is None or rounds == 1 else f"[{q['per_round_min']:.2f}-{q['per_round_max']:.2f}]"
        goal = f">= {q['goal']:<4}  {q['status']}" if q["goal"] is not None else "(context)"
        print(f"  {q['ratio']:<44} {q['workload']:<18} {q['value']:>6.2f} {rng:<13} {goal}")
    misses = [q for q in ratios if q["status"] == "MISS"]
    met = [q for q in ratios if q["status"] == "PASS"]
    print(f"goals: {len(met)} met, {len(misses)} missed (a miss is reported, not a failure)")

if json_out:
    with open(json_out, "w") as f:
        json.dump({"runs": rows, "ratios": ratios, "rounds": rounds, "runtime_s": runtime,
                   "ramp_s": ramp, "kernel": kernel, "fio": fio_version,
                   "ioengine": "io_uring", "size": "256M", "problems": problems}, f, indent=2)
        f.write("\n")
    print(f"wrote {json_out}")

if problems:
    print()
    print("FAILED:")
    for p in problems:
        print("  " + p)
    sys.exit(1)
