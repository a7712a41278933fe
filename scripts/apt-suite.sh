#!/usr/bin/env bash
# Makes an extra Debian suite (e.g. bookworm-backports, trixie) known to apt, reusing the URIs of
# this machine's existing Debian source so no registry host is named here. Packages from it are
# pinned low (priority 100): only explicit `pkg/SUITE` downloads or installs take them.
# Usage: scripts/apt-suite.sh SUITE [SUITE...]
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 SUITE..." >&2; exit 2; }
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # the stanza whose Suites include a plain Debian release (not -security)
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if ($i !~ /security/) s=1 } /^$/{ if(s&&u&&!d){print u; d=1} u="";s=0 } END{ if(s&&u&&!d) print u }' "$f")
    case "$uri" in *debian*) break ;; *) uri="" ;; esac
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $3 !~ /security/ && $2 ~ /debian/ {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$uri" ] || { echo "apt-suite: no Debian source found to copy" >&2; exit 1; }
changed=0
for suite in "$@"; do
    list=/etc/apt/sources.list.d/daedalus-$suite.sources
    want="Types: deb
URIs: $uri
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ "$(cat "$list" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" > "$list"
        printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$suite" > "/etc/apt/preferences.d/daedalus-$suite"
        changed=1
    fi
done
if [ "$changed" = 1 ] || [ -n "${APT_SUITE_UPDATE:-}" ]; then
    apt-get update -qq
fi
