#!/bin/sh
# One boot of the host-crash suite (scripts/vm/host/crash.sh). Disks: /dev/vda
# primary, /dev/vdb secondary, /dev/vdc record, /dev/vdd log of acknowledged writes.
#   load:   creates the device, writes 4 KiB blocks each made durable (fsync)
#           before its log entry, prints CRASH-NOW and keeps writing until the
#           host kills the VM
#   verify: starts the device again over the same disks and record, checks every
#           logged write is intact, waits for the resync, compares the devices
# vm-standalone: no
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tandem-lib.sh"

ARGS="--primary /dev/vda --secondary /dev/vdb --record /dev/vdc --region-size 64KiB --capacity 8MiB"
BLOCKS=16384

# write_block DEV N SEQ: block N holds "blk N seq SEQ", durable on return.
write_block() {
    printf 'blk %08d seq %08d\n' "$2" "$3" > /tmp/blk
    dd if=/tmp/blk of="$1" bs=4096 seek="$2" count=1 conv=sync,fsync 2>/dev/null
}

# log_ack I N SEQ: entry I of the log, durable on return.
log_ack() {
    printf '%08d %08d\n' "$2" "$3" > /tmp/ack
    dd if=/tmp/ack of=/dev/vdd bs=512 seek="$1" count=1 conv=sync,fsync 2>/dev/null
}

load() {
    # shellcheck disable=SC2086
    dev=$(tandemctl add c1 $ARGS)
    tandemctl wait-synced c1 --timeout 200
    i=0
    seq=1
    while :; do
        n=$(( (seq * 7919) % BLOCKS ))
        write_block "$dev" "$n" "$seq"
        log_ack "$i" "$n" "$seq"
        i=$((i + 1))
        seq=$((seq + 1))
        [ "$i" -eq 200 ] && echo CRASH-NOW
    done
}

verify_case() {
    need_bin tandemctl
    # shellcheck disable=SC2086
    dev=$(tandemctl add c1 $ARGS)
    tandemctl status c1
    resync=$(status_num c1 resync_total_bytes)
    echo "INFO host crash: recovery resyncs $resync bytes; capacity $((8 << 20)) bytes" | tee /tmp/info
    i=0
    checked=0
    while :; do
        entry=$(dd if=/dev/vdd bs=512 skip=$i count=1 2>/dev/null | head -c 17)
        case "$entry" in [0-9]*) ;; *) break ;; esac
        n=${entry%% *}
        want=${entry##* }
        got=$(dd if="$dev" bs=4096 skip=$((10#$n)) count=1 iflag=direct 2>/dev/null | head -c 25)
        gseq=${got##* }
        if [ "${got%% seq*}" != "blk $n" ] || [ "$((10#$gseq))" -lt "$((10#$want))" ]; then
            echo "block $n: acknowledged seq $want, device holds '$got'" >&2
            return 1
        fi
        i=$((i + 1))
        checked=$((checked + 1))
    done
    [ "$checked" -ge 200 ] || { echo "only $checked acknowledged writes logged" >&2; return 1; }
    echo "$checked acknowledged writes intact" | tee -a /tmp/info
    tandemctl wait-synced c1 --timeout 200
    cmp /dev/vda /dev/vdb
    tandemctl del c1
}

case "${1:-}" in
    load) need_bin tandemctl; load ;;
    verify)
        run_case host-crash-recovery verify_case
        cat /tmp/info 2>/dev/null
        finish
        ;;
    *) echo "usage: crash-step.sh load|verify" >&2; exit 2 ;;
esac
