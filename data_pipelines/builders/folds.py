"""Which subject is in which of the three parts.

BP4D and DISFA: the subject parts of ``algrnet_jax/resources/folds.json`` (:func:`load_folds`).
Paralysis: a seeded, subject-exclusive, grade-stratified split (:func:`paralysis_folds`), unless the CSV
gives the folds.
"""
from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

import algrnet_jax
from algrnet_jax import au_sets
from data_pipelines.builders.label_files import ParalysisVideo
from data_pipelines.builders.parts import NUM_PARTS
from data_pipelines.errors import BadInputError

FOLDS_JSON = os.path.join(os.path.dirname(algrnet_jax.__file__), "resources", "folds.json")


def load_folds(dataset: str) -> dict[str, int]:
    """``subject -> part`` (1..3) of ``algrnet_jax/resources/folds.json`` for "BP4D" or "DISFA"."""
    with open(FOLDS_JSON) as f:
        parts = json.load(f)[dataset]
    return {subject: int(part) for part, subjects in parts.items() for subject in subjects}


def fold_of(subject: str, folds: dict[str, int], source: str) -> int:
    """The part of ``subject``; raises naming ``source`` when the subject is in no fold."""
    if subject not in folds:
        raise BadInputError(f"{source}: subject {subject!r} is in no fold of folds.json "
                            f"(known: {', '.join(sorted(folds)[:5])}, ...)")
    return folds[subject]


def folds_json_list_folds(dataset: str) -> Callable[[str, str], int]:
    """List-layout folds of BP4D/DISFA: from folds.json."""
    folds = load_folds(dataset)
    return lambda subject, source: fold_of(subject, folds, source)


def paralysis_folds(videos: Sequence[ParalysisVideo], seed: int = 0) -> dict[str, int]:
    """Seeded, subject-exclusive, grade-stratified 3-fold split: ``subject -> part``.

    A subject's grade is its most frequent video grade (ties: the higher grade). Subjects are
    grouped by grade (0..3), each group is shuffled with ``np.random.default_rng(seed)`` (one
    generator, groups in grade order) and dealt round-robin to parts 1, 2, 3, the dealing position
    carrying on from one grade to the next, so every part gets the same number of subjects of each
    grade up to one and the same number of subjects overall up to one. If the CSV gives folds they
    are used instead (every video must then have one, and a subject only one).
    """
    by_subject: dict[str, list[ParalysisVideo]] = collections.defaultdict(list)
    for v in videos:
        by_subject[v.subject].append(v)
    given = [v for v in videos if v.fold is not None]
    if given:
        folds: dict[str, int] = {}
        for v in videos:
            if v.fold is None:
                raise BadInputError(f"line {v.line}: video {v.video!r} has no fold while others do")
            if folds.setdefault(v.subject, v.fold) != v.fold:
                raise BadInputError(f"line {v.line}: subject {v.subject!r} in folds {folds[v.subject]} and {v.fold}")
        return folds
    grade_of = {}
    for s, vs in by_subject.items():
        counts = collections.Counter(v.grade for v in vs)
        grade_of[s] = max(counts, key=lambda g: (counts[g], g))
    rng = np.random.default_rng(seed)
    folds, pos = {}, 0
    for g in range(len(au_sets.GRADES)):
        group = sorted(s for s in grade_of if grade_of[s] == g)
        for s in rng.permutation(np.array(group, dtype=object)) if group else []:
            folds[str(s)] = pos % NUM_PARTS + 1
            pos += 1
    return folds

