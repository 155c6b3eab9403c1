"""Evaluation metrics: AU F1 / accuracy, landmark error, paralysis grade F1, fold aggregation.

``AUTaskMetrics`` / ``GradeTaskMetrics`` (:class:`TaskMetrics`) accumulate every prediction of a task's model
outputs (``tasks.Task.new_metrics``) and summarise them as an evaluation result's ``predictions``, in percent.

Pure numpy and streaming: each accumulator takes one batch at a time (``update``) and keeps only
counts, so evaluation never holds a whole test set in memory. Unknown AU labels (-1, e.g. BP4D's
"9 = not coded") and padded examples (``mask == 0``) are excluded from every count.

All rates returned here are fractions in [0, 1]; :mod:`algrnet_jax.evaluation` reports percentages
as the paper's tables do.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AU_THRESHOLD = 0.5        # F1-frame threshold on the "present" probability (paper)
FAILURE_THRESHOLD = 0.10  # a frame fails when its mean landmark error exceeds 10% of d_o


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN), element-wise; 0 where the denominator is 0 (as scikit-learn)."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def _batch_mask(mask: np.ndarray | None, batch: int) -> np.ndarray:
    if mask is None:
        return np.ones([batch], bool)
    mask = np.asarray(mask)
    if mask.shape != (batch,):
        raise ValueError(f"mask must have shape [{batch}], got {mask.shape}")
    return mask > 0


@dataclasses.dataclass
class AUMetrics:
    """Streaming per-AU confusion counts for binary occurrence (threshold 0.5).

    Attributes are int64 arrays [n]: ``tp``, ``fp``, ``fn``, ``tn`` over labelled, unpadded frames.
    """

    num_aus: int
    threshold: float = AU_THRESHOLD
    tp: np.ndarray = dataclasses.field(init=False)
    fp: np.ndarray = dataclasses.field(init=False)
    fn: np.ndarray = dataclasses.field(init=False)
    tn: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn", "tn"):
            setattr(self, name, np.zeros([self.num_aus], np.int64))

    def update(self, prob: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds one batch.

        Args:
          prob: float [B, n], probability of "present".
          labels: int [B, n], 1 present, 0 absent, -1 unknown (excluded).
          mask: float/bool [B], 0 for padding (excluded); None = all real.
        """
        prob, labels = np.asarray(prob), np.asarray(labels)
        if prob.ndim != 2 or prob.shape[1] != self.num_aus or labels.shape != prob.shape:
            raise ValueError(f"expected prob and labels [B, {self.num_aus}], got {prob.shape} and {labels.shape}")
        valid = _batch_mask(mask, prob.shape[0])[:, None] & (labels >= 0)
        pred = prob >= self.threshold
        truth = labels == 1
        self.tp += np.sum(valid & pred & truth, axis=0)
        self.fp += np.sum(valid & pred & ~truth, axis=0)
        self.fn += np.sum(valid & ~pred & truth, axis=0)
        self.tn += np.sum(valid & ~pred & ~truth, axis=0)

    def merge(self, other: "AUMetrics") -> "AUMetrics":
        """Returns the pooled counts of two accumulators (e.g. two folds)."""
        if other.num_aus != self.num_aus:
            raise ValueError(f"cannot merge {self.num_aus} and {other.num_aus} AUs")
        out = AUMetrics(self.num_aus, self.threshold)
        for name in ("tp", "fp", "fn", "tn"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def f1(self) -> np.ndarray:
        """Per-AU F1 [n]."""
        return f1_from_counts(self.tp, self.fp, self.fn)

    def accuracy(self) -> np.ndarray:
        """Per-AU accuracy [n] over labelled frames (0 where an AU has no labelled frame)."""
        total = (self.tp + self.fp + self.fn + self.tn).astype(np.float64)
        return np.divide((self.tp + self.tn).astype(np.float64), total, out=np.zeros_like(total), where=total > 0)

    def counts(self) -> dict[str, list[int]]:
        return {name: getattr(self, name).tolist() for name in ("tp", "fp", "fn", "tn")}

    @classmethod
    def from_counts(cls, counts: Mapping[str, Sequence[int]], threshold: float = AU_THRESHOLD) -> "AUMetrics":
        """Rebuilds an accumulator from :meth:`counts` (e.g. read back from a JSON result)."""
        out = cls(len(counts["tp"]), threshold)
        for name in ("tp", "fp", "fn", "tn"):
            setattr(out, name, np.asarray(counts[name], np.int64))
        return out


@dataclasses.dataclass
class LandmarkMetrics:
    """Streaming landmark error normalised by the inter-ocular distance d_o.

    Per frame: e = mean over the 49 points of ||pred - gt||_2 / d_o; the reported error is the mean of
    e over frames, and the failure rate the fraction of frames with e > 10%.
    """

    failure_threshold: float = FAILURE_THRESHOLD
    error_sum: float = 0.0
    failures: int = 0
    frames: int = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, interocular: np.ndarray,
               mask: np.ndarray | None = None) -> None:
        """Adds one batch: pred, gt float [B, P, 2]; interocular float [B] (>0 for real frames); mask [B]."""
        pred, gt, d = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(interocular, np.float64)
        if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2 or d.shape != pred.shape[:1]:
            raise ValueError(f"expected pred, gt [B, P, 2] and interocular [B], got {pred.shape}, {gt.shape}, {d.shape}")
        keep = _batch_mask(mask, pred.shape[0])
        if np.any(d[keep] <= 0):
            raise ValueError("inter-ocular distance must be positive for every real frame")
        err = np.linalg.norm(pred[keep] - gt[keep], axis=-1).mean(axis=-1) / d[keep]
        self.error_sum += float(err.sum())
        self.failures += int(np.sum(err > self.failure_threshold))
        self.frames += int(keep.sum())

    def mean_error(self) -> float:
        """Mean normalised error (fraction of d_o); nan with no frames."""
        return self.error_sum / self.frames if self.frames else float("nan")

    def failure_rate(self) -> float:
        return self.failures / self.frames if self.frames else float("nan")


