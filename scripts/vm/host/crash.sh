# Host suite (sourced by scripts/vm-test): a host crash. Boot 1 runs a write load
# on a tandem device and the whole VM is killed (SIGKILL to QEMU) mid-load; boot 2
# starts the device again on the same disk images and record, checks every
# acknowledged write, waits for the resync and compares primary and secondary.
# shellcheck shell=bash

primary="$(vm_disk primary 64M)"
secondary="$(vm_disk secondary 64M)"
record="$(vm_disk record 4M)"
acklog="$(vm_disk acklog 8M)"
disks=(--disk "$primary" --disk "$secondary" --disk "$record" --disk "$acklog")
step="$GUEST_DIR/crash-step.sh"

vm_boot "${disks[@]}" --timeout 300 --kill-after-marker CRASH-NOW -- "$step" load || true
if [ "$VM_STATUS" = killed ]; then
    pass host-crash-kill-mid-load
else
    fail host-crash-kill-mid-load "boot 1 was not killed mid-load (status: $VM_STATUS)"
fi
vm_boot "${disks[@]}" --timeout 300 -- "$step" verify || true
