"""The inference module: one eval-mode forward of a trained (or converted) checkpoint, with its inputs.

``Predictor.from_checkpoint(path)`` loads ``(config, variables)`` (``checkpoints.load_for_inference``:
a training work directory, a step directory or a ``convert-jaanet`` output) and owns

- ``preprocess(aligned)``: host-side numpy, aligned faces uint8 ``[..., S, S, 3]`` RGB (S = 200, the
  records' size) -> network input float32 ``[..., C, C, 3]`` in [-1, 1]; the same pixels as the eval
  input pipeline (``DataSource.eval_batches``: resize to ``aligned_size`` when it differs
  from S with TF's antialiased bilinear filter, rounded to uint8, centre crop, ``v / 127.5 - 1``);
- ``forward(images)``: the one jitted eval forward, device batch ``[B, C, C, 3]`` -> dict of device
  arrays (the model outputs of docs/design.md, e.g. ``landmarks`` [B, 49, 2] crop pixels,
  ``final_au_prob`` [B, n]); traced once per batch shape;
- ``run(images)``: numpy in, numpy out, in fixed-size batches (the last one padded, so one trace);
- the output names: ``class_names`` (``AU01``.. or the grades) and ``prob_key`` (the headline
  probability output), from the checkpoint's task (``tasks.get_task(config)``);
- ``run_arrays(images)``: ``run`` with the outputs in the names and layouts of the PyTorch JAA-Net release
  (``torch_layout``), what ``algrnet run-arrays`` writes.

Evaluation and the trainer can call ``forward`` on their device batches; ``algrnet run-arrays`` and
``algrnet predict`` use ``run``.

Arrays of already cropped and scaled faces (``to_nhwc``) are float ``[B, C, C, 3]`` (NHWC) or
``[B, 3, C, C]`` (NCHW, the PyTorch release's layout and the parity fixture's ``input``). Release layouts:

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
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from algrnet_jax import au_sets, export, tasks
from algrnet_jax.checkpoints import load_for_inference
from algrnet_jax.models.networks import create_model


# Model outputs (docs/design.md) in the order they are documented.
OUTPUT_KEYS: tuple[str, ...] = (
    "landmarks", "initial_au_maps", "refined_au_maps", "local_au_logprob", "au_logprob", "local_au_prob",
    "au_prob", "final_au_prob", "offsets", "scales", "grade_logprob", "local_grade_logprob", "final_grade_prob")
LAYOUTS = ("auto", "nchw", "nhwc")
# Model outputs that run-arrays writes; the first seven in the release's names and layouts.
_TORCH_LAYOUT = ("landmarks", "initial_au_maps", "refined_au_maps", "au_prob", "local_au_prob",
                 "au_logprob", "local_au_logprob")
_PASS_THROUGH = ("final_au_prob", "offsets", "scales", "grade_logprob")


# ------------------------------------------------------------------------------ preprocessing


def resize_aligned(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[..., S, S, 3]`` -> uint8 ``[..., size, size, 3]``, with the input pipeline's own op
    (``tf.image.resize`` bilinear, antialiased, rounded), so the pixels are bit-identical to training's."""
    x = np.asarray(images)
    if x.shape[-2] == size:
        return x
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow (seconds to import) only for sizes other than the records' (the paper size never resizes).
    import tensorflow as tf

    flat = x.reshape((-1,) + x.shape[-3:])
    y = tf.image.resize(flat, [size, size], method="bilinear", antialias=True)
    y = tf.cast(tf.clip_by_value(tf.round(y), 0.0, 255.0), tf.uint8).numpy()
    return y.reshape(x.shape[:-3] + (size, size, 3))


def preprocess(aligned: np.ndarray, aligned_size: int, crop_size: int) -> np.ndarray:
    """Aligned faces uint8 ``[..., S, S, 3]`` RGB -> float32 ``[..., C, C, 3]`` in [-1, 1] (eval pipeline)."""
    x = np.asarray(aligned)
    if x.dtype != np.uint8 or x.ndim < 3 or x.shape[-1] != 3 or x.shape[-3] != x.shape[-2]:
        raise ValueError(f"expected aligned faces uint8 [..., S, S, 3], got {x.dtype} {x.shape}")
    x = resize_aligned(x, aligned_size)
    if crop_size > aligned_size:
        raise ValueError(f"crop_size {crop_size} larger than aligned_size {aligned_size}")
    o = (aligned_size - crop_size) // 2
    crop = x[..., o:o + crop_size, o:o + crop_size, :]
    return crop.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)


