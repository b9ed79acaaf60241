# Host suite (sourced by scripts/vm-test): checks the VM plumbing the host-crash tests
# rely on. Boot 1 flushes data to a disk and is killed with SIGKILL at a console
# marker; boot 2, on the same disk image, must find the flushed data.
# shellcheck shell=bash

disk="$(vm_disk data 64M)"
step="$GUEST_DIR/vm-selftest-step.sh"

vm_boot --disk "$disk" --timeout 120 --kill-after-marker SELFTEST-FLUSHED -- "$step" write || true
if [ "$VM_STATUS" = killed ]; then
    pass vm-selftest-kill
else
    fail vm-selftest-kill "boot 1 was not killed at the marker (status: $VM_STATUS)"
fi

vm_boot --disk "$disk" --timeout 120 -- "$step" verify || true
