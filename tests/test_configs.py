"""Named configs as files (algrnet_jax/configs), the one override mechanism and its use by every entry point."""
from __future__ import annotations

import argparse
import json
import pathlib

import ml_collections
import pytest

from algrnet_jax import au_sets, cli, configs
from algrnet_jax.commands import data_show as show_cmd
from algrnet_jax.commands import train as train_cmd
from algrnet_jax.configs import common, jaanet, overrides, validate, wo_fr
from algrnet_jax.errors import UserError
from algrnet_jax.models import relations
from algrnet_jax import checkpoints as ckpt_lib
from algrnet_jax.training import loop
from data_pipelines import builders
from experiments import ablation, cross_validation, main_job

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "configs_frozen.json"
# Fields deleted (configs.DELETED_FIELDS) or added since the fixture was frozen.
ADDED_FIELDS: tuple[str, ...] = ("data.val_fraction", "data.val_seed",   # the validation split (PIPELINE)
                                 "model.fusion_refine_rescale",         # off = the paper
                                 "model.local_within_region",           # off = the paper
                                 "model.offset_unit")                   # "pixel" = as before


def _thaw(x):
    if isinstance(x, dict):
        if set(x) == {"__tuple__"}:
            return tuple(_thaw(v) for v in x["__tuple__"])
        return {k: _thaw(v) for k, v in x.items()}
    return x


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------------- configs as files

def test_every_config_equals_the_frozen_copy_field_for_field():
    frozen = _thaw(json.loads(FIXTURE.read_text()))
    names = {k.split("/")[0] for k in frozen}
    assert set(configs.NAMES) == names
    assert len(frozen) == len(configs.NAMES) * len(configs.SIZES) * len(au_sets.AU_SETS)
    for key, before in frozen.items():
        name, size, label_set = key.split("/")
        now = _flat(configs.get_config(name, size, label_set).to_dict())
        expected = {k: v for k, v in _flat(before).items() if k not in configs.DELETED_FIELDS}
        assert {k: v for k, v in now.items() if k not in ADDED_FIELDS} == expected, key
        for k, v in expected.items():                    # same Python types (an int stays an int, a tuple a tuple)
            assert type(now[k]) is type(v), (key, k)


def test_registry_is_the_files_and_each_file_takes_size_and_label_set():
    files = {p.stem for p in pathlib.Path(configs.__file__).parent.glob("*.py")}
    assert set(configs.NAMES) == files - {"__init__", "common", "overrides", "validate"}

    assert jaanet.get_config().to_dict() == configs.get_config("jaanet").to_dict()
    assert wo_fr.get_config("small,disfa").to_dict() == configs.get_config("wo_fr", "small", "disfa").to_dict()
    assert wo_fr.get_config("disfa, tiny").to_dict() == configs.get_config("wo_fr", "tiny", "disfa").to_dict()
    assert common.parse_arg(None) == common.parse_arg("") == ("paper", "bp4d")
    assert isinstance(configs.SIZES["small"], common.Size) and configs.SIZES["small"].crop_size == 64
    with pytest.raises(configs.ConfigError, match="'huge' is neither a size"):
        wo_fr.get_config("huge")


def test_unknown_name_or_size_is_a_user_error():
    with pytest.raises(UserError, match="unknown config 'resnet'; choose from algrnet"):
        configs.get_config("resnet")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        configs.get_config("algrnet", "huge")


def test_deleted_fields_are_gone_and_dropped_from_saved_configs():
    config = configs.get_config("algrnet", "tiny")
    assert "shuffle_buffer" not in config.data
    saved = config.to_dict()
    saved["data"]["shuffle_buffer"] = 2048               # a checkpoint written before the field was deleted
    cleaned = configs.drop_deleted_fields(saved)
    assert cleaned == config.to_dict() and "shuffle_buffer" in saved["data"]


