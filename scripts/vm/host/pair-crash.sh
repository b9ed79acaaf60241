# Host suite (sourced by scripts/vm-test): a host crash with both nodes. Boot 1 runs
# node B's holder and node A's device over shared storage (a path each), writes data
# with fio and kills the whole VM mid-load; boot 2 starts both again on the same
# disks: A recovers from the record B holds (a part of the device), fio verifies
# every block it wrote before the crash, and the devices end identical.
# shellcheck shell=bash

secondary="$(vm_disk secondary 256M)"
state_a="$(vm_disk state-a 64M)"
state_b="$(vm_disk state-b 64M)"
primary="$(vm_disk primary 256M)"
lease="$(vm_disk lease 4M)"
disks=(--disk "$secondary" --disk "$state_a" --disk "$state_b"
    --shared-disk "$primary" --shared-disk "$lease")
if fio="$("$VM_DIR/build-fio" | tail -n 1)" && [ -x "$fio" ]; then
    disks+=(--file "$fio:/usr/local/bin/fio")
fi
step="$GUEST_DIR/pair-crash-step.sh"

vm_boot "${disks[@]}" --timeout 300 --kill-after-marker CRASH-NOW -- "$step" load || true
if [ "$VM_STATUS" = killed ]; then
    pass pair-crash-kill-mid-load
else
    fail pair-crash-kill-mid-load "boot 1 was not killed mid-load (status: $VM_STATUS)"
fi
vm_boot "${disks[@]}" --timeout 300 -- "$step" verify || true
