#!/bin/sh
# A filesystem on top: mkfs.ext4 and mount on /dev/ublkbN, write a tree, sync,
# unmount, check it; then the secondary must be identical and mount with the
# same files.
# vm-timeout: 300
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

fs_case() {
    need_bin tandemctl
    mkdir -p /tmp/f /mnt/t /mnt/s
    truncate -s 192M /tmp/f/p.img /tmp/f/s.img
    dev=$(tandemctl add fs1 --primary /tmp/f/p.img --secondary /tmp/f/s.img \
        --record /tmp/f/fs1.rec --assume-clean)
    /usr/sbin/mkfs.ext4 -q -F "$dev"
    mount -t ext4 "$dev" /mnt/t
    i=0
    while [ $i -lt 20 ]; do
        mkdir -p "/mnt/t/dir$i/sub"
        dd if=/dev/urandom of="/mnt/t/dir$i/a.bin" bs=64k count=$((i + 1)) 2>/dev/null
        dd if=/dev/urandom of="/mnt/t/dir$i/sub/b.bin" bs=4k count=$((i * 3 + 1)) 2>/dev/null
        echo "file $i" > "/mnt/t/dir$i/note.txt"
        i=$((i + 1))
    done
    cp -a /usr/sbin /mnt/t/sbin-copy
    (cd /mnt/t && find . -type f | sort | xargs md5sum) > /tmp/f/sums
    sync
    umount /mnt/t
    /usr/sbin/e2fsck -fn "$dev"
    tandemctl wait-synced fs1 --timeout 120
    cmp /tmp/f/p.img /tmp/f/s.img
    # The secondary alone holds the same filesystem.
    /usr/sbin/e2fsck -fn /tmp/f/s.img
    mount -t ext4 -o ro,loop /tmp/f/s.img /mnt/s
    (cd /mnt/s && md5sum -c /tmp/f/sums >/dev/null)
    umount /mnt/s
    echo "$(wc -l < /tmp/f/sums) files verified on the secondary"
    tandemctl del fs1
    nothing_left fs1
}

run_case filesystem-ext4 fs_case
finish
