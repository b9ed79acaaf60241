# Host suite (sourced by scripts/vm-test): tandem as a system service, on real
# systemd and udev (the systemd VM: scripts/vm-systemd). The Debian package
# (scripts/package, cargo-deb) is installed in the VM as an operator would.
# Three boots on one root overlay; the guest side is scripts/vm/systemd/run.sh.
#   boot 1: install; a bad config's error names file, key, value; enable vm0 over
#           two virtio disks (by-id names); READY with /dev/tandem/vm0, journal,
#           STATUS; SIGHUP ignored; kill -9 under a host write (restarted,
#           reattached, the write completes); verify finds a planted mismatch and
#           --repair fixes it; set, pause, resume, invalidate; the metrics endpoint
#           (scraped; promtool checks it here); hotplug of vm1 (its loop primary
#           attached after the enable); systemctl stop; vm2 over a file and a loop
#           secondary; then writes, and the VM is killed (a host crash)
#   boot 2: vm0 back by itself and resynced from its record, the acknowledged data
#           there, devices identical; vm2 degraded (its secondary is missing) after
#           its 10 s, caught up once the loop is attached; disable vm0
#   boot 3: vm0 stays down, vm2 starts
# shellcheck shell=bash disable=SC2154  # SUITE_DIR, ...: vm-test's

deb="$("$REPO/scripts/package" --no-build | tail -n 1)" \
    || { fail systemd-package "scripts/package failed"; return 0; }
payload="$SUITE_DIR/payload"
rm -rf "$payload"
mkdir -p "$payload/out"
cp "$deb" "$payload/tandem.deb"
cp "$VM_DIR/systemd/run.sh" "$payload/run.sh"
overlay="$SUITE_DIR/root.qcow2"
rm -f "$overlay"
p0="$(vm_disk primary 256M)"
s0="$(vm_disk secondary 256M)"

sd_boot --root "$overlay" --payload "$payload" --disk "$p0" --disk "$s0" --boot 1 \
    --timeout 600 --kill-after-marker SYSTEMD-SUITE-CRASH-NOW --out "$SUITE_DIR/out1" || true
if [ "$VM_STATUS" = killed ]; then
    pass systemd-host-crash
else
    fail systemd-host-crash "boot 1 did not reach the crash marker (status: $VM_STATUS)"
fi
if [ -s "$SUITE_DIR/out1/metrics.txt" ]; then
    ensure_apt_packages prometheus
    if out="$(promtool check metrics < "$SUITE_DIR/out1/metrics.txt" 2>&1)"; then
        pass systemd-metrics-promtool
    else
        fail systemd-metrics-promtool "$out"
    fi
else
    fail systemd-metrics-promtool "no scrape came back from the VM ($SUITE_DIR/out1/metrics.txt)"
fi

sd_boot --root "$overlay" --payload "$payload" --disk "$p0" --disk "$s0" --boot 2 \
    --timeout 600 || true
sd_boot --root "$overlay" --payload "$payload" --disk "$p0" --disk "$s0" --boot 3 \
    --timeout 300 || true
