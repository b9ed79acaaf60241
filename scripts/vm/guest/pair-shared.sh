#!/bin/sh
# Two appliances in one VM over shared storage, each node with its own path
# to it: the shared primary is one image attached twice (share-rw, host cache
# off: two page caches, as two hosts have), one path for node A and one for
# node B; so is the device's lease; the secondary is /dev/vda. B runs the record holder and watches A's lease; the
# link between them goes through link-proxy, which the cases cut.
#  - cut link, then B killed: no takeover while A's lease lives, A serves
#    directly without a host error, pairs again, and the devices end identical;
#  - A killed under fio: B takes the device over once A's lease expired and
#    finishes the copy (the devices are identical), A is refused when it comes
#    back, and B, promoted, serves A's acknowledged data to fio's verify.
# vm-disks: 256M
# vm-shared: 256M 4M
# vm-fio: yes
# vm-timeout: 600
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

W=/tmp/pair-shared
PORT=7789
LINK=7790
SECONDARY=/dev/vda
A_PRIMARY=$(shared_disk shared0-a) B_PRIMARY=$(shared_disk shared0-b)
A_LEASE=$(shared_disk shared1-a) B_LEASE=$(shared_disk shared1-b)
DEVARGS="--region-size 256KiB --capacity 8MiB --lease-timeout 5s"

# fresh: a blank lease, an empty holder directory, the link open.
fresh() {
    need_bin tandemctl
    need_bin tandem-target
    need_bin link-proxy
    need_bin fio
    [ -b "$A_PRIMARY" ] && [ -b "$B_PRIMARY" ] && [ -b "$A_LEASE" ] && [ -b "$B_LEASE" ] ||
        { echo "the shared disks are missing (vm-shared)" >&2; return 1; }
    # What an earlier case that failed left running.
    for n in pa pb; do tandemctl del "$n" >/dev/null 2>&1 || true; done
    for _c in /proc/[0-9]*/cmdline; do
        case "$(tr '\0' ' ' < "$_c" 2>/dev/null)" in
            "tandem-target hold "*|"link-proxy "*) _p=${_c#/proc/}; kill -9 "${_p%/cmdline}" 2>/dev/null || true ;;
        esac
    done
    sleep 0.2
    echo "INFO pair-shared: A's paths $A_PRIMARY $A_LEASE, B's $B_PRIMARY $B_LEASE"
    rm -rf $W
    mkdir -p $W/b
    dd if=/dev/zero of=$A_LEASE bs=4096 count=1 oflag=direct 2>/dev/null
    : > $W/link
    link-proxy $LINK $PORT $W/link > $W/proxy.log 2>&1 &
    PROXY=$!
}

# start_holder: node B, watching A's lease through its own paths.
start_holder() {
    start_holder_with $W/holder.log --listen 127.0.0.1:$PORT --dir $W/b --node-id 2 \
        --takeover lease=$B_LEASE,primary=$B_PRIMARY,secondary=$SECONDARY
}

# add_a: node A's device (prints its path).
add_a() {
    # shellcheck disable=SC2086
    tandemctl add pa --primary $A_PRIMARY --secondary $SECONDARY --record $W/pa.rec \
        --assume-clean $DEVARGS --lease $A_LEASE --node-id 1 --peer 127.0.0.1:$LINK
}

stop_all() {
    kill "$HOLDER" "$PROXY" 2>/dev/null || true
    wait "$HOLDER" "$PROXY" 2>/dev/null || true
}

cut_link_case() {
    fresh
    start_holder
    dev=$(add_a)
    [ "$(tandemctl status pa --field peer.holding)" = peer ]
    [ "$(tandemctl status pa --field lease.generation)" = 1 ]
    fio_verify "$dev" $W/fio.out --size=64M --rate_iops=1500 &
    f=$!
    sleep 2
    echo cut > $W/link
    wait_field pa peer.holding local 10
    # Longer than the lease's expiry (5 s + 2.5 s): A renews it, B must not act.
    sleep 10
    tandemctl lease $B_LEASE
    tandemctl lease $B_LEASE | grep -q 'owned by node 1 at generation 1, held'
    tandemctl holder
    tandemctl holder | grep -q "lease $B_LEASE: alive (node 1, generation 1)"
    if tandemctl holder | grep -q 'took device'; then
        echo "B took the device over while A was alive" >&2
        return 1
    fi
    [ "$(tandemctl status pa --field state)" != fenced ]
    echo "INFO pair-shared: lease renewals $(tandemctl status pa --field lease.renewals), not counted $(tandemctl status pa --field lease.failed_renewals)"
    echo "INFO pair-shared: link cut for 10 s: A served directly ($(tandemctl status pa --field peer.last_error)); no takeover"
    : > $W/link
    wait_field pa peer.holding peer 10
    echo "INFO pair-shared: link back, paired again"
    kill -9 "$HOLDER"
    wait "$HOLDER" 2>/dev/null || true
    wait_field pa peer.holding local 10
    echo "INFO pair-shared: B killed: A serves directly"
    start_holder
    wait_field pa peer.holding peer 10
    wait "$f"
    fio_ok $W/fio.out
    tandemctl wait-synced pa --timeout 120
    tandemctl del pa
    same_bytes $A_PRIMARY $SECONDARY
    same_bytes $B_PRIMARY $SECONDARY
    echo "primary (both paths) and secondary are identical"
    stop_all
    nothing_left pa
}

