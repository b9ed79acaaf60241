#!/bin/sh
# Plain mirroring on the real ublk driver: over two sparse files, and over two
# virtio disks (record on a third). Writes with O_DIRECT and buffered + fsync,
# reads back, waits for the secondary, and compares it with the primary.
# vm-disks: 160M 160M 16M
# vm-timeout: 300
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

files_case() {
    need_bin tandemctl
    mkdir -p /tmp/m
    truncate -s 128M /tmp/m/p.img /tmp/m/s.img
    make_pattern /tmp/m/pat 8
    dev=$(tandemctl add m1 --primary /tmp/m/p.img --secondary /tmp/m/s.img \
        --record /tmp/m/m1.rec --assume-clean)
    echo "device $dev"
    write_patterns "$dev" /tmp/m/pat
    verify_patterns "$dev" /tmp/m/pat
    tandemctl wait-synced m1 --timeout 120
    tandemctl status m1
    cmp /tmp/m/p.img /tmp/m/s.img
    tandemctl del m1
    nothing_left m1
}

virtio_case() {
    need_bin tandemctl
    make_pattern /tmp/m/pat2 8
    # Data on the primary before the device exists: the initial full copy must
    # bring it to the secondary (no --assume-clean).
    dd if=/tmp/m/pat2 of=/dev/vda bs=1M seek=120 conv=fsync 2>/dev/null
    dev=$(tandemctl add m2 --primary /dev/vda --secondary /dev/vdb --record /dev/vdc \
        --region-size 256KiB --capacity 32MiB)
    echo "device $dev"
    write_patterns "$dev" /tmp/m/pat2
    verify_patterns "$dev" /tmp/m/pat2
    tandemctl wait-synced m2 --timeout 200
    tandemctl status m2 --json
    [ "$(status_num m2 dirty_bytes)" = 0 ]
    cmp /dev/vda /dev/vdb
    tandemctl del m2
    nothing_left m2
}

run_case mirror-sparse-files files_case
run_case mirror-virtio-disks virtio_case
finish
