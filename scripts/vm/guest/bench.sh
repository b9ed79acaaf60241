#!/bin/sh
# vm-standalone: no
# The guest side of scripts/bench-vm: fio against tandem and the alternatives, all
# over the same two virtio disks, one device at a time.
#   /dev/vda  primary (every device's data lives here)
#   /dev/vdb  secondary (tandem's mirror target; md's second leg)
#   /dev/vdc  ext4 holding tandem's record file (a new file for every setup)
#   serials shared0-a/-b, shared1-a/-b: only when a tandem-shared or tandem-dual
#             device is run: a second primary and secondary, each attached twice
#             (share-rw, host cache off), two paths with two page caches as two
#             hosts have (the same kind of disk for the single-node baseline)
# Devices: tandem (tandemctl add --assume-clean), passthrough (tandemctl add
# --passthrough), tandem-writeback and passthrough-writeback (the same with
# --cache writeback), tandem-sleep and passthrough-sleep (the same with --poll 0),
# tandem-churn (--capacity 16MiB --max-lag 0: writes keep missing the record),
# tandem-paired and tandem-paired-churn (the same two with the record held by a
# holder on loopback: tandem-target hold, --peer),
# loop (losetup --direct-io=on over vda), md-bitmap (raid1, internal bitmap),
# md-write-behind (raid1, internal bitmap, vdb --write-mostly, --write-behind), disk
# (the bare primary, /dev/vda); over a second pair of disks attached twice (shared,
# below): tandem-shared (single-node tandem by path a), tandem-dual (two nodes
# dual-active, A by path a and B by path b, fio through A while B serves) and
# tandem-dual-both (the same pair, fio through both at once, each node over its
# own half of the range). Rounds interleave: round r runs every device (order
# rotated by r), each device every workload.
#
# Usage: bench.sh ROUNDS RUNTIME RAMP SIZE DEVICES WORKLOADS
#   DEVICES and WORKLOADS are comma-separated names.
# Console protocol (read by scripts/bench-vm):
#   BENCH-SETUP DEVICE ROUND ok DEV | BENCH-SETUP-FAIL DEVICE ROUND: REASON
#   BENCH-JSON-BEGIN ROUND DEVICE WORKLOAD, fio's JSON output, BENCH-JSON-END
#   BENCH-RUN-FAIL ROUND DEVICE WORKLOAD: REASON
#   BENCH-DONE FAILURES
# Exit status 1 when any device could not be set up or any fio run failed.
# shellcheck shell=sh
set -u

rounds="${1:?ROUNDS}" runtime="${2:?RUNTIME}" ramp="${3:?RAMP}" size="${4:?SIZE}"
devices="$(echo "${5:?DEVICES}" | tr ',' ' ')"
workloads="$(echo "${6:?WORKLOADS}" | tr ',' ' ')"

P=/dev/vda S=/dev/vdb R=/dev/vdc
REC_DIR=/mnt/rec
FIO=/usr/local/bin/fio
WRITE_BEHIND=4096
W=/tmp/bench
mkdir -p "$W" "$REC_DIR"
failures=0
DEV="" DEV2=""

note() { echo "bench: $*"; }
# reason FILE: the last lines of FILE on one line.
reason() { tail -n 3 "$1" 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g; s/ $//'; }

# --- checks before anything runs ----------------------------------------------------------
for d in $P $S $R; do
    [ -b "$d" ] || { echo "BENCH-FATAL: $d is missing (bench-vm attaches three virtio disks)"; exit 1; }
done
[ -x "$FIO" ] || { echo "BENCH-FATAL: $FIO is not in the VM"; exit 1; }
"$FIO" --enghelp 2>/dev/null | grep -qw io_uring \
    || { echo "BENCH-FATAL: $FIO has no io_uring engine"; exit 1; }
note "$("$FIO" --version), ioengine io_uring; kernel $(uname -r); $(nproc) cpus"
note "mdadm: $(/usr/sbin/mdadm --version 2>&1 | head -n 1)"
note "disks: vda $(cat /sys/block/vda/size) vdb $(cat /sys/block/vdb/size) vdc $(cat /sys/block/vdc/size) sectors"

# shared_disk SERIAL: the /dev/vdX whose serial is SERIAL, or nothing.
shared_disk() {
    for _s in /sys/block/vd*/serial; do
        [ "$(cat "$_s" 2>/dev/null)" = "$1" ] && { echo "/dev/$(basename "$(dirname "$_s")")"; return 0; }
    done
}
PA=$(shared_disk shared0-a) PB=$(shared_disk shared0-b)
SA=$(shared_disk shared1-a) SB=$(shared_disk shared1-b)
case " $devices " in *" tandem-shared "*|*" tandem-dual"*)
    [ -n "$PA" ] && [ -n "$PB" ] && [ -n "$SA" ] && [ -n "$SB" ] ||
        { echo "BENCH-FATAL: the shared disks are missing (bench-vm attaches them for tandem-shared and tandem-dual)"; exit 1; }
    note "shared disks: primary $PA and $PB, secondary $SA and $SB"
