"""One training step against a float64 PyTorch JAA-Net reference step (``algrnet check-step``).

A fixture folder (e.g. ``tests/fixtures/jaanet_train_step64_bp4d``) holds ``recipe.json`` (the seeded weights,
tag, AU count) and ``train_step64.npz``: the batch (``input`` [B, 3, C, C] NCHW, ``au_labels`` [B, n],
``gt_landmarks`` [B, 98], ``biocular`` [B] (squared inter-ocular distance), ``au_weight`` [n], the AU loss
weights), the reference's train-mode outputs and four losses, and per state_dict entry the update d = after - before as ``update_sumsq`` (sum d^2) and
``update_proj`` (sum d * r, r seeded by ``crc32(f"{tag}:proj:{name}")``, norm ``proj_norm``).

``check_step`` rebuilds the weights from the recipe in float64 (unrounded), writes and reads them as the six
release ``.pth`` files (torch extra), converts them, runs ONE step of our loss (``losses.total_loss``) and
optimizer (``training.optim``) with ``jax_enable_x64`` and compares against the criteria of ``TOLERANCES``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax.configs import get_config
from algrnet_jax.errors import UserError
from algrnet_jax.inference import torch_layout
from algrnet_jax.interop import convert
from algrnet_jax.models.networks import create_model
from algrnet_jax.reference import recipe as recipe_lib
from algrnet_jax.training import optim, steps
from algrnet_jax.training.state import TrainState

STEP_FILE = "train_step64.npz"
RECIPE_FILE = "recipe.json"
NPZ_KEYS = ("input", "au_labels", "gt_landmarks", "biocular", "au_weight", "train_landmarks",
            "train_initial_au_maps", "train_au_logprob", "train_local_au_logprob", "train_loss_total",
            "train_loss_au", "train_loss_local_au", "train_loss_land", "update_names", "update_sumsq",
            "update_proj", "proj_norm")
OUTPUT_KEYS = ("landmarks", "initial_au_maps", "au_logprob", "local_au_logprob")
LOSS_KEYS = {"total": "loss", "au": "loss_au", "local_au": "loss_local_au", "land": "loss_align"}
# criterion -> relative tolerance (the fixture README's): outputs / losses relative to the reference value
# (outputs: max abs difference over max abs value), update norm relative to the reference norm,
# projection relative to the reference update norm.
TOLERANCES = {"outputs": 1e-9, "losses": 1e-9, "update_norm": 1e-6, "update_proj": 1e-5}


@dataclasses.dataclass
class Row:
    """One compared quantity: ``error`` = |ours - reference| against ``limit`` (tolerance * scale)."""

    name: str
    ours: float
    reference: float
    error: float
    limit: float

    @property
    def ratio(self) -> float:
        return self.error / self.limit if self.limit > 0 else (0.0 if self.error == 0 else math.inf)


@dataclasses.dataclass
class Criterion:
    """All rows of one criterion; passes when every error is within its limit."""

    name: str
    tolerance: float
    rows: list[Row]

    @property
    def passed(self) -> bool:
        return all(r.error <= r.limit for r in self.rows)

    def worst(self, k: int) -> list[Row]:
        return sorted(self.rows, key=lambda r: r.ratio, reverse=True)[:k]


def load_fixture(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(recipe, arrays) of a fixture folder; UserError naming the file for anything missing or unreadable."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such fixture folder (it must hold {RECIPE_FILE} and {STEP_FILE})")
    paths = {f: os.path.join(folder, f) for f in (RECIPE_FILE, STEP_FILE)}
    for f, path in paths.items():
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing (a one-step fixture holds {RECIPE_FILE} and {STEP_FILE})")
    try:
        rec = recipe_lib.load_recipe(paths[RECIPE_FILE])
    except ValueError as e:
        raise UserError(str(e)) from e
    try:
        with np.load(paths[STEP_FILE]) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises several types for corrupt files
        raise UserError(f"{paths[STEP_FILE]}: cannot read ({type(e).__name__}: {e})") from e
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{paths[STEP_FILE]}: missing arrays {missing} (see the fixture's README)")
    x = arrays["input"]
    n = int(rec["au_num"])
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise UserError(f"{paths[STEP_FILE]}: input has shape {list(x.shape)}, expected [B, 3, C, C] (NCHW)")
    if arrays["au_labels"].shape != (x.shape[0], n) or arrays["au_weight"].shape != (n,):
        raise UserError(f"{paths[STEP_FILE]}: au_labels {list(arrays['au_labels'].shape)} / au_weight "
                        f"{list(arrays['au_weight'].shape)} do not match {x.shape[0]} faces and the recipe's "
                        f"{n} AUs")
    return rec, arrays


def fixture_config(rec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """The float64 ``jaanet`` config of a fixture: AU count and unit width (first conv: 4u filters) from the
    recipe, crop from the input."""
    config = get_config("jaanet", size="paper", label_set=convert.label_set_for(int(rec["au_num"])))
    config.crop_size = int(arrays["input"].shape[-1])
    first = dict((k, v) for k, v in rec["modules"].get("region_learning", [])).get("multiscale_feat.0.conv.weight")
    if not first or first[0] % 4:
        raise UserError(f"{RECIPE_FILE}: region_learning.multiscale_feat.0.conv.weight is missing or its shape "
                        f"{first} is not [4u, 3, 3, 3]")
    config.model.unit = int(first[0]) // 4
    config.model.dtype = config.model.param_dtype = "float64"
    return config


def fixture_batch(arrays: Mapping[str, np.ndarray], dtype: Any) -> dict[str, Any]:
    """The fixture's batch as the train step takes it (NHWC images, [B, 49, 2] landmarks, inter-ocular
    distance = sqrt of the fixture's squared ``biocular``), floats in ``dtype``."""
    b = arrays["input"].shape[0]
    return {
        "image": jnp.asarray(arrays["input"].transpose(0, 2, 3, 1), dtype),
        "landmarks": jnp.asarray(arrays["gt_landmarks"].reshape(b, -1, 2), dtype),
        "interocular": jnp.sqrt(jnp.asarray(arrays["biocular"], dtype)),
        "labels": jnp.asarray(arrays["au_labels"], jnp.int32),
        "mask": jnp.ones([b], dtype),
    }


