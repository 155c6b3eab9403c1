"""Networks: shapes of every named config, ablation trees, gradients and stop-gradients, PyTorch numerics.

Compiled tests use tiny configs, an rbg init key and XLA's low optimisation level (compile time dominates);
paper-size compiles are ``slow``.
"""
from __future__ import annotations

import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import losses
from algrnet_jax.configs import NAMES, get_config
from algrnet_jax.models import networks
from algrnet_jax.models.layers import BatchNorm, Conv, batch_norm_train, max_pool2, resolve_conv_impl
from algrnet_jax.models.stem import CellBlock, from_cell_list, from_cells, to_cell_list, to_cells

RECIPE = pathlib.Path(__file__).parent / "fixtures" / "jaanet_parity_bp4d" / "recipe.json"
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ALGR_PARTS = ("adaptive", "relations", "fusion_refine")


def _inputs(config, batch=2, seed=0):
    c = config.crop_size
    rng = np.random.default_rng(seed)
    n = len(config.aus)
    labels = rng.integers(0, 2, (batch, n)).astype(np.int32)
    labels[0, 0] = -1
    if config.model.task == "paralysis":
        labels = rng.integers(0, 4, (batch,)).astype(np.int32)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch, c, c, 3)), jnp.float32),
        "landmarks": jnp.asarray(rng.uniform(0.2 * c, 0.8 * c, (batch, 49, 2)), jnp.float32),
        "interocular": jnp.full((batch,), 0.3 * c, jnp.float32),
        "labels": jnp.asarray(labels),
        "mask": jnp.ones((batch,), jnp.float32),
    }


def _weights(config):
    return jnp.ones((config.model.num_grades if config.model.task == "paralysis" else len(config.aus),))


def _loss_parts_fn(model, config, batch_stats):
    """(params, coeffs [3], batch) -> coeffs . (loss_au, loss_local_au, loss_align), new batch_stats."""
    def fn(params, coeffs, batch):
        out, state = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                 mutable=["batch_stats"])
        _, parts = losses.total_loss(out, batch, _weights(config), config)
        return coeffs @ jnp.stack([parts["loss_au"], parts["loss_local_au"], parts["loss_align"]]), state
    return fn


def _abstract_variables(config, batch=2):
    model = networks.create_model(config)
    x = jnp.zeros((batch, config.crop_size, config.crop_size, 3))
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x))