esac

# A run killed earlier (e.g. a timeout) may have left an md superblock.
/usr/sbin/mdadm --zero-superblock $P $S >/dev/null 2>&1
/usr/sbin/mkfs.ext4 -q -F $R >"$W/mkfs.log" 2>&1 \
    || { echo "BENCH-FATAL: mkfs.ext4 $R failed: $(reason "$W/mkfs.log")"; exit 1; }
mount -t ext4 $R "$REC_DIR" \
    || { echo "BENCH-FATAL: cannot mount $R on $REC_DIR"; exit 1; }

# --- devices: setup_X sets DEV (or returns non-zero, with the reason in $W/setup.log);
# --- teardown_X removes it; settle_X runs (untimed) before each workload ---------------

tandem_add() {  # tandem_add NAME EXTRA-ARGS...
    _n="$1"; shift
    rm -f "$REC_DIR/$_n.rec"
    DEV="$(tandemctl add "$_n" --primary $P --secondary $S --record "$REC_DIR/$_n.rec" "$@" \
        2>"$W/setup.log")" || return 1
    [ -b "$DEV" ] || { echo "tandemctl add printed '$DEV', not a block device" >>"$W/setup.log"; return 1; }
    tandemctl status "$_n" >>"$W/setup.log" 2>&1
}
tandem_del() {
    _pid="$(tandemctl status "$1" --field pid 2>/dev/null)"
    if ! tandemctl del "$1" >"$W/teardown.log" 2>&1; then
        cat "$W/teardown.log"
        # Why it did not stop: the daemon's log and where each thread waits.
        tail -n 20 "/run/tandem/$1.log" 2>/dev/null | sed 's/^/bench: daemon log: /'
        for t in /proc/${_pid:-0}/task/*; do
            [ -d "$t" ] || continue
            echo "bench: thread ${t##*/} $(cat "$t/comm" 2>/dev/null) wchan $(cat "$t/wchan" 2>/dev/null)"
            sed 's/^/bench:   /' "$t/stack" 2>/dev/null
        done
        return 1
    fi
    rm -f "$REC_DIR/$1.rec"
}

setup_tandem() { tandem_add bench-tandem --assume-clean; }
# The mirror catches up between workloads (not timed), so that each workload starts
# with a clean device, as the other devices do.
settle_tandem() {
    tandemctl wait-synced bench-tandem --timeout 600 >"$W/settle.log" 2>&1 \
        || { note "tandem wait-synced failed: $(reason "$W/settle.log")"; return 1; }
}
teardown_tandem() {
    tandemctl status bench-tandem 2>&1 | sed 's/^/bench: tandem status: /'
    tandem_del bench-tandem
}

# Two appliances in one VM: the record held by a holder on loopback (node 2),
# every miss waiting for its acknowledgement; and the same with churn.
start_holder() {
    rm -rf "$REC_DIR/held"
    tandem-target hold --listen 127.0.0.1:7789 --dir "$REC_DIR/held" --node-id 2 \
        >"$W/holder.log" 2>&1 &
    HOLDER=$!
    _i=0
    until grep -q 'holds peer records' "$W/holder.log"; do
        _i=$((_i + 1))
        [ $_i -le 100 ] || { cat "$W/holder.log" >>"$W/setup.log"; return 1; }
        sleep 0.1
    done
}
stop_holder() { kill "$HOLDER" 2>/dev/null; wait "$HOLDER" 2>/dev/null; :; }
setup_tandem_paired() {
    start_holder && tandem_add bench-tandem --assume-clean --peer 127.0.0.1:7789 --node-id 1
}
settle_tandem_paired() { settle_tandem; }
teardown_tandem_paired() { teardown_tandem; _rc=$?; stop_holder; return $_rc; }
setup_tandem_paired_churn() {
    start_holder && tandem_add bench-tandem --assume-clean --capacity 16MiB --max-lag 0 \
        --peer 127.0.0.1:7789 --node-id 1
}
settle_tandem_paired_churn() { settle_tandem; }
teardown_tandem_paired_churn() { teardown_tandem_paired; }

