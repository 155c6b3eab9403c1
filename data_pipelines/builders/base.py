"""The two builder base classes: :class:`AlgrnetBuilder` (every builder: features, validation, skip_bad,
label counts, locked and atomic (re)builds) and :class:`ReleaseBuilder` (bp4d / disfa / fpara: release or
list layout, per-subject resumable builds).

A builder yields :class:`~data_pipelines.builders.examples.Frame` objects per part from
``_frames(part, dl_manager)``; the base validates and encodes each into a record
(:func:`~data_pipelines.builders.examples.make_example`), skips bad ones when built with ``skip_bad=True``
(reported in ``bad_frames.json`` next to the dataset and logged) and stores per-part label counts in the
dataset metadata (``metadata.json``), from which the input pipeline derives the AU loss weights.

A synthetic builder in a few lines::

    class Mine(base.AlgrnetBuilder):
      VERSION = tfds.core.Version("1.0.0")
      BUILDER_CONFIGS = [base.AlgrnetBuilderConfig(name="default", label_set="bp4d")]

      def _frames(self, part, dl_manager):
        for ...:
          yield examples.Frame(key=..., subject=..., sequence=..., frame=..., fold=part, labels=...,
                              source=image_path,
                              load=functools.partial(raw_frames.load_and_align, image_path, raw_landmarks))
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tqdm import tqdm

from algrnet_jax import verbosity
from algrnet_jax.locking import DirLock
from data_pipelines.builders.cache import SubjectCache
from data_pipelines.builders.examples import Frame, LabelCounter, features, make_example
from data_pipelines.builders.label_sets import label_set_aus, num_labels
from data_pipelines.builders.label_files import BP4D_NOT_CODED
from data_pipelines.builders.list_layout import ListRow, find_list_prefixes, list_path_ids, load_aligned, read_list
from data_pipelines.builders.parts import NUM_PARTS, part_name
from data_pipelines.builders.raw_frames import raise_bad
from data_pipelines.errors import BadFrameError, BadInputError

log = logging.getLogger(__name__)

BAD_FRAMES_FILE = "bad_frames.json"
SKIP_BAD_ENV = "ALGRNET_SKIP_BAD"
STAGING_DIR = ".algrnet_staging"    # under the data dir: build lock, rebuilds in progress, replaced data
FILE_FORMAT = "array_record"        # of every build: random access for the input pipeline (tfds data source)
SKIP_BAD_HINT = "pass --skip-bad to skip such frames (they are then listed in bad_frames.json)"
KEEP_CACHE_ENV = "ALGRNET_KEEP_CACHE"


# ------------------------------------------------------------------------------- every builder


class AlgrnetMetadata(tfds.core.MetadataDict):
    """Dataset metadata (``metadata.json``); also writes the bad-frame report ``bad_frames.json``."""

    def save_metadata(self, data_dir):
        """Writes ``metadata.json`` and, when frames were checked, ``bad_frames.json`` into ``data_dir``."""
        super().save_metadata(data_dir)
        bad = self.get("bad_frames")
        if bad is not None:
            report = {"num_bad_frames": sum(len(v) for v in bad.values()), "bad_frames": bad}
            with epath.Path(data_dir, BAD_FRAMES_FILE).open("w") as f:
                json.dump(report, f, indent=1)


@dataclasses.dataclass(eq=False)
class AlgrnetBuilderConfig(tfds.core.BuilderConfig):
    """A builder config that carries the label set ("bp4d", "disfa" or "paralysis")."""

    label_set: str = "bp4d"


class AlgrnetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the project's builders: features, validation, skip_bad, label counts.

    Subclasses implement ``_frames(part, dl_manager) -> Iterator[Frame]`` for part 1..3 (frames
    whose ``fold`` is that part). Pass ``skip_bad=True`` (or set ``$ALGRNET_SKIP_BAD=1``, e.g. for
    ``tfds build``) to skip bad frames instead of failing on the first one, and ``parts=(1,)`` to build
    only some parts (a subset, e.g. when the release files of the others are absent).

    ``download_and_prepare`` holds a lock per dataset config while it builds (a second build of the same
    config fails at once naming the first one's PID), first cleans what a killed build left (tfds'
    ``incomplete.*`` directories), and rebuilds over an existing dataset (``overwrite``) into a staging
    directory that replaces the old data only once the new build is complete: until then, and if the
    rebuild fails or is killed, the old dataset stays as it was.
    """

    def __init__(self, *, skip_bad: bool | None = None, parts: Sequence[int] | None = None, **kwargs):
        if skip_bad is None:
            skip_bad = os.environ.get(SKIP_BAD_ENV, "").lower() in ("1", "true", "yes")
        self.skip_bad = bool(skip_bad)
        self.parts = tuple(range(1, NUM_PARTS + 1)) if not parts else tuple(sorted({int(p) for p in parts}))
        bad = [p for p in self.parts if not 1 <= p <= NUM_PARTS]
        if bad:
            raise BadInputError(f"parts {bad}: a part is 1..{NUM_PARTS}")
        self.cache_hits = 0      # subjects replayed from the resume cache (release builds)
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file.

        tfds 4.9.10 finds it through ``importlib_resources``, a package it only requires on
        Python < 3.9; reading the class's file directly avoids that dependency.
        """
        return epath.Path(inspect.getfile(cls))

    @property
    def label_set(self) -> str:
        """The config's label set: "bp4d", "disfa" or "paralysis"."""
        return self.builder_config.label_set

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features(num_labels(self.label_set)),
            metadata=AlgrnetMetadata(),
            supervised_keys=None,
            # Records stay in generation order (subject, sequence, frame): eval batches follow it
            # and the training pipeline shuffles globally per epoch anyway.
            disable_shuffling=True,
        )

    def _frames(self, part: int, dl_manager: tfds.download.DownloadManager) -> Iterator[Frame]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        md = self.info.metadata
        md["label_set"] = self.label_set
        md["aus"] = list(label_set_aus(self.label_set))
        md["label_counts"] = {}
        md["bad_frames"] = {}
        md["parts"] = list(self.parts)
        self._check_parts(dl_manager)
        return {part_name(k): self._generate_examples(k, dl_manager) for k in self.parts}

    def _check_parts(self, dl_manager: tfds.download.DownloadManager) -> None:
        """Raises BadInputError naming the requested parts that the release files have no frames for.

        The base class finds out only when a part yields nothing; subclasses that can tell up front do so.
        """

    def _generate_examples(self, part: int, dl_manager) -> Iterator[tuple[str, dict[str, Any]]]:
        name = part_name(part)
        counter = LabelCounter(self.label_set)
        bad: list[dict[str, Any]] = []
        bar = tqdm(desc=f"{self.name}/{self.builder_config.name} {name}", unit=" frames", leave=False,
                   disable=None)                      # our progress: shown on a terminal, hidden in logs
        for frame in self._frames(part, dl_manager):
            bar.update(1)
            try:
                example = make_example(frame, self.label_set)
            except BadInputError as e:
                if not self.skip_bad:
                    raise BadFrameError(f"{e}\n({SKIP_BAD_HINT})") from e
                log.warning("skipping bad frame: %s", e)
                bad.append({"key": frame.key, "source": frame.source, "subject": str(frame.subject),
                            "sequence": str(frame.sequence), "frame": int(frame.frame), "error": str(e)})
                continue
            if int(frame.fold) != part:
                raise BadInputError(f"{frame.source}: frame of fold {frame.fold} generated for {name}")
            counter.add(example["labels"])
            yield frame.key, example
        bar.close()
        if counter.num_examples == 0:
            why = f"all {len(bad)} of its frames are bad (see the warnings above)" if bad else "no frames found"
            raise BadInputError(f"{self.name}/{self.builder_config.name}: {name} is empty ({why}); "
                                f"{empty_parts_hint([part], self.parts)}")
        self.info.metadata["label_counts"][name] = counter.as_json()
        self.info.metadata["bad_frames"][name] = bad
        if bad:
            log.warning("%s/%s: skipped %d bad frames (listed in %s)", self.name, name, len(bad), BAD_FRAMES_FILE)

    # ---- building: one build per config, stale leftovers cleaned, atomic rebuild
    def _staging(self) -> tuple[str, str, str]:
        """(version dir, config dir, staging dir of this config under ``<data_dir>/.algrnet_staging``)."""
        version_dir = os.fspath(self.data_dir)
        config_dir = os.path.dirname(version_dir)
        root = os.fspath(self.data_dir_root)
        return version_dir, config_dir, os.path.join(root, STAGING_DIR, os.path.relpath(config_dir, root))

    def download_and_prepare(self, *, download_dir: Any = None,
                             download_config: tfds.download.DownloadConfig | None = None, **kwargs: Any) -> None:
        """tfds' build under the config's lock, after cleaning a killed build's leftovers; a rebuild
        (``download_mode`` overwrite) goes to a staging directory swapped in when complete."""
        download_config = download_config or tfds.download.DownloadConfig()
        if not verbosity.is_verbose():
            tfds.disable_progress_bar()               # tfds' bars are third-party output: --verbose shows them
        version_dir, config_dir, staging = self._staging()
        full_name = f"{self.name}/{self.builder_config.name}"
        with DirLock(os.path.join(staging, "build.lock"), f"dataset {full_name} in {self.data_dir_root}",
                     "another build of it is running; wait for it to end (or stop it)"):
            self._clean_stale(version_dir, config_dir, staging)
            exists = os.path.isfile(os.path.join(version_dir, "dataset_info.json"))
            if not exists or download_config.download_mode.overwrite_dataset:
                self.info.set_file_format(FILE_FORMAT, override=True, override_if_initialized=True)
            if not (exists and download_config.download_mode.overwrite_dataset):
                super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)
                return
            # Rebuild beside the old data (same file system), then swap.
            # <staging>/new/<config>/<version>: what tfds writes beside a version dir stays inside new/.
            new_dir = os.path.join(staging, "new", os.path.basename(config_dir), os.path.basename(version_dir))
            fresh = dataclasses.replace(download_config,
                                        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
            real = self._data_dir
            self._data_dir = new_dir
            try:
                super().download_and_prepare(
                    download_dir=download_dir or os.path.join(os.fspath(self.data_dir_root), "downloads"),
                    download_config=fresh, **kwargs)
            finally:
                self._data_dir = real
            replaced = os.path.join(staging, "replaced")
            os.rename(version_dir, replaced)        # a kill between these two renames is undone by the
            os.rename(new_dir, version_dir)         # next build's _clean_stale (old data put back)
            shutil.rmtree(replaced)
            shutil.rmtree(os.path.join(staging, "new"), ignore_errors=True)
            self.info.update_data_dir(version_dir)

    def _log_download_bytes(self) -> None:
        """tfds prints "Downloading and preparing dataset ..." here: only at the verbose level."""
        if verbosity.is_verbose():
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        """tfds prints "Dataset ... downloaded and prepared ..." here: only at the verbose level."""
        if verbosity.is_verbose():
            super()._log_download_done()

    def _clean_stale(self, version_dir: str, config_dir: str, staging: str) -> None:
        """Removes what a killed build left (under the build lock, so no build is using it)."""
        replaced = os.path.join(staging, "replaced")
        if os.path.isdir(replaced):
            if os.path.isdir(version_dir):
                shutil.rmtree(replaced)
            else:                                   # killed mid-swap: the old dataset goes back in place
                os.rename(replaced, version_dir)
                self.info.read_from_directory(version_dir)
                log.warning("%s: restored the dataset an interrupted rebuild had moved aside", version_dir)
        stale = sorted(glob.glob(os.path.join(config_dir, "incomplete.*")))
        stale += [d for d in (os.path.join(staging, "new"),) if os.path.exists(d)]
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        if stale:
            log.warning("removed %d unfinished build director%s left by an interrupted build: %s", len(stale),
                        "y" if len(stale) == 1 else "ies", ", ".join(stale))


def empty_parts_hint(empty: Sequence[int], requested: Sequence[int]) -> str:
    """What to do when some requested parts have no frames: build the others with ``--parts``."""
    present = [p for p in requested if p not in empty]
    if not present:
        return "check the manual dir against the manual download instructions"
    return (f"add the missing release files, or build only the parts present with --parts "
            f"{','.join(map(str, present))} (a subset: training needs the two parts other than the test part)")


# ------------------------------------------------------------------ release builders (real data)


@dataclasses.dataclass(eq=False)
class ReleaseConfig(AlgrnetBuilderConfig):
    """A real-data builder config: ``layout`` "auto" (detected), "release" or "list";
    ``split_seed`` seeds the paralysis fold split."""

    layout: str = "auto"
    split_seed: int = 0


def release_configs(label_set: str, dataset: str) -> list[ReleaseConfig]:
    """The configs of a real-data builder: ``default`` (layout detected), ``release``, ``list``."""
    return [
        ReleaseConfig(name="default", label_set=label_set, layout="auto",
                      description=f"{dataset}: release or list layout, detected from the manual dir"),
        ReleaseConfig(name="release", label_set=label_set, layout="release",
                      description=f"{dataset}: the release layout (raw frames aligned at build time)"),
        ReleaseConfig(name="list", label_set=label_set, layout="list",
                      description=f"{dataset}: the JAA-Net list layout (aligned 200x200 frames kept)"),
    ]


@dataclasses.dataclass(frozen=True)
class ReleaseSubject:
    """A subject of a release layout: its part and the input files its cache entry depends on."""

    name: str
    part: int
    inputs: tuple[str, ...]


class ReleaseBuilder(AlgrnetBuilder, skip_registration=True):
    """Base of bp4d / disfa / fpara: layout choice, the list layout, per-subject resumable builds.

    Subclasses set ``RELEASE_MARKER`` (a path in the manual dir that marks the release layout) and
    implement ``_release_subjects(manual_dir) -> list[ReleaseSubject]`` and
    ``_subject_frames(subject, manual_dir) -> Iterator[Frame]`` (raw frames, aligned lazily), and
    for the list layout ``_list_folds(rows_by_prefix) -> subject -> part`` and ``_list_labels``.

    Release builds go subject by subject through a :class:`SubjectCache` in
    ``<data_dir>/downloads/algrnet_cache/<name>/<config>/<version>/``: a crashed build rerun with
    the same command replays finished subjects from there instead of decoding and aligning again.
    The cache is deleted after a successful build (keep it with ``$ALGRNET_KEEP_CACHE=1``); pass
    ``cache=False`` to build without it.
    """

    RELEASE_MARKER = ""
    LIST_LABEL_SUFFIX = "AUoccur"

    def __init__(self, *, cache: bool = True, **kwargs):
        self.use_cache = bool(cache)
        self.cache_dir: str | None = None     # set when a subject was replayed from the cache
        super().__init__(**kwargs)

    # ---- layout
    def layout(self, manual_dir: str) -> str:
        """"release" or "list": the config's layout, or the one detected in ``manual_dir`` (config "default")."""
        layout = self.builder_config.layout
        if layout == "auto":
            return detect_layout(manual_dir, self.RELEASE_MARKER, self.name)
        if layout not in ("release", "list"):
            raise ValueError(f"unknown layout {layout!r}; choose auto, release or list")
        if layout == "release" and not os.path.exists(os.path.join(manual_dir, self.RELEASE_MARKER)):
            raise BadInputError(f"{os.path.join(manual_dir, self.RELEASE_MARKER)}: not found; config 'release' "
                                f"needs the {self.name} release layout (see the manual download instructions)")
        return layout

    def _cache_dir(self, dl_manager) -> str | None:
        if not self.use_cache:
            return None
        root = os.fspath(dl_manager.download_dir) if getattr(dl_manager, "download_dir", None) else None
        if root is None:
            return None
        return os.path.join(root, "algrnet_cache", self.name, self.builder_config.name, str(self.version))

    def _frames(self, part: int, dl_manager) -> Iterator[Frame]:
        manual = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(manual):
            raise BadInputError(f"{manual}: manual dir not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if self.layout(manual) == "list":
            yield from self._list_frames(part, manual)
            return
        subjects = [s for s in self._release_subjects(manual) if s.part == part]
        cache = SubjectCache(self._cache_dir(dl_manager))
        bar = tqdm(subjects, desc=f"{self.name} part{part}", unit=" subject", leave=False, disable=None)
        for subject in bar:
            bar.set_postfix_str(subject.name)
            hits = cache.hits
            yield from cache.frames(subject.name, subject.inputs,
                                    lambda s=subject.name: self._subject_frames(s, manual))
            if cache.hits > hits:
                self.cache_hits += 1
                self.cache_dir = cache.directory
                log.info("%s: replayed from the resume cache %s (its input files are unchanged)",
                         subject.name, cache.directory)

    def _check_parts(self, dl_manager) -> None:
        manual = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(manual):
            raise BadInputError(f"{manual}: manual dir not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if self.layout(manual) == "list":
            prefixes = find_list_prefixes(manual)
            if not prefixes or any(part is None for _, part in prefixes):
                return                          # parts come from the subjects: checked as each part is built
            present, what = {part for _, part in prefixes}, "list files (<name>_part<k>_path.txt)"
        else:
            present, what = {s.part for s in self._release_subjects(manual)}, "subjects"
        empty = [p for p in self.parts if p not in present]
        if empty:
            raise BadInputError(
                f"{manual}: no {what} for {', '.join(part_name(p) for p in empty)} (present: "
                f"{', '.join(part_name(p) for p in sorted(present)) or 'none'}); "
                f"{empty_parts_hint(empty, self.parts)}")

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        cache_dir = self._cache_dir(dl_manager)
        if cache_dir and os.path.isdir(cache_dir) and os.environ.get(KEEP_CACHE_ENV, "") not in ("1", "true"):
            shutil.rmtree(cache_dir, ignore_errors=True)
            for parent in (os.path.dirname(cache_dir), os.path.dirname(os.path.dirname(cache_dir)),
                           os.path.dirname(os.path.dirname(os.path.dirname(cache_dir)))):
                try:
                    os.rmdir(parent)          # only if empty: other configs' caches stay
                except OSError:
                    break

    def _release_subjects(self, manual_dir: str) -> list[ReleaseSubject]:
        raise NotImplementedError

    def _subject_frames(self, subject: str, manual_dir: str) -> Iterator[Frame]:
        raise NotImplementedError

    # ---- list layout
    def _list_labels(self, values: np.ndarray, source: str) -> np.ndarray:
        """List label row -> record labels (AU occurrence; BP4D's 9 = not coded -> -1)."""
        return np.where(values == BP4D_NOT_CODED, -1, values)

    def _list_folds(self, rows: dict[str, list[ListRow]], parts: dict[str, int | None]) -> Callable[[str, str], int]:
        """``(subject, source) -> part`` for the list layout."""
        raise NotImplementedError

    def _read_lists(self, manual: str) -> tuple[dict[str, list[ListRow]], dict[str, int | None]]:
        rows, parts = {}, {}
        weights = {}
        for prefix, part in find_list_prefixes(manual):
            rows[prefix], w = read_list(prefix, num_labels(self.label_set), self.LIST_LABEL_SUFFIX, (manual,))
            parts[prefix] = part
            if w is not None:
                weights[os.path.basename(prefix)] = w.tolist()
        if not rows:
            raise BadInputError(f"{manual}: no list files (<prefix>_path.txt) found")
        self.info.metadata["list_au_weights"] = weights
        return rows, parts

    def _list_frames(self, part: int, manual: str) -> Iterator[Frame]:
        rows, parts = self._read_lists(manual)
        fold_of_subject = self._list_folds(rows, parts)
        seen: dict[str, str] = {}
        for prefix, prefix_rows in rows.items():
            for row in prefix_rows:
                subject, sequence, frame = list_path_ids(row.path, row.source)
                fold = fold_of_subject(subject, row.source)
                if parts[prefix] is not None and fold != parts[prefix]:
                    raise BadInputError(f"{row.source}: subject {subject!r} is in part {fold}, but the list is "
                                        f"part {parts[prefix]}")
                if fold != part:
                    continue
                key = f"{subject}/{sequence}/{frame}"
                if key in seen:
                    raise BadInputError(f"{row.source}: frame {key} listed twice (also {seen[key]})")
                seen[key] = row.source
                yield Frame(
                    key=key, subject=subject, sequence=sequence, frame=frame, fold=fold,
                    labels=self._list_labels(row.labels, row.source), source=row.source,
                    interocular=row.interocular,
                    load=raise_bad(f"{row.error} (frame {key}, {row.source})") if row.error else
                    functools.partial(load_aligned, row.image_file, row.landmarks, row.source))


def detect_layout(manual_dir: str, release_marker: str, dataset: str) -> str:
    """"release" when ``manual_dir/release_marker`` exists, "list" when ``*_path.txt`` lists exist.

    Raises:
      BadInputError: when neither or both are present (choose with the ``release``/``list`` config).
    """
    release = os.path.exists(os.path.join(manual_dir, release_marker))
    lists = bool(glob.glob(os.path.join(manual_dir, "**", "*_path.txt"), recursive=True))
    if release and lists:
        raise BadInputError(f"{manual_dir}: holds both the {dataset} release layout ({release_marker}) and "
                            f"list files (*_path.txt); build config 'release' or 'list' to choose")
    if release:
        return "release"
    if lists:
        return "list"
    raise BadInputError(f"{manual_dir}: neither the {dataset} release layout ({release_marker}) nor list "
                        f"files (<prefix>_path.txt) found; see the manual download instructions")

