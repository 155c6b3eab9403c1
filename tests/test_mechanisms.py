"""Mechanism sets (data_pipelines.synthetic.mechanisms) and their runner (experiments.mechanisms): each option
draws what it claims (pixel checks on generated faces), the rule ceiling is exact on hand-made labels, and the
runner writes the summary JSON in its schema."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

from algrnet_jax import au_sets
from data_pipelines import synthetic
from data_pipelines.synthetic import face, generator, mechanisms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_training import compilation_cache  # noqa: E402, F401  (autouse fixture: seeds share compiled steps)

ONE = dataclasses.replace(synthetic.SIZES["tiny"], num_subjects=2, frames_per_sequence=2, noise_std=0.0)


def _pairs(cfg, monkeypatch, rows: dict[int, float]) -> list[tuple[dict, dict]]:
    """(rest, active) frames of ``cfg``: the same frames (pose, identity) with raw intensities all 0, and with
    ``rows`` (AU -> intensity) in every frame."""
    def generate(values: dict[int, float]) -> list[dict]:
        def fixed(rng, c):
            x = np.zeros((c.frames_per_sequence, face.NUM_AUS), np.float32)
            for au, v in values.items():
                x[:, face.AU_INDEX[au]] = v
            return x
        monkeypatch.setattr(generator, "intensities", fixed)
        return list(synthetic.generate(cfg))
    return list(zip(generate({}), generate(rows)))


def _union(landmarks: np.ndarray, aus=au_sets.SYNTH_AUS) -> np.ndarray:
    out = np.zeros((200, 200), bool)
    for au in aus:
        out |= face.au_region_mask(au, landmarks)
    return out


def test_sb_hidden_au_is_the_and_of_its_partners_and_never_drawn(monkeypatch):
    """sb: AU2 := AND(AU12, AU25): labelled, but the frame changes only inside the partners' regions, never in
    AU2's region or its brow neighbours' (AU1, AU4)."""
    cfg = dataclasses.replace(mechanisms.synth_config(mechanisms.mechanism("sb", partners=(12, 25))), **{
        k: getattr(ONE, k) for k in ("num_subjects", "sequences_per_subject", "frames_per_sequence", "noise_std")})
    for rows, label in (({12: 4.0, 25: 3.0}, 1), ({12: 4.0}, 0)):
        rest, active = _pairs(cfg, monkeypatch, rows)[1]
        occ = synthetic.occurrence(active["intensity"], "bp4d")
        assert occ[au_sets.AU_SETS["bp4d"].index(2)] == label
        assert active["intensity"][face.AU_INDEX[2]] == (3.0 if label else 0.0)
        changed = np.abs(active["image"].astype(int) - rest["image"]).sum(-1) > 0
        assert changed.sum() > 50
        assert not (changed & _union(rest["landmarks"], (1, 2, 4))).any()
        assert not (changed & ~_union(rest["landmarks"], (12, 25))).any()
        np.testing.assert_array_equal(active["landmarks"][:10], rest["landmarks"][:10])


def test_fr_evidence_lies_outside_every_au_region(monkeypatch):
    """fr: AU4 changes pixels (both temple marks), none inside any AU's region; its label follows its intensity."""
    cfg = dataclasses.replace(mechanisms.synth_config(mechanisms.mechanism("fr")), num_subjects=3,
                              sequences_per_subject=1, frames_per_sequence=2, noise_std=0.0)
    for rest, active in _pairs(cfg, monkeypatch, {4: 5.0}):
        changed = np.abs(active["image"].astype(int) - rest["image"]).sum(-1) > 0
        assert changed[:, :100].sum() > 100 and changed[:, 100:].sum() > 100      # a mark on each side
        assert not (changed & _union(rest["landmarks"])).any()
        np.testing.assert_array_equal(active["landmarks"], rest["landmarks"])
        assert synthetic.occurrence(active["intensity"], "bp4d")[au_sets.AU_SETS["bp4d"].index(4)] == 1