# Dual-active (the shared disks): single-node tandem by path a as the
# baseline, then two nodes, each by its own path, each holding the other's
# record (--listen) and asking the other before it serves a region in the
# other's record. tandem-dual runs fio through A while B serves;
# tandem-dual-both through both at once, each over its own half.
setup_tandem_shared() {
    _ap=$P _as=$S P=$PA S=$SA
    tandem_add bench-tandem --assume-clean
    _rc=$? P=$_ap S=$_as
    return $_rc
}
settle_tandem_shared() { settle_tandem; }
teardown_tandem_shared() { teardown_tandem; }
setup_tandem_dual_both() {
    # A new pair each time: no record, and nothing held of the other node.
    rm -rf "$REC_DIR/bench-pa.rec" "$REC_DIR/bench-pb.rec" "$REC_DIR/bench-pa.rec.held" \
        "$REC_DIR/bench-pb.rec.held"
    DEV="$(tandemctl add bench-pa --primary "$PA" --secondary "$SA" --record "$REC_DIR/bench-pa.rec" \
        --assume-clean --pair-name bench --node-id 1 --peer 127.0.0.1:7793 --listen 127.0.0.1:7794 \
        2>"$W/setup.log")" || return 1
    DEV2="$(tandemctl add bench-pb --primary "$PB" --secondary "$SB" --record "$REC_DIR/bench-pb.rec" \
        --assume-clean --pair-name bench --node-id 2 --peer 127.0.0.1:7794 --listen 127.0.0.1:7793 \
        2>>"$W/setup.log")" || { DEV2=""; tandem_del bench-pa; return 1; }
    # Each node's record held by the other and each view of the other's
    # record loaded: until then a node asks before every request.
    _i=0
    until [ "$(tandemctl status bench-pa --field peer.holding 2>/dev/null)" = peer ] &&
        [ "$(tandemctl status bench-pb --field peer.holding 2>/dev/null)" = peer ] &&
        [ "$(tandemctl status bench-pa --field dual.view_loaded 2>/dev/null)" = true ] &&
        [ "$(tandemctl status bench-pb --field dual.view_loaded 2>/dev/null)" = true ]; do
        _i=$((_i + 1))
        if [ $_i -gt 300 ]; then
            echo "the pair did not form in 30 s" >>"$W/setup.log"
            tandemctl status bench-pa >>"$W/setup.log" 2>&1
            tandemctl status bench-pb >>"$W/setup.log" 2>&1
            teardown_tandem_dual_both
            return 1
        fi
        sleep 0.1
    done
    tandemctl status bench-pa >>"$W/setup.log" 2>&1
}
# fio through A only: B serves no I/O.
setup_tandem_dual() { setup_tandem_dual_both && DEV2=""; }
settle_tandem_dual() {
    for _n in bench-pa bench-pb; do
        tandemctl wait-synced $_n --timeout 600 >"$W/settle.log" 2>&1 \
            || { note "$_n wait-synced failed: $(reason "$W/settle.log")"; return 1; }
    done
}
settle_tandem_dual_both() { settle_tandem_dual; }
teardown_tandem_dual_both() {
    _rc=0
    for _n in bench-pa bench-pb; do
        tandemctl status $_n 2>&1 | sed "s/^/bench: $_n status: /"
    done
    tandem_del bench-pb || _rc=1
    tandem_del bench-pa || _rc=1
    DEV2=""
    return $_rc
}
teardown_tandem_dual() { teardown_tandem_dual_both; }

setup_passthrough() { tandem_add bench-pt --passthrough; }
settle_passthrough() { :; }

