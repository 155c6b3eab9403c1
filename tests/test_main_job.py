"""Experiment runners: paper configs, cross-validation aggregation, ablation tables, report, main job."""
import argparse
import json

import numpy as np
import pytest

from algrnet_jax import configs, metrics, reporting
from algrnet_jax.errors import UserError
from experiments import ablation, cross_validation, paper_configs, report


def test_paper_configs_match_the_papers_training_block():
    for dataset, n in (("bp4d", 12), ("disfa", 8)):
        config = paper_configs.paper_config(dataset, "algrnet", fold=2)
        assert paper_configs.paper_differences(config) == []
        assert len(config.aus) == n and config.data.dataset == dataset and config.data.fold == 2
        assert (config.crop_size, config.data.batch_size, config.train.num_epochs) == (176, 8, 20)
    config = configs.apply_overrides(paper_configs.paper_config("bp4d"), ["train.num_epochs=3", "aus=[1, 2]"])
    assert config.aus == (1, 2)
    assert paper_configs.paper_differences(config) == ["epochs: ours 3, paper 20"]
    with pytest.raises(ValueError, match="paper settings exist"):
        paper_configs.paper_config("fpara")
    with pytest.raises(ValueError, match="not an AU model"):
        paper_configs.paper_config("bp4d", "algrnet_paralysis")


def _fold_result(rng, fold, aus=("AU1", "AU2", "AU4")):
    preds = {}
    for key in ("local", "integrated", "final", "all_present"):
        acc = metrics.AUMetrics(len(aus))
        labels = rng.integers(0, 2, size=[30, len(aus)])
        acc.update(rng.uniform(size=[30, len(aus)]) if key != "all_present" else np.ones([30, len(aus)]), labels)
        f1 = acc.f1()
        preds[key] = {"f1": list(100 * f1), "accuracy": list(100 * acc.accuracy()), "mean_f1": 100 * f1.mean(),
                      "mean_accuracy": 0.0, "counts": acc.counts()}
    return {"task": "au", "dataset": "synth_au", "builder_config": "bp4d_small", "label_set": "bp4d", "fold": fold,
            "frames": 30, "aus": list(aus), "model": "algrnet", "predictions": preds,
            "mean_f1": preds["final"]["mean_f1"],
            "landmarks": {"mean_error_pct": 3.0 + fold, "failure_rate_pct": float(fold)}}


def test_cross_validation_aggregates_mean_over_folds_and_pooled_f1():
    rng = np.random.default_rng(0)
    results = [_fold_result(rng, k) for k in (1, 2, 3)]
    agg = cross_validation.aggregate(results)
    final = agg["predictions"]["final"]
    np.testing.assert_allclose(final["mean_f1_per_au"], np.mean([r["predictions"]["final"]["f1"] for r in results], 0))
    pooled = metrics.AUMetrics.from_counts(results[0]["predictions"]["final"]["counts"])
    for r in results[1:]:
        pooled = pooled.merge(metrics.AUMetrics.from_counts(r["predictions"]["final"]["counts"]))
    np.testing.assert_allclose(final["pooled_f1_per_au"], 100 * pooled.f1())
    assert agg["mean_f1"] == pytest.approx(np.mean([r["mean_f1"] for r in results]))
    assert agg["landmarks"]["mean_error_pct"] == pytest.approx(5.0)
    md = "\n".join(reporting.markdown_table(t) for t in cross_validation.cv_tables(results, agg))
    for row in ("ours fold 1 (final)", "ours mean of folds (final)", "ours pooled (final)",
                "all-present baseline", "ALGRNet (paper)", "JAA-Net (IJCV) (paper)"):
        assert row in md
    json.dumps(agg)
    with pytest.raises(ValueError, match="disagree on the AU list"):
        cross_validation.aggregate([results[0], _fold_result(rng, 2, aus=("AU1", "AU2", "AU12"))])


def test_ablation_table_has_one_row_per_variant_beside_the_papers():
    rng = np.random.default_rng(1)
    aggs = {name: cross_validation.aggregate([_fold_result(rng, 1)]) for name in ("wo_full", "algrnet")}
    (table,) = ablation.ablation_table(aggs)
    md = reporting.markdown_table(table)
    assert "Table VI" in md and "| ours w/o full |" in md and "| ours ALGRNet |" in md
    assert "| w/o F&R (paper) | 50.1 |" not in md and "| w/o full (paper) | 50.1 | 47.1 | 54.3 |" in md
    assert list(ablation.VARIANTS) == ["wo_full", "wo_fr", "wo_sb", "w_bi", "wo_ada", "algrnet"]
    assert list(ablation.CHOICES) == ["jaanet", *ablation.VARIANTS]    # the baseline first, then the paper's rows


