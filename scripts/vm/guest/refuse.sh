#!/bin/sh
# Refused input: each kind of bad input is refused with a message naming it,
# and nothing is left behind.
# vm-timeout: 200
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

refuse_case() {
    need_bin tandemctl
    mkdir -p /tmp/r
    truncate -s 64M /tmp/r/p.img /tmp/r/s.img
    truncate -s 32M /tmp/r/small.img
    ok="--primary /tmp/r/p.img --secondary /tmp/r/s.img --record /tmp/r/r.rec"
    # shellcheck disable=SC2086
    {
        expect_refusal "/tmp/r/missing.img" tandemctl add r1 --primary /tmp/r/missing.img \
            --secondary /tmp/r/s.img --record /tmp/r/r.rec
        expect_refusal "smaller" tandemctl add r1 --primary /tmp/r/p.img \
            --secondary /tmp/r/small.img --record /tmp/r/r.rec
        grep -q 33554432 /tmp/refusal.err && grep -q 67108864 /tmp/refusal.err
        expect_refusal "same file" tandemctl add r1 --primary /tmp/r/p.img \
            --secondary /tmp/r/p.img --record /tmp/r/r.rec
        expect_refusal "3MiB" tandemctl add r1 $ok --region-size 3MiB
        expect_refusal "magic" tandemctl add r1 $ok --policy magic
        expect_refusal "device name" tandemctl add "bad/name" $ok
    }
    [ ! -e /tmp/r/r.rec ] || { echo "a refused add created the record" >&2; return 1; }
    nothing_left r1
    # A name in use.
    # shellcheck disable=SC2086
    tandemctl add r1 $ok --assume-clean
    truncate -s 64M /tmp/r/p2.img /tmp/r/s2.img
    expect_refusal "in use" tandemctl add r1 --primary /tmp/r/p2.img \
        --secondary /tmp/r/s2.img --record /tmp/r/r2.rec
    expect_refusal "already used" tandemctl add r2 --primary /tmp/r/p.img \
        --secondary /tmp/r/s2.img --record /tmp/r/r2.rec
    [ ! -e /tmp/r/r2.rec ]
    tandemctl del r1
    nothing_left r1
    # No ublk in the kernel.
    rmmod ublk_drv
    # shellcheck disable=SC2086
    expect_refusal "no ublk" tandemctl add r3 $ok
    grep -q "scripts/demo" /tmp/refusal.err
    insmod /lib/modules/ublk_drv.ko
    nothing_left r3
}

run_case refused-input refuse_case
finish
