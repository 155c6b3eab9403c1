"""The eval forward as an ONNX program, and the CPU runtimes that run it (OpenVINO, ONNX Runtime).

The trained JAX model stays the one definition: :func:`export_onnx` traces ``model.apply(variables, images,
train=False)`` (the same call as ``inference.jitted_forward``) with jax2onnx into an ONNX graph with the weights
as initializers. Nothing about the model is written twice. Inference-only primitives need no special case:
the custom VJPs of the model (max-pool, relations) are traced through their forward functions, and their
backward rules never enter the export.

``ExportedForward`` runs that graph on the CPU:

- ``openvino``: OpenVINO's CPU plugin, float32 or bfloat16 (``INFERENCE_PRECISION_HINT``). bfloat16 is used
  only where the CPU has bfloat16 units (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); elsewhere the plugin
  would emulate it and the runtime runs float32.
- ``onnxruntime``: ONNX Runtime's CPU execution provider, float32 (it has no bfloat16 convolution kernel).

Both runtimes are an optional extra (``requirements-export.txt``); without them the Predictor keeps the jitted
JAX forward. :func:`choose_backend` picks the route for ``backend="auto"``: the jitted JAX forward on a GPU,
OpenVINO on a CPU when it and jax2onnx are installed, JAX otherwise.

Exporting a paper-size model takes minutes on a small CPU (jax2onnx converts primitive by primitive), so an
exported program is cached on disk (``cache_dir()``), keyed by a hash of the weights, the config, the batch size
and the library versions: the second start of the same checkpoint reads the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.extend
import numpy as np

from algrnet_jax.fileio import atomic_path

BACKENDS: tuple[str, ...] = ("auto", "jax", "openvino", "onnxruntime")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
INPUT_NAME = "images"
# /proc/cpuinfo flags of the units that run bfloat16 natively (matrix: AMX; vector: AVX512-BF16).
BF16_UNITS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
_REPORTED_UNITS: tuple[str, ...] = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


# ------------------------------------------------------------------------------------------ the CPU


def cpu_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """The value of field ``name`` (``flags``, ``model name``) of the first processor in ``cpuinfo`` ("" where
    the file or the field is missing: not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first processor in ``cpuinfo`` (empty where the file is missing: not Linux)."""
    return frozenset(cpu_field("flags", cpuinfo).split())


def cpu_units(flags: frozenset[str] | None = None) -> list[str]:
    """The vector / matrix units among :data:`_REPORTED_UNITS` that the CPU has, widest first."""
    flags = cpu_flags() if flags is None else flags
    return [u for u in _REPORTED_UNITS if u in flags]


def bf16_native(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU computes bfloat16 in hardware (AMX or AVX512-BF16), not by emulation."""
    flags = cpu_flags() if flags is None else flags
    return any(u in flags for u in BF16_UNITS)


def runtime_available(backend: str) -> bool:
    """Whether the packages ``backend`` needs (jax2onnx to export, the runtime to run) are installed."""
    if backend == "jax":
        return True
    module = {"openvino": "openvino", "onnxruntime": "onnxruntime"}[backend]
    return all(importlib.util.find_spec(m) is not None for m in ("jax2onnx", "onnx", module))


def choose_backend(backend: str = "auto", dtype: str = "auto", platform: str | None = None,
                   flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``(backend, dtype)`` to run: the request resolved for this machine.

    ``backend="auto"``: ``jax`` on a GPU / TPU (``platform``, default ``jax.default_backend()``); on a CPU with
    bfloat16 units (``bf16_native``) ``openvino`` when installed, else ``jax``: OpenVINO float32 runs the JAA-Net
    forward no faster than XLA:CPU (0.98x, docs/performance.md) and costs an export, so only bfloat16 pays.
    ``dtype="auto"``: ``bfloat16`` for OpenVINO on a CPU with bfloat16 units, ``float32`` otherwise (the JAX path
    and ONNX Runtime run float32). An explicit ``bfloat16`` on a CPU without the units, or on a backend that
    cannot run it, raises ValueError (it would be emulated: slower).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    platform = platform or jax.default_backend()
    native = bf16_native(flags)
    if backend == "auto":
        backend = "openvino" if platform == "cpu" and native and runtime_available("openvino") else "jax"
    elif backend != "jax" and not runtime_available(backend):
        raise ValueError(f"backend {backend!r} needs jax2onnx, onnx and {backend} "
                         "(pip install -r requirements-export.txt)")
    if dtype == "auto":
        dtype = "bfloat16" if backend == "openvino" and native else "float32"
    elif dtype == "bfloat16":
        if backend != "openvino":
            raise ValueError(f"bfloat16 inference runs on the openvino backend, not {backend!r}")
        if not native:
            raise ValueError("this CPU has no bfloat16 units (avx512_bf16 / amx_bf16 in /proc/cpuinfo): bfloat16 "
                             "would be emulated; use float32")
    return backend, dtype


# ------------------------------------------------------------------------------------------ export

class ExportError(ValueError):
    """jax2onnx cannot convert the model's eval forward (a primitive it has no conversion for, or a graph it
    builds wrongly); ``backend="auto"`` then runs the jax backend."""


def _forward_outputs(model: Any, variables: Mapping[str, Any], images: jax.Array,
                     keys: Sequence[str] | None) -> dict[str, jax.Array]:
    outputs = model.apply(variables, images, train=False)
    return {k: v for k, v in outputs.items() if keys is None or k in keys}


def export_onnx(model: Any, variables: Mapping[str, Any], crop_size: int, batch_size: int,
                keys: Sequence[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The eval forward ``images float32 [batch_size, C, C, 3] -> outputs`` as an ONNX model (serialized).

    Returns ``(model bytes, outputs)``: ``outputs`` maps every model output name (sorted) to the graph output
    that holds it. The graph outputs are named after the model outputs; an output that is the same array as an
    earlier one (JAA-Net's ``final_au_prob`` is its ``au_prob``) is one graph output, under the first name.
    The mapping is also stored in the file (metadata ``algrnet_outputs``).
    """
    from jax2onnx import to_onnx

    params = jax.tree.map(np.asarray, dict(variables))
    spec = jax.ShapeDtypeStruct((batch_size, crop_size, crop_size, 3), np.float32)
    # One trace of the forward. jax2onnx traces Flax modules into its own primitives (e.g. ``linen.conv``), some
    # without the batching rule ALGRNet's vmapped layers need; given the program as a jaxpr
    # (``inference_program``) it sees only JAX's own.
    program, shapes = jax.make_jaxpr(lambda x: _forward_outputs(model, params, x, keys), return_shape=True)(spec)
    names = tuple(sorted(shapes))          # a dict flattens in sorted-key order: the program's outputs follow it
    outvars = program.jaxpr.outvars
    first_index = [next(j for j, v in enumerate(outvars) if v is outvars[i]) for i in range(len(names))]
    first = {k: names[first_index[i]] for i, k in enumerate(names)}
    unique_index = [i for i, j in enumerate(first_index) if i == j]
    unique = tuple(names[i] for i in unique_index)

    def forward(images):
        out = inference_program(program.jaxpr, program.consts, images)
        return tuple(out[i] for i in unique_index)

    try:
        with _linear_output_check():
            proto = to_onnx(forward, [spec], model_name="algrnet_eval_forward", input_names=[INPUT_NAME],
                            output_names=list(unique), return_mode="proto")
    except Exception as e:     # jax2onnx raises plain errors (NotImplementedError, ValueError, ...) per plugin
        raise ExportError(f"jax2onnx could not convert the eval forward: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    missing = set(unique) - {o.name for o in proto.graph.output}
    if missing:
        raise RuntimeError(f"the exported graph lacks outputs {sorted(missing)}")
    proto.metadata_props.add(key="algrnet_outputs", value=json.dumps(first))
    return proto.SerializeToString(), first


def inference_program(jaxpr: Any, consts: Sequence[Any], *args: Any) -> list[Any]:
    """Evaluates ``jaxpr`` on ``args`` (under a trace: re-emits it) with the forms jax2onnx cannot convert
    rewritten into equal ones:

    - nested ``jit`` calls, custom-derivative calls (the max-pool and relation VJPs) and ``jax.checkpoint``
      (rematerialised SkipBiLSTM steps) inlined: their forward functions, the only part inference runs;
    - a reverse ``scan`` (the backward direction of SkipBiLSTM) as a forward scan over the reversed sequence
      with its stacked outputs reversed back: the same steps in the same order, so bit-identical;
    - a ``reshape`` with ``dimensions`` (a transposition before the reshape: vmap of the per-AU convolutions
      folds the AU axis into the kernel this way) as a ``transpose`` and a plain ``reshape``: jax2onnx's
      conversion drops ``dimensions``, which put ALGRNet's local outputs up to 1e-2 off.
    """
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in ("jit", "pjit", "closed_call"):
            inner = eqn.params["jaxpr"]
            outs = inference_program(inner.jaxpr, inner.consts, *ins)
        elif name in ("custom_vjp_call", "custom_jvp_call"):
            inner = eqn.params["call_jaxpr"]
            outs = inference_program(inner.jaxpr, inner.consts, *ins)
        elif name in ("remat2", "checkpoint"):     # jax.checkpoint: the forward is its jaxpr (open, no consts)
            outs = inference_program(eqn.params["jaxpr"], (), *ins)
        elif name == "scan" and eqn.params["reverse"]:
            params = dict(eqn.params, reverse=False)
            fixed = params["num_consts"] + params["num_carry"]
            xs = [jax.numpy.flip(x, 0) for x in ins[fixed:]]
            outs = eqn.primitive.bind(*ins[:fixed], *xs, **params)
            k = params["num_carry"]
            outs = list(outs[:k]) + [jax.numpy.flip(y, 0) for y in outs[k:]]
        elif name == "reshape" and eqn.params.get("dimensions") is not None:
            # reshape with a transposition first (vmap of the per-AU convolutions folds the AU axis into the
            # kernel this way): jax2onnx drops ``dimensions``, so the transposition is made its own equation
            outs = [jax.lax.reshape(jax.lax.transpose(ins[0], eqn.params["dimensions"]), eqn.params["new_sizes"])]
        else:
            outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


@contextlib.contextmanager
def _linear_output_check():
    """Two parts of jax2onnx are quadratic in the graph size, minutes to hours for this model's ~5000 primitives
    and ~1000 weights on a small CPU; both are replaced for the export:

    - after every primitive it checks that the outputs are connected by scanning every node and initializer
      built so far: a value with a producer node is connected, only the others need the scan;
    - its graph clean-up passes (``optimize_graph``: dead nodes, redundant transposes and casts, ConvTranspose
      bias folding) look up producer nodes by scanning the graph; they are skipped. OpenVINO and ONNX Runtime
      run their own graph optimizations when they compile the model, and the tests compare the unoptimized
      graph's outputs with the JAX forward.
    """
    from jax2onnx.converter import conversion_api, output_binding

    scan, optimize = output_binding._value_is_graph_connected, conversion_api.optimize_graph

    def connected(ctx: Any, value: Any) -> bool:
        return value.producer() is not None or scan(ctx, value)

    output_binding._value_is_graph_connected = connected
    conversion_api.optimize_graph = lambda model: model
    try:
        yield
    finally:
        output_binding._value_is_graph_connected, conversion_api.optimize_graph = scan, optimize


def cache_dir() -> pathlib.Path:
    """Where exported programs are cached: ``$ALGRNET_CACHE/onnx`` or ``~/.cache/algrnet/onnx``."""
    root = os.environ.get("ALGRNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "algrnet")
    return pathlib.Path(root) / "onnx"


def cache_key(variables: Mapping[str, Any], config_json: str, batch_size: int,
              keys: Sequence[str] | None) -> str:
    """sha256 of the weights (every leaf's path, dtype, shape and bytes), the config, the batch size, the kept
    outputs and the jax / jax2onnx versions: the same key means the same exported program."""
    import jax2onnx

    h = hashlib.sha256()
    h.update(json.dumps([config_json, batch_size, sorted(keys) if keys else None, jax.__version__,
                         getattr(jax2onnx, "__version__", "")]).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(dict(variables)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def cached_export(model: Any, variables: Mapping[str, Any], crop_size: int, batch_size: int, config_json: str,
                  keys: Sequence[str] | None = None) -> tuple[bytes, dict[str, str], bool]:
    """:func:`export_onnx` through the disk cache: ``(model bytes, outputs, read from the cache)``.

    The file is written to a temporary name and renamed, so a reader never sees half a file; a cache that
    cannot be written (read-only home) only costs the next start another export.
    """
    path = cache_dir() / f"{cache_key(variables, config_json, batch_size, keys)}.onnx"
    if path.is_file():
        data = path.read_bytes()
        names = read_output_names(data)
        if names:
            return data, names, True
    data, names = export_onnx(model, variables, crop_size, batch_size, keys)
    try:
        with atomic_path(str(path)) as tmp:
            pathlib.Path(tmp).write_bytes(data)
    except OSError:
        pass
    return data, names, False


def read_output_names(data: bytes) -> dict[str, str]:
    """Model output name -> graph output name, from an exported file's ``algrnet_outputs`` metadata."""
    import onnx

    proto = onnx.load_from_string(data)
    for prop in proto.metadata_props:
        if prop.key == "algrnet_outputs":
            return dict(json.loads(prop.value))
    return {}


# ------------------------------------------------------------------------------------------ runtimes


def import_openvino() -> Any:
    """``import openvino`` with its usage telemetry off.

    Importing openvino imports its model converter, which sends a usage event to Google Analytics from a forked
    process when the ``openvino_telemetry`` package is installed (a pip dependency of openvino) and no consent
    file says otherwise; the fork also makes JAX warn that it may deadlock. With the package marked absent the
    converter uses its built-in no-op stub. Nothing else of openvino uses it.
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None      # `import openvino_telemetry` raises ImportError
    import openvino

    return openvino


class ExportedForward:
    """An exported eval forward compiled by a CPU runtime: numpy ``[B, C, C, 3]`` -> ``{name: [B, ...]}``.

    ``outputs`` maps model output names to graph outputs (:func:`export_onnx`); ``B`` is the batch size the
    program was exported with (callers pad, as ``Predictor.run`` does).
    """

    def __init__(self, data: bytes, outputs: Mapping[str, str], backend: str, dtype: str = "float32",
                 threads: int | None = None):
        if backend not in ("openvino", "onnxruntime"):
            raise ValueError(f"ExportedForward runs openvino or onnxruntime, not {backend!r}")
        if backend == "onnxruntime" and dtype != "float32":
            raise ValueError("onnxruntime runs the exported program in float32 only")
        self.backend, self.dtype, self.outputs = backend, dtype, dict(outputs)
        self._graph_outputs = sorted(set(self.outputs.values()))
        threads = threads or os.cpu_count() or 1
        if backend == "openvino":
            core = import_openvino().Core()
            compiled = core.compile_model(core.read_model(data, b""), "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bfloat16" else "f32",
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
            self._request = compiled.create_infer_request()
            self._ports = [compiled.output(k) for k in self._graph_outputs]
            self.batch_size = int(compiled.input(0).get_partial_shape()[0].get_length())
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            self.batch_size = int(self._session.get_inputs()[0].shape[0])

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(images, np.float32)
        if self.backend == "openvino":
            res = self._request.infer({0: x})
            values = [np.array(res[port]) for port in self._ports]
        else:
            values = self._session.run(self._graph_outputs, {INPUT_NAME: x})
        by_graph = dict(zip(self._graph_outputs, values))
        return {k: by_graph[g] for k, g in self.outputs.items()}