def test_paired_differences_are_per_seed_with_a_t_interval():
    """Variant minus base, seed by seed (only the seeds both have), mean, 95% t interval, wins; the Markdown table
    lists them against the first variant and against w/o full."""
    def agg(f1s):
        return {"seeds": {str(s): {"predictions": {"final": {"mean_f1": v}}} for s, v in f1s.items()},
                "folds": [1], "dataset": "synth_au", "builder_config": "x", "selection": "val_best"}

    aggs = {"jaanet": agg({0: 60.0, 1: 70.0, 2: 50.0, 3: 65.0}), "wo_full": agg({0: 62.0, 1: 71.0, 2: 55.0}),
            "algrnet": agg({0: 61.0, 1: 73.0, 2: 50.0})}
    p = ablation.paired_differences(aggs, "jaanet")
    assert "jaanet" not in p and p["wo_full"]["seeds"] == ["0", "1", "2"]
    assert p["wo_full"]["diffs"] == [2.0, 1.0, 5.0] and p["wo_full"]["wins"] == 3
    half = 4.302653 * np.std([2.0, 1.0, 5.0], ddof=1) / np.sqrt(3)          # t(0.975, 2 dof)
    np.testing.assert_allclose(p["wo_full"]["ci95"], [8 / 3 - half, 8 / 3 + half], rtol=1e-6)
    assert ablation.paired_differences(aggs, "wo_full")["algrnet"]["diffs"] == [-1.0, 2.0, -5.0]
    md = ablation.paired_markdown(aggs)
    assert "| w/o full | +2.7 [" in md and "| 3/3 |  |  | +2.0, +1.0, +5.0 |" in md
    assert "| ALGRNet | +1.3 [" in md and "| 2/3 | -1.3 [" in md and "| 1/3 |" in md


def test_report_writes_curves_bars_and_attention_maps(tmp_path):
    rng = np.random.default_rng(2)
    result = _fold_result(rng, 1)
    lines = [{"step": s, "epoch": 0, "kind": "train", "loss": 3.0 / s, "loss_au": 1.0 / s, "lr": 0.01} for s in (1, 2, 3)]
    lines.append({"step": 3, "epoch": 1, "kind": "eval", "mean_f1": 40.0, "landmarks/mean_error_pct": 5.0})  # old runs
    lines += [{"step": 3, "epoch": 1, "kind": part, "mean_f1": f1, "final_mean_f1": f1} for part, f1 in (("val", 45.0),
                                                                                                      ("test", 41.0))]
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    images = rng.uniform(-1, 1, size=[2, 32, 32, 3]).astype(np.float32)
    outputs = {"landmarks": rng.uniform(0, 32, size=[2, 49, 2]), "initial_au_maps": rng.uniform(size=[2, 3, 16, 16]),
               "refined_au_maps": rng.uniform(size=[2, 3, 8, 8]), "final_au_prob": rng.uniform(size=[2, 3])}
    path = report.write_report(tmp_path / "rep", result, metrics_jsonl=jsonl,
                               attention=(images, outputs, np.ones([2, 3], int)), summary={"model": "test"})
    text = path.read_text()
    for png in ("curves.png", "f1_bars.png", "attention_maps.png"):
        assert f"]({png})" in text
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG"
    assert "all-present predictor" in text and "ALGRNet (paper)" in text
    assert report.plot_curves(lines, tmp_path / "c.png") == ["loss", "loss_au", "lr", "mean_f1", "final_mean_f1"]
    jsonl.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        report.read_metrics_jsonl(jsonl)


def test_main_job_quick_runs_end_to_end(tmp_path):
    from experiments import main_job

    args = main_job.build_parser().parse_args(
        ["--quick", "--quiet", "--workdir", str(tmp_path / "job"), "--data-dir", str(tmp_path / "tfds")])
    result = main_job.run(args)
    assert result["frames"] > 0 and len(result["aus"]) == len(result["predictions"]["final"]["f1"])
    rep = tmp_path / "job" / "report"
    for name in ("report.md", "curves.png", "f1_bars.png", "attention_maps.png", "eval.json", "eval.md"):
        assert (rep / name).exists(), name
    assert json.loads((rep / "eval.json").read_text())["predictions"]["all_present"]["mean_f1"] > 0

    # `algrnet eval` on the job's training directory (its LAST checkpoint) writes the same kind of result.
    import argparse

    from algrnet_jax.commands import evaluate as eval_command

    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    out = tmp_path / "eval"
    assert eval_command.run(parser.parse_args(["--checkpoint", str(tmp_path / "job" / "train"), "--out", str(out)])) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["frames"] == result["frames"] and evaluated["fold"] == 1
    assert evaluated["checkpoint"] == result["checkpoint"] and result["selection"] == "last"
    # One road: the job's evaluation is evaluation.evaluate_checkpoint's, as the command's (same checks, same keys).
    assert result["trained_on"] == evaluated["trained_on"] and result["warnings"] == evaluated["warnings"] == []
    assert evaluated["mean_f1"] == pytest.approx(result["mean_f1"])
    assert "ours (final)" in (out / "eval.md").read_text()
    # --best: the checkpoint kept for the best VALIDATION mean F1.
    train_summary = json.loads((rep / "train_summary.json").read_text())
    assert eval_command.run(parser.parse_args(["--checkpoint", str(tmp_path / "job" / "train"), "--best",
                                               "--out", str(out)])) == 0
    assert json.loads((out / "eval.json").read_text())["checkpoint"] == train_summary["best_checkpoint"]


