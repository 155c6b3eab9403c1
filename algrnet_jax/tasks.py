"""The task as an object: AU occurrence or facial paralysis grading, chosen once from the config.

``get_task(config)`` (or ``get_task("au")``) returns the registered :class:`Task` of ``config.model.task``
(the value saved in every checkpoint's config: ``"au"`` | ``"paralysis"``). A task owns everything that
differs between the two problems, so no other module tests the task's name:

- label spec: class names (``AU1``.. / the grades), ``num_outputs`` (model branches: AUs or muscle
  regions), the batch label shape and value range (:meth:`Task.check_labels`), the record label columns
  a config selects (:meth:`Task.label_columns`) and the label set of its data;
- heads: the output keys of its heads, the probability key (``prob_key``), the integrated / local
  log-probability keys the loss reads, and the head outputs made from the logits (:meth:`Task.head_outputs`);
- loss: the name of its head loss in ``losses.HEAD_LOSSES`` and what its loss weights mean
  (:meth:`Task.loss_weights`, from label counts of the training part);
- metrics: the accumulator of an evaluation (``metrics.AUTaskMetrics`` / ``metrics.GradeTaskMetrics``) and
  the result's summary; the predictions compared and the key of its paper table.

Adding a task is subclassing :class:`Task` and registering it with :func:`register`; adding a head loss is
adding a function to ``losses.HEAD_LOSSES`` and naming it in ``Task.loss``.

Parameter names: the integrated head keeps its historical name ``au_output`` in both tasks (saved
checkpoints and converted JAA-Net releases load unchanged); only output keys are task-specific.

Neutral module: imports numpy, jax and the data modules ``au_sets`` / ``metrics``, nothing from training,
evaluation, data_pipelines, experiments or commands.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from algrnet_jax import au_sets, metrics

PARALYSIS_LABEL_SET = au_sets.PARALYSIS_LABEL_SET   # the label set of grading data (records hold one grade)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One prediction a task evaluates: result key, model output read, table row label."""

    key: str
    output: str
    label: str


TRIVIAL = "all_present"   # the AU task's all-present baseline (result key)


