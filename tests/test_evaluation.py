"""The evaluator: streaming metrics over padded batches, one trace, tables beside the paper's."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import evaluation, metrics, reporting
from algrnet_jax.configs import get_config

B, N = 4, 3  # tiny config: AUs (1, 4, 12)


def _batches(rng, num_batches=3, last_real=2, crop=32):
    """Padded eval batches (docs/design.md); the last batch has only ``last_real`` real frames."""
    out = []
    for i in range(num_batches):
        real = B if i < num_batches - 1 else last_real
        labels = rng.integers(0, 2, size=[B, N]).astype(np.int32)
        labels[rng.uniform(size=[B, N]) < 0.2] = -1
        mask = (np.arange(B) < real).astype(np.float32)
        lm = rng.uniform(0, crop, size=[B, 49, 2]).astype(np.float32)
        out.append({"image": rng.uniform(-1, 1, size=[B, crop, crop, 3]).astype(np.float32),
                    "landmarks": lm, "interocular": np.where(mask > 0, 10.0, 0.0).astype(np.float32),
                    "labels": labels, "mask": mask})
    return out


@dataclasses.dataclass(frozen=True)
class _FakeModel:
    """Deterministic stand-in with the model's output contract; counts traces of ``apply``."""
    key: str
    traces: list = dataclasses.field(default_factory=list, hash=False, compare=False)

    def apply(self, variables, images, train):
        assert train is False
        self.traces.append(images.shape)
        b = images.shape[0]
        feat = images.mean(axis=(1, 2))                      # [B, 3] in [-1, 1]
        local = 0.5 + 0.5 * feat * variables["params"]["w"]  # [B, 3]
        integrated = 1.0 - local
        return {"local_au_prob": local, "au_prob": integrated, "final_au_prob": (local + integrated) / 2 + 0.1,
                "landmarks": jnp.ones([b, 49, 2]) * variables["params"]["w"][0], "other": jnp.zeros([b])}


def _expected(batches, fn):
    acc = metrics.AUMetrics(N)
    for b in batches:
        acc.update(fn(b), b["labels"], b["mask"])
    return acc


def test_evaluate_reports_local_integrated_final_and_trivial_with_padding_excluded_and_one_trace():
    config = get_config("algrnet", size="tiny")
    rng = np.random.default_rng(0)
    batches = _batches(rng)
    # Padding with labels 1 and huge landmark errors must not change anything.
    batches[-1]["labels"][2:] = 1
    model = _FakeModel("one-trace")
    step = evaluation.eval_forward(model)
    variables = {"params": {"w": jnp.array([1.0, -2.0, 3.0])}}
    result = evaluation.evaluate_variables(config, variables, batches=batches, apply_fn=step)
    result2 = evaluation.evaluate_variables(config, variables, batches=batches, apply_fn=step)
    assert len(model.traces) == 1, "eval step must be traced once for padded, fixed-size batches"
    assert result == result2

    w = np.array([1.0, -2.0, 3.0])
    local = lambda b: 0.5 + 0.5 * b["image"].mean(axis=(1, 2)) * w
    for key, fn in (("local", local), ("integrated", lambda b: 1 - local(b)),
                    ("final", lambda b: np.full([B, N], 0.6)), ("all_present", lambda b: np.ones([B, N]))):
        exp = _expected(batches, fn)
        np.testing.assert_allclose(result["predictions"][key]["f1"], 100 * exp.f1(), rtol=1e-6)
        np.testing.assert_allclose(result["predictions"][key]["accuracy"], 100 * exp.accuracy(), rtol=1e-6)
    assert result["mean_f1"] == pytest.approx(result["predictions"]["final"]["mean_f1"])
    # final = 0.6 everywhere: predicts all present, so it equals the trivial predictor here.
    assert result["predictions"]["final"]["f1"] == result["predictions"]["all_present"]["f1"]
    assert result["frames"] == 2 * B + 2
    lm = metrics.LandmarkMetrics()
    for b in batches:
        lm.update(np.ones([B, 49, 2]), b["landmarks"], np.where(b["mask"] > 0, b["interocular"], 1.0), b["mask"])
    assert result["landmarks"]["mean_error_pct"] == pytest.approx(100 * lm.mean_error(), rel=1e-5)
    assert result["landmarks"]["failure_rate_pct"] == pytest.approx(100 * lm.failure_rate())
    json.dumps(result)  # serialisable