def one_step(config: Any, variables: Mapping[str, Any], batch: Mapping[str, Any], loss_weights: Any) -> tuple[
        dict[str, Any], dict[str, Any], Any]:
    """ONE step of our loss and optimizer (SGD of ``config.train``, step 0) from ``variables``, jitted:
    (train-mode outputs, loss terms in the loss dtype, the new TrainState)."""
    model = create_model(config)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              tx=optim.make_optimizer(config.train, steps_per_epoch=1),
                              batch_stats=variables["batch_stats"], rng=jax.random.PRNGKey(0))

    @jax.jit
    def step(state, batch, loss_weights):
        outputs, metrics, grads, batch_stats = steps.loss_and_grads(state, batch, loss_weights, config=config)
        return outputs, metrics, state.apply_gradients(grads=grads, batch_stats=batch_stats)

    return step(state, batch, loss_weights)


def _reference_step(rec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[
        dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]:
    """Runs the step in float64: (train-mode outputs in the release layout, losses, updates per entry)."""
    with jax.enable_x64(True):
        config = fixture_config(rec, arrays)
        with tempfile.TemporaryDirectory() as tmp:
            recipe_lib.save_pth(recipe_lib.rebuild_state_dicts(rec, np.float64), tmp, epoch=0)
            variables = convert.convert_state_dicts(convert.load_release(tmp, 0), config)
        outputs, metrics, new_state = one_step(config, variables, fixture_batch(arrays, jnp.float64),
                                               jnp.asarray(arrays["au_weight"], jnp.float64))
        outputs, metrics, after = jax.tree.map(np.asarray, (outputs, metrics, new_state.variables()))
    for leaf in jax.tree.leaves(after):
        if leaf.dtype != np.float64:
            raise RuntimeError(f"the float64 step produced a {leaf.dtype} variable: the model does not honour "
                               "model.param_dtype=float64")
    before = convert.flax_to_state_dicts(variables, config)
    after_sd = convert.flax_to_state_dicts(after, config)
    updates = {f"{m}.{k}": np.asarray(after_sd[m][k], np.float64) - np.asarray(v, np.float64)
               for m, sd in before.items() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    return torch_layout(outputs), {k: float(metrics[v]) for k, v in LOSS_KEYS.items()}, updates


def projection_vector(tag: str, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The fixture's seeded vector r of one entry (PyTorch shape)."""
    return np.random.default_rng(zlib.crc32(f"{tag}:proj:{name}".encode())).standard_normal(shape)


def check_step(folder: str | os.PathLike) -> list[Criterion]:
    """Runs the check on a fixture folder; returns the four criteria (``TOLERANCES``) with every row."""
    rec, arrays = load_fixture(folder)
    try:
        import torch  # noqa: F401  (the optional extra: the weights travel through .pth files, as a release does)
    except ImportError as e:
        raise UserError("check-step needs the torch extra: pip install -r requirements-torch.txt") from e
    outputs, losses, updates = _reference_step(rec, arrays)

    rows_out = []
    for k in OUTPUT_KEYS:
        want, got = arrays["train_" + k], outputs[k]
        if got.shape != want.shape:
            raise UserError(f"{STEP_FILE}: train_{k} has shape {list(want.shape)}, the model gives {list(got.shape)}")
        scale = float(np.max(np.abs(want)))
        i = int(np.argmax(np.abs(got - want)))
        rows_out.append(Row(k, float(got.flat[i]), float(want.flat[i]), float(np.abs(got - want).flat[i]),
                            TOLERANCES["outputs"] * scale))
    rows_loss = [Row(k, losses[k], float(arrays["train_loss_" + k]), abs(losses[k] - float(arrays["train_loss_" + k])),
                     TOLERANCES["losses"] * abs(float(arrays["train_loss_" + k]))) for k in LOSS_KEYS]
    names = [str(n) for n in arrays["update_names"]]
    unknown = sorted(set(names) - set(updates))
    if unknown:
        raise UserError(f"{STEP_FILE}: update_names has {len(unknown)} entries that are no state_dict entry of "
                        f"the model, e.g. {unknown[:5]}")
    rows_norm, rows_proj = [], []
    for name, sumsq, proj_ref, r_norm in zip(names, arrays["update_sumsq"], arrays["update_proj"],
                                             arrays["proj_norm"]):
        d = updates[name]
        r = projection_vector(str(rec["tag"]), name, d.shape)
        if abs(np.linalg.norm(r) - r_norm) > 1e-9 * r_norm:
            raise UserError(f"{STEP_FILE}: proj_norm of {name} ({r_norm}) is not the norm of the seeded vector "
                            f"({np.linalg.norm(r)}): tag {rec['tag']!r} of {RECIPE_FILE} does not match")
        norm, norm_ref = float(np.sqrt(np.sum(d * d))), float(np.sqrt(sumsq))
        rows_norm.append(Row(name, norm, norm_ref, abs(norm - norm_ref), TOLERANCES["update_norm"] * norm_ref))
        proj = float(np.sum(d * r))
        rows_proj.append(Row(name, proj, float(proj_ref), abs(proj - float(proj_ref)),
                             TOLERANCES["update_proj"] * norm_ref))
    return [Criterion("outputs", TOLERANCES["outputs"], rows_out),
            Criterion("losses", TOLERANCES["losses"], rows_loss),
            Criterion("update_norm", TOLERANCES["update_norm"], rows_norm),
            Criterion("update_proj", TOLERANCES["update_proj"], rows_proj)]


def format_report(criteria: list[Criterion], top: int = 5) -> str:
    """Text table: per criterion PASS/FAIL and its ``top`` worst rows (error / limit descending)."""
    lines = []
    for c in criteria:
        bad = sum(r.error > r.limit for r in c.rows)
        lines.append(f"{c.name}: {'PASS' if c.passed else 'FAIL'} ({len(c.rows)} compared, {bad} over the limit; "
                     f"tolerance {c.tolerance:g} relative)")
        lines.append(f"  {'entry':<64} {'ours':>14} {'reference':>14} {'|diff|':>10} {'limit':>10} {'diff/limit':>10}")
        for r in c.worst(top):
            lines.append(f"  {r.name:<64} {r.ours:>14.7g} {r.reference:>14.7g} {r.error:>10.3g} {r.limit:>10.3g} "
                         f"{r.ratio:>10.3g}")
    return "\n".join(lines)


def write_json(criteria: list[Criterion], path: str | os.PathLike, top: int = 5) -> None:
    """Writes {criterion: {passed, tolerance, worst: [rows]}} as JSON."""
    report = {c.name: {"passed": c.passed, "tolerance": c.tolerance, "compared": len(c.rows),
                       "worst": [dict(dataclasses.asdict(r), ratio=r.ratio) for r in c.worst(top)]}
              for c in criteria}
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
