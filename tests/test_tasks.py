"""The task objects (algrnet_jax/tasks.py): registry, label spec, loss weights, heads, metrics."""
from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import au_sets, losses, metrics, tasks
from algrnet_jax.configs import get_config


def test_registry_and_names():
    au, grading = get_config("algrnet", "tiny"), get_config("algrnet_paralysis", "tiny")
    assert tasks.get_task(au) is tasks.get_task("au") and tasks.get_task(grading).name == "paralysis"
    assert tasks.get_task(au).class_names(au) == ["AU01", "AU04", "AU12"]
    assert tasks.get_task(au).result_classes(au) == ["AU1", "AU4", "AU12"]
    assert tasks.get_task(grading).class_names(grading) == list(au_sets.GRADES)
    assert (tasks.get_task(au).num_outputs(au), tasks.get_task(grading).num_outputs(grading)) == (3, 12)
    assert tasks.get_task(au).prob_key == "final_au_prob" and tasks.get_task(grading).prob_key == "final_grade_prob"
    for task in tasks.TASKS.values():
        assert task.loss in losses.HEAD_LOSSES and set(task.logprob_keys) <= set(task.output_keys)
        assert {p.output for p in task.predictions} <= set(task.output_keys)
    with pytest.raises(ValueError, match="must be one of au, paralysis, got 'x'"):
        tasks.get_task("x")
    assert tasks.task_for_label_set("disfa").name == "au"
    assert tasks.task_for_label_set("paralysis").name == "paralysis"
    assert tasks.label_sets() == ("bp4d", "disfa", "paralysis")
    assert tasks.get_task("au").paper_table("bp4d")[1] == "Table II"
    assert tasks.prediction_keys(tasks.get_task("au"))[-1] == tasks.TRIVIAL


def test_check_labels():
    au, grading = get_config("algrnet", "tiny"), get_config("algrnet_paralysis", "tiny")
    tasks.get_task(au).check_labels(np.array([[1, 0, -1]]), au)
    tasks.get_task(grading).check_labels(np.array([0, 3, -1]), grading)
    with pytest.raises(ValueError, match=r"batch: labels \[1, 2\] do not match .*\[B, 3\]"):
        tasks.get_task(au).check_labels(np.array([[1, 0]]), au)
    with pytest.raises(ValueError, match=r"label values \[2\] outside"):
        tasks.get_task(au).check_labels(np.array([[1, 0, 2]]), au)
    with pytest.raises(ValueError, match=r"label values \[4\] outside"):
        tasks.get_task(grading).check_labels(np.array([4]), grading)


def test_label_columns_and_loss_weights():
    au, grading = get_config("algrnet", "tiny"), get_config("algrnet_paralysis", "tiny")
    cols = tasks.get_task(au).label_columns(au, "bp4d")
    np.testing.assert_array_equal(cols, [0, 2, 6])            # AU1, AU4, AU12 of the BP4D order
    with pytest.raises(ValueError, match="AUs \\[7\\] that label set 'disfa'"):
        tasks.get_task(au).label_columns(_with_aus(au, (1, 7)), "disfa")
    labels = np.array([[1, 0, 1] + [0] * 9, [0, -1, 1] + [0] * 9, [1, 0, 0] + [0] * 9, [0, 0, 0] + [1] * 9])
    counts = tasks.get_task(au).count_labels(labels)
    np.testing.assert_array_equal(counts["positives"][:3], [2, 0, 2])
    np.testing.assert_array_equal(counts["labelled"][:3], [4, 3, 4])
    warned = []
    w = tasks.get_task(au).loss_weights(counts, cols, warned.append)
    assert w.dtype == np.float32 and w.shape == (3,) and np.isclose(w.sum(), 3.0)
    assert not warned
    w = tasks.get_task(au).loss_weights(counts, np.array([0, 1]), warned.append)   # AU2 has no positive
    assert w[1] == w.max() and len(warned) == 1 and "zero rates at [1]" in warned[0]
    g = tasks.get_task(grading)
    assert g.label_columns(grading, "paralysis") is None
    counts = g.count_labels(np.array([[0], [0], [1], [3]], np.int8))
    np.testing.assert_array_equal(counts["grades"], [2, 1, 0, 1])
    w = g.loss_weights(counts, None)
    assert np.isclose(w.sum(), 4.0) and w[0] < w[1] and w[2] == w.max()