def crop_to_aligned(points: np.ndarray, aligned_size: int, crop_size: int,
                    record_size: int = au_sets.ALIGNED_SIZE) -> np.ndarray:
    """Points ``[..., 2]`` in network-crop pixels -> pixels of the ``record_size`` aligned face.

    Inverse of the eval pipeline's landmark maths (half-pixel-centre resize, then the centre-crop shift).
    """
    o = (aligned_size - crop_size) // 2
    p = np.asarray(points, np.float64) + o
    return (p + 0.5) * (record_size / aligned_size) - 0.5


# ------------------------------------------------------------------------- arrays of cropped faces


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



# ---------------------------------------------------------------------------------- predictor


@functools.lru_cache(maxsize=8)
def jitted_forward(model: Any, keys: tuple[str, ...] | None) -> Callable[..., Any]:
    """The jitted eval forward of a (hashable) Flax model, keeping ``keys`` (None: every output).

    Cached per (model, keys): Predictors, evaluation and the trainer's per-epoch eval of the same model
    share one compilation. ``(variables, images [B, C, C, 3]) -> {key: [B, ...]}``.
    """
    def forward(variables, images):
        outputs = model.apply(variables, images, train=False)
        return {k: v for k, v in outputs.items() if keys is None or k in keys}

    return jax.jit(forward)


