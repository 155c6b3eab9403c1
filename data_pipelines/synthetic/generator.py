"""Synthetic AU sequences: subjects, smooth AU intensity episodes, folds and labels.

Intensities (0..5) are sums of onset-apex-offset episodes of expression prototypes (co-occurrence
6+12(+25), 1+4+15, 1+2+25+26, 4+7+23+24, 9+10+17) and of single AUs, plus a smooth sub-threshold
random walk, 14+17; 12/15 and 24/25 are made mutually exclusive smoothly (the weaker is cancelled by the
stronger). Everything is drawn from ``np.random.default_rng((seed, subject, sequence))``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cv2
import numpy as np

from algrnet_jax import au_sets
from data_pipelines.synthetic import face

PROTOTYPES: tuple[tuple[int, ...], ...] = ((6, 12), (6, 12, 25), (1, 4, 15), (1, 2, 25, 26), (4, 7, 23, 24),
                                           (9, 10, 17), (14, 17))
PROTOTYPE_P = np.array([0.15, 0.1, 0.16, 0.16, 0.16, 0.15, 0.12])
NOISE_PAD = 64
EXCLUSIVE: tuple[tuple[int, int], ...] = ((12, 15), (24, 25))


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Generator size and options."""

    num_subjects: int = 24
    sequences_per_subject: int = 4
    frames_per_sequence: int = 40
    image_size: int = 200
    seed: int = 0
    paralysis: bool = False
    episodes_per_sequence: float = 3.5    # mean prototype episodes per sequence
    singles_per_sequence: float = 2.0     # mean single-AU episodes per sequence
    noise_std: float = 3.0                # sensor noise (uint8 units)
    pose_jitter: float = 1.0              # scale of the per-frame pose jitter (0: none)
    # AUs that are labelled but not drawn (neither appearance nor landmark motion): visible only through the
    # partners of their co-occurrence prototypes, a test that rewards relational models by construction.
    hidden_aus: tuple[int, ...] = ()
    # Mechanism options (docs/mechanisms.md): sets where exactly one ALGRNet part is necessary.
    # independent: only single-AU episodes (no prototypes, no exclusions), so AUs are uncorrelated except
    # through derived_aus; singles_per_sequence then sets the base rates.
    independent: bool = False
    # (AU, partners): the AU's intensity is the min of its partners' (its occurrence is the AND of theirs);
    # labelled but not drawn, so only the partners reveal it.
    derived_aus: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # AUs whose appearance change (pixels of the frame with the AU minus without it) is drawn shifted by a
    # per-subject offset of `displacement` interocular units in a per-subject direction; the landmarks stay
    # those of the frame without the AU.
    displaced_aus: tuple[int, ...] = ()
    displacement: float = 0.0
    # AUs drawn only as a mark outside every AU region (beside each eye, at the temples), never in their regions.
    outside_aus: tuple[int, ...] = ()


SIZES: dict[str, SynthConfig] = {
    "tiny": SynthConfig(num_subjects=6, sequences_per_subject=1, frames_per_sequence=4),
    "small": SynthConfig(num_subjects=24, sequences_per_subject=4, frames_per_sequence=32),
    "medium": SynthConfig(num_subjects=48, sequences_per_subject=6, frames_per_sequence=35),
}


def num_frames(cfg: SynthConfig) -> int:
    """Frames the generator yields: subjects x sequences x frames per sequence."""
    return cfg.num_subjects * cfg.sequences_per_subject * cfg.frames_per_sequence


def subject_id(i: int) -> str:
    """``subject_id(0) == "S001"``."""
    return f"S{i + 1:03d}"


def subject_fold(i: int) -> int:
    """Subject-exclusive fold 1..3 of subject index ``i`` (balanced round robin)."""
    return i % 3 + 1


