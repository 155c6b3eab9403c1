"""Rebuilds the six JAA-Net state_dicts of the parity fixture from its ``recipe.json`` (numpy only).

The fixture (``tests/fixtures/jaanet_parity_bp4d/recipe.json``) lists every key and shape of the six
released JAA-Net state_dicts and a seeded rule giving every value:

- seed: ``numpy.random.default_rng(zlib.crc32(f"{tag}:{module}.{key}".encode()))``
- ``num_batches_tracked``: 0 (int64); ``running_var``: 0.5 + U[0,1); ``running_mean``: 0.1 N(0,1)
- other 1-D ``weight`` (batch-norm scale): 1 + 0.1 N(0,1); ``bias``: 0.05 N(0,1)
- >= 2-D ``weight`` (conv / linear): N(0,1) * sqrt(1 / prod(shape[1:]))
- ``align_net.align_output.1.weight`` is scaled by 0.01 and ``align_output.1.bias`` gets the
  recipe's ``mean_shape`` added, so the untrained network predicts a plausible face.
- values are evaluated in float64, then cast to float32 (``dtype=np.float64`` keeps them unrounded: the
  weights of the float64 one-step fixture ``jaanet_train_step64_bp4d``).

``save_pth`` (needs the optional torch extra) writes them as ``<module>_<epoch>.pth`` files, the layout of
the JAA-Net release.
"""
from __future__ import annotations

import collections
import json
import math
import os
import zlib
from typing import Any, Mapping

import numpy as np

from algrnet_jax.interop.release import MODULES, StateDicts, pth_path

def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Reads ``recipe.json``; raises ValueError naming the file if it is not a JAA-Net recipe."""
    try:
        with open(path) as f:
            recipe = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read recipe ({e})") from e
    missing = [k for k in ("tag", "au_num", "mean_shape", "modules") if k not in recipe]
    if missing:
        raise ValueError(f"{path}: not a JAA-Net recipe, missing entries {missing}")
    unknown = sorted(set(recipe["modules"]) - set(MODULES))
    if unknown:
        raise ValueError(f"{path}: unknown modules {unknown}; expected {list(MODULES)}")
    return recipe


def rule_value(tag: str, module: str, key: str, shape: tuple[int, ...],
               mean_shape: np.ndarray | None = None, dtype: Any = np.float32) -> np.ndarray:
    """The value of one state_dict entry under the recipe's rule (``dtype``, or int64 for counters)."""
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    rng = np.random.default_rng(zlib.crc32(f"{tag}:{module}.{key}".encode()))
    if key.endswith("running_var"):
        v = 0.5 + rng.random(shape)
    elif key.endswith("running_mean"):
        v = 0.1 * rng.standard_normal(shape)
    elif key.endswith("bias"):
        v = 0.05 * rng.standard_normal(shape)
    elif key.endswith("weight") and len(shape) == 1:
        v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif key.endswith("weight"):
        v = rng.standard_normal(shape) * math.sqrt(1.0 / math.prod(shape[1:]))
    else:
        raise ValueError(f"no recipe rule for {module}.{key}")
    if module == "align_net" and key == "align_output.1.weight":
        v = v * 0.01
    if module == "align_net" and key == "align_output.1.bias":
        if mean_shape is None or mean_shape.shape != tuple(shape):
            raise ValueError(f"align_output.1.bias {shape} needs mean_shape of the same shape")
        v = v + mean_shape
    return np.asarray(v, np.float64).astype(dtype)


def rebuild_state_dicts(recipe: Mapping[str, Any], dtype: Any = np.float32) -> StateDicts:
    """Returns {module: {key: array}} for all six modules, in the recipe's key order.

    ``dtype``: float32 (the release's, values rounded from float64) or float64 (unrounded).
    """
    mean_shape = np.asarray(recipe["mean_shape"], np.float64)
    out: StateDicts = {}
    for module in MODULES:
        out[module] = {key: rule_value(recipe["tag"], module, key, tuple(shape), mean_shape, dtype)
                       for key, shape in recipe["modules"][module]}
    return out


def save_pth(state_dicts: StateDicts, directory: str | os.PathLike, epoch: int | str) -> list[str]:
    """Writes the six ``<module>_<epoch>.pth`` files (OrderedDicts of tensors). Needs torch."""
    import torch  # the optional extra

    os.makedirs(directory, exist_ok=True)
    paths = []
    for module in MODULES:
        sd = collections.OrderedDict(
            (k, torch.from_numpy(np.array(v))) for k, v in state_dicts[module].items())
        path = pth_path(directory, module, epoch)
        torch.save(sd, path)
        paths.append(path)
    return paths
