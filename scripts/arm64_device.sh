#!/usr/bin/env bash
# An arm64 test device on an x86-64 Linux host: a minimal Debian bookworm arm64 root filesystem
# (python3.11 and what it needs, plus the aarch64 wheels of ai-edge-litert, litert-lm-api and numpy)
# whose commands run under qemu-user (qemu-aarch64-static through binfmt_misc) in a chroot.
# tests/adb_loopback.py exposes it as an adb device (LoopbackAdbDevice(sysroot=ROOT,
# shell_argv=[this script, "exec"])): `adb shell uname -m` says aarch64.
#
#   scripts/arm64_device.sh build        build the root (or reuse the cached one); prints its path
#                                        and the build time
#   scripts/arm64_device.sh exec CMD     run CMD with /bin/sh inside the root (cwd /data/local/tmp)
#   scripts/arm64_device.sh root         print the root's path (exit 1 when not built)
#   scripts/arm64_device.sh serve [PORT] the root as an adb device on 127.0.0.1:PORT until Ctrl-C
#                                        (then: adb connect 127.0.0.1:PORT; adb shell uname -m)
#
# Needs root (chroot, mounts, binfmt_misc). Everything comes from the package registries: Debian's
# (arm64 .debs by `apt-get download`-style download-only installs with a private apt state, never
# touching the host's dpkg; qemu-user-static installed on the host when missing) and PyPI (host pip,
# --platform manylinux_2_27_aarch64 --only-binary :all: --target).
#
# The cache ($EDGE_SDK_ARM64_CACHE, default REPO/.cache/arm64) holds root/ and a stamp; a root is
# reused while the stamp (package list, wheel pins, this script's hash) matches, rebuilt from
# scratch otherwise. Concurrent builds are serialised with flock.
#
# Two traps of bookworm's qemu 7.2, both handled in `exec`:
#  - it passes the host's x86 /proc/cpuinfo through, and LiteRT (cpuinfo) segfaults on it: a
#    /proc/cpuinfo written at build time from the emulated CPU's own HWCAPs is bind-mounted over it;
#  - with the default `-cpu max` (SME exposed) XNNPACK computes garbage: QEMU_CPU defaults to
#    `max,sme=off` ($EDGE_SDK_ARM64_CPU to change it, e.g. neoverse-n1).
# /sys is bind-mounted too: without it cpuinfo cannot count CPUs and the XNNPACK delegate is silently
# not applied (every op then runs on builtin kernels).
set -euo pipefail
# chroot, mount and friends live in /usr/sbin, which a minimal PATH (CI runs the tests under
# `env -i PATH=/usr/local/bin:/usr/bin:/bin`) leaves out
export PATH="$PATH:/usr/sbin:/sbin"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/arm64_device.sh"
CACHE=${EDGE_SDK_ARM64_CACHE:-$REPO/.cache/arm64}
CPU=${EDGE_SDK_ARM64_CPU:-max,sme=off}
SUITE=bookworm
PACKAGES=(python3.11 python3-minimal dash coreutils libstdc++6)
WHEELS=(ai-edge-litert==2.3.0 litert-lm-api==0.18.1 numpy==2.4.6)
ROOT="$CACHE/root"

die() { echo "arm64_device: $*" >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (chroot, mounts, binfmt_misc)"; }

stamp() {
    { echo "$SUITE ${PACKAGES[*]} ${WHEELS[*]}"; sha256sum "$SELF" | cut -d' ' -f1; } | sha256sum | cut -c1-16
}

ensure_qemu() {
    if [ ! -x /usr/bin/qemu-aarch64-static ]; then
        echo "arm64_device: installing qemu-user-static (Debian)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-user-static >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                 --no-install-recommends qemu-user-static >&2; } \
            || die "could not install qemu-user-static (apt-get install qemu-user-static)"
    fi
}

ensure_binfmt() {
    local bm=/proc/sys/fs/binfmt_misc
    [ -e "$bm/register" ] || mount -t binfmt_misc binfmt_misc "$bm" 2>/dev/null \
        || die "cannot mount binfmt_misc on $bm"
    if [ ! -e "$bm/qemu-aarch64" ]; then
        local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -r "$conf" ] || die "$conf missing (apt-get install qemu-user-static)"
        cat "$conf" > "$bm/register" 2>/dev/null || [ -e "$bm/qemu-aarch64" ] \
            || die "could not register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^enabled' "$bm/qemu-aarch64" || die "binfmt_misc entry qemu-aarch64 is disabled"
    # F (fix binary): the kernel opened the interpreter at registration, so it works inside a chroot
    grep -q '^flags:.*F' "$bm/qemu-aarch64" || die "binfmt_misc entry qemu-aarch64 lacks the F flag: \
the interpreter cannot be found inside the chroot (echo -1 > $bm/qemu-aarch64, then run this again)"
}

pip_cmd() {
    if [ -n "${EDGE_SDK_PIP:-}" ]; then echo "$EDGE_SDK_PIP"
    elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python -m pip"
    else echo "python3 -m pip"; fi
}

# run CMD inside R (a root being built or the cached one), in a private mount namespace
in_root() {
    local r=$1 cmd=$2
    unshare -m sh -c '
        r=$1 cpuinfo=$2 cpu=$3 cmd=$4
        mount -t proc proc "$r/proc"
        [ -f "$cpuinfo" ] && mount --bind "$cpuinfo" "$r/proc/cpuinfo"
        mount --rbind /dev "$r/dev"
        mount --rbind /sys "$r/sys"
        exec chroot "$r" /usr/bin/env -i -C /data/local/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
            HOME=/data/local/tmp TMPDIR=/data/local/tmp LANG=C.UTF-8 QEMU_CPU="$cpu" /bin/sh -c "$cmd"
    ' sh "$r" "$r/etc/edge_sdk_cpuinfo.$(echo "$CPU" | tr -c 'A-Za-z0-9\n' _)" "$CPU" "$cmd"
}

