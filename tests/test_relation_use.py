"""experiments.relation_use: knock-outs of a trained model's parts at inference."""
from __future__ import annotations

import jax
import numpy as np

from algrnet_jax.configs import get_config
from algrnet_jax.models import networks
from experiments import relation_use


def test_knockouts_equal_the_ablated_models_and_other_face_changes_the_output():
    """ALGRNet with its relation term zeroed and its regions fixed gives exactly the outputs of the ablated
    model (relation "none", no adaptive regions) on the same weights; the relation term of another face changes
    them; the relation ratio is measured per face and AU."""
    config = get_config("algrnet", "tiny")
    model = networks.create_model(config)
    rng = np.random.default_rng(0)
    images = jax.numpy.asarray(rng.uniform(-1, 1, (2, config.crop_size, config.crop_size, 3)), np.float32)
    variables = model.init(jax.random.key(0, impl="rbg"), images)
    params = dict(variables["params"])
    adaptive = jax.tree.map(lambda a: a, dict(params["adaptive"]))      # trained-like: regions move per face
    for layer in ("offset_out", "scale_out"):
        kernel = adaptive[layer]["kernel"]
        adaptive[layer] = {**adaptive[layer], "kernel": rng.normal(0, 0.05, kernel.shape).astype(np.float32)}
    params["adaptive"] = adaptive
    variables = {**variables, "params": params}

    knocked = relation_use.knocked_forward(model, ("relations zero", "adaptive fixed"))(variables, images)
    ablated = get_config("algrnet", "tiny")
    ablated.model.relation, ablated.model.adaptive = "none", False
    kept = {k: v for k, v in params.items() if k not in ("relations", "adaptive")}
    ref = networks.create_model(ablated).apply({**variables, "params": kept}, images, train=False)
    for key in ("final_au_prob", "local_au_prob", "au_prob", "refined_au_maps"):
        np.testing.assert_allclose(knocked[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)

    intact = relation_use.knocked_forward(model)(variables, images)
    for knockout in ("relations other face", "F&R global zero", "F&R global other face"):
        other = relation_use.knocked_forward(model, (knockout,))(variables, images)
        assert np.abs(np.asarray(other["local_au_prob"]) - np.asarray(intact["local_au_prob"])).max() > 1e-6, knockout
    # At initialisation two faces' regions differ by ~1e-3 px (too little to move a probability): check the swap.
    swapped = relation_use.knocked_forward(model, ("adaptive other face",))(variables, images)
    for key in ("offsets", "scales"):
        np.testing.assert_array_equal(swapped[key], np.roll(np.asarray(intact[key]), 1, axis=0))
        assert np.abs(np.asarray(intact[key][0]) - np.asarray(intact[key][1])).max() > 0
    n = len(config.aus)
    assert other["relation_ratio"].shape == (2, n) and np.all(np.asarray(other["relation_ratio"]) > 0)
    assert relation_use.applicable(config) == list(relation_use.KNOCKOUTS)
    assert relation_use.applicable(ablated) == ["F&R global zero", "F&R global other face"]
    # "another face" is half a batch away: not the next frame of the same sequence
    x = jax.numpy.arange(8.0)
    np.testing.assert_array_equal(relation_use._other_face(x, 0), np.roll(np.arange(8.0), 4))


def test_markdown_reports_change_to_intact_over_runs():
    def run(intact, zero, ratio):
        return {"aus": ["AU1", "AU2"], "results": {
            "intact": {"final": intact, "local": intact - 1, "relation_ratio_per_au": ratio},
            "relations zero": {"final": zero, "local": zero - 3}}}

    md = relation_use.markdown([run(70.0, 60.0, [0.5, 0.25]), run(80.0, 76.0, [0.3, 0.15])])
    assert "2 run(s)" in md
    assert "| relations zero | 68.0 | -7.0 (-10.0, -4.0) | 65.0 | -9.0 |" in md
    assert "| intact | 75.0 | +0.0 (+0.0, +0.0) | 74.0 | +0.0 |" in md
    assert "AU1 0.40, AU2 0.20" in md
