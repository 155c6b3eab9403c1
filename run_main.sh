#!/usr/bin/env bash
# README command 1: set up the environment (first run only), build the synthetic AU set if missing,
# train a small ALGRNet on the CPU, evaluate it on the held-out fold and write a report.
# Extra arguments go to experiments/main_job.py (see `bash run_main.sh --help`). The output is ours
# (progress, results, warnings); `--verbose` or ALGRNET_VERBOSE=1 adds the third-party logs
# (TensorFlow's C++ start-up lines, absl, tfds, orbax, deprecation warnings).
set -euo pipefail
for arg in "$@"; do
  if [ "$arg" = "--verbose" ]; then export ALGRNET_VERBOSE=1; fi
done
if [ "${ALGRNET_VERBOSE:-0}" != "0" ]; then
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-0}"
else
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
fi
source "$(dirname "$0")/scripts/env.sh"
exec python -m experiments.main_job "$@"