write_cpuinfo() {  # /proc/cpuinfo for the emulated CPU: its HWCAPs (from its auxv), one entry per host CPU
    local r=$1 n
    n=$(nproc --all)
    in_root "$r" "python3 - $n" > "$r/etc/edge_sdk_cpuinfo.$(echo "$CPU" | tr -c 'A-Za-z0-9\n' _)" <<'EOF'
import struct, sys
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 "
          "smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16").split()
raw = open("/proc/self/auxv", "rb").read()
aux = dict(struct.iter_unpack("<QQ", raw[:len(raw) // 16 * 16]))
feats = [n for i, n in enumerate(HWCAP) if aux.get(16, 0) >> i & 1]
feats += [n for i, n in enumerate(HWCAP2) if aux.get(26, 0) >> i & 1]
for i in range(int(sys.argv[1])):   # Neoverse-N1 identification; ISA features are the emulated CPU's
    print(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(feats)}\nCPU implementer\t: 0x41\n"
          f"CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n")
EOF
}

build() {
    need_root
    ensure_qemu
    ensure_binfmt
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    local want t0 new apt
    want=$(stamp)
    if [ -x "$ROOT/usr/bin/python3.11" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$want" ]; then
        [ -f "$ROOT/etc/edge_sdk_cpuinfo.$(echo "$CPU" | tr -c 'A-Za-z0-9\n' _)" ] || write_cpuinfo "$ROOT"
        echo "arm64_device: reusing $ROOT (stamp $want; built in $(cat "$CACHE/build_seconds" 2>/dev/null || echo '?') s)" >&2
        echo "$ROOT"
        return
    fi
    t0=$(date +%s.%N)
    new="$CACHE/root.new"
    apt="$CACHE/apt"
    rm -rf "$new" "$apt" "$ROOT" "$CACHE/packages.txt.new"
    mkdir -p "$new" "$apt/lists/partial" "$apt/cache/archives/partial"
    : > "$apt/status"
    # the host's own Debian sources, with arm64 lists in a private state (the host's dpkg is untouched)
    local -a o=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$apt/lists"
                -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1)
    echo "arm64_device: arm64 package lists ($SUITE)" >&2
    apt-get "${o[@]}" -q update >"$CACHE/apt.log" 2>&1 || { cat "$CACHE/apt.log" >&2; die "apt-get update (arm64) failed"; }
    echo "arm64_device: downloading ${PACKAGES[*]} and their dependencies (arm64)" >&2
    apt-get "${o[@]}" -y -q --download-only --no-install-recommends install "${PACKAGES[@]}" >>"$CACHE/apt.log" 2>&1 \
        || { tail -20 "$CACHE/apt.log" >&2; die "downloading the arm64 packages failed"; }
    local deb
    for deb in "$apt"/cache/archives/*.deb; do
        dpkg-deb -x "$deb" "$new"
        dpkg-deb -f "$deb" Package Version Architecture | paste -sd' ' >> "$CACHE/packages.txt.new"
    done
    ln -sfn dash "$new/bin/sh"
    mkdir -p "$new/proc" "$new/dev" "$new/sys" "$new/tmp" "$new/data/local/tmp"
    chmod 1777 "$new/tmp"
    echo "arm64_device: aarch64 wheels ${WHEELS[*]}" >&2
    $(pip_cmd) install -q --no-cache-dir --disable-pip-version-check --no-warn-script-location \
        --target "$new/usr/local/lib/python3.11/dist-packages" --platform manylinux_2_27_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 --only-binary :all: "${WHEELS[@]}" \
        >>"$CACHE/pip.log" 2>&1 || { tail -20 "$CACHE/pip.log" >&2; die "pip (aarch64 wheels) failed"; }
    write_cpuinfo "$new"
    in_root "$new" 'test "$(uname -m)" = aarch64 && python3 -c "import numpy, ai_edge_litert.interpreter, litert_lm"' \
        || die "the new root does not run (uname -m / python3 imports failed)"
    rm -rf "$apt"
    mv "$CACHE/packages.txt.new" "$CACHE/packages.txt"
    mv "$new" "$ROOT"
    echo "$want" > "$CACHE/stamp"
    python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),1))" "$t0" > "$CACHE/build_seconds"
    echo "arm64_device: built $ROOT ($(du -sm "$ROOT" | cut -f1) MB, $(wc -l < "$CACHE/packages.txt") .debs) in $(cat "$CACHE/build_seconds") s" >&2
    echo "$ROOT"
}

case "${1:-}" in
    build) build ;;
    root) [ -x "$ROOT/usr/bin/python3.11" ] && echo "$ROOT" || exit 1 ;;
    exec)
        shift
        need_root
        [ -x "$ROOT/usr/bin/python3.11" ] || die "no arm64 root at $ROOT: run scripts/arm64_device.sh build"
        ensure_binfmt
        in_root "$ROOT" "${1:-exec sh}" ;;
    serve)
        r=$("$SELF" build)
        py=python3; [ -x "$REPO/.venv/bin/python" ] && py="$REPO/.venv/bin/python"
        exec "$py" "$REPO/tests/adb_loopback.py" --sysroot "$r" --shell "$SELF exec" --port "${2:-5555}" ;;
    *) sed -n '2,14p' "$SELF" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