class Task(abc.ABC):
    """One problem the network is trained for. Instances are stateless; read the config where needed."""

    name: ClassVar[str]                       # config.model.task value
    title: ClassVar[str]                      # human-readable
    exclusive: ClassVar[bool]                 # one class per face (argmax) rather than independent classes
    branch_per_class: ClassVar[bool]          # branch t (its attention map) belongs to class t
    reads_aus: ClassVar[bool]                 # config.aus selects the classes (and branches)
    classes_key: ClassVar[str]                # result key of the class names ("aus" / "grades")
    table_label: ClassVar[str]                # what the F1 table's columns are ("AU" / "Grade")
    prob_key: ClassVar[str]                   # headline probability output [B, K]
    logprob_keys: ClassVar[tuple[str, str]]   # (integrated, local) log-probability outputs the loss reads
    output_keys: ClassVar[tuple[str, ...]]    # outputs of the task's heads
    predictions: ClassVar[tuple[Prediction, ...]]   # evaluated predictions, in table order
    loss: ClassVar[str]                       # key of losses.HEAD_LOSSES
    loss_weights_meaning: ClassVar[str]
    region_scheme: ClassVar[str]              # key of models.regions.CENTRE_SCHEMES

    # -- label spec
    def num_outputs(self, config: Any) -> int:
        """Number of model branches (AUs or muscle regions) of a config."""
        return self.num_branches(tuple(config.aus), int(config.model.num_regions))

    @abc.abstractmethod
    def num_branches(self, aus: Sequence[int], num_regions: int) -> int:
        """Number of model branches for the AUs of a config and its number of muscle regions."""

    @abc.abstractmethod
    def class_names(self, config: Any) -> list[str]:
        """Names of the K probabilities of ``prob_key`` (``AU01``.. or the grades)."""

    def num_classes(self, config: Any) -> int:
        """K: length of the ``prob_key`` output and of the loss weights."""
        return len(self.class_names(config))

    @abc.abstractmethod
    def label_shape(self, config: Any) -> tuple[int, ...]:
        """Per-example shape of batch ``labels`` (``(n,)`` or ``()``)."""

    @abc.abstractmethod
    def label_values(self, config: Any) -> tuple[int, ...]:
        """Values a batch label may take (unknown included)."""

    def check_labels(self, labels: Any, config: Any, where: str = "batch") -> None:
        """Raises ValueError naming ``where`` unless ``labels`` [B, *label_shape] holds allowed values."""
        labels = np.asarray(labels)
        want = self.label_shape(config)
        if labels.shape[1:] != want:
            raise ValueError(f"{where}: labels {list(labels.shape)} do not match the {self.title} task's "
                             f"[B{''.join(', ' + str(d) for d in want)}]")
        bad = ~np.isin(labels, self.label_values(config))
        if bad.any():
            raise ValueError(f"{where}: label values {sorted(set(labels[bad].tolist()))[:5]} outside "
                             f"{self.label_values(config)} ({self.title})")

    @abc.abstractmethod
    def data_label_set(self, config: Any) -> str:
        """The label set of the data this config trains on (builder configs are named after it)."""

    @abc.abstractmethod
    def accepts_label_set(self, label_set: str) -> bool:
        """Whether records of ``label_set`` carry this task's labels."""

    @abc.abstractmethod
    def record_label_names(self, label_set: str) -> list[str]:
        """Names of the entries of the records' ``labels`` feature for ``label_set`` (its length L)."""

    @abc.abstractmethod
    def record_label_values(self) -> tuple[int, ...]:
        """Values a record label may hold (unknown included where the data has it)."""

    @abc.abstractmethod
    def describe_record_labels(self, label_set: str) -> str:
        """What a record of ``label_set`` carries, for error messages (e.g. ``12 AU labels (AU1, ...)``)."""

    @abc.abstractmethod
    def label_set_classes(self, label_set: str) -> list[str]:
        """Class names of data of ``label_set`` (``AU1``.. or the grades), the order of :meth:`rates`."""

    @abc.abstractmethod
    def rates(self, counts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-class rates of :meth:`count_labels` counts: AU base rates (NaN where nothing is labelled) or
        grade shares."""

    @abc.abstractmethod
    def label_columns(self, config: Any, label_set: str) -> np.ndarray | None:
        """Columns [n] of the record labels the config selects; None when records hold one label as is."""

    # -- loss weights
    @abc.abstractmethod
    def count_labels(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Label counts of record labels int [N, L] (what :meth:`loss_weights` reads)."""

    @abc.abstractmethod
    def loss_weights(self, counts: Mapping[str, np.ndarray], columns: np.ndarray | None,
                     warn: Callable[[str], None] | None = None) -> np.ndarray:
        """float32 [K] loss weights from the training part's counts (``loss_weights_meaning``)."""

    # -- heads (jax; called inside the model's compact __call__)
    @abc.abstractmethod
    def head_units(self, num_branches: int, num_grades: int) -> tuple[int, int]:
        """(classes of each local branch head, units of the integrated head) for ``num_branches`` branches
        (``num_grades``: the model's grade count, read by grading tasks)."""

    @abc.abstractmethod
    def head_outputs(self, logits: jax.Array, local_logits: jax.Array, final_mean: bool) -> dict[str, jax.Array]:
        """Integrated logits [B, units] and local logits [n, B, classes] -> the task's outputs."""

    # -- metrics
    @abc.abstractmethod
    def new_metrics(self, config: Any) -> metrics.TaskMetrics:
        """A fresh streaming accumulator of this task's predictions."""

    def result_classes(self, config: Any) -> list[str]:
        """Class names as written in evaluation results and tables."""
        return self.class_names(config)

    def summarize(self, config: Any, acc: metrics.TaskMetrics) -> dict[str, Any]:
        """The task part of an evaluation result: class names, ``predictions`` and the headline ``mean_f1``."""
        return {self.classes_key: self.result_classes(config), **acc.summary()}

    @abc.abstractmethod
    def paper_table(self, label_set: str) -> tuple[str, str] | None:
        """(key in resources/paper_tables.json, table name) of the paper's F1 table, or None."""

    def baselines(self) -> tuple[tuple[str, str], ...]:
        """(result key, row label) of trivial predictors evaluated beside the model."""
        return ()


class AUTask(Task):
    """AU occurrence: n independent present/absent classifiers, weighted softmax + dice loss."""

    name = "au"
    title = "AU occurrence"
    exclusive = False
    branch_per_class = True
    reads_aus = True
    classes_key = "aus"
    table_label = "AU"
    prob_key = "final_au_prob"
    logprob_keys = ("au_logprob", "local_au_logprob")
    output_keys = ("local_au_logprob", "au_logprob", "local_au_prob", "au_prob", "final_au_prob")
    predictions = (Prediction("local", "local_au_prob", "local"), Prediction("integrated", "au_prob", "integrated"),
                   Prediction("final", "final_au_prob", "final"))
    loss = "softmax_dice"
    loss_weights_meaning = "per-AU weights [n], w_i proportional to 1 / base rate, sum n"
    region_scheme = "au"

    PAPER_TABLES: ClassVar[dict[str, tuple[str, str]]] = {
        "bp4d": ("table2_bp4d_f1", "Table II"), "disfa": ("table3_disfa_f1", "Table III")}

    def num_branches(self, aus: Sequence[int], num_regions: int) -> int:
        return len(aus)

    def class_names(self, config: Any) -> list[str]:
        return [f"AU{int(a):02d}" for a in config.aus]

    def result_classes(self, config: Any) -> list[str]:
        return [f"AU{a}" for a in config.aus]

    def label_shape(self, config: Any) -> tuple[int, ...]:
        return (len(config.aus),)

    def label_values(self, config: Any) -> tuple[int, ...]:
        return (-1, 0, 1)

    def data_label_set(self, config: Any) -> str:
        return str(config.label_set)

    def accepts_label_set(self, label_set: str) -> bool:
        return label_set in au_sets.AU_SETS

    def record_label_names(self, label_set: str) -> list[str]:
        return au_sets.au_names(label_set)

    def record_label_values(self) -> tuple[int, ...]:
        return (-1, 0, 1)

    def describe_record_labels(self, label_set: str) -> str:
        names = self.record_label_names(label_set)
        return f"{len(names)} AU labels ({', '.join(names)})"

    def label_set_classes(self, label_set: str) -> list[str]:
        return au_sets.au_names(label_set)

    def rates(self, counts: Mapping[str, np.ndarray]) -> np.ndarray:
        pos, lab = np.asarray(counts["positives"], np.int64), np.asarray(counts["labelled"], np.int64)
        return np.where(lab > 0, pos / np.maximum(lab, 1), np.nan)

    def label_columns(self, config: Any, label_set: str) -> np.ndarray:
        aus = au_sets.AU_SETS[label_set]
        missing = [a for a in config.aus if a not in aus]
        if missing:
            raise ValueError(f"config.aus {tuple(config.aus)} has AUs {missing} that label set {label_set!r} "
                             f"({aus}) does not have")
        return np.asarray([aus.index(a) for a in config.aus], np.int32)

    def count_labels(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        labels = np.asarray(labels)
        return {"positives": (labels == 1).sum(0), "labelled": (labels >= 0).sum(0)}

    def loss_weights(self, counts: Mapping[str, np.ndarray], columns: np.ndarray | None,
                     warn: Callable[[str], None] | None = None) -> np.ndarray:
        pos, lab = np.asarray(counts["positives"]), np.asarray(counts["labelled"])
        if columns is not None:
            pos, lab = pos[columns], lab[columns]
        return inverse_rate_weights(pos.astype(np.float64) / np.maximum(lab, 1).astype(np.float64), "AU weights",
                                    warn)

    def head_units(self, num_branches: int, num_grades: int) -> tuple[int, int]:
        return 2, 2 * num_branches

    def head_outputs(self, logits: jax.Array, local_logits: jax.Array, final_mean: bool) -> dict[str, jax.Array]:
        n, b = local_logits.shape[:2]
        au_logprob = jax.nn.log_softmax(logits.reshape(b, 2, n).transpose(0, 2, 1), axis=-1)  # PyTorch [B, 2, n]
        local_logprob = jax.nn.log_softmax(local_logits.transpose(1, 0, 2), axis=-1)
        au_prob, local_prob = jnp.exp(au_logprob[..., 1]), jnp.exp(local_logprob[..., 1])
        return {"au_logprob": au_logprob, "local_au_logprob": local_logprob, "au_prob": au_prob,
                "local_au_prob": local_prob, "final_au_prob": (au_prob + local_prob) / 2.0 if final_mean else au_prob}

    def new_metrics(self, config: Any) -> metrics.TaskMetrics:
        return metrics.AUTaskMetrics(len(config.aus), tuple((p.key, p.output) for p in self.predictions),
                                     trivial_key=TRIVIAL)

    def paper_table(self, label_set: str) -> tuple[str, str] | None:
        return self.PAPER_TABLES.get(label_set)

    def baselines(self) -> tuple[tuple[str, str], ...]:
        return ((TRIVIAL, "all-present baseline"),)


class GradingTask(Task):
    """Facial paralysis grading: one of G grades per face, class-weighted cross-entropy."""

    name = "paralysis"
    title = "paralysis grade"
    exclusive = True
    branch_per_class = False
    reads_aus = False
    classes_key = "grades"
    table_label = "Grade"
    prob_key = "final_grade_prob"
    logprob_keys = ("grade_logprob", "local_grade_logprob")
    output_keys = ("grade_logprob", "local_grade_logprob", "final_grade_prob")
    # argmax is taken, so log-probabilities and probabilities both work
    predictions = (Prediction("local", "local_grade_logprob", "local"),
                   Prediction("integrated", "grade_logprob", "integrated"),
                   Prediction("final", "final_grade_prob", "final"))
    loss = "weighted_cross_entropy"
    loss_weights_meaning = "per-grade class weights [G], w_g proportional to 1 / count, sum G"
    region_scheme = "muscle"

    def num_branches(self, aus: Sequence[int], num_regions: int) -> int:
        return num_regions

    def class_names(self, config: Any) -> list[str]:
        return list(au_sets.GRADES)

    def label_shape(self, config: Any) -> tuple[int, ...]:
        return ()

    def label_values(self, config: Any) -> tuple[int, ...]:
        return (-1,) + tuple(range(len(au_sets.GRADES)))

    def data_label_set(self, config: Any) -> str:
        return PARALYSIS_LABEL_SET

    def accepts_label_set(self, label_set: str) -> bool:
        return label_set == PARALYSIS_LABEL_SET

    def record_label_names(self, label_set: str) -> list[str]:
        return ["grade"]

    def record_label_values(self) -> tuple[int, ...]:
        return tuple(range(len(au_sets.GRADES)))

    def describe_record_labels(self, label_set: str) -> str:
        return "1 grade"

    def label_set_classes(self, label_set: str) -> list[str]:
        return list(au_sets.GRADES)

    def rates(self, counts: Mapping[str, np.ndarray]) -> np.ndarray:
        grades = np.asarray(counts["grades"], np.int64)
        return grades / max(int(grades.sum()), 1)

    def label_columns(self, config: Any, label_set: str) -> None:
        return None

    def count_labels(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        labels = np.asarray(labels, np.int64)
        grades = labels[:, 0] if labels.ndim == 2 else labels          # records [N, 1] or batches [N]
        return {"grades": np.bincount(grades, minlength=len(au_sets.GRADES))}

    def loss_weights(self, counts: Mapping[str, np.ndarray], columns: np.ndarray | None,
                     warn: Callable[[str], None] | None = None) -> np.ndarray:
        return inverse_rate_weights(counts["grades"], "grade weights", warn)

    def head_units(self, num_branches: int, num_grades: int) -> tuple[int, int]:
        return num_grades, num_grades

    def head_outputs(self, logits: jax.Array, local_logits: jax.Array, final_mean: bool) -> dict[str, jax.Array]:
        grade = jax.nn.log_softmax(logits)
        local_grade = jax.nn.log_softmax(jnp.mean(local_logits, axis=0))   # logits averaged over regions
        return {"grade_logprob": grade, "local_grade_logprob": local_grade,
                "final_grade_prob": (jnp.exp(grade) + jnp.exp(local_grade)) / 2.0}

    def new_metrics(self, config: Any) -> metrics.TaskMetrics:
        return metrics.GradeTaskMetrics(len(au_sets.GRADES), tuple((p.key, p.output) for p in self.predictions),
                                        headline=("final", "integrated"))

    def paper_table(self, label_set: str) -> tuple[str, str] | None:
        return ("table4_fpara_f1", "Table IV")


def inverse_rate_weights(rate: Any, what: str, warn: Callable[[str], None] | None = None) -> np.ndarray:
    """float32 [K] weights ``w_k ∝ 1 / rate_k`` with ``sum w = K``; zero rates take the smallest positive
    rate (so a class without positives gets the largest weight of the others), reported through ``warn``."""
    rate = np.asarray(rate, np.float64)
    if (rate <= 0).any():
        if warn is not None:
            warn(f"{what}: zero rates at {np.flatnonzero(rate <= 0).tolist()}; clipped to the smallest positive rate")
        positive = rate[rate > 0]
        rate = np.where(rate > 0, rate, positive.min() if positive.size else 1.0)
    w = 1.0 / rate
    return (w * (len(w) / w.sum())).astype(np.float32)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds a task to the registry under ``task.name``."""
    TASKS[task.name] = task
    return task


register(AUTask())
register(GradingTask())


def get_task(config_or_name: Any) -> Task:
    """The task of a config (``config.model.task``), of a name, or the task itself; ValueError naming the
    registered names."""
    if isinstance(config_or_name, Task):
        return config_or_name
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.model.task
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"config.model.task must be one of {', '.join(TASKS)}, got {name!r}") from None


def task_for_label_set(label_set: str) -> Task:
    """The task whose labels records of ``label_set`` carry; ValueError naming the known label sets."""
    for task in TASKS.values():
        if task.accepts_label_set(label_set):
            return task
    raise ValueError(f"unknown label set {label_set!r}; choose from {', '.join(label_sets())}")


def label_sets() -> tuple[str, ...]:
    """Every label set a builder may carry: the AU sets and the grading set."""
    return au_sets.LABEL_SETS


def prediction_keys(task: Task) -> Sequence[str]:
    """Result keys of a task's predictions and baselines, in table order."""
    return [p.key for p in task.predictions] + [k for k, _ in task.baselines()]
