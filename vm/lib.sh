# Shared paths and helpers of the VM harness; sourced by vm/*.sh (never executed).
# shellcheck shell=bash

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$VM_DIR/.." && pwd)
# Everything the harness downloads or builds lives here (git-ignored via /.cache).
VM_CACHE=${VM_CACHE:-$PROJECT_ROOT/.cache/vm}

# Debian kernel flavour and the trixie suite the guest userspace comes from.
VM_KERNEL_SERIES=6.12
VM_KERNEL_DIST=deb12
VM_USERSPACE_SUITE=trixie

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }

# Prints "ABI VERSION" of the newest linux-image-6.12.*+deb12-amd64-unsigned apt offers whose
# linux-source-6.12 of the very same version is also available (needed for the out-of-tree media
# modules). ABI is e.g. 6.12.117+deb12-amd64. Nothing is pinned: the answer follows apt's lists.
# apt-cache is slow here (its binary cache is not kept), so the answer is memoised per state of
# /var/lib/apt/lists and recomputed whenever apt's lists change.
vm_resolve_kernel() {
    local key memo=$VM_CACHE/resolved-kernel names sources
    key=$(stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16)
    if [ -z "${VM_SETUP_RETRIED:-}" ] && [ -f "$memo" ] && [ "$(sed -n 2p "$memo")" = "$key" ]; then
        head -1 "$memo"
        return
    fi
    names=$(apt-cache pkgnames "linux-image-$VM_KERNEL_SERIES." 2>/dev/null |
        grep -E "^linux-image-${VM_KERNEL_SERIES//./\\.}\.[0-9]+\+${VM_KERNEL_DIST}-amd64-unsigned\$") || return 1
    sources=$(apt-cache madison "linux-source-$VM_KERNEL_SERIES" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
    # shellcheck disable=SC2086
    best=$(apt-cache policy $names | awk '/^[^ ]/{n=$1; sub(/:$/,"",n)} /Candidate:/{print n, $2}' |
        while read -r name ver; do
            [ "$ver" != "(none)" ] && grep -qxF "$ver" <<<"$sources" || continue
            abi=${name#linux-image-}
            echo "${abi%-unsigned} $ver"
        done | sort -V -k2 | tail -1)
    [ -n "$best" ] || return 1
    mkdir -p "$VM_CACHE"
    printf '%s\n%s\n' "$best" "$key" >"$memo"
    echo "$best"
}

# The kernel ABI the cache currently uses (written by setup), empty if none.
vm_current_abi() { cat "$VM_CACHE/current-kernel" 2>/dev/null || true; }

# Debian mirror URI of this machine's apt sources (so no registry host is named in the repo).
vm_debian_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if ($i !~ /security/) s=1}
                   /^$/{if(s&&u&&!d){print u; d=1} u="";s=0} END{if(s&&u&&!d) print u}' "$f")
        case $uri in *debian*) break ;; *) uri="" ;; esac
    done
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" && $3 !~ /security/ && $2 ~ /debian/ {print $2; exit}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || return 1
    printf '%s\n' "$uri"
}
