"""``algrnet``: the full ALGRNet (docs/model.md §4): adaptive regions, skip-BiLSTM relations, fusion & refining.

``get_config(arg)``: ``arg`` names the size and the label set, e.g. ``"tiny"``, ``"small,disfa"``
(``configs/common.py``); the ablations (``wo_*.py``, ``w_bi.py``) start from this config.
"""
from __future__ import annotations

import ml_collections

from algrnet_jax.configs import common


# Position and row name of this variant in the paper's ablation Tables V / VI (experiments/ablation.py).
PAPER_ABLATION_ROW: tuple[int, str] = (6, "ALGRNet")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ALGRNet at the size / label set of ``arg`` (default: paper size, BP4D's 12 AUs)."""
    return common.base_config(common.config_name(__name__), arg, arch="algrnet", adaptive=True,
                              relation="skip_bilstm", fusion_refine=True)
