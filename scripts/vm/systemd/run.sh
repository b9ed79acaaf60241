# The guest side of the systemd suite (scripts/vm/host/systemd.sh), run by the
# systemd VM's runner as `run.sh BOOT`. Disks: /dev/disk/by-id/virtio-disk0 (vm0's
# primary) and virtio-disk1 (vm0's secondary). Results are PASS/FAIL lines.
set -u
# stderr through a pipe: tandemctl's progress bars (on a terminal) would run
# into the PASS/FAIL lines on the console.
exec 2> >(cat)
failed=0
out=/payload/out
pass() { echo "PASS $1"; }
fail() { printf "\nFAIL %s: %s" "$1" "$2" | head -c 1500; echo; failed=1; }
info() { echo "INFO $*"; }
# check NAME COMMAND...: PASS/FAIL by COMMAND's status, its output in the FAIL line.
check() {
    local name="$1" o; shift
    if o="$("$@" 2>&1)"; then pass "$name"; else fail "$name" "$* -> $(printf '%s' "$o" | tail -n 5 | tr '\n' ' ')"; fi
}
# wait_for SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
    local t="$1" i=0; shift
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -ge $((t * 5)) ] && return 1; sleep 0.2
    done
}
field() { tandemctl status "$1" --field "$2"; }
active() { [ "$(systemctl is-active "tandem@$1.service")" = active ]; }
named() { [ -b "/dev/tandem/$1" ] && [ "$(readlink -f "/dev/tandem/$1")" = "$(field "$1" device)" ]; }
state_is() { [ "$(field "$1" state)" = "$2" ]; }
P0=/dev/disk/by-id/virtio-disk0 S0=/dev/disk/by-id/virtio-disk1
# vm2: a file primary and a loop secondary, attached by reference (missing at boot 2).
D2=/var/lib/tandem-test
S2=/dev/disk/by-loop-ref/vm2-secondary
journal_dump() { journalctl -b --no-pager -o short-monotonic -t "tandem-$1" | tail -n 30; }

install_tandem() {
    if [ -f /payload/tandem.deb ]; then
        dpkg -i /payload/tandem.deb >/dev/null
    else
        cp -a /payload/root/. /
        systemctl daemon-reload
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/tandem.conf
        udevadm control --reload
    fi
}

