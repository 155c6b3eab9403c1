"""``algrnet predict``: AU occurrence (or paralysis grade) per face per frame of photos, folders and videos.

``run(predictor, inputs, ...)`` discovers the inputs (``media``), finds and aligns faces and runs the network
(``engine``), and writes one CSV per input plus summaries and pictures (``outputs``). The Python API is
``predict_faces(Predictor.from_checkpoint(path), inputs)`` (rows as dicts, or a pandas DataFrame if pandas is
installed). One run holds a lock on its ``out_dir`` (``LOCK_FILE``): a second run on it is refused, naming
the first. Given landmarks are checked per face (``faces.check_landmarks``): refused faces and frames are
listed as failures and the others processed. See docs/usage_predict.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from algrnet_jax.errors import UserError
from algrnet_jax.locking import DirLock
from algrnet_jax.predict import media, outputs
from algrnet_jax.predict.engine import ALIGNED, Engine, FaceResult, Options
from algrnet_jax.predict.faces import check_landmarks, reduce_to_49

__all__ = ["Engine", "Options", "Report", "Settings", "predict_faces", "read_landmarks", "run", "to_frame"]


@dataclasses.dataclass
class Report:
    """Result of a run: ``rows`` (dicts, CSV columns), ``failures`` (messages naming files), ``notes``
    (skipped files), ``written`` (output files), ``skipped`` (inputs skipped by --skip-existing),
    ``timing`` (seconds per stage)."""

    rows: list[dict[str, Any]]
    columns: list[str]
    failures: list[str]
    notes: list[str]
    written: list[str]
    skipped: list[str]
    timing: Any


def read_landmarks(path: str) -> dict[str, list[np.ndarray]]:
    """``--landmarks FILE``: lines ``KEY x1 y1 ... xP yP`` (P = 49, 66 or 68; spaces or commas; ``#``
    comments), KEY an image's file name (or its output name, the path that names its outputs, when two inputs
    share a file name) or a video's 0-based frame index; several lines with one KEY are
    several faces. A line of only 2P numbers (an even count starting with a number) has the key ``""``
    (used for every image input)."""
    if not os.path.isfile(path):
        raise UserError(f"--landmarks {path}: no such file")
    table: dict[str, list[np.ndarray]] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            tokens = line.split("#")[0].replace(",", " ").split()
            if not tokens:
                continue
            key = ""
            if len(tokens) % 2 == 1 or not _is_number(tokens[0]):
                key, tokens = tokens[0], tokens[1:]
            try:
                values = np.asarray([float(t) for t in tokens])
            except ValueError as e:
                raise UserError(f"{path}:{n}: landmark values must be numbers ({e})") from e
            if not np.all(np.isfinite(values)):
                raise UserError(f"{path}:{n}: landmarks contain NaN or infinite values")
            table.setdefault(key, []).append(reduce_to_49(values, f"{path}:{n}"))
    if not table:
        raise UserError(f"--landmarks {path}: no landmark lines")
    return table


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


LOCK_FILE = ".predict.lock"     # in --out: one run per output folder (locking.DirLock)


@dataclasses.dataclass(frozen=True)
class Settings:
    """One run's settings (the flags of ``algrnet predict``): ``out_dir`` (None: rows only, nothing
    written), the engine's ``options``, ``overlay`` pictures, ``skip_existing`` inputs whose CSV is complete,
    given ``landmarks`` (``read_landmarks``) or ``aligned`` inputs."""

    out_dir: str | None = None
    options: Options = dataclasses.field(default_factory=Options)
    overlay: bool = False
    skip_existing: bool = False
    landmarks: Mapping[str, list[np.ndarray]] | None = None
    aligned: bool = False


def run(predictor: Any, inputs: Sequence[str | os.PathLike | np.ndarray], *, out_dir: str | None = None,
        options: Options | None = None, overlay: bool = False, skip_existing: bool = False,
        landmarks: Mapping[str, list[np.ndarray]] | None = None, aligned: bool = False, detector: Any = None,
        progress: bool = False, keep_rows: bool = True) -> Report:
    """Predicts every input; writes outputs under ``out_dir`` when given (see module docstring).

    Raises:
      LockedError: another run holds ``out_dir``.
      UserError: ``out_dir`` cannot be created, or the checkpoint's every output is NaN or infinite.
    """
    settings = Settings(out_dir, options or Options(), overlay, skip_existing, landmarks, aligned)
    engine = Engine(predictor, settings.options, detector)
    sources, failures, notes = media.discover(inputs, out_dir)
    report = Report([], outputs.columns(predictor.class_names, predictor.task), failures, notes, [], [],
                    engine.timing)
    if not sources:
        return report
    lock = None
    if out_dir:
        lock = DirLock(os.path.join(out_dir, LOCK_FILE), f"--out folder {out_dir}",
                       "wait for that run to end, or choose another --out")
        try:
            lock.acquire()
        except OSError as e:
            raise UserError(f"predict: --out {out_dir}: cannot write there ({e.strerror or e})") from e
    bar = tqdm(unit="frame", dynamic_ncols=True, leave=False, disable=None) if progress else None
    try:
        if not engine.gives_numbers():
            raise UserError(f"predict: the checkpoint {predictor.source or '(in memory)'} gives non-finite outputs "
                            "(NaN or infinite) for every input, so it cannot predict; use an earlier checkpoint "
                            "whose outputs are finite")
        job = _Run(engine, settings, report, bar)
        for src in sources:
            rows = job.input(src)
            if keep_rows:
                report.rows.extend(rows)
    finally:
        if bar is not None:
            bar.close()
        if lock is not None:
            lock.release()
    return report


class _Run:
    """One run over its inputs: the engine, the settings, the report it fills and the progress bar."""

    def __init__(self, engine: Engine, settings: Settings, report: Report, bar: Any):
        self.engine, self.settings, self.report, self.bar = engine, settings, report, bar
        pred = engine.predictor
        self.names, self.task, self.thr = pred.class_names, pred.task, settings.options.threshold

    def _rows(self, name: str, frame: int, ts: float, faces: list[FaceResult]) -> list[dict[str, Any]]:
        return [outputs.face_row(name, frame, ts, f, self.names, self.task, self.thr) for f in faces] or \
            [outputs.face_row(name, frame, ts, None, self.names, self.task, self.thr)]

    def input(self, src: media.Source) -> list[dict[str, Any]]:
        """Rows of one input; writes its outputs. Its problems go to the report's failures; a failed input
        that still wrote a CSV (rows for the usable frames) gets ``NAME.failed.txt`` beside it, so that
        ``--skip-existing`` runs it again instead of taking it as done."""
        out_dir, report = self.settings.out_dir, self.report
        csv_path = os.path.join(out_dir, src.name + ".csv") if out_dir else None
        failed_path = csv_path[:-4] + ".failed.txt" if csv_path else None
        if self.settings.skip_existing and csv_path and os.path.exists(csv_path) \
                and not os.path.exists(failed_path):
            report.skipped.append(csv_path)
            return []
        if self.bar is not None:
            self.bar.set_description(src.name[-40:])
        problems: list[str] = []
        writer = outputs.CsvWriter(csv_path, report.columns) if csv_path else None
        ok = False
        try:
            if src.kind == "video":
                rows = self._video(src, writer, csv_path, problems)
            else:
                rows = self._image(src, writer, csv_path, problems)
            ok = True
        except media.MediaError as e:
            problems.insert(0, str(e))
            rows = []
        finally:
            if writer:
                writer.close(ok)
        bad = sum(1 for r in rows if r["success"] == 0 and r["face_id"] != -1)
        if bad:
            problems.append(f"{src.path or src.name}: the network's outputs are not finite (NaN or infinite) for "
                            f"{bad} face(s); their rows have success=0")
        report.failures += problems
        if ok and csv_path:
            report.written.append(csv_path)
            if problems:
                outputs.write_text(failed_path, "\n".join(problems) + "\n")
            elif os.path.exists(failed_path):
                os.remove(failed_path)
        return rows

    def _given(self, src: media.Source) -> list[np.ndarray]:
        """The --landmarks faces of an image input: keyed by its output name, its file name, or no key."""
        table = self.settings.landmarks
        for key in (src.name, os.path.basename(src.path), ""):
            if key in table:
                return table[key]
        raise media.MediaError(f"{src.path}: no landmarks for this file in --landmarks")

    def _image(self, src: media.Source, writer: Any, csv_path: str | None,
               problems: list[str]) -> list[dict[str, Any]]:
        engine, settings = self.engine, self.settings
        t = time.perf_counter()
        rgb = media.read_image(src.path) if src.kind == "image" else media.as_rgb(src.array, src.name)
        engine.timing.decode += time.perf_counter() - t
        engine.timing.frames += 1
        if settings.aligned:
            if rgb.shape[:2] != (ALIGNED, ALIGNED):
                raise media.MediaError(f"{src.path or src.name}: --aligned expects 200x200 aligned faces, "
                                       f"got {rgb.shape[1]}x{rgb.shape[0]}")
            faces = engine.aligned_face(rgb)
        elif settings.landmarks is not None:
            size = (rgb.shape[1], rgb.shape[0])
            given, bad = _usable(self._given(src), size)
            where = src.path or src.name
            if not given:
                raise media.MediaError(f"{where}: --landmarks: no usable face ("
                                       + "; ".join(f"face {k}: {why}" for k, why in bad) + ")")
            problems += [f"{where}: --landmarks face {k}: {why}" for k, why in bad]
            faces = engine.image(rgb, given)
        else:
            faces = engine.image(rgb)
        rows = self._rows(src.name, 0, 0.0, faces)
        if writer:
            for r in rows:
                writer.write(r)
        if self.bar is not None:
            self.bar.update(1)
        if csv_path and settings.overlay:
            path = csv_path[:-4] + ".overlay.jpg"
            outputs.save_image(path, outputs.draw(rgb, faces, self.names, self.thr))
            self.report.written.append(path)
        if csv_path and settings.options.attention and self.task.branch_per_class:
            for f in (f for f in faces if f.maps is not None and f.finite):
                path = csv_path[:-4] + f".attention_{f.face_id}.png"
                outputs.attention_figure(path, f, self.names, engine.predictor.crop_size)
                self.report.written.append(path)
        return rows

    def _frame_landmarks(self, video: media.Video, problems: list[str]) -> dict[int, list[np.ndarray]]:
        """The usable --landmarks faces of a video per frame index; refused faces go to ``problems``."""
        table = self.settings.landmarks
        keyed = {k: v for k, v in table.items() if k.lstrip("-").isdigit()}
        if not keyed:
            raise media.MediaError(
                f"{video.path}: --landmarks has no line keyed by a frame index (a video's lines start with its "
                f"0-based frame index; the file's keys are {', '.join(sorted(table)[:3]) or 'empty'})")
        out: dict[int, list[np.ndarray]] = {}
        for key, faces in sorted(keyed.items(), key=lambda kv: int(kv[0])):
            frame = int(key)
            if frame < 0:
                problems.append(f"{video.path}: --landmarks frame {frame}: not a frame index (0-based)")
                continue
            good, bad = _usable(faces, video.size)
            problems += [f"{video.path}: --landmarks frame {frame} face {k}: {why}" for k, why in bad]
            out[frame] = good
        return out

    def _video(self, src: media.Source, writer: Any, csv_path: str | None,
               problems: list[str]) -> list[dict[str, Any]]:
        engine, settings, report = self.engine, self.settings, self.report
        video = media.open_video(src.path)
        if settings.aligned and tuple(video.size) != (ALIGNED, ALIGNED):
            raise media.MediaError(f"{src.path}: --aligned expects a video of 200x200 aligned faces, "
                                   f"got {video.size[0]}x{video.size[1]}")
        frame_lm = self._frame_landmarks(video, problems) if settings.landmarks is not None else None
        writer_ov = None
        if csv_path and settings.overlay:
            writer_ov = outputs.VideoOverlay(csv_path[:-4] + ".overlay.mp4", video.fps, video.size)
        rows: list[dict[str, Any]] = []
        ok = False
        try:
            for idx, ts, rgb, faces in engine.video(iter(video), frame_lm, aligned=settings.aligned):
                new = self._rows(src.name, idx, ts, faces)
                rows.extend(new)
                if writer:
                    for r in new:
                        writer.write(r)
                if writer_ov:
                    writer_ov.write(outputs.draw(rgb, faces, self.names, self.thr))
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(fps=f"{self.bar.format_dict.get('rate') or 0:.1f}")
            if video.read == 0:
                raise media.MediaError(f"{src.path}: no frame could be decoded (corrupt or unsupported video)")
            ok = True
        finally:
            if writer_ov:
                writer_ov.close(ok)
        if writer_ov:
            report.written.append(writer_ov.path)
        if frame_lm is not None:
            beyond = sorted(i for i in frame_lm if i >= video.read)
            if beyond:
                problems.append(f"{src.path}: --landmarks frames {beyond[0]}..{beyond[-1]} ({len(beyond)} keyed) are "
                                f"not in the video ({video.read} frames decoded)")
        problem, note = video.problem(), video.note()
        if problem:
            problems.append(problem + " (rows written for the decoded frames)")
        if note:
            report.notes.append(note)
        if csv_path:
            summ = outputs.summary(rows, self.names, self.task, video.fps)
            summ.update(input=src.path, truncated=problem is not None)
            path = csv_path[:-4] + ".summary.json"
            outputs.write_json(path, summ)
            plot = csv_path[:-4] + ".probs.png"
            outputs.time_plot(plot, rows, self.names, src.name)
            report.written += [path, plot]
        return rows


def _usable(faces: list[np.ndarray], size: tuple[int, int]) -> tuple[list[np.ndarray], list[tuple[int, str]]]:
    """Given 49-point faces of a ``size`` (w, h) frame -> (the usable ones, [(face index, why refused)])."""
    good, bad = [], []
    for k, lm in enumerate(faces):
        why = check_landmarks(lm, size)
        if why is None:
            good.append(lm)
        else:
            bad.append((k, why))
    return good, bad


def predict_faces(predictor: Any, inputs: Any, **kwargs: Any) -> Any:
    """Per-face rows (CSV columns of ``algrnet predict``) for image/video paths, folders or RGB uint8 arrays
    ``[H, W, 3]`` (one or a list) through ``predictor`` (an ``inference.Predictor``): a pandas DataFrame if
    pandas is installed, else a list of dicts. ``kwargs`` go to :func:`run` (e.g. ``out_dir``, ``options``).
    Inputs that cannot be read raise ValueError naming them (the command line reports and goes on)."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    report = run(predictor, items, **kwargs)
    if report.failures:
        raise ValueError("; ".join(report.failures))
    return to_frame(report.rows, report.columns)


def to_frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Rows as a pandas DataFrame (CSV column order) when pandas is installed, else the list itself."""
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows, columns=columns)
