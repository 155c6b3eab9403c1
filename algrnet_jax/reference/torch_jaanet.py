"""JAA-Net (v2) in PyTorch with the state_dict keys of the public release (ZhiwenShao/PyTorch-JAANet).

This is the side-by-side baseline for parity tests and benchmarks; it needs the optional torch extra
(``requirements-torch.txt``), so import this module only where torch is wanted. Structure and numerics
follow the release's ``network.py`` / ``train_JAAv2.py`` (docs/model.md §3):

- ``region_learning``: two hierarchical multi-scale region layers (8x8 / 4x4 / 2x2 cells, one BN + ReLU +
  conv per cell), each followed by a 2x2 max-pool. [B, 3, C, C] -> [B, 8u, C/4, C/4].
- ``align_net``: HLFeat -> flatten (NCHW) -> dense 64u -> dense 98 landmarks; the attention maps
  [B, n, M, M] (M = C/4 + 8) are generated on the host from the (detached) predicted landmarks, exactly as
  the release's ``generate_map`` does (Python rounding, half to even, values in float64).
- ``local_attention_refine``: per AU 3 x (valid conv3x3 BN ReLU) + valid conv3x3 + sigmoid, fed the
  maps with gradients stopped. [B, n, M, M] -> [B, n, M-8, M-8].
- ``local_au_net`` (LocalAUNetv2): per AU HLFeat(region features * refined map) -> dense 8u -> dense 2,
  log-softmax; local feature = mean of the HLFeat outputs.
- ``global_au_feat``: HLFeat(region features).
- ``au_net``: concat(align feature, global feature, local feature detached) -> dense 64u -> dense 2n,
  viewed as [B, 2, n], log-softmax over dim 1.

Each of the six sub-modules has exactly the keys of the corresponding released ``<module>_<epoch>.pth``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from algrnet_jax import au_sets
from algrnet_jax.interop.release import MODULES


class LocalConv2dReLU(nn.Module):
    """Splits the map into an h x w grid of cells; per cell its own BN -> ReLU -> conv3x3 (pad 1)."""

    def __init__(self, grid: tuple[int, int], in_channels: int, out_channels: int):
        super().__init__()
        self.grid = grid
        cells = grid[0] * grid[1]
        self.bns = nn.ModuleList([nn.BatchNorm2d(in_channels) for _ in range(cells)])
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, out_channels, 3, 1, 1) for _ in range(cells)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, c_in, H, W] -> [B, c_out, H, W]."""
        gh, gw = self.grid
        rows = []
        for i, row in enumerate(torch.split(x, x.size(2) // gh, 2)):
            cells = []
            for j, cell in enumerate(torch.split(row, row.size(3) // gw, 3)):
                k = i * gw + j
                cells.append(self.convs[k](F.relu(self.bns[k](cell.contiguous()))))
            rows.append(torch.cat(cells, 3))
        return torch.cat(rows, 2)


class HierarchicalMultiScaleRegionLayer(nn.Module):
    """conv3x3 c_in -> c, three nested cell branches (c/2, c/4, c/4), ReLU(BN(x + concat))."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.local_conv_branch1 = LocalConv2dReLU((8, 8), out_channels, out_channels // 2)
        self.local_conv_branch2 = LocalConv2dReLU((4, 4), out_channels // 2, out_channels // 4)
        self.local_conv_branch3 = LocalConv2dReLU((2, 2), out_channels // 4, out_channels // 4)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        b1 = self.local_conv_branch1(x)
        b2 = self.local_conv_branch2(b1)
        b3 = self.local_conv_branch3(b2)
        return F.relu(self.bn(x + torch.cat((b1, b2, b3), 1)))


class HMRegionLearning(nn.Module):
    """[B, 3, C, C] -> [B, 8u, C/4, C/4]."""

    def __init__(self, input_dim: int = 3, unit_dim: int = 8):
        super().__init__()
        self.multiscale_feat = nn.Sequential(
            HierarchicalMultiScaleRegionLayer(input_dim, unit_dim * 4), nn.MaxPool2d(2, 2),
            HierarchicalMultiScaleRegionLayer(unit_dim * 4, unit_dim * 8), nn.MaxPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiscale_feat(x)


class HLFeatExtractor(nn.Module):
    """[conv3x3 BN ReLU] x2 -> maxpool 2, widths 12u, 16u, 20u: [B, 8u, S, S] -> [B, 20u, S/8, S/8]."""

    def __init__(self, input_dim: int, unit_dim: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = input_dim
        for width in (12, 16, 20):
            c = unit_dim * width
            layers += [nn.Conv2d(c_in, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
            c_in = c
        self.feat_extract = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat_extract(x)


def generate_au_maps(landmarks: np.ndarray, aus: Sequence[int], crop_size: int, map_size: int,
                     spatial_ratio: float = 0.14, fill_coeff: float = 0.56) -> np.ndarray:
    """The release's attention maps, vectorised over batch and AU (host numpy, float64 maths).

    Args:
      landmarks: [B, 98] float32 or float64 (x1, y1, x2, y2, ...) in crop pixels.
    Returns:
      [B, n, map_size, map_size] in the landmarks' dtype (at least float32; float64 as the release run in
      float64).
    """
    dtype = np.promote_types(np.asarray(landmarks).dtype, np.float32)
    lm = np.asarray(landmarks, dtype).reshape(landmarks.shape[0], -1, 2)      # [B, 49, 2]
    idx, dy = au_sets.centre_rule_arrays(tuple(aus))                          # [n, 2], [n]
    ruler = np.abs(lm[:, au_sets.RULER_INDICES[0], 0] - lm[:, au_sets.RULER_INDICES[1], 0])  # [B]
    # The release writes y + ruler/k (k = 2, 3, 1); evaluate the same quotient in float64.
    shift = np.zeros((lm.shape[0], len(aus)), np.float64)
    for a, d in enumerate(dy.astype(np.float64)):
        if d != 0:
            k = round(1.0 / abs(d))
            shift[:, a] = np.sign(d) * (ruler.astype(np.float64) / k)
    pts = lm[:, idx].astype(np.float64)                                       # [B, n, 2, 2] (x, y)
    cx = pts[..., 0]
    cy = pts[..., 1] + shift[:, :, None]
    scale = float(map_size) / crop_size
    half = round((map_size - 1) / 2.0 * spatial_ratio)
    cx = np.round(cx * scale)
    cy = np.round(cy * scale)
    lo_x, hi_x = np.clip(cx - half, 0, map_size - 1), np.clip(cx + half, 0, map_size - 1)
    lo_y, hi_y = np.clip(cy - half, 0, map_size - 1), np.clip(cy + half, 0, map_size - 1)
    g = np.arange(map_size, dtype=np.float64)
    h = g[:, None]
    w = g[None, :]
    e = lambda a: a[..., None, None]  # noqa: E731  [B, n, 2] -> [B, n, 2, 1, 1]
    inside = (h >= e(lo_y)) & (h <= e(hi_y)) & (w >= e(lo_x)) & (w <= e(hi_x))
    value = 1.0 - (np.abs(h - e(cy)) + np.abs(w - e(cx))) * fill_coeff / (map_size * spatial_ratio)
    maps = np.where(inside, value, 0.0).max(axis=2)
    return np.maximum(maps, 0.0).astype(dtype)


class AlignNet(nn.Module):
    """HLFeat -> dense 64u -> dense 2L; returns (feature [B,20u,s,s], landmarks [B,2L], maps [B,n,M,M])."""

    def __init__(self, crop_size: int, aus: Sequence[int], land_num: int = 49, input_dim: int = 64,
                 unit_dim: int = 8, map_margin: int = 8, spatial_ratio: float = 0.14, fill_coeff: float = 0.56):
        super().__init__()
        feat = unit_dim * 20 * (crop_size // 32) ** 2
        self.align_feat = HLFeatExtractor(input_dim, unit_dim)
        self.align_output = nn.Sequential(nn.Linear(feat, unit_dim * 64), nn.Linear(unit_dim * 64, land_num * 2))
        self.crop_size = crop_size
        self.map_size = crop_size // 4 + map_margin
        self.aus = tuple(aus)
        self.spatial_ratio = spatial_ratio
        self.fill_coeff = fill_coeff

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self.align_feat(x)
        landmarks = self.align_output(feat.reshape(feat.size(0), -1))
        maps = generate_au_maps(landmarks.detach().cpu().numpy(), self.aus, self.crop_size, self.map_size,
                                self.spatial_ratio, self.fill_coeff)
        return feat, landmarks, torch.from_numpy(maps).to(device=x.device, dtype=x.dtype)


class LocalAttentionRefine(nn.Module):
    """Per AU: 3 x (valid conv3x3 BN ReLU) 1 -> 8u -> 8u -> 8u, valid conv3x3 -> 1, sigmoid."""

    def __init__(self, au_num: int, unit_dim: int = 8):
        super().__init__()
        c = unit_dim * 8
        self.local_aus_attention = nn.ModuleList([nn.Sequential(
            nn.Conv2d(1, c, 3, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, 1, 3, 1), nn.Sigmoid()) for _ in range(au_num)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, M, M] -> [B, n, M-8, M-8]."""
        return torch.cat([m(x[:, i:i + 1]) for i, m in enumerate(self.local_aus_attention)], 1)


class LocalAUNetv2(nn.Module):
    """Per AU: HLFeat(feat * map) -> dense 8u -> dense 2 -> log-softmax; returns (mean feature, [B,2,n])."""

    def __init__(self, au_num: int, input_dim: int, unit_dim: int = 8, feat_dim: int = 4000):
        super().__init__()
        self.local_aus_branch = nn.ModuleList([HLFeatExtractor(input_dim, unit_dim) for _ in range(au_num)])
        self.local_aus_output = nn.ModuleList([
            nn.Sequential(nn.Linear(feat_dim, unit_dim * 8), nn.Linear(unit_dim * 8, 2)) for _ in range(au_num)])

    def forward(self, feat: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for i, (branch, head) in enumerate(zip(self.local_aus_branch, self.local_aus_output)):
            f = branch(feat * maps[:, i:i + 1])
            feats.append(f)
            logits.append(head(f.reshape(f.size(0), -1)))
        mean_feat = torch.stack(feats, 0).sum(0) / float(len(feats))
        return mean_feat, F.log_softmax(torch.stack(logits, 2), dim=1)


class AUNet(nn.Module):
    """concat feature (flattened) -> dense 64u -> dense 2n, viewed [B, 2, n], log-softmax over dim 1."""

    def __init__(self, au_num: int, input_dim: int = 12000, unit_dim: int = 8):
        super().__init__()
        self.au_output = nn.Sequential(nn.Linear(input_dim, unit_dim * 64), nn.Linear(unit_dim * 64, au_num * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.au_output(x.reshape(x.size(0), -1))
        return F.log_softmax(out.view(out.size(0), 2, out.size(1) // 2), dim=1)


class TorchJAANet(nn.Module):
    """The six release modules together. ``forward(x)`` with x [B, 3, C, C] (NCHW, scaled to [-1, 1]).

    Returns a dict with the fixture's names and PyTorch layouts: ``region_feat`` [B,8u,C/4,C/4],
    ``align_feat`` [B,20u,C/32,C/32], ``landmarks`` [B,98], ``initial_au_maps`` [B,n,M,M],
    ``refined_au_maps`` [B,n,M-8,M-8], ``local_au_logprob`` / ``au_logprob`` [B,2,n],
    ``local_au_prob`` / ``au_prob`` [B,n].
    """

    def __init__(self, aus: Sequence[int] = au_sets.AU_SETS["bp4d"], crop_size: int = 176, unit_dim: int = 8,
                 land_num: int = 49, map_margin: int = 8, spatial_ratio: float = 0.14, fill_coeff: float = 0.56):
        super().__init__()
        n = len(aus)
        feat = unit_dim * 20 * (crop_size // 32) ** 2
        self.region_learning = HMRegionLearning(3, unit_dim)
        self.align_net = AlignNet(crop_size, aus, land_num, unit_dim * 8, unit_dim, map_margin, spatial_ratio,
                                  fill_coeff)
        self.local_attention_refine = LocalAttentionRefine(n, unit_dim)
        self.local_au_net = LocalAUNetv2(n, unit_dim * 8, unit_dim, feat)
        self.global_au_feat = HLFeatExtractor(unit_dim * 8, unit_dim)
        self.au_net = AUNet(n, 3 * feat, unit_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        region_feat = self.region_learning(x)
        align_feat, landmarks, maps = self.align_net(region_feat)
        refined = self.local_attention_refine(maps.detach())
        local_feat, local_logprob = self.local_au_net(region_feat, refined)
        global_feat = self.global_au_feat(region_feat)
        logprob = self.au_net(torch.cat((align_feat, global_feat, local_feat.detach()), 1))
        return {
            "region_feat": region_feat, "align_feat": align_feat, "landmarks": landmarks,
            "initial_au_maps": maps, "refined_au_maps": refined,
            "local_au_logprob": local_logprob, "au_logprob": logprob,
            "local_au_prob": local_logprob[:, 1].exp(), "au_prob": logprob[:, 1].exp(),
        }

    def load_release(self, state_dicts: Mapping[str, Mapping[str, object]]) -> None:
        """Loads the six release state_dicts ({module: state_dict}, tensors or numpy arrays), strictly."""
        for module in MODULES:
            sd = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dicts[module].items()}
            getattr(self, module).load_state_dict(sd, strict=True)

    def release_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The six state_dicts as the release saves them."""
        return {m: getattr(self, m).state_dict() for m in MODULES}


def au_softmax_loss(logprob: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted NLL: mean over AUs of w_i * mean over batch of -log p(label). logprob [B,2,n], labels [B,n]."""
    nll = -logprob.gather(1, labels.long().unsqueeze(1)).squeeze(1)   # [B, n]
    return (nll.mean(0) * weight).mean()


def au_dice_loss(logprob: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The release's dice: per AU 1 - (2 sum(p y) + 1) / (sum p^2 + sum y^2 + 1) / B, weighted, mean."""
    p = logprob[:, 1].exp()
    y = labels.float()
    ratio = (2.0 * (p * y).sum(0) + smooth) / ((p * p).sum(0) + (y * y).sum(0) + smooth)
    return ((1.0 - ratio / p.size(0)) * weight).mean()


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, biocular: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum of squared errors / (2 * biocular); biocular is the SQUARED distance."""
    return (((pred - target) ** 2).sum(1) / (2.0 * biocular)).mean()


def jaanet_losses(out: Mapping[str, torch.Tensor], au_labels: torch.Tensor, gt_landmarks: torch.Tensor,
                  biocular: torch.Tensor, au_weight: torch.Tensor, lambda_au: float = 1.0,
                  lambda_land: float = 0.5) -> dict[str, torch.Tensor]:
    """train_JAAv2 losses: total = lambda_au (L_au + L_local_au) + lambda_land L_land."""
    loss_au = au_softmax_loss(out["au_logprob"], au_labels, au_weight) + au_dice_loss(
        out["au_logprob"], au_labels, au_weight)
    loss_local = au_softmax_loss(out["local_au_logprob"], au_labels, au_weight) + au_dice_loss(
        out["local_au_logprob"], au_labels, au_weight)
    loss_land = landmark_loss(out["landmarks"], gt_landmarks, biocular)
    total = lambda_au * (loss_au + loss_local) + lambda_land * loss_land
    return {"total": total, "au": loss_au, "local_au": loss_local, "land": loss_land}


def make_sgd(model: nn.Module, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
             nesterov: bool = True) -> torch.optim.Optimizer:
    """The release's optimizer: SGD, Nesterov momentum, coupled weight decay on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def train_step(model: TorchJAANet, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               au_labels: torch.Tensor, gt_landmarks: torch.Tensor, biocular: torch.Tensor,
               au_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One train-mode forward, backward and SGD step (updates BN running statistics too)."""
    model.train()
    optimizer.zero_grad()
    out = model(images)
    losses = jaanet_losses(out, au_labels, gt_landmarks, biocular, au_weight)
    losses["total"].backward()
    optimizer.step()
    return {**{f"loss_{k}": v.detach() for k, v in losses.items()}, **{k: v.detach() for k, v in out.items()}}
