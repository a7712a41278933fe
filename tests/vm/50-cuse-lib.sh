#!/usr/bin/env bash
# Helpers of the 50-cuse-* VM tests (sourced, not run: not executable).
T=${CARGO_TARGET_DIR:-target}
cuse=$T/release/daedalus-cuse
daemon_bin=$T/release/daedalus-daemon
client=$T/release/daedalus
work=$(mktemp -d)
sock=$work/dv.sock
for b in "$cuse" "$daemon_bin" "$client"; do
    [ -x "$b" ] || { echo "missing $b: cargo build --release -p daedalus-cuse -p daedalus-daemon -p daedalus"; exit 1; }
done

mem=userptr

# start_server [ARGS]: daedalus-cuse serve --socket --memory $mem in the background ($server).
start_server() {
    rm -f "$sock"
    RUST_LOG=${RUST_LOG:-warn} "$cuse" serve --name video9 --media-name media9 --socket "$sock" \
        --memory "$mem" "$@" >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do [ -e /dev/media9-request ] && [ -S "$sock" ] && return 0; sleep 0.1; done
    cat "$work/server.log"; echo "server did not come up"; exit 1
}

# start_daemon: daedalus-daemon --connect in the background ($daemon), waits until attached.
start_daemon() {
    local before
    before=$(grep -c 'daemon connected' "$work/server.log" || true)
    "$daemon_bin" --connect "$sock" >>"$work/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do
        [ "$(grep -c 'daemon connected' "$work/server.log" || true)" -gt "$before" ] && return 0
        sleep 0.1
    done
    echo "daemon did not connect"; exit 1
}

# stop_all: the daemon and the server; waits until the nodes are gone.
stop_all() {
    if [ -n "${daemon:-}" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
    if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    daemon=
    server=
    for _ in $(seq 100); do [ -e /dev/video9 ] || [ -e /dev/media9 ] || return 0; sleep 0.1; done
    echo "the nodes did not go away"; exit 1
}

cleanup() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

hashes() { grep -v '^#' "$1" | awk -F, '{gsub(/ /, "", $6); print $6}'; }

# decode FILE OUT [extra daedalus args]: through /dev/video9 under the launcher.
decode() {
    local in=$1 out=$2
    shift 2
    "$cuse" run -- "$client" decode "$in" --device /dev/video9 --media /dev/media9 \
        --memory "$mem" --framemd5 "$out" "$@"
}
