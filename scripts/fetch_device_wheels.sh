#!/usr/bin/env bash
# Download the small wheels scripts/device_check.sh installs on a machine without network:
# ml-collections (pure Python) and PyYAML (which it imports), for CPython 3.12 on manylinux
# x86-64 (the GPU machine) and for this machine's Python (to prove the same path here).
# Into wheels/ (git-ignored; the device tool carries it: pass carry=["wheels"]), ~1 MB.
#
#   scripts/fetch_device_wheels.sh [DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/wheels}
py=${PYTHON:-python3}
pkgs=(ml-collections==1.1.0 PyYAML==6.0.2)
mkdir -p "$dest"
here=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
for ver in 3.12 "$here"; do
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
      --python-version "$ver" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$dest" "${pkgs[@]}"
done
ls -l "$dest"
du -sh "$dest"
