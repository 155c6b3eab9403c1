"""Sample grid of synthetic faces with landmarks and AU labels.

``python -m data_pipelines.synthetic.preview --out docs/synth_samples.png [--size small --seed 0]``

Rows 1-2: generated frames (the most expressive frame of successive sequences), captioned with
the AUs present (intensity >= 2); rows 3-4: one subject neutral and with each AU alone at
intensity 5; row 5: paralysis grades 0..3 (AU 1+2+12+26 at 5) and raw (unaligned) frames.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import cv2
import numpy as np

from algrnet_jax import au_sets
from data_pipelines.synthetic import face, generator

COLUMNS = 8
TILE = 200
CAPTION = 34
GROUP_COLOURS = ((255, 200, 0), (0, 220, 255), (0, 255, 0), (255, 60, 200))   # brows, nose, eyes, mouth (RGB)


def draw_tile(image: np.ndarray, landmarks: np.ndarray | None, caption: str) -> np.ndarray:
    """Resizes to TILE, draws landmarks (by group) and a caption below: uint8 [TILE+CAPTION, TILE, 3]."""
    k = TILE / image.shape[1]
    img = cv2.resize(image, (TILE, round(image.shape[0] * k)), interpolation=cv2.INTER_AREA)
    if img.shape[0] != TILE:
        pad = np.zeros((TILE, TILE, 3), np.uint8)
        pad[:min(TILE, img.shape[0])] = img[:TILE]
        img = pad
    if landmarks is not None:
        for i, (x, y) in enumerate(np.asarray(landmarks) * k):
            g = 0 if i < 10 else 1 if i < 19 else 2 if i < 31 else 3
            cv2.circle(img, (int(round(x)), int(round(y))), 1, GROUP_COLOURS[g], -1, cv2.LINE_AA)
    out = np.full((TILE + CAPTION, TILE, 3), 255, np.uint8)
    out[:TILE] = img
    words = caption.split(" ")
    lines = [" ".join(words[:5]), " ".join(words[5:])]
    for j, line in enumerate(lines):
        cv2.putText(out, line, (3, TILE + 13 + 14 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _present(intensity: np.ndarray) -> str:
    aus = [a for a, v in zip(au_sets.SYNTH_AUS, intensity) if v >= 2.0]
    return " ".join(str(a) for a in aus) if aus else "none"


def sample_tiles(cfg: generator.SynthConfig, n: int) -> list[np.ndarray]:
    """The most expressive frame of each of the first ``n`` sequences."""
    tiles = []
    frames = generator.generate(cfg)
    for _, seq in itertools.groupby(frames, key=lambda e: e["sequence"]):
        best = max(seq, key=lambda e: float((e["intensity"] >= 2).sum() + 0.01 * e["intensity"].sum()))
        caption = f"{best['sequence']}: AU " + _present(best["intensity"])
        tiles.append(draw_tile(best["image"], best["landmarks"], caption))
        if len(tiles) == n:
            break
    return tiles


def single_au_tiles(cfg: generator.SynthConfig, subject: int) -> list[np.ndarray]:
    """Tiles ``[S, S, 3]`` of one subject: neutral, then each AU alone at full intensity."""
    subj = generator.make_subject(cfg, subject)
    size, pose = cfg.image_size, np.zeros(4)
    noise = subj.noise[:size, :size]
    z = np.zeros(face.NUM_AUS, np.float32)
    img, lm = generator.render_frame(subj, z, pose, noise, size)
    tiles = [draw_tile(img, None, "neutral")]
    for au in au_sets.SYNTH_AUS:
        x = z.copy()
        x[face.AU_INDEX[au]] = 5.0
        img, _ = generator.render_frame(subj, x, pose, noise, size)
        tiles.append(draw_tile(img, None, f"AU{au} only (5)"))
    return tiles


def paralysis_and_raw_tiles(cfg: generator.SynthConfig) -> list[np.ndarray]:
    """Tiles ``[S, S, 3]`` of paralysis faces of each grade and of raw (unaligned) frames."""
    pcfg = dataclasses.replace(cfg, paralysis=True)
    x = np.zeros(face.NUM_AUS, np.float32)
    for au in (1, 2, 12, 26):
        x[face.AU_INDEX[au]] = 5.0
    tiles = []
    by_grade: dict[int, int] = {}        # first subject of each grade
    i = 0
    while len(by_grade) < 4:
        by_grade.setdefault(generator.subject_grade(pcfg, i), i)
        i += 1
    for g in range(4):
        subj = generator.make_subject(pcfg, by_grade[g])
        img, lm = generator.render_frame(subj, x, np.zeros(4), None, cfg.image_size)
        side = ("image-left" if subj.identity.side == 0 else "image-right") + " weak;" if g else ""
        tiles.append(draw_tile(img, lm, f"grade {g} ({au_sets.GRADES[g]}) {side} AU1+2+12+26"))
    rng = np.random.default_rng(cfg.seed)
    for e in itertools.islice(generator.generate(dataclasses.replace(cfg, num_subjects=4, sequences_per_subject=1,
                                                                     frames_per_sequence=1)), 4):
        raw, raw_lm = face.to_raw(e["image"], e["landmarks"], rng)
        tiles.append(draw_tile(raw, raw_lm, f"raw 480x640 {e['subject']}"))
    return tiles


def grid(tiles: list[np.ndarray], columns: int = COLUMNS) -> np.ndarray:
    """Tiles ``[S, S, 3]`` in rows of ``columns`` (the last row padded white): ``[rows * S, columns * S, 3]``."""
    rows = []
    blank = np.full_like(tiles[0], 255)
    for r in range(0, len(tiles), columns):
        row = tiles[r:r + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


def main(argv: list[str] | None = None) -> int:
    """Writes the sample grid (and prints the generator's frames per second); returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/synth_samples.png", help="output PNG")
    p.add_argument("--size", default="small", choices=sorted(generator.SIZES), help="generator size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-frames", type=int, default=300, help="frames to time generate() on (0: skip)")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(generator.SIZES[args.size], seed=args.seed)
    tiles = sample_tiles(cfg, 16) + single_au_tiles(cfg, 1) + paralysis_and_raw_tiles(cfg)
    img = grid(tiles)
    if not cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    if args.timing_frames:
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(1 for _ in itertools.islice(generator.generate(cfg), args.timing_frames))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"generate: {n} frames in {wall:.2f} s wall ({n / wall:.0f} frames/s), "
              f"{1000 * cpu / n:.2f} ms CPU per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