# A record too small for the working set, copies at once: regions turn clean,
# are evicted and miss again, so writes keep needing record updates.
setup_tandem_churn() { tandem_add bench-tandem --assume-clean --capacity 16MiB --max-lag 0; }
settle_tandem_churn() { settle_tandem; }
teardown_tandem_churn() { teardown_tandem; }
# The same two with queue threads that never spin (--poll 0).
setup_tandem_sleep() { tandem_add bench-tandem --assume-clean --poll 0; }
settle_tandem_sleep() { settle_tandem; }
teardown_tandem_sleep() { teardown_tandem; }
setup_passthrough_sleep() { tandem_add bench-pt --passthrough --poll 0; }
settle_passthrough_sleep() { :; }
teardown_passthrough_sleep() { teardown_passthrough; }
# The same two, with the host page cache in the path (--cache writeback).
setup_tandem_writeback() { tandem_add bench-tandem --assume-clean --cache writeback; }
settle_tandem_writeback() { settle_tandem; }
teardown_tandem_writeback() { teardown_tandem; }
setup_passthrough_writeback() { tandem_add bench-pt --passthrough --cache writeback; }
settle_passthrough_writeback() { :; }
teardown_passthrough_writeback() { teardown_passthrough; }
# After each tandem run (not timed): how far behind the secondary is and how long
# the mirror takes to catch up once the load stops, as BENCH-CATCHUP ROUND DEVICE
# WORKLOAD SECONDS DIRTY-BYTES HOST-BUSY-PERCENT DEFERRING, the last two from a
# status taken halfway through the run.
uptime_cs() { read -r _u _ </proc/uptime; echo "${_u%.*}${_u#*.}"; }
# The snapshot is taken of passthrough too (same daemon), so both pay for it.
# Both also report the CPU time their queue threads spent spinning (--poll)
# during the run, as BENCH-POLL ROUND DEVICE WORKLOAD SECONDS.
daemon_name() {  # daemon_name DEVICE: the tandemctl name, or nothing
    case "$1" in
        tandem-dual*) echo bench-pa ;; tandem*) echo bench-tandem ;; passthrough*) echo bench-pt ;;
    esac
}
# Where the CPU goes: every device reports the guest's busy and total CPU ticks
# over the run, and tandem's devices the ticks of each daemon thread (user +
# system, by thread name), as BENCH-CPU ROUND DEVICE WORKLOAD NAME=TICKS...
# (guest-busy and guest-total for the whole guest).
guest_ticks() {  # "BUSY TOTAL" from /proc/stat (idle and iowait are not busy)
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}
thread_ticks() {  # thread_ticks PID: NAME=TICKS ... on one line, summed by name
    for _t in /proc/"$1"/task/*/stat; do
        # After "PID (NAME) ", utime and stime are the 12th and 13th fields.
        sed -n 's/^[0-9]* (\([^)]*\)) \(.*\)$/\1 \2/p' "$_t" 2>/dev/null
    done | awk '{ t[$1] += $13 + $14 } END { for (n in t) printf "%s=%d ", n, t[n]; print "" }'
}
cpu_before() {  # cpu_before DEVICE
    set -- $(guest_ticks)
    _busy0=$1 _total0=$2 _pid="" _threads0=""
    _dn="$(daemon_name "$DEVNAME")"
    [ -n "$_dn" ] || return 0
    _pid="$(tandemctl status "$_dn" --field pid 2>/dev/null)"
    [ -n "$_pid" ] && _threads0="$(thread_ticks "$_pid")"
}
cpu_after() {  # cpu_after ROUND DEVICE WORKLOAD
    set -- "$@" $(guest_ticks)
    _line="BENCH-CPU $1 $2 $3 guest-busy=$(( $4 - _busy0 )) guest-total=$(( $5 - _total0 ))"
    if [ -n "$_pid" ]; then
        # Each thread name's ticks now, less its ticks before the run.
        _line="$_line $(echo "$_threads0 / $(thread_ticks "$_pid")" | awk '{
            after = 0
            for (i = 1; i <= NF; i++) {
                if ($i == "/") { after = 1; continue }
                split($i, kv, "=")
                if (after) printf "%s=%d ", kv[1], kv[2] - t0[kv[1]]; else t0[kv[1]] = kv[2]
            }
        }')"
    fi
    echo "$_line"
}
before_run() {  # before_run DEVICE: a status snapshot halfway through the run
    DEVNAME="$1"
    cpu_before
    _n="$(daemon_name "$1")"
    [ -n "$_n" ] || return 0
    _poll0="$(tandemctl status "$_n" --field poll_seconds 2>/dev/null)"
    rm -f "$W/mid.txt"
    # Two fields of one snapshot, a line each.
    ( sleep $(( (ramp + runtime + 1) / 2 ))
      tandemctl status "$_n" --field host_busy --field mirror_deferring >"$W/mid.txt" 2>/dev/null ) &
    MID_PID=$!
}
after_run() {  # after_run ROUND DEVICE WORKLOAD
    cpu_after "$1" "$2" "$3"
    _n="$(daemon_name "$2")"
    [ -n "$_n" ] || return 0
    _t0="$(uptime_cs)"
    _poll1="" _dirty=""
    tandemctl status "$_n" --field poll_seconds --field dirty_bytes >"$W/after.txt" 2>/dev/null
    { read -r _poll1; read -r _dirty; } <"$W/after.txt"
    echo "BENCH-POLL $1 $2 $3 $(awk -v a="${_poll0:-0}" -v b="${_poll1:-0}" 'BEGIN { printf "%.3f", b - a }')"
    case "$2" in passthrough*) wait "$MID_PID" 2>/dev/null; return 0 ;; esac
    "settle_$(echo "$2" | tr '-' '_')" || return 1
    _t1="$(uptime_cs)"
    wait "$MID_PID" 2>/dev/null
    _busy="" _defer=""
    [ -f "$W/mid.txt" ] && { read -r _busy; read -r _defer; } <"$W/mid.txt"
    _busy="$(awk -v b="${_busy:-0}" 'BEGIN { printf "%.0f", b * 100 }')"
    echo "BENCH-CATCHUP $1 $2 $3 $(( (_t1 - _t0) / 100 )).$(printf %02d $(( (_t1 - _t0) % 100 ))) ${_dirty:-0} ${_busy} ${_defer:-unknown}"
}
teardown_passthrough() { tandem_del bench-pt; }

setup_loop() {
    DEV="$(/sbin/losetup --direct-io=on --show -f $P 2>"$W/setup.log")" || return 1
    _dio="$(cat "/sys/block/${DEV#/dev/}/loop/dio" 2>/dev/null)"
    if [ "$_dio" != 1 ]; then
        echo "direct I/O is off on $DEV (sys/block/.../loop/dio: '$_dio')" >>"$W/setup.log"
        /sbin/losetup -d "$DEV"
        return 1
    fi
}
settle_loop() { :; }
teardown_loop() { /sbin/losetup -d "$DEV"; }

# The bare primary disk: what every device here is built on.
setup_disk() { DEV=$P; }
settle_disk() { :; }
teardown_disk() { :; }

md_create() {  # md_create MDADM-ARGS...
    /usr/sbin/mdadm --create /dev/md0 --run --assume-clean --level=1 --raid-devices=2 \
        --metadata=1.2 --bitmap=internal "$@" </dev/null >"$W/setup.log" 2>&1 || return 1
    _i=0
    while [ ! -b /dev/md0 ] && [ $_i -lt 50 ]; do sleep 0.1; _i=$((_i + 1)); done
    [ -b /dev/md0 ] || { echo "/dev/md0 did not appear" >>"$W/setup.log"; return 1; }
    if grep -q resync /proc/mdstat; then
        echo "md0 is resyncing despite --assume-clean" >>"$W/setup.log"
        return 1
    fi
    DEV=/dev/md0
    note "md0: $(grep -A 2 '^md0' /proc/mdstat | tr -s ' \n' '  ')"
    note "md0 bitmap: chunk $(cat /sys/block/md0/md/bitmap/chunksize 2>/dev/null) bytes, backlog $(cat /sys/block/md0/md/bitmap/backlog 2>/dev/null)"
}
md_stop() {
    /usr/sbin/mdadm --stop /dev/md0 >"$W/teardown.log" 2>&1 || { cat "$W/teardown.log"; return 1; }
    /usr/sbin/mdadm --zero-superblock $P $S >>"$W/teardown.log" 2>&1 || { cat "$W/teardown.log"; return 1; }
}
setup_md_bitmap() { md_create $P $S; }
settle_md_bitmap() { :; }
teardown_md_bitmap() { md_stop; }

setup_md_write_behind() {
    md_create --write-behind=$WRITE_BEHIND $P --write-mostly $S || return 1
    if ! grep -q 'vdb\[[0-9]*\](W)' /proc/mdstat; then
        echo "vdb is not write-mostly in /proc/mdstat: $(grep '^md0' /proc/mdstat)" >>"$W/setup.log"
        md_stop
        return 1
    fi
}
settle_md_write_behind() { :; }
teardown_md_write_behind() { md_stop; }

# --- workloads ----------------------------------------------------------------------------
fio_args() {  # fio_args WORKLOAD: the workload's fio options
    case "$1" in
        randwrite-4k-qd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
        randwrite-4k-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        seqwrite-128k) echo "--rw=write --bs=128k --iodepth=32" ;;
        randread-4k-qd32) echo "--rw=randread --bs=4k --iodepth=32" ;;
        randrw-70-30-4k) echo "--rw=randrw --rwmixread=70 --bs=4k --iodepth=32" ;;
        *) return 1 ;;
    esac
}

run_fio() {  # run_fio ROUND DEVICE WORKLOAD
    _args="$(fio_args "$3")" || { echo "BENCH-RUN-FAIL $1 $2 $3: unknown workload"; return 1; }
    rm -f "$W/fio.json"
    # One job over the range; with a second device (tandem-dual-both), a job
    # per device, each over its own half, reported as one group.
    if [ -n "$DEV2" ]; then
        _half="$(( ${size%M} / 2 ))M"
        _jobs="--name=$3-a --filename=$DEV --offset=0 --size=$_half"
        _jobs="$_jobs --name=$3-b --filename=$DEV2 --offset=$_half --size=$_half"
    else
        _jobs="--name=$3 --filename=$DEV --offset=0 --size=$size"
    fi
    # shellcheck disable=SC2086
    "$FIO" --ioengine=io_uring --direct=1 $_args \
        --time_based --runtime="$runtime" --ramp_time="$ramp" \
        --norandommap --randrepeat=0 --numjobs=1 --group_reporting \
        --percentile_list=50:99:99.9 --output-format=json --output="$W/fio.json" \
        $_jobs >"$W/fio.err" 2>&1
    _rc=$?
    if [ $_rc -ne 0 ] || [ ! -s "$W/fio.json" ]; then
        echo "BENCH-RUN-FAIL $1 $2 $3: fio exit status $_rc: $(reason "$W/fio.err")"
        return 1
    fi
    echo "BENCH-JSON-BEGIN $1 $2 $3"
    cat "$W/fio.json"
    echo "BENCH-JSON-END"
}

# --- the rounds ---------------------------------------------------------------------------
ndev=$(echo "$devices" | wc -w)
r=1
while [ $r -le "$rounds" ]; do
    # Rotate the device order by the round number.
    order="" i=0
    while [ $i -lt "$ndev" ]; do
        k=$(( (i + r - 1) % ndev + 1 ))
        order="$order $(echo "$devices" | cut -d' ' -f$k)"
        i=$((i + 1))
    done
    note "round $r of $rounds:$order"
    for d in $order; do
        fn="$(echo "$d" | tr '-' '_')"
        DEV=""
        if ! "setup_$fn"; then
            echo "BENCH-SETUP-FAIL $d $r: $(reason "$W/setup.log")"
            failures=$((failures + 1))
            continue
        fi
        echo "BENCH-SETUP $d $r ok $DEV"
        for wl in $workloads; do
            if ! "settle_$fn"; then
                echo "BENCH-RUN-FAIL $r $d $wl: could not settle the device before the run"
                failures=$((failures + 1))
                continue
            fi
            # QEMU's default cache mode keeps guest writes in the host's page cache,
            # and a guest flush makes QEMU fdatasync the image: start every run with
            # nothing dirty, or the first device that flushes (md's bitmap writes)
            # pays for what the devices before it wrote.
            if ! sync $P $S $R $PA $SA; then
                echo "BENCH-RUN-FAIL $r $d $wl: sync $P $S $R $PA $SA failed"
                failures=$((failures + 1))
                continue
            fi
            before_run "$d"
            run_fio "$r" "$d" "$wl" || failures=$((failures + 1))
            after_run "$r" "$d" "$wl" || failures=$((failures + 1))
        done
        if ! "teardown_$fn"; then
            echo "BENCH-SETUP-FAIL $d $r: teardown failed; stopping (the disks are in an unknown state)"
            failures=$((failures + 1))
            echo "BENCH-DONE $failures"
            exit 1
        fi
    done
    r=$((r + 1))
done

umount "$REC_DIR"
echo "BENCH-DONE $failures"
[ "$failures" -eq 0 ]
