"""Files a reader never sees half-written: write under a temporary name beside the target, rename when complete."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary name beside ``path`` (``<path>.partial<ext>``: the extension is kept for writers that
    choose the format by it); renames it to ``path`` only if the block succeeds, and removes it otherwise."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial{os.path.splitext(path)[1]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
