#!/usr/bin/env bash
# Sourced by the top-level commands: creates .venv on first use and (re)installs the pinned
# requirements when they change. Idempotent. ALGRNET_NO_TORCH=1 skips the torch extra,
# ALGRNET_NO_TFDS_CLI=1 the extra of the `tfds` command line (apache-beam, mlcroissant).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ALGRNET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
reqs=("$ROOT/requirements.txt")
[ "${ALGRNET_NO_TORCH:-0}" = "1" ] || reqs+=("$ROOT/requirements-torch.txt")
[ "${ALGRNET_NO_TFDS_CLI:-0}" = "1" ] || reqs+=("$ROOT/requirements-tfds-cli.txt")
stamp="$VENV/.install-stamp"
want="$(cat "${reqs[@]}" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing pinned requirements (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  "$VENV/bin/python" -m pip install -q "${args[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
