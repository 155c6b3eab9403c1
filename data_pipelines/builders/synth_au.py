"""``synth_au``: synthetic AU faces from ``data_pipelines.synthetic`` as tfds records.

Configs ``<label_set>_<size>``: label set ``bp4d`` (12 AUs), ``disfa`` (8 AUs, occurrence =
intensity >= 2) or ``paralysis`` (the grade), size ``tiny`` / ``small`` / ``medium``
(``synthetic.SIZES``); ``bp4d_small_hidden2``: ``bp4d_small`` with AU2 labelled but not drawn (the
relational test of docs/ablation_synthetic.md); ``bp4d_<size>_sb``, ``_skip``, ``_ada``, ``_fr``: the mechanism
sets of docs/mechanisms.md (``data_pipelines.synthetic.mechanisms``; other options through :func:`register`).
Splits ``part1..part3`` hold the subject-exclusive folds
of the generator.

Build: ``algrnet data build synth_au --config bp4d_small [--data-dir D]`` or
``tfds build data_pipelines/builders/synth_au.py --config bp4d_small --data_dir D``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow_datasets as tfds

from data_pipelines import synthetic
from data_pipelines.synthetic import mechanisms
from data_pipelines.builders import base, examples, label_sets


@dataclasses.dataclass(eq=False)
class SynthAuConfig(base.AlgrnetBuilderConfig):
    """A label set and a generator size (a key of ``synthetic.SIZES``)."""

    size: str = "tiny"
    hidden_aus: tuple[int, ...] = ()
    mechanism: mechanisms.Mechanism | None = None

    def synth_config(self) -> synthetic.SynthConfig:
        """The generator config of this size (paralysis faces for the paralysis label set)."""
        if self.mechanism is not None:
            return mechanisms.synth_config(self.mechanism, self.size)
        cfg = synthetic.SIZES[self.size]
        return dataclasses.replace(cfg, paralysis=self.label_set == label_sets.PARALYSIS,
                                   hidden_aus=self.hidden_aus)


# The relational test set: AU2 is labelled but never drawn; it occurs with AU1, AU25 and AU26 (prototype
# 1+2+25+26) and in single-AU episodes, so only its partners (or chance) reveal it.
HIDDEN_AU_CONFIGS = {"bp4d_small_hidden2": ("small", (2,))}


def _configs() -> list[SynthAuConfig]:
    out = [SynthAuConfig(name=f"{label_set}_{size}", label_set=label_set, size=size,
                         description=f"synthetic faces, {label_set} labels, size {size}")
           for label_set in label_sets.LABEL_SETS for size in synthetic.SIZES]
    for name, (size, hidden) in HIDDEN_AU_CONFIGS.items():
        aus = ", ".join(f"AU{a}" for a in hidden)
        out.append(SynthAuConfig(name=name, label_set="bp4d", size=size, hidden_aus=hidden,
                                 description=f"synthetic faces, bp4d labels, size {size}; {aus} labelled but not "
                                             "drawn (visible only through co-occurring AUs)"))
    out += [mechanism_config(mechanisms.mechanism(test), size)
            for size in synthetic.SIZES for test in mechanisms.TESTS]
    return out


def mechanism_config(mech: mechanisms.Mechanism, size: str = "small") -> SynthAuConfig:
    """The builder config of a mechanism set (bp4d labels; name ``mech.name(size)``)."""
    return SynthAuConfig(name=mech.name(size), label_set="bp4d", size=size, mechanism=mech,
                         description=f"synthetic mechanism set {mech.test!r}, size {size}: {mech.describe()}; "
                                     "AUs drawn independently")


def register(mech: mechanisms.Mechanism, size: str = "small") -> str:
    """Adds the builder config of a mechanism set with non-default options (if new) and returns its name.

    tfds reads ``BUILDER_CONFIGS`` into a memoised dict on the first lookup; the config goes into both, so it
    may be added at any time in a process."""
    config = mechanism_config(mech, size)
    if config.name not in {c.name for c in SynthAu.BUILDER_CONFIGS}:
        SynthAu.BUILDER_CONFIGS.append(config)
    SynthAu.builder_configs.setdefault(config.name, config)
    return config.name


def resolve_config(name: str) -> bool:
    """Registers the mechanism set a builder config name describes (``mechanisms.parse_name``: the sets with
    options that ``experiments.mechanisms`` builds, read back by evaluation in another process); False if
    ``name`` names none."""
    parsed = mechanisms.parse_name(name)
    if parsed is None:
        return False
    register(*parsed)
    return True


class SynthAu(base.AlgrnetBuilder):
    """Synthetic AU (or paralysis) faces, aligned 200x200, in three subject-exclusive parts."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = _configs()
    DEFAULT_BUILDER_CONFIG_NAME = "bp4d_small"
    resolve_config = staticmethod(resolve_config)

    def _frames(self, part: int, dl_manager) -> Iterator[examples.Frame]:
        cfg: SynthAuConfig = self.builder_config
        label_set = cfg.label_set
        for ex in synthetic.generate(cfg.synth_config()):
            if int(ex["fold"]) != part:
                continue
            if label_set == label_sets.PARALYSIS:
                labels = [int(ex["grade"])]
            else:
                labels = synthetic.occurrence(ex["intensity"], label_set)
            source = f"synth_au/{cfg.name} {ex['subject']}/{ex['sequence']}/{int(ex['frame'])}"
            yield examples.Frame(key=f"{ex['subject']}/{ex['sequence']}/{int(ex['frame'])}",
                               subject=ex["subject"], sequence=ex["sequence"], frame=int(ex["frame"]),
                               fold=int(ex["fold"]), labels=labels, source=source,
                               image=ex["image"], landmarks=ex["landmarks"])