def test_ada_displacement_is_constant_within_a_subject(monkeypatch):
    """ada: AU12's pixel change is the undisplaced change moved by the subject's offset (same for every frame of
    a subject, different between subjects, of length displacement x interocular); landmarks do not move."""
    base = dict(num_subjects=2, sequences_per_subject=2, frames_per_sequence=2, noise_std=0.0, pose_jitter=0.0)
    cfg = dataclasses.replace(mechanisms.synth_config(mechanisms.mechanism("ada", displacement=0.3)), **base)
    plain = dataclasses.replace(cfg, displaced_aus=(), displacement=0.0)

    def centroids(c):
        out = []
        for rest, active in _pairs(c, monkeypatch, {12: 5.0})[::2]:
            change = np.abs(active["image"].astype(float) - rest["image"]).sum(-1)
            yx = np.argwhere(change > 0)
            out.append((np.average(yx[:, ::-1], axis=0, weights=change[change > 0]), rest, active))
        return out

    shifted, drawn = centroids(cfg), centroids(plain)
    moves = []
    for k, ((c1, rest, active), (c0, _, _)) in enumerate(zip(shifted, drawn)):
        subject = k // cfg.sequences_per_subject
        expect = generator.subject_offset(cfg, subject) * face.interocular(rest["landmarks"])
        np.testing.assert_allclose(c1 - c0, expect, atol=1.5)
        np.testing.assert_array_equal(active["landmarks"], rest["landmarks"])
        moves.append(c1 - c0)
    np.testing.assert_allclose(moves[0], moves[1], atol=0.5)                      # one subject, two sequences
    assert np.linalg.norm(moves[0] - moves[2]) > 3.0                             # another subject
    assert np.linalg.norm(generator.subject_offset(cfg, 0)) == pytest.approx(0.3)


def test_independent_sets_are_uncorrelated_except_the_built_dependency():
    """The mechanism sets draw AUs independently: at size small the sb set's AU1/AU4 (AU2's brow neighbours) are
    nearly uncorrelated with AU2, which equals AU12 exactly."""
    labels = mechanisms.fold_labels(mechanisms.mechanism("sb"), "small", fold=1)
    np.testing.assert_array_equal(labels[2], labels[12])
    for au in (1, 4):
        assert abs(np.corrcoef(labels[2], labels[au])[0, 1]) < 0.1
    assert 0.1 < labels[2].mean() < 0.35


def test_rule_ceiling_on_hand_made_labels():
    target = np.array([1, 1, 0, 0, 1, 0])
    partner = np.array([[1], [1], [0], [1], [0], [0]])
    # "partner" -> TP 2, FP 1, FN 1: 66.7; "always" -> TP 3, FP 3: 66.7; "not partner" 40; "never" 0.
    assert mechanisms.rule_ceiling(target, partner) == pytest.approx(200 * 2 / 6)
    a, b = np.array([0, 0, 1, 1, 0, 1]), np.array([0, 1, 0, 1, 1, 1])
    ab = np.stack([a, b], 1)
    assert mechanisms.rule_ceiling(a & b, ab) == pytest.approx(100.0)
    assert mechanisms.rule_ceiling(a ^ b, ab) == pytest.approx(100.0)          # non-monotone rules are tried too
    assert mechanisms.rule_ceiling(np.array([1, 0, 1, 0]), np.array([[1], [1], [1], [1]])) == pytest.approx(200 / 3)
    assert mechanisms.f1(np.ones(4), np.array([1, 0, 0, 0])) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="evidence"):
        mechanisms.rule_ceiling(target, partner[:3])


