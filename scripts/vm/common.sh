# Shared helpers for the host-side VM scripts (sourced, not run).
# Sets REPO (the workspace root, from this file's location) and VM_CACHE.

# shellcheck shell=bash disable=SC2034  # variables for the scripts that source this

VM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$VM_DIR/../.." && pwd)"
VM_CACHE="${TANDEM_VM_CACHE:-$REPO/.cache/vm}"

vm_prog="$(basename "$0")"

log() { printf '%s: %s\n' "$vm_prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$vm_prog" "$*" >&2; exit 1; }

# Run as root, or through sudo when that is there.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root to run: $* (no sudo found)"
    fi
}

# ensure_apt_packages PKG...: installs the Debian packages that are not installed yet.
# Runs `apt-get update` once before installing (a fresh machine has stale or no lists).
ensure_apt_packages() {
    local missing=() p st
    for p in "$@"; do
        st="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$st" = installed ] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    log "installing with apt-get: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
}

# Packages every VM run needs on the host.
VM_HOST_PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils gzip binutils
    e2fsprogs mdadm dmsetup util-linux debian-archive-keyring)

# The kernel cache written by fetch-kernel.
KERNEL_DIR="$VM_CACHE/kernel"

# Where static test binaries are looked for (and built by build_static_bins).
RUST_TARGET=x86_64-unknown-linux-gnu
BIN_DIR="${TANDEM_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/$RUST_TARGET/release}"
TANDEM_BINS=(tandem-target tandemctl link-proxy)

# build_static_bins: builds tandem-target and tandemctl statically linked for the VM,
# and the tests' link-proxy (the link between two nodes, cut or slowed by a test).
# The explicit --target keeps build scripts dynamic, so bindgen (libublk) can load
# libclang.
build_static_bins() {
    command -v cargo >/dev/null || die "cargo not found: cannot build the test binaries"
    if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* \
        >/dev/null 2>&1; then
        ensure_apt_packages libclang1-14
    fi
    log "building static tandem-target and tandemctl (cargo build --release --target $RUST_TARGET)"
    (cd "$REPO" && export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" &&
        cargo build --release --target "$RUST_TARGET" -p tandem -p tandemctl &&
        cargo build --release --target "$RUST_TARGET" -p tandem-tests --bin link-proxy) \
        || die "cargo build of the static test binaries failed"
}

# build_unit_tests: builds the tandem library's unit tests statically for the VM and
# prints the test binary's path (last line), for the cases only a real kernel can
# run (loop devices, O_DIRECT through bounce buffers on a block device).
build_unit_tests() {
    command -v cargo >/dev/null || die "cargo not found: cannot build the unit tests"
    local out
    out="$(cd "$REPO" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        cargo test --release --target "$RUST_TARGET" -p tandem --lib --no-run \
        --message-format=json-render-diagnostics)" \
        || die "cargo build of the unit tests failed"
    printf '%s\n' "$out" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
' | tail -n 1
}
