#!/usr/bin/env bash
# Guest check of the CUSE frontend: a blocking DQBUF (file opened without O_NONBLOCK, queues
# streaming, nothing to decode) sleeps without holding a server thread, other opens are served
# meanwhile, and a signal ends it with EINTR (the kernel's FUSE_INTERRUPT; the server answers the
# parked request). Needs: cargo build --release -p daedalus-cuse -p daedalus-daemon -p daedalus
# vm-timeout: 300
set -euo pipefail
# shellcheck source=tests/vm/50-cuse-lib.sh
. "$(dirname "$0")/50-cuse-lib.sh"
start_server
"$cuse" probe-eintr /dev/video9 & probe=$!
sleep 0.2
# While the probe sleeps in DQBUF: other opens work.
v4l2-ctl -d /dev/video9 --info | grep -q daedalus-cuse
echo "another open answered while a DQBUF blocks"
wait $probe
kill -0 "$server" || { cat "$work/server.log"; echo "server died"; exit 1; }
echo "50-cuse-eintr: OK"
