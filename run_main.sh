#!/usr/bin/env bash
# README command 1: set up the environment (first run only), build the synthetic AU set if missing,
# train a small ALGRNet on the CPU, evaluate it on the held-out fold and write a report.
# Extra arguments go to experiments/main_job.py (see `bash run_main.sh --help`).
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
exec python -m experiments.main_job "$@"
