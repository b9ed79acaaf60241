#!/bin/sh
# Plain mirroring on the real ublk driver: over two sparse files, over two
# virtio disks (record on a third), and over two files through the host page
# cache (--cache writeback, with a kill -9 of the daemon after the writes);
# stops right after dense I/O, while queue threads spin; both devices on one
# disk (two dm volumes over one ramdisk) are named in the status.
# Writes with O_DIRECT and buffered + fsync, reads back, waits for the
# secondary, and compares it with the primary.
# vm-disks: 160M 160M 16M
# vm-timeout: 300
# vm-fio: yes
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
    # Two files in one directory: one file system, which the status names.
    tandemctl status m1 | grep 'warning: primary and secondary are both on'
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
    # Two disks: nothing shared, no warning.
    if tandemctl status m2 --json | grep shared_disks; then return 1; fi
    if tandemctl status m2 | grep warning; then return 1; fi
    cmp /dev/vda /dev/vdb
    tandemctl del m2
    nothing_left m2
}

# Both devices on one disk: two device-mapper volumes over one ramdisk. The
# status names the disk beneath both, found through the volumes' slaves in
# sysfs, and the text status warns.
shared_disk_case() {
    need_bin tandemctl
    half=$(( $(blockdev --getsz /dev/ram1) / 2 ))
    echo "0 $half linear /dev/ram1 0" | /usr/sbin/dmsetup create shared-p
    echo "0 $half linear /dev/ram1 $half" | /usr/sbin/dmsetup create shared-s
    p="/dev/dm-$(/usr/sbin/dmsetup info -c --noheadings -o minor shared-p)"
    s="/dev/dm-$(/usr/sbin/dmsetup info -c --noheadings -o minor shared-s)"
    dev=$(tandemctl add sh1 --primary "$p" --secondary "$s" --record /tmp/sh1.rec --assume-clean)
    echo "device $dev over $p and $s"
    shared=$(status_num sh1 shared_disks)
    echo "shared_disks: $shared"
    ok=0
    if [ "$shared" = '["ram1"]' ] &&
        tandemctl status sh1 | grep 'warning: primary and secondary are both on ram1'; then
        ok=1
    fi
    # Removed whatever the outcome, so that a failure here stays here.
    tandemctl del sh1
    nothing_left sh1
    /usr/sbin/dmsetup remove shared-p
    /usr/sbin/dmsetup remove shared-s
    [ "$ok" = 1 ]
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

# Queue threads spin for completions during dense I/O (--poll, on by default):
# a stop after such I/O must still end promptly, every time. Whether one run
# spins depends on how close its completions come (QD1 under emulation can sit
# near the window), so the cycles together must have spun. Then --poll 0 must
# never spin.
stop_after_dense_io_case() {
    need_bin tandemctl
    need_bin fio
    spun_total=0
    for i in 1 2 3 4 5 6 7 8 9 10; do
        files_device s$i /tmp/s$i
        fio --name=dense --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
            --bs=4k --iodepth=$((i % 2 ? 1 : 32)) --size=64M --time_based --runtime=2 \
            --output=/tmp/s$i/fio.out
        spun=$(status_num s$i poll_seconds)
        echo "cycle $i (QD$((i % 2 ? 1 : 32))): queue threads spun ${spun}s"
        spun_total=$(awk -v a="$spun_total" -v b="$spun" 'BEGIN { print a + b }')
        t0=$(date +%s)
        tandemctl del s$i --timeout 20
        echo "cycle $i: stopped in $(( $(date +%s) - t0 ))s"
        nothing_left s$i
        rm -rf /tmp/s$i
    done
    echo "queue threads spun ${spun_total}s over the ten cycles"
    awk -v s="$spun_total" 'BEGIN { exit !(s > 0) }' || { echo "no spin during dense I/O"; return 1; }
    files_device s0 /tmp/s0 --poll 0
    dd if=/dev/zero of="$dev" bs=4k count=2000 oflag=direct 2>/dev/null
    spun=$(status_num s0 poll_seconds)
    echo "--poll 0: queue threads spun ${spun}s"
    awk -v s="$spun" 'BEGIN { exit !(s == 0) }' || { echo "--poll 0 spun"; return 1; }
    tandemctl del s0
    nothing_left s0
}

run_case mirror-sparse-files files_case
run_case mirror-virtio-disks virtio_case
run_case mirror-shared-disk shared_disk_case
run_case mirror-writeback-cache writeback_case
run_case mirror-stop-after-dense-io stop_after_dense_io_case
finish
