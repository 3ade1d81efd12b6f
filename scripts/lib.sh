# Shared helpers for the project's scripts. Source it, do not run it.
# shellcheck shell=bash

IMMORTAL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Large downloads (kernel packages) live outside the clone so fresh clones reuse them.
IMMORTAL_CACHE=${IMMORTAL_CACHE:-/var/cache/immortal}
# The Debian archive the host's own apt uses, for guest images built from packages
# (scripts/build-real-guest): host_mirror PATTERN gives the first URI of the host's sources that
# matches it.
host_mirror() {
    { sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' || true
      sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null; } |
        grep -E "$1" | head -n1 || true
}
IMMORTAL_BUILD=${IMMORTAL_BUILD:-$IMMORTAL_ROOT/build}
IMMORTAL_BUILD_SAN=${IMMORTAL_BUILD_SAN:-$IMMORTAL_ROOT/build-san}
IMMORTAL_BUILD_FUZZ=${IMMORTAL_BUILD_FUZZ:-$IMMORTAL_ROOT/build-fuzz}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The ABI package behind Debian's linux-image-amd64 meta package, e.g. "6.1.0-56-amd64".
# Detected from the archive (the candidate version), never hard-coded.
guest_kernel_flavour() {
    if [[ -n ${IMMORTAL_GUEST_KERNEL:-} ]]; then echo "$IMMORTAL_GUEST_KERNEL"; return; fi
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n1
}

# Fetch a Debian package into the cache, verified against the archive's SHA256.
# VERSION defaults to the candidate; give it to pin a package to another one's version (the
# kernel's source must match the kernel exactly). Prints the path of the .deb.
#   fetch_deb PACKAGE [VERSION]
fetch_deb() {
    local pkg=$1 ver=${2:-} dir=$IMMORTAL_CACHE/debs
    mkdir -p "$dir"
    local sha arch file
    [[ -n $ver ]] || ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
    [[ -n $ver && $ver != "(none)" ]] || die "package $pkg is not in the archive (run apt-get update?)"
    sha=$(apt-cache show "$pkg=$ver" 2>/dev/null | sed -n 's/^SHA256: //p' | head -n1)
    [[ -n $sha ]] || die "package $pkg $ver is not in the archive (run apt-get update?)"
    # apt-get download names the file after the package's architecture ("all" for sources).
    arch=$(apt-cache show "$pkg=$ver" | sed -n 's/^Architecture: //p' | head -n1)
    file=$dir/${pkg}_${ver//:/%3a}_${arch}.deb
    if [[ -f $file ]] && echo "$sha  $file" | sha256sum -c --status; then
        echo "$file"; return
    fi
    rm -f "$file"
    log "downloading $pkg $ver"
    (cd "$dir" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) ||
        (cd "$dir" && apt-get download "$pkg=$ver" >&2) || die "cannot download $pkg"
    echo "$sha  $file" | sha256sum -c --status || die "hash mismatch for $file"
    echo "$file"
}

# Installs the Debian packages given that are not installed yet (quick when all are).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
    # Another install may hold dpkg's lock (a second script, the host's own updates): wait.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null ||
        die "cannot install ${missing[*]}"
}

# Debian's debug vmlinux of the guest kernel (≈ 860 MB package; only the vmlinux is extracted,
# once, into the cache). Prints its path.
debug_vmlinux() {
    local flavour vmlinux deb
    flavour=$(guest_kernel_flavour)
    vmlinux=$IMMORTAL_CACHE/dbg/vmlinux-$flavour
    if [[ ! -s $vmlinux ]]; then
        deb=$(fetch_deb "linux-image-$flavour-dbg")
        mkdir -p "$IMMORTAL_CACHE/dbg"
        log "extracting vmlinux from $(basename "$deb")"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -O --wildcards "./usr/lib/debug/boot/vmlinux-*" > "$vmlinux.tmp" &&
            mv "$vmlinux.tmp" "$vmlinux" || die "cannot extract the debug vmlinux"
    fi
    echo "$vmlinux"
}

# The ELF vmlinux inside a bzImage (what the kernel tree's scripts/extract-vmlinux does): the
# first compressed stream whose output is an ELF image. Prints nothing, fails when none is.
extract_vmlinux() {
    local image=$1 out=$2 magic decompress offset
    for pair in 'fd377a585a00:xz -dc' '28b52ffd:zstd -dcq' '1f8b08:gzip -dc'; do
        magic=${pair%%:*} decompress=${pair#*:}
        for offset in $(LC_ALL=C grep -obUaP "$(echo "$magic" | sed 's/../\\x&/g')" "$image" | cut -d: -f1 | head -n 4); do
            tail -c +$((offset + 1)) "$image" | $decompress > "$out.tmp" 2>/dev/null
            if [[ $(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
                mv "$out.tmp" "$out"
                return 0
            fi
        done
    done
    rm -f "$out.tmp"
    return 1
}
