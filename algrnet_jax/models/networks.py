"""JAA-Net and ALGRNet (docs/model.md §3-§4) as one Flax module, and ``create_model(config)``.

Forward pass (n AUs or paralysis regions, u = unit width, C = crop, M = C/4 + 8):
  region   = RegionLearning(images)                          [B, C/4, C/4, 8u]
  A        = align_feat(region) (HLFeat)                     [B, 5, 5, 20u]
  landmarks= align_output(A) (4000 -> 64u -> 98)             [B, 49, 2], PyTorch's x1 y1 x2 y2 ... reshaped
  centres  = rule(stop_grad(landmarks))                      [B, n, 2, 2]
  Ada:       offsets, scales = adaptive(flatten(A)); centres += offsets; maps = attention_maps(centres, scales)
  no Ada:    maps = stop_grad(attention_maps(centres, 0.14))  (exactly JAA-Net)
  refined  = attention_refine(maps) (per AU)                 [B, n, M-8, M-8]
  (local_within_region: refined *= region_support(centres)    the region's own cells only; not the paper's)
  v_t      = region * refined_t                              [n, B, C/4, C/4, 8u]
  s_t      = v_t + relations(v)_t  (a registered relation: relations.RELATIONS), or v_t (none)
  l_t      = local_au_feat(s_t) (per-AU HLFeat)              [n, B, 5, 5, 20u]
  G        = global_au_feat(region) (HLFeat)                 [B, 5, 5, 20u]
  r_t      = fusion_refine(l, G)_t, or l_t without F&R
  local    = local_au_output(r_t) (per AU, 4000 -> 8u -> 2)  log-softmax
  integ.   = au_output(concat(A, G, stop_grad(mean_t r_t))) (12000 -> 64u -> 2n, PyTorch layout [2, n])
  final    = (local + integrated probabilities) / 2 for ALGRNet variants, the integrated one for JAA-Net.
Gradients: landmarks get only the alignment loss (centres use stop_grad(landmarks), in every variant);
with Ada the maps are differentiable in offsets and scales (straight-through rounding), so the AU losses
train the adaptive MLPs; without Ada the maps carry no gradient, as in JAA-Net.
JAA-Net is the configuration arch="jaanet" (no Ada, no relations, no F&R, final = integrated).
The task (``tasks.get_task(config)``) picks the regions (``regions.CENTRE_SCHEMES[task.region_scheme]``), the
head widths (``task.head_units``) and the head outputs (``task.head_outputs``). Paralysis (task="paralysis"):
12 muscle regions (``au_sets.PARALYSIS_REGIONS``), per-region classifiers 4000 -> 8u -> 4 whose logits are
averaged over regions (``local_grade_logprob``), and the integrated head a 4-way softmax (``grade_logprob``);
``final_grade_prob`` = mean of both probabilities. The heads keep the parameter names ``local_au_output`` /
``au_output`` in every task, so saved checkpoints load unchanged.

Variable tree (``params``; ``batch_stats`` mirrors every ``bn*``/``bn`` entry with ``mean``/``var``),
with the JAA-Net release's state_dict names in brackets (see stem.py and heads.py for the sub-trees):
  region_learning: {layer1, layer2}: RegionLayer                 [region_learning.multiscale_feat.{0,2}]
  align_feat: HLFeat                                              [align_net.align_feat.feat_extract]
  align_output: DenseHead {dense1 [4000, 64u], dense2 [64u, 98]}  [align_net.align_output.{0,1}]
  attention_refine: per-AU RefineNet, leading n axis              [local_attention_refine.local_aus_attention.<au>]
  local_au_feat: per-AU HLFeat, leading n axis                    [local_au_net.local_aus_branch.<au>.feat_extract]
  local_au_output: per-AU DenseHead {dense1 [n, 4000, 8u], dense2 [n, 8u, 2]}  [local_au_net.local_aus_output.<au>]
  global_au_feat: HLFeat                                          [global_au_feat.feat_extract]
  au_output: DenseHead {dense1 [12000, 64u], dense2 [64u, 2n]}    [au_net.au_output.{0,1}]
  ALGRNet only: adaptive (AdaptiveRegions), relations (relations.RELATIONS[relation]), fusion_refine (FusionRefine).
HLFeat: conv1..conv6 [feat_extract.{0,3,7,10,14,17}], bn1..bn6 [feat_extract.{1,4,8,11,15,18}].
RefineNet: conv1..conv4 [.{0,3,6,9}], bn1..bn3 [.{1,4,7}].
RegionLayer: conv [.conv], branch{1,2,3}: {bn, conv} with a leading cell axis (row-major cells)
[.local_conv_branch{k}.{bns,convs}.<cell>], bn [.bn].
Conv kernels are HWIO (PyTorch OIHW -> transpose(2, 3, 1, 0)); dense kernels are weight.T.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from algrnet_jax import au_sets, tasks
from algrnet_jax.configs.validate import validate_config
from algrnet_jax.models import regions, relations
from algrnet_jax.models.adaptive import AdaptiveRegions
from algrnet_jax.models.fusion import FusionRefine
from algrnet_jax.models.heads import DenseHead, RefineNet
from algrnet_jax.models.layers import each, flatten_nchw, per_copy_form
from algrnet_jax.models.stem import HLFeat, RegionLearning

# config.model.dtype -> the modules' computation dtype (float32: None, i.e. that of the float32 params).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
PARAM_DTYPES = ("float32", "float64")
# model.offset_unit -> crop pixels per unit of Ada's offset output, from (map_scale, map_size, crop_size)
OFFSET_UNITS = {"pixel": lambda scale, map_size, crop_size: 1.0, "region": regions.half_width_pixels}


class ALGRNet(nn.Module):
    """JAA-Net / ALGRNet and its ablations: images [B, C, C, 3] in [-1, 1] -> dict of outputs (docs/design.md)."""

    aus: tuple[int, ...]
    crop_size: int = 176
    unit: int = 8
    lstm_hidden: int = 64
    map_margin: int = 8
    map_scale: float = 0.14
    adaptive: bool = True
    offset_unit: str = "pixel"       # Ada's offset output in crop pixels, or in initial region half-widths ("region")
    relation: str = "skip_bilstm"    # a relations.RELATIONS name, or "none"
    fusion_refine: bool = True
    fusion_refine_rescale: bool = False  # r_t * sqrt(F) (unit RMS; not the paper's: off by default)
    local_within_region: bool = False  # refined_t * (AU t's region cells): a truly local branch (not the paper's)
    final_mean: bool = True          # final = mean(local, integrated); False: integrated (JAA-Net)
    task: tasks.Task = tasks.get_task("au")   # the task object (tasks.TASKS: "au" | "paralysis")
    num_grades: int = 4
    num_regions: int = 12            # paralysis regions
    conv_impl: str = "auto"          # per-copy convolutions: layers.CONV_IMPLS (auto: per backend and layer)
    dtype: Any = None                # computation dtype (None: float32 params -> float32); bfloat16 = mixed
    param_dtype: Any = jnp.float32   # parameters and BatchNorm statistics

    @property
    def num_branches(self) -> int:
        return self.task.num_branches(self.aus, self.num_regions)

    @property
    def map_size(self) -> int:
        return self.crop_size // 4 + self.map_margin

    @nn.nowrap
    def region_centres(self, landmarks: jax.Array, offsets: jax.Array | None = None) -> jax.Array:
        """landmarks [B, L, 2] (+ Ada's offsets [B, n, 2]) -> both centres of each branch's region [B, n, 2, 2],
        crop pixels: the task's centre rule, shifted by the offsets where the model has them."""
        centres = regions.CENTRE_SCHEMES[self.task.region_scheme](landmarks, self.aus)
        return centres if offsets is None else centres + offsets[:, :, None, :]

    @nn.nowrap
    def region_cells(self, centres: jax.Array, scales: jax.Array | float) -> jax.Array:
        """Centres [B, n, 2, 2] and scales ([B, n], or the fixed scale) -> 1 on the cells of the C/4 feature grid
        that each branch's attention-map square overlaps, 0 elsewhere [B, n, C/4, C/4] (``regions.region_support``)."""
        return regions.region_support(centres, scales, self.map_size, self.crop_size, self.crop_size // 4)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        b, u, n = images.shape[0], self.unit, self.num_branches
        dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kw = dict(conv_impl=self.conv_impl, **dt)
        # Geometry (landmarks, region offsets and scales, maps) and the logits stay in at least float32.
        geo = dict(dtype=jnp.promote_types(self.dtype or jnp.float32, jnp.float32), param_dtype=self.param_dtype)
        if self.dtype is not None:
            images = images.astype(self.dtype)
        # With relations, unrolled layer-1 cells in training programs push the compile over its budget and gain no
        # speed (docs/performance.md, "Per-copy chains, ..."): ``auto`` treats them like layer 2's.
        cell_kinds = ("cells1" if self.relation == relations.NONE else "cells2", "cells2")
        region = RegionLearning(u, train, cell_kinds=cell_kinds, name="region_learning", **kw)(images)
        align = HLFeat(u, train, name="align_feat", **kw)(region)
        landmarks = DenseHead(64 * u, 2 * au_sets.NUM_LANDMARKS, name="align_output", **geo)(align)
        landmarks = landmarks.reshape(b, au_sets.NUM_LANDMARKS, 2)
        out = {"landmarks": landmarks}

        if self.adaptive:
            unit = OFFSET_UNITS[self.offset_unit](self.map_scale, self.map_size, self.crop_size)
            offsets, scales = AdaptiveRegions(n, self.map_scale, unit=unit, name="adaptive", **geo)(
                flatten_nchw(align))
            centres = self.region_centres(jax.lax.stop_gradient(landmarks), offsets)
            maps = regions.attention_maps(centres, scales, self.map_size, self.crop_size)
            out.update(offsets=offsets, scales=scales)
        else:
            centres, scales = self.region_centres(jax.lax.stop_gradient(landmarks)), float(self.map_scale)
            maps = jax.lax.stop_gradient(regions.attention_maps(centres, scales, self.map_size, self.crop_size))
        refined = RefineNet(u, train, copies=n, name="attention_refine", **kw)(maps.transpose(1, 0, 2, 3)[..., None])
        if self.local_within_region:   # zero the refined map off the region's own cells (docs/model.md §9)
            support = self.region_cells(centres, scales)
            refined = refined * support.transpose(1, 0, 2, 3)[..., None].astype(refined.dtype)
        out["initial_au_maps"] = maps
        out["refined_au_maps"] = refined[..., 0].transpose(1, 0, 2, 3)

        if self.relation != relations.NONE:
            v = region[None] * refined.astype(region.dtype)          # [n, B, h, w, 8u]
            relation = relations.get_relation(self.relation)
            s = v + relation(self.lstm_hidden, self.dtype, self.param_dtype, name="relations")(v)
        else:   # straight into the per-AU blocks, per copy where they run so (layers.per_copy_form)
            s = each(lambda r: region * r, per_copy_form(refined.astype(region.dtype), n, self.conv_impl, train))
        local = HLFeat(u, train, copies=n, name="local_au_feat", **kw)(s)     # [n, B, 5, 5, 20u]
        glob = HLFeat(u, train, name="global_au_feat", **kw)(region)        # [B, 5, 5, 20u]
        if self.fusion_refine:
            local = FusionRefine(local.shape[-1], self.fusion_refine_rescale, name="fusion_refine", **dt)(local, glob)
        classes, units = self.task.head_units(n, self.num_grades)
        local_logits = DenseHead(8 * u, classes, copies=n, name="local_au_output", **dt)(local)  # [n, B, classes]
        local_logits = local_logits.astype(geo["dtype"])
        concat = jnp.concatenate([align, glob, jax.lax.stop_gradient(jnp.mean(local, axis=0))], axis=-1)
        logits = DenseHead(64 * u, units, name="au_output", **geo)(concat)   # AU: PyTorch layout [B, 2, n]
        out.update(self.task.head_outputs(logits, local_logits, self.final_mean))
        return out


def create_model(config: ml_collections.ConfigDict) -> ALGRNet:
    """Builds the network of a config (reads ``config.model.*``, ``config.aus``, ``config.crop_size``).

    The config is checked first (``configs.validate.validate_config``: the one home of its rules); a bad
    value raises ``ConfigError`` (a ``ValueError``) listing every bad field."""
    validate_config(config)
    m = config.model
    return ALGRNet(aus=tuple(config.aus), crop_size=config.crop_size, unit=m.unit, lstm_hidden=m.lstm_hidden,
                   map_margin=m.map_margin, map_scale=m.map_scale, adaptive=m.adaptive, offset_unit=m.offset_unit,
                   relation=m.relation,
                   fusion_refine=m.fusion_refine, fusion_refine_rescale=m.fusion_refine_rescale,
                   local_within_region=m.local_within_region,
                   final_mean=m.arch != "jaanet", task=tasks.get_task(m.task),
                   num_grades=m.num_grades, num_regions=m.num_regions, conv_impl=m.get("conv_impl", "auto"),
                   dtype=COMPUTE_DTYPES[m.get("dtype", "float32")],
                   param_dtype=jnp.dtype(m.get("param_dtype", "float32")))
