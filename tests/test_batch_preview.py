"""data_pipelines.batch_preview (``algrnet data show``): one pipeline batch as a PNG grid."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from algrnet_jax import au_sets, cli, configs
from data_pipelines import batch_preview, builders


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.disable_progress_bar()
    builders.get_builder("synth_au", "bp4d_tiny", d).download_and_prepare()
    return d


def _config(data_dir):
    c = configs.get_config("algrnet", "tiny")
    c.data.data_dir = data_dir
    c.data.builder_config = "bp4d_tiny"
    c.data.batch_size = c.data.eval_batch_size = 4
    return c


def test_mirror_pairs_get_partner_colours():
    colours = batch_preview.point_colours()
    reflect = np.asarray(au_sets.REFLECT_49)
    assert colours.shape == (au_sets.NUM_LANDMARKS,)
    for i, j in enumerate(reflect):
        if i == j:
            assert colours[i] == "limegreen"
        else:                                   # a flipped face keeps the pattern: partners swap colours
            assert {colours[i], colours[j]} == {"red", "blue"}


def test_captions_name_present_and_unknown_aus_or_the_grade():
    names = [f"AU{a}" for a in range(1, 9)]
    batch = {"labels": np.array([[1, 0, -1, 0, 0, 0, 0, 1], [0] * 8])}
    assert batch_preview.batch_caption(batch, 0, names) == "AU1 AU8 AU3?"
    assert batch_preview.batch_caption(batch, 1, names) == "no AU"
    assert batch_preview.batch_caption({"labels": np.array([0, 3])}, 1, names) == f"grade {au_sets.GRADES[3]}"


def test_train_and_eval_grids_are_written(data_dir, tmp_path):
    c = _config(data_dir)
    train = batch_preview.one_batch(c, train=True)
    assert train["image"].shape == (4, c.crop_size, c.crop_size, 3)
    out = batch_preview.write_batch_png(c, str(tmp_path / "sub" / "train.png"))
    assert out.endswith("train.png") and (tmp_path / "sub" / "train.png").stat().st_size > 1000
    batch_preview.write_batch_png(c, str(tmp_path / "eval.png"), train=False, batch=1)
    assert (tmp_path / "eval.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no batch 99 in the test split"):
        batch_preview.one_batch(c, train=False, batch=99)


def test_data_show_command(data_dir, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert cli.main(["data", "show", "--config", "bp4d_tiny", "--size", "tiny", "--batch-size", "4",
                     "--data-dir", data_dir, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.stat().st_size > 1000
    assert cli.main(["data", "show", "--config", "bp4d_tiny", "--size", "tiny", "--batch-size", "4",
                     "--data-dir", data_dir, "--eval", "--batch", "99", "--out", str(out)]) == 2
    assert "no batch 99" in capsys.readouterr().err