def _shapes(tree):
    return {jax.tree_util.keystr(p): tuple(l.shape) for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------------------------------------- shapes


def _recipe_to_flax(module: str, key: str, shape: list[int]):
    """Flax (collection, path, stacked index or None, shape) of one release state_dict entry (docs in networks.py)."""
    hl_conv = {0: 1, 3: 2, 7: 3, 10: 4, 14: 5, 17: 6}
    hl_bn = {1: 1, 4: 2, 8: 3, 11: 4, 15: 5, 18: 6}
    leaf = key.rsplit(".", 1)[1]
    conv_like = len(shape) == 4
    if leaf == "weight":
        name, shp = ("kernel", tuple(np.transpose(np.zeros(shape, bool), (2, 3, 1, 0)).shape)) if conv_like else \
            ("kernel", tuple(shape[::-1])) if len(shape) == 2 else ("scale", tuple(shape))
    else:
        name, shp = {"bias": "bias", "running_mean": "mean", "running_var": "var"}[leaf], tuple(shape)
    coll = "batch_stats" if name in ("mean", "var") else "params"

    def hl(i):
        return f"conv{hl_conv[i]}" if i in hl_conv else f"bn{hl_bn[i]}"

    if module == "region_learning":
        m = re.fullmatch(r"multiscale_feat\.(\d)\.(?:(conv|bn)|local_conv_branch(\d)\.(bns|convs)\.(\d+))\.\w+", key)
        layer = {"0": "layer1", "2": "layer2"}[m[1]]
        if m[2]:
            return coll, ("region_learning", layer, m[2], name), None, shp
        return coll, ("region_learning", layer, f"branch{m[3]}", m[4][:-1] if m[4] == "convs" else "bn", name), \
            int(m[5]), shp
    if module == "align_net":
        m = re.fullmatch(r"align_feat\.feat_extract\.(\d+)\.\w+", key)
        if m:
            return coll, ("align_feat", hl(int(m[1])), name), None, shp
        m = re.fullmatch(r"align_output\.(\d)\.\w+", key)
        return coll, ("align_output", f"dense{int(m[1]) + 1}", name), None, shp
    if module == "global_au_feat":
        m = re.fullmatch(r"feat_extract\.(\d+)\.\w+", key)
        return coll, ("global_au_feat", hl(int(m[1])), name), None, shp
    if module == "au_net":
        m = re.fullmatch(r"au_output\.(\d)\.\w+", key)
        return coll, ("au_output", f"dense{int(m[1]) + 1}", name), None, shp
    if module == "local_attention_refine":
        m = re.fullmatch(r"local_aus_attention\.(\d+)\.(\d)\.\w+", key)
        i = int(m[2])
        part = {0: "conv1", 3: "conv2", 6: "conv3", 9: "conv4", 1: "bn1", 4: "bn2", 7: "bn3"}[i]
        return coll, ("attention_refine", part, name), int(m[1]), shp
    m = re.fullmatch(r"local_aus_branch\.(\d+)\.feat_extract\.(\d+)\.\w+", key)
    if m:
        return coll, ("local_au_feat", hl(int(m[2])), name), int(m[1]), shp
    m = re.fullmatch(r"local_aus_output\.(\d+)\.(\d)\.\w+", key)
    return coll, ("local_au_output", f"dense{int(m[2]) + 1}", name), int(m[1]), shp


def test_jaanet_param_shapes_match_release_recipe():
    """Every release state_dict entry has a Flax leaf of the documented shape and vice versa (paper size)."""
    recipe = json.loads(RECIPE.read_text())
    _, variables = _abstract_variables(get_config("jaanet", "paper"))
    want: dict[tuple, tuple] = {}
    stacked: dict[tuple, set] = {}
    for module, entries in recipe["modules"].items():
        for key, shape in entries:
            if key.endswith("num_batches_tracked"):
                continue
            coll, path, index, shp = _recipe_to_flax(module, key, shape)
            k = (coll,) + path
            if index is not None:
                stacked.setdefault(k, set()).add(index)
            assert want.setdefault(k, shp) == shp, key
    got = {tuple(p.key for p in path): tuple(l.shape)
           for path, l in jax.tree_util.tree_flatten_with_path(variables)[0]}
    assert set(got) == set(want)
    for k, shp in want.items():
        if k in stacked:
            assert stacked[k] == set(range(len(stacked[k]))), k
            assert got[k] == (len(stacked[k]),) + shp, k
        else:
            assert got[k] == shp, k
    n_params = sum(int(np.prod(s)) for k, s in got.items() if k[0] == "params")
    assert n_params == sum(int(np.prod(s)) for m in recipe["modules"].values() for key, s in m
                           if not re.search(r"running_|num_batches", key))


EXPECTED_KEYS = {"landmarks", "initial_au_maps", "refined_au_maps"}


@pytest.mark.parametrize("name,label_set,size", [(n, "bp4d", "tiny") for n in NAMES]
                         + [("algrnet", "disfa", "tiny")]
                         + [(n, "bp4d", "paper") for n in NAMES] + [("algrnet", "disfa", "paper")])
def test_output_shapes_and_gradients_trace(name, label_set, size):
    """Abstract trace (no compile) of apply and of the loss gradient; at paper size: 176 input, 52x52 maps."""
    config = get_config(name, size, label_set)
    if label_set == "disfa" and size == "tiny":
        config.aus = (1, 9, 25, 26)
    model, variables = _abstract_variables(config)
    batch = _inputs(config)
    b, n, m = 2, 12 if config.model.task == "paralysis" else len(config.aus), config.crop_size // 4 + 8
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, batch["image"])
    keys = set(EXPECTED_KEYS)
    if config.model.task == "paralysis":
        keys |= {"grade_logprob", "local_grade_logprob", "final_grade_prob"}
    else:
        keys |= {"au_logprob", "local_au_logprob", "au_prob", "local_au_prob", "final_au_prob"}
    if config.model.adaptive:
        keys |= {"offsets", "scales"}
    assert set(out) == keys
    if size == "paper":
        assert (m, n) == (52, 12 if label_set == "bp4d" or config.model.task == "paralysis" else 8)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes["landmarks"] == (b, 49, 2)
    assert shapes["initial_au_maps"] == (b, n, m, m) and shapes["refined_au_maps"] == (b, n, m - 8, m - 8)
    if config.model.task == "paralysis":
        assert shapes["grade_logprob"] == shapes["local_grade_logprob"] == shapes["final_grade_prob"] == (b, 4)
    else:
        assert shapes["au_logprob"] == shapes["local_au_logprob"] == (b, n, 2)
        assert shapes["au_prob"] == shapes["local_au_prob"] == shapes["final_au_prob"] == (b, n)
    if config.model.adaptive:
        assert shapes["offsets"] == (b, n, 2) and shapes["scales"] == (b, n)
    grads, state = jax.eval_shape(
        lambda p, bs, b: jax.grad(_loss_parts_fn(model, config, bs), has_aux=True)(p, jnp.ones(3), b),
        variables["params"], variables["batch_stats"], batch)
    assert _shapes(grads) == _shapes(variables["params"])
    assert _shapes(state["batch_stats"]) == _shapes(variables["batch_stats"])


