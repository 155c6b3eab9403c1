"""Label sets of the records: the AU sets of ``algrnet_jax.au_sets`` and "paralysis" (one grade label)."""
from __future__ import annotations

from algrnet_jax import au_sets, tasks

PARALYSIS = au_sets.PARALYSIS_LABEL_SET
LABEL_SETS: tuple[str, ...] = au_sets.LABEL_SETS


def label_set_aus(label_set: str) -> tuple[int, ...]:
    """AU numbers of a label set; ``()`` for paralysis (its single label is the grade)."""
    tasks.task_for_label_set(label_set)   # ValueError naming the known label sets
    return au_sets.AU_SETS.get(label_set, ())


def num_labels(label_set: str) -> int:
    """Length of the ``labels`` record feature: n AUs, or 1 (the grade) for paralysis."""
    return len(tasks.task_for_label_set(label_set).record_label_names(label_set))
