"""Inputs of ``algrnet predict``: files, folders (recursive, sorted), videos and numpy arrays.

Images are read with OpenCV as RGB uint8 ``[H, W, 3]``; JPEG and PNG files must be complete (a truncated
file, which OpenCV would half-decode with a warning, is an error naming the file). Videos are read with
``cv2.VideoCapture``; timestamps are ``frame / fps`` from the container.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from algrnet_jax import verbosity
from data_pipelines import images
from data_pipelines.errors import BadInputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class MediaError(Exception):
    """An input that cannot be read; the message names the file and the problem."""


@dataclasses.dataclass
class Source:
    """One input: ``kind`` "image", "video" or "array"; ``name`` is the relative name its outputs take."""

    kind: str
    name: str
    path: str = ""
    array: np.ndarray | None = None


def kind_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _walk(folder: str, out_real: str | None, notes: list[str]) -> list[str]:
    """Image and video files under ``folder``, sorted; the ``--out`` folder (``out_real``, a real path) is
    not entered; symlinked sub-folders are noted and not followed (a link cycle cannot recurse)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        keep = []
        for d in dirs:
            full = os.path.join(root, d)
            if out_real is not None and os.path.realpath(full) == out_real:
                continue
            if os.path.islink(full):
                notes.append(f"{full}: skipped, a symlinked folder is not followed (give it as an input to "
                             "include it)")
                continue
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            full = os.path.join(root, f)
            if kind_of(f) is None:
                notes.append(f"{full}: skipped, not an image or video ({', '.join(IMAGE_EXTS + VIDEO_EXTS)})")
            else:
                found.append(full)
    return found


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def discover(inputs: Sequence[str | os.PathLike | np.ndarray],
             out_dir: str | None = None) -> tuple[list[Source], list[str], list[str]]:
    """Expands inputs into sources. Returns (sources, failures, notes): failures are inputs that cannot
    be used (missing path, empty folder, unknown file type given explicitly, an input inside ``out_dir``);
    notes are files skipped inside folders (not an image or video, a symlinked folder, a file given twice).

    Output names (``Source.name``) are the inputs' paths relative to the deepest folder holding every
    input (a folder input counts from its parent, so its own name is kept): unique per file, never with
    ``..``, so outputs always land under ``out_dir``. ``out_dir`` is never read as input.
    """
    out_real = os.path.realpath(out_dir) if out_dir else None
    failures: list[str] = []
    notes: list[str] = []
    files: list[tuple[int, str]] = []          # (input position, file path as given or found)
    for i, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            files.append((i, ""))
            continue
        path = os.fspath(item)
        if out_real is not None and os.path.exists(path) and _inside(os.path.realpath(path), out_real):
            failures.append(f"{path}: inside the --out folder {out_dir}; outputs are not read as inputs")
        elif os.path.isdir(path):
            found = _walk(path, out_real, notes)
            if not found:
                failures.append(f"{path}: folder holds no images or videos")
            files += [(i, f) for f in found]
        elif os.path.isfile(path):
            if kind_of(path) is None:
                known = ", ".join(IMAGE_EXTS + VIDEO_EXTS)
                failures.append(f"{path}: not an image or video (known extensions: {known})")
            else:
                files.append((i, path))
        else:
            failures.append(f"{path}: no such file or folder")
    # Folder inputs count from their parent (their name is part of the output names); files from theirs.
    anchors = [os.path.dirname(os.path.abspath(os.fspath(inputs[i]))) for i, f in files if f]
    root = os.path.commonpath(anchors) if anchors else ""
    sources: list[Source] = []
    seen: set[str] = set()
    for i, f in files:
        if not f:
            sources.append(Source("array", f"array_{i}", array=inputs[i]))
            continue
        real = os.path.realpath(f)
        if real in seen:
            notes.append(f"{f}: skipped, given more than once")
            continue
        seen.add(real)
        sources.append(Source(kind_of(f), os.path.relpath(os.path.abspath(f), root), f))
    return sources, failures, notes


