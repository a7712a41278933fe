#!/usr/bin/env bash
# Runs a command inside a Linux 6.12 guest (Debian's kernel, trixie userspace) and returns its
# output and exit status. This is what `just vm` calls; other scripts may call it directly.
#
# Usage: vm/run.sh CMD...         one argument: a bash command line (pipes, redirections, ...);
#                                 several: an argv, quoted exactly as given
#        vm/run.sh --shell        interactive bash on the serial console (exit to power off)
#
# In the guest the command runs as root under bash, in the current directory (when it is inside
# a shared directory; the checkout root otherwise), with the checkout shared at the same absolute
# path. Its stdout and stderr both arrive on this process's stdout. Loaded beforehand: videodev,
# mc, videobuf2-*, v4l2-mem2mem (built out of tree), cuse (+ $VM_MODPROBE, $VM_MODULES).
#
# Exit status: the command's; 124 when VM_TIMEOUT expired (the guest is killed); 125 when the
# guest kernel logged an oops/BUG/WARN/lockdep/hung-task/soft-lockup report or tainted itself
# with one, or died without reporting a status (a non-zero status of the command wins).
#
# Environment:
#   VM_TIMEOUT=1200      hard limit in seconds for the whole run, boot included
#   VM_MODPROBE="a b"    more modules to modprobe by name before the command (e.g. "visl vicodec")
#   VM_MODULES="x.ko"    module files (guest paths) to insmod after modprobing their dependencies
#   VM_SHARES="/p /q"    more host directories to share at the same path (read-write);
#                        $CARGO_TARGET_DIR is shared automatically when it is outside the checkout
#   VM_ENV="A B"         names of host environment variables to pass to the command
#                        (RUST_BACKTRACE, RUST_LOG, CARGO_TARGET_DIR always are, when set)
#   VM_ACCEL=kvm|tcg     skip the accelerator probe; VM_MEM=2G VM_SMP=2
#   VM_APPEND="..."      extra kernel command line; VM_HUNG_TASK_SECS=30
#   VM_KLOG_IGNORE=RE    kernel log lines matching this ERE are not counted as problems
#   VM_KEEP=1            keep the run directory (console log, dmesg) under .cache/vm/runs
#   VM_QUIET=1           no summary line on stderr; VM_SUMMARY=FILE writes it (key=value) there
set -euo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"

interactive=0
if [ "${1:-}" = --shell ]; then
    interactive=1
    shift
fi
[ "${1:-}" != -- ] || shift
if [ $interactive = 0 ] && [ $# -eq 0 ]; then
    echo "usage: $0 CMD... | --shell" >&2
    exit 2
fi

setup_start=$(date +%s.%N)
ABI=$(bash "$VM_DIR/setup.sh")
setup_secs=$(awk -v a="$setup_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
KROOT=$VM_CACHE/kernel/$ABI
ROOTFS=$VM_CACHE/rootfs
KERNEL=$KROOT/boot/vmlinuz-$ABI
INITRD=$(readlink -f "$VM_CACHE/initrd.cpio.gz")
TIMEOUT=${VM_TIMEOUT:-1200}
QEMU=qemu-system-x86_64

# ---------------------------------------------------------------- accelerator
# KVM is tried for real (a probe boot that must reach the guest's /init); when it cannot run
# Debian's kernel (e.g. a paravirtual /dev/kvm), TCG is used. The verdict is cached per host
# kernel, qemu and guest kernel.
pick_accel() {
    if [ -n "${VM_ACCEL:-}" ]; then
        echo "$VM_ACCEL"
        return
    fi
    local key verdict=tcg why="no usable /dev/kvm" out
    key="$(uname -r) | $($QEMU --version | head -1) | $ABI"
    if [ -f "$VM_CACHE/accel" ] && [ "$(sed -n 2p "$VM_CACHE/accel")" = "$key" ]; then
        head -1 "$VM_CACHE/accel"
        return
    fi
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        out=$(timeout -k 2 30 setpriv --pdeathsig KILL -- $QEMU -accel kvm -cpu host -m 512M -smp 1 \
            -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 vm.probe" \
            -display none -nodefaults -no-reboot -serial stdio </dev/null 2>&1) || true
        if grep -q VM-PROBE-OK <<<"$out"; then
            verdict=kvm
            why="probe boot reached /init"
        else
            why="probe boot failed: $(grep -m1 -iE 'error|fail|abort' <<<"$out" || echo 'no output / timeout')"
        fi
    fi
    vm_log "accelerator: $verdict (kvm: $why)"
    printf '%s\n%s\n' "$verdict" "$key" >"$VM_CACHE/accel"
    echo "$verdict"
}
ACCEL=$(pick_accel)
case $ACCEL in
    kvm) ACC=(-accel kvm -cpu host) ;;
    # thread=single: with multi-threaded TCG, cross-CPU kernel text patching (static keys flipped
    # while another vCPU runs the patched code) intermittently oopses on a stale int3
    # -avx2: QEMU 7.2's young AVX2 emulation crashes dav1d's AVX2 code on some streams (FFmpeg's
    # libdav1d and ours alike: a wild stack access). VM_TCG_CPU overrides the model.
    tcg) ACC=(-accel "tcg,thread=${VM_TCG_THREAD:-single}" -cpu "${VM_TCG_CPU:-max,-avx2}") ;;
    *) vm_die "VM_ACCEL must be kvm or tcg" ;;
