"""Metrics agree with scikit-learn, exclude unknown labels and padding, and stream over batches."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from algrnet_jax import metrics


def _random_batch(rng, b, n, unknown_rate=0.2):
    prob = rng.uniform(size=[b, n]).astype(np.float32)
    labels = (rng.uniform(size=[b, n]) < 0.4).astype(np.int32)
    labels[rng.uniform(size=[b, n]) < unknown_rate] = -1
    return prob, labels


def test_au_f1_and_accuracy_match_sklearn_with_unknown_labels_and_padding():
    rng = np.random.default_rng(0)
    n, acc = 5, metrics.AUMetrics(5)
    all_prob, all_labels = [], []
    for b in (7, 16, 3):
        prob, labels = _random_batch(rng, b, n)
        mask = np.ones([b], np.float32)
        mask[-2:] = 0  # padded tail: its (random) labels must not count
        acc.update(prob, labels, mask)
        all_prob.append(prob[:-2])
        all_labels.append(labels[:-2])
    prob, labels = np.concatenate(all_prob), np.concatenate(all_labels)
    for i in range(n):
        known = labels[:, i] >= 0
        y, p = labels[known, i], (prob[known, i] >= 0.5).astype(int)
        assert acc.f1()[i] == pytest.approx(f1_score(y, p, zero_division=0.0))
        assert acc.accuracy()[i] == pytest.approx(accuracy_score(y, p))
    assert acc.tp.sum() + acc.fp.sum() + acc.fn.sum() + acc.tn.sum() == np.sum(labels >= 0)


def test_au_f1_is_zero_without_positives_or_predictions_like_sklearn():
    acc = metrics.AUMetrics(2)
    acc.update(np.array([[0.1, 0.9], [0.2, 0.8]]), np.array([[0, 0], [0, 0]]))
    np.testing.assert_allclose(acc.f1(), [0.0, 0.0])
    np.testing.assert_allclose(acc.accuracy(), [1.0, 0.0])


def test_au_metrics_reject_wrong_shapes():
    acc = metrics.AUMetrics(3)
    with pytest.raises(ValueError, match="expected prob and labels"):
        acc.update(np.zeros([2, 4]), np.zeros([2, 4]))
    with pytest.raises(ValueError, match="mask must have shape"):
        acc.update(np.zeros([2, 3]), np.zeros([2, 3]), np.ones([3]))


def test_pooled_fold_f1_equals_f1_of_concatenated_predictions():
    rng = np.random.default_rng(1)
    folds, all_p, all_y = [], [], []
    for _ in range(3):
        prob, labels = _random_batch(rng, 40, 4, unknown_rate=0.0)
        acc = metrics.AUMetrics(4)
        acc.update(prob, labels)
        folds.append(acc)
        all_p.append(prob >= 0.5)
        all_y.append(labels)
    agg = metrics.aggregate_folds([f.f1() for f in folds], [f.counts() for f in folds])
    np.testing.assert_allclose(agg["mean_f1_per_au"], np.mean([f.f1() for f in folds], axis=0))
    p, y = np.concatenate(all_p), np.concatenate(all_y)
    expected = f1_score(y, p.astype(int), average=None)
    np.testing.assert_allclose(agg["pooled_f1_per_au"], expected)
    assert agg["pooled_mean_f1"] == pytest.approx(expected.mean())
    assert agg["mean_f1"] == pytest.approx(np.mean([f.f1() for f in folds]))


def test_landmark_error_is_mean_point_distance_over_interocular_and_counts_failures():
    gt = np.zeros([3, 49, 2], np.float32)
    pred = gt.copy()
    pred[0, :, 0] += 3.0            # every point 3 px off, d_o 60 -> 5%
    pred[1, :, 1] += 4.0            # 4 px off, d_o 20 -> 20% (failure)
    pred[2, :, :] += 100.0          # padded frame: ignored
    lm = metrics.LandmarkMetrics()
    lm.update(pred, gt, np.array([60.0, 20.0, 0.0]), mask=np.array([1.0, 1.0, 0.0]))
    assert lm.mean_error() == pytest.approx((0.05 + 0.20) / 2)
    assert lm.failure_rate() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="inter-ocular distance must be positive"):
        lm.update(pred, gt, np.array([60.0, 0.0, 1.0]))


def test_grade_f1_is_one_vs_rest_like_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=50)
    scores = rng.normal(size=[50, 4])
    mask = (rng.uniform(size=50) < 0.8).astype(np.float32)
    gm = metrics.GradeMetrics(4)
    gm.update(scores[:20], labels[:20], mask[:20])
    gm.update(scores[20:], labels[20:], mask[20:])
    keep = mask > 0
    expected = f1_score(labels[keep], scores[keep].argmax(-1), labels=[0, 1, 2, 3], average=None, zero_division=0.0)
    np.testing.assert_allclose(gm.f1(), expected)
    assert gm.accuracy() == pytest.approx(accuracy_score(labels[keep], scores[keep].argmax(-1)))
