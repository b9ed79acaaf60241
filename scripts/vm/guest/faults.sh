#!/bin/sh
# The fault matrix on the real driver. Faults are injected into real block
# devices with device-mapper (linear, error, delay) under a fio load with
# verify=crc32c; every case ends with a byte comparison of primary and
# secondary. Cases: the secondary fails, is slow, disappears; the primary
# fails; the record device fails; repeated SIGKILL under fio verify; a kill
# during resync and during recovery; a filesystem mounted across a restart
# (and a daemon started while another device's filesystem is mounted);
# delete under load and while resyncing.
# vm-timeout: 1200
# vm-fio: yes
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

DMSETUP=/usr/sbin/dmsetup
# Each data device is 64 MiB of a 256 MiB ramdisk; the record gets 4 MiB.
DATA_SECTORS=$((64 << 11))
RECORD_SECTORS=$((4 << 11))

# dm_table NAME TABLE: creates dm device NAME (or swaps its table, when it
# exists) and makes /dev/mapper/NAME.
dm_table() {
    if $DMSETUP info "$1" >/dev/null 2>&1; then
        # --nolockfs: no freeze, whose sync of the device's page cache fails
        # with EIO while the table is `error` (the record is written through
        # the page cache).
        $DMSETUP suspend --nolockfs --noudevsync "$1"
        echo "$2" | $DMSETUP load "$1"
        $DMSETUP resume --noudevsync "$1"
    else
        echo "$2" | $DMSETUP create --noudevsync "$1"
    fi
    $DMSETUP mknodes "$1"
}

linear() { echo "0 $DATA_SECTORS linear $1 0"; }

