"""JAA-Net release conversion: the recipe rebuild, the by-name mapping, its errors."""
import json
import pathlib

import jax
import numpy as np
import pytest

from algrnet_jax.configs import get_config
from algrnet_jax.errors import UserError
from algrnet_jax.interop import convert
from algrnet_jax.reference import recipe

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "jaanet_parity_bp4d"


@pytest.fixture(scope="module")
def release():
    return recipe.rebuild_state_dicts(recipe.load_recipe(FIXTURE / "recipe.json"))


@pytest.fixture(scope="module")
def config():
    return get_config("jaanet")


def test_recipe_rebuild_follows_the_rule(release):
    rec = json.loads((FIXTURE / "recipe.json").read_text())
    assert tuple(release) == recipe.MODULES
    for module, keys in rec["modules"].items():
        assert [k for k, _ in keys] == list(release[module])
        for key, shape in keys:
            v = release[module][key]
            assert v.shape == tuple(shape), (module, key)
            assert v.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32)
    rl = release["region_learning"]
    assert np.all(rl["multiscale_feat.0.bn.running_var"] >= 0.5)
    assert np.all(rl["multiscale_feat.0.bn.running_var"] < 1.5)
    # The override puts the untrained landmark output near the mean shape.
    bias = release["align_net"]["align_output.1.bias"]
    np.testing.assert_allclose(bias, np.asarray(rec["mean_shape"], np.float32), atol=0.3)
    w = release["align_net"]["align_feat.feat_extract.0.weight"]       # [96, 64, 3, 3]
    assert abs(w.std() * np.sqrt(64 * 9) - 1.0) < 0.05
    again = recipe.rule_value(rec["tag"], "align_net", "align_feat.feat_extract.0.weight", w.shape)
    np.testing.assert_array_equal(again, w)


def test_convert_maps_every_entry_and_round_trips_exactly(release, config):
    variables = convert.convert_state_dicts(release, config)
    kernel = variables["params"]["region_learning"]["layer1"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, release["region_learning"]["multiscale_feat.0.conv.weight"].transpose(2, 3, 1, 0))
    cell = variables["batch_stats"]["region_learning"]["layer2"]["branch1"]["bn"]["var"][37]
    np.testing.assert_array_equal(cell, release["region_learning"]["multiscale_feat.2.local_conv_branch1.bns.37.running_var"])
    dense = variables["params"]["local_au_output"]["dense1"]["kernel"][5]
    np.testing.assert_array_equal(dense, release["local_au_net"]["local_aus_output.5.0.weight"].T)
    back = convert.flax_to_state_dicts(variables, config, num_batches_tracked=0)
    for module in recipe.MODULES:
        assert list(back[module]) == list(release[module]), module
        for key, value in release[module].items():
            np.testing.assert_array_equal(back[module][key], value, err_msg=f"{module}.{key}")
    assert convert.count_parameters(variables) == sum(
        v.size for m in release.values() for k, v in m.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_convert_fails_by_key_name(release, config):
    bad = {m: dict(sd) for m, sd in release.items()}
    del bad["local_au_net"]["local_aus_output.3.1.bias"]
    bad["au_net"]["au_output.2.weight"] = np.zeros((3, 3), np.float32)
    bad["align_net"]["align_output.0.weight"] = np.zeros((512, 4001), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dicts(bad, config)
    msg = str(err.value)
    assert "1 unused entries" in msg and "au_net.au_output.2.weight" in msg
    assert "1 missing entries" in msg and "local_au_net.local_aus_output.3.1.bias" in msg
    assert "1 mis-shaped entries" in msg and "align_net.align_output.0.weight: shape [512, 4001], expected [512, 4000]" in msg


def test_convert_refuses_non_finite_weights_by_name_and_converts_in_float64(release, config):
    bad = {m: dict(sd) for m, sd in release.items()}
    w = bad["au_net"]["au_output.1.bias"].copy()
    w[0], w[3] = np.nan, np.inf
    bad["au_net"]["au_output.1.bias"] = w
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dicts(bad, config)
    assert isinstance(err.value, UserError)
    msg = str(err.value)
    assert "1 non-finite (NaN / Inf" in msg and "au_net.au_output.1.bias: 1 NaN, 1 Inf of 24" in msg
    v64 = convert.convert_state_dicts(release, config, dtype=np.float64)
    assert {x.dtype for x in jax.tree.leaves(v64)} == {np.dtype(np.float64)}


def test_convert_refuses_a_release_of_another_size_or_model(release):
    with pytest.raises(convert.ConversionError, match="mis-shaped"):
        convert.convert_state_dicts(release, get_config("jaanet", size="small"))
    with pytest.raises(convert.ConversionError, match="'jaanet' AU model"):
        convert.convert_state_dicts(release, get_config("algrnet"))
    assert convert.label_set_for(8) == "disfa"
    with pytest.raises(convert.ConversionError, match="no label set with 5 AUs"):
        convert.label_set_for(5)


@pytest.mark.torch
def test_unreadable_or_missing_pth_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(convert.ConversionError, match="region_learning_7.pth: missing"):
        convert.load_release(tmp_path, 7)
    for module in recipe.MODULES:
        torch.save({"w": torch.zeros(2)}, tmp_path / f"{module}_7.pth")
    (tmp_path / "local_au_net_7.pth").write_bytes(b"not a zip archive")
    with pytest.raises(convert.ConversionError, match=r"local_au_net_7\.pth: cannot read the PyTorch state_dict"):
        convert.load_release(tmp_path, 7)
    torch.save([torch.zeros(1)], tmp_path / "local_au_net_7.pth")
    with pytest.raises(convert.ConversionError, match=r"local_au_net_7\.pth: not a state_dict"):
        convert.load_release(tmp_path, 7)
