#!/usr/bin/env bash
# Installs the system packages zswapfs needs on Debian/Ubuntu, only those missing:
# fuse3 (fusermount3), libfuse3-dev + pkg-config (pyfuse3 builds from source), fio (tests, bench),
# util-linux (losetup, mkswap, swapon), systemd (systemd-analyze checks the units), and
# liblz4-dev + libzstd-dev (the compiled engine, zswapfs/engine/_native.c, links them).
set -euo pipefail
pkgs=(fuse3 libfuse3-dev pkg-config fio util-linux systemd liblz4-dev libzstd-dev)
python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
