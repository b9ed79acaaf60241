# Helpers for the tandem cases (sourced after lib.sh by guest scripts).
# vm-standalone: no
# shellcheck shell=sh

# status_num NAME FIELD: one field of the device's status (tandemctl reads
# its own JSON; nothing here parses it).
status_num() {
    tandemctl status "$1" --field "$2"
}

# daemon_pid NAME
daemon_pid() {
    status_num "$1" pid
}

# make_pattern FILE MIB: random data to write and later compare.
make_pattern() {
    dd if=/dev/urandom of="$1" bs=1M count="$2" 2>/dev/null
}

# write_patterns DEV PATTERN: O_DIRECT writes of the pattern at 0 and 40 MiB,
# buffered writes + fsync at 80 MiB.
write_patterns() {
    dd if="$2" of="$1" bs=1M oflag=direct 2>/dev/null
    dd if="$2" of="$1" bs=64k seek=640 oflag=direct 2>/dev/null
    dd if="$2" of="$1" bs=1M seek=80 conv=fsync 2>/dev/null
}

# verify_patterns DEV PATTERN: reads them back through DEV.
verify_patterns() {
    _n=$(wc -c < "$2")
    dd if="$1" bs=1M count=$((_n >> 20)) iflag=direct 2>/dev/null | cmp - "$2"
    dd if="$1" bs=64k skip=640 count=$((_n >> 16)) 2>/dev/null | cmp - "$2"
    dd if="$1" bs=1M skip=80 count=$((_n >> 20)) 2>/dev/null | cmp - "$2"
}

# nothing_left NAME: no state file, socket or ublk block device remains.
nothing_left() {
    if [ -e "/run/tandem/$1.json" ] || [ -e "/run/tandem/$1.sock" ]; then
        echo "state of $1 left behind in /run/tandem" >&2
        return 1
    fi
    if ls /dev/ublkb* >/dev/null 2>&1; then
        echo "ublk block device left behind: $(ls /dev/ublkb*)" >&2
        return 1
    fi
}

# expect_refusal NEEDLE CMD...: CMD must fail and its stderr must contain NEEDLE.
expect_refusal() {
    _needle="$1"; shift
    if "$@" 2>/tmp/refusal.err; then
        echo "accepted, but should have been refused: $*" >&2
        return 1
    fi
    cat /tmp/refusal.err
    grep -q -- "$_needle" /tmp/refusal.err || {
        echo "message does not mention '$_needle'" >&2
        return 1
    }
}

# fio_verify DEV OUT [FIO ARGS...]: a QD16 4k random-write load over 32 MiB with
# verify=crc32c (every block read back and checked at the end).
fio_verify() {
    _d="$1" _o="$2"; shift 2
    fio --name=verify --filename="$_d" --ioengine=io_uring --direct=1 --rw=randwrite \
        --bs=4k --iodepth=16 --size=32M --verify=crc32c --verify_fatal=1 \
        --output="$_o" "$@"
}

# fio_ok OUT: fio's output reports no error and a verify that ran.
fio_ok() {
    if grep -q 'err= *[1-9]' "$1"; then cat "$1"; echo "fio reported an error" >&2; return 1; fi
    grep -q 'verify' "$1" || { cat "$1"; echo "fio did not verify" >&2; return 1; }
}

# start_holder_with LOG ARGS...: node B's record holder (tandem-target hold ARGS) in
# the background, its output in LOG; returns once it listens, with its pid in HOLDER.
start_holder_with() {
    _log="$1"; shift
    : > "$_log"
    tandem-target hold "$@" >>"$_log" 2>&1 &
    HOLDER=$!
    _i=0
    until grep -q 'holds peer records' "$_log"; do
        _i=$((_i + 1))
        [ $_i -le 100 ] || { cat "$_log"; echo "the holder did not start" >&2; return 1; }
        sleep 0.1
    done
}

# wait_field NAME FIELD VALUE SECS: waits until the status field says VALUE.
wait_field() {
    _i=0
    while [ "$(tandemctl status "$1" --field "$2")" != "$3" ]; do
        _i=$((_i + 1))
        [ $_i -le $(($4 * 10)) ] || {
            tandemctl status "$1"
            echo "$2 of $1 is $(tandemctl status "$1" --field "$2"), not $3" >&2
            return 1
        }
        sleep 0.1
    done
}

# same_bytes A B: two paths hold the same bytes (page caches dropped first:
# each path has its own).
same_bytes() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    cmp "$1" "$2"
}