def test_mechanism_options_are_validated():
    assert mechanisms.mechanism("sb", au=1, partners=[12, 25]).name() == "bp4d_small_sb_au1_p12-25"
    assert mechanisms.mechanism("sb").name() == "bp4d_small_sb"
    for kwargs, match in (({"test": "sb", "partners": [2]}, "partners"),
                          ({"test": "fr", "partners": [1]}, "sb and skip"),
                          ({"test": "ada", "displacement": 0.0}, "displacement"), ({"test": "sb", "au": 3}, "--au"),
                          ({"test": "xx"}, "unknown mechanism")):
        with pytest.raises(ValueError, match=match):
            mechanisms.mechanism(**kwargs)
    with pytest.raises(ValueError, match="outside_aus"):
        generator.check_config(dataclasses.replace(ONE, outside_aus=(1, 2)))


def test_a_set_with_options_is_found_by_its_name_in_any_process(tmp_path):
    """The builder config name of a set with options reads back as that set (``parse_name`` inverts
    ``Mechanism.name``), and ``get_builder`` finds it by name after synth_au's configs were first looked up, as
    an evaluation in a process other than the runner's does (saliency, region_moves, relation_use)."""
    from data_pipelines import builders

    for mech, size in ((mechanisms.mechanism("ada", displacement=0.45), "tiny"), (mechanisms.mechanism("fr"), "small"),
                       (mechanisms.mechanism("sb", au=1, partners=[12, 25]), "medium")):
        assert mechanisms.parse_name(mech.name(size)) == (mech, size)
    for other in ("bp4d_small", "bp4d_small_ada_d0.6", "bp4d_huge_fr", "bp4d_small_ada_au12_d0.30",
                  "bp4d_small_sb_au2_p2", "bp4d_small_ada_au12_d0"):
        assert mechanisms.parse_name(other) is None, other
    assert builders.get_builder("synth_au", "bp4d_tiny", data_dir=str(tmp_path)).builder_config.mechanism is None
    name = "bp4d_tiny_ada_au12_d0.45"
    cfg = builders.get_builder("synth_au", name, data_dir=str(tmp_path)).builder_config
    assert cfg.name == name and cfg.mechanism == mechanisms.mechanism("ada", displacement=0.45) and cfg.size == "tiny"
    with pytest.raises(ValueError, match="unknown config 'bp4d_tiny_ada_d0.45'"):
        builders.get_builder("synth_au", "bp4d_tiny_ada_d0.45", data_dir=str(tmp_path))


