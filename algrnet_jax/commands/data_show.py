"""``algrnet data show``: write a PNG grid of one input-pipeline batch with its landmarks.

Examples::

    algrnet data show --dataset synth_au --config bp4d_tiny --out batch.png
    algrnet data show --dataset synth_au --config bp4d_small --eval --size small --out eval.png

Landmarks are coloured by mirror pair (``au_sets.REFLECT_49``): the lower-numbered point of each
pair red, its partner blue, midline points green. The flip permutes the points so that point i keeps
its meaning, so flipped faces (p = 0.5 in training batches) show the same colour pattern as the others.
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synth_au", help="tfds dataset (synth_au, bp4d, disfa, fpara)")
    parser.add_argument("--config", default="bp4d_tiny", help="builder config, e.g. bp4d_tiny")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $ALGRNET_DATA_DIR or ./data/tfds)")
    parser.add_argument("--model", default="algrnet", help="model config whose crop/aligned sizes and AUs are used")
    parser.add_argument("--size", default="paper", choices=("paper", "small", "tiny"), help="config size (paper: crop 176)")
    parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0, help="which batch of the epoch")
    parser.add_argument("--eval", action="store_true", help="show an eval batch (centre crop) instead")
    parser.add_argument("--out", default="batch.png", help="PNG to write")


def run(args: argparse.Namespace) -> int:
    import sys

    from algrnet_jax import configs
    from data_pipelines import builders
    from data_pipelines.builders import label_sets

    try:
        builder_cls = builders.builder_class(args.dataset)
    except ValueError as e:
        print(f"algrnet data show: {e}", file=sys.stderr)
        return 2
    label_set = next((c.label_set for c in getattr(builder_cls, "BUILDER_CONFIGS", []) if c.name == args.config), None)
    if label_set is None:
        print(f"algrnet data show: unknown config {args.config!r} of {args.dataset}", file=sys.stderr)
        return 2
    if label_set == label_sets.PARALYSIS:
        config = configs.get_config("algrnet_paralysis", args.size)
    else:
        config = configs.get_config(args.model, args.size, label_set)
    config.data.dataset = args.dataset
    config.data.builder_config = args.config
    config.data.data_dir = args.data_dir or ""
    config.data.fold = args.fold
    config.data.batch_size = args.batch_size
    config.data.eval_batch_size = args.batch_size
    try:
        path = write_batch_png(config, args.out, train=not args.eval, epoch=args.epoch, batch=args.batch)
    except (FileNotFoundError, ValueError) as e:
        print(f"algrnet data show: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _point_colours() -> np.ndarray:
    from algrnet_jax import au_sets

    reflect = np.asarray(au_sets.REFLECT_49)
    idx = np.arange(len(reflect))
    colours = np.where(reflect == idx, 2, np.where(idx < reflect, 0, 1))
    return np.array(["red", "blue", "limegreen"])[colours]


def batch_caption(batch: dict[str, Any], i: int, names: list[str]) -> str:
    """One line per face: present AUs (or grade), unknown ones with '?'."""
    labels = np.asarray(batch["labels"])
    if labels.ndim == 1:
        from algrnet_jax import au_sets

        return f"grade {au_sets.GRADES[int(labels[i])]}"
    on = [n for n, v in zip(names, labels[i]) if v == 1]
    unk = [n + "?" for n, v in zip(names, labels[i]) if v < 0]
    words = on + unk
    return "\n".join(" ".join(words[k:k + 6]) for k in range(0, len(words), 6)) or "no AU"


def write_batch_png(config, out: str, *, train: bool = True, epoch: int = 0, batch: int = 0) -> str:
    """Writes a grid of one pipeline batch (images, landmarks, labels) to ``out``; returns the path."""
    import itertools
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data_pipelines import augment, pipeline

    if train:
        it = pipeline.train_batches(config, epoch=epoch, start_batch=batch)
    else:
        it = itertools.islice(pipeline.eval_batches(config), batch, None)
    b = next(iter(it), None)
    if b is None:
        raise ValueError(f"no batch {batch} in the {'training' if train else 'test'} split")
    images = augment.denormalize(b["image"])
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    names = [f"AU{a}" for a in config.aus]
    colours = _point_colours()
    size = images.shape[1]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i])
        lm = b["landmarks"][i]
        ax.scatter(lm[:, 0], lm[:, 1], s=max(2.0, size / 30), c=colours, linewidths=0)
        title = batch_caption(b, i, names)
        if "subject" in b:
            title = f"{b['subject'][i]}:{b['frame'][i]} {title}"
        if float(b["mask"][i]) == 0:
            title = "(padding) " + title
        ax.set_title(title, fontsize=7)
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
    kind = f"train epoch {epoch} batch {batch}" if train else f"eval batch {batch}"
    fig.suptitle(f"{config.data.dataset}/{config.data.builder_config} fold {config.data.fold}: {kind}, "
                 f"crop {size}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