# clean_slate: what an earlier case left (after a failure) must not touch the
# next one: every tandem device is deleted, every dm device removed.
clean_slate() {
    for _f in /run/tandem/*.json; do
        [ -e "$_f" ] || continue
        _n=$(basename "$_f" .json)
        umount "/mnt/$_n" 2>/dev/null || true
        tandemctl del "$_n" --timeout 20 >/dev/null 2>&1 || echo "could not delete leftover $_n"
    done
    $DMSETUP remove_all --noudevsync 2>/dev/null || true
}

# pid_of PATTERN: the pid of the process whose command line matches PATTERN.
pid_of() {
    for _p in /proc/[0-9]*; do
        if tr '\0' ' ' < "$_p/cmdline" 2>/dev/null | grep -q -- "$1"; then
            echo "${_p#/proc/}"
            return 0
        fi
    done
    return 1
}
failing() { echo "0 ${2:-$DATA_SECTORS} error"; }

# tables NAME: after a clean slate, dm devices NAME-p, NAME-s over /dev/ram0
# and /dev/ram1, and NAME-r over /dev/ram2, blank (a new record).
tables() {
    need_bin tandemctl
    clean_slate
    dm_table "$1-p" "$(linear /dev/ram0)"
    dm_table "$1-s" "$(linear /dev/ram1)"
    dm_table "$1-r" "0 $RECORD_SECTORS linear /dev/ram2 0"
    dd if=/dev/zero of="/dev/mapper/$1-r" bs=1M count=4 2>/dev/null
}

# kill_and_recover NAME: kill -9 of the device's daemon, then a recovery.
kill_and_recover() {
    kill -9 "$(tandemctl status "$1" --field pid)"
    sleep 0.5
    tandemctl recover "$1" >/dev/null
}

# pair NAME [ADD ARGS...]: the tables, and the tandem device NAME over them
# (its path in $dev). The initial full copy is done before it returns.
pair() {
    need_bin fio
    _n="$1"; shift
    tables "$_n"
    dev=$(tandemctl add "$_n" --primary "/dev/mapper/$_n-p" --secondary "/dev/mapper/$_n-s" \
        --record "/dev/mapper/$_n-r" --region-size 256KiB --capacity "${PAIR_CAPACITY:-8MiB}" "$@")
    echo "device $dev"
    tandemctl wait-synced "$_n" --timeout 120
}

# unpair NAME: deletes the device and its dm devices; nothing may be left.
unpair() {
    tandemctl del "$1"
    nothing_left "$1"
    for _s in p s r; do $DMSETUP remove --noudevsync "$1-$_s"; done
}

# identical NAME: primary and secondary hold the same bytes.
identical() {
    cmp "/dev/mapper/$1-p" "/dev/mapper/$1-s"
    echo "primary and secondary of $1 are identical"
}

# write_iops DEV SECS: host write IOPS of a QD16 4k random-write run.
write_iops() {
    fio --name=iops --filename="$1" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=4k --iodepth=16 --size=32M --time_based --runtime="$2" --minimal \
        --terse-version=3 | awk -F';' '{ printf "%d\n", $49 }'
}

state() { tandemctl status "$1" --field state; }

# wait_state NAME STATE SECS
wait_state() {
    _i=0
    while [ "$(state "$1")" != "$2" ]; do
        _i=$((_i + 1))
        [ $_i -le $(($3 * 10)) ] || { echo "state of $1 is $(state "$1"), not $2" >&2; return 1; }
        sleep 0.1
    done
}

secondary_fails_case() {
    pair sf --max-lag 0
    fio_verify "$dev" /tmp/sf.fio --rate_iops=1500 &
    f=$!
    sleep 1
    dm_table sf-s "$(failing)"
    wait_state sf degraded 10
    tandemctl status sf --field last_error --field last_errno > /tmp/sf.err
    { read -r err; read -r errno; } < /tmp/sf.err
    echo "degraded; last error: $err (errno $errno)"
    [ -n "$err" ]
    # dm's error target fails every I/O with EIO, and the errno says so.
    [ "$errno" = 5 ]
    sleep 3
    dm_table sf-s "$(linear /dev/ram1)"
    wait "$f"
    fio_ok /tmp/sf.fio
    t0=$(date +%s)
    tandemctl wait-synced sf --timeout 120
    echo "INFO secondary-fails: caught up $(( $(date +%s) - t0 ))s after the load; copy errors $(tandemctl status sf --field copy_errors)"
    wait_state sf live 5
    identical sf
    unpair sf
}

secondary_slow_case() {
    # A capacity above the working set: the record does not churn, so the
    # runs differ only in the secondary.
    PAIR_CAPACITY=64MiB pair ss
    unset PAIR_CAPACITY
    healthy=0 slow=0
    for round in 1 2; do
        dm_table ss-s "$(linear /dev/ram1)"
        h=$(write_iops "$dev" 3)
        dm_table ss-s "0 $DATA_SECTORS delay /dev/ram1 0 300"
        s=$(write_iops "$dev" 3)
        echo "round $round: healthy secondary $h IOPS, secondary delayed 300 ms $s IOPS"
        healthy=$((healthy + h)) slow=$((slow + s))
    done
    ratio=$(awk -v s="$slow" -v h="$healthy" 'BEGIN { printf "%.2f", s / h }')
    echo "INFO secondary-slow: write IOPS with a 300 ms secondary / healthy = $ratio ($slow / $healthy over two rounds)"
    awk -v r="$ratio" 'BEGIN { exit !(r >= 0.7) }' || { echo "a slow secondary slowed host writes" >&2; return 1; }
    dm_table ss-s "$(linear /dev/ram1)"
    tandemctl wait-synced ss --timeout 200
    identical ss
    unpair ss
}

# The secondary's device goes away (dm remove; the daemon's open handle now
# fails every I/O) and a new device appears under the same path.
secondary_disappears_case() {
    pair sd --max-lag 0
    fio_verify "$dev" /tmp/sd.fio --rate_iops=1500 &
    f=$!
    sleep 1
    $DMSETUP remove --noudevsync --force sd-s || true
    $DMSETUP mknodes
    wait_state sd degraded 10
    echo "degraded; last error: $(tandemctl status sd --field last_error)"
    sleep 2
    [ ! -e /dev/mapper/sd-s ] || $DMSETUP info sd-s || true
    # A new device under the old name.
    $DMSETUP remove --noudevsync sd-s 2>/dev/null || true
    dm_table sd-s "$(linear /dev/ram1)"
    wait "$f"
    fio_ok /tmp/sd.fio
    tandemctl wait-synced sd --timeout 180
    echo "INFO secondary-disappears: resynced $(tandemctl status sd --field resync_total_bytes) bytes onto the returned secondary"
    wait_state sd live 5
    identical sd
    unpair sd
}

primary_fails_case() {
    pair pf --max-lag 0
    make_pattern /tmp/pf.pat 1
    dm_table pf-p "$(failing)"
    if dd if=/tmp/pf.pat of="$dev" bs=64k seek=16 oflag=direct 2>/tmp/pf.err; then
        echo "a write to a failed primary reported success" >&2
        return 1
    fi
    echo "write while the primary fails: $(tail -n 1 /tmp/pf.err)"
    if dd if="$dev" of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null; then
        echo "a read from a failed primary reported success" >&2
        return 1
    fi
    dm_table pf-p "$(linear /dev/ram0)"
    fio_verify "$dev" /tmp/pf.fio
    fio_ok /tmp/pf.fio
    dd if=/tmp/pf.pat of="$dev" bs=64k seek=16 oflag=direct 2>/dev/null
    dd if="$dev" bs=64k skip=16 count=16 iflag=direct 2>/dev/null | cmp - /tmp/pf.pat
    tandemctl wait-synced pf --timeout 180
    identical pf
    unpair pf
}

# The record device fails: writes that need a record update are refused,
# writes to recorded regions go on, the status says so; after the device is
# back and the daemon restarts, nothing acknowledged is lost.
record_fails_case() {
    pair rf --max-lag 0
    dd if=/dev/urandom of=/tmp/rf.pat bs=64k count=4 2>/dev/null
    # Region 0 (256 KiB) is recorded by this write and stays recorded (clean
    # regions are kept up to the capacity).
    dd if=/tmp/rf.pat of="$dev" bs=64k count=4 oflag=direct 2>/dev/null
    tandemctl wait-synced rf --timeout 60
    dm_table rf-r "$(failing "" $RECORD_SECTORS)"
    dd if=/tmp/rf.pat of="$dev" bs=64k count=4 oflag=direct
    echo "a write to a recorded region goes on"
    if dd if=/tmp/rf.pat of="$dev" bs=64k count=4 seek=800 oflag=direct 2>/tmp/rf.err; then
        echo "a write that needs a record update succeeded while the record fails" >&2
        return 1
    fi
    echo "a write that needs a record update: $(tail -n 1 /tmp/rf.err)"
    wait_state rf record-failed 5
    err=$(tandemctl status rf --field record_error)
    echo "state record-failed; record error: $err (errno $(tandemctl status rf --field record_errno))"
    [ -n "$err" ]
    dm_table rf-r "0 $RECORD_SECTORS linear /dev/ram2 0"
    dd if=/tmp/rf.pat of="$dev" bs=64k count=4 seek=800 oflag=direct
    wait_state rf live 10
    kill_and_recover rf
    echo "INFO record-fails: the restart resyncs $(tandemctl status rf --field resync_total_bytes) bytes"
    dd if="$dev" bs=64k count=4 iflag=direct 2>/dev/null | cmp - /tmp/rf.pat
    dd if="$dev" bs=64k count=4 skip=800 iflag=direct 2>/dev/null | cmp - /tmp/rf.pat
    tandemctl wait-synced rf --timeout 120
    identical rf
    unpair rf
}

repeated_kill_case() {
    pair rk
    fio_verify "$dev" /tmp/rk.fio --rate_iops=400 &
    f=$!
    total=0
    for k in 1 2 3 4 5 6; do
        sleep 1.5
        kill -0 "$f" || { echo "the load ended before kill $k" >&2; return 1; }
        kill_and_recover rk
        r=$(tandemctl status rk --field resync_total_bytes)
        total=$((total + r))
        echo "kill $k: recovery resyncs $r bytes"
    done
    wait "$f"
    fio_ok /tmp/rk.fio
    echo "INFO repeated-kill: 6 kills under fio verify, $total bytes resynced in all (a full copy is $((DATA_SECTORS * 512)))"
    tandemctl wait-synced rk --timeout 120
    identical rk
    unpair rk
}

kill_during_resync_case() {
    need_bin fio
    tables kr
    dd if=/dev/urandom of=/dev/mapper/kr-p bs=1M count=64 oflag=direct 2>/dev/null
    # A new record: the whole primary is copied, slowly enough to be caught.
    dev=$(tandemctl add kr --primary /dev/mapper/kr-p --secondary /dev/mapper/kr-s \
        --record /dev/mapper/kr-r --region-size 256KiB --capacity 8MiB --max-copy-rate 16MiB)
    sleep 1
    [ "$(state kr)" = resyncing ]
    done1=$(tandemctl status kr --field resync_done_bytes)
    kill_and_recover kr
    echo "INFO kill-during-resync: killed after $done1 of $((DATA_SECTORS * 512)) bytes; the restart resyncs $(tandemctl status kr --field resync_total_bytes)"
    fio_verify "$dev" /tmp/kr.fio
    fio_ok /tmp/kr.fio
    tandemctl wait-synced kr --timeout 200
    identical kr
    unpair kr
}

kill_during_recovery_case() {
    pair kv
    fio_verify "$dev" /tmp/kv.fio --rate_iops=600 &
    f=$!
    for k in 1 2 3; do
        sleep 2
        kill -9 "$(tandemctl status kv --field pid)"
        sleep 0.3
        tandemctl recover kv >/dev/null 2>&1 &
        r=$!
        # Kill the new daemon while it reattaches: as soon as it exists.
        i=0 p=""
        while [ -z "$p" ] && [ $i -lt 200 ]; do
            p=$(pid_of 'tandem-target serve kv .*--recover') || sleep 0.01
            i=$((i + 1))
        done
        [ -n "$p" ] || { echo "kill $k: the recovering daemon was not seen" >&2; return 1; }
        kill -9 "$p"
        echo "kill $k: killed the recovering daemon $p"
        wait "$r" || true
        if [ "$(state kv)" = down ]; then
            tandemctl recover kv >/dev/null
        else
            echo "kill $k: the daemon had reattached before the kill reached it"
        fi
        echo "kill $k: recovered, state $(state kv)"
    done
    wait "$f"
    fio_ok /tmp/kv.fio
    tandemctl wait-synced kv --timeout 120
    identical kv
    unpair kv
}

# A filesystem on the device stays mounted across a kill -9 and recovery;
# after the host unmounts it, the delete finishes in seconds.
mounted_restart_case() {
    pair mr
    mkdir -p /mnt/mr
    /usr/sbin/mkfs.ext4 -q -F "$dev"
    mount -t ext4 "$dev" /mnt/mr
    dd if=/dev/urandom of=/mnt/mr/a.bin bs=1M count=4 conv=fsync 2>/dev/null
    sum=$(md5sum < /mnt/mr/a.bin)
    kill_and_recover mr
    dd if=/dev/urandom of=/mnt/mr/b.bin bs=1M count=2 conv=fsync 2>/dev/null
    [ "$(md5sum < /mnt/mr/a.bin)" = "$sum" ]
    umount /mnt/mr
    t0=$(date +%s)
    timeout 30 tandemctl del mr --timeout 20
    secs=$(( $(date +%s) - t0 ))
    echo "INFO mounted-restart: delete after the unmount took ${secs}s"
    [ $secs -le 10 ]
    nothing_left mr
    # What the unmount wrote last may not be copied yet: the record keeps it,
    # and the next start copies it.
    tandemctl add mr --primary /dev/mapper/mr-p --secondary /dev/mapper/mr-s \
        --record /dev/mapper/mr-r --region-size 256KiB >/dev/null
    echo "the next start resyncs $(tandemctl status mr --field resync_total_bytes) bytes"
    tandemctl wait-synced mr --timeout 60
    identical mr
    mount -t ext4 -o ro,noload /dev/mapper/mr-s /mnt/mr
    [ "$(md5sum < /mnt/mr/a.bin)" = "$sum" ]
    umount /mnt/mr
    unpair mr
}

# A daemon started while another device's filesystem is mounted must not pin
# that filesystem: the other device still deletes in seconds after its unmount.
other_mount_case() {
    need_bin tandemctl
    clean_slate
    mkdir -p /tmp/om /mnt/om
    truncate -s 64M /tmp/om/p1 /tmp/om/s1 /tmp/om/p2 /tmp/om/s2
    d1=$(tandemctl add om1 --primary /tmp/om/p1 --secondary /tmp/om/s1 --record /tmp/om/om1.rec --assume-clean)
    /usr/sbin/mkfs.ext4 -q -F "$d1"
    mount -t ext4 "$d1" /mnt/om
    echo hello > /mnt/om/f
    sync
    tandemctl add om2 --primary /tmp/om/p2 --secondary /tmp/om/s2 --record /tmp/om/om2.rec --assume-clean
    umount /mnt/om
    t0=$(date +%s)
    timeout 30 tandemctl del om1 --timeout 20
    secs=$(( $(date +%s) - t0 ))
    echo "INFO other-mount: delete of om1 with om2's daemon started while om1 was mounted: ${secs}s"
    [ $secs -le 10 ]
    tandemctl del om2
    nothing_left om1
    nothing_left om2
}

delete_under_load_case() {
    pair dl
    fio --name=load --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=4k --iodepth=16 --size=32M --time_based --runtime=60 --output=/tmp/dl.fio &
    f=$!
    sleep 2
    t0=$(date +%s)
    timeout 60 tandemctl del dl --timeout 30
    echo "INFO delete-under-load: $(( $(date +%s) - t0 ))s with fio QD16 running"
    i=0
    while kill -0 "$f" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "fio hangs after the delete" >&2; kill -9 "$f"; return 1; }
        sleep 0.1
    done
    nothing_left dl
    for s in p s r; do $DMSETUP remove --noudevsync "dl-$s"; done
}

delete_while_resyncing_case() {
    tables dr
    dd if=/dev/urandom of=/dev/mapper/dr-p bs=1M count=64 oflag=direct 2>/dev/null
    tandemctl add dr --primary /dev/mapper/dr-p --secondary /dev/mapper/dr-s \
        --record /dev/mapper/dr-r --region-size 256KiB --max-copy-rate 8MiB
    sleep 1
    [ "$(state dr)" = resyncing ]
    t0=$(date +%s)
    timeout 60 tandemctl del dr --timeout 30
    echo "INFO delete-while-resyncing: $(( $(date +%s) - t0 ))s"
    nothing_left dr
    # The record keeps what was not copied: the next start resumes the resync.
    tandemctl add dr --primary /dev/mapper/dr-p --secondary /dev/mapper/dr-s \
        --record /dev/mapper/dr-r --region-size 256KiB
    left=$(tandemctl status dr --field resync_total_bytes)
    echo "the next start resyncs $left bytes"
    [ "$left" -gt 0 ]
    tandemctl wait-synced dr --timeout 200
    identical dr
    unpair dr
}

run_case fault-secondary-fails secondary_fails_case
run_case fault-secondary-slow secondary_slow_case
run_case fault-secondary-disappears secondary_disappears_case
run_case fault-primary-fails primary_fails_case
run_case fault-record-fails record_fails_case
run_case fault-repeated-kill repeated_kill_case
run_case fault-kill-during-resync kill_during_resync_case
run_case fault-kill-during-recovery kill_during_recovery_case
run_case fault-mounted-across-restart mounted_restart_case
run_case fault-other-device-mounted other_mount_case
run_case fault-delete-under-load delete_under_load_case
run_case fault-delete-while-resyncing delete_while_resyncing_case
grep -h '^INFO ' "$TANDEM_LOG_DIR"/fault-*.log 2>/dev/null
finish