def test_ablations_switch_exactly_their_part():
    trees = {name: _shapes(_abstract_variables(get_config(name, "tiny"))[1]["params"]) for name in NAMES}

    def top(name):
        return {k.split("'")[1] for k in trees[name]}

    assert top("algrnet") - top("jaanet") == set(ALGR_PARTS)
    assert top("wo_ada") == top("algrnet") - {"adaptive"}
    assert top("wo_fr") == top("algrnet") - {"fusion_refine"}
    assert top("wo_sb") == top("algrnet") - {"relations"}
    assert top("wo_full") == top("jaanet")
    assert top("w_bi") == top("algrnet")
    for name in ("wo_ada", "wo_fr", "wo_sb", "w_bi", "wo_full"):  # everything else is unchanged
        common = {k: s for k, s in trees[name].items() if not k.split("'")[1] in ALGR_PARTS}
        assert common == {k: s for k, s in trees["algrnet"].items() if k in common}
        assert len(common) == len([k for k in trees["algrnet"] if k.split("'")[1] not in ALGR_PARTS])
    assert trees["wo_full"] == trees["jaanet"]
    bi = {k for k in trees["w_bi"] if "relations" in k}
    sb = {k for k in trees["algrnet"] if "relations" in k}
    assert bi and sb and bi != sb and not any("gates" in k for k in bi) and any("gates" in k for k in sb)
    for name in ("w_bi", "wo_ada", "wo_fr", "wo_sb"):  # the parts they keep are identical to ALGRNet's
        for part in set(ALGR_PARTS) & top(name) - ({"relations"} if name == "w_bi" else set()):
            assert {k: s for k, s in trees[name].items() if f"'{part}'" in k} == \
                   {k: s for k, s in trees["algrnet"].items() if f"'{part}'" in k}


# ------------------------------------------------------------------------------------- gradients (jit)


@functools.lru_cache(maxsize=None)
def _initialised(name):
    """(config, model, variables, batch) of a tiny config, initialised once per test session."""
    config = get_config(name, "tiny")
    model = networks.create_model(config)
    batch = _inputs(config)
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(model.init).lower(key, batch["image"]).compile(FAST)(key, batch["image"])
    return config, model, variables, batch


