"""``algrnet train``: train a model, data-parallel over every local device (and every host with --distributed).

Examples::

    algrnet data build synth_au --config bp4d_tiny
    algrnet train --config algrnet --size tiny --dataset synth_au --builder-config bp4d_tiny --fold 1 \\
        --workdir runs/synth_tiny --set train.num_epochs=2
    algrnet train --config algrnet --dataset bp4d --fold 1 --workdir runs/bp4d_f1 --resume
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="named config (algrnet, jaanet, wo_full, wo_fr, wo_sb, w_bi, "
                                                        "wo_ada, algrnet_paralysis)")
    parser.add_argument("--size", default="paper", choices=("paper", "small", "tiny"), help="model/input size")
    parser.add_argument("--label-set", default="bp4d", choices=("bp4d", "disfa"), help="AU label set")
    parser.add_argument("--dataset", required=True, help="tfds dataset: synth_au | bp4d | disfa | fpara")
    parser.add_argument("--builder-config", default=None,
                        help="tfds builder config (default: <label set>_small for synth_au, 'default' for the real sets)")
    parser.add_argument("--fold", type=int, choices=(1, 2, 3), required=True, help="test part; train on the other two")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard summaries")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    parser.add_argument("--resume-from-previous", action="store_true",
                        help="with --resume: if the latest checkpoint cannot be read, use the previous one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, typed from the config (repeatable), "
                             "e.g. --set train.num_epochs=2 --set data.batch_size=16")
    parser.add_argument("--no-eval", action="store_true", help="no evaluation (and no best checkpoint) at epoch ends")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first (cluster auto-detected)")
    parser.add_argument("--coordinator-address", default=None, help="with --distributed: host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=None, help="with --distributed")
    parser.add_argument("--process-id", type=int, default=None, help="with --distributed")


def apply_typed_overrides(config, overrides: Sequence[str]):
    """Applies ``key=value`` overrides; the value's type is the config entry's (str entries take the raw text).

    Raises ValueError naming the override on an unknown key or a value of the wrong type.
    """
    from algrnet_jax.configs.validate import lookup
    from experiments.paper_configs import apply_overrides

    quoted = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not of the form key=value")
        _, current = lookup(config, key.strip())   # an unknown key: apply_overrides reports it
        quoted.append(f"{key}={raw!r}" if isinstance(current, str) else item)
    for item, q in zip(overrides, quoted):
        try:
            apply_overrides(config, [q])
        except TypeError as e:
            raise ValueError(f"--set {item}: {e}") from None
    return config


def build_config(args: argparse.Namespace):
    """The config of the command line: named config, data flags, then --set overrides."""
    from algrnet_jax.configs import get_config

    config = get_config(args.config, args.size, args.label_set)
    config.data.dataset = args.dataset
    if args.builder_config is not None:
        config.data.builder_config = args.builder_config
    else:
        from data_pipelines import builders

        config.data.builder_config = builders.default_builder_config(args.dataset, config)
    config.data.fold = args.fold
    if args.data_dir is not None:
        config.data.data_dir = args.data_dir
    return apply_typed_overrides(config, args.overrides)


def run(args: argparse.Namespace) -> int:
    from algrnet_jax.configs.validate import validate_config
    from algrnet_jax.errors import UserError

    try:
        config = build_config(args)
    except ValueError as e:
        raise UserError(str(e)) from e
    validate_config(config, "config (named config, flags and --set overrides)")
    if args.distributed:
        from algrnet_jax.training.parallel import initialize_distributed

        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    from algrnet_jax.training.loop import NonFiniteLossError, train

    try:
        result = train(config, args.workdir, resume=args.resume, resume_from_previous=args.resume_from_previous,
                       evaluate=not args.no_eval, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"algrnet train: {e}", file=sys.stderr)
        return 1
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as e:   # the data layer: dataset not built, labels do not fit, ...
        raise UserError(str(e)) from e
    summary = {k: result[k] for k in ("step", "epoch", "best_mean_f1", "best_checkpoint", "last_checkpoint",
                                      "interrupted", "resumed_from_step", "workdir")}
    if result.get("metrics"):
        summary["mean_f1"] = result["metrics"].get("mean_f1")
    print(json.dumps(summary, indent=2))
    if result["interrupted"]:
        print(f"algrnet train: stopped by {result['interrupted']} at step {result['step']}; checkpoint saved, "
              "continue with --resume", file=sys.stderr)
    return 0