case "$1" in
1)
    check install install_tandem
    check package-files sh -c 'for f in /usr/bin/tandemctl /usr/bin/tandem-target /usr/lib/systemd/system/tandem@.service /usr/lib/systemd/system/tandem.target /usr/lib/systemd/system-generators/tandem-generator /usr/lib/udev/rules.d/60-tandem.rules /usr/lib/tmpfiles.d/tandem.conf; do [ -e "$f" ] || { echo "missing $f"; exit 1; }; done'
    # A bad config names the file, the key and the value.
    mkdir -p /etc/tandem
    printf 'primary = "%s"\nsecondary = "%s"\nrecord = "/var/lib/tandem/bad.rec"\nregion_size = "3MiB"\n' "$P0" "$S0" > /etc/tandem/bad.toml
    o="$(tandem-target start bad 2>&1)"
    if printf '%s' "$o" | grep -q '/etc/tandem/bad.toml' && printf '%s' "$o" | grep -q 'region_size 3MiB'; then
        pass config-error-named
    else
        fail config-error-named "$o"
    fi
    rm -f /etc/tandem/bad.toml

    t0=$(date +%s%N)
    tandemctl enable vm0 --primary "$P0" --secondary "$S0" --record /var/lib/tandem/vm0.rec --capacity 16MiB --assume-clean --degraded-after 10s
    info "enable-ms: $((($(date +%s%N) - t0) / 1000000)) (until READY)"
    check enable-active active vm0
    check enable-stable-name named vm0
    check enable-config-written grep -q 'pair_name = "vm0"' /etc/tandem/vm0.toml
    check journal-identifier sh -c 'journalctl -b --no-pager -t tandem-vm0 | grep -q "ready as"'
    check notify-status sh -c 'systemctl status tandem@vm0 --no-pager | grep -q "Status: \"live"'
    # A kernel name is warned about, with the by-id link to use.
    o="$(tandemctl enable vmk --primary /dev/vdc --secondary /dev/vdd --record /var/lib/tandem/vmk.rec --no-start 2>&1)"
    if printf '%s' "$o" | grep -q 'kernel name' && printf '%s' "$o" | grep -q 'virtio-disk0'; then
        pass enable-warns-kernel-names
    else
        fail enable-warns-kernel-names "$o"
    fi
    tandemctl disable vmk --no-stop

    # The event stream, followed from here to the crash.
    tandemctl events > /tmp/events.log 2>&1 &

    # SIGHUP no longer stops the device.
    systemctl kill -s HUP tandem@vm0.service
    sleep 1
    check sighup-ignored active vm0

    # kill -9 of the daemon under a host write: systemd restarts it, the
    # device is reattached, the write completes without error.
    dd if=/dev/urandom of=/tmp/pattern bs=1M count=24 status=none
    pid="$(systemctl show -p MainPID --value tandem@vm0.service)"
    ( dd if=/tmp/pattern of=/dev/tandem/vm0 bs=64k oflag=direct conv=fsync status=none; echo $? > /tmp/dd.rc ) &
    ddpid=$!
    sleep 0.5
    kill -9 "$pid"
    wait "$ddpid"
    check kill9-write-completes sh -c '[ "$(cat /tmp/dd.rc)" = 0 ]'
    wait_for 60 active vm0
    check kill9-restarted sh -c "[ \"\$(systemctl show -p NRestarts --value tandem@vm0.service)\" -ge 1 ] && [ \"\$(systemctl show -p MainPID --value tandem@vm0.service)\" != $pid ]"
    check kill9-same-device named vm0
    check kill9-data cmp -n $((24 << 20)) /tmp/pattern /dev/tandem/vm0
    check kill9-synced tandemctl wait-synced vm0 --timeout 120

    # verify finds a mismatch planted on the secondary; --repair fixes it.
    check verify-clean sh -c 'tandemctl verify vm0 > /tmp/v0.json'
    # Seven bytes of the secondary, each plus one: they differ whatever was there.
    dd if="$S0" bs=1 skip=$((5 << 20 | 4100)) count=7 status=none | tr '\000-\377' '\001-\377\000' \
        | dd of="$S0" bs=1 seek=$((5 << 20 | 4100)) conv=notrunc,fsync status=none
    tandemctl verify vm0 > /tmp/v1.json 2>/tmp/v1.err; rc=$?
    cp /tmp/v1.json "$out/verify-found.json"
    if [ $rc -ne 0 ] && grep -q '"mismatched_regions": 1' /tmp/v1.json && grep -q "\"offset\": $((5 << 20 | 4100))" /tmp/v1.json && grep -q '"len": 7' /tmp/v1.json; then
        pass verify-finds-mismatch
    else
        fail verify-finds-mismatch "rc $rc $(cat /tmp/v1.json /tmp/v1.err)"
    fi
    check verify-repair sh -c 'tandemctl verify vm0 --repair > /tmp/v2.json && grep -q "\"repaired_regions\": 1" /tmp/v2.json'
    tandemctl wait-synced vm0 --timeout 60 >/dev/null 2>&1
    check verify-clean-after-repair sh -c 'tandemctl verify vm0 | grep -q "\"mismatched_regions\": 0"'
    check verify-devices-identical cmp "$P0" "$S0"

    # Runtime settings, pause/resume, invalidate.
    check set-rate sh -c 'tandemctl set vm0 --max-copy-rate 64MiB --max-lag 2s && [ "$(tandemctl status vm0 --field max_copy_rate)" = 67108864 ]'
    tandemctl pause vm0
    dd if=/dev/urandom of=/dev/tandem/vm0 bs=1M count=4 seek=40 oflag=direct status=none
    sleep 1
    check pause-holds-copies sh -c '[ "$(tandemctl status vm0 --field mirror_paused)" = true ] && [ "$(tandemctl status vm0 --field dirty_bytes)" -gt 0 ]'
    tandemctl resume vm0
    check resume-catches-up tandemctl wait-synced vm0 --timeout 60
    tandemctl set vm0 --max-copy-rate none >/dev/null
    check invalidate sh -c 'tandemctl invalidate vm0 && [ "$(tandemctl status vm0 --field resync_total_bytes)" -ge $((256 << 20)) ] && tandemctl wait-synced vm0 --timeout 240'

    # The metrics endpoint, scraped (promtool checks it on the host).
    systemctl start tandem-metrics.service
    wait_for 20 curl -sf http://127.0.0.1:9947/metrics
    curl -sf http://127.0.0.1:9947/metrics > "$out/metrics.txt"
    check metrics-scraped grep -q 'tandem_up{device="vm0"} 1' "$out/metrics.txt"

    # Hotplug: an enabled device whose primary (a loop device) appears later.
    mkdir -p "$D2"
    truncate -s 64M "$D2/hot-p.img" "$D2/hot-s.img"
    tandemctl enable vm1 --primary /dev/disk/by-loop-ref/vm1-primary --secondary "$D2/hot-s.img" --record "$D2/vm1.rec" --no-start >/dev/null 2>&1
    systemctl daemon-reload
    sleep 1
    if active vm1; then fail hotplug-not-started "tandem@vm1 runs without its primary"; else pass hotplug-not-started; fi
    losetup --loop-ref vm1-primary -f "$D2/hot-p.img"
    if wait_for 60 named vm1; then pass hotplug-starts; else fail hotplug-starts "$(systemctl status tandem@vm1 --no-pager 2>&1 | tail -n 15)"; fi
    # systemctl stop deletes the device cleanly; disable removes the config.
    dev1="$(field vm1 device)"
    systemctl stop tandem@vm1.service
    udevadm settle
    check stop-deletes-device sh -c "[ ! -e /dev/tandem/vm1 ] && [ ! -e $dev1 ] && [ ! -e /run/tandem/vm1.json ]"
    check stop-clean sh -c 'journalctl -b --no-pager -t tandem-vm1 | grep -q "stopped cleanly"'
    tandemctl disable vm1 --no-stop
    losetup -d "$(losetup -j "$D2/hot-p.img" -O NAME -n)"

    # vm2: its secondary is a loop device by reference, missing at the next boot.
    truncate -s 64M "$D2/vm2-p.img" "$D2/vm2-s.img"
    losetup --loop-ref vm2-secondary -f "$D2/vm2-s.img"
    udevadm settle
    check vm2-enable tandemctl enable vm2 --primary "$D2/vm2-p.img" --secondary "$S2" --record "$D2/vm2.rec" --degraded-after 10s
    dd if=/dev/urandom of=/dev/tandem/vm2 bs=1M count=8 oflag=direct status=none
    # A partition table (one MBR entry: 8 MiB from sector 2048): udev names
    # the partition /dev/tandem/vm2-part1.
    { head -c 446 /dev/zero
      printf '\000\000\000\000\203\000\000\000\000\010\000\000\000\100\000\000'
      head -c 48 /dev/zero
      printf '\125\252'; } | dd of=/dev/tandem/vm2 bs=512 count=1 iflag=fullblock oflag=direct status=none
    blockdev --rereadpt /dev/tandem/vm2
    if wait_for 20 test -b /dev/tandem/vm2-part1; then
        pass udev-partition-name
    else
        fail udev-partition-name "no /dev/tandem/vm2-part1: $(ls -l /dev/tandem/ 2>&1 | tr '\n' ' ')"
    fi
    tandemctl wait-synced vm2 --timeout 60 >/dev/null

    sleep 1
    cp /tmp/events.log "$out/events.log"
    ev_ok=1
    for want in 'vm0 exists live' 'vm0 state live -> down' 'vm0 state .* -> live' 'vm0 mirror-paused' \
        'vm0 mirror-resumed' 'vm0 verify-done .*1 region\(s\) mismatched' 'vm0 state live -> (resyncing|recovering)' \
        'vm1 created' 'vm1 removed' 'vm2 created'; do
        grep -qE " $want" /tmp/events.log || { ev_ok=0; fail events "no line matching '$want' in: $(cat /tmp/events.log)"; break; }
    done
    [ $ev_ok -eq 0 ] || pass events

    # A host crash under writes: the host kills the VM at the marker.
    dd if=/dev/urandom of=/tmp/crash bs=1M count=16 status=none
    dd if=/tmp/crash of=/dev/tandem/vm0 bs=1M seek=64 oflag=direct conv=fsync status=none
    sha256sum /tmp/crash | cut -d' ' -f1 > /var/lib/tandem-test/crash.sha
    sync
    # Below 60 MiB: the acknowledged data at 64..80 MiB stays as written.
    ( while :; do dd if=/dev/urandom of=/dev/tandem/vm0 bs=64k count=16 seek=$((RANDOM % 900)) oflag=direct status=none; done ) &
    sleep 2
    echo SYSTEMD-SUITE-CRASH-NOW
    sleep 120
    fail crash "still running 120 s after the marker"
    ;;