def test_a_run_saved_before_a_field_was_added_resumes_with_its_old_value(tmp_path):
    config = configs.get_config("algrnet", "tiny")
    saved = ckpt_lib.config_to_dict(config)
    for key in configs.ADDED_FIELDS:
        del saved[key.split(".")[0]][key.split(".")[1]]   # a checkpoint written before the field existed
    loop.check_resumable(saved, config, "old run")          # the added fields' defaults are the old behaviour
    config.model.local_within_region = True
    with pytest.raises(loop.ResumeError, match="model.local_within_region: checkpoint False, now True"):
        loop.check_resumable(saved, config, "old run")
    assert configs.fill_added_fields({"model": {"local_within_region": True}})["model"]["local_within_region"]
    loaded = ckpt_lib.config_from_dict(saved)               # what inference reads from such a checkpoint
    assert {k: validate.lookup(loaded, k)[1] for k in configs.ADDED_FIELDS} == configs.ADDED_FIELDS
    saved["data"]["shuffle_buffer"] = 1000                  # a field deleted since
    assert "shuffle_buffer" not in ckpt_lib.config_from_dict(saved).data


# ------------------------------------------------------------------------------------ typed overrides

def test_overrides_are_typed_by_the_field():
    c = configs.from_args("algrnet", "tiny", "bp4d", [
        "train.lr=1", "train.num_epochs=3", "train.nesterov=false", "data.skip_bad=True", "data.data_dir=123",
        "aus=1,12", "model.map_scale=0.2", "train.weight_decay=5e-4", "data.builder_config=bp4d_tiny"])
    assert c.train.lr == 1.0 and type(c.train.lr) is float
    assert c.train.num_epochs == 3 and type(c.train.num_epochs) is int
    assert c.train.nesterov is False and c.data.skip_bad is True
    assert c.data.data_dir == "123"                      # a str field takes the text as it is
    assert c.aus == (1, 12) and c.model.map_scale == 0.2 and c.train.weight_decay == 5e-4
    for text in ("(1, 4)", "[1, 4]", "1,4", " 1 , 4 "):
        assert configs.apply_overrides(configs.get_config("algrnet", "tiny"), [f"aus={text}"]).aus == (1, 4)
    assert configs.apply_overrides(configs.get_config("algrnet", "tiny"), ["aus=4"]).aus == (4,)
    assert configs.apply_overrides(configs.get_config("algrnet", "tiny"), ["data.data_dir=a=b"]).data.data_dir == "a=b"


@pytest.mark.parametrize("item,message", [
    ("train.lr=abc", "train.lr=abc: train.lr takes a number (now 0.01); 'abc' is not one"),
    ("train.num_epochs=2.5", "train.num_epochs takes an integer"),
    ("train.nesterov=maybe", "train.nesterov takes true or false"),
    ("aus=1,x", "aus takes a tuple of integers"),
    ("aus=1,,2", "aus takes a tuple of integers"),
    ("train.nope=1", "unknown config key 'train.nope'"),
    ("train.lrr=1", "did you mean train.lr"),
    ("nosection.lr=1", "unknown config key 'nosection.lr'"),
    ("train.lr.x=1", "unknown config key 'train.lr.x'"),
    ("train=1", "train is a config section"),
    ("train.lr", "is not of the form key=value"),
])
def test_bad_overrides_are_user_errors_naming_the_field(item, message):
    with pytest.raises(configs.OverrideError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        configs.apply_overrides(configs.get_config("algrnet", "tiny"), [item])
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_config_flag_spelling_is_an_alias_of_set():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="algrnet")
    configs.add_override_arguments(parser)
    args = configs.parse_args(parser, ["--config", "jaanet", "--config.train.lr=0.02", "--set", "train.seed=3",
                                       "--config.data.fold", "2"])
    assert args.config == "jaanet"
    assert args.overrides == ["train.lr=0.02", "train.seed=3", "data.fold=2"]   # one list, command-line order
    assert overrides.normalize_argv(["--", "--config.a=1"]) == ["--", "--config.a=1"]
    with pytest.raises(SystemExit):
        configs.parse_args(parser, ["--config.train.lr"])