def test_ablation_runner_cross_validates_each_variant_and_seed_end_to_end(tmp_path):
    """experiments.ablation -> experiments.cross_validation -> train + evaluate, tiny size, 2 seeds, 2 steps each."""
    from data_pipelines import builders

    data_dir = str(tmp_path / "tfds")
    builders.get_builder("synth_au", "bp4d_tiny", data_dir).download_and_prepare()
    work = tmp_path / "abl"
    assert ablation.main(["--size", "tiny", "--builder-config", "bp4d_tiny", "--data-dir", data_dir,
                          "--workdir", str(work), "--variants", "wo_full", "--folds", "1", "--seeds", "0", "1",
                          "--set", "train.max_steps=2", "--set", "train.num_epochs=1",
                          "--set", "data.batch_size=4", "--set", "train.log_every_steps=1",
                          "--select", "val_best"]) == 0
    f1s = []
    for seed in (0, 1):
        run = work / "wo_full" / f"seed{seed}"
        cv = json.loads((run / "cv.json").read_text())
        assert [f["fold"] for f in cv["folds"]] == [1]
        assert cv["aggregate"]["selection"] == "val_best" and all(f["selection"] == "val_best" for f in cv["folds"])
        assert "validation-best checkpoint" in (run / "cv.md").read_text()
        assert (run / "fold1" / "eval.json").exists()
        saved = json.loads((run / "fold1" / "config.json").read_text())
        assert saved["train"]["seed"] == seed and saved["data"]["shuffle_seed"] == seed
        f1s.append(cv["aggregate"]["mean_f1"])
    md = (work / "ablation.md").read_text()
    assert "| ours w/o full |" in md and "mean of 2 seeds" in md
    assert f"| w/o full | {np.mean(f1s):.1f} +- {np.std(f1s, ddof=1):.1f} |" in md
    agg = json.loads((work / "ablation.json").read_text())["wo_full"]
    assert agg["mean_f1"] == pytest.approx(np.mean(f1s)) and agg["std_f1"] == pytest.approx(np.std(f1s, ddof=1))
    assert sorted(agg["seeds"]) == ["0", "1"] and agg["seconds"] > 0
    assert (work / "ablation.png").read_bytes()[:4] == b"\x89PNG"

    # --merge: the two seeds from two files (as if run at different times) give the same report
    for seed in ("0", "1"):
        one = {"wo_full": {**agg, "seeds": {seed: agg["seeds"][seed]}}}
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(one))
    merged = tmp_path / "merged"
    assert ablation.main(["--merge", str(tmp_path / "seed0.json"), f"{tmp_path / 'seed1.json'}:wo_full",
                          "--workdir", str(merged)]) == 0
    again = json.loads((merged / "ablation.json").read_text())["wo_full"]
    assert again["mean_f1"] == pytest.approx(agg["mean_f1"]) and again["std_f1"] == pytest.approx(agg["std_f1"])
    assert f"| w/o full | {np.mean(f1s):.1f} +- {np.std(f1s, ddof=1):.1f} |" in (merged / "ablation.md").read_text()
    with pytest.raises(UserError, match="seed 0 of wo_full is already"):
        ablation.main(["--merge", str(tmp_path / "seed0.json"), str(tmp_path / "seed0.json"), "--workdir",
                       str(merged)])
    with pytest.raises(UserError, match="no variant 'algrnet'"):
        ablation.main(["--merge", f"{tmp_path / 'seed0.json'}:algrnet", "--workdir", str(merged)])


def test_runner_configs_default_to_the_datasets_builder_config():
    parser = argparse.ArgumentParser()
    cross_validation.add_config_arguments(parser)
    config = cross_validation.config_from_args(parser.parse_args(["--dataset", "bp4d"]))
    assert (config.data.dataset, config.data.builder_config) == ("bp4d", "default")
    config = cross_validation.config_from_args(parser.parse_args(["--label-set", "disfa"]))
    assert (config.data.dataset, config.data.builder_config) == ("synth_au", "disfa_small")
    config = cross_validation.config_from_args(parser.parse_args(["--builder-config", "bp4d_tiny"]))
    assert config.data.builder_config == "bp4d_tiny"
