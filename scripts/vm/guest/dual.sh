#!/bin/sh
# Dual-active: two nodes in one VM serve the same device over one shared
# primary, each by its own path to it (one image attached twice, share-rw,
# host cache off: two page caches, as two hosts have), each with
# --cache writeback, each holding the other's record (--listen) and asking
# the other before it serves a region in the other's record. The secondary
# is shared the same way (each node by its own path), and both name the
# device alike (--pair-name).
#  - live migration: fio writes through A's device and stops; fio's verify
#    through B's device reads every block A wrote (B asks A, A writes its
#    cache back, B drops its own cache); afterwards primary and secondary are
#    identical;
#  - the same with the status checks switched off (the test-only switch
#    TANDEM_TEST_SKIP_CHECKS=1): B reads stale data and fio's verify fails,
#    which shows what the check is for;
#  - alternating writers: fio verify through both nodes at once over
#    disjoint halves, then the same range written in turns, each turn's
#    bytes verified through the other node; afterwards primary and secondary
#    are identical;
#  - kill -9 of either node under load (each node with its own lease,
#    watching the other's, and --cache none: a daemon killed in one VM
#    leaves no page cache behind as a dead host would, but a killed
#    daemon's buffered writes would land later, behind the survivor's
#    copy): the survivor holds the requests that touch the dead node's
#    record until that node's lease expires, then takes its record over
#    (into its own, copied by its mirror) and serves without asking; fio
#    verify on both devices sees no error; the dead node, recovered,
#    claims its lease back, the pair serves dual-active again, and the
#    devices end identical.
# vm-shared: 256M 256M 4M 4M
# vm-fio: yes
# vm-mem: 2048
# vm-timeout: 600
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

W=/tmp/dual
A_PORT=7791
B_PORT=7792
A_PRIMARY=$(shared_disk shared0-a) B_PRIMARY=$(shared_disk shared0-b)
A_SECONDARY=$(shared_disk shared1-a) B_SECONDARY=$(shared_disk shared1-b)
# Each node's lease, by each node's path to it.
LEASE_A_BY_A=$(shared_disk shared2-a) LEASE_A_BY_B=$(shared_disk shared2-b)
LEASE_B_BY_A=$(shared_disk shared3-a) LEASE_B_BY_B=$(shared_disk shared3-b)
# A capacity larger than the device: no eviction, so no destage flushes A's
# cache behind the test's back (the negative case relies on it).
DEVARGS="--region-size 256KiB --capacity 512MiB --cache writeback --assume-clean --pair-name vm1"

fresh() {
    need_bin tandemctl
    need_bin tandem-target
    need_bin fio
    [ -b "$A_PRIMARY" ] && [ -b "$B_PRIMARY" ] && [ -b "$A_SECONDARY" ] && [ -b "$B_SECONDARY" ] ||
        { echo "the shared disks are missing (vm-shared)" >&2; return 1; }
    for n in pa pb; do tandemctl del "$n" >/dev/null 2>&1 || true; done
    rm -rf $W
    mkdir -p $W
    # (--assume-clean holds: the images are blank at boot, and each case
    # leaves primary and secondary identical or fails.)
    echo 3 > /proc/sys/vm/drop_caches
    # Dirty pages stay in a node's cache until it writes them back itself:
    # what the status check is for shows, instead of hiding behind the
    # kernel's own writeback.
    echo 360000 > /proc/sys/vm/dirty_expire_centisecs
    echo 80 > /proc/sys/vm/dirty_background_ratio
    echo 90 > /proc/sys/vm/dirty_ratio
}

restore_writeback() {
    echo 3000 > /proc/sys/vm/dirty_expire_centisecs
    echo 10 > /proc/sys/vm/dirty_background_ratio
    echo 20 > /proc/sys/vm/dirty_ratio
}

# add_pair [A's ARGS] [B's ARGS]: both nodes (with DEVARGS unless given
# their own), A first (its record is held locally until B's holder
# listens), then both paired and each view of the other's record loaded.
# Prints A's device, then B's.
add_pair() {
    # shellcheck disable=SC2086
    da=$(tandemctl add pa --primary $A_PRIMARY --secondary $A_SECONDARY --record $W/pa.rec \
        ${1:-$DEVARGS} --node-id 1 --peer 127.0.0.1:$B_PORT --listen 127.0.0.1:$A_PORT)
    # shellcheck disable=SC2086
    db=$(tandemctl add pb --primary $B_PRIMARY --secondary $B_SECONDARY --record $W/pb.rec \
        ${2:-$DEVARGS} --node-id 2 --peer 127.0.0.1:$A_PORT --listen 127.0.0.1:$B_PORT)
    wait_pair
    echo "$da $db"
}

