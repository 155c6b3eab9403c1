"""``fpara``: the facial-paralysis set (4 grades) from videos/frame folders + a CSV, or a list layout.

Configs: ``default`` (layout detected from the manual dir), ``release``, ``list``. Labels ``[1]``:
the grade 0..3 (House-Brackmann 1 / 2 / 3-4 / 5-6, ``au_sets.house_brackmann_to_grade``). Splits
``part1..part3``: a seeded (config ``split_seed``, 0), subject-exclusive, grade-stratified 3-fold
split (``folds.paralysis_folds``), unless the CSV (release) or the list names (``..._part<k>``)
give the folds.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import errors
from data_pipelines.builders import (base, examples, folds, label_files, label_sets, landmark_files, list_layout,
                                     raw_frames)

CSV_NAME = "fpara.csv"
VIDEO_DIR = "videos"
FRAME_DIR = "frames"
LANDMARK_DIR = "Landmarks"

INSTRUCTIONS = """\
Put the facial-paralysis files in the manual dir (`--manual-dir D`), either

RELEASE layout (raw frames, aligned at build time):
  D/fpara.csv                 header `video,subject,house_brackmann[,fold]`, one row per video;
                              House-Brackmann 1..6 -> grade normal/low/medium/high (1 / 2 / 3-4 / 5-6);
                              the optional fold column (1..3) replaces the seeded split
  D/videos/<video>            the video file named in the CSV (any format OpenCV reads; frame i is
                              the i-th decoded frame, 0-based), OR a frame folder
  D/frames/<video stem>/<i>.jpg
  D/Landmarks/<video stem>.txt  49 landmarks per used frame: `i x1 y1 ... x49 y49`, 1-based pixel
                              coordinates of the raw frame; the frames with a row are the ones used

or a LIST layout (aligned 200x200 frames, kept as they are):
  D/**/<prefix>_path.txt      image path per frame, ending in <subject>/<video>/<frame>.jpg
  D/**/<prefix>_land.txt      98 numbers per frame (aligned 200x200 coordinates)
  D/**/<prefix>_biocular.txt  SQUARED inter-ocular distance per frame
  D/**/<prefix>_grade.txt     the grade 0..3 per frame