@functools.lru_cache(maxsize=None)
def _grad_summary_step(name):
    """Compiled (params, coeffs [3], batch) -> (gradient norm per module, all finite, running stats moved).

    Modules are the top-level entries plus ``adaptive/<layer>``.
    """
    config, model, variables, batch = _initialised(name)
    grad_fn = jax.grad(_loss_parts_fn(model, config, variables["batch_stats"]), has_aux=True)

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))

    def summary(params, coeffs, batch):
        grads, state = grad_fn(params, coeffs, batch)
        norms = {k: norm(v) for k, v in grads.items()}
        norms.update({f"adaptive/{k}": norm(v) for k, v in grads.get("adaptive", {}).items()})
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        moved = jnp.all(jnp.stack([jnp.any(a != b) for a, b in zip(jax.tree.leaves(state["batch_stats"]),
                                                                   jax.tree.leaves(variables["batch_stats"]))]))
        return norms, finite, moved

    return jax.jit(summary).lower(variables["params"], jnp.ones(3), batch).compile(FAST)


def _grad_norms(name, params=None):
    """Per module, the gradient norms of loss_au / loss_local_au / loss_align ("au", "local", "align"), with
    "_all_finite" per part, and whether every running statistic moved in the train-mode pass."""
    _, _, variables, batch = _initialised(name)
    step = _grad_summary_step(name)
    params = variables["params"] if params is None else params
    norms, moved = {}, True
    for i, part in enumerate(("au", "local", "align")):
        n, finite, m = jax.device_get(step(params, jnp.eye(3)[i], batch))
        norms[part] = {k: float(v) for k, v in n.items()}
        norms[part]["_all_finite"] = bool(finite)
        moved = moved and bool(m)
    return norms, moved


def _positive(norms):
    return {k for k, v in norms.items() if not k.startswith("_") and "/" not in k and v > 0}


def test_jaanet_gradients_and_stop_gradients():
    norms, moved = _grad_norms("jaanet")
    assert all(norms[p]["_all_finite"] for p in norms)
    assert moved  # every BatchNorm's running statistics moved
    # local loss: never reaches alignment / global / integrated parts (maps come from stop_grad(landmarks))
    assert _positive(norms["local"]) == {"local_au_feat", "local_au_output", "attention_refine", "region_learning"}
    # integrated loss: the local feature is stop_grad-ed, the landmarks are not used
    assert _positive(norms["au"]) == {"au_output", "align_feat", "global_au_feat", "region_learning"}
    # alignment loss: only the alignment path
    assert _positive(norms["align"]) == {"align_output", "align_feat", "region_learning"}


def test_algrnet_adaptive_regions_learn_and_stop_gradients():
    norms, moved = _grad_norms("algrnet")
    assert all(norms[p]["_all_finite"] for p in norms) and moved
    # At init the adaptive output layers are zero: they get gradient, the alignment features do not yet.
    assert _positive(norms["local"]) == {"adaptive", "relations", "fusion_refine", "local_au_feat",
                                         "local_au_output", "attention_refine", "global_au_feat", "region_learning"}
    assert norms["local"]["adaptive/offset_out"] > 0 and norms["local"]["adaptive/scale_out"] > 0
    # integrated head sees stop_grad(mean r_t) only; centres use stop_grad(landmarks) (no align_output)
    assert _positive(norms["au"]) == {"au_output", "align_feat", "global_au_feat", "region_learning"}
    assert _positive(norms["align"]) == {"align_output", "align_feat", "region_learning"}
    # Once the adaptive output layers are non-zero, the local loss reaches the alignment features through
    # the offsets and scales (and still not the landmark regressor).
    _, _, variables, _ = _initialised("algrnet")
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.01 if "adaptive" in (k := jax.tree_util.keystr(path)) and "_out" in k else x,
        variables["params"])
    norms, _ = _grad_norms("algrnet", params)
    assert norms["local"]["align_feat"] > 0 and norms["local"]["align_output"] == 0
    assert norms["local"]["adaptive/offset_hidden"] > 0 and norms["local"]["adaptive/scale_hidden"] > 0