# wait_pair: each node's record held by the other, each view loaded.
wait_pair() {
    wait_field pa peer.holding peer 30 >&2
    wait_field pb peer.holding peer 30 >&2
    wait_field pa dual.view_loaded true 30 >&2
    wait_field pb dual.view_loaded true 30 >&2
}

# The job that writes through one node and verifies through the other.
data_job() {
    _f="$1"; shift
    fio --name=data --filename="$_f" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=16k --iodepth=8 --size=96M --verify=crc32c --verify_fatal=1 "$@"
}

# end_identical: both nodes synced and stopped, then primary and secondary
# the same through both nodes' paths.
end_identical() {
    tandemctl wait-synced pa --timeout 120
    tandemctl wait-synced pb --timeout 120
    tandemctl del pb
    tandemctl del pa
    restore_writeback
    same_bytes $A_PRIMARY $A_SECONDARY
    same_bytes $B_PRIMARY $B_SECONDARY
    echo "primary and secondary are identical (through both nodes' paths)"
    nothing_left pa
    nothing_left pb
}

migration_case() {
    fresh
    add_pair > $W/devs
    read -r da db < $W/devs
    data_job "$da" --do_verify=0 --output=$W/write.out
    ! grep -q 'err= *[1-9]' $W/write.out || { cat $W/write.out; return 1; }
    dirty=$(awk '/^Dirty:/ { print $2 }' /proc/meminfo)
    echo "INFO dual: A wrote 96 MiB through $da; $dirty kB of the page cache dirty"
    before=$(tandemctl status pb --field dual.checked_requests)
    data_job "$db" --verify_only --output=$W/verify.out
    grep -q 'err= 0' $W/verify.out && grep -q 'READ: .*io=96.0MiB' $W/verify.out ||
        { cat $W/verify.out; echo "fio's verify through B's device failed" >&2; return 1; }
    after=$(tandemctl status pb --field dual.checked_requests)
    regions=$(tandemctl status pb --field dual.other_regions)
    echo "INFO dual: B verified A's 96 MiB; $((after - before)) of its reads waited for a status check; A's record lists $regions regions"
    tandemctl status pb --json | grep -q '"dual"'
    end_identical
}

# Without the check, B reads what the shared primary held before A wrote
# (A's data is still in A's cache): the verify must fail.
skipped_check_case() {
    fresh
    export TANDEM_TEST_SKIP_CHECKS=1
    add_pair > $W/devs
    unset TANDEM_TEST_SKIP_CHECKS
    read -r da db < $W/devs
    # Where the first case wrote nothing: what the primary holds there is
    # blank (fio's verify would accept the first case's own blocks).
    data_job "$da" --offset=128M --do_verify=0 --output=$W/write.out
    ! grep -q 'err= *[1-9]' $W/write.out || { cat $W/write.out; return 1; }
    if data_job "$db" --offset=128M --verify_only --output=$W/verify.out 2>$W/verify.err; then
        cat $W/verify.out
        echo "B read A's data with the status checks off: the test cannot show what they are for" >&2
        return 1
    fi
    # Failed on the data (what the primary held before A wrote), not on I/O.
    grep -q 'verify: bad' $W/verify.err || { cat $W/verify.out $W/verify.err; return 1; }
    echo "INFO dual: with the checks off, B's verify failed: $(grep -m1 -o 'verify: [^,]*' $W/verify.err)"
    [ "$(tandemctl status pb --field dual.checked_requests)" = 0 ]
    # The next case assumes primary and secondary identical.
    tandemctl wait-synced pa --timeout 120
    tandemctl wait-synced pb --timeout 120
    tandemctl del pb
    tandemctl del pa
    restore_writeback
    nothing_left pa
    nothing_left pb
}

# pattern_job DEV PATTERN ARGS: writes (or with --verify_only, checks) the
# exact bytes PATTERN over a range: a turn's data is told from the last one's.
pattern_job() {
    _d="$1" _p="$2"; shift 2
    fio --name=turn --filename="$_d" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=64k --iodepth=8 --offset=64M --size=32M --verify=pattern \
        --verify_pattern="$_p" --verify_fatal=1 "$@"
}

