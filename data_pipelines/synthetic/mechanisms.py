"""Mechanism sets: synthetic data where exactly one ALGRNet part is necessary (docs/mechanisms.md).

Every set draws its AUs independently (``SynthConfig.independent``: single-AU episodes only), so no AU reveals
another except through the one dependency the set builds:

- ``sb``: AU ``au`` (default 2) is labelled but not drawn; its intensity is the min of its ``partners`` (default
  AU12, far from AU2's brow region and two branches away in the small model's order 1, 2, 4, 12), so its
  occurrence is the AND of theirs. Its local head can only be right through the relation term.
- ``skip``: the same with the last branch hidden and the first as partner (AU12 := AU1), the distractors AU2 and AU4
  between them uncorrelated with both.
- ``ada``: AU ``au`` (default 12) is drawn with its pixel change shifted by a per-subject offset of
  ``displacement`` (default 0.3) interocular units (the region half-width of the small model is about 0.22).
- ``fr``: AU ``au`` (default 4) is drawn only as a mark beside both eyes, outside every AU region.

The rule ceiling of a set is the best F1 that any rule on the true labels of the AU's evidence (its partners for
``sb``/``skip``; the AU itself for ``ada``/``fr``, where it is drawn) reaches on the test frames; the blind F1 is
that of predicting "present" everywhere, what a head without access to the evidence can be sure of.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence

import cv2
import numpy as np

from data_pipelines.synthetic import face, generator
from data_pipelines.synthetic.generator import SIZES, SynthConfig, all_intensities, subject_fold

TESTS = ("sb", "skip", "ada", "fr")
SINGLES_PER_SEQUENCE = 14.0      # single-AU episodes per sequence in the independent sets: base rates ~20 %
MAX_PARTNERS = 4                 # the rule ceiling tries all 2^(2^k) rules of k partners
DEFAULTS: dict[str, dict] = {
    "sb": {"au": 2, "partners": (12,)},
    "skip": {"au": 12, "partners": (1,)},
    "ada": {"au": 12, "displacement": 0.3},
    "fr": {"au": 4},
}

# Builder config names (Mechanism.name): bp4d_<size>_<test>, options appended (_au<N>, _p<a>-<b>, _d<x>)
_NAME = re.compile(rf"bp4d_(?P<size>[a-z]+)_(?P<test>{'|'.join(TESTS)})(?:_au(?P<au>\d+))?"
                   r"(?:_p(?P<partners>\d+(?:-\d+)*))?(?:_d(?P<d>\d+(?:\.\d+)?(?:e-?\d+)?))?")


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One mechanism set: the test, the tested AU and its options (``partners`` for sb/skip, ``displacement``
    for ada)."""

    test: str
    au: int
    partners: tuple[int, ...] = ()
    displacement: float = 0.0

    def evidence(self) -> tuple[int, ...]:
        """The AUs whose true labels the rule ceiling reads."""
        return self.partners if self.test in ("sb", "skip") else (self.au,)

    def name(self, size: str = "small") -> str:
        """Builder config name: ``bp4d_<size>_<test>`` for the defaults, options appended otherwise
        (``bp4d_small_sb_au1_p12-25``, ``bp4d_small_ada_au12_d0.4``)."""
        base = f"bp4d_{size}_{self.test}"
        if self == mechanism(self.test):
            return base
        extra = f"_au{self.au}"
        if self.partners:
            extra += "_p" + "-".join(str(p) for p in self.partners)
        if self.test == "ada":
            extra += f"_d{self.displacement:g}"
        return base + extra

    def options(self) -> str:
        """The options that differ from the test's defaults, short (``partners 12+25``, ``displacement 0.6``;
        empty for the defaults); the AU is reported on its own."""
        d = DEFAULTS[self.test]
        out = []
        if self.partners and tuple(self.partners) != tuple(d.get("partners", ())):
            out.append("partners " + "+".join(str(p) for p in self.partners))
        if self.test == "ada" and self.displacement != d["displacement"]:
            out.append(f"displacement {self.displacement:g}")
        return ", ".join(out)

    def describe(self) -> str:
        """One line for builder descriptions and reports."""
        if self.test in ("sb", "skip"):
            return (f"AU{self.au} labelled but not drawn, AU{self.au} = "
                    + " AND ".join(f"AU{p}" for p in self.partners))
        if self.test == "ada":
            return f"AU{self.au} drawn shifted by {self.displacement:g} interocular units per subject"
        return f"AU{self.au} drawn only outside every AU region (beside the eyes)"


