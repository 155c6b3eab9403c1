"""``disfa``: DISFA (8 AUs, occurrence = intensity >= 2) from the release or the JAA-Net list layout.

Configs: ``default`` (layout detected from the manual dir), ``release``, ``list``. Splits
``part1..part3`` are the subject parts of ``folds.json``. Frame numbering: the label files count
frames from 1; video frame ``i`` (0-based, as OpenCV reads it, image ``<SN>/<i>.jpg``) is label
frame ``i + 1``. Records and landmark files use ``i``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from algrnet_jax import au_sets
from data_pipelines import errors
from data_pipelines.builders import base, examples, folds, label_files, landmark_files, list_layout, raw_frames

LABEL_DIR = "ActionUnit_Labels"
LANDMARK_DIR = "Landmarks"
VIDEO_DIRS = ("Videos_LeftCamera", ".")
LABEL_FRAME_OFFSET = 1      # label frame = video frame index + 1

INSTRUCTIONS = f"""\
Put the DISFA release files in the manual dir (`--manual-dir D`), either

RELEASE layout (raw frames, aligned at build time):
  D/ActionUnit_Labels/<SN>/<SN>_au<k>.txt   as released, lines `frame,intensity` (frame 1-based,
                                            intensity 0..5; occurrence = intensity >= 2), one file
                                            per AU k in {', '.join(map(str, au_sets.AU_SETS['disfa']))}
  D/Videos_LeftCamera/LeftVideo<SN>_comp.avi  the left-camera video as released (or directly in D/),
                                            frames read with OpenCV: video frame i (0-based) = label
                                            frame i + 1; OR already extracted frames D/<SN>/<i>.jpg
  D/Landmarks/<SN>.txt                      66 landmarks per frame that YOU provide (DISFA ships them
                                            as per-frame .mat files): one row per frame,
                                            `i x1 y1 ... x66 y66` with i the 0-based video frame,
                                            whitespace or comma separated, 1-based pixel coordinates;
                                            points 18..66 (1-based) are the 49 used
Only frames with a label row are used; each needs its frame and a landmark row.

or the JAA-Net LIST layout (aligned 200x200 frames, kept as they are):
  D/**/<prefix>_path.txt      image path per frame, relative to that file's folder or to D, ending in <SN>/<i>.jpg
  D/**/<prefix>_land.txt      98 numbers per frame: x1 y1 ... x49 y49 in aligned 200x200 coordinates
  D/**/<prefix>_biocular.txt  SQUARED inter-ocular distance per frame
  D/**/<prefix>_AUoccur.txt   8 labels per frame (AUs {' '.join(map(str, au_sets.AU_SETS['disfa']))}), 0/1
  D/**/<prefix>_weight.txt    optional: 8 AU loss weights
When prefixes contain part1/part2/part3 only those are read and checked against folds.json;
otherwise every prefix is read and subjects go to the parts of folds.json.
"""


class Disfa(base.ReleaseBuilder):
    """DISFA: aligned 200x200 faces, 49 landmarks, 8 AU occurrence labels, folds.json parts."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = base.release_configs("disfa", "DISFA")
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    RELEASE_MARKER = LABEL_DIR

    @staticmethod
    def _video(manual_dir: str, subject: str) -> str | None:
        for d in VIDEO_DIRS:
            p = os.path.join(manual_dir, d, f"{list_layout.disfa_sequence(subject)}.avi")
            if os.path.isfile(p):
                return os.path.normpath(p)
        return None

    def _release_subjects(self, manual_dir: str) -> list[base.ReleaseSubject]:
        part_of = folds.load_folds("DISFA")
        label_dir = os.path.join(manual_dir, LABEL_DIR)
        subjects = sorted(s for s in os.listdir(label_dir) if os.path.isdir(os.path.join(label_dir, s)))
        if not subjects:
            raise errors.BadInputError(f"{label_dir}: no <SN> label folders")
        out = []
        for subject in subjects:
            if not re.fullmatch(r"SN\d+", subject):
                raise errors.BadInputError(f"{os.path.join(label_dir, subject)}: not a DISFA subject folder (SN<number>)")
            part = folds.fold_of(subject, part_of, os.path.join(label_dir, subject))
            inputs = [label_files.disfa_label_path(label_dir, subject, au) for au in au_sets.AU_SETS["disfa"]]
            inputs += [os.path.join(manual_dir, LANDMARK_DIR, f"{subject}.txt"), os.path.join(manual_dir, subject)]
            inputs += [os.path.join(manual_dir, d, f"{list_layout.disfa_sequence(subject)}.avi") for d in VIDEO_DIRS]
            out.append(base.ReleaseSubject(subject, part, tuple(inputs)))
        return out

    def _subject_frames(self, subject: str, manual_dir: str) -> Iterator[examples.Frame]:
        part = folds.load_folds("DISFA")[subject]
        labels = label_files.read_disfa_labels(os.path.join(manual_dir, LABEL_DIR), subject, au_sets.AU_SETS["disfa"])
        lm_path = os.path.join(manual_dir, LANDMARK_DIR, f"{subject}.txt")
        landmarks = landmark_files.read_landmark_rows(lm_path, landmark_files.DISFA_NUM_POINTS, strict=False)
        sequence = list_layout.disfa_sequence(subject)
        wanted = {int(f) - LABEL_FRAME_OFFSET: (lab, f"{labels.path}:{line}")
                  for f, lab, line in zip(labels.frames.tolist(), labels.labels, labels.lines.tolist())}
        folder = os.path.join(manual_dir, subject)
        video = None if os.path.isdir(folder) else self._video(manual_dir, subject)
        if video is None and not os.path.isdir(folder):
            raise errors.BadInputError(
                f"{subject}: no frames: neither {folder}/<i>.jpg nor "
                f"{' or '.join(os.path.join(manual_dir, d, sequence + '.avi') for d in VIDEO_DIRS)}")

        def frame(i: int, load, source: str) -> examples.Frame:
            lab, where = wanted[i]
            return examples.Frame(key=f"{subject}/{sequence}/{i}", subject=subject, sequence=sequence, frame=i,
                                fold=part, labels=lab, source=source, load=load)

        def load_for(i: int, image, source: str):
            return lambda: raw_frames.align_raw(
                image, landmark_files.disfa_49(landmarks.row_for(i, wanted[i][1]).points), source)

        if video is None:
            for i in sorted(wanted):
                image = raw_frames.frame_image(folder, i)
                if image is None:
                    load = raw_frames.raise_bad(f"{wanted[i][1]}: frame {i} is labelled but its image "
                                             f"{os.path.join(folder, f'{i}.jpg')} is missing")
                    yield frame(i, load, wanted[i][1])
                else:
                    yield frame(i, load_for(i, image, image), image)
            return
        done, count = set(), 0
        for i, image in raw_frames.iter_video(video):
            count = i + 1
            if i in wanted:
                source = f"{video} frame {i}"
                done.add(i)
                yield frame(i, load_for(i, image, source), source)
        for i in sorted(set(wanted) - done):
            yield frame(i, raw_frames.raise_bad(f"{wanted[i][1]}: frame {i} is labelled but {video} has only "
                                             f"{count} readable frames"), wanted[i][1])

    def _list_folds(self, rows, parts):
        return folds.folds_json_list_folds("DISFA")
