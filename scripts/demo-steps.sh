#!/bin/sh
# The main job on a built-in default, step by step: a mirrored device over two
# sparse files, writes, status, a daemon kill with writes waiting, recovery,
# resync, and byte-for-byte verification. POSIX sh (runs under busybox in the VM).
set -eu

dir="${TANDEM_DEMO_DIR:-/tmp/tandem-demo}"
size="${TANDEM_DEMO_SIZE:-256M}"
name=demo
say() { printf '\n== %s\n' "$*"; }

rm -rf "$dir"
mkdir -p "$dir"
truncate -s "$size" "$dir/primary.img" "$dir/secondary.img"

say "create a mirrored device over two sparse $size files (both blank: --assume-clean)"
dev=$(tandemctl add "$name" --primary "$dir/primary.img" --secondary "$dir/secondary.img" \
    --record "$dir/demo.rec" --assume-clean)
echo "tandemctl add -> $dev"

say "write 32 MiB of random data with O_DIRECT, and 8 MiB buffered + fsync"
dd if=/dev/urandom of="$dir/pattern" bs=1M count=32 2>/dev/null
dd if="$dir/pattern" of="$dev" bs=1M oflag=direct 2>/dev/null
dd if="$dir/pattern" of="$dev" bs=1M count=8 seek=100 conv=fsync 2>/dev/null
tandemctl status "$name"

say "kill -9 the daemon: /dev/ublkb stays, host I/O waits"
pid=$(tandemctl status "$name" --field pid)
kill -9 "$pid"
sleep 1
tandemctl status "$name"
echo "writing 16 MiB while no daemon runs (this write waits for the recovery)"
dd if="$dir/pattern" of="$dev" bs=1M count=16 seek=200 oflag=direct 2>"$dir/dd.err" &
writer=$!
sleep 1

say "recover: a new daemon reattaches; the record drives the resync"
tandemctl recover "$name"
wait "$writer" || { cat "$dir/dd.err"; echo "demo: FAILED: the waiting write saw an error"; exit 1; }
echo "the waiting write completed without error"
tandemctl status "$name"

say "wait until the secondary has caught up"
tandemctl wait-synced "$name" --timeout 120
tandemctl status "$name"

say "verify"
cmp -n 33554432 "$dir/pattern" "$dev"
echo "data read back through $dev matches what was written"
cmp "$dir/primary.img" "$dir/secondary.img"
echo "primary and secondary are byte-identical"

tandemctl del "$name"
echo "device deleted"
echo
echo "demo: OK"