# --------------------------------------------------------------------- every entry point, one mechanism

def _entry_point_configs() -> dict[str, ml_collections.ConfigDict]:
    """The config each entry point builds from ``--set data.data_dir=123 --config.train.seed=7``."""
    extra = ["--set", "data.data_dir=123", "--config.train.seed=7"]
    out = {}
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    out["algrnet train"] = train_cmd.build_config(configs.parse_args(
        p, ["--config", "jaanet", "--size", "tiny", "--dataset", "synth_au", "--fold", "1", "--workdir", "w", *extra]))
    p = argparse.ArgumentParser()
    show_cmd.add_arguments(p)
    out["algrnet data show"] = show_cmd.build_config(configs.parse_args(p, ["--size", "tiny", *extra]))
    out["cross_validation"] = cross_validation.config_from_args(configs.parse_args(cross_validation.build_parser(), [
        "--workdir", "w", *extra]))
    out["cross_validation --paper"] = cross_validation.config_from_args(configs.parse_args(
        cross_validation.build_parser(), ["--workdir", "w", "--paper", "--dataset", "bp4d", *extra]))
    out["ablation"] = cross_validation.config_from_args(configs.parse_args(ablation.build_parser(), [
        "--workdir", "w", *extra]), name="wo_fr")
    args = configs.parse_args(main_job.build_parser(), ["--quick", *extra])
    out["main_job"] = main_job.job_config(main_job.QUICK, data_dir=args.data_dir, overrides=args.overrides)
    return out


def test_every_entry_point_types_overrides_the_same_way():
    built = _entry_point_configs()
    assert set(built) == {"algrnet train", "algrnet data show", "cross_validation", "cross_validation --paper",
                          "ablation", "main_job"}
    for where, config in built.items():
        assert config.data.data_dir == "123", where     # the str field keeps the text (the runners once gave 123)
        assert config.train.seed == 7, where


def test_command_line_choices_come_from_the_registries():
    parser = cli.build_parser()
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for name in configs.NAMES:
        assert name in text
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--config", "resnet", "--dataset", "synth_au", "--fold", "1", "--workdir", "w"])
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--config", "algrnet", "--dataset", "ck", "--fold", "1", "--workdir", "w"])
    args = configs.parse_args(parser, ["train", "--config", "algrnet", "--dataset", next(iter(builders.REGISTRY)),
                                       "--fold", "1", "--workdir", "w", "--config.train.lr=0.5"])
    assert args.overrides == ["train.lr=0.5"]


def test_validated_names_are_read_from_the_registries(monkeypatch):
    """The dataset and relation rules read builders.REGISTRY and relations.RELATIONS (no copy to drift)."""
    config = configs.get_config("algrnet", "tiny")
    config.data.dataset, config.model.relation = "dot_faces", "gated"
    assert [p.split(" = ")[0] for p in validate.config_problems(config)] == ["model.relation", "data.dataset"]
    monkeypatch.setitem(builders.REGISTRY, "dot_faces", "tests.test_pipeline:DotFaces")
    monkeypatch.setitem(relations.RELATIONS, "gated", relations.ConvBiLSTM)
    assert validate.config_problems(config) == []
    assert validate.names("dataset") == tuple(builders.REGISTRY)


def test_a_checkpoint_saved_with_a_deleted_field_still_resumes():
    config = configs.get_config("algrnet", "tiny")
    saved = ckpt_lib.config_to_dict(config)
    saved["data"]["shuffle_buffer"] = 2048               # written before data.shuffle_buffer was deleted
    loop.check_resumable(saved, config, "ckpt")
    saved["train"]["lr"] = 0.5
    with pytest.raises(loop.ResumeError, match="train.lr: checkpoint 0.5, now 0.01"):
        loop.check_resumable(saved, config, "ckpt")
