"""Released PyTorch JAA-Net state_dicts <-> Flax variables of ``create_model(get_config("jaanet"))``.

The release saves six state_dicts per epoch (``release.MODULES``); every entry maps to one Flax leaf
(or one slice of a leaf that carries a leading cell / AU axis), as documented in
``algrnet_jax/models/networks.py``:

| release (PyTorch) | Flax (``params`` / ``batch_stats``) |
|---|---|
| ``region_learning.multiscale_feat.{0,2}`` | ``region_learning/layer{1,2}`` |
| ``  .local_conv_branch{k}.{bns,convs}.<cell>`` | ``  branch{k}/{bn,conv}[cell]`` |
| ``align_net.align_feat.feat_extract`` / ``align_output.{0,1}`` | ``align_feat`` / ``align_output/dense{1,2}`` |
| ``local_attention_refine.local_aus_attention.<au>.{0,3,6,9 / 1,4,7}`` | ``attention_refine/conv{1..4} / bn{1..3}[au]`` |
| ``local_au_net.local_aus_branch.<au>.feat_extract`` | ``local_au_feat[au]`` |
| ``local_au_net.local_aus_output.<au>.{0,1}`` | ``local_au_output/dense{1,2}[au]`` |
| ``global_au_feat.feat_extract`` / ``au_net.au_output.{0,1}`` | ``global_au_feat`` / ``au_output/dense{1,2}`` |
| HLFeat ``feat_extract.{0,3,7,10,14,17 / 1,4,8,11,15,18}`` | ``conv1..conv6 / bn1..bn6`` |

Conv weights OIHW -> kernels HWIO; linear weights [out, in] -> kernels [in, out]; BN ``weight``, ``bias``,
``running_mean``, ``running_var`` -> ``scale``, ``bias`` (params) and ``mean``, ``var`` (batch_stats).
``num_batches_tracked`` has no Flax counterpart (PyTorch uses it only when BN momentum is None) and is
dropped. The NCHW flatten before dense layers and the [2, n] view of the AU logits are the model's.
Any unused, missing, mis-shaped or non-finite (NaN / Inf) entry fails the conversion with a message listing
them by name. Values are cast to the config's ``model.param_dtype`` (float32, or float64 under
``jax_enable_x64``: the float64 one-step check, ``algrnet check-step``) unless ``dtype`` is given.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import au_sets, tasks
from algrnet_jax.configs import get_config
from algrnet_jax.errors import UserError
from algrnet_jax.interop.release import MODULES, StateDicts, pth_path
from algrnet_jax.models.networks import create_model
from algrnet_jax.checkpoints import save_inference_checkpoint
from algrnet_jax.training.precision import param_dtype

_HLFEAT_CONVS = (0, 3, 7, 10, 14, 17)
_HLFEAT_BNS = (1, 4, 8, 11, 15, 18)
_REFINE_CONVS = (0, 3, 6, 9)
_REFINE_BNS = (1, 4, 7)
_REGION_GRIDS = (8, 4, 2)
_BN_FIELDS = (("weight", "params", "scale"), ("bias", "params", "bias"),
              ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var"))


class ConversionError(UserError, ValueError):
    """A release file is unreadable or its entries do not match the model; the message names them."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One release state_dict entry and where it lives in the Flax variables.

    ``kind``: "conv" (OIHW <-> HWIO), "dense" ([out, in] <-> [in, out]), "vector" (as is) or "counter"
    (``num_batches_tracked``: optional, no Flax counterpart). ``index``: position on the leaf's leading
    cell / AU axis, or None.
    """

    module: str
    key: str
    kind: str
    collection: str = ""
    path: tuple[str, ...] = ()
    index: int | None = None

    @property
    def name(self) -> str:
        return f"{self.module}.{self.key}"


def _conv(module: str, prefix: str, path: tuple[str, ...], index: int | None) -> Iterator[Entry]:
    yield Entry(module, f"{prefix}.weight", "conv", "params", path + ("kernel",), index)
    yield Entry(module, f"{prefix}.bias", "vector", "params", path + ("bias",), index)


def _dense(module: str, prefix: str, path: tuple[str, ...], index: int | None) -> Iterator[Entry]:
    yield Entry(module, f"{prefix}.weight", "dense", "params", path + ("kernel",), index)
    yield Entry(module, f"{prefix}.bias", "vector", "params", path + ("bias",), index)


def _bn(module: str, prefix: str, path: tuple[str, ...], index: int | None) -> Iterator[Entry]:
    for torch_field, collection, flax_field in _BN_FIELDS:
        yield Entry(module, f"{prefix}.{torch_field}", "vector", collection, path + (flax_field,), index)
    yield Entry(module, f"{prefix}.num_batches_tracked", "counter")


def _hlfeat(module: str, prefix: str, path: tuple[str, ...], index: int | None = None) -> Iterator[Entry]:
    for k, (c, b) in enumerate(zip(_HLFEAT_CONVS, _HLFEAT_BNS), start=1):
        yield from _conv(module, f"{prefix}.{c}", path + (f"conv{k}",), index)
        yield from _bn(module, f"{prefix}.{b}", path + (f"bn{k}",), index)


def release_entries(num_aus: int) -> list[Entry]:
    """Every entry of the six release state_dicts of a JAA-Net with ``num_aus`` AUs, in release order."""
    out: list[Entry] = []
    m = "region_learning"
    for layer, t in ((1, 0), (2, 2)):
        prefix, path = f"multiscale_feat.{t}", ("region_learning", f"layer{layer}")
        out += _conv(m, f"{prefix}.conv", path + ("conv",), None)
        for branch, grid in enumerate(_REGION_GRIDS, start=1):
            bp, bpath = f"{prefix}.local_conv_branch{branch}", path + (f"branch{branch}",)
            for cell in range(grid * grid):
                out += _bn(m, f"{bp}.bns.{cell}", bpath + ("bn",), cell)
            for cell in range(grid * grid):
                out += _conv(m, f"{bp}.convs.{cell}", bpath + ("conv",), cell)
        out += _bn(m, f"{prefix}.bn", path + ("bn",), None)
    m = "align_net"
    out += _hlfeat(m, "align_feat.feat_extract", ("align_feat",))
    out += _dense(m, "align_output.0", ("align_output", "dense1"), None)
    out += _dense(m, "align_output.1", ("align_output", "dense2"), None)
    m = "local_attention_refine"
    for a in range(num_aus):
        for k, c in enumerate(_REFINE_CONVS, start=1):
            out += _conv(m, f"local_aus_attention.{a}.{c}", ("attention_refine", f"conv{k}"), a)
            if k <= len(_REFINE_BNS):
                out += _bn(m, f"local_aus_attention.{a}.{_REFINE_BNS[k - 1]}", ("attention_refine", f"bn{k}"), a)
    m = "local_au_net"
    for a in range(num_aus):
        out += _hlfeat(m, f"local_aus_branch.{a}.feat_extract", ("local_au_feat",), a)
    for a in range(num_aus):
        out += _dense(m, f"local_aus_output.{a}.0", ("local_au_output", "dense1"), a)
        out += _dense(m, f"local_aus_output.{a}.1", ("local_au_output", "dense2"), a)
    out += _hlfeat("global_au_feat", "feat_extract", ("global_au_feat",))
    out += _dense("au_net", "au_output.0", ("au_output", "dense1"), None)
    out += _dense("au_net", "au_output.1", ("au_output", "dense2"), None)
    return out


def _to_flax(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "conv":
        return x.transpose(2, 3, 1, 0)
    if kind == "dense":
        return x.T
    return x


def _to_torch(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "conv":
        return x.transpose(3, 2, 0, 1)
    if kind == "dense":
        return x.T
    return x


def _torch_shape(kind: str, flax_shape: tuple[int, ...], index: int | None) -> tuple[int, ...]:
    s = tuple(flax_shape[1:] if index is not None else flax_shape)
    if kind == "conv":
        return (s[3], s[2], s[0], s[1])
    if kind == "dense":
        return (s[1], s[0])
    return s


def _get(tree: Mapping[str, Any], collection: str, path: tuple[str, ...]) -> Any:
    node = tree[collection]
    for p in path:
        node = node[p]
    return node


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def abstract_variables(config: Any) -> dict[str, Any]:
    """Shapes/dtypes of the model's variables (``jax.eval_shape`` of init: nothing is computed)."""
    model = create_model(config)
    x = jnp.zeros((1, config.crop_size, config.crop_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def _check_config(config: Any) -> int:
    if config.model.arch != "jaanet" or tasks.get_task(config).name != "au":
        raise ConversionError(f"the JAA-Net release converts into the 'jaanet' AU model, not "
                              f"{config.model.arch!r} / task {config.model.task!r}")
    return len(config.aus)


def convert_state_dicts(state_dicts: Mapping[str, Mapping[str, Any]], config: Any,
                        dtype: Any = None) -> dict[str, Any]:
    """Six release state_dicts ({module: {key: array or tensor}}) -> Flax ``{"params", "batch_stats"}``.

    ``dtype``: numpy dtype of the result; None -> ``config.model.param_dtype`` (float32 by default).
    Raises ConversionError listing every unused, missing, mis-shaped or non-finite entry by name.
    """
    dtype = np.dtype(dtype if dtype is not None else param_dtype(config))
    n = _check_config(config)
    abstract = abstract_variables(config)
    entries = release_entries(n)
    known = {e.name: e for e in entries}
    given = {f"{m}.{k}": np.asarray(v) for m, sd in state_dicts.items() for k, v in sd.items()}
    unknown_modules = sorted(set(state_dicts) - set(MODULES))
    unused = sorted(k for k in given if k not in known)
    missing = [e.name for e in entries if e.kind != "counter" and e.name not in given]
    misshaped, nonfinite = [], []
    for e in entries:
        if e.kind == "counter" or e.name not in given:
            continue
        try:
            leaf = _get(abstract, e.collection, e.path)
        except KeyError as err:
            raise ConversionError(f"model has no variable {e.collection}/{'/'.join(e.path)} for {e.name}: "
                                  "the model's variable tree changed (update interop/convert.py)") from err
        want = _torch_shape(e.kind, tuple(leaf.shape), e.index)
        if tuple(given[e.name].shape) != want:
            misshaped.append(f"{e.name}: shape {list(given[e.name].shape)}, expected {list(want)}")
        elif not np.all(np.isfinite(given[e.name])):
            v = given[e.name]
            nonfinite.append(f"{e.name}: {int(np.isnan(v).sum())} NaN, {int(np.isinf(v).sum())} Inf "
                             f"of {v.size} values")
    problems = []
    if unknown_modules:
        problems.append(f"unknown modules: {', '.join(unknown_modules)}")
    for label, items in (("unused", unused), ("missing", missing), ("mis-shaped", misshaped),
                         ("non-finite (NaN / Inf: the checkpoint is corrupt or diverged)", nonfinite)):
        if items:
            shown = items if len(items) <= 40 else items[:40] + [f"... and {len(items) - 40} more"]
            problems.append(f"{len(items)} {label} entries:\n    " + "\n    ".join(shown))
    if problems:
        raise ConversionError(f"JAA-Net state_dicts do not match the jaanet model ({n} AUs, crop "
                              f"{config.crop_size}, unit {config.model.unit}):\n  " + "\n  ".join(problems))

    out = {c: _nested_zeros(abstract[c], dtype) for c in ("params", "batch_stats")}
    filled: dict[tuple[str, ...], set] = {}
    for e in entries:
        if e.kind == "counter":
            continue
        dest = _get(out, e.collection, e.path)
        value = _to_flax(e.kind, given[e.name].astype(dtype))
        if e.index is None:
            dest[...] = value
        else:
            dest[e.index] = value
        filled.setdefault((e.collection,) + e.path, set()).add(e.index)
    for collection in ("params", "batch_stats"):
        for path, leaf in _leaves(out[collection]):
            got = filled.get((collection,) + path, set())
            if None not in got and got != set(range(leaf.shape[0] if leaf.ndim else 0)) or not got:
                raise ConversionError(f"model variable {collection}/{'/'.join(path)} {list(leaf.shape)} is not "
                                      "fully set by the release (update interop/convert.py)")
    return out


def _nested_zeros(tree: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    return {k: _nested_zeros(v, dtype) if isinstance(v, Mapping) else np.zeros(v.shape, dtype)
            for k, v in tree.items()}


def flax_to_state_dicts(variables: Mapping[str, Any], config: Any, num_batches_tracked: int = 0) -> StateDicts:
    """Inverse of :func:`convert_state_dicts`: Flax variables -> the six release state_dicts (numpy).

    ``num_batches_tracked`` (not kept by Flax) is written into every BN's counter.
    """
    n = _check_config(config)
    out: StateDicts = {m: {} for m in MODULES}
    for e in release_entries(n):
        if e.kind == "counter":
            out[e.module][e.key] = np.asarray(num_batches_tracked, np.int64)
            continue
        leaf = np.asarray(_get(variables, e.collection, e.path))
        out[e.module][e.key] = _to_torch(e.kind, leaf if e.index is None else leaf[e.index])
    return out


def load_release(torch_dir: str | os.PathLike, epoch: int | str) -> StateDicts:
    """Reads the six ``<module>_<epoch>.pth`` files with ``torch.load(weights_only=True)`` (needs torch).

    Raises ConversionError naming the file if one is missing, unreadable or not a state_dict.
    """
    try:
        import torch  # the optional extra
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConversionError("reading .pth files needs PyTorch: pip install -r requirements-torch.txt") from e
    out: StateDicts = {}
    for module in MODULES:
        path = pth_path(torch_dir, module, epoch)
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: missing (a JAA-Net release has {', '.join(MODULES)} "
                                  f"as <module>_<epoch>.pth)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt files
            raise ConversionError(f"{path}: cannot read the PyTorch state_dict ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else e})") from e
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ConversionError(f"{path}: not a state_dict (expected a mapping of names to tensors, "
                                  f"got {type(sd).__name__})")
        out[module] = {k: v.detach().cpu().numpy() for k, v in sd.items()}
    return out


def label_set_for(num_aus: int) -> str:
    """The label set of a release with ``num_aus`` AUs: 12 -> bp4d, 8 -> disfa."""
    for name, aus in au_sets.AU_SETS.items():
        if len(aus) == num_aus:
            return name
    raise ConversionError(f"no label set with {num_aus} AUs (have "
                          + ", ".join(f"{k}: {len(v)}" for k, v in au_sets.AU_SETS.items()) + ")")


def convert_release(torch_dir: str | os.PathLike, epoch: int | str, num_aus: int, out: str | os.PathLike,
                    size: str = "paper") -> tuple[Any, dict[str, Any]]:
    """Reads a release, converts it and writes an inference checkpoint; returns (config, variables)."""
    config = get_config("jaanet", size=size, label_set=label_set_for(num_aus))
    variables = convert_state_dicts(load_release(torch_dir, epoch), config)
    save_inference_checkpoint(out, config, variables, source=os.path.abspath(os.fspath(torch_dir)),
                              source_epoch=str(epoch), converted_from="PyTorch JAA-Net release")
    return config, variables


def count_parameters(variables: Mapping[str, Any]) -> int:
    """Number of scalars in ``variables["params"]``."""
    return sum(math.prod(np.shape(v)) for _, v in _leaves(variables["params"]))
