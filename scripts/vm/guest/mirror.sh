#!/bin/sh
# Plain mirroring on the real ublk driver: over two sparse files, over two
# virtio disks (record on a third), and over two files through the host page
# cache (--cache writeback, with a kill -9 of the daemon after the writes).
# Writes with O_DIRECT and buffered + fsync, reads back, waits for the
# secondary, and compares it with the primary.
# vm-disks: 160M 160M 16M
# vm-timeout: 300
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

# files_device NAME DIR ARGS...: two blank 128 MiB sparse files and an 8 MiB
# pattern in DIR, and the device NAME over them (its path in $dev).
files_device() {
    need_bin tandemctl
    _name="$1" _dir="$2"; shift 2
    mkdir -p "$_dir"
    truncate -s 128M "$_dir/p.img" "$_dir/s.img"
    make_pattern "$_dir/pat" 8
    dev=$(tandemctl add "$_name" --primary "$_dir/p.img" --secondary "$_dir/s.img" \
        --record "$_dir/$_name.rec" --assume-clean "$@")
    echo "device $dev"
}

files_case() {
    files_device m1 /tmp/m
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
    tandemctl status m2 --json | grep -q '"cache": "none"'
    cmp /dev/vda /dev/vdb
    tandemctl del m2
    nothing_left m2
}

# --cache writeback: what the daemon left in the page cache outlives it.
writeback_case() {
    files_device w1 /tmp/w --cache writeback --max-lag 30s
    tandemctl status w1 --json | grep -q '"cache": "writeback"'
    tandemctl status w1 | grep -q 'cache writeback'
    write_patterns "$dev" /tmp/w/pat
    pid=$(daemon_pid w1)
    kill -9 "$pid"
    echo "killed daemon $pid after the writes"
    sleep 1
    tandemctl recover w1
    echo "recovery resyncs $(status_num w1 resync_total_bytes) bytes"
    verify_patterns "$dev" /tmp/w/pat
    tandemctl wait-synced w1 --timeout 120
    cmp /tmp/w/p.img /tmp/w/s.img
    tandemctl del w1
    nothing_left w1
    # After the clean stop the primary file holds the data.
    dd if=/tmp/w/p.img bs=1M count=8 2>/dev/null | cmp - /tmp/w/pat
}

run_case mirror-sparse-files files_case
run_case mirror-virtio-disks virtio_case
run_case mirror-writeback-cache writeback_case
finish