# The job that writes A's data, and verifies it later through B's device.
data_job() {
    _f="$1"; shift
    fio --name=data --filename="$_f" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=16k --iodepth=8 --size=96M --verify=crc32c --verify_fatal=1 "$@"
}

takeover_case() {
    fresh
    start_holder
    dev=$(add_a)
    data_job "$dev" --do_verify=0 --output=$W/data.out
    fio_ok_written() { ! grep -q 'err= *[1-9]' "$1" || { cat "$1"; return 1; }; }
    fio_ok_written $W/data.out || { tail -n 20 /run/tandem/pa.log; return 1; }
    # More writes under way when A dies (their data is not checked: they
    # were not all acknowledged).
    fio --name=more --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=4k --iodepth=16 --offset=128M --size=64M --time_based --runtime=120 \
        --rate_iops=2000 --output=$W/more.out > /dev/null 2>&1 &
    more=$!
    sleep 3
    kill -9 "$(daemon_pid pa)"
    t0=$(date +%s)
    _i=0
    until tandemctl lease $B_LEASE | grep -q 'owned by node 2 at generation 2, released'; do
        _i=$((_i + 1))
        [ $_i -le 600 ] || { tandemctl lease $B_LEASE; tandemctl holder; cat $W/holder.log; return 1; }
        sleep 0.1
    done
    took=$(( $(date +%s) - t0 ))
    tandemctl holder
    echo "INFO pair-shared: A killed; B took over and finished its copy within ${took} s: $(tandemctl holder | grep 'took device')"
    # A's orphaned device goes (its queued I/O fails: host A is gone).
    tandemctl del pa
    wait "$more" 2>/dev/null || true
    same_bytes $B_PRIMARY $SECONDARY
    echo "after the takeover the primary and the secondary are identical"
    # A comes back: it must not act on its stale generation.
    expect_refusal "belongs to node 2 at generation 2" add_a
    echo "INFO pair-shared: A back: refused (the lease is node 2's, generation 2)"
    # shellcheck disable=SC2086
    bdev=$(tandemctl promote pb --holder-dir $W/b --primary $B_PRIMARY --secondary $SECONDARY \
        --record $W/pb.rec $DEVARGS --lease $B_LEASE --node-id 2)
    [ "$(tandemctl status pb --field lease.generation)" = 2 ]
    echo "INFO pair-shared: B promoted: $bdev resyncs $(tandemctl status pb --field resync_total_bytes) bytes at start"
    data_job "$bdev" --verify_only --output=$W/verify.out
    # verify_only reads every block the job wrote and checks it (fatal on a
    # mismatch): no error, all 96 MiB read.
    grep -q 'err= 0' $W/verify.out && grep -q 'READ: .*io=96.0MiB' $W/verify.out ||
        { cat $W/verify.out; echo "fio's verify through B's device failed" >&2; return 1; }
    echo "fio verified A's acknowledged data through B's device"
    fio_verify "$bdev" $W/b.out --size=16M
    fio_ok $W/b.out
    tandemctl wait-synced pb --timeout 120
    tandemctl del pb
    tandemctl lease $B_LEASE | grep -q 'owned by node 2 at generation 2, released'
    same_bytes $B_PRIMARY $SECONDARY
    stop_all
    nothing_left pb
}

run_case pair-shared-cut-link-and-dead-holder cut_link_case
run_case pair-shared-a-dies-b-takes-over-and-serves takeover_case
grep -h '^INFO ' "$TANDEM_LOG_DIR"/pair-shared-*.log 2>/dev/null
finish
