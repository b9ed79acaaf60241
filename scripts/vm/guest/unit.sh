#!/bin/sh
# The library's unit tests that need a real kernel: the block-device tests
# (a loop device with 4 KiB sectors, O_DIRECT with bounce buffers for unaligned
# requests) run here with their capabilities required, so they fail instead of
# skipping. Their temp files live on ext4 on a ramdisk.
# vm-timeout: 300
# vm-unit: yes
. "$(dirname "$0")/lib.sh"

unit_case() {
    [ -x /usr/local/bin/tandem-unit-tests ] || skip_case "the unit tests are not in the VM"
    mkdir -p /mnt/unit
    /usr/sbin/mkfs.ext4 -q -F /dev/ram3
    mount -t ext4 /dev/ram3 /mnt/unit
    TMPDIR=/mnt/unit TANDEM_REQUIRE_LOOP=1 TANDEM_REQUIRE_DIRECT=1 \
        /usr/local/bin/tandem-unit-tests --test-threads 1 --nocapture dev::file 2>&1 | tee /tmp/unit.out
    grep -q 'test result: ok' /tmp/unit.out
    if grep -q '^SKIP' /tmp/unit.out; then echo "a test skipped" >&2; return 1; fi
    grep -q 'O_DIRECT in effect' /tmp/unit.out
    umount /mnt/unit
}

run_case unit-block-devices unit_case
finish
