"""``bp4d``: BP4D (12 AUs) from the release layout or the JAA-Net list layout (manual download).

Configs: ``default`` (layout detected from the manual dir), ``release``, ``list``. Splits
``part1..part3`` are the subject parts of ``folds.json``. Build with
``algrnet data build bp4d --manual-dir /data/BP4D``.
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from algrnet_jax import au_sets
from data_pipelines import errors
from data_pipelines.builders import base, examples, folds, label_files, landmark_files, raw_frames

LABEL_DIR = os.path.join("AUCoding", "AU_OCC")
LANDMARK_DIR = "Landmarks"
FRAME_PAD = 4

INSTRUCTIONS = f"""\
Put the BP4D release files in the manual dir (`--manual-dir D`), either

RELEASE layout (raw frames, aligned at build time):
  D/AUCoding/AU_OCC/<subject>_<task>.csv   AU occurrence, as released (header row; first column the
                                           frame number, one column per AU number; 0/1/9, 9 = not coded)
  D/<subject>/<task>/<frame>.jpg           raw frames as released (frame numbers below 1000 zero-padded
                                           to 4 digits, e.g. F001/T1/0042.jpg)
  D/Landmarks/<subject>_<task>.txt         49 landmarks per frame that YOU provide (BP4D ships its
                                           own 2D/3D landmarks in other forms; e.g. run a 49-point
                                           tracker or convert them): one row per frame,
                                           `frame x1 y1 ... x49 y49`, whitespace or comma separated,
                                           1-based pixel coordinates of the raw frame (JAA-Net's raw
                                           landmark convention), points in the 49-point scheme
                                           (brows 1-10, nose 11-19, eyes 20-31, mouth 32-49)
Only frames with a label row are used; each needs its image and a landmark row.

or the JAA-Net LIST layout (aligned 200x200 frames, kept as they are):
  D/**/<prefix>_path.txt      image path per frame, relative to that file's folder or to D,
                              ending in <subject>/<task>/<frame>.jpg
  D/**/<prefix>_land.txt      98 numbers per frame: x1 y1 ... x49 y49 in aligned 200x200 coordinates
  D/**/<prefix>_biocular.txt  SQUARED inter-ocular distance per frame
  D/**/<prefix>_AUoccur.txt   12 labels per frame (AUs {' '.join(map(str, au_sets.AU_SETS['bp4d']))}), 0/1 (9 = unknown)
  D/**/<prefix>_weight.txt    optional: 12 AU loss weights
When prefixes contain part1/part2/part3 (BP4D_part1, ...) only those are read and checked against
folds.json; otherwise every prefix is read and subjects go to the parts of folds.json.
"""


class Bp4d(base.ReleaseBuilder):
    """BP4D: aligned 200x200 faces, 49 landmarks, 12 AU labels (-1 = not coded), folds.json parts."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = base.release_configs("bp4d", "BP4D")
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    RELEASE_MARKER = LABEL_DIR

    def _sequences(self, manual_dir: str) -> dict[str, list[tuple[str, str]]]:
        """subject -> [(task, label csv)] from ``AUCoding/AU_OCC``."""
        out: dict[str, list[tuple[str, str]]] = {}
        paths = sorted(glob.glob(os.path.join(manual_dir, LABEL_DIR, "*.csv")))
        if not paths:
            raise errors.BadInputError(f"{os.path.join(manual_dir, LABEL_DIR)}: no <subject>_<task>.csv label files")
        for path in paths:
            m = re.fullmatch(r"(.+)_([^_]+)\.csv", os.path.basename(path))
            if m is None:
                raise errors.BadInputError(f"{path}: label file name is not <subject>_<task>.csv")
            out.setdefault(m.group(1), []).append((m.group(2), path))
        return out

    def _release_subjects(self, manual_dir: str) -> list[base.ReleaseSubject]:
        part_of = folds.load_folds("BP4D")
        out = []
        for subject, seqs in sorted(self._sequences(manual_dir).items()):
            part = folds.fold_of(subject, part_of, seqs[0][1])
            inputs = [p for _, p in seqs]
            inputs += [os.path.join(manual_dir, LANDMARK_DIR, f"{subject}_{task}.txt") for task, _ in seqs]
            inputs += [os.path.join(manual_dir, subject, task) for task, _ in seqs]
            out.append(base.ReleaseSubject(subject, part, tuple(inputs)))
        return out

    def _subject_frames(self, subject: str, manual_dir: str) -> Iterator[examples.Frame]:
        part = folds.load_folds("BP4D")[subject]
        aus = au_sets.AU_SETS["bp4d"]
        for task, csv_path in self._sequences(manual_dir)[subject]:
            labels = label_files.read_bp4d_labels(csv_path, aus)
            lm_path = os.path.join(manual_dir, LANDMARK_DIR, f"{subject}_{task}.txt")
            landmarks = landmark_files.read_landmark_rows(lm_path, strict=False)   # bad rows: per-frame errors
            folder = os.path.join(manual_dir, subject, task)
            for frame, lab, line in zip(labels.frames.tolist(), labels.labels, labels.lines.tolist()):
                where = f"{csv_path}:{line}"
                image = raw_frames.frame_image(folder, frame, FRAME_PAD)
                if image is None:
                    load = raw_frames.raise_bad(f"{where}: frame {frame} is labelled but its image "
                                             f"{os.path.join(folder, f'{frame:0{FRAME_PAD}d}.jpg')} is missing")
                else:
                    load = lambda image=image, frame=frame, where=where: raw_frames.align_raw(
                        image, landmarks.row_for(frame, where).points, image)
                yield examples.Frame(key=f"{subject}/{task}/{frame}", subject=subject, sequence=task, frame=frame,
                                   fold=part, labels=lab, source=image or where, load=load)

    def _list_folds(self, rows, parts):
        return folds.folds_json_list_folds("BP4D")