def test_offsets_and_scales_get_gradients():
    """d loss / d offsets and d loss / d scales are non-zero (the maps are differentiable in both); Ada starts
    at offsets 0 and scales 0.14."""
    from algrnet_jax.models import regions

    config, model, variables, batch = _initialised("algrnet")
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply.lower(variables, batch["image"]).compile(FAST)(variables, batch["image"])
    np.testing.assert_allclose(out["scales"], config.model.map_scale, rtol=1e-6)
    np.testing.assert_allclose(out["offsets"], 0.0, atol=1e-6)
    centres = regions.au_centres(out["landmarks"], config.aus)
    size = config.crop_size // 4 + 8
    np.testing.assert_array_equal(out["initial_au_maps"], regions.attention_maps(
        centres + out["offsets"][:, :, None, :], out["scales"], size, config.crop_size))
    target = jax.random.uniform(jax.random.key(2), out["initial_au_maps"].shape)

    def maps_loss(offsets, scales):  # the network's map path: attention_maps(centres + offsets, scales)
        m = regions.attention_maps(centres + offsets[:, :, None, :], scales, size, config.crop_size)
        return jnp.sum(m * target)

    go, gs = jax.jit(jax.grad(maps_loss, argnums=(0, 1)))(out["offsets"], out["scales"])
    assert bool(jnp.all(jnp.abs(go).sum(-1) > 0)) and bool(jnp.all(jnp.abs(gs) > 0))


# ----------------------------------------------------------------------------------------- numerics


def test_batchnorm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32) * 2 + 1
    bn_t = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        bn_t.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, 6).astype(np.float32)))
        bn_t.bias.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, 6).astype(np.float32)))
    variables = {"params": {"scale": jnp.asarray(bn_t.weight.detach().numpy()), "bias": jnp.asarray(bn_t.bias.detach().numpy())},
                 "batch_stats": {"mean": jnp.zeros(6), "var": jnp.ones(6)}}
    y, state = BatchNorm(train=True).apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    y_t = bn_t.train()(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_t, atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["mean"], bn_t.running_mean.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["batch_stats"]["var"], bn_t.running_var.numpy(), rtol=1e-5)
    variables["batch_stats"] = state["batch_stats"]
    y = BatchNorm(train=False).apply(variables, jnp.asarray(x))
    y_t = bn_t.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_t, atol=1e-5)


def test_batchnorm_training_gradient_matches_torch_and_autodiff():
    """The custom backward pass of training-mode BatchNorm (two reductions) against PyTorch's, and against autodiff
    of the forward formula in float64 for the per-copy form."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32) * 2 + 1
    g = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.uniform(-0.5, 0.5, 6).astype(np.float32)
    variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
                 "batch_stats": {"mean": jnp.zeros(6), "var": jnp.ones(6)}}
    _, vjp = jax.vjp(lambda p, x: BatchNorm(train=True).apply({**variables, "params": p}, x,
                                                               mutable=["batch_stats"])[0], variables["params"],
                     jnp.asarray(x))
    dp, dx = vjp(jnp.asarray(g))
    bn_t = torch.nn.BatchNorm2d(6).train()
    with torch.no_grad():
        bn_t.weight.copy_(torch.from_numpy(scale))
        bn_t.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    (bn_t(xt) * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(dp["scale"], bn_t.weight.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(dp["bias"], bn_t.bias.grad.numpy(), rtol=1e-5)

    def formula(x, s, b):
        mean = jnp.mean(x, (1, 2, 3), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), (1, 2, 3), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * s + b

    x64 = np.float64(rng.standard_normal((2, 3, 4, 5, 6)) * 3 + 1)
    s64, b64 = np.float64(rng.standard_normal((2, 1, 1, 1, 6))), np.float64(rng.standard_normal((2, 1, 1, 1, 6)))
    g64 = np.float64(rng.standard_normal(x64.shape))
    with jax.enable_x64(True):
        ours = jax.vjp(lambda *a: batch_norm_train(*a, (1, 2, 3), 1e-5)[0], x64, s64, b64)[1](g64)
        auto = jax.vjp(formula, x64, s64, b64)[1](g64)
    for a, b in zip(ours, auto):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["unrolled", "grouped", "matmul"])
def test_conv_copies_implementations_equal_native_convs(impl):
    """Every per-copy implementation: the same params, outputs and gradients as one native conv per copy."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 2, 7, 6, 5)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, 2, 7, 6, 4)), jnp.float32)
    for padding in (1, "VALID"):
        stacked = Conv(4, 3, padding, copies=3, impl=impl)
        v = stacked.init(jax.random.key(0, impl="rbg"), x)
        y, vjp = jax.vjp(lambda v, x: stacked.apply(v, x), v, x)
        dv, dx = vjp(g[..., :y.shape[2], :y.shape[3], :])
        for k in range(3):
            one = {"params": jax.tree.map(lambda a: a[k], v["params"])}
            native = lambda p, xk: Conv(4, 3, padding).apply(p, xk)   # noqa: E731
            y_k, vjp_k = jax.vjp(native, one, x[k])
            np.testing.assert_allclose(y[k], y_k, atol=1e-5)
            np.testing.assert_allclose(y[k], Conv(4, 3, padding, impl="matmul").apply(one, x[k]), atol=1e-5)
            dp_k, dx_k = vjp_k(g[k, :, :y.shape[2], :y.shape[3]])
            np.testing.assert_allclose(dx[k], dx_k, atol=1e-4)
            for leaf in ("kernel", "bias"):
                np.testing.assert_allclose(dv["params"][leaf][k], dp_k["params"][leaf], atol=1e-4)


