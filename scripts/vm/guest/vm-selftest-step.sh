#!/bin/sh
# One boot of the vm-selftest host suite (scripts/vm/host/vm-selftest.sh).
#   write:  writes 1 MiB of random data to /dev/vda at 1 MiB and its md5 at 0, both
#           flushed, prints SELFTEST-FLUSHED, then keeps writing elsewhere until
#           the host kills the VM
#   verify: checks that the flushed data survived the kill
# vm-standalone: no
. "$(dirname "$0")/lib.sh"

write_case() {
    dd if=/dev/urandom of=/tmp/pattern bs=64k count=16 2>/dev/null
    md5sum < /tmp/pattern | cut -c1-32 > /tmp/sum
    dd if=/tmp/pattern of=/dev/vda bs=64k seek=16 conv=fsync 2>/dev/null
    dd if=/tmp/sum of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null
}

verify_case() {
    want="$(dd if=/dev/vda bs=32 count=1 2>/dev/null)"
    got="$(dd if=/dev/vda bs=64k skip=16 count=16 2>/dev/null | md5sum | cut -c1-32)"
    echo "md5 recorded: $want, md5 of the data: $got"
    [ "$want" = "$got" ]
}

case "${1:-}" in
    write)
        run_case vm-selftest-write write_case
        [ "$TANDEM_FAILED" -eq 0 ] || finish
        echo SELFTEST-FLUSHED
        # Unflushed writes elsewhere until the host kills the VM.
        while :; do
            dd if=/dev/urandom of=/dev/vda bs=64k seek=64 count=16 2>/dev/null
        done
        ;;
    verify)
        run_case vm-selftest-after-kill verify_case
        finish
        ;;
    *) echo "usage: vm-selftest-step.sh write|verify" >&2; exit 2 ;;
esac
