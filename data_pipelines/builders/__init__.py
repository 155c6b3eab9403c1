"""tfds builders of the project and a registry name -> builder class (imported lazily).

``get_builder("synth_au", config="bp4d_small", data_dir=None)`` returns a builder instance; the
data directory defaults to :func:`default_data_dir` (``$ALGRNET_DATA_DIR`` or ``./data/tfds``).
Real datasets (bp4d, disfa, fpara) need the release files: ``manual_dir``.

Modules (one job each): ``base`` (the two builder base classes), ``examples`` (record features, Frame,
frame -> record), ``checks`` (image / landmark / label checks), ``parts`` (part and fold split names),
``label_sets``, ``label_files`` (BP4D / DISFA / paralysis label formats), ``landmark_files``, ``folds``
(subject -> part), ``raw_frames`` (videos, frame folders, alignment of a raw frame), ``list_layout``
(the JAA-Net list layout), ``tables`` (numeric text and CSV tables), ``cache`` (the resume cache);
the builders ``synth_au``, ``bp4d``, ``disfa``, ``fpara``. Importing this package does not import
TensorFlow; the builders do.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from algrnet_jax import tasks

# name -> "module:Class". Real datasets read release files from a manual dir.
REGISTRY: dict[str, str] = {
    "synth_au": "data_pipelines.builders.synth_au:SynthAu",
    "bp4d": "data_pipelines.builders.bp4d:Bp4d",
    "disfa": "data_pipelines.builders.disfa:Disfa",
    "fpara": "data_pipelines.builders.fpara:Fpara",
}
NEEDS_MANUAL_DIR: frozenset[str] = frozenset({"bp4d", "disfa", "fpara"})

__all__ = ["REGISTRY", "NEEDS_MANUAL_DIR", "default_data_dir", "builder_class", "default_builder_config",
           "get_builder"]


def default_data_dir() -> str:
    """Where datasets live: ``$ALGRNET_DATA_DIR`` or ``./data/tfds`` in the working directory."""
    return os.environ.get("ALGRNET_DATA_DIR") or os.path.join(os.getcwd(), "data", "tfds")


def builder_class(name: str) -> type:
    """Imports and returns the builder class registered under ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def default_builder_config(name: str, config: Any) -> str:
    """The builder config a run of ``config`` (a model config) on dataset ``name`` uses when none is named.

    synth_au: ``<label set>_small`` (``paralysis_small`` for the paralysis task); a real dataset: the builder's
    default (``default``: layout detected from the manual dir).
    """
    cls = builder_class(name)
    if name == "synth_au":
        return f"{tasks.get_task(config).data_label_set(config)}_small"
    return cls.DEFAULT_BUILDER_CONFIG_NAME or cls.BUILDER_CONFIGS[0].name


def get_builder(name: str, config: str | None = None, data_dir: str | None = None, **kwargs: Any):
    """Instantiates a registered builder (``kwargs`` e.g. ``skip_bad=True``).

    Args:
      name: registry name.
      config: builder config name (``None``: the builder's default).
      data_dir: tfds data dir; ``None``/"" -> :func:`default_data_dir`.
    """
    cls = builder_class(name)
    if config is not None:
        names = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
        # a builder may know configs by name beyond its list (synth_au: mechanism sets with options)
        if names and config not in names and not getattr(cls, "resolve_config", lambda _: False)(config):
            raise ValueError(f"unknown config {config!r} of dataset {name!r}; choose from {', '.join(names)}")
    return cls(config=config, data_dir=data_dir or default_data_dir(), **kwargs)
