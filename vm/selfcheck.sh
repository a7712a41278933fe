#!/usr/bin/env bash
# `just vm-selfcheck`: host-side checks that vm/run.sh reports what happens in the guest:
# exit statuses and argv come back intact, a kernel crash / WARN / hung task fails the run even
# when the command "succeeds", a hanging guest is killed at VM_TIMEOUT with no qemu left behind,
# and a module built out of tree against vm/kdir loads with its dependencies via VM_MODULES.
# Each check boots its own guest (~6 s each with TCG; the timeout check waits its 20 s).
set -uo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"
RUN=$VM_DIR/run.sh
fails=0
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

# vmrun: runs vm/run.sh with the given env assignments + args; sets $rc, stdout in $out, stderr in $err
vmrun() {
    env VM_KEEP= "$@" >"$out" 2>"$err"
    rc=$?
    # failing runs keep their directory for debugging; these failures are the expected ones
    kept=$(sed -n 's/.*run directory kept: //p' "$err" | tail -1)
    [ -z "$kept" ] || rm -rf "$kept"
}
pass() { echo "selfcheck: ok   $*"; }
fail() {
    echo "selfcheck: FAIL $*"
    sed 's/^/    stderr| /' "$err" | tail -25
    fails=$((fails + 1))
}
expect() { # description expected-status [stderr-ERE]
    if [ "$rc" != "$2" ]; then
        fail "$1: exit $rc, expected $2"
    elif [ -n "${3:-}" ] && ! grep -qE "$3" "$err"; then
        fail "$1: stderr lacks /$3/"
    else
        pass "$1 (exit $rc)"
    fi
}

# --------------------------------------------------------------- statuses and argv
vmrun "$RUN" false
expect "'just vm false' fails" 1
vmrun "$RUN" 'echo out; echo err >&2; exit 7'
expect "exit status 7 comes back" 7
if [ "$(cat "$out")" = $'out\nerr' ]; then pass "stdout+stderr of the command arrive on stdout"; else
    fail "command output was: $(head -c 200 "$out" | tr '\n' '|')"; fi
vmrun "$RUN" printf '%s|' 'a b' "c'd" '$HOME'
if [ $rc = 0 ] && [ "$(cat "$out")" = "a b|c'd|\$HOME|" ]; then pass "several arguments are passed as an exact argv"; else
    fail "argv round trip: exit $rc, output '$(cat "$out")'"; fi
vmrun "$RUN" 'test "$PWD" = '"$PROJECT_ROOT"' && test -f Cargo.toml && touch .cache/vm/selfcheck-write && test -w /tmp'
if [ $rc = 0 ] && [ -f "$VM_CACHE/selfcheck-write" ]; then pass "checkout shared read-write at $PROJECT_ROOT (cwd)"; else
    fail "checkout not usable at the same path: exit $rc"; fi
rm -f "$VM_CACHE/selfcheck-write"

# a host-built binary linked against a bookworm-only library (libdav1d.so.6; trixie has .so.7)
hb=$VM_CACHE/hostbin
mkdir -p "$hb"
printf '#include <dav1d/dav1d.h>\n#include <stdio.h>\nint main(void) { printf("dav1d %%s\\n", dav1d_version()); return 0; }\n' >"$hb/dav1d-version.c"
if gcc -O2 -o "$hb/dav1d-version" "$hb/dav1d-version.c" -ldav1d 2>"$err"; then
    want=$("$hb/dav1d-version")
    vmrun "$RUN" "$hb/dav1d-version"
    if [ $rc = 0 ] && [ "$(cat "$out")" = "$want" ]; then pass "host-built binary with bookworm-only libdav1d.so.6 runs in the guest ($want)"; else
        fail "host binary in the guest: exit $rc, '$(cat "$out")' (host: '$want')"; fi
else
    echo "selfcheck: skip host-library check (no libdav1d-dev on this host)"
fi

# --------------------------------------------------------------- kernel problems
vmrun "$RUN" 'echo c > /proc/sysrq-trigger; sleep 30'
expect "a kernel crash (sysrq c) fails the run" 125 'Kernel panic|sysrq: Trigger a crash'

# a module built out of tree against vm/kdir, like the project's own will be
kdir=$("$VM_DIR/kdir") && symvers=$("$VM_DIR/kdir" --symvers) || { echo "selfcheck: FAIL vm/kdir"; exit 1; }
tm=$VM_CACHE/testmod
rm -rf "$tm"
mkdir -p "$tm"
cp "$VM_DIR/testmod/vm_selfcheck.c" "$VM_DIR/testmod/Kbuild" "$tm/"
if make -s -C "$kdir" M="$tm" KBUILD_EXTRA_SYMBOLS="$symvers" modules >"$err" 2>&1; then
    pass "test module built against vm/kdir ($kdir)"
else
    fail "test module build"
fi
ko=$tm/vm_selfcheck.ko
vmrun env VM_MODULES="$ko" "$RUN" 'grep -q "^vm_selfcheck " /proc/modules && grep -q "^v4l2_mem2mem " /proc/modules'
expect "VM_MODULES insmods an OOT module after its dependencies (taint O/E is fine)" 0
vmrun "$RUN" "insmod $ko warn=1"
expect "a kernel WARN fails the run although the command succeeded" 125 'WARNING:.*vm_selfcheck'
vmrun env VM_HUNG_TASK_SECS=5 "$RUN" "insmod $ko hang_secs=16"
expect "a hung task report fails the run" 125 'blocked for more than'

# --------------------------------------------------------------- hard timeout
t0=$(date +%s)
vmrun env VM_TIMEOUT=20 "$RUN" 'sleep 100000'
t1=$(date +%s)
expect "a hanging guest is killed at VM_TIMEOUT=20" 124 'TIMEOUT: the guest was still running after 20s'
rundir=$kept
if [ $((t1 - t0)) -le 45 ] && [ -n "$rundir" ] && ! pgrep -f -- "$rundir" >/dev/null; then
    pass "no qemu left behind after the timeout ($((t1 - t0))s wall)"
else
    fail "after the timeout: wall $((t1 - t0))s, run dir '$rundir', processes: $(pgrep -af -- "${rundir:-none}" | head -3)"
fi

echo "selfcheck: $fails failure(s)"
[ $fails = 0 ]
