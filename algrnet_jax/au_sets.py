"""AU label sets, AU-centre rules, muscle regions and the 49-point landmark scheme (docs/model.md §1-§3, §6).

Neutral data module: imported by the data pipelines, the model and ``tasks`` (which builds the AU and
grading tasks on it); imports numpy only.

Everything here is data; one home for each number. Landmark indices are 0-based into the
49-point scheme: brows 0-9, nose 10-18, eyes 19-30 (left 19-24, right 25-30), mouth 31-48.
"""
from __future__ import annotations

import dataclasses

import numpy as np

NUM_LANDMARKS = 49
ALIGNED_SIZE = 200       # side of an aligned face: the alignment's output and the records' images (pixels)

# AU order of each label set (the order of the paper's tables and of every label vector).
AU_SETS: dict[str, tuple[int, ...]] = {
    "bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    "disfa": (1, 2, 4, 6, 9, 12, 25, 26),
}

# Label sets of the records: the AU sets, and the grading set whose records hold one label (the grade).
PARALYSIS_LABEL_SET = "paralysis"
LABEL_SETS: tuple[str, ...] = (*AU_SETS, PARALYSIS_LABEL_SET)

# All AUs the synthetic generator renders (union of both sets plus AU14/15/17/23/24 etc.).
SYNTH_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23, 24, 25, 26)


@dataclasses.dataclass(frozen=True)
class CentreRule:
    """Two landmark indices; both centres are shifted vertically by ``dy_ruler * ruler``.

    ruler = |x[22] - x[25]| (inner eye corners), as in the JAA-Net release.
    """

    first: int
    second: int
    dy_ruler: float = 0.0


AU_CENTRE_RULES: dict[int, CentreRule] = {
    1: CentreRule(4, 5, -1.0 / 2.0),
    2: CentreRule(1, 8, -1.0 / 3.0),
    4: CentreRule(2, 7, 1.0 / 3.0),
    6: CentreRule(24, 29, 1.0),
    7: CentreRule(21, 26, 0.0),
    9: CentreRule(15, 17, -1.0 / 2.0),
    10: CentreRule(43, 45, 0.0),
    12: CentreRule(31, 37, 0.0),
    14: CentreRule(31, 37, 0.0),
    15: CentreRule(31, 37, 0.0),
    17: CentreRule(39, 41, 1.0 / 2.0),
    23: CentreRule(34, 40, 0.0),
    24: CentreRule(34, 40, 0.0),
    25: CentreRule(34, 40, 0.0),
    26: CentreRule(39, 41, 1.0 / 2.0),
}

RULER_INDICES = (22, 25)

# Horizontal-flip permutation of the 49 landmarks, 0-based (reflect_49.txt of the JAA-Net release,
# which is 1-based): after a flip, point i takes the mirrored coordinates of point REFLECT_49[i].
REFLECT_49: tuple[int, ...] = tuple(
    i - 1
    for i in (10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12, 13, 14, 19, 18, 17, 16, 15, 29, 28, 27, 26, 31,
              30, 23, 22, 21, 20, 25, 24, 38, 37, 36, 35, 34, 33, 32, 43, 42, 41, 40, 39, 46, 45, 44,
              49, 48, 47)
)

# Eye landmarks (0-based) whose means give the eye centres used for alignment and d_o.
LEFT_EYE = tuple(range(19, 25))
RIGHT_EYE = tuple(range(25, 31))


@dataclasses.dataclass(frozen=True)
class MuscleRegion:
    """A paralysis region: centre = mean of ``indices`` landmarks, shifted by ``dy_ruler * ruler`` in y."""

    name: str
    indices: tuple[int, ...]
    dy_ruler: float = 0.0


# The 12 muscle regions of the paralysis model. "left"/"right" are image left/right (the subject's
# right/left). Indices are 0-based into the 49-point scheme (see above): brows 0-4 / 5-9, nose 10-18
# (14 and 18 the outer nostril points), eyes 19-24 / 25-30, mouth corners 31 / 37, lower lip 38-42.
PARALYSIS_REGIONS: tuple[MuscleRegion, ...] = (
    MuscleRegion("brow_left", (1, 2, 3), -1.0 / 3.0),      # frontalis, above the brow
    MuscleRegion("brow_right", (6, 7, 8), -1.0 / 3.0),
    MuscleRegion("eye_left", tuple(range(19, 25))),         # orbicularis oculi, eye centre
    MuscleRegion("eye_right", tuple(range(25, 31))),
    MuscleRegion("cheek_left", tuple(range(19, 25)), 1.0),  # zygomaticus / cheek raiser, below the eye
    MuscleRegion("cheek_right", tuple(range(25, 31)), 1.0),
    MuscleRegion("nose_left", (14,)),                       # nasalis / levator labii, nostril side
    MuscleRegion("nose_right", (18,)),
    MuscleRegion("mouth_left", (31,)),                      # mouth corners (risorius, orbicularis oris)
    MuscleRegion("mouth_right", (37,)),
    MuscleRegion("chin_left", (41,), 0.5),                  # mentalis / depressors, below the lower lip
    MuscleRegion("chin_right", (39,), 0.5),
)


# Facial paralysis grades (House-Brackmann 1 / 2 / 3-4 / 5-6).
GRADES: tuple[str, ...] = ("normal", "low", "medium", "high")


def house_brackmann_to_grade(hb: int) -> int:
    """Maps a House-Brackmann score 1..6 to the 4-way grade index 0..3."""
    if not 1 <= int(hb) <= 6:
        raise ValueError(f"House-Brackmann score must be in 1..6, got {hb!r}")
    return {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}[int(hb)]


def au_names(label_set: str) -> list[str]:
    return [f"AU{a}" for a in AU_SETS[label_set]]


def centre_rule_arrays(aus: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (indices [n, 2] int32, dy_ruler [n] float32) for the given AU order."""
    idx = np.array([[AU_CENTRE_RULES[a].first, AU_CENTRE_RULES[a].second] for a in aus], np.int32)
    dy = np.array([AU_CENTRE_RULES[a].dy_ruler for a in aus], np.float32)
    return idx, dy
