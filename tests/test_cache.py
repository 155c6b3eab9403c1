"""The per-subject resume cache of release builds (builders/cache.py)."""
from __future__ import annotations

import os

import numpy as np

from data_pipelines import errors
from data_pipelines.builders import cache, examples


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_subject_cache_replays_identical_frames(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (200, 200, 3), dtype=np.uint8) for _ in range(3)]
    calls = []

    def make():
        for i, im in enumerate(images):
            def load(i=i, im=im):
                calls.append(i)
                if i == 1:
                    raise errors.BadInputError(f"frame {i}: broken")
                return im, np.full((49, 2), float(i), np.float32)
            yield examples.Frame(key=f"S/T/{i}", subject="S", sequence="T", frame=i, fold=1, labels=[1, 0],
                               source=f"src{i}", load=load)

    def consume(frames):
        out = []
        for f in frames:
            try:
                out.append((f.key, f.labels, *(f.load() if f.load else (f.image, f.landmarks))))
            except errors.BadInputError as e:
                out.append((f.key, str(e)))
        return out

    inputs = [_write(tmp_path / "in.txt", "a")]
    subject_cache = cache.SubjectCache(str(tmp_path / "cache"))
    crashed = subject_cache.frames("S", inputs, make)
    next(crashed).load()                                  # a crash after one frame leaves no cache file
    crashed.close()
    assert os.listdir(tmp_path / "cache") == []
    first = consume(subject_cache.frames("S", inputs, make))
    assert calls == [0, 0, 1, 2] and os.path.exists(tmp_path / "cache" / "S.pkl")
    second = consume(subject_cache.frames("S", inputs, make))
    assert calls == [0, 0, 1, 2] and subject_cache.hits == 1       # replayed: nothing loaded again
    assert [x[0] for x in second] == [x[0] for x in first] and second[1] == first[1]
    for a, b in ((first[0], second[0]), (first[2], second[2])):
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    _write(tmp_path / "in.txt", "changed input")             # inputs changed -> rebuilt
    consume(subject_cache.frames("S", inputs, make))
    assert calls[-3:] == [0, 1, 2]
