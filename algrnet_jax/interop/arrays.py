"""Runs a model in eval mode on arrays of already cropped and scaled faces; PyTorch-layout outputs.

Inputs are float arrays of faces cropped to ``config.crop_size`` and scaled to [-1, 1], either NCHW
(``[B, 3, C, C]``, the PyTorch release's layout and the parity fixture's ``input``) or NHWC
(``[B, C, C, 3]``). Outputs use the names and layouts of the JAA-Net release
(``tests/fixtures/jaanet_parity_bp4d/expected.npz``):

| name | shape |
|---|---|
| ``landmarks`` | [B, 98] (x1, y1, x2, y2, ...) crop pixels |
| ``initial_au_maps`` | [B, n, M, M] |
| ``refined_au_maps`` | [B, n, M-8, M-8] |
| ``au_prob``, ``local_au_prob`` | [B, n] |
| ``au_logprob``, ``local_au_logprob`` | [B, 2, n] (absent, present) x AU |

plus, where the model has them, ``final_au_prob`` [B, n], ``offsets`` [B, n, 2], ``scales`` [B, n] and
``grade_logprob`` [B, 4] in the model's own layout.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

LAYOUTS = ("auto", "nchw", "nhwc")
# Model outputs that run-arrays writes; the first seven in the release's names and layouts.
_TORCH_LAYOUT = ("landmarks", "initial_au_maps", "refined_au_maps", "au_prob", "local_au_prob",
                 "au_logprob", "local_au_logprob")
_PASS_THROUGH = ("final_au_prob", "offsets", "scales", "grade_logprob")


def to_nhwc(x: np.ndarray, crop_size: int, layout: str = "auto", name: str = "input") -> tuple[np.ndarray, str]:
    """Validates a face array and returns it as float32 NHWC [B, C, C, 3] with the layout it had.

    ``layout="auto"`` picks NCHW when axis 1 has 3 channels and NHWC when the last axis does; an array
    where both are 3 is ambiguous and must be given explicitly. ``name`` is used in error messages.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D array of faces [B, 3, {crop_size}, {crop_size}] (NCHW) or "
                         f"[B, {crop_size}, {crop_size}, 3] (NHWC), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float pixels scaled to [-1, 1], got dtype {x.dtype}")
    if layout == "auto":
        nchw, nhwc = x.shape[1] == 3, x.shape[3] == 3
        if nchw and nhwc:
            raise ValueError(f"{name}: shape {x.shape} is ambiguous; pass --layout nchw or nhwc")
        if not (nchw or nhwc):
            raise ValueError(f"{name}: shape {x.shape} has no axis of 3 colour channels (axis 1 for NCHW, "
                             "axis 3 for NHWC)")
        layout = "nchw" if nchw else "nhwc"
    y = x.transpose(0, 2, 3, 1) if layout == "nchw" else x
    if y.shape[1:] != (crop_size, crop_size, 3):
        raise ValueError(f"{name}: as {layout.upper()} this is {y.shape[1]}x{y.shape[2]} with {y.shape[3]} "
                         f"channels; the checkpoint wants {crop_size}x{crop_size} RGB crops")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return np.ascontiguousarray(y, np.float32), layout


def torch_layout(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Model outputs (docs/design.md) -> the release's names and layouts (see module docstring)."""
    out: dict[str, np.ndarray] = {}
    for k in _TORCH_LAYOUT + _PASS_THROUGH:
        if k not in outputs:
            continue
        v = np.asarray(outputs[k])
        if k == "landmarks":
            v = v.reshape(v.shape[0], -1)                 # [B, 49, 2] -> [B, 98]
        elif k in ("au_logprob", "local_au_logprob"):
            v = v.transpose(0, 2, 1)                      # [B, n, 2] -> [B, 2, n]
        out[k] = v
    return out


def check_range(x: np.ndarray, name: str = "input", tolerance: float = 1e-3) -> None:
    """Raises ValueError unless every value of ``x`` lies in [-1, 1] (within ``tolerance``)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < -1.0 - tolerance or hi > 1.0 + tolerance:
        hint = (" It looks like unscaled 0..255 pixels: scale them with v / 127.5 - 1." if hi > 2.0 else "")
        raise ValueError(f"{name}: values span [{lo:.4g}, {hi:.4g}], but faces must be scaled to [-1, 1].{hint} "
                         "Pass --no-range-check to run anyway.")


def check_finite(outputs: Mapping[str, np.ndarray], source: str) -> None:
    """Raises ValueError naming the outputs that hold NaN or infinite values."""
    bad = [k for k, v in outputs.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"{source}: the model produced NaN or infinite values in {', '.join(bad)}; the "
                         "checkpoint's weights are probably not finite (re-convert or retrain it)")


def run_arrays(predictor: Any, images_nhwc: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Eval-mode forward of an :class:`algrnet_jax.inference.Predictor` over ``images_nhwc``
    [N, C, C, 3] (fixed-size batches, the last one padded); returns :func:`torch_layout` outputs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch_layout(predictor.run(images_nhwc, keys=_TORCH_LAYOUT + _PASS_THROUGH, batch_size=batch_size))