@pytest.mark.parametrize("name, other", [("jaanet", "matmul"), ("algrnet", "grouped")])
def test_conv_impls_give_the_same_model(name, other):
    """Whole network, ``model.conv_impl`` "unrolled" (per-AU chains as per-copy tuples) against another: identical
    parameter trees, and the same loss, loss gradients and updated batch statistics of a training step."""
    results = {}
    for impl in ("unrolled", other):
        config = get_config(name, "tiny")
        config.model.conv_impl = impl
        model = networks.create_model(config)
        batch = _inputs(config)
        variables = model.init(jax.random.key(0, impl="rbg"), batch["image"])
        fn = jax.jit(jax.value_and_grad(_loss_parts_fn(model, config, variables["batch_stats"]), has_aux=True),
                     compiler_options=FAST)
        (loss, state), grads = fn(variables["params"], jnp.ones(3), batch)
        results[impl] = variables, loss, grads, state["batch_stats"]
    base_vars, base_loss, base_grads, base_stats = results.pop("unrolled")
    for impl, (variables, loss, grads, stats) in results.items():
        jax.tree.map(np.testing.assert_array_equal, variables, base_vars)    # same init, same tree
        np.testing.assert_allclose(loss, base_loss, rtol=1e-5, err_msg=impl)
        # Relative per leaf (measured <= 1e-4); conv biases before a BatchNorm have a zero gradient up to rounding,
        # hence the absolute term relative to the largest gradient entry.
        atol = 1e-4 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(base_grads))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol, err_msg=impl), grads,
                     base_grads)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=impl), stats,
                     base_stats)


def test_normalised_conv_bias_gradient_is_zero():
    """Conv -> training BatchNorm: autodiff gives the conv bias a zero gradient up to rounding, which is what
    ``Conv(normalised=True)`` uses (no reduction computed); outputs and all other gradients unchanged."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 6, 5, 4)), jnp.float32)
    results = []
    for normalised in (False, True):
        conv, bn = Conv(4, train=True, normalised=normalised), BatchNorm(True)
        cv, bv = conv.init(jax.random.key(0, impl="rbg"), x), bn.init(jax.random.key(1, impl="rbg"), g)

        def f(cv, x, conv=conv, bn=bn, bv=bv):
            return bn.apply(bv, conv.apply(cv, x), mutable=["batch_stats"])[0]

        y, vjp = jax.vjp(f, cv, x)
        results.append((y, *vjp(g)))
    (y0, dp0, dx0), (y1, dp1, dx1) = results
    np.testing.assert_array_equal(y1, y0)
    assert float(jnp.abs(dp0["params"]["bias"]).max()) < 1e-5 * float(jnp.abs(dp0["params"]["kernel"]).max())
    np.testing.assert_array_equal(dp1["params"]["bias"], 0.0)
    np.testing.assert_allclose(dp1["params"]["kernel"], dp0["params"]["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)


def test_batchnorm_per_copy_tuple_equals_stacked():
    """BatchNorm(copies) on a per-copy tuple: the stacked result, the same statistics updates (train and eval)."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 2, 5, 4, 6)) * 2 + 1, jnp.float32)
    for train in (True, False):
        bn = BatchNorm(train, copies=3)
        variables = bn.init(jax.random.key(0, impl="rbg"), x)
        variables = jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape), variables)
        y, state = bn.apply(variables, x, mutable=["batch_stats"])
        yt, state_t = bn.apply(variables, tuple(x), mutable=["batch_stats"])
        np.testing.assert_allclose(jnp.stack(yt), y, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state_t, state)


