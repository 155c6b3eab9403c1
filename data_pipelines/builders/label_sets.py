"""Label sets of the records: the AU sets of ``algrnet_jax.au_sets`` and "paralysis" (one grade label)."""
from __future__ import annotations

from algrnet_jax import au_sets

PARALYSIS = au_sets.PARALYSIS_LABEL_SET
LABEL_SETS: tuple[str, ...] = au_sets.LABEL_SETS


def label_set_aus(label_set: str) -> tuple[int, ...]:
    """AU numbers of a label set; ``()`` for paralysis (its single label is the grade)."""
    if label_set == PARALYSIS:
        return ()
    if label_set not in au_sets.AU_SETS:
        raise ValueError(f"unknown label set {label_set!r}; choose from {', '.join(LABEL_SETS)}")
    return au_sets.AU_SETS[label_set]


def num_labels(label_set: str) -> int:
    """Length of the ``labels`` record feature: n AUs, or 1 (the grade) for paralysis."""
    return 1 if label_set == PARALYSIS else len(label_set_aus(label_set))
