#!/bin/sh
# Smoke test of the VM itself: the kernel has ublk, the tools and disks work.
# vm-disks: 64M
# vm-timeout: 120
. "$(dirname "$0")/lib.sh"

case_ublk_control() {
    test -c /dev/ublk-control
}

case_ublk_module() {
    test -d /sys/module/ublk_drv
}

case_modules_loaded() {
    missing=""
    for m in loop brd virtio_blk md_mod raid1 dm_mod dm_mirror dm_flakey dm_delay nbd; do
        [ -d "/sys/module/$m" ] || missing="$missing $m"
    done
    [ -z "$missing" ] || { echo "not loaded:$missing"; return 1; }
}

case_ext4_on_brd() {
    dev=/dev/ram0
    test -b "$dev"
    /usr/sbin/mkfs.ext4 -q -F "$dev"
    mkdir -p /mnt/smoke
    mount -t ext4 "$dev" /mnt/smoke
    dd if=/dev/urandom of=/tmp/smoke.data bs=1M count=4 2>/dev/null
    cp /tmp/smoke.data /mnt/smoke/data
    sync
    umount /mnt/smoke
    /usr/sbin/e2fsck -fn "$dev"
    mount -t ext4 -o ro "$dev" /mnt/smoke
    cmp /tmp/smoke.data /mnt/smoke/data
    umount /mnt/smoke
}

case_virtio_disk() {
    [ -b /dev/vda ] || skip_case "no /dev/vda (vm-test gives one; by hand: vm-run --disk FILE)"
    dd if=/dev/urandom of=/tmp/vda.data bs=64k count=16 2>/dev/null
    dd if=/tmp/vda.data of=/dev/vda bs=64k conv=fsync 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/tmp/vda.back bs=64k count=16 iflag=direct 2>/dev/null
    cmp /tmp/vda.data /tmp/vda.back
}

case_tools() {
    /usr/sbin/mdadm --version
    /usr/sbin/dmsetup version
    /usr/sbin/losetup --version
}

# device-mapper without udev: a linear target over a ramdisk, by its /dev/dm-N node.
case_dm_linear() {
    sectors="$(blockdev --getsz /dev/ram1)"
    echo "0 $sectors linear /dev/ram1 0" | /usr/sbin/dmsetup create smoke-linear
    minor="$(/usr/sbin/dmsetup info -c --noheadings -o minor smoke-linear)"
    dev="/dev/dm-$minor"
    test -b "$dev"
    dd if=/dev/urandom of=/tmp/dm.data bs=64k count=4 2>/dev/null
    dd if=/tmp/dm.data of="$dev" bs=64k conv=fsync 2>/dev/null
    dd if=/dev/ram1 of=/tmp/dm.back bs=64k count=4 2>/dev/null
    cmp /tmp/dm.data /tmp/dm.back
    /usr/sbin/dmsetup remove smoke-linear
}

# util-linux losetup (not busybox's) over a file.
case_loop() {
    truncate -s 16M /tmp/loop.img
    dev="$(/usr/sbin/losetup -f --show /tmp/loop.img)"
    test -b "$dev"
    /usr/sbin/losetup -d "$dev"
}

# The static binaries start under this kernel.
case_binary() {
    need_bin "$1"
    "/usr/local/bin/$1" --help
}

run_case smoke-ublk-control case_ublk_control
run_case smoke-ublk-module case_ublk_module
run_case smoke-modules case_modules_loaded
run_case smoke-ext4-brd case_ext4_on_brd
run_case smoke-virtio-disk case_virtio_disk
run_case smoke-tools case_tools
run_case smoke-dm-linear case_dm_linear
run_case smoke-loop case_loop
run_case smoke-tandem-target case_binary tandem-target
run_case smoke-tandemctl case_binary tandemctl
finish