esac

# ---------------------------------------------------------------- run directory
mkdir -p "$VM_CACHE/runs" "$VM_CACHE/logs"
# run directories kept by failed (or killed) runs are dropped after 3 hours; running ones are younger
find "$VM_CACHE/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -mmin +180 -exec rm -rf {} + 2>/dev/null || true
RUN=$(mktemp -d "$VM_CACHE/runs/run.XXXXXX")
CTL=$RUN/ctl
mkdir -p "$CTL"
QPID=
finish() {
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill -TERM "$QPID" 2>/dev/null || true; fi
    [ -f "$RUN/console.log" ] && cp "$RUN/console.log" "$VM_CACHE/logs/last-console.log"
    [ -f "$CTL/dmesg.txt" ] && cp "$CTL/dmesg.txt" "$VM_CACHE/logs/last-dmesg.txt"
    if [ -z "${VM_KEEP:-}" ]; then rm -rf "$RUN"; fi
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shares: the checkout, the cargo target dir if elsewhere, VM_SHARES; parents before children
share_paths=("$PROJECT_ROOT")
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -d "$CARGO_TARGET_DIR" ]; then
    t=$(cd "$CARGO_TARGET_DIR" && pwd)
    case $t/ in "$PROJECT_ROOT"/*) ;; *) share_paths+=("$t") ;; esac
fi
for p in ${VM_SHARES:-}; do
    [ -d "$p" ] || vm_die "VM_SHARES: $p is not a directory"
    share_paths+=("$(cd "$p" && pwd)")
done
mapfile -t share_paths < <(printf '%s\n' "${share_paths[@]}" | awk '!seen[$0]++' | awk '{print length($0) " " $0}' | sort -n | cut -d' ' -f2-)

QARGS=("${ACC[@]}" -m "${VM_MEM:-2G}" -smp "${VM_SMP:-2}" -name daedalus-vm
    -kernel "$KERNEL" -initrd "$INITRD" -display none -nodefaults -no-reboot
    -fsdev "local,id=fsroot,path=$ROOTFS,security_model=none,readonly=on,multidevs=remap"
    -device virtio-9p-pci,fsdev=fsroot,mount_tag=vmroot
    -fsdev "local,id=fsctl,path=$CTL,security_model=none,multidevs=remap"
    -device virtio-9p-pci,fsdev=fsctl,mount_tag=vmctl)
shares_cfg=
i=0
for p in "${share_paths[@]}"; do
    case $p in *[[:space:],=]*) vm_die "cannot share a path with spaces, commas or '=': $p" ;; esac
    case $p in /|/usr|/usr/*|/etc|/etc/*|/bin*|/sbin*|/lib*|/proc*|/sys*|/dev*|/run*)
        vm_die "refusing to share $p over the guest's own system directories" ;;
    esac
    mkdir -p "$ROOTFS$p" 2>/dev/null || true
    QARGS+=(-fsdev "local,id=fs$i,path=$p,security_model=none,multidevs=remap"
        -device "virtio-9p-pci,fsdev=fs$i,mount_tag=vmsh$i")
    shares_cfg+="vmsh$i=$p "
    i=$((i + 1))
done

# working directory: where we are, if the guest can see it
cwd=$PROJECT_ROOT
for p in "${share_paths[@]}"; do
    case $PWD/ in "$p"/*) cwd=$PWD ;; esac
done

{
    printf 'VM_SHARES=%q\n' "$shares_cfg"
    printf 'VM_MODPROBE=%q\n' "videodev mc videobuf2-common videobuf2-v4l2 videobuf2-memops videobuf2-vmalloc videobuf2-dma-contig videobuf2-dma-sg v4l2-mem2mem cuse ${VM_MODPROBE:-}"
    printf 'VM_INSMOD=%q\n' "${VM_MODULES:-}"
    printf 'VM_INTERACTIVE=%q\n' "$interactive"
    printf 'VM_HUNG_TASK_SECS=%q\n' "${VM_HUNG_TASK_SECS:-30}"
    printf 'VM_TERM=%q\n' "${TERM:-linux}"
} >"$CTL/config"
{
    for v in RUST_BACKTRACE RUST_LOG CARGO_TARGET_DIR ${VM_ENV:-}; do
        [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"
    done
    printf 'export GST_REGISTRY=/tmp/gst-registry.bin\n'
    printf 'export VM_GUEST=1 VM_KERNEL=%q\n' "$ABI"
} >"$CTL/env"
if [ $# -eq 1 ]; then
    printf '%s\n' "$1" >"$CTL/cmd"
elif [ $# -gt 1 ]; then
    printf '%q ' "$@" >"$CTL/cmd"
    echo >>"$CTL/cmd"
fi
cat >"$CTL/wrapper" <<EOF
. /run/vm/env
cd $(printf %q "$cwd") || exit 125
if [ $interactive = 1 ]; then
    echo "vm: guest shell (\$(uname -r)); 'exit' powers off"
    exec /usr/bin/setsid -c -w /bin/bash -i
fi
exec /bin/bash /run/vm/cmd
EOF

APPEND="console=ttyS0 loglevel=${VM_LOGLEVEL:-6} panic=-1 oops=panic mitigations=off ${VM_APPEND:-}"
if [ $interactive = 1 ]; then
    QARGS+=(-chardev "stdio,id=con,mux=on,signal=off,logfile=$RUN/console.log" -serial chardev:con)
else
    QARGS+=(-chardev "file,id=con,path=$RUN/console.log" -serial chardev:con
        -device virtio-serial-pci -chardev stdio,id=out,signal=off -device virtconsole,chardev=out)
fi
QARGS+=(-append "$APPEND")

# ---------------------------------------------------------------- boot
start=$(date +%s.%N)
qrc=0
if [ $interactive = 1 ]; then
    setpriv --pdeathsig KILL -- timeout --foreground -k 5 "$TIMEOUT" \
        setpriv --pdeathsig KILL -- $QEMU "${QARGS[@]}" || qrc=$?
else
    # background + wait so INT/TERM traps run at once; pdeathsig: qemu dies with us in any case
    setpriv --pdeathsig KILL -- timeout -k 5 "$TIMEOUT" \
        setpriv --pdeathsig KILL -- $QEMU "${QARGS[@]}" </dev/null &
    QPID=$!
    wait "$QPID" || qrc=$?
    QPID=
fi
end=$(date +%s.%N)
wall=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')

# ---------------------------------------------------------------- verdict
status=
[ -f "$CTL/rc" ] && status=$(cat "$CTL/rc")
problems=$RUN/problems
klog_re='Oops|BUG:|kernel BUG at|WARNING:|Kernel panic|Unable to handle|INFO: task .* blocked for more than|blocked for more than [0-9]+ seconds|possible circular locking|possible recursive locking|inconsistent lock state|bad unlock balance|DEBUG_LOCKS_WARN_ON|suspicious RCU usage|soft lockup|hard LOCKUP|rcu: INFO:|detected stall|Call Trace:|UBSAN:|KASAN:|KFENCE:|list_(add|del) corruption|sysrq: Trigger a crash'
cat "$RUN/console.log" "$CTL/dmesg.txt" 2>/dev/null | tr -d '\r' | grep -v '^VM-INIT:' |
    grep -aE "$klog_re" | { if [ -n "${VM_KLOG_IGNORE:-}" ]; then grep -avE "$VM_KLOG_IGNORE"; else cat; fi; } |
    awk '!seen[$0]++' >"$problems" || true
# taint bits that only bugs set: B bad page, M machine check, D oops, W warning, L soft lockup
if [ -f "$CTL/tainted" ]; then
    t=$(cat "$CTL/tainted")
    if (((t & (32 | 16 | 128 | 512 | 16384)) != 0)); then echo "kernel tainted=$t (oops/warning/lockup bits)" >>"$problems"; fi
fi
boot=$(cat "$CTL/boot-uptime" 2>/dev/null || echo '?')
if [ -f "$CTL/end-uptime" ] && [ -f "$CTL/boot-uptime" ]; then
    cmdt=$(awk -v a="$boot" -v b="$(cat "$CTL/end-uptime")" 'BEGIN{printf "%.1f", b-a}')
else
    cmdt='?'
fi

final=
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    vm_log "TIMEOUT: the guest was still running after ${TIMEOUT}s (VM_TIMEOUT) and was killed"
    final=124
elif [ -z "$status" ]; then
    vm_log "the guest stopped without reporting an exit status (qemu exit $qrc): kernel panic or crash?"
    final=125
fi
if [ -s "$problems" ]; then
    vm_log "kernel problems in the guest log:"
    sed 's/^/vm:   | /' "$problems" | head -40 >&2
fi
if [ -z "$final" ]; then
    final=$status
    if [ -s "$problems" ] && [ "$status" = 0 ]; then final=125; fi
fi
if [ "$final" != "$status" ] || [ -s "$problems" ]; then
    vm_log "last console lines:"
    tr -d '\r' <"$RUN/console.log" | tail -n "${VM_TAIL:-25}" | sed 's/^/vm:   > /' >&2
    VM_KEEP=1
    vm_log "run directory kept: $RUN"
fi
summary="accel=$ACCEL kernel=$ABI setup=${setup_secs}s boot=${boot}s command=${cmdt}s qemu=${wall}s status=${status:-none}"
[ -n "${VM_QUIET:-}" ] || vm_log "$summary -> exit $final"
[ -z "${VM_SUMMARY:-}" ] || echo "$summary exit=$final" >"$VM_SUMMARY"
exit "$final"
