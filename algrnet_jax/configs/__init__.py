"""Named experiment configurations (ml_collections ConfigDicts; configs are data).

``get_config(name)`` returns a complete config: model, data and training sections. Names:

- ``jaanet``: the JAA-Net baseline (SPEC section 3).
- ``algrnet``: full ALGRNet (SPEC section 4).
- ablations of the paper's Tables V/VI: ``wo_full`` (no Ada, no S-B, no F&R), ``wo_fr`` (no fusion &
  refining), ``wo_sb`` (no skip-BiLSTM: s_t = v_t), ``w_bi`` (plain ConvBiLSTM instead of skip-BiLSTM),
  ``wo_ada`` (fixed regions: scale 0.14, no offsets).
- ``algrnet_paralysis``: 12 muscle regions and a 4-way grade head.

``get_config(name, size="small")`` gives the same code paths at test size (crop 64, unit 2, hidden 16,
4 AUs), and ``size="tiny"`` an even smaller one (crop 32) for the fastest unit tests.
"""
from __future__ import annotations

import ml_collections

from algrnet_jax import au_sets

MODEL_NAMES = ("jaanet", "algrnet", "wo_full", "wo_fr", "wo_sb", "w_bi", "wo_ada", "algrnet_paralysis")

# (arch, adaptive, relation, fusion_refine, task) of each named model.
_VARIANTS = {
    "jaanet": ("jaanet", False, "none", False, "au"),
    "algrnet": ("algrnet", True, "skip_bilstm", True, "au"),
    "wo_full": ("algrnet", False, "none", False, "au"),
    "wo_fr": ("algrnet", True, "skip_bilstm", False, "au"),
    "wo_sb": ("algrnet", True, "none", True, "au"),
    "w_bi": ("algrnet", True, "bilstm", True, "au"),
    "wo_ada": ("algrnet", False, "skip_bilstm", True, "au"),
    "algrnet_paralysis": ("algrnet", True, "skip_bilstm", True, "paralysis"),
}

SIZES = {
    # size: (crop_size, aligned_size, unit, lstm_hidden, aus or None for the whole label set)
    "paper": (176, 200, 8, 64, None),
    "small": (64, 72, 2, 16, (1, 2, 4, 12)),
    "tiny": (32, 36, 1, 8, (1, 4, 12)),
}


def get_config(name: str = "algrnet", size: str = "paper", label_set: str = "bp4d") -> ml_collections.ConfigDict:
    """Returns the full config of a named model at a given size.

    Args:
      name: one of MODEL_NAMES.
      size: "paper", "small" or "tiny".
      label_set: "bp4d" (12 AUs) or "disfa" (8 AUs); ignored for the paralysis task.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    arch, adaptive, relation, fusion_refine, task = _VARIANTS[name]
    crop, aligned, unit, hidden, aus = SIZES[size]

    c = ml_collections.ConfigDict()
    c.name = name
    c.size = size
    # Shared by model and data: one home each.
    c.label_set = label_set
    c.aus = tuple(aus) if aus is not None else tuple(au_sets.AU_SETS[label_set])
    c.crop_size = crop          # network input, pixels (paper 176)
    c.aligned_size = aligned    # aligned face resolution the crop is taken from (paper 200)

    c.model = ml_collections.ConfigDict()
    c.model.arch = arch                  # "jaanet" | "algrnet"
    c.model.task = task                  # "au" | "paralysis"
    c.model.unit = unit                  # u: widths 4u, 8u (region layers), 12u, 16u, 20u (HLFeat)
    c.model.lstm_hidden = hidden         # ConvLSTM hidden channels (paper 64); must equal 8 * unit (s_t = v_t + h_t)
    c.model.map_margin = 8               # attention map size M = crop/4 + margin (paper 52)
    c.model.map_scale = 0.14             # e: fixed region scale (initial scale with Ada)
    c.model.adaptive = adaptive          # AdaptiveRegions (offsets and scales)
    c.model.relation = relation          # "skip_bilstm" | "bilstm" | "none"
    c.model.fusion_refine = fusion_refine
    c.model.num_grades = len(au_sets.GRADES)
    c.model.num_regions = 12             # paralysis muscle regions
    c.model.conv_impl = "auto"           # per-copy convs: auto | unrolled | grouped | matmul (models/layers.py)
    c.model.dtype = "float32"            # computation: float32 | bfloat16 | float64 (training/precision.py)
    c.model.param_dtype = "float32"      # params, BN statistics, optimizer state: float32 | float64

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "synth_au"          # tfds name: synth_au | bp4d | disfa | fpara
    c.data.builder_config = "bp4d_small" # tfds builder config
    c.data.data_dir = ""                 # "" -> $ALGRNET_DATA_DIR or ./data/tfds
    c.data.fold = 1                      # test part; train on the other two
    c.data.batch_size = 8                # global batch (split over devices)
    c.data.eval_batch_size = 16
    c.data.shuffle_seed = 0
    c.data.shuffle_buffer = 2048
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


def num_outputs(config: ml_collections.ConfigDict) -> int:
    """Number of AU (or paralysis-region) branches of a config."""
    return config.model.num_regions if config.model.task == "paralysis" else len(config.aus)