def subject_grade(cfg: SynthConfig, i: int) -> int:
    """Paralysis grade 0..3 of subject ``i`` (balanced within each fold); 0 without paralysis."""
    return (i // 3) % 4 if cfg.paralysis else 0


def occurrence(intensity: np.ndarray, label_set: str, threshold: float = 2.0) -> np.ndarray:
    """Occurrence labels int8 ``[..., n]`` of ``label_set`` from intensities ``[..., 15]`` (SYNTH_AUS order)."""
    if label_set not in au_sets.AU_SETS:
        raise ValueError(f"unknown label set {label_set!r}; choose from {', '.join(au_sets.AU_SETS)}")
    x = np.asarray(intensity)
    if x.shape[-1] != face.NUM_AUS:
        raise ValueError(f"intensity must have {face.NUM_AUS} entries (SYNTH_AUS order), got shape {x.shape}")
    idx = [face.AU_INDEX[a] for a in au_sets.AU_SETS[label_set]]
    return (x[..., idx] >= threshold).astype(np.int8)


def _envelope(t: np.ndarray, start: float, onset: float, apex: float, offset: float) -> np.ndarray:
    """Smooth onset-apex-offset curve in [0, 1] over frame times ``t``."""
    up = np.clip((t - start) / onset, 0, 1)
    down = np.clip((t - start - onset - apex) / offset, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * up) - (0.5 - 0.5 * np.cos(np.pi * down))


def intensities(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """One sequence's AU intensities float32 ``[T, 15]`` in 0..5, smooth over frames."""
    t_len = cfg.frames_per_sequence
    t = np.arange(t_len, dtype=np.float64)
    span = max(t_len, 8)
    out = np.zeros((t_len, face.NUM_AUS))

    def episode(aus, peak):
        onset, apex, offset = rng.uniform(0.1, 0.3, 3) * span * np.array([1.0, 1.5, 1.0])
        start = rng.uniform(-0.5 * span, 0.9 * t_len)
        env = _envelope(t, start, onset, apex, offset)
        for au in aus:
            out[:, face.AU_INDEX[au]] += peak * rng.uniform(0.65, 1.0) * env

    for _ in range(0 if cfg.independent else rng.poisson(cfg.episodes_per_sequence)):
        proto = PROTOTYPES[rng.choice(len(PROTOTYPES), p=PROTOTYPE_P)]
        episode(proto, rng.uniform(1.8, 5.0))
    for _ in range(rng.poisson(cfg.singles_per_sequence)):
        episode((au_sets.SYNTH_AUS[rng.integers(face.NUM_AUS)],), rng.uniform(1.5, 4.5))
    # Smooth sub-threshold activity (random walk through a moving average).
    walk = np.cumsum(rng.normal(0, 0.25, (t_len + 6, face.NUM_AUS)), 0)
    walk = np.abs(walk[3:3 + t_len] - walk[3:3 + t_len].mean(0)) * 0.6
    out += np.minimum(walk, 1.2)
    if not cfg.independent:
        for a, b in EXCLUSIVE:
            ia, ib = face.AU_INDEX[a], face.AU_INDEX[b]
            x, y = out[:, ia].copy(), out[:, ib].copy()
            out[:, ia], out[:, ib] = np.maximum(x - y, 0), np.maximum(y - x, 0)
    return np.clip(out, 0.0, 5.0).astype(np.float32)


def derive(cfg: SynthConfig, intensity: np.ndarray) -> np.ndarray:
    """``intensity`` [T, 15] with each of ``cfg.derived_aus`` set to the min of its partners' (a copy)."""
    out = np.array(intensity, np.float32)
    for au, partners in cfg.derived_aus:
        out[:, face.AU_INDEX[au]] = out[:, [face.AU_INDEX[p] for p in partners]].min(1)
    return out


def all_intensities(cfg: SynthConfig) -> np.ndarray:
    """The intensities ``generate`` yields, in its order, without rendering: float32 ``[N, 15]``."""
    return np.concatenate([derive(cfg, intensities(np.random.default_rng((cfg.seed, i, q + 1)), cfg))
                           for i in range(cfg.num_subjects) for q in range(cfg.sequences_per_subject)])


def _pose(rng: np.random.Generator, t_len: int, amount: float) -> np.ndarray:
    """Smooth per-frame pose (angle deg, log-scale, dx, dy) ``[T, 4]``."""
    steps = rng.normal(0, 1, (t_len, 4)) * np.array([0.4, 0.004, 0.4, 0.4])
    base = rng.normal(0, 1, 4) * np.array([2.0, 0.02, 1.5, 1.5])
    return (base + np.cumsum(steps, 0)) * amount


def pose_points(points: np.ndarray, pose: np.ndarray, size: int) -> np.ndarray:
    """Applies a pose (angle, log-scale, dx, dy) about the template centre and scales to ``size``."""
    ang = np.deg2rad(pose[0])
    sc = np.exp(pose[1])
    c, s = np.cos(ang) * sc, np.sin(ang) * sc
    ctr = np.array([100.0, 95.0])
    p = (points - ctr) @ np.array([[c, s], [-s, c]]) + ctr + pose[2:4]
    return p * (size / face.BASE_SIZE)


@dataclasses.dataclass
class Subject:
    """A subject's identity and cached per-size layers."""

    index: int
    identity: face.Identity
    background: np.ndarray
    light: np.ndarray
    noise: np.ndarray         # int16 [S + NOISE_PAD, S + NOISE_PAD, 3] bank; frames crop it at random offsets


def make_subject(cfg: SynthConfig, i: int) -> Subject:
    """Subject ``i`` of ``cfg`` (its face identity and noise bank), seeded by ``(cfg.seed, i)``."""
    rng = np.random.default_rng((cfg.seed, i, 0xFACE))
    ident = face.sample_identity(rng, subject_grade(cfg, i))
    n = cfg.image_size + NOISE_PAD
    noise = np.round(rng.standard_normal((n, n, 3), np.float32) * cfg.noise_std).astype(np.int16)
    return Subject(i, ident, face.background(ident, cfg.image_size), face.lighting(ident, cfg.image_size), noise)


def subject_offset(cfg: SynthConfig, i: int) -> np.ndarray:
    """Where subject ``i`` draws the ``displaced_aus``: (dx, dy) in interocular units, length
    ``cfg.displacement``, direction drawn from ``(cfg.seed, i)`` (the same for every frame of the subject)."""
    if not cfg.displaced_aus or cfg.displacement == 0:
        return np.zeros(2)
    angle = np.random.default_rng((cfg.seed, i, 0xADA)).uniform(0.0, 2.0 * np.pi)
    return cfg.displacement * np.array([np.cos(angle), np.sin(angle)])


def outside_mark_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[2, 2]`` (x, y) and axes ``[2]`` (pixels) of the two marks of the ``outside_aus``: beside each
    outer eye corner, towards the temple, outside every ``au_region_mask`` (tested)."""
    lm = np.asarray(landmarks, np.float64)
    d = float(face.interocular(lm))
    centres = np.stack([lm[19] + (-0.5 * d, 0.25 * d), lm[28] + (0.5 * d, 0.25 * d)])
    return centres, np.array([0.08 * d, 0.11 * d])


def draw_outside_mark(img: np.ndarray, landmarks: np.ndarray, strength: float) -> np.ndarray:
    """``img`` uint8 ``[S, S, 3]`` with the outside marks blended in at opacity ``0.9 * strength`` (0..1)."""
    centres, axes = outside_mark_centres(landmarks)
    alpha = np.zeros(img.shape[:2], np.uint8)
    for c in centres:
        face._ellipse(alpha, c, axes, 0, (255,))
    a = (alpha.astype(np.float32) / 255.0 * 0.9 * float(np.clip(strength, 0.0, 1.0)))[..., None]
    return np.round(img * (1 - a) + np.array([25.0, 20.0, 30.0]) * a).astype(np.uint8)


def render_frame(subj: Subject, intensity: np.ndarray, pose: np.ndarray, noise: np.ndarray | None,
                 size: int, *, displaced: np.ndarray | None = None, offset: np.ndarray | None = None,
                 outside: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Renders one frame: (image uint8 ``[S, S, 3]``, landmarks float32 ``[49, 2]``).

    ``displaced`` [15]: intensities drawn on top of ``intensity`` with their pixel change shifted by ``offset``
    (dx, dy, interocular units; the landmarks stay those of ``intensity``); ``outside`` (0..1): strength of the
    mark drawn outside every AU region."""
    lm, jaw = face.geometry(subj.identity, intensity)
    lm, jaw = pose_points(lm, pose, size), pose_points(jaw, pose, size)
    shift = displaced is not None and bool(np.any(displaced > 0))
    if not shift and outside <= 0:
        img = face.render(subj.identity, lm, jaw, intensity, size, noise, subj.background, subj.light)
        return img, lm.astype(np.float32)
    img = face.render(subj.identity, lm, jaw, intensity, size, None, subj.background, subj.light)
    if shift:
        both = intensity + displaced
        lm2, jaw2 = face.geometry(subj.identity, both)
        lm2, jaw2 = pose_points(lm2, pose, size), pose_points(jaw2, pose, size)
        change = face.render(subj.identity, lm2, jaw2, both, size, None, subj.background,
                             subj.light).astype(np.float32) - img
        dx, dy = np.asarray(offset, np.float64) * float(face.interocular(lm))
        change = cv2.warpAffine(change, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), (size, size),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        img = np.clip(np.round(img + change), 0, 255).astype(np.uint8)
    if outside > 0:
        img = draw_outside_mark(img, lm, outside)
    if noise is not None:
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return img, lm.astype(np.float32)


def check_config(cfg: SynthConfig) -> None:
    """Raises ValueError naming the SynthConfig field when a size or a mechanism option is invalid."""
    if min(cfg.num_subjects, cfg.sequences_per_subject, cfg.frames_per_sequence) < 1:
        raise ValueError(f"SynthConfig sizes must be >= 1, got {cfg}")
    if cfg.image_size < 32:
        raise ValueError(f"SynthConfig.image_size must be >= 32, got {cfg.image_size}")
    fields = {"hidden_aus": cfg.hidden_aus, "derived_aus": [a for a, _ in cfg.derived_aus],
              "derived_aus partners": [p for _, ps in cfg.derived_aus for p in ps],
              "displaced_aus": cfg.displaced_aus, "outside_aus": cfg.outside_aus}
    for field, aus in fields.items():
        unknown = sorted(set(aus) - set(face.AU_INDEX))
        if unknown:
            raise ValueError(f"SynthConfig.{field}: {unknown} not rendered by the generator ({au_sets.SYNTH_AUS})")
    derived = [a for a, _ in cfg.derived_aus]
    for au, partners in cfg.derived_aus:
        if not partners or au in partners or set(partners) & set(derived):
            raise ValueError(f"SynthConfig.derived_aus: AU{au} needs partners other than itself and other derived "
                             f"AUs, got {partners}")
    special = [*derived, *cfg.displaced_aus, *cfg.outside_aus]
    if len(set(special)) != len(special):
        raise ValueError("SynthConfig: an AU may be in only one of derived_aus, displaced_aus, outside_aus")
    if len(cfg.outside_aus) > 1:
        raise ValueError(f"SynthConfig.outside_aus: at most one AU (its mark has one place), got {cfg.outside_aus}")
    if cfg.displacement < 0 or (cfg.displaced_aus and cfg.displacement == 0):
        raise ValueError(f"SynthConfig.displacement must be > 0 with displaced_aus, got {cfg.displacement}")


def render_options(cfg: SynthConfig, subj: Subject, intensity: np.ndarray, pose: np.ndarray,
                   noise: np.ndarray | None, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renders one frame of intensities ``intensity`` [15] (after ``derive``) as ``cfg`` draws them: hidden and
    derived AUs not at all, displaced AUs shifted by ``offset`` (``subject_offset``), outside AUs as the marks.
    Returns (image uint8 ``[S, S, 3]``, landmarks float32 ``[49, 2]``)."""
    drawn = np.ones(face.NUM_AUS, np.float32)
    not_drawn = [*cfg.hidden_aus, *(a for a, _ in cfg.derived_aus), *cfg.displaced_aus, *cfg.outside_aus]
    drawn[[face.AU_INDEX[a] for a in not_drawn]] = 0.0
    displaced = None
    if cfg.displaced_aus:
        displaced = np.zeros(face.NUM_AUS, np.float32)
        idx = [face.AU_INDEX[a] for a in cfg.displaced_aus]
        displaced[idx] = intensity[idx]
    outside = float(max(intensity[face.AU_INDEX[a]] for a in cfg.outside_aus)) / 5.0 if cfg.outside_aus else 0.0
    return render_frame(subj, intensity * drawn, pose, noise, cfg.image_size, displaced=displaced, offset=offset,
                        outside=outside)


def generate(cfg: SynthConfig) -> Iterator[dict]:
    """Yields frames (subject, sequence, frame order). Keys: image uint8 [S,S,3] RGB aligned;
    landmarks float32 [49,2] (x,y); intensity float32 [15] (SYNTH_AUS order); subject 'S003';
    sequence 'S003_Q1'; frame (0-based); fold 1..3; grade 0..3 (0 without paralysis)."""
    check_config(cfg)
    size = cfg.image_size
    for i in range(cfg.num_subjects):
        subj = make_subject(cfg, i)
        sid = subject_id(i)
        offset = subject_offset(cfg, i)
        for q in range(cfg.sequences_per_subject):
            rng = np.random.default_rng((cfg.seed, i, q + 1))
            inten = derive(cfg, intensities(rng, cfg))
            poses = _pose(rng, cfg.frames_per_sequence, cfg.pose_jitter)
            for f in range(cfg.frames_per_sequence):
                oy, ox = rng.integers(NOISE_PAD, size=2)
                noise = subj.noise[oy:oy + size, ox:ox + size] if cfg.noise_std > 0 else None
                img, lm = render_options(cfg, subj, inten[f], poses[f], noise, offset)
                yield {"image": img, "landmarks": lm, "intensity": inten[f], "subject": sid,
                       "sequence": f"{sid}_Q{q + 1}", "frame": f, "fold": subject_fold(i),
                       "grade": subj.identity.grade}
