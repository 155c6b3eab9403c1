"""``algrnet predict``: AU occurrence (or paralysis grade) per face per frame of photos, folders and videos.

``run(predictor, inputs, ...)`` discovers the inputs (``media``), finds and aligns faces and runs the network
(``engine``), and writes one CSV per input plus summaries and pictures (``outputs``). The Python API is
``Predictor.from_checkpoint(path).predict(inputs)`` (rows as dicts, or a pandas DataFrame if pandas is
installed). See docs/usage_predict.md.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from algrnet_jax.errors import UserError
from algrnet_jax.predict import media, outputs
from algrnet_jax.predict.engine import ALIGNED, Engine, Options
from algrnet_jax.predict.faces import reduce_to_49

__all__ = ["Engine", "Options", "Report", "read_landmarks", "run", "to_frame"]


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
    comments), KEY an image's file name or a video's 0-based frame index; several lines with one KEY are
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


def _frame_landmarks(table: dict[str, list[np.ndarray]]) -> dict[int, list[np.ndarray]]:
    out = {}
    for k, v in table.items():
        if k.lstrip("-").isdigit():
            out[int(k)] = v
    return out


def run(predictor: Any, inputs: Sequence[str | os.PathLike | np.ndarray], *, out_dir: str | None = None,
        options: Options | None = None, overlay: bool = False, skip_existing: bool = False,
        landmarks: dict[str, list[np.ndarray]] | None = None, aligned: bool = False, detector: Any = None,
        progress: bool = False, keep_rows: bool = True) -> Report:
    """Predicts every input; writes outputs under ``out_dir`` when given (see module docstring)."""
    options = options or Options()
    engine = Engine(predictor, options, detector)
    names, task = predictor.class_names, predictor.task
    header = outputs.columns(names, task)
    sources, failures, notes = media.discover(inputs)
    report = Report([], header, failures, notes, [], [], engine.timing)
    bar = None
    if progress:
        bar = tqdm(unit="frame", dynamic_ncols=True, leave=False, disable=None)
    try:
        for src in sources:
            csv_path = os.path.join(out_dir, src.name + ".csv") if out_dir else None
            if skip_existing and csv_path and os.path.exists(csv_path):
                report.skipped.append(csv_path)
                continue
            if bar is not None:
                bar.set_description(src.name[-40:])
            try:
                rows = _one(engine, src, csv_path, header, options, overlay, landmarks, aligned, report, bar)
            except media.MediaError as e:
                report.failures.append(str(e))
                continue
            if keep_rows:
                report.rows.extend(rows)
    finally:
        if bar is not None:
            bar.close()
    return report


def _one(engine: Engine, src: media.Source, csv_path: str | None, header: list[str], options: Options,
         overlay: bool, landmarks: dict[str, list[np.ndarray]] | None, aligned: bool, report: Report,
         bar: Any) -> list[dict[str, Any]]:
    pred = engine.predictor
    names, task, thr = pred.class_names, pred.task, options.threshold
    writer = outputs.CsvWriter(csv_path, header) if csv_path else None
    rows: list[dict[str, Any]] = []
    ok = False
    try:
        if src.kind == "video":
            rows = _video(engine, src, writer, csv_path, overlay, landmarks, aligned, report, bar)
        else:
            t = time.perf_counter()
            rgb = media.read_image(src.path) if src.kind == "image" else media.as_rgb(src.array, src.name)
            engine.timing.decode += time.perf_counter() - t
            engine.timing.frames += 1
            if aligned:
                if rgb.shape[:2] != (ALIGNED, ALIGNED):
                    raise media.MediaError(f"{src.path or src.name}: --aligned expects 200x200 aligned faces, "
                                           f"got {rgb.shape[1]}x{rgb.shape[0]}")
                faces = engine.aligned_face(rgb)
            else:
                given = None
                if landmarks is not None:
                    given = landmarks.get(os.path.basename(src.path), landmarks.get("", None))
                    if given is None:
                        raise media.MediaError(f"{src.path}: no landmarks for this file in --landmarks")
                faces = engine.image(rgb, given)
            rows = [outputs.face_row(src.name, 0, 0.0, f, names, task, thr) for f in faces] or \
                [outputs.face_row(src.name, 0, 0.0, None, names, task, thr)]
            if writer:
                for r in rows:
                    writer.write(r)
            if bar is not None:
                bar.update(1)
            if csv_path and overlay:
                path = csv_path[:-4] + ".overlay.jpg"
                outputs.save_image(path, outputs.draw(rgb, faces, names, thr))
                report.written.append(path)
            if csv_path and options.attention and task.branch_per_class:
                for f in (f for f in faces if f.maps is not None):
                    path = csv_path[:-4] + f".attention_{f.face_id}.png"
                    outputs.attention_figure(path, f, names, pred.crop_size)
                    report.written.append(path)
        ok = True
    finally:
        if writer:
            writer.close(ok)
    if ok and csv_path:
        report.written.append(csv_path)
    return rows


def _video(engine: Engine, src: media.Source, writer: Any, csv_path: str | None, overlay: bool,
           landmarks: dict[str, list[np.ndarray]] | None, aligned: bool, report: Report,
           bar: Any) -> list[dict[str, Any]]:
    pred, options = engine.predictor, engine.options
    names, task, thr = pred.class_names, pred.task, options.threshold
    video = media.open_video(src.path)
    if aligned and tuple(video.size) != (ALIGNED, ALIGNED):
        raise media.MediaError(f"{src.path}: --aligned expects a video of 200x200 aligned faces, "
                               f"got {video.size[0]}x{video.size[1]}")
    writer_ov = None
    if csv_path and overlay:
        writer_ov = outputs.VideoOverlay(csv_path[:-4] + ".overlay.mp4", video.fps, video.size)
    rows: list[dict[str, Any]] = []
    ok = False
    try:
        frame_lm = _frame_landmarks(landmarks) if landmarks is not None else None
        for idx, ts, rgb, faces in engine.video(iter(video), frame_lm, aligned=aligned):
            new = [outputs.face_row(src.name, idx, ts, f, names, task, thr) for f in faces] or \
                [outputs.face_row(src.name, idx, ts, None, names, task, thr)]
            rows.extend(new)
            if writer:
                for r in new:
                    writer.write(r)
            if writer_ov:
                writer_ov.write(outputs.draw(rgb, faces, names, thr))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fps=f"{bar.format_dict.get('rate') or 0:.1f}")
        if video.read == 0:
            raise media.MediaError(f"{src.path}: no frame could be decoded (corrupt or unsupported video)")
        ok = True
    finally:
        if writer_ov:
            writer_ov.close(ok)
    if writer_ov:
        report.written.append(writer_ov.path)
    problem = video.truncation()
    if problem:
        report.failures.append(problem + " (rows written for the decoded frames)")
    if csv_path:
        summ = outputs.summary(rows, names, task, video.fps)
        summ.update(input=src.path, truncated=problem is not None)
        path = csv_path[:-4] + ".summary.json"
        outputs.write_json(path, summ)
        plot = csv_path[:-4] + ".probs.png"
        outputs.time_plot(plot, rows, names, src.name)
        report.written += [path, plot]
    return rows


def to_frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Rows as a pandas DataFrame (CSV column order) when pandas is installed, else the list itself."""
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows, columns=columns)
