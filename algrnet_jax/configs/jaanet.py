"""``jaanet``: the JAA-Net baseline (docs/model.md §3): fixed regions, no relation module, no fusion & refining.

``get_config(arg)``: ``arg`` names the size and the label set, e.g. ``"tiny"``, ``"small,disfa"``
(``configs/common.py``).
"""
from __future__ import annotations

import ml_collections

from algrnet_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """JAA-Net at the size / label set of ``arg`` (default: paper size, BP4D's 12 AUs)."""
    return common.base_config(common.config_name(__name__), arg, arch="jaanet", adaptive=False, relation="none",
                              fusion_refine=False)
