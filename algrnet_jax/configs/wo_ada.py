"""``wo_ada``: ablation of the paper's Tables V/VI: ALGRNet without adaptive regions (fixed scale 0.14, no offsets).

``get_config(arg)``: ``arg`` names the size and the label set, e.g. ``"tiny"``, ``"small,disfa"``
(``configs/common.py``).
"""
from __future__ import annotations

import ml_collections

from algrnet_jax.configs import algrnet, common


# Position and row name of this variant in the paper's ablation Tables V / VI (experiments/ablation.py).
PAPER_ABLATION_ROW: tuple[int, str] = (5, "w/o Ada")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ALGRNet with fixed regions (scale model.map_scale, no offsets), at the size / label set of ``arg``."""
    config = algrnet.get_config(arg)
    config.name = common.config_name(__name__)
    config.model.adaptive = False
    return config
