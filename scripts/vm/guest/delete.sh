#!/bin/sh
# Clean delete while I/O is in flight: the delete completes, nothing hangs, the
# device and its state are gone.
# vm-timeout: 200
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

delete_case() {
    need_bin tandemctl
    mkdir -p /tmp/d
    truncate -s 128M /tmp/d/p.img /tmp/d/s.img
    dev=$(tandemctl add d1 --primary /tmp/d/p.img --secondary /tmp/d/s.img \
        --record /tmp/d/d1.rec --assume-clean)
    (
        while :; do
            dd if=/dev/urandom of="$dev" bs=64k count=64 seek=$(( $(date +%N) % 1000 )) \
                oflag=direct 2>/dev/null || exit 0
        done
    ) &
    w=$!
    sleep 2
    t0=$(date +%s)
    timeout 60 tandemctl del d1
    echo "delete took $(( $(date +%s) - t0 ))s with writes in flight"
    # The writer must end (its device is gone), not hang.
    i=0
    while kill -0 "$w" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "writer hangs after delete" >&2; kill -9 "$w"; return 1; }
        sleep 0.1
    done
    nothing_left d1
    # The name is free again.
    tandemctl add d1 --primary /tmp/d/p.img --secondary /tmp/d/s.img --record /tmp/d/d1.rec
    tandemctl del d1
    nothing_left d1
}

run_case delete-with-io-in-flight delete_case
finish
