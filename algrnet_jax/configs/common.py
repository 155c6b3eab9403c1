"""The part every named config shares: the sizes, and the base config of a model variant.

A named config file (``configs/<name>.py``) calls :func:`base_config` with its model switches; the sizes are
:data:`SIZES`. ``arg`` of every ``get_config(arg)`` names the size and optionally the AU label set, comma
separated, in any order: ``None`` or ``""`` (paper, bp4d), ``"tiny"``, ``"small,disfa"``, ``"disfa"``.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from algrnet_jax import au_sets
from algrnet_jax.configs.validate import ConfigError

DEFAULT_SIZE = "paper"
DEFAULT_LABEL_SET = "bp4d"


@dataclasses.dataclass(frozen=True)
class Size:
    """Input and model widths of one config size.

    Attributes:
      crop_size: network input, pixels (the paper's 176).
      aligned_size: aligned face resolution the crop is taken from (the paper's 200).
      unit: u, widths 4u, 8u (region layers), 12u, 16u, 20u (HLFeat) (the paper's 8).
      lstm_hidden: ConvLSTM hidden channels, 8 * unit (the paper's 64).
      aus: AU subset, or None for the whole label set.
    """

    crop_size: int
    aligned_size: int
    unit: int
    lstm_hidden: int
    aus: tuple[int, ...] | None


SIZES: dict[str, Size] = {
    "paper": Size(crop_size=176, aligned_size=200, unit=8, lstm_hidden=64, aus=None),
    "small": Size(crop_size=64, aligned_size=72, unit=2, lstm_hidden=16, aus=(1, 2, 4, 12)),
    "tiny": Size(crop_size=32, aligned_size=36, unit=1, lstm_hidden=8, aus=(1, 4, 12)),
}


def parse_arg(arg: str | None) -> tuple[str, str]:
    """``(size, label set)`` of a ``get_config`` argument such as ``"small,disfa"`` (see the module docstring)."""
    size, label_set = DEFAULT_SIZE, DEFAULT_LABEL_SET
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        if token in SIZES:
            size = token
        elif token in au_sets.AU_SETS:
            label_set = token
        else:
            raise ConfigError(f"config argument {arg!r}: {token!r} is neither a size ({', '.join(SIZES)}) "
                              f"nor a label set ({', '.join(au_sets.AU_SETS)})")
    return size, label_set


def config_name(module_name: str) -> str:
    """The registry name of the config file ``module_name`` (``algrnet_jax.configs.wo_fr`` -> ``wo_fr``)."""
    return module_name.rpartition(".")[2]


def base_config(name: str, arg: str | None, *, arch: str, adaptive: bool, relation: str, fusion_refine: bool,
                task: str = "au") -> ml_collections.ConfigDict:
    """The full config (model, data, train) of a model variant at the size and label set of ``arg``."""
    size_name, label_set = parse_arg(arg)
    size = SIZES[size_name]

    c = ml_collections.ConfigDict()
    c.name = name
    c.size = size_name
    # Shared by model and data: one home each.
    c.label_set = label_set
    c.aus = tuple(size.aus) if size.aus is not None else tuple(au_sets.AU_SETS[label_set])
    c.crop_size = size.crop_size          # network input, pixels (paper 176)
    c.aligned_size = size.aligned_size    # aligned face resolution the crop is taken from (paper 200)

    c.model = ml_collections.ConfigDict()
    c.model.arch = arch                  # "jaanet" | "algrnet"
    c.model.task = task                  # "au" | "paralysis"
    c.model.unit = size.unit             # u: widths 4u, 8u (region layers), 12u, 16u, 20u (HLFeat)
    c.model.lstm_hidden = size.lstm_hidden  # ConvLSTM hidden channels (paper 64); must equal 8 * unit (s_t = v_t + h_t)
    c.model.map_margin = 8               # attention map size M = crop/4 + margin (paper 52)
    c.model.map_scale = 0.14             # e: fixed region scale (initial scale with Ada)
    c.model.adaptive = adaptive          # AdaptiveRegions (offsets and scales)
    c.model.offset_unit = "pixel"        # Ada's offset output: crop pixels | region (initial half-widths; not the paper's)
    c.model.relation = relation          # models.relations.RELATIONS name ("skip_bilstm" | "bilstm") or "none"
    c.model.fusion_refine = fusion_refine
    c.model.fusion_refine_rescale = False  # r_t * sqrt(F), unit-RMS F&R output: not the paper's (ablation doc)
    c.model.local_within_region = False  # refined map x its region's cells: a truly local branch (not the paper's)
    c.model.num_grades = len(au_sets.GRADES)
    c.model.num_regions = 12             # paralysis muscle regions
    c.model.conv_impl = "auto"           # per-copy convs: auto | unrolled | grouped | matmul (models/layers.py)
    c.model.dtype = "float32"            # computation: float32 | bfloat16 | float64 (training/precision.py)
    c.model.param_dtype = "float32"      # params, BN statistics, optimizer state: float32 | float64

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "synth_au"          # tfds name (data_pipelines.builders.REGISTRY)
    c.data.builder_config = "bp4d_small" # tfds builder config
    c.data.data_dir = ""                 # "" -> $ALGRNET_DATA_DIR or ./data/tfds
    c.data.fold = 1                      # test part; train on the other two
    c.data.batch_size = 8                # global batch (split over devices)
    c.data.eval_batch_size = 16
    c.data.shuffle_seed = 0
    c.data.val_fraction = 0.1            # validation: this fraction of the training subjects (0 = none)
    c.data.val_seed = 0                  # seeds the choice of the validation subjects
    c.data.prefetch = 2
    c.data.skip_bad = False              # skip corrupt frames instead of failing (and report them)

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 20
    c.train.lr = 0.01
    c.train.lr_decay = 0.5
    c.train.lr_decay_every_epochs = 2
    c.train.momentum = 0.9
    c.train.nesterov = True
    c.train.weight_decay = 5e-4          # coupled (added to the gradient), every parameter
    c.train.lambda_align = 0.5
    c.train.seed = 0
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 3
    c.train.max_steps = -1               # >0 stops early (tests, smoke runs)
    return c
