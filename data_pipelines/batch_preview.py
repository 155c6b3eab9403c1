"""A PNG grid of one input-pipeline batch: faces, landmarks and labels, as the model sees them.

Landmarks are coloured by mirror pair (``au_sets.REFLECT_49``): the lower-numbered point of each pair red,
its partner blue, midline points green. The flip permutes the points so that point i keeps its meaning, so
flipped faces (p = 0.5 in training batches) show the same colour pattern as the others.
"""
from __future__ import annotations

import itertools
import os
from typing import Any

import matplotlib
import ml_collections
import numpy as np

from algrnet_jax import au_sets
from data_pipelines import augment, pipeline

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

COLOURS = ("red", "blue", "limegreen")      # lower point of a mirror pair, its partner, midline point


def point_colours() -> np.ndarray:
    """Colour names ``[49]`` of the landmarks: by mirror pair (see the module docstring)."""
    reflect = np.asarray(au_sets.REFLECT_49)
    idx = np.arange(len(reflect))
    colours = np.where(reflect == idx, 2, np.where(idx < reflect, 0, 1))
    return np.array(COLOURS)[colours]


def batch_caption(batch: dict[str, Any], i: int, names: list[str]) -> str:
    """The caption of face ``i``: present AUs (unknown ones with '?'), six per line, or its grade.

    ``batch["labels"]``: int ``[B, n]`` AU labels (-1 unknown) with ``names`` ``[n]``, or ``[B]`` grades.
    """
    labels = np.asarray(batch["labels"])
    if labels.ndim == 1:
        return f"grade {au_sets.GRADES[int(labels[i])]}"
    on = [n for n, v in zip(names, labels[i]) if v == 1]
    unk = [n + "?" for n, v in zip(names, labels[i]) if v < 0]
    words = on + unk
    return "\n".join(" ".join(words[k:k + 6]) for k in range(0, len(words), 6)) or "no AU"


def one_batch(config: ml_collections.ConfigDict, *, train: bool = True, epoch: int = 0,
              batch: int = 0) -> dict[str, np.ndarray]:
    """Batch ``batch`` of the training batches of ``epoch`` (random crop and flip) or of the test batches.

    Raises:
      ValueError: there is no such batch (also DataError, a UserError, from the pipeline: not built, ...).
    """
    source = pipeline.make_source(config)
    if train:
        it = source.train_batches(epoch, start_batch=batch)
    else:
        it = itertools.islice(source.eval_batches("test"), batch, None)
    b = next(iter(it), None)
    if b is None:
        raise ValueError(f"no batch {batch} in the {'training' if train else 'test'} split")
    return b


def write_batch_png(config: ml_collections.ConfigDict, out: str, *, train: bool = True, epoch: int = 0,
                    batch: int = 0) -> str:
    """Writes a grid of one pipeline batch (:func:`one_batch`: images ``[B, C, C, 3]``, landmarks, labels) to
    ``out`` (PNG); returns ``out``."""
    b = one_batch(config, train=train, epoch=epoch, batch=batch)
    images = augment.denormalize(b["image"])
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    names = [f"AU{a}" for a in config.aus]
    colours = point_colours()
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
