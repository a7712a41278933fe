#!/usr/bin/env bash
# Makes sure the Linux 6.12 uAPI headers (linux-libc-dev from bookworm-backports) are unpacked under
# <workspace>/.cache/uapi, then prints the include root (.cache/uapi/usr/include).
# The control layout tests (crates/decoder-core/tests/ctrl_layout_*.rs) compile C against it.
# Idempotent: does nothing but print the path when the headers are already there.
# Usage: scripts/uapi-headers.sh            (run from anywhere)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.cache/uapi
inc=$dest/usr/include
stamp=$dest/.version

have_612() {
    [ -f "$inc/linux/v4l2-controls.h" ] && [ -f "$inc/linux/videodev2.h" ] &&
        [ -f "$stamp" ] && case "$(cat "$stamp")" in 6.12.*) true ;; *) false ;; esac
}

if ! have_612; then
    bash "$root/scripts/apt-suite.sh" bookworm-backports
    tmp=$(mktemp -d)
    chmod 755 "$tmp"; chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq linux-libc-dev/bookworm-backports) || {
        # the suite may be known but its package lists stale
        APT_SUITE_UPDATE=1 bash "$root/scripts/apt-suite.sh" bookworm-backports
        (cd "$tmp" && apt-get download -qq linux-libc-dev/bookworm-backports)
    }
    deb=$(ls "$tmp"/linux-libc-dev_*.deb)
    ver=$(dpkg-deb -f "$deb" Version)
    case "$ver" in
        6.12.*) ;;
        *) echo "uapi-headers: linux-libc-dev/bookworm-backports is $ver, not 6.12.x" >&2; exit 1 ;;
    esac
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg -x "$deb" "$dest"
    # asm/ lives in the multiarch directory; expose it under the include root too so a plain
    # -I<root> is enough.
    triple=$( (dpkg-architecture -qDEB_HOST_MULTIARCH || cc -print-multiarch) 2>/dev/null || true)
    multi=$inc/$triple
    if [ -n "$multi" ] && [ -d "$multi/asm" ] && [ ! -e "$inc/asm" ]; then
        ln -s "$(basename "$multi")/asm" "$inc/asm"
    fi
    echo "${ver%%~*}" | sed 's/-.*//' > "$stamp"
    have_612 || { echo "uapi-headers: unpacked $deb but headers are missing" >&2; exit 1; }
fi
echo "$inc"
