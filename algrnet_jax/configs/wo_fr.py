"""``wo_fr``: ablation of the paper's Tables V/VI: ALGRNet without fusion & refining.

``get_config(arg)``: ``arg`` names the size and the label set, e.g. ``"tiny"``, ``"small,disfa"``
(``configs/common.py``).
"""
from __future__ import annotations

import ml_collections

from algrnet_jax.configs import algrnet, common


# Position and row name of this variant in the paper's ablation Tables V / VI (experiments/ablation.py).
PAPER_ABLATION_ROW: tuple[int, str] = (2, "w/o F&R")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ALGRNet without fusion & refining, at the size / label set of ``arg``."""
    config = algrnet.get_config(arg)
    config.name = common.config_name(__name__)
    config.model.fusion_refine = False
    return config
