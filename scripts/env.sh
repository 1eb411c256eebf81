#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment, install gendistill into it, then run a command in it.
#   bash scripts/env.sh gendistill quickstart
#   bash scripts/env.sh python -m pytest -q
# The venv lives in $GENDISTILL_VENV (default: .venv); $GENDISTILL_EXTRAS picks the optional extras (default: dev;
# CI adds ray for the cluster-dispatch test). pip's local configuration on some machines offers a
# CPU-only torch wheel that does not match torchvision from the registry, so the install ignores it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GENDISTILL_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.gendistill-installed"
EXTRAS="${GENDISTILL_EXTRAS:-dev}"
want="$( (cat pyproject.toml; pwd; echo "$EXTRAS") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import gendistill" 2>/dev/null; then
  echo "[env] installing gendistill and its dependencies into $VENV (first time: a few minutes)" >&2
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
if [ "$#" -eq 0 ]; then exit 0; fi
exec "$@"
