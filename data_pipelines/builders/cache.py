"""The per-subject resume cache of release builds: a crashed build rerun with the same command replays the
subjects it finished instead of decoding and aligning their frames again.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from algrnet_jax.fileio import atomic_path
from data_pipelines.builders.examples import Frame
from data_pipelines.builders.raw_frames import raise_bad
from data_pipelines.errors import BadInputError
from data_pipelines.images import decode_image


def fingerprint(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each input file; a folder contributes every file in it.

    The files themselves, not the folder's own entry: an image rewritten in place changes its own size or
    mtime but not its folder's, and must invalidate the cache. Missing paths are ``(path, -1, -1)``.
    """
    out = []
    for p in sorted(set(paths)):
        if os.path.isdir(p):
            with os.scandir(p) as it:
                entries = sorted((e for e in it if e.is_file()), key=lambda e: e.name)
            out.append((p, -2, len(entries)))
            for e in entries:
                st = e.stat()
                out.append((e.path, st.st_size, st.st_mtime_ns))
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append((p, -1, -1))
            continue
        out.append((p, st.st_size, st.st_mtime_ns))
    return out


class SubjectCache:
    """A per-subject cache of aligned frames that makes a crashed build resume where it stopped.

    ``frames(subject, inputs, make)`` replays a finished subject from ``<dir>/<subject>.pkl`` when its
    input fingerprint (size and mtime of every input file, folders file by file) is unchanged; otherwise it
    yields the frames of ``make()`` and records, as each frame is consumed, its aligned image (lossless PNG,
    so the records written are byte-identical), landmarks and metadata, or the error its loading raised.
    The file is renamed into place only after the subject's last frame has been consumed, so a crash leaves
    no partial cache. Only one subject is in memory at a time (one frame, in fact).
    """

    VERSION = 2

    def __init__(self, directory: str | None):
        self.directory = directory
        self.hits = 0

    def _path(self, subject: str) -> str:
        return os.path.join(self.directory, re.sub(r"[^A-Za-z0-9_.-]", "_", subject) + ".pkl")

    def frames(self, subject: str, inputs: Sequence[str],
               make: Callable[[], Iterator[Frame]]) -> Iterator[Frame]:
        """The frames of ``subject``: replayed when ``inputs`` (files or folders) are unchanged, else those of
        ``make()``, recorded as they are consumed."""
        if self.directory is None:
            yield from make()
            return
        path = self._path(subject)
        header = {"version": self.VERSION, "subject": subject, "inputs": fingerprint(inputs)}
        replay = self._replay(path, header)
        if replay is not None:
            self.hits += 1
            yield from replay
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
            for frame in make():
                outcome: dict[str, Any] = {}
                frame.load = self._recording(frame, outcome)
                yield frame
                pickle.dump(self._record(frame, outcome), f, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _recording(frame: Frame, outcome: dict[str, Any]):
        load = frame.load if frame.load is not None else (lambda: (frame.image, frame.landmarks))

        def wrapped():
            try:
                image, landmarks = load()
            except BadInputError as e:
                outcome["error"] = str(e)
                raise
            outcome["image"], outcome["landmarks"] = image, landmarks
            return image, landmarks
        return wrapped

    @staticmethod
    def _record(frame: Frame, outcome: dict[str, Any]) -> dict[str, Any]:
        meta = {k: getattr(frame, k) for k in ("key", "subject", "sequence", "frame", "fold", "labels",
                                                "source", "interocular")}
        if "image" in outcome:
            image = np.asarray(outcome["image"])
            ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]) \
                if image.dtype == np.uint8 and image.ndim == 3 else (False, None)
            if ok:
                meta["png"] = png.tobytes()
                meta["landmarks"] = np.asarray(outcome["landmarks"])
                return meta
        meta["error"] = outcome.get("error", f"{frame.source}: frame was not loaded")
        return meta

    def _replay(self, path: str, header: dict[str, Any]) -> Iterator[Frame] | None:
        if not os.path.isfile(path):
            return None
        try:
            f = open(path, "rb")
            if pickle.load(f) != header:
                f.close()
                return None
        except (OSError, pickle.UnpicklingError, EOFError):
            return None

        def gen():
            with f:
                while True:
                    try:
                        rec = pickle.load(f)
                    except EOFError:
                        return
                    frame = Frame(**{k: rec[k] for k in ("key", "subject", "sequence", "frame", "fold",
                                                     "labels", "source", "interocular")})
                    if "png" in rec:
                        frame.image = decode_image(rec["png"], f"{path} ({frame.key})")
                        frame.landmarks = rec["landmarks"]
                    else:
                        frame.load = raise_bad(rec["error"])
                    yield frame
        return gen()

