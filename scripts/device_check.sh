#!/usr/bin/env bash
# The prepared device check (scripts/device_check.py): on a bare JAX machine without TensorFlow,
# ml-collections or network, install the carried wheels (scripts/fetch_device_wheels.sh ->
# wheels/) into a scratch folder, then run every stage; JSON files land in OUT_DIR.
#
#   scripts/device_check.sh OUT_DIR [--quick] [scripts/device_check.py flags]
#
# DEVICE_CHECK_INSTALL=all installs the wheels even where the packages are importable (the CPU
# proof of this path). PYTHON picks the interpreter (default python3).
set -euo pipefail
out=${1:?usage: scripts/device_check.sh OUT_DIR [--quick] [flags]}
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$out"
site=${DEVICE_CHECK_SITE:-$(mktemp -d "${TMPDIR:-/tmp}/rpsflax_site_XXXXXX")}
missing=$("$py" - "${DEVICE_CHECK_INSTALL:-missing}" <<'PY'
import importlib.util, sys
need = {"ml_collections": "ml-collections", "yaml": "PyYAML"}
print(" ".join(r for m, r in need.items()
               if sys.argv[1] == "all" or importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  if ! ls "$repo"/wheels/*.whl >/dev/null 2>&1; then
    echo "error: $missing not importable and no wheels in $repo/wheels:" \
         "run scripts/fetch_device_wheels.sh where there is network, and carry wheels/" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  if ! "$py" -m pip install --quiet --no-index --find-links "$repo/wheels" --no-deps \
      --target "$site" $missing; then
    # No pip there: a wheel is a zip laid out as site-packages; unpack the ones for this Python.
    echo "pip failed: unpacking the wheels into $site instead" >&2
    # shellcheck disable=SC2086
    "$py" - "$repo/wheels" "$site" $missing <<'PY'
import pathlib, sys, zipfile
wheels, site, names = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
cp = f"cp{sys.version_info[0]}{sys.version_info[1]}"
for name in names:
  stem = name.replace("-", "_").lower()
  found = [w for w in sorted(wheels.glob("*.whl")) if w.name.lower().startswith(stem + "-")
           and ("-py3-none-any" in w.name or f"-{cp}-" in w.name)]
  if not found:
    sys.exit(f"error: no wheel of {name} for {cp} in {wheels}")
  zipfile.ZipFile(found[-1]).extractall(site)
  print(f"unpacked {found[-1].name}", file=sys.stderr)
PY
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/scripts/device_check.py" --out "$out" "$@"