2)
    # Back by itself after the crash, resyncing from its record.
    if wait_for 60 named vm0 && active vm0; then pass reboot-comes-back; else fail reboot-comes-back "$(systemctl status tandem@vm0 --no-pager 2>&1 | tail -n 20)"; fi
    st="$(field vm0 start)"
    check reboot-resyncs-record sh -c "[ '$st' = recovered ] && [ \"\$(tandemctl status vm0 --field resync_total_bytes)\" -lt $((256 << 20)) ]"
    info "reboot-resync-bytes: $(field vm0 resync_total_bytes)"
    check reboot-acknowledged-data sh -c "[ \"\$(dd if=/dev/tandem/vm0 bs=1M skip=64 count=16 status=none | sha256sum | cut -d' ' -f1)\" = \"\$(cat /var/lib/tandem-test/crash.sha)\" ]"
    check reboot-synced tandemctl wait-synced vm0 --timeout 240
    check reboot-identical cmp "$P0" "$S0"
    # vm2 started degraded after its 10 s, without its secondary.
    if wait_for 60 named vm2; then pass degraded-starts; else fail degraded-starts "$(journal_dump vm2)"; fi
    check degraded-state state_is vm2 degraded
    dd if=/dev/urandom of=/dev/tandem/vm2 bs=1M count=4 seek=16 oflag=direct status=none
    check degraded-keeps-writes sh -c '[ "$(tandemctl status vm2 --field dirty_bytes)" -gt 0 ]'
    losetup --loop-ref vm2-secondary -f "$D2/vm2-s.img"
    if tandemctl wait-synced vm2 --timeout 90 >/dev/null 2>&1; then pass degraded-catches-up; else fail degraded-catches-up "$(journal_dump vm2)"; fi
    check degraded-live state_is vm2 live
    check degraded-identical cmp "$D2/vm2-p.img" "$(readlink -f "$S2")"
    # disable: stopped, config gone, not back at the next boot.
    check disable tandemctl disable vm0
    check disable-removed sh -c '[ ! -e /etc/tandem/vm0.toml ] && [ ! -e /dev/tandem/vm0 ]'
    ;;
3)
    sleep 3
    check disabled-stays-down sh -c '[ ! -e /dev/tandem/vm0 ] && ! systemctl is-active -q tandem@vm0.service'
    check enabled-still-starts wait_for 60 active vm2
    ;;
esac
exit $failed
