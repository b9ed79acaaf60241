#!/bin/sh
# Daemon killed under load: kill -9 the daemon during a write load, recover, and
# the load goes on with no I/O error; after resync the devices are identical and
# hold exactly what was written. Reports the bytes resynced against the capacity.
# vm-timeout: 400
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

# writer DEV PATTERN ERRFILE: writes the pattern chunk by chunk, one dd each.
writer() {
    k=0
    while [ $k -lt 512 ]; do
        dd if="$2" of="$1" bs=64k skip=$k seek=$k count=1 oflag=direct 2>/dev/null \
            || echo "write $k failed" >> "$3"
        k=$((k + 1))
    done
}

kill_case() {
    need_bin tandemctl
    mkdir -p /tmp/k
    truncate -s 128M /tmp/k/p.img /tmp/k/s.img
    make_pattern /tmp/k/pat 32
    cap=$((16 << 20))
    args="--primary /tmp/k/p.img --secondary /tmp/k/s.img --record /tmp/k/k1.rec"
    args="$args --assume-clean --region-size 64KiB --capacity 16MiB"
    # shellcheck disable=SC2086
    dev=$(tandemctl add k1 $args)
    round=1
    while [ $round -le 2 ]; do
        : > /tmp/k/err
        writer "$dev" /tmp/k/pat /tmp/k/err &
        w=$!
        sleep 2
        kill -0 "$w" || { echo "the load ended before the kill" >&2; return 1; }
        pid=$(daemon_pid k1)
        kill -9 "$pid"
        echo "round $round: killed daemon $pid during the load"
        sleep 1
        [ "$(tandemctl status k1 --field state)" = down ]
        if [ $round = 1 ]; then
            tandemctl recover k1
        else
            # The same start command again reattaches the device too.
            # shellcheck disable=SC2086
            tandemctl add k1 $args
        fi
        resync=$(status_num k1 resync_total_bytes)
        echo "INFO kill round $round: recovery resyncs $resync bytes; capacity $cap bytes" \
            | tee -a /tmp/k/info
        wait "$w"
        if [ -s /tmp/k/err ]; then
            cat /tmp/k/err
            echo "the load saw I/O errors" >&2
            return 1
        fi
        round=$((round + 1))
    done
    dd if="$dev" bs=64k count=512 iflag=direct 2>/dev/null | cmp - /tmp/k/pat
    tandemctl wait-synced k1 --timeout 200
    cmp /tmp/k/p.img /tmp/k/s.img
    tandemctl del k1
    nothing_left k1
}

run_case kill-under-load kill_case
cat /tmp/k/info 2>/dev/null
finish