def _with_aus(config, aus):
    c = config.copy_and_resolve_references()
    c.aus = tuple(aus)
    return c


def test_head_outputs_shapes_and_values():
    b, n = 2, 3
    logits = jnp.arange(b * 2 * n, dtype=jnp.float32).reshape(b, 2 * n) / 10
    local = jnp.ones((n, b, 2))
    out = tasks.get_task("au").head_outputs(logits, local, final_mean=True)
    assert out["au_logprob"].shape == (b, n, 2) and out["final_au_prob"].shape == (b, n)
    # PyTorch layout: logits viewed as [B, 2, n], softmax over the 2
    ref = np.exp(np.asarray(logits).reshape(b, 2, n)[:, 1]) / np.exp(np.asarray(logits).reshape(b, 2, n)).sum(1)
    np.testing.assert_allclose(out["au_prob"], ref, rtol=1e-6)
    np.testing.assert_allclose(out["final_au_prob"], (ref + 0.5) / 2, rtol=1e-6)
    assert np.allclose(tasks.get_task("au").head_outputs(logits, local, final_mean=False)["final_au_prob"], ref)
    out = tasks.get_task("paralysis").head_outputs(jnp.zeros((b, 4)), jnp.zeros((12, b, 4)), final_mean=True)
    assert set(out) == set(tasks.get_task("paralysis").output_keys)
    np.testing.assert_allclose(out["final_grade_prob"], 0.25)


def test_task_metrics_summaries():
    au = get_config("algrnet", "tiny")
    task = tasks.get_task(au)
    acc = task.new_metrics(au)
    prob = np.array([[0.9, 0.1, 0.6], [0.2, 0.8, 0.4]])
    labels = np.array([[1, 0, 1], [0, -1, 1]])
    acc.update({"local_au_prob": prob, "au_prob": prob, "final_au_prob": prob}, labels, np.array([1, 1]))
    res = task.summarize(au, acc)
    assert res["aus"] == ["AU1", "AU4", "AU12"] and set(res["predictions"]) == {"local", "integrated", "final",
                                                                                 tasks.TRIVIAL}
    ref = metrics.AUMetrics(3)
    ref.update(prob, labels)
    assert res["mean_f1"] == pytest.approx(100 * ref.f1().mean())
    with pytest.raises(ValueError, match="do not match the model's AU output"):
        acc.update({"local_au_prob": prob[:, :2]}, labels)
    grading = get_config("algrnet_paralysis", "tiny")
    gacc = tasks.get_task(grading).new_metrics(grading)
    gacc.update({"grade_logprob": np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))},
                np.array([0, 2]), None)
    res = tasks.get_task(grading).summarize(grading, gacc)
    assert set(res["predictions"]) == {"integrated"} and res["grades"] == list(au_sets.GRADES)
    assert res["mean_f1"] == res["predictions"]["integrated"]["mean_f1"]
    with pytest.raises(ValueError, match="no grade prediction"):
        tasks.get_task(grading).new_metrics(grading).summary()


def test_record_label_spec_and_rates():
    au, grading = tasks.task_for_label_set("bp4d"), tasks.task_for_label_set("paralysis")
    assert len(au.record_label_names("bp4d")) == 12 and grading.record_label_names("paralysis") == ["grade"]
    assert au.describe_record_labels("disfa").startswith("8 AU labels (AU1, AU2")
    assert au.record_label_values() == (-1, 0, 1) and grading.record_label_values() == (0, 1, 2, 3)
    assert au.label_set_classes("disfa")[-1] == "AU26" and grading.label_set_classes("paralysis") == list(au_sets.GRADES)
    rates = au.rates({"positives": np.array([1, 0, 0]), "labelled": np.array([4, 2, 0])})
    np.testing.assert_allclose(rates[:2], [0.25, 0.0])
    assert np.isnan(rates[2])
    np.testing.assert_allclose(grading.rates({"grades": np.array([1, 1, 2, 0])}), [0.25, 0.25, 0.5, 0.0])
    np.testing.assert_array_equal(grading.count_labels(np.zeros((0, 1), np.int64))["grades"], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="unknown label set 'ck'; choose from bp4d, disfa, paralysis"):
        tasks.task_for_label_set("ck")
