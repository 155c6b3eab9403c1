"""``algrnet check-step FIXTURE_DIR``: one float64 training step against a PyTorch JAA-Net reference step."""
from __future__ import annotations

import argparse
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "FIXTURE_DIR holds recipe.json and train_step64.npz (e.g. tests/fixtures/jaanet_train_step64_bp4d).\n"
        "Rebuilds the weights from the recipe in float64, writes/reads them as release .pth files (torch extra),\n"
        "converts them and runs one step of our loss and optimizer with jax_enable_x64. Criteria: train-mode\n"
        "outputs and the four losses within 1e-9 relative; per state_dict entry the update norm within 1e-6\n"
        "relative and its projection on the seeded vector within 1e-5 of the update norm.\n"
        "Exit status: 0 all criteria hold, 1 one fails, 2 bad fixture or no torch.")
    parser.add_argument("fixture_dir", metavar="FIXTURE_DIR", help="folder with recipe.json and train_step64.npz")
    parser.add_argument("--top", type=int, default=5, help="worst entries printed per criterion (default 5)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # quiet: no XLA "very slow compile" alarm on a busy CPU
    # jax and the model load here (after the log level), not when the CLI builds its parser.
    from algrnet_jax.reference import step_parity

    start = time.perf_counter()
    print(f"check-step: {args.fixture_dir}: one float64 step (XLA compiles it first: ~4 min on 2 CPU cores) ...",
          flush=True)
    criteria = step_parity.check_step(args.fixture_dir)
    print(step_parity.format_report(criteria, args.top))
    if args.json:
        step_parity.write_json(criteria, args.json, args.top)
    failed = [c.name for c in criteria if not c.passed]
    print(f"check-step: {'FAIL: ' + ', '.join(failed) if failed else 'all criteria hold'} "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0
