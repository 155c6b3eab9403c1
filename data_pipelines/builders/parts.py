"""The three subject-exclusive parts of every dataset and the splits of a fold.

Records are written in splits ``part1..part3``; fold k (1..3) tests on part k and trains on the other two.
"""
from __future__ import annotations

NUM_PARTS = 3
PARTS: tuple[str, ...] = tuple(f"part{k}" for k in range(1, NUM_PARTS + 1))


def part_name(part: int) -> str:
    """``part_name(2) == "part2"``."""
    if not 1 <= int(part) <= NUM_PARTS:
        raise ValueError(f"part/fold must be in 1..{NUM_PARTS}, got {part!r}")
    return f"part{int(part)}"


def train_split(fold: int) -> str:
    """The training split of a fold: the other two parts, e.g. ``train_split(1) == "part2+part3"``."""
    test = part_name(fold)
    return "+".join(p for p in PARTS if p != test)


def test_split(fold: int) -> str:
    """The test split of a fold: ``test_split(k) == f"part{k}"``."""
    return part_name(fold)