alternating_case() {
    fresh
    add_pair > $W/devs
    read -r da db < $W/devs
    fio_verify "$da" $W/a.out --offset=0 --size=96M &
    fa=$!
    fio_verify "$db" $W/b.out --offset=128M --size=96M &
    fb=$!
    wait "$fa"
    wait "$fb"
    fio_ok $W/a.out
    fio_ok $W/b.out
    echo "INFO dual: fio verify through both nodes at once over disjoint halves passed"
    turn=0
    for p in 0x11111111 0x22222222 0x33333333 0x44444444; do
        if [ $((turn % 2)) = 0 ]; then w=$da r=$db; else w=$db r=$da; fi
        pattern_job "$w" $p --do_verify=0 --output=$W/turn.out
        ! grep -q 'err= *[1-9]' $W/turn.out || { cat $W/turn.out; return 1; }
        pattern_job "$r" $p --verify_only --output=$W/check.out
        grep -q 'err= 0' $W/check.out || { cat $W/check.out; echo "turn $turn: $p not read back through the other node" >&2; return 1; }
        turn=$((turn + 1))
    done
    echo "INFO dual: 4 turns over the same 32 MiB, each turn's bytes verified through the other node"
    end_identical
}

KILLARGS="--region-size 256KiB --capacity 512MiB --cache none --assume-clean --pair-name vm1 --lease-timeout 3s"

# kill_case VICTIM SURVIVOR VICTIM_ID VICTIM_LEASE: see the header.
kill_case() {
    _v="$1" _s="$2" _vid="$3" _vlease="$4"
    fresh
    [ -b "$LEASE_A_BY_A" ] && [ -b "$LEASE_B_BY_B" ] || { echo "the lease disks are missing (vm-shared)" >&2; return 1; }
    for l in $LEASE_A_BY_A $LEASE_B_BY_A; do
        dd if=/dev/zero of=$l bs=4096 count=1 oflag=direct 2>/dev/null
    done
    add_pair "$KILLARGS --lease $LEASE_A_BY_A --other-lease $LEASE_B_BY_A" \
        "$KILLARGS --lease $LEASE_B_BY_B --other-lease $LEASE_A_BY_B" > $W/devs
    read -r da db < $W/devs
    fio_verify "$da" $W/a.out --offset=0 --size=48M --rate_iops=1500 &
    fa=$!
    fio_verify "$db" $W/b.out --offset=128M --size=48M --rate_iops=1500 &
    fb=$!
    sleep 3
    kill -0 "$fa" && kill -0 "$fb" || { echo "the load ended before the kill" >&2; return 1; }
    before=$(tandemctl status "$_s" --field writes)
    kill -9 "$(daemon_pid "$_v")"
    echo "killed $_v's daemon under load"
    _i=0
    until tandemctl status "$_s" --field dual.takeovers | grep -q "\"from_node\":$_vid"; do
        _i=$((_i + 1))
        [ $_i -le 300 ] || { tandemctl status "$_s"; echo "$_s did not take $_v's record over" >&2; return 1; }
        sleep 0.1
    done
    echo "INFO dual: $_s took $_v's record over after $((_i / 10)) s: $(tandemctl status "$_s" --field dual.takeovers)"
    # It serves directly: its own record is held locally meanwhile.
    wait_field "$_s" peer.holding local 10
    tandemctl lease "$_vlease" | grep -q "owned by node $((3 - _vid)) at generation 2, released" ||
        { tandemctl lease "$_vlease"; return 1; }
    # The survivor's host writes go on while the dead node is down.
    sleep 1
    after=$(tandemctl status "$_s" --field writes)
    [ "$after" -gt "$before" ] || { echo "$_s served no write after the takeover" >&2; return 1; }
    tandemctl recover "$_v"
    wait_pair
    tandemctl lease "$_vlease" | grep -q "owned by node $_vid at generation 3, held" ||
        { tandemctl lease "$_vlease"; return 1; }
    echo "INFO dual: $_v recovered, claimed its lease back (generation 3), the pair is dual-active again"
    wait "$fa"
    wait "$fb"
    fio_ok $W/a.out
    fio_ok $W/b.out
    echo "INFO dual: fio verify through both devices passed across the kill of $_v"
    end_identical
}

run_case dual-live-migration-verifies-through-b migration_case
run_case dual-without-the-check-b-reads-stale-data skipped_check_case
run_case dual-alternating-writers-end-identical alternating_case
run_case dual-kill-9-of-a-b-takes-over-and-serves kill_case pa pb 1 "$LEASE_A_BY_A"
run_case dual-kill-9-of-b-a-takes-over-and-serves kill_case pb pa 2 "$LEASE_B_BY_A"
restore_writeback
grep -h '^INFO ' "$TANDEM_LOG_DIR"/dual-*.log 2>/dev/null
finish