Prefixes with part1/part2/part3 in their names give the folds; otherwise the seeded split is used.
"""


class Fpara(base.ReleaseBuilder):
    """Facial paralysis: aligned 200x200 faces, 49 landmarks, one grade label, stratified folds."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = base.release_configs(label_sets.PARALYSIS, "facial paralysis")
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    RELEASE_MARKER = CSV_NAME
    LIST_LABEL_SUFFIX = "grade"

    def _videos(self, manual_dir: str) -> tuple[list[label_files.ParalysisVideo], dict[str, int]]:
        videos = label_files.read_fpara_csv(os.path.join(manual_dir, CSV_NAME))
        try:
            part_of = folds.paralysis_folds(videos, self.builder_config.split_seed)
        except errors.BadInputError as e:
            raise errors.BadInputError(f"{os.path.join(manual_dir, CSV_NAME)}: {e}") from None
        return videos, part_of

    def _release_subjects(self, manual_dir: str) -> list[base.ReleaseSubject]:
        videos, part_of = self._videos(manual_dir)
        inputs: dict[str, list[str]] = collections.defaultdict(lambda: [os.path.join(manual_dir, CSV_NAME)])
        for v in videos:
            stem = os.path.splitext(v.video)[0]
            inputs[v.subject] += [os.path.join(manual_dir, VIDEO_DIR, v.video),
                                  os.path.join(manual_dir, FRAME_DIR, stem),
                                  os.path.join(manual_dir, LANDMARK_DIR, f"{stem}.txt")]
        self.info.metadata["subject_folds"] = dict(sorted(part_of.items()))
        return [base.ReleaseSubject(s, part_of[s], tuple(inputs[s])) for s in sorted(inputs)]

    def _subject_frames(self, subject: str, manual_dir: str) -> Iterator[examples.Frame]:
        videos, part_of = self._videos(manual_dir)
        csv_path = os.path.join(manual_dir, CSV_NAME)
        for v in (v for v in videos if v.subject == subject):
            stem = os.path.splitext(v.video)[0]
            lm_path = os.path.join(manual_dir, LANDMARK_DIR, f"{stem}.txt")
            if not os.path.isfile(lm_path):
                raise errors.BadInputError(f"{lm_path}: landmark file of video {v.video!r} ({csv_path}:{v.line}) not found")
            rows = landmark_files.read_landmark_rows(lm_path, strict=False)   # NaN / short rows: per-frame errors
            if rows.bad_lines:                                         # frames are the rows: all must be known
                raise errors.BadInputError(next(iter(rows.bad_lines.values())))
            folder = os.path.join(manual_dir, FRAME_DIR, stem)
            video = os.path.join(manual_dir, VIDEO_DIR, v.video)

            def frame(i: int, load, source: str) -> examples.Frame:
                return examples.Frame(key=f"{subject}/{stem}/{i}", subject=subject, sequence=stem, frame=i,
                                    fold=part_of[subject], labels=[v.grade], source=source, load=load)

            if os.path.isdir(folder):
                for i in sorted(rows):
                    image = raw_frames.frame_image(folder, i)
                    if image is None:
                        yield frame(i, raw_frames.raise_bad(f"{rows[i].path}:{rows[i].line}: frame {i} has landmarks but "
                                                         f"no image in {folder}"), f"{rows[i].path}:{rows[i].line}")
                    else:
                        yield frame(i, lambda image=image, i=i: raw_frames.align_raw(
                            image, rows.row_for(i, f"{csv_path}:{v.line}").points, image), image)
                continue
            if not os.path.isfile(video):
                raise errors.BadInputError(f"{csv_path}:{v.line}: video {v.video!r}: neither {video} nor frame "
                                           f"folder {folder} exists")
            count = 0
            for i, image in raw_frames.iter_video(video):
                count = i + 1
                if i in rows:
                    source = f"{video} frame {i}"
                    yield frame(i, lambda image=image, i=i, source=source: raw_frames.align_raw(
                        image, rows.row_for(i, f"{csv_path}:{v.line}").points, source), source)
            for i in sorted(k for k in rows if k >= count):
                yield frame(i, raw_frames.raise_bad(f"{rows[i].path}:{rows[i].line}: frame {i} has landmarks but {video} "
                                                 f"has only {count} frames"), f"{rows[i].path}:{rows[i].line}")

    def _list_labels(self, values: np.ndarray, source: str) -> np.ndarray:
        return np.asarray(values).reshape(-1)[:1]

    def _list_folds(self, rows, parts):
        by_subject: dict[str, int] = {}
        if all(p is not None for p in parts.values()):
            for prefix, prefix_rows in rows.items():
                for row in prefix_rows:
                    subject = list_layout.list_path_ids(row.path, row.source)[0]
                    if by_subject.setdefault(subject, parts[prefix]) != parts[prefix]:
                        raise errors.BadInputError(f"{row.source}: subject {subject!r} appears in parts "
                                                   f"{by_subject[subject]} and {parts[prefix]}")
        else:
            videos = []
            for prefix_rows in rows.values():
                for row in prefix_rows:
                    subject, sequence, _ = list_layout.list_path_ids(row.path, row.source)
                    grade = int(row.labels[0])
                    line = int(row.source.rsplit(":", 1)[1])
                    videos.append(label_files.ParalysisVideo(f"{subject}/{sequence}/{line}", subject, 0, grade, None, line))
            by_subject = folds.paralysis_folds(videos, self.builder_config.split_seed)
        self.info.metadata["subject_folds"] = dict(sorted(by_subject.items()))

        def fold(subject: str, source: str) -> int:
            if subject not in by_subject:
                raise errors.BadInputError(f"{source}: subject {subject!r} is in no fold")
            return by_subject[subject]
        return fold
