# Host suite (sourced by scripts/vm-test): checks the systemd VM (scripts/vm-systemd,
# image from scripts/vm/build-rootfs) that the systemd unit, udev rule and generator
# tests rely on. Three boots on one root overlay:
#   boot 1: PID 1 is systemd, udevd runs, udev made /dev/disk/by-id/virtio-disk0 for
#           the extra disk, modprobe works (ublk_drv, brd), no network but lo, the
#           hostname is tandem-vm; writes a file to / and one to the payload's out/
#           (read back by the host); powers off
#   boot 2: the file of boot 1 is on / (a reboot keeps the root); writes a second
#           file, syncs, prints a marker and is killed with SIGKILL (a host crash)
#   boot 3: the second file survived the crash; the boot is clean
# The boot time of each boot (TANDEM-VM-BOOT: systemd-analyze time; and the host's
# wall clock from QEMU's start to run.sh) is printed as INFO lines.
# shellcheck shell=bash disable=SC2154  # quiet, SUITE_DIR, RESULTS, ...: vm-test's

# sd_boot: see scripts/vm-test.

payload="$SUITE_DIR/payload"
mkdir -p "$payload"
cat > "$payload/run.sh" <<'EOF'
# The guest side of systemd-selftest: run.sh BOOT (1, 2 or 3); $TOKEN from --append.
failed=0
check() {  # check NAME COMMAND...: PASS/FAIL NAME by COMMAND's exit status
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then
        echo "PASS $name"
    else
        echo "FAIL $name: $* -> ${out:-exit status $?}" | head -c 600; echo
        failed=1
    fi
}
state_ok() {
    local s
    s="$(systemctl is-system-running)"
    [ "$s" = running ] && return 0
    echo "system state $s; failed units: $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
    return 1
}
d=/var/lib/tandem-selftest
case "$1" in
1)
    check systemd-pid1 sh -c '[ "$(readlink /proc/1/exe)" = /usr/lib/systemd/systemd ] || { readlink /proc/1/exe; exit 1; }'
    check systemd-boot-clean state_ok
    check systemd-udevd-running sh -c 'systemctl is-active systemd-udevd.service && pgrep -x systemd-udevd'
    check systemd-udev-by-id udevadm wait --timeout=20 /dev/disk/by-id/virtio-disk0 /dev/disk/by-id/virtio-payload
    check systemd-by-id-target sh -c '[ "$(readlink -f /dev/disk/by-id/virtio-disk0)" = /dev/vdc ] || { readlink -f /dev/disk/by-id/virtio-disk0; exit 1; }'
    check systemd-modprobe-ublk sh -c 'modprobe ublk_drv && [ -c /dev/ublk-control ]'
    check systemd-modprobe-brd sh -c 'modprobe brd rd_nr=1 rd_size=1024 && udevadm wait --timeout=10 /dev/ram0 && modprobe -r brd'
    check systemd-no-network sh -c '! ip -o link show | grep -v ": lo:"'
    check systemd-hostname sh -c '[ "$(hostname)" = tandem-vm ] || { hostname; exit 1; }'
    mkdir -p "$d"
    echo "$TOKEN" > "$d/boot1"
    echo "$TOKEN" > /payload/out/token
    sync
    ;;
2)
    check systemd-reboot-keeps-root sh -c "[ \"\$(cat $d/boot1)\" = \"$TOKEN\" ]"
    echo "$TOKEN-crash" > "$d/boot2"
    sync
    echo SELFTEST-SD-SYNCED
    sleep 60
    echo "FAIL systemd-kill: still running 60 s after the marker"
    failed=1
    ;;
3)
    check systemd-crash-keeps-root sh -c "[ \"\$(cat $d/boot2)\" = \"$TOKEN-crash\" ]"
    check systemd-boot-clean-after-crash state_ok
    ;;
esac
exit $failed
EOF

token="sd-$$-$RANDOM"
overlay="$SUITE_DIR/root.qcow2"
rm -f "$overlay"
extra="$(vm_disk extra 64M)"

rm -rf "$SUITE_DIR/out1"
sd_boot --root "$overlay" --payload "$payload" --disk "$extra" --boot 1 --timeout 120 \
    --append "TOKEN=$token" --out "$SUITE_DIR/out1" || true
if [ "$(cat "$SUITE_DIR/out1/token" 2>/dev/null)" = "$token" ]; then
    pass systemd-payload-out
else
    fail systemd-payload-out "the host did not read back out/token from the payload disk (--out)"
fi
if grep -q 'reboot: Power down' "$SUITE_DIR/boot1.log"; then
    pass systemd-poweroff
else
    fail systemd-poweroff "boot 1 did not power off cleanly (no 'reboot: Power down' in $SUITE_DIR/boot1.log)"
fi

sd_boot --root "$overlay" --payload "$payload" --disk "$extra" --boot 2 --timeout 120 \
    --append "TOKEN=$token" --kill-after-marker SELFTEST-SD-SYNCED || true
if [ "$VM_STATUS" = killed ]; then
    pass systemd-kill
else
    fail systemd-kill "boot 2 was not killed at the marker (status: $VM_STATUS)"
fi

sd_boot --root "$overlay" --payload "$payload" --disk "$extra" --boot 3 --timeout 120 \
    --append "TOKEN=$token" || true