@dataclasses.dataclass
class GradeMetrics:
    """Streaming confusion matrix for the 4-way paralysis grade; per-grade one-vs-rest F1."""

    num_grades: int = 4
    confusion: np.ndarray = dataclasses.field(init=False)  # [true, predicted]

    def __post_init__(self) -> None:
        self.confusion = np.zeros([self.num_grades, self.num_grades], np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds one batch: scores float [B, G] (log-probabilities or logits; argmax is taken), labels int [B]."""
        scores, labels = np.asarray(scores), np.asarray(labels)
        if scores.ndim != 2 or scores.shape[1] != self.num_grades or labels.shape != scores.shape[:1]:
            raise ValueError(f"expected scores [B, {self.num_grades}] and labels [B], got {scores.shape}, {labels.shape}")
        keep = _batch_mask(mask, scores.shape[0]) & (labels >= 0)
        if np.any(labels[keep] >= self.num_grades):
            raise ValueError(f"grade labels must be in 0..{self.num_grades - 1}")
        np.add.at(self.confusion, (labels[keep], np.argmax(scores[keep], axis=-1)), 1)

    def f1(self) -> np.ndarray:
        """Per-grade one-vs-rest F1 [G]."""
        tp = np.diag(self.confusion)
        return f1_from_counts(tp, self.confusion.sum(0) - tp, self.confusion.sum(1) - tp)

    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")


def aggregate_folds(fold_f1: Sequence[Sequence[float]],
                    fold_counts: Sequence[Mapping[str, Sequence[int]]] | None = None) -> dict[str, np.ndarray | float]:
    """Aggregates per-AU results of several folds.

    Args:
      fold_f1: [K][n] per-AU F1 of each fold.
      fold_counts: optional [K] of ``AUMetrics.counts()`` dicts; gives the pooled F1 (counts summed
        over folds, i.e. F1 of the concatenated predictions).

    Returns:
      dict with ``mean_f1_per_au`` [n] (mean over folds), ``std_f1_per_au`` [n], ``mean_f1`` (the mean
      over AUs of ``mean_f1_per_au``), and with counts ``pooled_f1_per_au`` [n] and ``pooled_mean_f1``.
    """
    f1 = np.asarray(fold_f1, np.float64)
    if f1.ndim != 2 or f1.shape[0] == 0:
        raise ValueError(f"fold_f1 must be [K, n] with K >= 1, got shape {f1.shape}")
    out: dict[str, np.ndarray | float] = {
        "mean_f1_per_au": f1.mean(0), "std_f1_per_au": f1.std(0), "mean_f1": float(f1.mean(0).mean())}
    if fold_counts is not None:
        pooled = AUMetrics.from_counts(fold_counts[0])
        for counts in fold_counts[1:]:
            pooled = pooled.merge(AUMetrics.from_counts(counts))
        out["pooled_f1_per_au"] = pooled.f1()
        out["pooled_mean_f1"] = float(pooled.f1().mean())
    return out


# ---------------------------------------------------------------------------------- per task


class TaskMetrics(abc.ABC):
    """Streaming accumulators of all predictions of one task (one per model output that is evaluated)."""

    @abc.abstractmethod
    def update(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds one batch of model outputs (numpy, ``[B, ...]``), labels and mask [B]."""

    @abc.abstractmethod
    def summary(self) -> dict[str, Any]:
        """``{"predictions": {key: {"f1": [...], "mean_f1": ..., ...}}, "mean_f1": headline}``, in percent."""


def au_summary(acc: AUMetrics) -> dict[str, Any]:
    """Per-AU and mean F1 / accuracy of one accumulator, in percent, with its counts."""
    f1, accuracy = acc.f1(), acc.accuracy()
    return {"f1": [100 * float(v) for v in f1], "accuracy": [100 * float(v) for v in accuracy],
            "mean_f1": 100 * float(f1.mean()), "mean_accuracy": 100 * float(accuracy.mean()),
            "counts": acc.counts()}


def grade_summary(acc: GradeMetrics) -> dict[str, Any]:
    """Per-grade and mean F1, accuracy (percent) and the confusion matrix of one accumulator."""
    f1 = acc.f1()
    return {"f1": [100 * float(v) for v in f1], "mean_f1": 100 * float(f1.mean()),
            "accuracy": 100 * acc.accuracy(), "confusion": acc.confusion.tolist()}


class AUTaskMetrics(TaskMetrics):
    """AU occurrence: one :class:`AUMetrics` per (result key, probability output [B, n]), plus the
    all-present predictor (``trivial_key``) on the same frames; the headline is ``final``."""

    def __init__(self, num_aus: int, predictions: Sequence[tuple[str, str]], trivial_key: str | None = None,
                 headline: str = "final"):
        self.num_aus, self.predictions, self.trivial_key, self.headline = num_aus, tuple(predictions), trivial_key, headline
        keys = [k for k, _ in self.predictions] + ([trivial_key] if trivial_key else [])
        self.acc = {k: AUMetrics(num_aus) for k in keys}

    def update(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        labels = np.asarray(labels)
        for key, output in self.predictions:
            prob = np.asarray(outputs[output])
            if labels.shape != prob.shape:
                raise ValueError(f"batch labels {labels.shape} do not match the model's AU outputs ({output} "
                                 f"{prob.shape}, {self.num_aus} AUs)")
            self.acc[key].update(prob, labels, mask)
        if self.trivial_key:
            self.acc[self.trivial_key].update(np.ones(labels.shape, np.float32), labels, mask)

    def summary(self) -> dict[str, Any]:
        predictions = {key: au_summary(acc) for key, acc in self.acc.items()}
        return {"predictions": predictions, "mean_f1": predictions[self.headline]["mean_f1"]}


class GradeTaskMetrics(TaskMetrics):
    """Grading: one :class:`GradeMetrics` per (result key, score output [B, G]); outputs a model lacks are
    skipped; the headline is the first of ``headline`` that was evaluated."""

    def __init__(self, num_grades: int, predictions: Sequence[tuple[str, str]],
                 headline: Sequence[str] = ("final",)):
        self.predictions, self.headline = tuple(predictions), tuple(headline)
        self.acc = {k: GradeMetrics(num_grades) for k, _ in self.predictions}

    def update(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        for key, output in self.predictions:
            if output in outputs:   # a model without per-region heads gives only the integrated one
                self.acc[key].update(outputs[output], labels, mask)

    def summary(self) -> dict[str, Any]:
        predictions = {key: grade_summary(acc) for key, acc in self.acc.items() if acc.confusion.sum()}
        headline = next((k for k in self.headline if k in predictions), None)
        if headline is None:
            raise ValueError(f"no grade prediction was evaluated (need one of {', '.join(self.headline)})")
        return {"predictions": predictions, "mean_f1": predictions[headline]["mean_f1"]}
