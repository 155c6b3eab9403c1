"""Synthetic AU sequences: subjects, smooth AU intensity episodes, folds and labels.

Intensities (0..5) are sums of onset-apex-offset episodes of expression prototypes (co-occurrence
6+12(+25), 1+4+15, 1+2+25+26, 4+7+23+24, 9+10+17) and of single AUs, plus a smooth sub-threshold
random walk, 14+17; 12/15 and 24/25 are made mutually exclusive smoothly (the weaker is cancelled by the
stronger). Everything is drawn from ``np.random.default_rng((seed, subject, sequence))``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

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

    for _ in range(rng.poisson(cfg.episodes_per_sequence)):
        proto = PROTOTYPES[rng.choice(len(PROTOTYPES), p=PROTOTYPE_P)]
        episode(proto, rng.uniform(1.8, 5.0))
    for _ in range(rng.poisson(cfg.singles_per_sequence)):
        episode((au_sets.SYNTH_AUS[rng.integers(face.NUM_AUS)],), rng.uniform(1.5, 4.5))
    # Smooth sub-threshold activity (random walk through a moving average).
    walk = np.cumsum(rng.normal(0, 0.25, (t_len + 6, face.NUM_AUS)), 0)
    walk = np.abs(walk[3:3 + t_len] - walk[3:3 + t_len].mean(0)) * 0.6
    out += np.minimum(walk, 1.2)
    for a, b in EXCLUSIVE:
        ia, ib = face.AU_INDEX[a], face.AU_INDEX[b]
        x, y = out[:, ia].copy(), out[:, ib].copy()
        out[:, ia], out[:, ib] = np.maximum(x - y, 0), np.maximum(y - x, 0)
    return np.clip(out, 0.0, 5.0).astype(np.float32)


def all_intensities(cfg: SynthConfig) -> np.ndarray:
    """The intensities ``generate`` yields, in its order, without rendering: float32 ``[N, 15]``."""
    return np.concatenate([intensities(np.random.default_rng((cfg.seed, i, q + 1)), cfg)
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


def render_frame(subj: Subject, intensity: np.ndarray, pose: np.ndarray, noise: np.ndarray | None,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders one frame: (image uint8 ``[S, S, 3]``, landmarks float32 ``[49, 2]``)."""
    lm, jaw = face.geometry(subj.identity, intensity)
    lm, jaw = pose_points(lm, pose, size), pose_points(jaw, pose, size)
    img = face.render(subj.identity, lm, jaw, intensity, size, noise, subj.background, subj.light)
    return img, lm.astype(np.float32)


def generate(cfg: SynthConfig) -> Iterator[dict]:
    """Yields frames (subject, sequence, frame order). Keys: image uint8 [S,S,3] RGB aligned;
    landmarks float32 [49,2] (x,y); intensity float32 [15] (SYNTH_AUS order); subject 'S003';
    sequence 'S003_Q1'; frame (0-based); fold 1..3; grade 0..3 (0 without paralysis)."""
    if min(cfg.num_subjects, cfg.sequences_per_subject, cfg.frames_per_sequence) < 1:
        raise ValueError(f"SynthConfig sizes must be >= 1, got {cfg}")
    if cfg.image_size < 32:
        raise ValueError(f"SynthConfig.image_size must be >= 32, got {cfg.image_size}")
    size = cfg.image_size
    unknown = sorted(set(cfg.hidden_aus) - set(face.AU_INDEX))
    if unknown:
        raise ValueError(f"SynthConfig.hidden_aus: {unknown} not rendered by the generator ({au_sets.SYNTH_AUS})")
    drawn = np.ones(face.NUM_AUS, np.float32)
    drawn[[face.AU_INDEX[a] for a in cfg.hidden_aus]] = 0.0
    for i in range(cfg.num_subjects):
        subj = make_subject(cfg, i)
        sid = subject_id(i)
        for q in range(cfg.sequences_per_subject):
            rng = np.random.default_rng((cfg.seed, i, q + 1))
            inten = intensities(rng, cfg)
            poses = _pose(rng, cfg.frames_per_sequence, cfg.pose_jitter)
            for f in range(cfg.frames_per_sequence):
                oy, ox = rng.integers(NOISE_PAD, size=2)
                noise = subj.noise[oy:oy + size, ox:ox + size] if cfg.noise_std > 0 else None
                img, lm = render_frame(subj, inten[f] * drawn, poses[f], noise, size)
                yield {"image": img, "landmarks": lm, "intensity": inten[f], "subject": sid,
                       "sequence": f"{sid}_Q{q + 1}", "frame": f, "fold": subject_fold(i),
                       "grade": subj.identity.grade}