def parse_name(name: str) -> tuple[Mechanism, str] | None:
    """``(mechanism, size)`` of a builder config name that :meth:`Mechanism.name` writes (``bp4d_small_ada``,
    ``bp4d_small_ada_au12_d0.6``, ``bp4d_tiny_sb_au1_p12-25``); None for any other name."""
    m = _NAME.fullmatch(name)
    if m is None or m["size"] not in SIZES:
        return None
    partners = [int(p) for p in m["partners"].split("-")] if m["partners"] else None
    try:
        mech = mechanism(m["test"], None if m["au"] is None else int(m["au"]), partners,
                         None if m["d"] is None else float(m["d"]))
    except ValueError:
        return None
    return (mech, m["size"]) if mech.name(m["size"]) == name else None


def mechanism(test: str, au: int | None = None, partners: Sequence[int] | None = None,
              displacement: float | None = None) -> Mechanism:
    """The set of ``test`` with its defaults (``DEFAULTS``) replaced by the given options; ValueError naming the
    option when it does not fit the test."""
    if test not in TESTS:
        raise ValueError(f"unknown mechanism test {test!r}; choose from {', '.join(TESTS)}")
    d = DEFAULTS[test]
    au = d["au"] if au is None else int(au)
    if au not in face.AU_INDEX:
        raise ValueError(f"--au {au}: not rendered by the generator (choose from {sorted(face.AU_INDEX)})")
    if test in ("sb", "skip"):
        if displacement is not None:
            raise ValueError(f"--displacement applies to the ada test only, not {test}")
        partners = tuple(d["partners"] if partners is None else (int(p) for p in partners))
        if not partners or len(partners) > MAX_PARTNERS or au in partners or len(set(partners)) != len(partners):
            raise ValueError(f"--partners {list(partners)}: give 1..{MAX_PARTNERS} distinct AUs other than AU{au}")
        unknown = sorted(set(partners) - set(face.AU_INDEX))
        if unknown:
            raise ValueError(f"--partners {unknown}: not rendered by the generator")
        return Mechanism(test, au, partners)
    if partners is not None:
        raise ValueError(f"--partners applies to the sb and skip tests only, not {test}")
    if test == "ada":
        displacement = d["displacement"] if displacement is None else float(displacement)
        if not displacement > 0:
            raise ValueError(f"--displacement must be > 0 (interocular units), got {displacement}")
        return Mechanism(test, au, displacement=displacement)
    if displacement is not None:
        raise ValueError(f"--displacement applies to the ada test only, not {test}")
    return Mechanism(test, au)


def synth_config(mech: Mechanism, size: str = "small") -> SynthConfig:
    """The generator config of ``mech`` at generator size ``size`` (a key of ``SIZES``)."""
    base = dataclasses.replace(SIZES[size], independent=True, singles_per_sequence=SINGLES_PER_SEQUENCE)
    if mech.test in ("sb", "skip"):
        return dataclasses.replace(base, derived_aus=((mech.au, mech.partners),))
    if mech.test == "ada":
        return dataclasses.replace(base, displaced_aus=(mech.au,), displacement=mech.displacement)
    return dataclasses.replace(base, outside_aus=(mech.au,))


def f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 (%) of binary ``pred`` against ``true`` (both [N]); 0 when there is no true or predicted positive."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = float(np.sum(pred & true))
    denom = float(pred.sum() + true.sum())
    return 200.0 * tp / denom if denom else 0.0


