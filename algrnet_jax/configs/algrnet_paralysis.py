"""``algrnet_paralysis``: ALGRNet for facial paralysis grading: 12 muscle regions and a 4-way grade head.

``get_config(arg)``: ``arg`` names the size (``configs/common.py``); a label set in it only sets the
(unused) ``label_set``/``aus`` fields, as for the AU configs.
"""
from __future__ import annotations

import ml_collections

from algrnet_jax.configs import algrnet, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The full ALGRNet with the paralysis task at the size of ``arg``."""
    config = algrnet.get_config(arg)
    config.name = common.config_name(__name__)
    config.model.task = "paralysis"
    return config
