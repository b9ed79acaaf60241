# Helpers for guest scripts (busybox sh inside the test VM). Source it with
#   . "$(dirname "$0")/lib.sh"
# Each case prints exactly one result line, which scripts/vm-test counts:
#   PASS NAME | FAIL NAME: REASON | SKIP NAME: REASON
# End the script with `finish`: it exits 1 when a case failed, else 0.
#
# In the VM: /usr/local/bin has tandem-target and tandemctl (when they were built),
# /usr/sbin has the real mkfs.ext4, e2fsck, mdadm, dmsetup, losetup, blkid (busybox
# provides the rest), /dev/ram0..3 are 256 MiB brd ramdisks, disks given to vm-run
# are /dev/vda, /dev/vdb, ...; /run and /tmp are tmpfs.

# shellcheck shell=sh

TANDEM_PASSED=0
TANDEM_FAILED=0
TANDEM_SKIPPED=0
TANDEM_LOG_DIR=/tmp/cases
mkdir -p "$TANDEM_LOG_DIR"

# pass NAME
pass() {
    echo "PASS $1"
    TANDEM_PASSED=$((TANDEM_PASSED + 1))
}

# fail NAME REASON...
fail() {
    _name="$1"; shift
    echo "FAIL $_name: ${*:-failed}"
    TANDEM_FAILED=$((TANDEM_FAILED + 1))
}

# skip NAME REASON...: a case that cannot run here, said loudly.
skip() {
    _name="$1"; shift
    echo "SKIP $_name: ${*:-skipped}"
    TANDEM_SKIPPED=$((TANDEM_SKIPPED + 1))
}

# run_case NAME CMD [ARGS...]: runs CMD (a command or shell function) in a subshell
# with `set -e`, output to /tmp/cases/NAME.log; PASS when it exits 0, else FAIL with
# its exit status and the last 30 lines of its output. Exit status 77 means SKIP
# (the last output line is the reason). Call it as a plain statement: inside
# `if`, `&&` or `||` the shell ignores `set -e` in the case.
# TANDEM_VERBOSE=1 (e.g. vm-run --append TANDEM_VERBOSE=1) shows every case's output.
run_case() {
    _name="$1"; shift
    _log="$TANDEM_LOG_DIR/$_name.log"
    _t0="$(date +%s)"
    ( set -e; "$@" ) > "$_log" 2>&1
    _rc=$?
    _secs=$(( $(date +%s) - _t0 ))
    if [ "${TANDEM_VERBOSE:-0}" = 1 ] || { [ $_rc -ne 0 ] && [ $_rc -ne 77 ]; }; then
        echo "---- $_name output (last 30 lines) ----"
        tail -n 30 "$_log" | sed 's/^/    /'
        echo "----"
    fi
    case $_rc in
        0) pass "$_name" ;;
        77) skip "$_name" "$(tail -n 1 "$_log")" ;;
        *) fail "$_name" "exit status $_rc after ${_secs}s" ;;
    esac
    return 0
}

# skip_case REASON: inside a case run by run_case, ends it as SKIP with REASON.
skip_case() {
    echo "$*"
    exit 77
}

# need_bin NAME: inside a case, skips it when /usr/local/bin/NAME is not in the VM.
need_bin() {
    [ -x "/usr/local/bin/$1" ] || skip_case "$1 is not in the VM (build it: vm-run --build)"
}

# shared_disk SERIAL: the /dev/vdX whose serial is SERIAL (vm-shared disks).
shared_disk() {
    for _s in /sys/block/vd*/serial; do
        [ "$(cat "$_s" 2>/dev/null)" = "$1" ] && { echo "/dev/$(basename "$(dirname "$_s")")"; return 0; }
    done
    echo "/dev/missing-$1"
}

# wait_for PATH [SECS]: waits until PATH exists (default 10 s); fails otherwise.
wait_for() {
    _i=0
    while [ ! -e "$1" ]; do
        _i=$((_i + 1))
        if [ $_i -gt $(( ${2:-10} * 10 )) ]; then
            echo "timed out waiting for $1" >&2
            return 1
        fi
        sleep 0.1
    done
}

# finish: prints the guest's tally and exits 1 when a case failed.
finish() {
    echo "guest tally: $TANDEM_PASSED pass, $TANDEM_FAILED fail, $TANDEM_SKIPPED skip"
    [ "$TANDEM_FAILED" -eq 0 ] || exit 1
    exit 0
}