def test_evaluate_rejects_label_shape_mismatch():
    config = get_config("algrnet", size="tiny")
    batches = _batches(np.random.default_rng(1), num_batches=1)
    batches[0]["labels"] = np.zeros([B, N + 1], np.int32)
    step = evaluation.eval_forward(_FakeModel("mismatch"))
    with pytest.raises(ValueError, match="do not match the model's AU outputs"):
        evaluation.evaluate_variables(config, {"params": {"w": jnp.ones([3])}}, batches=batches, apply_fn=step)


def test_paralysis_evaluation_reports_grade_f1():
    config = get_config("algrnet_paralysis", size="tiny")
    rng = np.random.default_rng(2)
    logp = np.log(rng.dirichlet(np.ones(4), size=[2, B]))
    grades = rng.integers(0, 4, size=[2, B]).astype(np.int32)
    batches = [{"image": np.full([B, 1], float(i)), "landmarks": np.zeros([B, 49, 2]), "interocular": np.ones([B]),
                "labels": grades[i], "mask": np.ones([B])} for i in range(2)]
    local = np.log(rng.dirichlet(np.ones(4), size=[2, B]))
    apply_fn = lambda v, img: {"grade_logprob": logp[int(img[0, 0])], "local_grade_logprob": local[int(img[0, 0])],
                               "final_grade_prob": (np.exp(logp) + np.exp(local))[int(img[0, 0])] / 2,
                               "landmarks": np.zeros([B, 49, 2])}
    result = evaluation.evaluate_variables(config, {}, batches=batches, apply_fn=apply_fn)
    for key, scores in (("integrated", logp), ("local", local), ("final", (np.exp(logp) + np.exp(local)) / 2)):
        exp = metrics.GradeMetrics(4)
        for i in range(2):
            exp.update(scores[i], grades[i])
        np.testing.assert_allclose(result["predictions"][key]["f1"], 100 * exp.f1())
        assert result["predictions"][key]["confusion"] == exp.confusion.tolist()
    assert result["mean_f1"] == result["predictions"]["final"]["mean_f1"]
    md = reporting.result_markdown(result)
    assert "ours (local)" in md and "ours (final)" in md
    assert "ALGRNet (paper) | 100.0 | 55.9 | 72.1 | 73.2 | 75.4 |" in md


def _au_result(aus, dataset="bp4d", label_set="bp4d"):
    pred = {"f1": [50.0] * len(aus), "accuracy": [60.0] * len(aus), "mean_f1": 50.0, "mean_accuracy": 60.0}
    return {"task": "au", "dataset": dataset, "builder_config": "x", "label_set": label_set, "fold": 1,
            "frames": 10, "aus": aus, "mean_f1": 50.0,
            "predictions": {k: pred for k in ("local", "integrated", "final", "all_present")},
            "landmarks": {"mean_error_pct": 4.321, "failure_rate_pct": 1.0}}


def test_tables_show_paper_rows_and_recompute_avg_for_au_subsets(tmp_path):
    full = reporting.result_markdown(_au_result([f"AU{a}" for a in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)]))
    assert "| ALGRNet (paper) | 51.2 | 48.2 |" in full and "| 63.5 |" in full
    assert "ours (local)" in full and "ours (integrated)" in full and "ours (final)" in full
    assert "all-present baseline" in full
    assert "| ours | 4.32 |" in full and "| ALGRNet (paper) | 3.78 |" in full  # Table VII, BP4D column
    subset = reporting.result_markdown(_au_result(["AU1", "AU4"], dataset="synth_au"))
    assert f"| ALGRNet (paper) | 51.2 | 57.3 | {np.mean([51.2, 57.3]):.1f} |" in subset
    assert "not comparable" in subset
    disfa = reporting.result_markdown(_au_result(["AU9", "AU26"], dataset="disfa", label_set="disfa"))
    assert "| ALGRNet (paper) | 54.1 | 69.9 |" in disfa and "Table III" in disfa and "| 3.29 |" in disfa
    paths = reporting.write_result(_au_result(["AU1"]), tmp_path / "out")
    assert json.loads(paths["json"].read_text())["mean_f1"] == 50.0
    assert paths["markdown"].read_text().startswith("**AU F1 (%)")
    with pytest.raises(ValueError, match="has no column"):
        reporting.paper_rows("table2_bp4d_f1", ["AU9"])
