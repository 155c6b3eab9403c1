#!/usr/bin/env bash
# README command 2: set up the environment (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -m slow` for the paper-size checks.
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
exec python -m pytest -n 2 --dist loadfile -q "$@"