class Predictor:
    """A model in eval mode with its config: preprocessing, one jitted forward, output names.

    Attributes:
      config: the checkpoint's ConfigDict; ``crop_size``, ``aligned_size`` and ``task`` come from it.
      variables: ``{"params", "batch_stats"}`` on the default device.
      batch_size: faces per forward in :meth:`run` (the last batch is padded to it).
      source: the checkpoint path ("" when built from variables).
      backend, dtype: the route :meth:`run` takes (``export.choose_backend``; default ``auto``: OpenVINO
        bfloat16 on a CPU with bfloat16 units where the export extra is installed, else the jitted JAX forward
        in float32): ``jax``, or an exported program run by ``openvino`` (float32 / bfloat16) or
        ``onnxruntime``. The first :meth:`run` prints ``inference: <backend> <dtype> on <device>`` to stderr.
        :meth:`forward` (device batches, used by evaluation and the trainer) is always the jitted JAX forward.
    """

    def __init__(self, config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
                 model: Any = None, batch_size: int = 16, source: str = "", backend: str = "auto",
                 dtype: str = "auto"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend, self.dtype = export.choose_backend(backend, dtype)
        self._exported: dict[tuple[int, tuple[str, ...] | None], export.ExportedForward] = {}
        self._auto = backend == "auto"     # falls back to the jax backend where the export fails
        self._announced = False
        self.config = config
        self.model = model if model is not None else create_model(config)
        self.variables = jax.device_put({"params": variables["params"],
                                         "batch_stats": variables.get("batch_stats", {})})
        self.batch_size = int(batch_size)
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, batch_size: int = 16, model: Any = None,
                        backend: str = "auto", dtype: str = "auto") -> "Predictor":
        """Loads a checkpoint (training work dir, step dir, or converted JAA-Net checkpoint)."""
        config, variables = load_for_inference(path)
        return cls(config, variables, model=model, batch_size=batch_size, source=os.fspath(path),
                   backend=backend, dtype=dtype)

    # -- names and sizes
    @property
    def crop_size(self) -> int:
        return int(self.config.crop_size)

    @property
    def aligned_size(self) -> int:
        return int(self.config.aligned_size)

    @property
    def task(self) -> tasks.Task:
        """The checkpoint's task object (``tasks.get_task(config)``; ``task.name``: "au" | "paralysis")."""
        return tasks.get_task(self.config)

    @property
    def class_names(self) -> list[str]:
        """``AU01``, ``AU02``, ... (config.aus order) or the paralysis grades."""
        return self.task.class_names(self.config)

    @property
    def prob_key(self) -> str:
        """The headline probability output: ``final_au_prob`` [B, n] or ``final_grade_prob`` [B, 4]."""
        return self.task.prob_key

    # -- preprocessing
    def preprocess(self, aligned: np.ndarray) -> np.ndarray:
        """Aligned faces uint8 ``[..., 200, 200, 3]`` RGB -> network input float32 ``[..., C, C, 3]``."""
        return preprocess(aligned, self.aligned_size, self.crop_size)

    def landmarks_to_aligned(self, landmarks: np.ndarray) -> np.ndarray:
        """Predicted landmarks ``[..., 49, 2]`` (crop pixels) -> 200x200 aligned-face pixels."""
        return crop_to_aligned(landmarks, self.aligned_size, self.crop_size)

    # -- forward
    def _jitted(self, keys: tuple[str, ...] | None) -> Callable[..., Any]:
        return jitted_forward(self.model, keys)

    def forward(self, images: Any, keys: Sequence[str] | None = None) -> dict[str, jax.Array]:
        """Device (or numpy) batch float32 ``[B, C, C, 3]`` in [-1, 1] -> dict of device arrays.

        ``keys`` limits the outputs returned (fewer transfers); None returns every model output.
        Compiled once per (batch shape, keys).
        """
        return self._jitted(None if keys is None else tuple(keys))(self.variables, images)

    def exported(self, batch_size: int, keys: Sequence[str] | None = None) -> export.ExportedForward:
        """The eval forward exported for ``batch_size`` faces and compiled by :attr:`backend` (once per Predictor
        and shape; the exported file is cached on disk, ``export.cached_export``)."""
        key = (int(batch_size), None if keys is None else tuple(sorted(keys)))
        if key not in self._exported:
            data, names, _ = export.cached_export(self.model, self.variables, self.crop_size, key[0],
                                                  self.config.to_json(), key[1])
            self._exported[key] = export.ExportedForward(data, names, self.backend, self.dtype)
        return self._exported[key]

    def _announce(self, note: str = "") -> None:
        """``inference: <backend> <dtype> on <device>`` to stderr, once (and again when auto falls back)."""
        units = " ".join(export.cpu_units()) or "no vector units listed"
        where = f"cpu ({units})" if jax.default_backend() == "cpu" else jax.default_backend()
        print(f"inference: {self.backend} {self.dtype} on {where}{note}", file=sys.stderr, flush=True)
        self._announced = True

    def run(self, images: np.ndarray, keys: Sequence[str] | None = None, batch_size: int | None = None,
            fixed_shape: bool = False) -> dict[str, np.ndarray]:
        """Numpy faces ``[N, C, C, 3]`` -> numpy outputs ``[N, ...]`` in batches of ``batch_size``.

        Every batch has the same shape (the last one is zero-padded and the padding dropped), so the
        forward is traced once per call size; ``fixed_shape`` pads even ``N < batch_size`` to a full
        batch (one trace for calls of any size, as predict makes). ``N = 0`` returns an empty dict.
        """
        bs = int(batch_size or self.batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        x = np.asarray(images, np.float32)
        n = x.shape[0]
        if n == 0:
            return {}
        if not self._announced:
            self._announce()
        if not fixed_shape and self.backend == "jax":
            bs = min(bs, n)        # an exported program has one batch size: always pad to it
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, n, bs):
            part = x[start:start + bs]
            real = part.shape[0]
            if real < bs:
                part = np.concatenate([part, np.zeros((bs - real,) + part.shape[1:], np.float32)])
            if self.backend != "jax":
                try:
                    out = self.exported(bs, keys)(part)
                except export.ExportError as e:
                    if not self._auto:
                        raise
                    self.backend, self.dtype = "jax", "float32"
                    self._announce(f" ({e})")
            if self.backend == "jax":
                out = jax.device_get(self.forward(part, keys))
            chunks.append({k: np.asarray(v)[:real] for k, v in out.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def run_arrays(self, images_nhwc: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """:meth:`run` over faces ``[N, C, C, 3]`` (``to_nhwc``) -> the outputs of :func:`torch_layout`
        (the PyTorch release's names and layouts; what ``algrnet run-arrays`` writes)."""
        return torch_layout(self.run(images_nhwc, keys=_TORCH_LAYOUT + _PASS_THROUGH, batch_size=batch_size))
