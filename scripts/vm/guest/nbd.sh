#!/bin/sh
# The remote secondary on the real ublk driver: tandem's own NBD client to a
# qemu-nbd server over a network namespace of the suite's own, whose only
# link is its loopback (127.0.0.1), with tc netem delay and loss on it.
# Under a fio load with verify=crc32c: the server killed with SIGKILL and
# started again; the link cut (netem loss 100%) and restored. Host I/O never
# fails, the device reports itself degraded while the server is away and
# catches up once it is back, and each case ends with the primary and the
# export holding the same bytes.
# vm-disks: 160M 160M
# vm-timeout: 600
# vm-fio: yes
# vm-host-tools: qemu-nbd tc unshare
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

# Everything runs in a new network namespace: the server, the daemon's
# client, and the netem qdisc on its loopback.
if [ -z "${TANDEM_NBD_NETNS:-}" ]; then
    [ -x /usr/local/bin/unshare ] || {
        echo "FAIL nbd-netns unshare is not in the VM (vm-host-tools)"
        exit 1
    }
    exec /usr/local/bin/unshare --net env TANDEM_NBD_NETNS=1 sh "$0" "$@"
fi
ip link set lo up

PORT=10809
URI="nbd://127.0.0.1:$PORT/sec"
TC=/usr/local/bin/tc

need_tools() {
    for _t in qemu-nbd tc; do
        [ -x "/usr/local/bin/$_t" ] || {
            echo "$_t is not in the VM (vm-host-tools)" >&2
            return 1
        }
    done
    need_bin tandemctl
    command -v fio >/dev/null || { echo "fio is not in the VM" >&2; return 1; }
}

# link DELAY LOSS: netem on the namespace's loopback (each direction, so the
# round trip is twice DELAY).
link() {
    if $TC qdisc show dev lo | grep -q netem; then
        $TC qdisc change dev lo root netem delay "$1" loss "$2"
    else
        $TC qdisc add dev lo root netem delay "$1" loss "$2"
    fi
    echo "link: delay $1 each way, loss $2"
}

# listening: qemu-nbd accepts on PORT (LISTEN in /proc/net/tcp).
listening() {
    grep -qi ":$(printf '%04X' $PORT) 00000000:0000 0A" /proc/net/tcp
}

# serve: qemu-nbd exports /dev/vdb as "sec", uncached (in SERVER), to up to
# 8 clients at once: after a cut link the server still holds the old
# connections (their close was lost with the rest), and with qemu-nbd's
# default of one client it would take no new one until TCP gives the old
# ones up, many minutes later.
serve() {
    /usr/local/bin/qemu-nbd -f raw -x sec -b 127.0.0.1 -p $PORT -t -e 8 --cache=none \
        /dev/vdb >/tmp/qemu-nbd.log 2>&1 &
    SERVER=$!
    _i=0
    until listening; do
        _i=$((_i + 1))
        [ $_i -le 100 ] || { cat /tmp/qemu-nbd.log; echo "qemu-nbd does not listen" >&2; return 1; }
        kill -0 $SERVER 2>/dev/null || { cat /tmp/qemu-nbd.log; echo "qemu-nbd died" >&2; return 1; }
        sleep 0.1
    done
    echo "qemu-nbd $SERVER serves /dev/vdb on 127.0.0.1:$PORT"
}

stop_server() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

# device NAME: the mirrored device over /dev/vda and the export, which hold
# the same bytes when it starts (a blank pair, or the end of the last case).
device() {
    dev=$(tandemctl add "$1" --primary /dev/vda --secondary "$URI" --record "/tmp/$1.rec" \
        --region-size 1MiB --assume-clean)
    echo "device $dev"
    tandemctl status "$1"
}

# load NAME LOOPS: fio with verify in the background (in FIO), over a larger
# span than fio_verify's and LOOPS times, so that it outlasts the fault.
load() {
    fio_verify "$dev" "/tmp/$1.fio" --size=96M --loops="$2" &
    FIO=$!
}

# running NAME: the load is still going (the fault came in the middle of it).
running() {
    kill -0 $FIO 2>/dev/null || {
        cat "/tmp/$1.fio"
        echo "fio ended before the fault was seen: make the load longer" >&2
        return 1
    }
}

# clean_up: what a failed case before this one may have left.
clean_up() {
    for _n in nk nc; do tandemctl del "$_n" >/dev/null 2>&1 || true; done
    pkill -9 qemu-nbd 2>/dev/null || true
    sleep 0.2
}

# settle NAME: the load verified with no error, the secondary caught up, and
# the two sides byte for byte the same.
settle() {
    wait $FIO || { cat "/tmp/$1.fio"; echo "fio failed" >&2; return 1; }
    fio_ok "/tmp/$1.fio"
    tandemctl wait-synced "$1" --timeout 300
    tandemctl status "$1" --json
    [ "$(status_num "$1" degraded)" = false ]
    tandemctl del "$1"
    nothing_left "$1"
    stop_server
    same_bytes /dev/vda /dev/vdb
    echo "primary and export are the same"
}

kill_case() {
    need_tools
    clean_up
    link 5ms 1%
    serve
    device nk
    load nk 3
    sleep 2
    kill -9 "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    echo "killed qemu-nbd $SERVER under the load"
    wait_field nk degraded true 60
    tandemctl status nk
    running nk
    serve
    settle nk
}

cut_case() {
    need_tools
    clean_up
    link 5ms 1%
    serve
    device nc
    load nc 12
    sleep 2
    link 5ms 100%
    # A request waits 30 s for its reply before its connection is given up.
    wait_field nc degraded true 90
    tandemctl status nc
    dirty=$(status_num nc dirty_bytes)
    echo "cut: degraded with $dirty bytes dirty"
    [ "$dirty" -gt 0 ]
    running nc
    link 5ms 1%
    settle nc
}

run_case nbd-server-killed kill_case
run_case nbd-link-cut cut_case
finish
