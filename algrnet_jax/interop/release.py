"""The file layout of a PyTorch JAA-Net release (ZhiwenShao/PyTorch-JAANet): six state_dicts per epoch.

Torch-free: shared by the converter (``interop.convert``), the fixture recipe
(``reference.recipe``) and the PyTorch baseline (``reference.torch_jaanet``).
"""
from __future__ import annotations

import os

import numpy as np

# The six state_dict files of a JAA-Net release, in the order the reference builds them.
MODULES: tuple[str, ...] = (
    "region_learning", "align_net", "local_attention_refine", "local_au_net", "global_au_feat", "au_net")

StateDicts = dict[str, dict[str, np.ndarray]]   # {module: {key: array}}


def pth_path(directory: str | os.PathLike, module: str, epoch: int | str) -> str:
    """``<directory>/<module>_<epoch>.pth`` as the JAA-Net release names its files."""
    return os.path.join(os.fspath(directory), f"{module}_{epoch}.pth")