def read_image(path: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file, read by the project's one image reader
    (``data_pipelines.images.load_image``: type by magic bytes, truncated JPEG/PNG and libjpeg warnings
    refused); MediaError naming the file if it cannot be used."""
    try:
        return images.load_image(path)
    except BadInputError as e:
        raise MediaError(str(e)) from e


def as_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """A numpy frame from the Python API: uint8 ``[H, W, 3]`` RGB (or ``[H, W]`` grey)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise MediaError(f"{name}: expected an RGB uint8 image [H, W, 3], got {a.dtype} {a.shape}")
    return a


# ffmpeg's log lines ("[mjpeg @ 0x55d2...] overread 8"); OpenCV lets it print errors only.
_FFMPEG_LINE_PREFIX = re.compile(r"^\[[\w ,.-]+ @ 0x[0-9a-f]+\]\s*")
_FFMPEG_LINE = re.compile(r"^\[[\w ,.-]+ @ 0x[0-9a-f]+\].*$", re.MULTILINE)


@dataclasses.dataclass
class Video:
    """An opened video: ``fps``, ``frames`` (the container's frame count: an estimate, 0 when unknown),
    ``size`` (w, h); after iterating, ``read`` frames were decoded and ``decoder_errors`` holds the decoder's
    error messages (ffmpeg's, captured from the C stderr: they mean damaged or truncated data)."""

    path: str
    fps: float
    frames: int
    size: tuple[int, int]
    read: int = 0
    decoder_errors: list[str] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """Yields (frame index, timestamp s, RGB uint8 frame); ``read`` counts the frames decoded."""
        with verbosity.stderr_captured() as captured:
            cap = cv2.VideoCapture(self.path)
        self._decoder_text(captured[0])
        try:
            while True:
                with verbosity.stderr_captured() as captured:
                    ok, frame = cap.read()
                self._decoder_text(captured[0])
                if not ok or frame is None:
                    break
                yield self.read, self.read / self.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                self.read += 1
        finally:
            cap.release()

    def _decoder_text(self, text: str) -> None:
        """Keeps ffmpeg's error lines; passes anything else written to stderr on."""
        self.decoder_errors += _ffmpeg_errors(text)
        rest = _FFMPEG_LINE.sub("", text).strip()
        if rest:
            print(rest, file=sys.stderr)

    def problem(self) -> str | None:
        """A failure message when the decoder reported damaged data (rows are kept for the decoded frames)."""
        if not self.decoder_errors:
            return None
        first = "; ".join(dict.fromkeys(self.decoder_errors[:3]))
        total = f" of {self.frames}" if self.frames else ""
        return (f"{self.path}: truncated or corrupt video: decoded {self.read}{total} frames; "
                f"the decoder reports: {first}")

    def note(self) -> str | None:
        """A note when a stream that ended cleanly had fewer frames than the container's estimate."""
        if not self.decoder_errors and 0 < self.read < self.frames:
            return (f"{self.path}: {self.read} frames decoded; the container estimated {self.frames} "
                    "(the stream ended cleanly; a container's frame count is an estimate)")
        return None


def _ffmpeg_errors(text: str) -> list[str]:
    """ffmpeg's error lines in captured stderr text, without their ``[codec @ address]`` prefix."""
    return [_FFMPEG_LINE_PREFIX.sub("", m.group(0)).strip() for m in _FFMPEG_LINE.finditer(text)]


def open_video(path: str) -> Video:
    """Opens a video and reads its container's fps, frame count and size; MediaError naming the file."""
    with verbosity.stderr_captured() as captured:
        cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            said = "; ".join(_ffmpeg_errors(captured[0])[:2])
            raise MediaError(f"{path}: cannot open as a video (corrupt or unsupported codec"
                             + (f"; the decoder reports: {said})" if said else ")"))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    if not fps > 0:
        raise MediaError(f"{path}: the video has no frame rate; cannot compute timestamps")
    return Video(path, fps, frames, size)