def test_runner_summary_from_given_runs(tmp_path, monkeypatch, capsys):
    """The runner's bookkeeping without training: per-seed runs with known F1 give paired differences of the
    tested AU's local F1 and of the final mean F1 with their t intervals, in the issue's schema."""
    from experiments import ablation, mechanisms as runner
    local = {("algrnet", 0): 60.0, ("algrnet", 1): 70.0, ("wo_fr", 0): 50.0, ("wo_fr", 1): 55.0}

    def fake_train(args, mech, builder_config, key, seed, workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        kinds = {k: {"mean_f1": 40.0 + seed + (5.0 if key == "algrnet" else 0.0),
                     "mean_f1_per_au": [30.0, 30.0, local[key, seed], 30.0]} for k in ablation.KINDS}
        return {"aus": ["AU1", "AU2", "AU4", "AU12"], "folds": [1], "dataset": "synth_au", "label_set": "bp4d",
                "builder_config": builder_config, "predictions": kinds}

    monkeypatch.setattr(runner, "train_variant", fake_train)
    monkeypatch.setattr(runner.sets, "ceilings", lambda mech, size: {"rule_ceiling": 100.0, "blind_f1": 34.0})
    out = tmp_path / "m.json"
    assert runner.main(["--test", "fr", "--seeds", "2", "--size", "tiny", "--data-size", "tiny", "--variants",
                        "--no-knockouts", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    rows = {t["metric"]: t for t in json.loads(out.read_text())["tests"]}
    loc, fin = rows["local_f1"], rows["final_mean_f1"]
    assert (loc["part"], loc["au"], loc["variant"], loc["seeds"], loc["rule_ceiling"]) == ("fr", "AU4", "ALGRNet",
                                                                                        2, 100.0)
    assert loc["paired_diff_mean"] == pytest.approx(12.5)                 # (10 + 15) / 2
    half = 12.706204736174698 * np.std([10.0, 15.0], ddof=1) / np.sqrt(2)   # t(0.975, 1)
    assert loc["ci95"] == pytest.approx([12.5 - half, 12.5 + half])
    assert fin["paired_diff_mean"] == pytest.approx(5.0) and fin["wins"] == 2
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "[fr] seed 1" in capsys.readouterr().out
    # the same test with a model option is a second entry beside the first; rerunning it replaces only itself
    for _ in range(2):
        assert runner.main(["--test", "fr", "--seeds", "2", "--size", "tiny", "--data-size", "tiny", "--variants",
                            "--no-knockouts", "--workdir", str(tmp_path / "w"), "--out", str(out),
                            "--set", "model.local_within_region=true"]) == 0
    tests = json.loads(out.read_text())["tests"]
    assert sorted(runner.options(t) for t in tests) == ["", "", "local_within_region", "local_within_region"]
    assert runner.options({"overrides": ["model.local_within_region=true", "model.adaptive=false",
                                               "train.num_epochs=18", "data.batch_size=8"]}) == \
        "local_within_region, 18 epochs"
    assert runner.options({"overrides": ["train.num_epochs=6"]}) == ""
    assert runner.options({"overrides": ["model.local_within_region=true", "model.offset_unit=region"],
                           "set_options": "displacement 0.6"}) == "displacement 0.6, local_within_region, offset_unit=region"
    assert mechanisms.mechanism("ada", displacement=0.6).options() == "displacement 0.6"
    assert mechanisms.mechanism("sb", au=1, partners=[12, 25]).options() == "partners 12+25"
    assert mechanisms.mechanism("sb").options() == mechanisms.mechanism("ada").options() == ""
    table = out.with_suffix(".md").read_text()
    assert "| fr | AU4 | local_within_region | local_f1 |" in table and "| fr | AU4 | paper | local_f1 |" in table


def test_runner_reuses_the_seeds_of_a_record(tmp_path, monkeypatch):
    """``--reuse``: the seeds of an earlier run's per-test JSON are taken, not trained, and paired with the new
    ones; a record of other --set values is refused, naming the field."""
    from experiments import ablation, mechanisms as runner
    trained = []

    def fake_train(args, mech, builder_config, key, seed, workdir):
        trained.append((key, seed))
        workdir.mkdir(parents=True, exist_ok=True)
        kinds = {k: {"mean_f1": 40.0 + seed, "mean_f1_per_au": [30.0, 30.0, 50.0 + seed + (key == "algrnet") * 10,
                                                                30.0]} for k in ablation.KINDS}
        return {"aus": ["AU1", "AU2", "AU4", "AU12"], "folds": [1], "dataset": "synth_au", "label_set": "bp4d",
                "builder_config": builder_config, "predictions": kinds}

    monkeypatch.setattr(runner, "train_variant", fake_train)
    monkeypatch.setattr(runner.sets, "ceilings", lambda mech, size: {"rule_ceiling": 100.0, "blind_f1": 34.0})
    argv = ["--test", "fr", "--size", "tiny", "--data-size", "tiny", "--variants", "--no-knockouts",
            "--set", "train.num_epochs=3"]
    assert runner.main([*argv, "--seeds", "2", "--workdir", str(tmp_path / "a"), "--out", str(tmp_path / "a.json")]) == 0
    (record,) = (tmp_path / "a").glob("*/mechanism.json")
    trained.clear()
    out = tmp_path / "b.json"
    assert runner.main([*argv, "--seeds", "3", "--workdir", str(tmp_path / "b"), "--out", str(out),
                        "--reuse", str(record)]) == 0
    assert trained == [("algrnet", 2), ("wo_fr", 2)]                     # seeds 0 and 1 come from the record
    loc = next(t for t in json.loads(out.read_text())["tests"] if t["metric"] == "local_f1")
    assert loc["seeds"] == 3 and loc["variant_per_seed"] == [60.0, 61.0, 62.0] and loc["paired_diff_mean"] == 10.0
    with pytest.raises(runner.UserError, match="'overrides'"):
        runner.main(["--test", "fr", "--size", "tiny", "--data-size", "tiny", "--variants", "--no-knockouts",
                     "--seeds", "3", "--workdir", str(tmp_path / "c"), "--out", str(out), "--reuse", str(record)])
    with pytest.raises(runner.UserError, match="cannot read"):
        runner.main([*argv, "--seeds", "3", "--workdir", str(tmp_path / "c"), "--reuse", str(tmp_path / "none")])


@pytest.mark.slow
def test_runner_writes_the_summary(tmp_path, capsys):
    """One training step per run on the tiny set and model: the summary has the issue's schema, keeps the entries
    of other tests, and the plot is written; bad options exit before any work."""
    from experiments import mechanisms as runner
    out = tmp_path / "m.json"
    out.write_text(json.dumps({"tests": [{"part": "sb", "au": "AU2", "metric": "local_f1", "variant": "x",
                                          "baseline": "y", "paired_diff_mean": 1.0, "ci95": [0, 2], "seeds": 5,
                                          "rule_ceiling": 100.0}]}))
    argv = ["--test", "fr", "--seeds", "2", "--size", "tiny", "--data-size", "tiny", "--variants",
            "--workdir", str(tmp_path / "w"), "--out", str(out), "--set", "train.max_steps=1",
            "--set", "data.val_fraction=0", "--set", "data.eval_batch_size=8"]
    assert runner.main(argv) == 0
    tests = json.loads(out.read_text())["tests"]
    assert tests[0]["variant"] == "x"                                  # the other test's entry is kept
    fr = [t for t in tests if t["part"] == "fr"]
    assert {t["metric"] for t in fr} == {"local_f1", "final_mean_f1"}
    for t in fr:
        assert {"part", "au", "metric", "variant", "baseline", "paired_diff_mean", "ci95", "seeds",
                "rule_ceiling"} <= set(t)
        assert t["au"] == "AU4" and t["seeds"] == 2 and t["rule_ceiling"] == pytest.approx(100.0)
        assert t["ci95"][0] <= t["paired_diff_mean"] <= t["ci95"][1]
        assert "F&R global other face" in t["knockouts_local_f1_change"]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "| fr | AU4 | paper | local_f1 | ALGRNet |" in out.with_suffix(".md").read_text()
    assert "[fr] seed 1" in capsys.readouterr().out
    with pytest.raises(runner.UserError, match="--partners"):
        runner.main(["--test", "fr", "--partners", "1", "--workdir", str(tmp_path / "w2")])
    # where the trained local head looks (experiments.saliency) on one of these runs
    from experiments import saliency
    run = next((tmp_path / "w").glob("*/wo_fr/seed0/fold1"))
    sal = tmp_path / "sal.json"
    assert saliency.main([str(run), "--au", "4", "--out", str(sal)]) == 0
    (row,) = json.loads(sal.read_text())
    assert row["frames"] > 0 and 0 <= row["share_inside_own_map"] <= 1 and 0 <= row["share_outside_every_map"] <= 1
    assert row["share_inside_own_map"] + row["share_outside_every_map"] <= 1 + 1e-6
    assert 0 < row["refined_map_on_region"] < 1 and 0 < row["refined_map_off_region"] < 1
    assert sal.with_suffix(".png").stat().st_size > 1000
    # where its adaptive regions went (experiments.region_moves)
    from experiments import region_moves
    rm = tmp_path / "moves.json"
    assert region_moves.main([str(run), "--out", str(rm)]) == 0
    (row,) = json.loads(rm.read_text())
    with pytest.raises(runner.UserError, match="exists"):                # nothing written is replaced unasked
        region_moves.main([str(run), "--out", str(rm)])
    assert json.loads(rm.read_text()) == [row]
    assert region_moves.main([str(run), "--out", str(rm), "--force"]) == 0
    assert row["adaptive"] and len(row["offset_px_mean"]) == len(row["aus"]) == len(row["local_f1"])
    assert all(0 <= v <= 1 for v in row["overlap_mean"]) and all(s > 0 for s in row["scale_mean"])


def test_local_gradient_is_the_input_gradient_of_one_faces_local_logit():
    """experiments.saliency's map: |d (local logit of one AU) / d pixel| summed over channels, per face: the
    batched map equals the gradient of face 0's logit alone, which does not reach face 1's pixels."""
    import jax

    from algrnet_jax import configs
    from algrnet_jax.models.networks import create_model
    from experiments import saliency

    config = configs.get_config("jaanet", "tiny")     # the same outputs as ALGRNet, faster to compile
    model = create_model(config)
    c = config.crop_size
    x = np.random.default_rng(0).uniform(-1, 1, (2, c, c, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    grad, maps, refined, support = (np.asarray(a) for a in saliency.local_gradient(model, 1)(variables, x))
    assert grad.shape == (2, c, c) and maps.shape[:2] == (2, len(config.aus)) and (grad >= 0).all()
    assert refined.shape == support.shape == (2, c // 4, c // 4)
    np.testing.assert_array_equal(refined, np.asarray(model.apply(variables, x)["refined_au_maps"][:, 1]))
    assert set(np.unique(support)) <= {0.0, 1.0} and 0 < support.sum() < support.size

    def face0_logit(images):
        lp = model.apply(variables, images, train=False)["local_au_logprob"]
        return lp[0, 1, 1] - lp[0, 1, 0]
    ref = np.asarray(jax.jit(jax.grad(face0_logit))(x))
    assert np.abs(ref[0]).max() > 0 and np.abs(ref[1]).max() == 0
    np.testing.assert_allclose(grad[0], np.abs(ref[0]).sum(-1), rtol=1e-4, atol=1e-9)


def test_region_moves_measure_the_offsets_scales_and_cells_ada_changed():
    """experiments.region_moves: a model whose Ada output is pushed by a known offset and scale reports that
    offset length and scale, and a smaller overlap with the fixed region; Ada at its zero start reports overlap 1."""
    import jax

    from algrnet_jax import configs
    from algrnet_jax.models.networks import create_model
    from experiments import region_moves

    config = configs.get_config("wo_fr", "tiny")
    config.model.relation = "none"
    model = create_model(config)
    x = np.random.default_rng(0).uniform(-1, 1, (2, config.crop_size, config.crop_size, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    m0 = region_moves.moves(model, apply(variables))
    np.testing.assert_array_equal(m0["overlap"], 1.0)
    np.testing.assert_array_equal(m0["offset_px"], 0.0)
    np.testing.assert_allclose(m0["scale"], config.model.map_scale, rtol=1e-6)
    params = jax.tree.map(lambda p: p, variables["params"])
    bias = np.zeros(params["adaptive"]["offset_out"]["bias"].shape, np.float32)
    bias[0:2] = (6.0, 8.0)                                  # AU 0 moved by (6, 8) px: length 10
    params["adaptive"]["offset_out"]["bias"] = bias
    params["adaptive"]["scale_out"]["bias"] = np.full(params["adaptive"]["scale_out"]["bias"].shape, np.log(3.0),
                                                      np.float32)   # every scale x 3: half-width 1 -> 3 cells
    m1 = region_moves.moves(model, apply({**variables, "params": params}))
    np.testing.assert_allclose(m1["offset_px"][:, 0], 10.0, rtol=1e-5)
    np.testing.assert_allclose(m1["offset_px"][:, 1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(m1["scale"], config.model.map_scale * 3, rtol=1e-5)
    assert (m1["overlap"] < 1).all() and (m1["overlap"][:, 0] < m1["overlap"][:, 1:].min()).all()


def test_region_moves_compare_each_subjects_offset_with_its_shift():
    """experiments.region_moves on an ``ada`` set: per subject the mean learned offset against the true shift
    (cosine, projection); the generator's shift of a set is found from the run's builder config."""
    import ml_collections

    from experiments import region_moves

    shifts = {"S001": np.array([3.0, 4.0]), "S002": np.array([0.0, -2.0])}
    subjects = np.array(["S001", "S001", "S002", "S002"])
    offsets = np.array([[0.6, 0.8], [1.2, 1.6], [0.0, 1.0], [0.0, 3.0]])   # along S001's shift, against S002's
    f = region_moves.follows_subjects(offsets, subjects, shifts)
    assert [p["subject"] for p in f["subjects"]] == ["S001", "S002"]
    assert [p["cosine"] for p in f["subjects"]] == pytest.approx([1.0, -1.0])
    assert [p["projection_px"] for p in f["subjects"]] == pytest.approx([1.5, -2.0])
    assert f["cosine_mean"] == pytest.approx(0.0) and f["cosine_positive"] == 1 and f["shift_px_mean"] == 3.5
    config = ml_collections.ConfigDict({"data": {"dataset": "synth_au", "builder_config": "bp4d_tiny_ada_au12_d0.45"},
                                        "aus": [1, 2, 4, 12]})
    mech, size = region_moves.displaced(config)
    assert (mech.test, mech.au, mech.displacement, size) == ("ada", 12, 0.45, "tiny")
    shift = generator.subject_offset(mechanisms.synth_config(mech, size), 0)
    assert np.linalg.norm(shift) == pytest.approx(0.45)
    config.data.builder_config = "bp4d_tiny_sb"
    assert region_moves.displaced(config) is None


def test_offset_pull_is_the_gradient_the_offset_bias_learns_from_in_crop_pixels():
    """experiments.offset_pull with region-unit offsets: its delta moves the displaced AU's offset by delta crop
    pixels on every face (and no other AU's), its losses are the model's at that offset, and its Jacobian, times
    the unit, is the gradient those losses send to the offset MLP's bias (the gradient Ada learns from)."""
    import jax
    import jax.numpy as jnp

    from algrnet_jax import configs
    from algrnet_jax.models import networks
    from experiments import offset_pull

    config = configs.get_config("wo_fr", "tiny")
    config.model.relation = "none"
    config.model.offset_unit = "region"
    model = networks.create_model(config)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, config.crop_size, config.crop_size, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    params = jax.tree.map(lambda p: p, variables["params"])    # a non-zero offset MLP, as after training
    params["adaptive"]["offset_out"]["kernel"] = rng.normal(0, 0.01, params["adaptive"]["offset_out"]["kernel"].shape)
    variables = {**variables, "params": params}
    labels, weight = np.array([1, 0, 1, 0], np.int32), np.array([1, 1, 1, 0], np.float32)
    unit = networks.OFFSET_UNITS["region"](model.map_scale, model.map_size, model.crop_size)
    assert unit > 1.5
    # the untrained alignment puts every landmark near the crop's corner: delta moves the region inside the face
    j, delta = len(config.aus) - 1, jnp.array([config.crop_size / 2 + 0.5, config.crop_size / 2 - 1.0])
    values, jac = offset_pull.pull_fn(model, j, unit)(delta, variables, images, labels, weight)
    assert np.abs(np.asarray(jac)).min() > 0                         # small at init, yet every entry non-zero

    def with_bias(bias):
        p = jax.tree.map(lambda x: x, params)
        p["adaptive"]["offset_out"]["bias"] = bias
        return {**variables, "params": p}

    def losses(bias):
        out = model.apply(with_bias(bias), images, train=False)
        nll = -jnp.take_along_axis(out["local_au_logprob"][:, j], labels[:, None], axis=1)[:, 0]
        return jnp.stack([jnp.sum(nll * weight), jnp.sum(nll * weight * labels)])

    bias0 = params["adaptive"]["offset_out"]["bias"]
    bias = bias0.at[2 * j:2 * j + 2].add(delta / unit)
    offsets = jax.jit(lambda b: model.apply(with_bias(b), images, train=False)["offsets"])
    moved = np.asarray(offsets(bias)) - np.asarray(offsets(bias0))      # [B, n, 2] crop pixels
    np.testing.assert_allclose(moved[:, j], np.broadcast_to(delta, moved[:, j].shape), rtol=1e-5)
    np.testing.assert_allclose(np.delete(moved, j, axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(values)[:2], losses(bias), rtol=1e-5)
    grad = jax.jit(jax.jacrev(losses))(bias)[:, 2 * j:2 * j + 2]
    np.testing.assert_allclose(np.asarray(jac) * unit, grad, rtol=1e-3)


def test_offset_pull_per_subject_sums_real_known_frames_and_compares_with_the_shift(tmp_path, monkeypatch):
    """experiments.offset_pull.subject_pull with a stand-in loss that falls along (3, 4): the pull is minus the
    gradient per frame (padding and unknown labels left out), its cosine with the shift 1, the loss along the
    shift falls, the present frames' probability is averaged over them and plotted; a model that is not Ada on an ada set
    is refused before any work."""
    from experiments import offset_pull
    shift = np.array([3.0, 4.0], np.float32)
    u = shift / 5.0

    def fn(delta, variables, images, labels, weight, jacobian):
        w, present = float(np.sum(weight)), float(np.sum(weight * labels))
        along = float(np.asarray(delta) @ u)
        values = np.array([w * (1.0 - 0.1 * along), present * (1.0 - 0.1 * along), 0.5 * present])
        assert jacobian == (along == 0.0)                       # asked for at the region only
        return values, -0.1 * np.stack([w * u, present * u]) if jacobian else None

    labels = np.array([[1], [0], [-1], [1], [0]])               # frame 2: unknown
    data = {"image": np.zeros((5, 2, 2, 3), np.float32), "labels": labels}
    r = offset_pull.subject_pull(fn, None, data, 0, shift, batch=2)     # 3 batches, the last padded
    assert (r["frames"], r["present"]) == (4, 2)
    np.testing.assert_allclose(r["pull"], 0.1 * u, rtol=1e-6)
    np.testing.assert_allclose(r["pull_present"], 0.1 * u, rtol=1e-6)
    assert r["cosine"] == pytest.approx(1.0) and r["cosine_present"] == pytest.approx(1.0)
    np.testing.assert_allclose(r["loss_along"], [1.0 - 0.1 * 5 * t for t in offset_pull.ALONG], rtol=1e-6)
    assert r["present_prob_along"] == pytest.approx([0.5] * len(offset_pull.ALONG))
    rows = [{"run": "r", "step": step, "au": 12, "part": "train", "subjects": [{"subject": "S001", **r}],
             "cosine_mean": r["cosine"], "loss_along_mean": r["loss_along"]} for step in (224, 448)]
    offset_pull.plot(rows, tmp_path / "pull.png")
    assert (tmp_path / "pull.png").stat().st_size > 1000
    import ml_collections
    config = ml_collections.ConfigDict({"data": {"dataset": "synth_au", "builder_config": "bp4d_tiny_sb"},
                                        "aus": [1, 2, 4, 12], "model": {"adaptive": True}})
    monkeypatch.setattr(offset_pull.checkpoints, "load_for_inference", lambda path: (config, None))
    with pytest.raises(offset_pull.UserError, match="not an Ada model of an ada mechanism set"):
        offset_pull.run_pull("ckpt", "test")
