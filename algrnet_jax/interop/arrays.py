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

import functools
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


@functools.lru_cache(maxsize=4)
def _jitted_forward(model: Any):
    """One jitted eval forward per (hashable) model, keeping only the outputs run-arrays writes."""
    import jax

    keep = _TORCH_LAYOUT + _PASS_THROUGH

    def forward(variables, images):
        outputs = model.apply(variables, images, train=False)
        return {k: outputs[k] for k in keep if k in outputs}

    return jax.jit(forward)


def run_arrays(config: Any, variables: Any, images_nhwc: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Eval-mode forward over ``images_nhwc`` [N, C, C, 3] in fixed-size batches (last one padded, so it
    is traced once); returns :func:`torch_layout` outputs for the N faces."""
    from algrnet_jax.models.networks import create_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    forward = _jitted_forward(create_model(config))
    n = images_nhwc.shape[0]
    bs = min(batch_size, n)
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, n, bs):
        x = images_nhwc[start:start + bs]
        real = x.shape[0]
        if real < bs:
            x = np.concatenate([x, np.zeros((bs - real,) + x.shape[1:], x.dtype)])
        chunks.append({k: np.asarray(v)[:real] for k, v in forward(variables, x).items()})
    return torch_layout({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})
