#!/usr/bin/env bash
# Install the Debian packages strata's VM lab and tests need.
#
# Idempotent and fast when everything is present: `apt-get update` only runs when a package is
# missing. Needs root (or sudo) and Debian's apt sources.
#
#   qemu-system-x86  boots the guest kernels (TCG; see crates/vm)
#   busybox-static   the guest userland for test rootfs layers and smoke tests
#   cpio, xz-utils   initramfs inspection and .ko.xz kernel modules (6.12 kernels)
#   strace           debugging the daemon
#   umoci            unpacking OCI images into layers
#   debootstrap      the Debian image of the workloads VM test (built once, cached)
#   e2fsprogs        mkfs.ext4 for the lab's scratch disk
#   erofs-utils      mkfs.erofs: EROFS layer images (strata image import --erofs, serve
#                    --erofs), their tests and setups (c), (d) of `strata bench guest`
#   util-linux, libcap2-bin, e2fsprogs
#                    setpriv, setcap, chattr: the security tests' local attacks as nobody
#   containerd       containerd 1.6 + ctr + runc: the shim's VM tests and scripts/bench-containerd
#   skopeo           turns the tests' OCI layouts into OCI archives for `ctr image import`;
#                    `strata image pull` talks to registries through it
#   docker-registry  a registry on loopback for the `image pull` test (not started as a
#                    service: the test runs its own)
#   clang            compiles strata trace's BPF programs (CO-RE C) at build time
#   pjdfstest        (cargo install, not apt) the POSIX suite of the conformance VM test
#   libelf-dev, zlib1g-dev, pkg-config
#                    static libelf.a and libz.a that the vendored libbpf links into the
#                    static strata binary (.cargo/config.toml: LIBBPF_SYS_LIBRARY_PATH)
set -euo pipefail

PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils strace umoci e2fsprogs erofs-utils debootstrap)
PACKAGES+=(clang libelf-dev zlib1g-dev pkg-config util-linux libcap2-bin)
PACKAGES+=(containerd skopeo docker-registry)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: not root and no sudo; run this script as root" >&2
        exit 1
    fi
fi

# pjdfstest (the VM tests' conformance suite, BSD-2): a cargo install, only when missing.
install_pjdfstest() {
    if command -v pjdfstest >/dev/null 2>&1 || [ -x "${HOME:-/root}/.cargo/bin/pjdfstest" ]; then
        return
    fi
    echo "install-deps: cargo install pjdfstest (a few minutes)"
    "${SUDO[@]}" cargo install pjdfstest --locked --root /usr/local
}

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all present (${PACKAGES[*]})"
    install_pjdfstest
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
install_pjdfstest