def test_conv_impl_auto_per_backend():
    assert resolve_conv_impl("auto", "copies", backend="cpu") == "unrolled"
    assert resolve_conv_impl("auto", "cells1", backend="cpu") == "unrolled"
    assert resolve_conv_impl("auto", "cells2", backend="cpu") == "matmul"                 # training programs
    assert resolve_conv_impl("auto", "cells2", backend="cpu", train=False) == "unrolled"  # inference programs
    assert resolve_conv_impl("auto", "copies", backend="cpu", train=False) == "unrolled"
    assert resolve_conv_impl("auto", "copies", backend="gpu") == "grouped"
    assert resolve_conv_impl("matmul", "cells2", backend="gpu") == "matmul"
    with pytest.raises(ValueError, match="model.conv_impl must be one of"):
        resolve_conv_impl("fast")


def test_max_pool_routes_ties_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-2, 3, (2, 9, 10, 4)), 0).astype(np.float32)   # many ties, odd height
    g = rng.standard_normal((2, 4, 5, 4)).astype(np.float32)
    y, vjp = jax.vjp(max_pool2, jnp.asarray(x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 2, 2)
    (yt * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], xt.grad.numpy().transpose(0, 2, 3, 1))


def test_cell_convs_are_row_major_per_cell_blocks():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 3)), jnp.float32)
    cells = to_cells(x, 4)
    assert cells.shape == (16, 2, 2, 3, 3)
    np.testing.assert_array_equal(cells[1 * 4 + 2], x[:, 2:4, 6:9])   # row 1, column 2
    np.testing.assert_array_equal(from_cells(cells, 4), x)
    np.testing.assert_array_equal(jnp.stack(to_cell_list(x, 4)), cells)            # the per-copy form
    np.testing.assert_array_equal(from_cell_list(to_cell_list(x, 4), 4), x)
    layer = CellBlock(5, 16, True)
    variables = layer.init(jax.random.key(0, impl="rbg"), cells)
    y = from_cells(layer.apply(variables, cells, mutable=["batch_stats"])[0], 4)
    p = variables["params"]
    for i in range(4):
        for j in range(4):
            k = i * 4 + j
            cell = x[:, 2 * i:2 * i + 2, 3 * j:3 * j + 3]
            mean, var = cell.mean((0, 1, 2)), cell.var((0, 1, 2))
            z = jax.nn.relu((cell - mean) / jnp.sqrt(var + 1e-5) * p["bn"]["scale"][k] + p["bn"]["bias"][k])
            z = jax.lax.conv_general_dilated(z, p["conv"]["kernel"][k], (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv"]["bias"][k]
            np.testing.assert_allclose(y[:, 2 * i:2 * i + 2, 3 * j:3 * j + 3], z, atol=1e-5)


def test_bad_configs_raise_clear_errors():
    config = get_config("algrnet", "tiny")
    config.model.lstm_hidden = 7
    with pytest.raises(ValueError, match="lstm_hidden"):
        networks.create_model(config)
    config = get_config("jaanet", "tiny")
    config.crop_size = 40
    with pytest.raises(ValueError, match="divisible by 16"):
        networks.create_model(config)
    config = get_config("jaanet", "tiny")
    config.model.relation = "gru"
    with pytest.raises(ValueError, match="relation"):
        networks.create_model(config)


# ------------------------------------------------------------------------------------ paper size (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jaanet", "algrnet"])
def test_paper_size_train_step_compiles(name):
    config = get_config(name, "paper")
    model, variables = _abstract_variables(config)
    batch = jax.eval_shape(lambda: _inputs(config))
    fn = lambda p, bs, b: jax.grad(_loss_parts_fn(model, config, bs), has_aux=True)(p, jnp.ones(3), b)
    compiled = jax.jit(fn).lower(variables["params"], variables["batch_stats"], batch).compile()
    assert compiled is not None


@pytest.mark.parametrize("local_within_region", [False, True])
def test_local_within_region_keeps_each_local_head_on_its_own_region(local_within_region):
    """``model.local_within_region``: AU t's local logit has zero gradient on every pixel more than the region
    features' reach (12 px at crop 32, measured at most 9) from the cells of AU t's region; the paper's refined
    map (off) is non-zero everywhere, so the local head reads the whole face. ``w/o full``: no offsets, whose
    (legitimate) gradient would reach the alignment features."""
    from algrnet_jax.models import regions
    config = get_config("wo_full", "tiny", "bp4d")
    config.model.local_within_region = local_within_region
    model = networks.create_model(config)
    c, g = config.crop_size, config.crop_size // 4
    images = _inputs(config, batch=1)["image"]
    key = jax.random.PRNGKey(0)
    variables = jax.jit(model.init).lower(key, images).compile(FAST)(key, images)

    def local_logits(x):
        out = model.apply(variables, x)
        return out["local_au_logprob"][0, :, 1] - out["local_au_logprob"][0, :, 0], out["landmarks"]

    jacobian, landmarks = jax.jit(jax.jacrev(local_logits, has_aux=True)).lower(images).compile(FAST)(images)
    centres = regions.au_centres(landmarks, config.aus)
    supports = np.asarray(regions.region_support(centres, config.model.map_scale, g + config.model.map_margin, c, g))
    reach = 12
    for t in range(len(config.aus)):
        grad = np.abs(np.asarray(jacobian[t][0])).sum(-1)
        near = np.kron(supports[0, t], np.ones((c // g, c // g))) > 0
        for _ in range(reach):        # dilate by one pixel (8-neighbourhood), `reach` times
            p = np.pad(near, 1)
            near = np.max([p[1 + dy:1 + dy + c, 1 + dx:1 + dx + c] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
        assert 0 < near.sum() < c * c
        far = grad[~near]
        if local_within_region:
            assert np.all(far == 0), (t, int((far > 0).sum()))
            assert grad[near].sum() > 0
        else:
            assert (far > 0).mean() > 0.5, t


def test_region_cells_are_the_cells_the_forward_confines_to():
    """``ALGRNet.region_centres`` / ``region_cells`` (what experiments.saliency reads a model's regions with)
    give the cells the forward keeps with ``local_within_region``, adaptive offsets and scales included."""
    config = get_config("algrnet", "tiny", "bp4d")
    images = _inputs(config, batch=2)["image"]
    key = jax.random.PRNGKey(0)
    variables = jax.jit(networks.create_model(config).init).lower(key, images).compile(FAST)(key, images)
    params = jax.tree.map(lambda x: x, variables["params"])     # Ada's last layers start at 0: move them
    ada = params["adaptive"]
    ada["offset_out"]["bias"] = jax.random.uniform(jax.random.PRNGKey(1), ada["offset_out"]["bias"].shape,
                                                   minval=-6.0, maxval=6.0)
    ada["scale_out"]["bias"] = jax.random.uniform(jax.random.PRNGKey(2), ada["scale_out"]["bias"].shape,
                                                  minval=-0.5, maxval=0.5)
    variables = {**variables, "params": params}
    outs = {}
    for confined in (False, True):
        config.model.local_within_region = confined
        model = networks.create_model(config)
        outs[confined] = jax.jit(lambda v, x, m=model: m.apply(v, x)).lower(variables, images).compile(FAST)(
            variables, images)
    out = outs[True]
    assert np.abs(np.asarray(out["offsets"])).max() > 1.0
    cells = np.asarray(model.region_cells(model.region_centres(out["landmarks"], out["offsets"]), out["scales"]))
    assert 0 < cells.mean() < 1
    np.testing.assert_allclose(np.asarray(out["refined_au_maps"]), np.asarray(outs[False]["refined_au_maps"]) * cells,
                               rtol=1e-6, atol=1e-7)
