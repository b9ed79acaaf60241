#!/bin/sh
# One boot of the two-node host-crash suite (scripts/vm/host/pair-crash.sh).
# Disks: /dev/vda secondary, /dev/vdb node A's state (its record), /dev/vdc node B's
# (the holder's directory), and by serial the shared primary and lease, a path for
# each node.
#   load:   both nodes; fio writes 96 MiB (all acknowledged), then more writes go on
#           while CRASH-NOW tells the host to kill the VM
#   verify: both nodes again; A recovers from B's record, fio verifies the 96 MiB
#           through A's device, the resync ends with identical devices
# vm-standalone: no
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

A_PRIMARY=$(shared_disk shared0-a) B_PRIMARY=$(shared_disk shared0-b)
A_LEASE=$(shared_disk shared1-a)

start_nodes() {
    mkdir -p /mnt/a /mnt/b
    mount /dev/vdb /mnt/a
    mount /dev/vdc /mnt/b
    mkdir -p /mnt/b/held
    start_holder_with /tmp/holder.log --listen 127.0.0.1:7789 --dir /mnt/b/held --node-id 2
    # shellcheck disable=SC2086
    tandemctl add pa --primary $A_PRIMARY --secondary /dev/vda --record /mnt/a/pa.rec \
        --assume-clean --region-size 256KiB --capacity 8MiB --lease $A_LEASE \
        --lease-timeout 5s --node-id 1 --peer 127.0.0.1:7789
}

data_job() {
    _f="$1"; shift
    fio --name=data --filename="$_f" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=16k --iodepth=8 --size=96M --verify=crc32c --verify_fatal=1 "$@"
}

load_case() {
    need_bin fio
    mkfs.ext4 -q /dev/vdb
    mkfs.ext4 -q /dev/vdc
    dev=$(start_nodes)
    data_job "$dev" --do_verify=0 --output=/tmp/data.out
    ! grep -q 'err= *[1-9]' /tmp/data.out
    fio --name=more --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=4k --iodepth=16 --offset=128M --size=64M --time_based --runtime=120 \
        --rate_iops=2000 --output=/tmp/more.out > /dev/null 2>&1 &
    sleep 3
    echo "INFO pair-crash: A's record $(tandemctl status pa --field record_bytes) bytes, held on $(tandemctl status pa --field peer.holding)"
    sync
    # On the console (this case's output goes to its log): the host kills the VM.
    echo CRASH-NOW > /dev/console
    sleep 120
}

verify_case() {
    need_bin fio
    dev=$(start_nodes)
    resync=$(tandemctl status pa --field resync_total_bytes)
    echo "INFO pair-crash: after the host crash A resyncs $resync of $((256 << 20)) bytes from the record B held"
    [ "$(tandemctl status pa --field peer.holding)" = peer ]
    [ "$resync" -gt 0 ] && [ "$resync" -lt $((256 << 20)) ]
    data_job "$dev" --verify_only --output=/tmp/verify.out
    grep -q 'err= 0' /tmp/verify.out && grep -q 'READ: .*io=96.0MiB' /tmp/verify.out ||
        { cat /tmp/verify.out; echo "fio's verify after the crash failed" >&2; return 1; }
    tandemctl wait-synced pa --timeout 120
    tandemctl del pa
    sync
    echo 3 > /proc/sys/vm/drop_caches
    cmp "$A_PRIMARY" /dev/vda
    cmp "$B_PRIMARY" /dev/vda
    echo "every block fio wrote before the crash verified; the devices are identical"
}

case "${1:-}" in
    load) run_case pair-crash-load load_case ;;
    verify) run_case pair-crash-recovers-from-the-peers-record verify_case ;;
    *) echo "usage: pair-crash-step.sh load|verify" >&2; exit 2 ;;
esac
grep -h '^INFO ' "$TANDEM_LOG_DIR"/pair-crash-*.log 2>/dev/null
finish