def rule_ceiling(target: np.ndarray, evidence: np.ndarray) -> float:
    """The best F1 (%) over every rule that maps the evidence labels to a prediction.

    Args:
      target: [N] 0/1 labels of the tested AU.
      evidence: [N, k] 0/1 labels the rule may read (k <= ``MAX_PARTNERS``).
    Each of the 2^(2^k) rules (a set of evidence patterns predicted "present") is scored exactly.
    """
    target = np.asarray(target).astype(bool)
    ev = np.asarray(evidence).astype(bool)
    if ev.ndim != 2 or len(ev) != len(target):
        raise ValueError(f"evidence must be [N, k] with N = {len(target)}, got {ev.shape}")
    k = ev.shape[1]
    if not 1 <= k <= MAX_PARTNERS:
        raise ValueError(f"the rule ceiling reads 1..{MAX_PARTNERS} evidence labels, got {k}")
    pattern = ev.astype(np.int64) @ (1 << np.arange(k))                   # [N] in 0 .. 2^k - 1
    pos = np.bincount(pattern[target], minlength=1 << k).astype(np.float64)
    neg = np.bincount(pattern[~target], minlength=1 << k).astype(np.float64)
    rules = np.array(list(itertools.product((0.0, 1.0), repeat=1 << k)))  # [2^(2^k), 2^k]
    tp, fp = rules @ pos, rules @ neg
    denom = 2 * tp + fp + (pos.sum() - tp)
    best = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    return float(100.0 * best.max())


def fold_labels(mech: Mechanism, size: str = "small", fold: int = 1, threshold: float = 2.0) -> dict[int, np.ndarray]:
    """True occurrence labels (int8 [N]) of every generator AU on the test part ``fold`` of ``mech``'s set."""
    cfg = synth_config(mech, size)
    inten = all_intensities(cfg)
    per_subject = cfg.sequences_per_subject * cfg.frames_per_sequence
    keep = np.repeat([subject_fold(i) == fold for i in range(cfg.num_subjects)], per_subject)
    occ = (inten[keep] >= threshold).astype(np.int8)
    return {au: occ[:, i] for au, i in face.AU_INDEX.items()}


def ceilings(mech: Mechanism, size: str = "small", fold: int = 1) -> dict[str, float]:
    """``rule_ceiling`` and ``blind_f1`` (predict present everywhere) of the tested AU on the test part."""
    labels = fold_labels(mech, size, fold)
    target = labels[mech.au]
    evidence = np.stack([labels[a] for a in mech.evidence()], 1)
    return {"rule_ceiling": rule_ceiling(target, evidence), "blind_f1": f1(np.ones_like(target), target),
            "base_rate": float(100.0 * target.mean())}


def preview(out_png: str, seed: int = 0, subjects: Sequence[int] = (0, 1)) -> None:
    """Writes a picture of the four sets: per set and subject, the face at rest, with the set's evidence active
    (partners at intensity 4.5 for sb/skip, the AU at 4.5 otherwise) and the pixel change x3, with the tested AU's
    region (``au_region_mask``) outlined in green and the evidence AUs' regions in yellow."""
    tiles, labels = [], []
    for test in TESTS:
        mech = mechanism(test)
        cfg = dataclasses.replace(synth_config(mech), seed=seed, noise_std=0.0)
        row = []
        for i in subjects:
            subj = generator.make_subject(cfg, i)
            rest = np.zeros(face.NUM_AUS, np.float32)
            active = rest.copy()
            for au in mech.evidence():
                active[face.AU_INDEX[au]] = 4.5
            active = generator.derive(cfg, active[None])[0]
            offset = generator.subject_offset(cfg, i)
            a, lm = generator.render_options(cfg, subj, rest, np.zeros(4), None, offset)
            b, _ = generator.render_options(cfg, subj, active, np.zeros(4), None, offset)
            change = np.clip(np.abs(b.astype(np.int16) - a).astype(np.float32) * 3, 0, 255).astype(np.uint8)
            for img in (a, b, change):
                img = img.copy()
                outlines = [*((e, (255, 220, 0)) for e in mech.evidence() if e != mech.au), (mech.au, (0, 220, 0))]
                for au, colour in outlines:
                    contours, _ = cv2.findContours(face.au_region_mask(au, lm).astype(np.uint8), cv2.RETR_EXTERNAL,
                                                   cv2.CHAIN_APPROX_SIMPLE)
                    cv2.drawContours(img, contours, -1, colour, 1)
                row.append(img)
        tiles.append(np.concatenate(row, 1))
        labels.append(f"{test}: {mech.describe()}")
    rows = []
    for tile, text in zip(tiles, labels):
        bar = np.full((22, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, text + "  (per subject: rest | evidence on | change x3)", (4, 16), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([bar, tile], 0))
    cv2.imwrite(out_png, cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m data_pipelines.synthetic.mechanisms",
                                     description="Picture of the mechanism sets (docs/mechanisms.md).")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preview(args.out, args.seed)
    print(f"wrote {args.out}")
