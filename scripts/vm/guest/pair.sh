#!/bin/sh
# Two appliances in one VM, over loopback: node B's holder (tandem-target hold)
# keeps the record of node A's device, under fio with verify=crc32c:
#  - B killed: A serves directly (the record goes to its local file), no host
#    I/O error;
#  - B back: A hands it the whole record and pairs again;
#  - A's daemon killed and recovered: it recovers from what B holds (a part of
#    the device, not all of it); the devices end identical.
# vm-fio: yes
# vm-timeout: 400
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

PORT=7789
W=/tmp/pair

# start_holder: node B, until killed; waits until it listens.
start_holder() {
    start_holder_with $W/holder.log --listen 127.0.0.1:$PORT --dir $W/b --node-id 2
}

pair_case() {
    need_bin tandemctl
    need_bin tandem-target
    need_bin fio
    rm -rf $W
    mkdir -p $W/b
    truncate -s 128M $W/p.img $W/s.img
    start_holder
    dev=$(tandemctl add pa --primary $W/p.img --secondary $W/s.img --record $W/pa.rec \
        --assume-clean --region-size 256KiB --capacity 8MiB \
        --peer 127.0.0.1:$PORT --node-id 1)
    [ "$(tandemctl status pa --field peer.holding)" = peer ]
    fio_verify "$dev" $W/fio.out --size=64M --rate_iops=2000 &
    f=$!
    sleep 2
    echo "INFO pair: paired, round trip of the last record update $(tandemctl status pa --field peer.rtt_us) us"
    kill -9 "$HOLDER"
    wait_field pa peer.holding local 10
    echo "INFO pair: holder killed, serving directly ($(tandemctl status pa --field peer.last_error))"
    sleep 2
    start_holder
    wait_field pa peer.holding peer 10
    echo "INFO pair: holder back, paired again (direct-service spells: $(tandemctl status pa --field peer.fallbacks))"
    wait "$f"
    fio_ok $W/fio.out
    kill -9 "$(daemon_pid pa)"
    sleep 0.5
    tandemctl recover pa >/dev/null
    resync=$(tandemctl status pa --field resync_total_bytes)
    echo "INFO pair: A killed and recovered from B's record: resyncs $resync of $((128 << 20)) bytes"
    [ "$resync" -gt 0 ] && [ "$resync" -lt $((128 << 20)) ]
    [ "$(tandemctl status pa --field peer.holding)" = peer ]
    tandemctl wait-synced pa --timeout 120
    tandemctl del pa
    cmp $W/p.img $W/s.img
    echo "primary and secondary are identical"
    kill "$HOLDER"
    wait "$HOLDER" 2>/dev/null || true
    nothing_left pa
}

run_case pair-holder-dies-and-returns pair_case
grep -h '^INFO ' "$TANDEM_LOG_DIR"/pair-*.log 2>/dev/null
finish
